"""Electrostatic brighter-fatter solution: pixel-boundary shifts fitted to the PTC's ``a`` matrix
(cp_pipe ``ElectrostaticBrighterFatterSolveTask``, Astier & Regnault 2023; product
``electroBfDistortionMatrix``).

Model.  Charge collected in pixel (0, 0) sits in a rectangle ``2a x 2b`` (µm) at height ``zq`` above
the gate plane (z = 0) of a sensor of ``thickness`` with conducting planes at both faces (images at
``2nt ± zq``).  Its transverse field deflects the charge still drifting in: a pixel boundary
moves towards the stored charge by ``∝ ∫ E⊥ dz`` from the vertex height (``zsh`` for the
boundaries between rows, ``zsv`` between columns) to the top of the drift.  Field, in closed form
per point charge ``(x/ρ²)·[d/√(ρ²+d²)]`` between the two heights; averaged along each side with
Gauss-Legendre nodes; the charge rectangle as 3 x 3 point charges.  The area change of pixel
(i, j) (row lag i, column lag j; cpframe's PTC ``a_matrix`` convention) is the sum of its four
sides' inward shifts: ``raw_ij``; the model is ``a_ij = α·raw_ij + β`` (α in 1/e- per unit raw).

Fit.  The amps' ``a`` matrices (bad amps and 3-sigma outliers left out, as cp_pipe) give the mean
and its scatter (σ); the geometric parameters that ``parametersToVary`` frees are fitted by
``scipy.optimize.least_squares`` on ``(model − a)/σ`` over ``[0, fitRange)²``; α and β (when free)
are solved linearly inside each step.  Outputs: the fit, ``aMatrixModel`` and the boundary
shifts ``aN``, ``aS``, ``aE``, ``aW`` (pixel fraction per e- in pixel (0, 0)) and ``ath``.

Deliberate differences from cp_pipe (docs/algorithms.md, "Electrostatic brighter-fatter"):
scipy instead of lmfit (same least-squares problem, the linear α/β profiled out); no
conversion-depth model (``doFilterCorrection`` is accepted and listed as not implemented: all
photons convert at the surface; cpframe has no filter transmission curves); the far-field
approximation cp_pipe uses for distant points is not needed (the image series is summed
directly).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.core.errors import ConfigError, UserInputError
from cpframe.core.files import json_ready, write_json
from cpframe.science.configs.electrostatic import (  # noqa: F401 (defined there, importable without the science stack)
    ElectrostaticConfig,
    PARAMETERS,
    _DEFAULT_INITIAL,
    _DEFAULT_VARY,
)

__all__ = [
    "FORMAT",
    "PARAMETERS",
    "ElectrostaticConfig",
    "ElectrostaticSolution",
    "apply_electrostatic",
    "area_change",
    "boundary_shifts",
    "electrostatic_correction",
    "electrostatic_solve_task",
    "fit_electrostatic",
    "read_electrostatic",
    "solve_electrostatic",
]

FORMAT = "cpframe-electrostatic-bf"
_N_SIDE = 8  # Gauss-Legendre nodes along a pixel side
_N_CHARGE = 3  # point charges per axis of the charge rectangle
#: Scale of the raw model so that α is of order 1 for a00 ~ -1e-6 / e-.
_RAW_SCALE = 1e-6


# ------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------
def _charges(p: Mapping[str, float], n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point charges (x, y, z, q) of the charge rectangle and its images between the two planes."""
    t, zq = abs(p["thickness"]), abs(p["zq"])
    off = (np.arange(_N_CHARGE) + 0.5) / _N_CHARGE * 2 - 1
    xs, ys = np.meshgrid(off * abs(p["a"]), off * abs(p["b"]))
    xs, ys = xs.ravel(), ys.ravel()
    ks = np.arange(-(n_pairs // 2), n_pairs // 2 + 1)
    zc = np.concatenate([2 * ks * t + zq, 2 * ks * t - zq])
    qc = np.concatenate([np.ones(len(ks)), -np.ones(len(ks))])
    X = np.repeat(xs, len(zc))
    Y = np.repeat(ys, len(zc))
    Z = np.tile(zc, len(xs))
    Q = np.tile(qc, len(xs)) / len(xs)
    return X, Y, Z, Q


def _side_integral(px: np.ndarray, py: np.ndarray, comp: int, z0: float, z1: float, charges) -> np.ndarray:
    """∫_{z0}^{z1} E_comp dz at points (px, py) (any shape), summed over ``charges``."""
    X, Y, Z, Q = charges
    dx = px[..., None] - X
    dy = py[..., None] - Y
    rho2 = np.maximum(dx * dx + dy * dy, 1e-12)
    d1, d0 = z1 - Z, z0 - Z
    g = d1 / np.sqrt(rho2 + d1 * d1) - d0 / np.sqrt(rho2 + d0 * d0)
    return ((dx if comp == 0 else dy) / rho2 * g * Q).sum(axis=-1)


def boundary_shifts(params: Mapping[str, float], size: int, n_pairs: int = 11) -> dict[str, np.ndarray]:
    """Outward displacements (pixel fractions, raw units) of the four sides of pixels [0, size)² caused by
    the charge in (0, 0): a side moves against the charge's transverse field (towards the charge).

    ``aN``/``aS``: the sides at row + ½ / row − ½ (horizontal boundaries, from ``zsh``); ``aE``/``aW``:
    column + ½ / column − ½ (from ``zsv``).  The pixel's area change is their sum (:func:`area_change`).
    """
    p = dict(params)
    pix, t = abs(p["pixelsize"]), abs(p["thickness"])
    nodes, weights = np.polynomial.legendre.leggauss(_N_SIDE)
    u = nodes * 0.5 * pix  # offsets along a side
    w = weights * 0.5
    charges = _charges(p, n_pairs)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")  # i row lag (y), j column lag (x)
    out = {}
    for name, comp, sign in (("aN", 1, 1), ("aS", 1, -1), ("aE", 0, 1), ("aW", 0, -1)):
        if comp == 1:  # horizontal side at y = (i ± ½) p, along x
            py = np.broadcast_to(((i + 0.5 * sign) * pix)[..., None], i.shape + (_N_SIDE,))
            px = j[..., None] * pix + u
            z0 = abs(p["zsh"])
        else:
            px = np.broadcast_to(((j + 0.5 * sign) * pix)[..., None], i.shape + (_N_SIDE,))
            py = i[..., None] * pix + u
            z0 = abs(p["zsv"])
        if not z0 < t:
            raise ConfigError(f"electrostatic brighter-fatter: vertex height {z0} must be below the thickness {t}.")
        e = _side_integral(px, py, comp, z0, t, charges)
        # displacement = −∫E⊥ dz (against the field); outward for the side at +½ is +, at −½ is −
        out[name] = -(e * w).sum(axis=-1) * sign / pix
    return out


def area_change(params: Mapping[str, float], size: int, n_pairs: int = 11) -> np.ndarray:
    """Raw area change of pixels [0, size)² (row lag, column lag): the sum of their sides' outward shifts.

    >>> m = area_change(dict(thickness=100.0, pixelsize=10.0, zq=1.0, zsh=2.0, zsv=3.0, a=2.0, b=2.0), 4)
    >>> bool(m[0, 0] < 0 < m[0, 1]) and bool(m[1, 0] > 0)
    True
    """
    s = boundary_shifts(params, size, n_pairs)
    return s["aN"] + s["aS"] + s["aE"] + s["aW"]


def _profile(raw: np.ndarray, a: np.ndarray, w: np.ndarray, fit_alpha: bool, fit_beta: bool,
             alpha0: float, beta0: float) -> tuple[float, float]:
    """Best α, β (weights w = 1/σ²) for a = α raw + β, with the fixed ones at their start value."""
    if fit_alpha and fit_beta:
        A = np.array([[(w * raw * raw).sum(), (w * raw).sum()], [(w * raw).sum(), w.sum()]])
        rhs = np.array([(w * raw * a).sum(), (w * a).sum()])
        try:
            al, be = np.linalg.solve(A, rhs)
        except np.linalg.LinAlgError:
            al, be = alpha0, beta0
        return float(al), float(be)
    if fit_alpha:
        den = (w * raw * raw).sum()
        return (float((w * raw * (a - beta0)).sum() / den) if den > 0 else alpha0), beta0
    if fit_beta:
        return alpha0, float((w * (a - alpha0 * raw)).sum() / w.sum())
    return alpha0, beta0


@dataclass
class ElectrostaticSolution:
    """One detector's fit (cp_pipe ``ElectrostaticBrighterFatterDistortionMatrix``'s content)."""

    fit_params: dict[str, float]
    fit_param_errors: dict[str, float]
    free_params: list[str]
    fit_chi2: float
    fit_reduced_chi2: float
    a_matrix: np.ndarray
    a_matrix_sigma: np.ndarray
    a_matrix_model: np.ndarray
    shifts: dict[str, np.ndarray]
    fit_range: int
    input_range: int
    gain: dict[str, float] = field(default_factory=dict)
    bad_amps: list[str] = field(default_factory=list)
    model_normalization: tuple[float, float] = (1.0, 0.0)
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def fit_electrostatic(a_matrix: np.ndarray, a_sigma: np.ndarray, config: ElectrostaticConfig) -> ElectrostaticSolution:
    """Fit the model (module docstring) to a mean ``a`` matrix with its uncertainties."""
    from scipy.optimize import least_squares

    r = int(config.fit_range)
    a = np.asarray(a_matrix, float)[:r, :r] / _RAW_SCALE
    sig = np.asarray(a_sigma, float)[:r, :r] / _RAW_SCALE
    good = np.isfinite(a) & np.isfinite(sig) & (sig > 0)
    if good.sum() < 4:
        raise UserInputError(f"electrostatic brighter-fatter: only {int(good.sum())} usable a-matrix elements in "
                             f"the {r} x {r} fit range; the PTC needs a FULLCOVARIANCE fit with its a matrix.")
    w = np.where(good, 1.0 / np.where(good, sig, 1.0) ** 2, 0.0)
    a = np.where(good, a, 0.0)
    init = {**_DEFAULT_INITIAL, **config.initial_parameters}
    vary = {**_DEFAULT_VARY, **config.parameters_to_vary}
    t, pix = abs(init["thickness"]), abs(init["pixelsize"])
    geo = [k for k in ("thickness", "pixelsize", "zq", "zsh", "zsv", "a", "b") if vary[k]]
    # bounds as cp_pipe's: zq in [0, t/2], zs - zq in (0, t/10], a and b in (0, 0.35 pixel]
    lo = {"thickness": 1e-3, "pixelsize": 0.5 * pix, "zq": 0.0, "zsh": 1e-6, "zsv": 1e-6, "a": 1e-5, "b": 1e-5}
    hi = {"thickness": 1.25 * t, "pixelsize": 1.5 * pix, "zq": 0.5 * t, "zsh": 0.1 * t, "zsv": 0.1 * t, "a": 0.35 * pix,
          "b": 0.35 * pix}

    def unpack(x):  # zsh, zsv fitted as their height above zq (keeps them above the charge)
        p = dict(init)
        for k, v in zip(geo, x):
            p[k] = v
        for k in ("zsh", "zsv"):
            if vary[k]:
                p[k] = p["zq"] + p[k]
        return p

    def start(k):
        v = init[k] - init["zq"] if k in ("zsh", "zsv") else init[k]
        return float(np.clip(v, lo[k] + 1e-9, hi[k] - 1e-9))

    def model(x):
        p = unpack(x)
        raw = area_change(p, r, config.n_image_charge_pairs)
        al, be = _profile(raw, a, w, vary["alpha"], vary["beta"], init["alpha"], init["beta"] / _RAW_SCALE)
        return p, al, be, al * raw + be

    def resid(x):
        return ((model(x)[3] - a) * np.sqrt(w))[good]

    x0 = np.array([start(k) for k in geo])
    if geo:
        res = least_squares(resid, x0, bounds=([lo[k] for k in geo], [hi[k] for k in geo]), x_scale="jac",
                            ftol=1e-6, xtol=1e-6)
        x, ok, jac = res.x, bool(res.success), res.jac
    else:
        x, ok, jac = x0, True, np.zeros((int(good.sum()), 0))
    p, al, be, m = model(x)
    chi2 = float((resid(x) ** 2).sum())
    free = [*geo, *[k for k in ("alpha", "beta") if vary[k]]]
    dof = max(int(good.sum()) - len(free), 1)
    errs = {k: 0.0 for k in PARAMETERS}
    if geo and ok:
        try:
            cov = np.linalg.pinv(jac.T @ jac) * chi2 / dof
            for k, v in zip(geo, np.sqrt(np.clip(np.diag(cov), 0, None))):
                errs[k] = float(v)
        except np.linalg.LinAlgError:
            pass
    params = {**{k: float(v) for k, v in p.items()}, "alpha": al * _RAW_SCALE, "beta": be * _RAW_SCALE}
    shifts = {k: v * al * _RAW_SCALE for k, v in boundary_shifts(p, r, config.n_image_charge_pairs).items()}
    model_a = m * _RAW_SCALE
    norm = (1.0, 0.0)
    if config.do_normalize_electrostatic_model:
        mm, oo = _profile(model_a / _RAW_SCALE, a, w, True, config.do_fit_normalization_offset, 1.0, 0.0)
        norm = (mm, oo * _RAW_SCALE)
        model_a = mm * model_a + oo * _RAW_SCALE
    shifts["ath"] = model_a if norm == (1.0, 0.0) else (al * area_change(p, r) + be) * _RAW_SCALE
    shifts["athMinusBeta"] = shifts["ath"] - params["beta"]
    return ElectrostaticSolution(params, errs, free, chi2, chi2 / dof, np.asarray(a_matrix, float),
                                 np.asarray(a_sigma, float), model_a, shifts, r, int(np.asarray(a_matrix).shape[0]),
                                 model_normalization=norm)


def _mean_a_matrix(rows: Mapping[str, Mapping[str, Any]], bad: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the good amps, 3-sigma outliers per element left out; its scatter as sigma (cp_pipe's)."""
    stack = np.array([np.asarray(rows[a]["a_matrix"], float) for a in rows if a not in bad])
    if len(stack) < 2:
        mean = stack.mean(axis=0)
        sigma = np.ones_like(mean) * np.nanmax(np.abs(mean))
        sigma[0, :] *= 2.0
        sigma[:, 0] *= 2.0
        sigma[0, 0] = math.sqrt(32) * np.nanmax(np.abs(mean))
        return mean, sigma
    mu, sd = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    out = np.abs(stack - mu) > 3 * np.where(sd > 0, sd, np.inf)
    clipped = np.where(out, np.nan, stack)
    sigma = np.nanstd(clipped, axis=0)
    # the error of the mean is what the fit weighs; a zero scatter (noiseless input) gets the smallest nonzero one
    n = np.sum(np.isfinite(clipped), axis=0)
    sigma = sigma / np.sqrt(np.maximum(n, 1))
    floor = np.nanmin(np.where(sigma > 0, sigma, np.nan)) if np.any(sigma > 0) else 1e-9
    return np.nanmean(clipped, axis=0), np.where(sigma > 0, sigma, floor)


def solve_electrostatic(ptc_path: str | os.PathLike, output_path: str | os.PathLike | None,
                        config: ElectrostaticConfig | Mapping[str, Any] | None = None) -> ElectrostaticSolution:
    """cpElectrostaticBfSolve for one detector: its FULLCOVARIANCE PTC -> the fit (and the json product).

    Raises
    ------
    UserInputError
        Not a FULLCOVARIANCE PTC, a fit range beyond the PTC's, or no good amp.
    """
    from cpframe.science.imageio import read_ptc

    cfg = config if isinstance(config, ElectrostaticConfig) else ElectrostaticConfig.from_dict(config)
    rows, header = read_ptc(ptc_path)
    fit_type = str(header.get("PTCFITTYPE", ""))
    if not fit_type.startswith("FULLCOVARIANCE") or not rows or not all("a_matrix" in r for r in rows.values()):
        raise UserInputError(f"{ptc_path}: ptcFitType is {fit_type or 'unknown'}; the electrostatic solution needs a "
                             "FULLCOVARIANCE PTC (its a matrix): build the PTC with ptcFitType: FULLCOVARIANCE.")
    side = int(np.asarray(next(iter(rows.values()))["a_matrix"]).shape[-1])
    if cfg.fit_range > side:
        raise UserInputError(f"{ptc_path}: fitRange={cfg.fit_range} is beyond the PTC's full-covariance fit range "
                             f"({side}); lower fitRange or build the PTC with maximumRangeCovariancesAstierFullCovFit "
                             f">= {cfg.fit_range}.")
    bad = [a for a, r in rows.items() if not np.all(np.isfinite(np.asarray(r["a_matrix"], float)))]
    if len(bad) == len(rows):
        raise UserInputError(f"{ptc_path}: no amp has a finite a matrix; nothing to fit.")
    mean, sigma = _mean_a_matrix(rows, bad)
    sol = fit_electrostatic(mean, sigma, cfg)
    sol.gain = {a: float(r["gain"]) for a, r in rows.items()}
    sol.bad_amps = bad
    sol.meta = {k: header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE", "FILTER") if k in header}
    sol.meta["OBSTYPE"] = "electroBfDistortionMatrix"
    sol.meta["PTCFITTYPE"] = fit_type
    if output_path is not None:
        sol.path = str(write_electrostatic(output_path, sol))
    return sol


def write_electrostatic(path: str | os.PathLike, sol: ElectrostaticSolution) -> Path:
    """Write the solution as JSON (cp_pipe's field names), atomically."""
    doc = {"format": FORMAT, "version": 1, "meta": sol.meta, "fitParams": sol.fit_params,
           "fitParamErrors": sol.fit_param_errors, "freeFitParamNames": sol.free_params, "fitChi2": sol.fit_chi2,
           "fitReducedChi2": sol.fit_reduced_chi2, "fitRange": sol.fit_range, "inputRange": sol.input_range,
           "aMatrix": sol.a_matrix, "aMatrixSigma": sol.a_matrix_sigma, "aMatrixModel": sol.a_matrix_model,
           "aMatrixSum": float(_symmetric_sum(sol.a_matrix[:sol.fit_range, :sol.fit_range])),
           "aMatrixModelSum": float(_symmetric_sum(sol.a_matrix_model)), "modelNormalization": list(sol.model_normalization),
           "gain": sol.gain, "badAmps": sol.bad_amps, **sol.shifts}
    return write_json(path, json_ready(doc))


def _symmetric_sum(q: np.ndarray) -> float:
    """Sum of the full (mirrored) matrix whose quarter is ``q`` (lags ≥ 0)."""
    q = np.asarray(q, float)
    return float(4 * q.sum() - 2 * q[0, :].sum() - 2 * q[:, 0].sum() + q[0, 0])


def read_electrostatic(path: str | os.PathLike) -> ElectrostaticSolution:
    """Read :func:`write_electrostatic`'s file.

    Raises
    ------
    UserInputError
        Not a cpframe electrostatic brighter-fatter file.
    """
    import json

    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise UserInputError(f"{p}: cannot read the electrostatic brighter-fatter file ({err}).") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserInputError(f"{p}: not a cpframe electrostatic brighter-fatter file (format {FORMAT}).")

    def arr(k):
        return np.asarray([[np.nan if v is None else v for v in row] for row in doc[k]], float)

    return ElectrostaticSolution(
        dict(doc["fitParams"]), dict(doc["fitParamErrors"]), list(doc["freeFitParamNames"]), float(doc["fitChi2"]),
        float(doc["fitReducedChi2"]), arr("aMatrix"), arr("aMatrixSigma"), arr("aMatrixModel"),
        {k: arr(k) for k in ("aN", "aS", "aE", "aW", "ath", "athMinusBeta")}, int(doc["fitRange"]),
        int(doc["inputRange"]), dict(doc.get("gain") or {}), list(doc.get("badAmps") or []),
        tuple(doc.get("modelNormalization") or (1.0, 0.0)), dict(doc.get("meta") or {}), str(p))


def electrostatic_solve_task(ptc_path: str | os.PathLike, output_path: str | os.PathLike,
                             config: ElectrostaticConfig | Mapping[str, Any] | None = None) -> ElectrostaticSolution:
    """The ``electrostaticBfSolve`` task of one detector -> ``electroBfDistortionMatrix`` json."""
    return solve_electrostatic(ptc_path, output_path, config)


# ------------------------------------------------------------------------------------------
# ISR: the correction (ip_isr's ASTIER23 method)
# ------------------------------------------------------------------------------------------
def _boundary_kernels(sol: ElectrostaticSolution) -> tuple[np.ndarray, np.ndarray]:
    """Displacement kernels (row offset, column offset from the charge, centred) of the boundary above a
    pixel (+y) and of the boundary to its right (+x), per e- of the charge."""
    s = sol.shifts
    r = int(np.asarray(s["aN"]).shape[0])
    kh = np.zeros((2 * r - 1, 2 * r - 1))
    kv = np.zeros_like(kh)
    c = r - 1
    for k in range(-c, c + 1):
        for m in range(-c, c + 1):
            # the side above a pixel k rows from the charge: its N side (k ≥ 0) or the mirror of the S side of −k
            kh[c + k, c + m] = s["aN"][k, abs(m)] if k >= 0 else s["aS"][-k, abs(m)]
            kv[c + k, c + m] = s["aE"][abs(k), m] if m >= 0 else s["aW"][abs(k), -m]
    return kh, kv


def electrostatic_correction(image: np.ndarray, sol: ElectrostaticSolution) -> np.ndarray:
    """Charge to add to ``image`` (electrons) to undo the boundary shifts of ``sol`` (Astier & Regnault 2023).

    Each boundary is displaced by the shifts the final charge map causes (a convolution); the shifts
    grow with the charge during the exposure, so the charge that crossed is half the displaced area times
    the mean of the two pixels: ``D (I_a + I_b) / 4``.  That charge is returned to the pixel that lost it.
    """
    from scipy.signal import fftconvolve

    im = np.asarray(image, dtype=np.float64)
    im = np.where(np.isfinite(im), im, 0.0)
    kh, kv = _boundary_kernels(sol)
    corr = np.zeros_like(im)
    dh = fftconvolve(im, kh, mode="same")[:-1, :]  # boundary between rows y and y + 1
    dq = dh * (im[:-1, :] + im[1:, :]) / 4.0
    corr[:-1, :] -= dq  # the row below gained dq by its boundary moving up
    corr[1:, :] += dq
    dv = fftconvolve(im, kv, mode="same")[:, :-1]
    dq = dv * (im[:, :-1] + im[:, 1:]) / 4.0
    corr[:, :-1] -= dq
    corr[:, 1:] += dq
    return corr


def apply_electrostatic(image: np.ndarray, det, sol: ElectrostaticSolution, units: str,
                        gains: Mapping[str, float], cards: dict) -> None:
    """ISR step (in place): convert to electrons with the solution's gains if needed, correct, convert back."""
    from cpframe.science.bfk import gain_image

    g_img = gain_image(image.shape, det, sol.gain, gains) if units != "electron" else None
    e = image * g_img if g_img is not None else image
    corr = electrostatic_correction(e, sol)
    if g_img is not None:
        corr = corr / g_img
    image += corr.astype(image.dtype)
    cards["LSST ISR BF APPLIED"] = True
    cards["LSST ISR BF CORR METHOD"] = "ASTIER23"
