"""Brighter-fatter kernel: solved from a PTC's covariances (cp_pipe ``cpBfk``), applied in ISR (ip_isr).

**Solve** (:func:`solve_bfk`; cp_pipe ``BrighterFatterKernelSolveTask``, after Coulton et al.
2018 eq. 22-29), per amp, from a FULLCOVARIANCE PTC (covariances measured on lags [0, L)²):

1. Each pair kept by the PTC gives the cross-correlation, in electrons, with the Poisson
   term removed and scaled by the flux: ``X_ij = −(C_ij g² − μ_e δ_ij) / μ_e²`` (≈ −a_ij).
   Pairs where the lag-0 term is not negative are dropped (as cp_pipe does), then the
   quarter is mirrored into the full (2L−1)² plane.
2. The pre-kernel is −a from the PTC's full covariance fit (``useAmatrix``, cpframe's
   default) or, with ``useAmatrix: false`` (cp_pipe's default) or no a matrix, the
   5σ-clipped mean of the pairs' X over pairs; padded by one zero on each side ((2L+1)², cp_pipe's shape);
   ``forceZeroSum`` moves the sum into the centre.
3. The kernel K solves the discrete Poisson equation ∇²K = pre-kernel with K = 0 one
   pixel outside the array (cp_pipe solves the same equation by successive over-relaxation;
   cpframe solves it exactly with a type-I discrete sine transform).
4. Validity (``doCheckValidity``): the outer pixel ring within ±5σ of the 3-pixel frame's
   scatter around 0, the centre the minimum, nothing above 2.5 % of |K_00|.
5. The detector kernel is the 5σ-clipped mean of the valid amps' kernels (ip_isr
   ``makeDetectorKernelFromAmpwiseKernels``).

**Correction** (:func:`brighter_fatter_correction`; ip_isr ``brighterFatterCorrection``,
Coulton et al. 2018): in electrons, ``I_c = I + ½ ∇·(I ∇(K ⋆ I_c))`` iterated (the source
of the deflection field is the current corrected image) until the summed absolute change
is below ``brighterFatterThreshold`` or after ``brighterFatterMaxIter`` iterations; pixels
within the kernel's half size of the edge are left uncorrected.  Masked pixels (SAT, BAD,
NO_DATA, UNMASKEDNAN) are replaced by the image median for the convolution only (ip_isr
interpolates them).

The product is a ``json`` file (:func:`write_bfk`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import json_ready, read_json_product, write_json
from cpframe.science.imageio import MASK_BITS, FileFormatError, read_ptc
from cpframe.science.configs.bfk import (  # noqa: F401 (defined there, importable without the science stack)
    BfkConfig,
)

__all__ = ["BfkConfig", "BfkCalib", "solve_bfk", "kernel_from_correlations", "tile_quarter",
           "brighter_fatter_correction", "apply_brighter_fatter", "write_bfk", "read_bfk", "bfk_solve_task"]

log = logging.getLogger(__name__)

FORMAT = "cpframe-bfk"
VERSION = 1
MSG_NO_COVARIANCES = ("BFK solve: the PTC {path} has no covariances; build it with ptcFitType: FULLCOVARIANCE "
                      "(pipelines/cpBfk.yaml does).")


@dataclass
class BfkCalib:
    """A brighter-fatter kernel calibration of one detector (kernels in 1/e-·pixel² units of ip_isr)."""

    amp_kernels: dict[str, np.ndarray]
    mean_xcorrs: dict[str, np.ndarray]
    valid: dict[str, bool]
    gain: dict[str, float]
    det_kernel: np.ndarray
    level: str = "AMP"
    n_pairs: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.det_kernel.shape)


def tile_quarter(q: np.ndarray) -> np.ndarray:
    """Mirror a quarter (lags [0, n)²) into the full (2n−1)² plane (cp_pipe ``_tileArray``).

    >>> tile_quarter(np.array([[1., 2.], [3., 4.]])).astype(int).tolist()
    [[4, 3, 4], [2, 1, 2], [4, 3, 4]]
    """
    from cpframe.science.covariances import symmetrize

    return symmetrize(q)


def _poisson_dirichlet(source: np.ndarray) -> np.ndarray:
    """Solve ∇²K = source (5-point Laplacian) with K = 0 just outside the array (exact, DST-I)."""
    from scipy.fft import dstn, idstn

    ny, nx = source.shape
    ky = 2.0 * np.cos(np.pi * np.arange(1, ny + 1) / (ny + 1)) - 2.0
    kx = 2.0 * np.cos(np.pi * np.arange(1, nx + 1) / (nx + 1)) - 2.0
    s = dstn(source, type=1)
    return idstn(s / (ky[:, None] + kx[None, :]), type=1)


def kernel_from_correlations(pre: np.ndarray, force_zero_sum: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(pre-kernel after the zero-sum step, kernel) from a full pre-kernel."""
    pre = np.array(pre, dtype=np.float64)
    if force_zero_sum:
        c = pre.shape[0] // 2
        pre[c, c] -= pre.sum()
    return pre, _poisson_dirichlet(pre)


def _clipped_mean(stack: np.ndarray, n_sigma: float, n_iter: int = 3) -> np.ndarray:
    """Per-element clipped mean over axis 0."""
    x = np.asarray(stack, dtype=np.float64)
    keep = np.isfinite(x)
    for _ in range(n_iter):
        m = np.nanmean(np.where(keep, x, np.nan), axis=0)
        s = np.nanstd(np.where(keep, x, np.nan), axis=0)
        new = np.isfinite(x) & (np.abs(x - m) <= n_sigma * np.where(s > 0, s, np.inf))
        if np.array_equal(new, keep):
            break
        keep = new
    return np.nanmean(np.where(keep, x, np.nan), axis=0)


def _validity(kernel: np.ndarray, cfg: BfkConfig) -> tuple[bool, str]:
    n = kernel.shape[0]
    if n < 7:
        return False, "kernel smaller than 7 x 7"
    yy, xx = np.mgrid[0:n, 0:n]
    edge = (xx == 0) | (yy == 0) | (xx == n - 1) | (yy == n - 1)
    frame = (xx < 3) | (yy < 3) | (xx > n - 4) | (yy > n - 4)
    centre = kernel[n // 2, n // 2]
    tol = cfg.n_sigma_tol_for_valid_edge * float(np.std(kernel[frame]))
    why = []
    if not np.all(np.abs(kernel[edge]) <= tol):
        why.append("edges not consistent with 0")
    if not np.all(kernel >= centre):
        why.append("centre is not the minimum")
    if not np.all(kernel <= cfg.fraction_k00_for_kernel_max * abs(centre)):
        why.append("kernel not negative")
    return not why, "; ".join(why)


def _scaled_xcorrs(rec: Mapping[str, Any], cfg: BfkConfig, amp: str) -> tuple[list[np.ndarray], list[float]]:
    gain = float(rec["gain"])
    cov = np.asarray(rec["covariances"], dtype=np.float64)
    mu = np.asarray(rec["raw_means"], dtype=np.float64)
    mask = np.asarray(rec["mask"], dtype=bool)
    out, fluxes = [], []
    for k in np.flatnonzero(mask):
        if not np.all(np.isfinite(cov[k])) or not math.isfinite(mu[k]) or mu[k] <= 0:
            continue
        flux = mu[k] * gain
        q = cov[k] * gain * gain
        q[0, 0] -= flux
        if q[0, 0] > 0:
            log.info("BFK amp %s pair %d skipped: variance − mean = %g > 0", amp, k, q[0, 0])
            continue
        full = tile_quarter(-q / (flux * flux))
        check = abs(full.sum()) / np.abs(full).sum()
        if not math.isfinite(check) or check > cfg.xcorr_check_reject_level:
            continue
        out.append(full)
        fluxes.append(flux)
    return out, fluxes


def solve_bfk(ptc_path: str | os.PathLike, output_path: str | os.PathLike | None,
              config: BfkConfig | Mapping[str, Any] | None = None,
              meta: Mapping[str, Any] | None = None) -> BfkCalib:
    """Kernels of one detector from its FULLCOVARIANCE PTC; writes the json product when a path is given.

    Raises
    ------
    UserInputError
        The PTC has no covariances.
    """
    cfg = config if isinstance(config, BfkConfig) else BfkConfig.from_dict(config)
    rows, header = read_ptc(ptc_path)
    if not rows or not all("covariances" in r for r in rows.values()):
        raise UserInputError(MSG_NO_COVARIANCES.format(path=ptc_path))
    amp_kernels, mean_xcorrs, valid, gains, npairs = {}, {}, {}, {}, {}
    all_corr = []
    for amp, rec in rows.items():
        L = np.asarray(rec["covariances"]).shape[-1]
        shape = (2 * L + 1, 2 * L + 1)
        g = float(rec["gain"])
        gains[amp] = g
        corrs, _ = _scaled_xcorrs(rec, cfg, amp) if math.isfinite(g) and g > 0 else ([], [])
        npairs[amp] = len(corrs)
        if cfg.use_amatrix and np.all(np.isfinite(rec.get("a_matrix", np.nan))):
            a = np.asarray(rec["a_matrix"], dtype=np.float64)
            pre = np.pad(tile_quarter(-a), 1)
        elif corrs:
            pre = np.pad(_clipped_mean(np.array(corrs), cfg.n_sigma_clip), 1)
        else:
            log.warning("BFK amp %s: no usable pair; its kernel is zero and invalid.", amp)
            amp_kernels[amp], mean_xcorrs[amp], valid[amp] = np.zeros(shape), np.zeros(shape), False
            continue
        if pre.shape != shape:  # the a matrix may be smaller than the measured lags
            full = np.zeros(shape)
            o = (shape[0] - pre.shape[0]) // 2
            full[o:o + pre.shape[0], o:o + pre.shape[1]] = pre
            pre = full
        pre, kernel = kernel_from_correlations(pre, cfg.force_zero_sum)
        mean_xcorrs[amp], amp_kernels[amp] = pre, kernel
        if cfg.do_check_validity:
            ok, why = _validity(kernel, cfg)
            if not ok:
                log.warning("BFK amp %s: kernel not valid (%s).", amp, why)
            valid[amp] = ok
        else:
            valid[amp] = True
        if amp not in cfg.ignore_amps_for_averaging:
            all_corr.extend(corrs)
    use = [a for a in amp_kernels if valid[a] and a not in cfg.ignore_amps_for_averaging]
    if cfg.level == "DETECTOR" and all_corr:
        _, det = kernel_from_correlations(np.pad(_clipped_mean(np.array(all_corr), cfg.n_sigma_clip), 1),
                                          cfg.force_zero_sum)
    elif use:
        det = _clipped_mean(np.array([amp_kernels[a] for a in use]), 5.0)
    else:
        det = np.zeros(next(iter(amp_kernels.values())).shape)
    md = {k: header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in header}
    md.update({"OBSTYPE": "bfk", "PTC_PATH": str(ptc_path)})
    md.update(dict(meta or {}))
    calib = BfkCalib(amp_kernels=amp_kernels, mean_xcorrs=mean_xcorrs, valid=valid, gain=gains,
                     det_kernel=det, level=cfg.level, n_pairs=npairs, meta=md)
    if output_path is not None:
        write_bfk(output_path, calib)
        calib.path = str(output_path)
    return calib


# --------------------------------------------------------------------------------------
# correction
# --------------------------------------------------------------------------------------
_INTERP = sum(1 << MASK_BITS[n] for n in ("SAT", "BAD", "NO_DATA", "UNMASKEDNAN") if n in MASK_BITS)


def brighter_fatter_correction(image: np.ndarray, kernel: np.ndarray, max_iter: int = 10,
                               threshold: float = 1000.0, mask: np.ndarray | None = None
                               ) -> tuple[np.ndarray, float, int]:
    """(correction to add, last summed change, iterations) for an image in electrons.

    See the module docstring; ``image`` is not changed.
    """
    img = np.array(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= (mask & _INTERP) != 0
    if bad.any():
        img[bad] = float(np.median(img[~bad])) if (~bad).any() else 0.0
    ky, kx = kernel.shape
    sy, sx = ky // 2, kx // 2
    ey, ex = img.shape[0] + (-ky // 2), img.shape[1] + (-kx // 2)  # ip_isr's end indices
    corr = np.zeros_like(img)
    tmp = img.copy()
    prev = None
    diff = math.inf
    it = 0
    for it in range(int(max_iter)):
        out = _fft_same(tmp, kernel)
        t = tmp[sy:ey, sx:ex]
        o = out[sy:ey, sx:ex]
        gt = np.gradient(t)
        go = np.gradient(o)
        first = (gt[0] * go[0] + gt[1] * go[1])[1:-1, 1:-1]
        # np.diff(…, 2, axis) at index i is centred on i+1: align with the interior pixels
        d2y = np.diff(out, 2, 0)[sy:ey - 2, sx + 1:ex - 1]
        d2x = np.diff(out, 2, 1)[sy + 1:ey - 1, sx:ex - 2]
        second = t[1:-1, 1:-1] * (d2y + d2x)
        corr[sy + 1:ey - 1, sx + 1:ex - 1] = 0.5 * (first + second)
        tmp = img + corr
        if prev is not None:
            diff = float(np.sum(np.abs(prev - tmp)))
            if diff < threshold:
                break
        prev = tmp
    corr[bad] = 0.0
    return corr, diff, it + 1


def _fft_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``scipy.signal.fftconvolve(image, kernel, mode="same")`` with scipy.fft (a lighter import)."""
    from scipy.fft import irfft2, next_fast_len, rfft2

    ky, kx = kernel.shape
    full = (image.shape[0] + ky - 1, image.shape[1] + kx - 1)
    fshape = (next_fast_len(full[0], real=True), next_fast_len(full[1], real=True))
    z = irfft2(rfft2(image, fshape) * rfft2(kernel, fshape), fshape)
    oy, ox = (ky - 1) // 2, (kx - 1) // 2
    return z[oy:oy + image.shape[0], ox:ox + image.shape[1]]


def gain_image(shape: tuple[int, int], det, calib_gains: Mapping[str, float], gains: Mapping[str, float]) -> np.ndarray:
    """Gain (e-/adu) per pixel: the calibration's per amp, else the ISR's (``gains``), else 1."""
    g_img = np.ones(shape, np.float64)
    for amp in det.amps:
        g = float(calib_gains.get(amp.name, math.nan))
        if not math.isfinite(g) or g <= 0:
            g = float(gains.get(amp.name, 1.0))
        g_img[amp.bbox] = g
    return g_img


def apply_brighter_fatter(image: np.ndarray, mask: np.ndarray | None, det, calib: BfkCalib, units: str,
                          gains: Mapping[str, float], max_iter: int, threshold: float, cards: dict) -> None:
    """ISR step (in place): convert to electrons with the kernel's gains if needed, correct, convert back."""
    g_img = gain_image(image.shape, det, calib.gain, gains) if units != "electron" else None
    e = image * g_img if g_img is not None else image
    corr, diff, iters = brighter_fatter_correction(e, calib.det_kernel, max_iter, threshold, mask)
    if g_img is not None:
        corr = corr / g_img
    image += corr.astype(image.dtype)
    if iters >= max_iter:
        log.warning("Brighter-fatter correction did not converge, final difference %f.", diff)
    cards["LSST ISR BF APPLIED"] = True
    cards["LSST ISR BF ITERS"] = int(iters)
    cards["LSST ISR BF CORR METHOD"] = "COULTON18"


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def write_bfk(path: str | os.PathLike, calib: BfkCalib) -> Path:
    """Write the BFK calib as JSON (NaN as null), atomically."""
    doc = {"format": FORMAT, "version": VERSION, "units": "electron", "level": calib.level,
           "meta": json_ready(dict(calib.meta)), "det_kernel": json_ready(calib.det_kernel),
           "amps": {a: {"kernel": json_ready(calib.amp_kernels[a]), "mean_xcorr": json_ready(calib.mean_xcorrs[a]),
                        "valid": bool(calib.valid[a]), "gain": json_ready(float(calib.gain[a])),
                        "n_pairs": int(calib.n_pairs.get(a, 0))} for a in calib.amp_kernels}}
    return write_json(path, doc)


def read_bfk(path: str | os.PathLike) -> BfkCalib:
    """Read a cpframe BFK JSON file.

    Raises
    ------
    FileFormatError
        Unreadable, another format or version.
    """
    p = str(path)
    doc = read_json_product(p, FORMAT, VERSION, "brighter-fatter kernel", FileFormatError)

    def arr(v):
        return np.array(v, dtype=np.float64)

    amps = doc["amps"]
    return BfkCalib(amp_kernels={a: arr(r["kernel"]) for a, r in amps.items()},
                    mean_xcorrs={a: arr(r["mean_xcorr"]) for a, r in amps.items()},
                    valid={a: bool(r["valid"]) for a, r in amps.items()},
                    gain={a: (math.nan if r["gain"] is None else float(r["gain"])) for a, r in amps.items()},
                    det_kernel=arr(doc["det_kernel"]), level=str(doc.get("level", "AMP")),
                    n_pairs={a: int(r.get("n_pairs", 0)) for a, r in amps.items()},
                    meta=dict(doc.get("meta") or {}), path=p)


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------
def bfk_solve_task(ptc_path: str | os.PathLike, output_path: str | os.PathLike,
                   config: BfkConfig | Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None) -> BfkCalib:
    """cpBfkSolve for one detector -> bfk json."""
    return solve_bfk(ptc_path, output_path, config, meta=meta)
