"""Overscan statistics of the ISR (spec algorithms.md §2): per-row clipped medians/means and fills.

Split out of :mod:`cpframe.science.isr` (which re-exports these names) to keep that module
to the ISR steps themselves.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from cpframe.science.combine import IQ_TO_STDEV, clipped_stats
from cpframe.science.robust import clipped_stats_and_median_1d, median_of_finite

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
    if not _within(data, valid, max_deviation):  # else no pixel is further than that from the median: no cut
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


def _within(data: np.ndarray, valid: np.ndarray, max_deviation: float) -> bool:
    """Whether every valid value is within ``max_deviation`` of any number between the smallest and the largest
    valid value, so of their median: then the median and its cut change nothing (an overscan's values span a few
    tens of adu, the cut is 1000 / 100 adu; issue 14: the median of a full-size amp's overscan is 0.5 ms, the
    range 0.05 ms).  In floating point too: ``|x - m|`` rounds to no more than ``max - min`` rounds to, for any
    ``m`` between them."""
    if valid.all():
        lo, hi = data.min(), data.max()
    else:
        kept = data[valid]
        lo, hi = kept.min(), kept.max()
    return bool(hi - lo <= max_deviation)


def _robust_stats(values: np.ndarray) -> dict[str, float]:
    # combine.clipped_stats (3 sigma, 3 iterations) and median_of_finite in one selection (issue 14: the prepass)
    v = values if values.dtype.kind in "fiu" else values.astype(np.float64)
    _, std, _, med, n = clipped_stats_and_median_1d(v.ravel(), 3.0, 3, IQ_TO_STDEV)
    if n != values.size:
        med = float(np.median(values))  # inf or NaN among them: numpy's answer
    return {"MEAN": float(np.mean(values)) if values.size else math.nan, "MEDIAN": float(med), "STDEV": std}


# --------------------------------------------------------------------------------------
# per-row clipped statistic (vectorised: one sort per region)
# --------------------------------------------------------------------------------------
@njit(nogil=True, cache=True, inline="always")
def _quantile_of_row(xs, r, start, count, q):
    """Quantile ``q`` of the sorted run ``xs[r, start:start + count]`` (position start + q (count - 1), linear
    between neighbours, positions clipped to the row; NaN when the run is empty)."""
    if count <= 0:
        return np.nan
    c = xs.shape[1]
    pos = start + q * np.float64(max(count - 1, 0))
    k = np.int64(math.floor(pos))
    frac = pos - k
    k0 = min(max(k, 0), c - 1)
    k1 = min(max(min(k0 + 1, start + count - 1), 0), c - 1)
    lo = xs[r, k0]
    return lo + (xs[r, k1] - lo) * frac


@njit(nogil=True, cache=True)
def _row_median_sigma(xs, n, iq_to_stdev):
    """Median and IQR sigma of each sorted row's first ``n`` values (NaN for an empty row)."""
    rows = xs.shape[0]
    med = np.empty(rows)
    sig = np.empty(rows)
    for r in range(rows):
        med[r] = _quantile_of_row(xs, r, 0, n[r], 0.5)
        sig[r] = iq_to_stdev * (_quantile_of_row(xs, r, 0, n[r], 0.75) - _quantile_of_row(xs, r, 0, n[r], 0.25))
    return med, sig


@njit(nogil=True, cache=True)
def _row_clipped_median(xs, n, med, sig, msig, clip):
    """The clipped median of each sorted row (the steps of :func:`row_clipped_statistic` after the median sigma)."""
    rows, cols = xs.shape
    out = np.empty(rows)
    for r in range(rows):
        if n[r] <= 0:
            out[r] = np.nan
            continue
        s = msig if sig[r] > 2.0 * msig else sig[r]
        lo = med[r] - clip * s
        hi = med[r] + clip * s
        start = 0
        end = 0
        for j in range(cols):  # the row is sorted (+inf after its valid values): two counts
            start += xs[r, j] < lo
            end += xs[r, j] <= hi
        count = end - start
        out[r] = _quantile_of_row(xs, r, start, count, 0.5) if count > 0 else med[r]
    return out


def row_clipped_statistic(data: np.ndarray, valid: np.ndarray, clip: float, use_mean: bool) -> np.ndarray:
    """Per-row clipped median (or mean) of a 2-d overscan region (rows, cols), spec §2 step 4.

    For each row: median and IQR-sigma (0.7413*IQR) of the valid pixels.  Rows whose
    sigma exceeds twice the median sigma get the median sigma (bleeds must not widen the
    cut); then pixels beyond clip*sigma of the row median are dropped and the median (or
    mean) of the rest is returned.  NaN for rows without valid pixels.  Each row is sorted
    once (numpy's SIMD sort of the whole region: three times faster than a compiled
    insertion sort per row, benchmarks/RESULTS.md), so the kept pixels are a contiguous
    slice of the sorted row.
    """
    x = np.where(valid, data, np.inf)
    xs = np.sort(x, axis=1)
    n = valid.sum(axis=1)
    med, sig = _row_median_sigma(xs, n, IQ_TO_STDEV)  # compiled row by row (issue 14: ~20 numpy passes before)
    good = np.isfinite(sig)
    if not good.any():
        return np.full(data.shape[0], np.nan)
    msig = float(np.median(sig[good]))
    if not use_mean:
        return _row_clipped_median(xs, n, med, sig, msig, float(clip))
    sig = np.where(sig > 2.0 * msig, msig, sig)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = med - clip * sig
        hi = med + clip * sig
        kept = (xs >= lo[:, None]) & (xs <= hi[:, None])
        count = kept.sum(axis=1)
        out = np.where(kept, xs, 0.0).sum(axis=1) / count
    out = np.where(count > 0, out, med)
    return np.where(n > 0, out, np.nan)
