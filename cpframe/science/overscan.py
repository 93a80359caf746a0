"""Overscan statistics of the ISR (spec algorithms.md §2): per-row clipped medians/means and fills.

Split out of :mod:`cpframe.science.isr` (which re-exports these names) to keep that module
to the ISR steps themselves.
"""

from __future__ import annotations

import math

import numpy as np

from cpframe.science.combine import IQ_TO_STDEV, clipped_stats
from cpframe.science.robust import median_of_finite, row_clipped

__all__ = ["overscan_vector", "row_clipped_statistic"]


# --------------------------------------------------------------------------------------
# overscan
# --------------------------------------------------------------------------------------
def _fill_masked(vec: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN entries by the median of up to 5 valid neighbours each side (else global)."""
    bad = ~np.isfinite(vec)
    if not bad.any():
        return vec, 0
    good = ~bad
    if not good.any():
        return np.zeros_like(vec), int(bad.sum())
    out = vec.copy()
    glob = float(np.median(vec[good]))
    n = len(vec)
    for i in np.flatnonzero(bad):
        w = vec[max(0, i - 5): min(n, i + 6)]
        w = w[np.isfinite(w)]
        out[i] = float(np.median(w)) if w.size else glob
    return out, int(bad.sum())


def overscan_vector(region: np.ndarray, fit_type: str, clip: float, max_deviation: float,
                    ignore: np.ndarray | None = None) -> np.ndarray:
    """Overscan level per row of ``region`` (rows, cols) (spec §2 steps 2-4).

    Parameters
    ----------
    region : numpy.ndarray
        Overscan pixels, one row per output value (transpose for the parallel overscan).
    fit_type : str
        MEDIAN_PER_ROW / MEAN_PER_ROW (one value per row) or MEDIAN / MEAN / MEANCLIP (one
        constant broadcast to every row).
    clip : float
        Sigma for the per-row IQR clipping.
    max_deviation : float
        Pixels further than this from the region median are ignored.
    ignore : numpy.ndarray of bool, optional
        Pixels to ignore (e.g. saturated columns).

    Returns
    -------
    numpy.ndarray
        float64 vector of ``region.shape[0]`` values.
    """
    data = np.asarray(region, dtype=np.float64)
    valid = np.isfinite(data)
    if ignore is not None:
        valid &= ~ignore
    if not valid.any():
        return np.zeros(data.shape[0])
    med = median_of_finite(np.where(valid, data, np.nan).ravel())[0] if ignore is not None else median_of_finite(
        data.ravel())[0]
    valid &= np.abs(data - med) <= max_deviation
    if fit_type in ("MEDIAN", "MEAN", "MEANCLIP"):
        v = data[valid]
        if v.size == 0:
            value = 0.0
        elif fit_type == "MEDIAN":
            value = float(np.median(v))
        elif fit_type == "MEAN":
            value = float(v.mean())
        else:
            value = clipped_stats(v, clip)[0]
        return np.full(data.shape[0], value)
    vec = row_clipped_statistic(np.ascontiguousarray(data), np.ascontiguousarray(valid), float(clip),
                                fit_type == "MEAN_PER_ROW")
    vec, _ = _fill_masked(vec)
    return vec


def _robust_stats(values: np.ndarray) -> dict[str, float]:
    mean, std, _ = clipped_stats(values)
    med, n = median_of_finite(values) if values.size else (math.nan, 0)
    if n != values.size:
        med = float(np.median(values))  # inf or NaN among them: numpy's answer
    return {"MEAN": float(np.mean(values)) if values.size else math.nan, "MEDIAN": float(med), "STDEV": std}


# --------------------------------------------------------------------------------------
# per-row clipped statistic (compiled: cpframe.science.robust)
# --------------------------------------------------------------------------------------
def row_clipped_statistic(data: np.ndarray, valid: np.ndarray, clip: float, use_mean: bool) -> np.ndarray:
    """Per-row clipped median (or mean) of a 2-d overscan region (rows, cols), spec §2 step 4.

    For each row: median and IQR-sigma (0.7413*IQR) of the valid pixels.  Rows whose
    sigma exceeds twice the median sigma get the median sigma (bleeds must not widen the
    cut); then pixels beyond clip*sigma of the row median are dropped and the median (or
    mean) of the rest is returned.  NaN for rows without valid (finite) pixels.  Each row's
    valid pixels are sorted once (compiled: :func:`cpframe.science.robust.row_clipped`), so
    the kept pixels are a contiguous slice of the sorted row.
    """
    return row_clipped(np.ascontiguousarray(data), np.ascontiguousarray(valid) & np.isfinite(data), float(clip),
                       bool(use_mean), IQ_TO_STDEV)
