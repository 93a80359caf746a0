"""Photon transfer curve: gain, read noise and turnoff per amp (cp_pipe ``cpPtcExtract`` + ``cpPtcSolve``).

Extract (spec algorithms.md §9), per flat pair of equal exposure time and per amp:
μ1, μ2 = MEANCLIP (5.5σ, 3 iterations) ignoring SUSPECT, BAD, NO_DATA, SAT;
D = (μ2·I1 − μ1·I2)/μ with μ = (μ1+μ2)/2; var = ½·VARIANCECLIP(D)·k, where
k = 1/(1 − 2nφ(n)/(Φ(n) − Φ(−n))) undoes the variance lost by clipping at n = 5.5σ.

Solve, per amp (EXPAPPROXIMATION, Astier+19 eq. 16), var and μ in adu:
var(μ) = [exp(2·a00·g·μ) − 1] / (2·a00·g²) + n/g², fitted with
``scipy.optimize.least_squares`` within bounds, first on the points below an initial
signal limit, then with up to 2 outlier passes (|var − model| / max(√var, var·√(2/N)) < 5), a jump rule
after masked gaps, and a final fit weighted by 1/√(2var²/N).  gain = g (e-/adu),
noise = √n (e-), turnoff = largest μ kept (adu).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.combine import clipped_stats
from cpframe.science.imageio import MASK_BITS, MaskedImage, amp_boxes, write_ptc
from cpframe.science.configs.ptc import (  # noqa: F401 (defined there, importable without the science stack)
    FIT_TYPES,
    MSG_UNKNOWN_KEYS,
    PtcConfig,
)

__all__ = [
    "PtcConfig",
    "PtcPairMeasurement",
    "PtcResult",
    "extract_pair",
    "pair_exposures",
    "solve_ptc",
    "ptc_model",
    "sigma_clip_correction",
]

log = logging.getLogger(__name__)

MSG_NO_PAIRS = "PTC solve: no pair measurements. Give flat pairs of equal exposure time (ptc_extract_task)."
MSG_SHAPES = ("PTC extract: the two exposures differ in shape ({a} vs {b}). Pair exposures of the same "
              "detector.")


@dataclass
class PtcPairMeasurement:
    """Extract output for one flat pair of one detector."""

    exposure_ids: tuple[int, int]
    exposure_time: float
    amps: dict[str, dict[str, float]] = field(default_factory=dict)
    """amp -> mean (adu), var (adu²), n_pixels, overscan_noise (adu), gain_pair (e-/adu); with
    FULLCOVARIANCE also ``covariances`` (L x L, adu², [dy, dx]) and ``n_pixels_cov``."""


@dataclass
class PtcResult:
    """What :func:`solve_ptc` returns (also written as fits-ptc)."""

    path: str
    gain: dict[str, float]
    """e-/adu per amp."""
    noise: dict[str, float]
    """Read noise per amp (e-)."""
    turnoff: dict[str, float]
    """Largest mean signal kept per amp (adu)."""
    n_pairs: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def sigma_clip_correction(n: float) -> float:
    """Variance of a Gaussian clipped at ±n·σ is σ²/k; returns k.

    >>> round(float(sigma_clip_correction(3.0)), 4)
    1.0274
    """
    from scipy.stats import norm

    return float(1.0 / (1.0 - 2.0 * n * norm.pdf(n) / (norm.cdf(n) - norm.cdf(-n))))


def pair_exposures(items: Sequence[Any], key: Callable[[Any], tuple[float, int]]) -> list[tuple[Any, Any]]:
    """Pair items with equal exposure time, in exposure-id order (1-2, 3-4, ...).

    ``key(item)`` returns (exposure_time, exposure_id).  Unpaired items are dropped.
    """
    groups: dict[float, list[Any]] = {}
    for it in items:
        t, _ = key(it)
        groups.setdefault(round(float(t), 6), []).append(it)
    pairs = []
    for t in sorted(groups):
        g = sorted(groups[t], key=lambda it: key(it)[1])
        for i in range(0, len(g) - 1, 2):
            pairs.append((g[i], g[i + 1]))
    return pairs


_PTC_IGNORE = sum(1 << MASK_BITS[n] for n in ("SUSPECT", "BAD", "NO_DATA", "SAT"))


def extract_pair(im1: MaskedImage, im2: MaskedImage, config: PtcConfig,
                 overscan_noise: Mapping[str, float] | None = None) -> PtcPairMeasurement:
    """Mean and difference-image variance of one flat pair, per amp (adu)."""
    if im1.shape != im2.shape:
        raise UserInputError(MSG_SHAPES.format(a=im1.shape, b=im2.shape))
    n = float(config.n_sigma_clip_ptc)
    k = sigma_clip_correction(n)
    h1, h2 = im1.header, im2.header
    out: dict[str, dict[str, float]] = {}
    e = int(config.num_edge_suspect)
    for name, bbox in amp_boxes(h1, im1.shape):
        a = im1.image[bbox].astype(np.float64)
        b = im2.image[bbox].astype(np.float64)
        good = ((im1.mask[bbox] | im2.mask[bbox]) & _PTC_IGNORE) == 0
        good &= np.isfinite(a) & np.isfinite(b)
        if e > 0:
            edge = np.ones_like(good)
            edge[e:-e, e:-e] = False
            good &= ~edge
        mu1 = clipped_stats(a[good], n, config.n_iter_sigma_clip_ptc)[0]
        mu2 = clipped_stats(b[good], n, config.n_iter_sigma_clip_ptc)[0]
        rec = {"mean": math.nan, "var": math.nan, "n_pixels": 0, "overscan_noise": math.nan,
               "gain_pair": math.nan, "overscan_var_factor": _overscan_var_factor(name, h1, h2)}
        if overscan_noise and name in overscan_noise:
            rec["overscan_noise"] = float(overscan_noise[name])
        else:
            vals = [float(h.get(f"LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {name}", math.nan)) for h in (h1, h2)]
            rec["overscan_noise"] = float(np.mean(vals))
        if math.isfinite(mu1) and math.isfinite(mu2) and mu1 > 0 and mu2 > 0:
            mu = 0.5 * (mu1 + mu2)
            diff = (mu2 * a[good] - mu1 * b[good]) / mu
            _, std, npix = clipped_stats(diff, n, config.n_iter_sigma_clip_ptc)
            var = 0.5 * std * std * k
            rec.update(mean=mu, var=var, n_pixels=npix)
            if config.full_covariance or config.measure_covariances:
                _measure_covariances(rec, a, b, good, mu1, mu2, n, config,
                                     covariance_pixel_floor(config, h1, a.size))
            # pair gain (FULL correction, read noise in adu from the overscan)
            s = a[good] + b[good]
            with np.errstate(divide="ignore", invalid="ignore"):
                kk = float(np.mean((a[good] - b[good]) ** 2 / s))
            sig = rec["overscan_noise"]
            if math.isfinite(sig) and kk > 0:
                disc = mu * mu - 2 * mu * kk + 2 * sig * sig
                den = 2 * kk * mu - 2 * sig * sig
                rec["gain_pair"] = (mu + math.sqrt(disc)) / den if disc >= 0 and den != 0 else 1.0 / kk
        out[name] = rec
    t = float(h1.get("EXPTIME", math.nan))
    return PtcPairMeasurement(exposure_ids=(int(h1.get("EXPID", 0)), int(h2.get("EXPID", 0))), exposure_time=t,
                              amps=out)


def covariance_pixel_floor(config: PtcConfig, header: Mapping[str, Any], amp_pixels: int) -> int:
    """``minNumberGoodPixelsForCovariance`` for an amp of ``amp_pixels`` pixels of this header's camera.

    At the ``mini`` scale (a simulator-only camera, 64 x 250 amps) the threshold is scaled by
    the amp's area relative to the same instrument's full-size amp; otherwise it is as set.
    """
    floor = int(config.min_number_good_pixels_for_covariance)
    if str(header.get("CAMSCALE", "full")).lower() != "mini" or "INSTRUME" not in header:
        return floor
    from cpframe.camera.models import load_camera
    from cpframe.core.errors import CameraError

    try:
        full = load_camera(str(header["INSTRUME"]), "full").detectors[0].amps[0].bbox
    except CameraError:
        return floor
    full_pixels = (full[0].stop - full[0].start) * (full[1].stop - full[1].start)
    return max(1, math.ceil(floor * min(1.0, amp_pixels / full_pixels)))


def _measure_covariances(rec: dict, a: np.ndarray, b: np.ndarray, good: np.ndarray, mu1: float, mu2: float,
                         n: float, config: PtcConfig, floor: int | None = None) -> None:
    """Covariances of the pair's difference image (FFT; pixels used: good and within the clipped
    mean ± n σ of the difference) into ``rec``; NaN when too few pixels are left."""
    from cpframe.science.covariances import measure_covariances

    L = int(config.maximum_range_covariances_astier)
    mu = 0.5 * (mu1 + mu2)
    with np.errstate(invalid="ignore"):
        diff = np.where(good, (mu2 * a - mu1 * b) / mu, 0.0)
    m, s, _ = clipped_stats(diff[good], n, config.n_iter_sigma_clip_ptc)
    w = good & (np.abs(diff - m) < n * s)
    floor = int(config.min_number_good_pixels_for_covariance) if floor is None else floor
    cov, npix = measure_covariances(diff, w, L)
    if npix < floor:
        cov = np.full((L, L), np.nan)
    rec["covariances"] = cov
    rec["n_pixels_cov"] = npix


def _overscan_var_factor(amp: str, *headers: Mapping[str, Any]) -> float:
    """Mean of the ISR's ``LSST ISR OVERSCAN VARIANCE FACTOR <amp>`` cards (0 when absent)."""
    vals = [float(h.get(f"LSST ISR OVERSCAN VARIANCE FACTOR {amp}", math.nan)) for h in headers]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else 0.0


def ptc_model(params: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Astier+19 eq. 16: var(μ) = [exp(2 a00 g μ) − 1] / (2 a00 g²) + n/g² (adu²)."""
    a00, g, n = params
    x = 2.0 * a00 * g * mu
    if abs(a00) < 1e-15:
        return mu / g + n / (g * g)
    return np.expm1(x) / (2.0 * a00 * g * g) + n / (g * g)


_P0 = np.array([-2e-6, 1.5, 25.0])
_LO = np.array([-1e-4, 0.1, 0.0])
_HI = np.array([0.0, 10.0, 2000.0])


def _fit(mu, var, sigma, p0=None):
    from scipy.optimize import least_squares

    p0 = _P0 if p0 is None else np.clip(p0, _LO + 1e-12, _HI - 1e-12)
    if p0[0] >= 0:
        p0 = p0.copy()
        p0[0] = -1e-12
    res = least_squares(lambda p: (ptc_model(p, mu) - var) / sigma, p0, bounds=(_LO, _HI),
                        x_scale=np.array([1e-6, 0.1, 10.0]), method="trf")
    dof = max(1, len(mu) - 3)
    chi2 = float(np.sum(res.fun ** 2)) / dof
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * chi2
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        err = np.full(3, np.nan)
    return res.x, err


def _solve_amp(mu, var, npix, config: PtcConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(params, errors, mask of points kept) for one amp; points sorted by μ by the caller."""
    good = np.isfinite(mu) & np.isfinite(var) & (mu > config.min_mean_signal) & (mu < config.max_mean_signal)
    good &= var > 0
    if good.sum() < 3:
        return np.full(3, np.nan), np.full(3, np.nan), good & False
    g_approx = float(np.median(mu[good] / var[good]))
    limit = config.max_signal_initial_ptc_outlier_fit
    delta = config.max_delta_initial_ptc_outlier_fit
    if config.scale_max_signal_initial_ptc_outlier_fit and g_approx > 0:
        limit /= g_approx
        delta /= g_approx
    mask = good & (mu <= limit) & (var <= limit)
    if mask.sum() < 3:
        mask = good.copy()
    params = None
    for _ in range(int(config.max_iterations_ptc_outliers) + 1):
        params, _ = _fit(mu[mask], var[mask], np.sqrt(var[mask]), params)
        # cp_pipe scales the residual by sqrt(var).  On a full-size amp (~1e6 pixels) that is far
        # above the variance's own measurement error var*sqrt(2/N); on a small amp (the mini
        # camera: ~5e3 pixels) the error is the larger, and a sqrt(var) cut of 5 would be ~1
        # sigma, masking good points and, through the jump rule, the whole top of the curve.
        # The larger of the two keeps cp_pipe's behaviour where it was designed and stays a
        # 5-sigma-or-wider cut everywhere (docs/algorithms.md).
        scale = np.maximum(np.sqrt(np.where(var > 0, var, np.nan)), var * np.sqrt(2.0 / np.maximum(npix, 1)))
        resid = np.abs(var - ptc_model(params, mu)) / scale
        new = good & (resid < config.sigma_cut_ptc_outliers)
        # a jump in μ across a run of masked points (from the last good point below the run to
        # the first good one above it) masks everything above; ordinary spacing between good
        # points never does, however wide (exposure ramps are often geometric)
        seen_masked = False
        last_good = None
        for i in np.argsort(mu):
            if not new[i]:
                if good[i]:
                    seen_masked = True
                continue
            if seen_masked and last_good is not None and mu[i] - last_good >= delta:
                new[mu >= mu[i]] = False
                break
            seen_masked = False
            last_good = mu[i]
        if new.sum() < 3:
            break
        if np.array_equal(new, mask):
            break
        mask = new
    if mask.sum() < 3:
        return np.full(3, np.nan), np.full(3, np.nan), mask
    sigma = var[mask] * np.sqrt(2.0 / np.maximum(npix[mask], 1))
    params, err = _fit(mu[mask], var[mask], sigma, params)
    return params, err, mask


#: Truncated-Gaussian factor of the ISR's 3-sigma-clipped overscan STDEV (what clipping measures).
_OVERSCAN_CLIP_FACTOR = 0.98658

#: Logged when the PTC read noise and the overscan read noise disagree (tests check the words).
MSG_NOISE_DISAGREES = ("PTC read noise of amp %s%s is %.3f e- but the serial overscan of the PTC flats shows "
                       "%.3f e- (%+.1f %%, more than 5 %% and 3 fit errors): the read-noise intercept is "
                       "not the amplifier's noise -- look for structure in the difference images (a "
                       "bias drift, an unmasked defect) or too few low-signal pairs.")


def _check_noise_against_overscan(amp: str, noise: float, noise_err: float, gain: float, osn: np.ndarray,
                                  meta: Mapping[str, Any] | None) -> None:
    """Log a warning, naming the amp and what it means, when the PTC read noise disagrees with
    the overscan's (both e-): beyond 5 % *and* beyond 3 fit errors, so the statistical
    uncertainty of a small amp's intercept is not reported as a problem."""
    if not (math.isfinite(gain) and math.isfinite(noise) and np.isfinite(osn).any()):
        return
    expected = float(np.nanmedian(osn)) * gain / _OVERSCAN_CLIP_FACTOR
    if expected <= 0:
        return
    diff = noise - expected
    tol = max(0.05 * expected, 3.0 * noise_err if math.isfinite(noise_err) else 0.0)
    if abs(diff) > tol:
        det = (meta or {}).get("DETNAME") or (meta or {}).get("DETECTOR")
        log.warning(MSG_NOISE_DISAGREES, amp, f" of detector {det}" if det is not None else "", noise, expected,
                    100.0 * diff / expected)


MSG_FULLCOV_FEW = ("PTC FULLCOVARIANCE: amp %s%s has %d pairs with covariances, fewer than the %d "
                   "needed; its gain, noise and a matrix are NaN. Take more flat pairs below the turnoff.")


def _full_covariance_amp(amp: str, mu: np.ndarray, mask: np.ndarray, ms: Sequence[PtcPairMeasurement],
                         config: PtcConfig):
    """Fit Astier+19 eq. 20 to one amp's covariances (points kept by the EXPAPPROXIMATION fit)."""
    from cpframe.science.covariances import cov_model, fit_full_covariance

    L = int(config.maximum_range_covariances_astier)
    r = int(config.maximum_range_covariances_astier_full_cov_fit)
    cov = np.array([np.asarray(m.amps[amp].get("covariances", np.full((L, L), np.nan)), dtype=np.float64)
                    for m in ms])
    npix = np.array([m.amps[amp].get("n_pixels_cov", 0) for m in ms], dtype=np.float64)
    use = mask & np.all(np.isfinite(cov[:, :r, :r]), axis=(1, 2))
    extra: dict[str, Any] = {"covariances": cov, "n_pixels_cov": npix}
    nan = np.full((r, r), np.nan)
    need = max(4, r)  # a parabola per lag, and more points than lags
    if use.sum() < need:
        log.warning(MSG_FULLCOV_FEW, amp, "", int(use.sum()), need)
        extra.update(a_matrix=nan, b_matrix=nan, noise_matrix=nan, cov_model=np.full((len(ms), r, r), np.nan))
        return None, extra
    fit = fit_full_covariance(mu[use], cov[use], npix[use], r, with_b=config.ptc_fit_type == "FULLCOVARIANCE")
    model = cov_model(np.where(np.isfinite(mu), mu, 0.0), fit.a, fit.c, fit.noise, fit.gain)
    extra.update(a_matrix=fit.a, b_matrix=fit.b, noise_matrix=fit.noise, cov_model=model,
                 a_matrix_err=fit.a_err, cov_chi2_dof=fit.chi2_dof)
    return fit, extra


def solve_ptc(measurements: Sequence[PtcPairMeasurement], output_path: str | os.PathLike | None,
              config: PtcConfig, meta: Mapping[str, Any] | None = None) -> PtcResult:
    """Fit every amp and write the fits-ptc file (when ``output_path`` is given)."""
    if not measurements:
        raise UserInputError(MSG_NO_PAIRS)
    amps = list(measurements[0].amps)
    det_mean = np.array([np.nanmean([m.amps[a]["mean"] for a in amps]) for m in measurements])
    order = np.argsort(np.where(np.isfinite(det_mean), det_mean, np.inf), kind="stable")
    ms = [measurements[i] for i in order]
    rows: list[dict[str, Any]] = []
    gains, noises, turnoffs = {}, {}, {}
    for a in amps:
        mu = np.array([m.amps[a]["mean"] for m in ms], dtype=np.float64)
        var = np.array([m.amps[a]["var"] for m in ms], dtype=np.float64)
        npix = np.array([m.amps[a]["n_pixels"] for m in ms], dtype=np.float64)
        osn = np.array([m.amps[a]["overscan_noise"] for m in ms], dtype=np.float64)
        t = np.array([m.exposure_time for m in ms], dtype=np.float64)
        kos = np.array([m.amps[a].get("overscan_var_factor", 0.0) for m in ms], dtype=np.float64)
        params, err, mask = _solve_amp(mu, var, npix, config)
        a00, g, n = params
        # The fitted intercept n is the variance per pixel at zero signal: the read noise plus
        # the variance the ISR's overscan subtraction added (per-row and per-column medians,
        # k_os * RN^2; +3 % in noise on ComCam geometry).  The read noise is the amplifier's
        # alone, so that term is divided out (issue 16); ``noise_intercept`` keeps the raw value.
        k_os = float(np.median(kos[np.isfinite(kos)])) if np.isfinite(kos).any() else 0.0
        intercept = math.sqrt(abs(n)) if math.isfinite(n) else math.nan
        noise = intercept / math.sqrt(1.0 + k_os)
        noise_err = 0.5 * err[2] / intercept / math.sqrt(1.0 + k_os) if (
            math.isfinite(intercept) and intercept > 0) else math.nan
        turnoff = float(np.max(mu[mask])) if mask.any() else math.nan
        g_err = float(err[1])
        extra: dict[str, Any] = {}
        if config.full_covariance:
            # the EXPAPPROXIMATION fit above set the mask and the turnoff (as in cp_pipe); the
            # gain, noise and a00 now come from the full covariance model (Astier+19 eq. 20)
            fit, extra = _full_covariance_amp(a, mu, mask, ms, config)
            if fit is not None:
                g, g_err, a00 = fit.gain, fit.gain_err, float(fit.a[0, 0])
                intercept = math.sqrt(abs(fit.noise[0, 0]))
                noise = intercept / math.sqrt(1.0 + k_os)
                noise_err = 0.5 * fit.noise_err / intercept / math.sqrt(1.0 + k_os) if intercept > 0 else math.nan
            else:
                g = g_err = a00 = noise = noise_err = intercept = math.nan
        _check_noise_against_overscan(a, noise, noise_err, g, osn, meta)
        gains[a], noises[a], turnoffs[a] = float(g), noise, turnoff
        rows.append({"amp": a, "gain": float(g), "gain_err": g_err, "noise": noise,
                     "noise_err": noise_err, "turnoff": turnoff, "a00": float(a00), "n_pairs": int(mask.sum()),
                     "noise_intercept": intercept, "overscan_var_factor": k_os,
                     "raw_means": mu, "raw_vars": var, "exp_times": t, "mask": mask, "overscan_noise": osn,
                     **extra})
    path = ""
    if output_path is not None:
        md = {"OBSTYPE": "ptc", "PTCFITTYPE": config.ptc_fit_type, "NPAIRS": len(ms)}
        if config.full_covariance:
            md["COVRANGE"] = int(config.maximum_range_covariances_astier)
            md["COVFITRANGE"] = int(config.maximum_range_covariances_astier_full_cov_fit)
        # provenance as the combined products carry it (CPP_INPUT_<i>, exposure time): both
        # exposures of every pair, so the report can list them (issue 16: it said "0 inputs")
        ids = [(e, m.exposure_time) for m in ms for e in m.exposure_ids]
        for i, (e, t) in enumerate(ids):
            md[f"CPP_INPUT_{i}"] = int(e)
            md[f"CPP_INPUT_EXPT_{i}"] = float(t)
        md.update(dict(meta or {}))
        write_ptc(output_path, rows, md)
        path = str(output_path)
    return PtcResult(path=path, gain=gains, noise=noises, turnoff=turnoffs, n_pairs=len(ms), rows=rows)
