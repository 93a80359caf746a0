"""Crosstalk: intra-detector coefficients per (target, source) amp pair (cp_pipe ``cpCrosstalk``).

Extract (``CrosstalkExtractTask``, one exposure x detector; spot-projector or bright-star
exposures after ISR): every amp is put in its read-out orientation, so that the pixel at
(row, col) of any two amps was read at the same time.  *Source* pixels are those above
``threshold`` (image units) and not ``BAD``/``INTRP``.  Each target amp's background is its
separable row + column profile (medians away from every amp's bright pixels, grown by
``growMaskRadius``).  For every
ordered pair (target ≠ source) the ratios ``(target − background) / source`` at the source
pixels (skipping the target's own bright, grown pixels) are kept, with the source values.
When the ISR applied gains (``LSST ISR UNITS = electron``) the ratios are converted to
adu/adu with the header gains: ``C_adu = C_e · g_source / g_target``.

Solve (``CrosstalkSolveTask.measureCrosstalkCoefficients``), per pair over all exposures:
ratios with |r| ≥ 1 are dropped; ``rejIter`` passes keep |r − median| < ``rejSigma`` ×
0.741·IQR; the coefficient is the mean (``fluxOrder`` 0) or the intercept of a line in
source flux (``fluxOrder`` 1, whose slope is the quadratic coefficient); the error is
std × clipping correction; a coefficient is *valid* when |C| > ``significanceLimit`` ×
error (/√N with ``doSignificanceScaling``).  Filter (``CrosstalkFilterTask``
``doFiltering``): invalid coefficients are set to 0.

The product is a ``json`` file (:func:`write_crosstalk`): ``coeffs[target][source]``
(adu/adu, the orientation the simulator injects and the ISR subtracts; ip_isr stores
``[source][target]``), errors, counts, validity, quadratic terms.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import read_json_product, write_json
from cpframe.science.imageio import MASK_BITS, FileFormatError, MaskedImage, detector_from_header
from cpframe.science.configs.crosstalk import (  # noqa: F401 (defined there, importable without the science stack)
    CrosstalkConfig,
    MSG_UNKNOWN_KEYS,
)

__all__ = [
    "CrosstalkConfig",
    "CrosstalkRatios",
    "CrosstalkCalib",
    "extract_ratios",
    "solve_crosstalk",
    "write_crosstalk",
    "read_crosstalk",
    "crosstalk_extract_task",
    "crosstalk_solve_task",
]

FORMAT = "cpframe-crosstalk"
VERSION = 1
MSG_NO_RATIOS = ("crosstalk solve: no ratio measurements. Give the extract results of at least one spot or "
                 "bright-source exposure of this detector.")


@dataclass
class CrosstalkRatios:
    """Extract output for one exposure x detector (adu/adu ratios)."""

    exposure_id: int
    detector: int
    amps: list[str]
    ratios: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """ratios[target][source] (float32)."""
    fluxes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """fluxes[target][source]: the source values (image units) of each ratio."""
    units: str = "adu"
    """Units of the image the ratios came from (the ratios themselves are adu/adu)."""
    n_source_pixels: dict[str, int] = field(default_factory=dict)


@dataclass
class CrosstalkCalib:
    """A detector's crosstalk matrix and its uncertainties."""

    amps: list[str]
    coeffs: np.ndarray
    """[target, source] (adu/adu)."""
    coeff_err: np.ndarray
    coeff_num: np.ndarray
    coeff_valid: np.ndarray
    coeffs_sqr: np.ndarray
    """[target, source] quadratic term (1/adu), 0 unless fluxOrder = 1."""
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def n_valid(self) -> int:
        """Number of significant off-diagonal coefficients."""
        return int(np.count_nonzero(self.coeff_valid & ~np.eye(len(self.amps), dtype=bool)))


def _readout(img: np.ndarray, amp) -> np.ndarray:
    if amp.flip_x:
        img = img[:, ::-1]
    if amp.flip_y:
        img = img[::-1, :]
    return img


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=int(radius))


def _background(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Background of one amp (read-out frame): a value per row plus a smooth column profile.

    Every row carries its own offset (the noise of the serial-overscan value subtracted
    from it, and the bias bump of the first rows read), so each row gets the 3σ-clipped
    mean of its kept pixels (the median of the rows where none is kept).  Every column
    carries the noise of its parallel-overscan value: the column profile is the mean over
    rows of what is left (0 where nothing is kept).  cp_pipe fits a smooth binned 2-d
    background model instead; on small amps the per-row and per-column offsets matter
    (docs/algorithms.md "Crosstalk").
    """
    if not keep.any():
        return np.full(img.shape, np.nan)
    x = np.where(keep, img, np.nan)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows / columns with nothing kept
        med = np.nanmedian(x, axis=1)
        sig = 1.4826 * np.nanmedian(np.abs(x - med[:, None]))
        x = np.where(np.abs(x - med[:, None]) <= 3.0 * sig, x, np.nan) if sig > 0 else x
        row = np.nanmean(x, axis=1)
        row = np.where(np.isfinite(row), row, np.nanmedian(row))
        col = np.nanmean(x - row[:, None], axis=0)
        col = np.where(np.isfinite(col), col, 0.0)
    return row[:, None] + col[None, :]


def extract_ratios(image: MaskedImage, config: CrosstalkConfig, detector=None) -> CrosstalkRatios:
    """Pixel ratios target/source of one ISR-processed exposure x detector (module docstring)."""
    h = image.header
    det = detector if detector is not None else detector_from_header(h, image.shape)
    if det is None:
        raise UserInputError("crosstalk extract: the image header names no known camera detector (INSTRUME, "
                             "DETECTOR, CAMSCALE); run ISR with cpframe first.")
    units = str(h.get("LSST ISR UNITS", "adu"))
    bad_bits = sum(1 << MASK_BITS[m] for m in config.bad_mask)
    names = [a.name for a in det.amps]
    img = {a.name: _readout(image.image[a.bbox], a).astype(np.float64) for a in det.amps}
    msk = {a.name: _readout(image.mask[a.bbox], a) for a in det.amps}
    bright = {n: np.isfinite(img[n]) & (img[n] > config.threshold) for n in names}
    own = {n: _grow(bright[n], config.grow_mask_radius) for n in names}
    any_bright = _grow(np.logical_or.reduce([bright[n] for n in names]), config.grow_mask_radius)
    bg = {}
    for n in names:
        keep = ~any_bright & np.isfinite(img[n]) & ((msk[n] & bad_bits) == 0)
        bg[n] = _background(img[n], keep)
    gains = {n: float(h.get(f"LSST ISR GAIN {n}", 1.0)) for n in names}
    out = CrosstalkRatios(exposure_id=int(h.get("EXPID", 0)), detector=int(det.id), amps=names, units=units)
    for s in names:
        sel = bright[s] & ((msk[s] & bad_bits) == 0)
        out.n_source_pixels[s] = int(sel.sum())
        for t in names:
            if t == s:
                continue
            use = sel & ~own[t]
            r = (img[t][use] - bg[t][use]) / img[s][use]
            if units == "electron":
                r = r * gains[s] / gains[t]
            out.ratios.setdefault(t, {})[s] = r.astype(np.float32)
            out.fluxes.setdefault(t, {})[s] = img[s][use].astype(np.float32)
    return out


def _clip(values: np.ndarray, fluxes: np.ndarray, rej_iter: int, rej_sigma: float):
    for _ in range(int(rej_iter)):
        if values.size == 0:
            break
        lo, med, hi = np.percentile(values, [25.0, 50.0, 75.0])
        sigma = 0.741 * (hi - lo)
        good = np.abs(values - med) < rej_sigma * sigma
        if good.sum() == good.size or good.sum() == 0:
            break
        values, fluxes = values[good], fluxes[good]
    return values, fluxes


def solve_crosstalk(measurements: Sequence[CrosstalkRatios], output_path: str | os.PathLike | None,
                    config: CrosstalkConfig | Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None) -> CrosstalkCalib:
    """Combine the ratios of every exposure of one detector into a crosstalk matrix (module docstring).

    Raises
    ------
    UserInputError
        No measurements, or measurements of different detectors.
    """
    from cpframe.science.ptc import sigma_clip_correction

    cfg = config if isinstance(config, CrosstalkConfig) else CrosstalkConfig.from_dict(config)
    if not measurements:
        raise UserInputError(MSG_NO_RATIOS)
    dets = sorted({m.detector for m in measurements})
    if len(dets) > 1:
        raise UserInputError(f"crosstalk solve: measurements of detectors {dets}; solve one detector at a time.")
    amps = list(measurements[0].amps)
    n = len(amps)
    coeffs = np.zeros((n, n))
    err = np.full((n, n), np.nan)
    num = np.zeros((n, n), dtype=int)
    valid = np.zeros((n, n), dtype=bool)
    sqr = np.zeros((n, n))
    corr = sigma_clip_correction(cfg.rej_sigma)
    for ti, t in enumerate(amps):
        for si, s in enumerate(amps):
            if t == s:
                continue
            vals, flx = [], []
            for m in measurements:
                r = m.ratios.get(t, {}).get(s)
                if r is None:
                    continue
                f = m.fluxes[t][s]
                vals.append(np.asarray(r, np.float64))
                flx.append(np.asarray(f, np.float64))
            v = np.concatenate(vals) if vals else np.zeros(0)
            f = np.concatenate(flx) if flx else np.zeros(0)
            good = np.abs(v) < 1.0
            v, f = _clip(v[good], f[good], cfg.rej_iter, cfg.rej_sigma)
            num[ti, si] = v.size
            if v.size == 0:
                coeffs[ti, si] = math.nan
                continue
            c = float(np.mean(v))
            if cfg.flux_order == 1 and v.size > 2 and np.ptp(f) > 0:
                slope, icpt = np.polyfit(f, v, 1)
                c, sqr[ti, si] = float(icpt), float(slope)
            if cfg.reject_negative_solutions and c < 0:
                c = 0.0
            coeffs[ti, si] = c
            if v.size > 1:
                err[ti, si] = float(np.std(v)) * corr
                limit = cfg.significance_limit * err[ti, si]
                if cfg.do_significance_scaling:
                    limit /= math.sqrt(v.size)
                valid[ti, si] = abs(c) > limit
    if cfg.do_filtering:
        coeffs[~valid] = 0.0
        sqr[~valid] = 0.0
        err[~valid] = np.nan
    np.fill_diagonal(coeffs, 0.0)
    md = {"OBSTYPE": "crosstalk", "UNITS": "adu", "N_EXPOSURES": len(measurements),
          "INPUT_EXPIDS": sorted({int(m.exposure_id) for m in measurements}), "DETECTOR": dets[0],
          "FLUX_ORDER": cfg.flux_order}
    md.update(dict(meta or {}))
    calib = CrosstalkCalib(amps=amps, coeffs=coeffs, coeff_err=err, coeff_num=num, coeff_valid=valid,
                           coeffs_sqr=sqr, meta=md)
    if output_path is not None:
        write_crosstalk(output_path, calib)
        calib.path = str(output_path)
    return calib


def _json_matrix(a: np.ndarray):
    return [[(None if (isinstance(x, float) and not math.isfinite(x)) else x) for x in row] for row in a.tolist()]


def write_crosstalk(path: str | os.PathLike, calib: CrosstalkCalib) -> Path:
    """Write the crosstalk calib as JSON (NaN as null), atomically."""
    meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in calib.meta.items()}
    doc = {"format": FORMAT, "version": VERSION, "meta": meta, "amps": list(calib.amps),
           "orientation": "coeffs[target][source], adu/adu",
           "coeffs": _json_matrix(calib.coeffs), "coeff_err": _json_matrix(calib.coeff_err),
           "coeff_num": calib.coeff_num.tolist(), "coeff_valid": calib.coeff_valid.tolist(),
           "coeffs_sqr": _json_matrix(calib.coeffs_sqr)}
    return write_json(path, doc)


def _matrix(x) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in x], dtype=np.float64)


def read_crosstalk(path: str | os.PathLike) -> CrosstalkCalib:
    """Read a cpframe crosstalk JSON file.

    Raises
    ------
    FileFormatError
        Unreadable, another format or version, or a non-square matrix.
    """
    p = str(path)
    doc = read_json_product(p, FORMAT, VERSION, "crosstalk calibration", FileFormatError, "crosstalk")
    amps = [str(a) for a in doc["amps"]]
    c = _matrix(doc["coeffs"])
    if c.shape != (len(amps), len(amps)):
        raise FileFormatError(f"{p}: crosstalk matrix of shape {c.shape} for {len(amps)} amps.")
    return CrosstalkCalib(amps=amps, coeffs=c, coeff_err=_matrix(doc["coeff_err"]),
                          coeff_num=np.asarray(doc["coeff_num"], dtype=int),
                          coeff_valid=np.asarray(doc["coeff_valid"], dtype=bool),
                          coeffs_sqr=_matrix(doc["coeffs_sqr"]), meta=dict(doc.get("meta") or {}), path=p)


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------
def crosstalk_extract_task(input_path: str | os.PathLike,
                           config: CrosstalkConfig | Mapping[str, Any] | None = None) -> CrosstalkRatios:
    """cpCrosstalkExtract for one ISR intermediate."""
    from cpframe.science.imageio import read_masked

    cfg = config if isinstance(config, CrosstalkConfig) else CrosstalkConfig.from_dict(config)
    return extract_ratios(read_masked(input_path), cfg)


def crosstalk_solve_task(measurements: Sequence[CrosstalkRatios], output_path: str | os.PathLike,
                         config: CrosstalkConfig | Mapping[str, Any] | None = None,
                         meta: Mapping[str, Any] | None = None) -> CrosstalkCalib:
    """cpCrosstalkSolve + cpCrosstalkFilter for one detector -> crosstalk json."""
    return solve_crosstalk(measurements, output_path, config, meta=meta)
