"""Compiled per-pixel combine kernels (numba, no GIL held): MEAN, MEDIAN, MEANCLIP.

The combine (:mod:`cpframe.science.combine`) reads a strip of N inputs, ``(N, rows, cols)``,
and calls one of these kernels.  Every kernel works across columns at once (the inner
loops run over a tile of columns, so LLVM vectorises them) and the column tile is small
enough (``TILE`` columns x N values) for the working set to stay in the L1/L2 cache:

* :func:`combine_strip_mean` -- MEAN with errors from the scatter: two masked sums;
* :func:`combine_strip_sorted` -- MEDIAN and MEANCLIP: the N values of every column are
  sorted by a fixed comparator network (branch-free); quantiles are gathers; the
  clipping passes are masked sums over the sorted values;
* :func:`combine_strip` -- the per-pixel reference kernel (any statistic), used below
  ``maxVisitsToCalcErrorFromInputVariance`` inputs where the variance comes from the
  input variance planes.

Two clipping rules (``clip_method``):

``CLIP_CP_PIPE`` (0, the default, afw ``MEANCLIP``): keep values within median ± clip ·
0.7413 · IQR, then up to ``n_iter`` passes keep the values within mean ± clip · stdev
(ddof=1) of the previous pass; every pass re-tests every input (a value rejected early
can come back); the value is the final mean.

``CLIP_ASTROPY`` (1, ``astropy.stats.sigma_clip(sigma=clip, maxiters=n_iter,
cenfunc='median', stdfunc='std')`` then the mean): each iteration takes the median and
the population stdev (ddof=0) of the values still kept and removes those outside median
± clip · stdev; removed values never come back; it stops when nothing more is removed.
Because the kept set is always a contiguous run of the sorted values, each iteration is
two gathers and masked sums.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

__all__ = [
    "STAT_MEAN",
    "STAT_MEDIAN",
    "STAT_MEANCLIP",
    "CLIP_CP_PIPE",
    "CLIP_ASTROPY",
    "IQ_TO_STDEV",
    "TILE",
    "clipped_stack_pixel",
    "combine_strip",
    "combine_strip_mean",
    "combine_strip_sorted",
    "sorting_network",
]

STAT_MEAN = 0
STAT_MEDIAN = 1
STAT_MEANCLIP = 2

CLIP_CP_PIPE = 0
CLIP_ASTROPY = 1

#: Ratio of a Gaussian's sigma to its inter-quartile range (afw's IQ_TO_STDEV).
IQ_TO_STDEV = 0.7413

#: Columns processed together by the sorted kernels: N x TILE values (and the MEANCLIP prefix sums, 16 bytes
#: per value) stay in cache.  256: with 1024 columns the MEANCLIP kernel on 100 / 200 inputs took 1.1x / 1.5x as
#: long; MEDIAN within the noise (benchmarks/RESULTS.md, issue 14 second session).
TILE = 256


@njit(nogil=True, cache=True, inline="always")
def _sort_small(a, n):
    """Insertion sort of a[:n] in place (fast for the few tens of inputs of a combine)."""
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@njit(nogil=True, cache=True, inline="always")
def _quantile_sorted(a, n, q):
    """Linear-interpolated quantile of sorted a[:n] (numpy's default 'linear' method)."""
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = lo + 1 if lo + 1 < n else lo
    frac = pos - lo
    return a[lo] + (a[hi] - a[lo]) * frac


@njit(nogil=True, cache=True)
def _sort(a, n):
    if n <= 48:
        _sort_small(a, n)
    else:
        a[:n] = np.sort(a[:n])


@njit(nogil=True, cache=True)
def _astropy_pixel(work, n, clip, n_iter):
    """astropy sigma_clip (median centre, ddof=0 stdev) of sorted work[:n] -> (a, b) kept run."""
    a = 0
    b = n
    for _ in range(n_iter):
        m = b - a
        if m == 0:
            break
        pos = 0.5 * (m - 1)
        k0 = int(pos)
        k1 = k0 + 1 if k0 + 1 < m else k0
        med = work[a + k0] + (work[a + k1] - work[a + k0]) * (pos - k0)
        s = 0.0
        for i in range(a, b):
            s += work[i]
        mean = s / m
        ss = 0.0
        for i in range(a, b):
            d = work[i] - mean
            ss += d * d
        std = math.sqrt(ss / m)
        lo = med - clip * std
        hi = med + clip * std
        na = a
        while na < b and work[na] < lo:
            na += 1
        nb = b
        while nb > na and work[nb - 1] > hi:
            nb -= 1
        if na == a and nb == b:
            break
        a = na
        b = nb
    return a, b


@njit(nogil=True, cache=True)
def clipped_stack_pixel(vals, vvar, n, stat, clip, n_iter, use_var, work, keep, method=0):
    """Statistic of vals[:n] -> (value, variance of the statistic, number used).

    MEANCLIP follows ``method`` (module docstring).  Variance of the statistic: stdev**2/n
    (ddof=1) from the scatter, or sum(var)/n**2 from the inputs' variance planes
    (``use_var``).  MEDIAN variance is pi/2 times the mean's.
    """
    if n == 0:
        return np.nan, np.nan, 0
    if stat == STAT_MEAN:
        s = 0.0
        for i in range(n):
            s += vals[i]
        mean = s / n
        if use_var:
            sv = 0.0
            for i in range(n):
                sv += vvar[i]
            return mean, sv / (n * n), n
        if n < 2:
            return mean, np.nan, n
        ss = 0.0
        for i in range(n):
            d = vals[i] - mean
            ss += d * d
        return mean, ss / (n - 1) / n, n
    if stat == STAT_MEANCLIP and method == CLIP_ASTROPY:
        # sort values and variances together (index sort: variances follow their values)
        for i in range(n):
            work[i] = vals[i]
        order = np.argsort(work[:n], kind="mergesort")
        for i in range(n):
            work[i] = vals[order[i]]
        a, b = _astropy_pixel(work, n, clip, n_iter)
        m = b - a
        if m == 0:
            return np.nan, np.nan, 0
        s = 0.0
        for i in range(a, b):
            s += work[i]
        mean = s / m
        if use_var:
            sv = 0.0
            for i in range(a, b):
                sv += vvar[order[i]]
            return mean, sv / (m * m), m
        if m < 2:
            return mean, np.nan, m
        ss = 0.0
        for i in range(a, b):
            d = work[i] - mean
            ss += d * d
        return mean, ss / (m - 1) / m, m
    for i in range(n):
        work[i] = vals[i]
    _sort(work, n)
    med = _quantile_sorted(work, n, 0.5)
    if stat == STAT_MEDIAN:
        if use_var:
            sv = 0.0
            for i in range(n):
                sv += vvar[i]
            return med, 0.5 * math.pi * sv / (n * n), n
        if n < 2:
            return med, np.nan, n
        s = 0.0
        for i in range(n):
            s += vals[i]
        mean = s / n
        ss = 0.0
        for i in range(n):
            d = vals[i] - mean
            ss += d * d
        return med, 0.5 * math.pi * ss / (n - 1) / n, n
    # MEANCLIP (cp_pipe): every pass tests every input against the current bounds (afw), so a
    # value rejected by a narrow early cut can come back
    hw = clip * IQ_TO_STDEV * (_quantile_sorted(work, n, 0.75) - _quantile_sorted(work, n, 0.25))
    lo = med - hw
    hi = med + hw
    it = 0
    first = True
    while True:
        m = 0
        s = 0.0
        changed = False
        for i in range(n):
            v = vals[i]
            k = lo <= v <= hi
            if first or k != keep[i]:
                changed = True
            keep[i] = k
            if k:
                m += 1
                s += v
        first = False
        if m == 0:
            return np.nan, np.nan, 0
        if not changed:
            break  # same set as the previous pass: converged
        mean = s / m
        if m < 2:
            std = np.nan
        else:
            ss = 0.0
            for i in range(n):
                if keep[i]:
                    d = vals[i] - mean
                    ss += d * d
            std = math.sqrt(ss / (m - 1))
        if it == n_iter or not (std == std) or std == 0.0:
            break
        it += 1
        lo = mean - clip * std
        hi = mean + clip * std
    if use_var:
        sv = 0.0
        for i in range(n):
            if keep[i]:
                sv += vvar[i]
        return mean, sv / (m * m), m
    if m < 2:
        return mean, np.nan, m
    return mean, std * std / m, m


@njit(nogil=True, cache=True)
def combine_strip(data, masks, variances, scales, ignore_bits, stat, clip, n_iter, use_var,
                  out_image, out_var, out_mask, out_n, method=0):
    """Combine a strip ``(N, rows, cols)`` pixel by pixel (the reference kernel).

    Inputs whose mask has any ``ignore_bits`` or whose value is not finite are dropped.
    Each value is divided by its scale (variance by scale**2).  ``out_mask`` receives the
    OR of the masks of the inputs that entered the statistic; ``out_n`` the count used.
    """
    N, R, C = data.shape
    vals = np.empty(N, np.float64)
    vvar = np.empty(N, np.float64)
    work = np.empty(N, np.float64)
    keep = np.empty(N, np.bool_)
    inv = np.empty(N, np.float64)
    for i in range(N):
        inv[i] = 1.0 / scales[i]
    for r in range(R):
        for c in range(C):
            n = 0
            orm = 0
            for i in range(N):
                mk = masks[i, r, c]
                v = data[i, r, c]
                if (mk & ignore_bits) != 0 or not math.isfinite(v):
                    continue
                vals[n] = v * inv[i]
                if use_var:
                    vvar[n] = variances[i, r, c] * inv[i] * inv[i]
                orm |= mk
                n += 1
            value, var, used = clipped_stack_pixel(vals, vvar, n, stat, clip, n_iter, use_var, work, keep, method)
            out_image[r, c] = value
            out_var[r, c] = var
            out_mask[r, c] = orm
            out_n[r, c] = used


@njit(nogil=True, cache=True)
def combine_strip_mean(data, masks, scales, ignore_bits, out_image, out_var, out_mask, out_n):
    """MEAN of a strip with errors from the scatter, vectorised across columns.

    The same sums in the same order as :func:`clipped_stack_pixel` (sum, then the sum of
    squared deviations from the mean), so the result is identical to the per-pixel kernel.
    """
    N, R, C = data.shape
    inv = np.empty(N, np.float64)
    for i in range(N):
        inv[i] = 1.0 / scales[i]
    s1 = np.empty(C, np.float64)
    s2 = np.empty(C, np.float64)
    cnt = np.empty(C, np.int64)
    orm = np.empty(C, np.int32)
    for r in range(R):
        for c in range(C):
            s1[c] = 0.0
            s2[c] = 0.0
            cnt[c] = 0
            orm[c] = 0
        for i in range(N):
            s = inv[i]
            for c in range(C):
                mk = masks[i, r, c]
                v = np.float64(data[i, r, c])
                ok = (mk & ignore_bits) == 0 and math.isfinite(v)
                s1[c] += v * s if ok else 0.0
                cnt[c] += 1 if ok else 0
                orm[c] |= mk if ok else 0
        for c in range(C):
            n = cnt[c]
            s1[c] = s1[c] / n if n > 0 else np.nan
        for i in range(N):
            s = inv[i]
            for c in range(C):
                mk = masks[i, r, c]
                v = np.float64(data[i, r, c])
                ok = (mk & ignore_bits) == 0 and math.isfinite(v)
                d = v * s - s1[c]
                s2[c] += d * d if ok else 0.0
        for c in range(C):
            n = cnt[c]
            out_image[r, c] = s1[c]
            out_var[r, c] = s2[c] / (n - 1) / n if n >= 2 else np.nan
            out_mask[r, c] = orm[c]
            out_n[r, c] = n


def sorting_network(n: int) -> np.ndarray:
    """Comparator pairs (i, j), i < j, of Batcher's odd-even merge sort for ``n`` values.

    Built for the next power of two and restricted to pairs with j < n: padding values
    are +inf, so the dropped comparators would never swap anything.

    >>> v = np.array([3.0, 1.0, 2.0, 0.5, 7.0])
    >>> for i, j in sorting_network(5):
    ...     v[i], v[j] = min(v[i], v[j]), max(v[i], v[j])
    >>> v.tolist()
    [0.5, 1.0, 2.0, 3.0, 7.0]
    """
    return _sorting_network(int(n)).copy()


@functools.lru_cache(maxsize=64)
def _sorting_network(n: int) -> np.ndarray:
    p = 1
    while p < n:
        p *= 2
    pairs = []

    def merge(lo, length, step):
        double = step * 2
        if double < length:
            merge(lo, length, double)
            merge(lo + step, length, double)
            for i in range(lo + step, lo + length - step, double):
                pairs.append((i, i + step))
        else:
            pairs.append((lo, lo + step))

    def sort(lo, length):
        if length > 1:
            half = length // 2
            sort(lo, half)
            sort(lo + half, half)
            merge(lo, length, 1)

    sort(0, p)
    out = np.array([(i, j) for i, j in pairs if j < n], dtype=np.int64).reshape(-1, 2)
    return out


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _inward_bounds(lo, hi, lo_w, hi_w, lo_i, hi_i, W):
    """``lo[:W]`` / ``hi[:W]`` (float64) as the work array's type, rounded inwards: the least value >= lo and
    the greatest <= hi, so that for any value x of that type ``x < lo_w`` is ``x < lo`` and ``x <= hi_w`` is
    ``x <= hi``.  ``lo_i`` / ``hi_i``: int32 views of ``lo_w`` / ``hi_w`` (a float32 bound that rounded
    outwards steps one unit in the last place through its bits; -inf steps to the lowest finite value,
    +inf to the highest; a float64 bound is exact and never steps)."""
    for t in range(W):
        lo_w[t] = lo_w.dtype.type(lo[t])
        hi_w[t] = hi_w.dtype.type(hi[t])
    for t in range(W):
        if lo_w[t] < lo[t]:
            lo_i[t] = 1 if lo_w[t] == 0 else (lo_i[t] + 1 if lo_w[t] > 0 else lo_i[t] - 1)
        if hi_w[t] > hi[t]:
            hi_i[t] = -2147483647 if hi_w[t] == 0 else (hi_i[t] - 1 if hi_w[t] > 0 else hi_i[t] + 1)


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _gather_quantile(work, t, a, m, q):
    """Quantile q (numpy 'linear') of the sorted run work[a:a+m, t] (m >= 1)."""
    pos = q * (m - 1)
    k0 = int(pos)
    k1 = k0 + 1 if k0 + 1 < m else k0
    x0 = np.float64(work[a + k0, t])
    return x0 + (np.float64(work[a + k1, t]) - x0) * (pos - k0)


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _row_quantile(work, m, q, out, W):
    """:func:`_gather_quantile` of the sorted runs work[0:m, t] of every column t < W at once (the same m for all:
    the same two rows), into ``out``."""
    pos = q * (m - 1)
    k0 = int(pos)
    k1 = k0 + 1 if k0 + 1 < m else k0
    f = pos - k0
    r0 = work[k0]
    r1 = work[k1]
    for t in range(W):
        x0 = np.float64(r0[t])
        out[t] = x0 + (np.float64(r1[t]) - x0) * f


@njit(nogil=True, cache=True, error_model="numpy")
def combine_strip_sorted(data, masks, scales, ignore_bits, stat, clip, n_iter, network, work,
                         out_image, out_var, out_mask, out_n, method=0):
    """MEDIAN / MEANCLIP of a strip ``(N, rows, cols)`` with errors from the scatter.

    Row by row and tile by tile of ``work.shape[1]`` columns: the N values of every column
    go into ``work`` (N, tile) (ignored inputs as +inf), are sorted by a fixed comparator
    network applied to all columns of the tile at once, and every step after that runs
    across columns too: quantiles are per-column gathers from the sorted rows, and each
    clipping pass is a masked sum over the sorted rows against per-column bounds.  For
    ``CLIP_CP_PIPE`` each pass's kept set is a run of the sorted values, so its sums come
    from one prefix sum; a column whose stdev is 0 or undefined, or whose kept set no
    longer changes, stops, which reproduces the early exits of :func:`clipped_stack_pixel`.
    Every inner loop indexes tile-local views with a ``range`` variable (numba then
    drops its negative-index checks and vectorises the loop).
    """
    N, R, C = data.shape
    T = work.shape[1]
    count = np.empty(T, np.int64)
    orm = np.empty(T, np.int32)
    inv = np.empty(N, np.float64)
    med = np.empty(T, np.float64)
    lo = np.empty(T, np.float64)
    hi = np.empty(T, np.float64)
    s1 = np.empty(T, np.float64)
    s2 = np.empty(T, np.float64)
    done = np.zeros(T, np.bool_)
    active = np.empty(T, np.int64)
    pm = np.empty(T, np.int64)
    pb = np.empty(T, np.int64)
    ka = np.empty(T, np.int64)
    kb = np.empty(T, np.int64)
    n_pre = N if stat == STAT_MEANCLIP and method == CLIP_CP_PIPE else 0
    pre1 = np.empty((n_pre, T), np.float64)  # MEANCLIP: prefix sums of the sorted deviations from the median
    pre2 = np.empty((n_pre, T), np.float64)
    fm = np.empty(T, np.float64)  # MEANCLIP: a pass's mean, stdev and variance of the mean per column
    fs = np.empty(T, np.float64)
    fv = np.empty(T, np.float64)
    lo_w = np.empty(T, work.dtype)  # MEANCLIP: a pass's bounds in the work array's type, and the counts below them
    hi_w = np.empty(T, work.dtype)
    n_le = np.empty(T, np.int32)
    n_lt = np.empty(T, np.int32)
    lo_i = lo_w.view(np.int32)  # their bits, to step a float32 bound to its neighbour (a float64 one never steps)
    hi_i = hi_w.view(np.int32)
    K = network.shape[0]
    for i in range(N):
        inv[i] = 1.0 / scales[i]
    wtype = work.dtype.type
    inf = wtype(np.inf)
    for r in range(R):
        for c0 in range(0, C, T):
            W = min(T, C - c0)
            oi = out_image[r, c0:c0 + W]
            ov = out_var[r, c0:c0 + W]
            om = out_mask[r, c0:c0 + W]
            on = out_n[r, c0:c0 + W]
            for t in range(W):
                count[t] = 0
                orm[t] = 0
            for i in range(N):
                s = inv[i]
                drow = data[i, r, c0:c0 + W]
                mrow = masks[i, r, c0:c0 + W]
                wrow = work[i]
                for t in range(W):
                    mk = mrow[t]
                    v = drow[t]
                    ok = (mk & ignore_bits) == 0 and math.isfinite(v)
                    wrow[t] = v * s if ok else inf
                    count[t] += 1 if ok else 0
                    orm[t] |= mk if ok else 0
            for k in range(K):
                wa = work[network[k, 0]]
                wb = work[network[k, 1]]
                for t in range(W):
                    a = wa[t]
                    b = wb[t]
                    wa[t] = a if a < b else b
                    wb[t] = b if a < b else a
            # median (and quartiles) of each column's n sorted values (numpy's linear interpolation)
            n_lo = N
            n_hi = 0
            for t in range(W):
                om[t] = orm[t]
                n_lo = min(n_lo, count[t])
                n_hi = max(n_hi, count[t])
            if n_lo == n_hi and n_lo > 0:  # every column has the same count (nearly every tile): the quantiles are
                # at the same sorted rows for all of them, read row-wise (vectorised), _gather_quantile's arithmetic
                _row_quantile(work, n_lo, 0.5, med, W)
                if stat == STAT_MEANCLIP and method == CLIP_CP_PIPE:
                    _row_quantile(work, n_lo, 0.75, fm, W)  # (fm / fs: free until the first pass)
                    _row_quantile(work, n_lo, 0.25, fs, W)
                    for t in range(W):
                        hw = clip * IQ_TO_STDEV * (fm[t] - fs[t])
                        lo[t] = med[t] - hw
                        hi[t] = med[t] + hw
            else:
                for t in range(W):
                    n = count[t]
                    if n == 0:
                        med[t] = np.nan
                        lo[t] = np.nan
                        hi[t] = np.nan
                        continue
                    med[t] = _gather_quantile(work, t, 0, n, 0.5)
                    if stat == STAT_MEANCLIP and method == CLIP_CP_PIPE:
                        hw = clip * IQ_TO_STDEV * (_gather_quantile(work, t, 0, n, 0.75)
                                                   - _gather_quantile(work, t, 0, n, 0.25))
                        lo[t] = med[t] - hw
                        hi[t] = med[t] + hw
            if stat == STAT_MEDIAN:
                for t in range(W):
                    s1[t] = 0.0
                    s2[t] = 0.0
                for k in range(N):
                    wrow = work[k]
                    for t in range(W):
                        x = np.float64(wrow[t])
                        d = x - med[t] if k < count[t] else 0.0
                        s1[t] += d
                        s2[t] += d * d
                for t in range(W):
                    n = count[t]
                    oi[t] = med[t]
                    on[t] = n
                    ov[t] = 0.5 * math.pi * (s2[t] - s1[t] * s1[t] / n) / (n - 1) / n if n >= 2 else np.nan
                continue
            if method == CLIP_ASTROPY:
                _astropy_tile(work, count, W, clip, n_iter, med, ka, kb, s1, s2, oi, ov, on)
                continue
            # MEANCLIP passes 0 (IQR bounds) and 1 (first mean/stdev bounds) over every column,
            # vectorised; the few columns whose kept set still changes continue one by one.
            # The values are sorted, so a pass keeps a run [a, b) of them: a = how many fall
            # below its lower bound, b = how many not above its upper one (two counts, no sums).
            # The run's sums of deviations from the median come from prefix sums made once per
            # tile when it starts at the first value (a == 0, nearly every column); the others
            # sum their run directly.  Either way the additions are the masked sum's, in its
            # order (skipped values added 0.0 to a sum that is never -0.0), so the numbers are
            # bit for bit the per-pixel kernel's (tests/test_combine.py).
            for t in range(W):
                s1[t] = 0.0
                s2[t] = 0.0
            for k in range(N):
                wrow = work[k]
                q1 = pre1[k]
                q2 = pre2[k]
                for t in range(W):
                    d = np.float64(wrow[t]) - med[t]
                    s1[t] += d
                    s2[t] += d * d
                    q1[t] = s1[t]
                    q2[t] = s2[t]
            n_active = 0
            for p in range(2):
                # a = values below the lower bound, b = values not above the upper one, compared in the
                # work array's type (float32: twice the SIMD width) against bounds rounded inwards
                _inward_bounds(lo, hi, lo_w, hi_w, lo_i, hi_i, W)
                for t in range(W):
                    n_le[t] = 0
                    n_lt[t] = 0
                for k in range(N):
                    wrow = work[k]
                    for t in range(W):
                        x = wrow[t]
                        n_le[t] += np.int32(x <= hi_w[t])
                        n_lt[t] += np.int32(x < lo_w[t])
                for t in range(W):
                    a = np.int64(n_lt[t])
                    b = np.int64(n_le[t])
                    kb[t] = a
                    if b <= a:  # nothing kept
                        ka[t] = 0
                        s1[t] = 0.0
                        s2[t] = 0.0
                    elif a == 0:  # the run [0, b): its prefix sums
                        ka[t] = b
                        s1[t] = pre1[b - 1, t]
                        s2[t] = pre2[b - 1, t]
                    else:  # the few runs that do not start at the first value: summed directly
                        ka[t] = b - a
                        a1 = 0.0
                        a2 = 0.0
                        for k in range(a, b):
                            d = np.float64(work[k, t]) - med[t]
                            a1 += d
                            a2 += d * d
                        s1[t] = a1
                        s2[t] = a2
                for t in range(W):  # every column's mean, stdev and variance of the mean at once (vectorised)
                    mf = np.float64(ka[t])
                    fm[t] = med[t] + s1[t] / mf
                    ss = s2[t] - s1[t] * s1[t] / mf
                    sd = math.sqrt(ss / (mf - 1.0)) if ss > 0 else 0.0
                    sd = sd if ka[t] >= 2 else np.nan
                    fs[t] = sd
                    fv[t] = sd * sd / mf
                for t in range(W):
                    if count[t] == 0:
                        if p == 0:
                            oi[t] = np.nan
                            ov[t] = np.nan
                            on[t] = 0
                        continue
                    if p == 1 and (done[t] or (ka[t] == pm[t] and kb[t] == pb[t])):
                        continue  # done after pass 0, or converged: the pass-0 result stands
                    pm[t] = ka[t]
                    pb[t] = kb[t]
                    # _finish_pass with the numbers computed above
                    if ka[t] == 0:
                        oi[t] = np.nan
                        ov[t] = np.nan
                        on[t] = 0
                        stop = True
                    else:
                        sd = fs[t]
                        oi[t] = fm[t]
                        ov[t] = fv[t]
                        on[t] = ka[t]
                        stop = not (sd == sd) or sd == 0.0
                        if not stop:
                            lo[t] = fm[t] - clip * sd
                            hi[t] = fm[t] + clip * sd
                    if p == 0:
                        done[t] = stop or n_iter == 0
                    elif not stop and n_iter > 1:
                        active[n_active] = t
                        n_active += 1
            for j in range(n_active):
                t = active[j]
                n = count[t]
                for it in range(2, n_iter + 1):
                    a1 = 0.0
                    a2 = 0.0
                    mm = 0
                    bl = 0
                    for k in range(n):
                        x = np.float64(work[k, t])
                        if x < lo[t]:
                            bl += 1
                        elif x <= hi[t]:
                            d = x - med[t]
                            a1 += d
                            a2 += d * d
                            mm += 1
                    if mm == pm[t] and bl == pb[t]:
                        break
                    pm[t] = mm
                    pb[t] = bl
                    if _finish_pass(oi, ov, on, t, mm, a1, a2, med[t], clip, lo, hi) or it == n_iter:
                        break


@njit(nogil=True, cache=True, inline="always", error_model="numpy")
def _finish_pass(oi, ov, on, t, m, s1, s2, med, clip, lo, hi):
    """Mean/stdev of one pass into the outputs and the next bounds; True when clipping must stop."""
    if m == 0:
        oi[t] = np.nan
        ov[t] = np.nan
        on[t] = 0
        return True
    mean = med + s1 / m
    if m >= 2:
        ss = s2 - s1 * s1 / m
        std = math.sqrt(ss / (m - 1)) if ss > 0 else 0.0
    else:
        std = np.nan
    oi[t] = mean
    ov[t] = std * std / m if m >= 2 else np.nan
    on[t] = m
    if not (std == std) or std == 0.0:
        return True
    lo[t] = mean - clip * std
    hi[t] = mean + clip * std
    return False


@njit(nogil=True, cache=True)
def _astropy_tile(work, count, W, clip, n_iter, med, ka, kb, s1, s2, oi, ov, on):
    """astropy sigma_clip on the sorted columns of one tile: kept run [ka, kb) per column."""
    N = work.shape[0]
    for t in range(W):
        ka[t] = 0
        kb[t] = count[t]
    for _ in range(n_iter):
        # mean and population stdev of each kept run, relative to its median for precision
        for t in range(W):
            mt = kb[t] - ka[t]
            med[t] = _gather_quantile(work, t, ka[t], mt, 0.5) if mt > 0 else 0.0
            s1[t] = 0.0
            s2[t] = 0.0
        for k in range(N):
            wrow = work[k]
            for t in range(W):
                inside = (k >= ka[t]) & (k < kb[t])
                d = (np.float64(wrow[t]) - med[t]) if inside else 0.0
                s1[t] += d
                s2[t] += d * d
        changed = False
        for t in range(W):
            mt = kb[t] - ka[t]
            if mt == 0:
                continue
            mean_d = s1[t] / mt
            var = s2[t] / mt - mean_d * mean_d
            std = math.sqrt(var) if var > 0 else 0.0
            cen = med[t]
            lo = cen - clip * std
            hi = cen + clip * std
            a = ka[t]
            b = kb[t]
            while a < b and np.float64(work[a, t]) < lo:
                a += 1
            while b > a and np.float64(work[b - 1, t]) > hi:
                b -= 1
            if a != ka[t] or b != kb[t]:
                changed = True
                ka[t] = a
                kb[t] = b
        if not changed:
            break
    for t in range(W):
        mt = kb[t] - ka[t]
        if mt == 0:
            oi[t] = np.nan
            ov[t] = np.nan
            on[t] = 0
            continue
        a1 = 0.0
        ref = np.float64(work[ka[t], t])
        for k in range(ka[t], kb[t]):
            a1 += np.float64(work[k, t]) - ref
        mean = ref + a1 / mt
        a2 = 0.0
        for k in range(ka[t], kb[t]):
            d = np.float64(work[k, t]) - mean
            a2 += d * d
        oi[t] = mean
        ov[t] = a2 / (mt - 1) / mt if mt >= 2 else np.nan
        on[t] = mt


def combine_block(data, masks, variances, scales, ignore_bits, stat, clip, n_iter, use_var, method=CLIP_CP_PIPE,
                  out=None):
    """Combine one block ``(N, rows, cols)`` with the fastest kernel for the case.

    ``out`` = (image, variance, mask, n_used) arrays of shape (rows, cols) to fill (may be
    views of a larger image); new arrays when None.  Returns the four arrays.
    """
    shape = data.shape[1:]
    if out is None:
        out = (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int32),
               np.empty(shape, np.int16))
    out_image, out_var, out_mask, out_n = out
    scales = np.ascontiguousarray(scales, dtype=np.float64)
    if use_var:
        combine_strip(data, masks, variances, scales, ignore_bits, stat, clip, n_iter, True,
                      out_image, out_var, out_mask, out_n, method)
    elif stat == STAT_MEAN:
        combine_strip_mean(data, masks, scales, ignore_bits, out_image, out_var, out_mask, out_n)
    else:
        unit = bool(np.all(scales == 1.0))  # values exact in float32: sort them as float32 (twice the SIMD width)
        work = np.empty((data.shape[0], min(TILE, shape[1])), np.float32 if unit else np.float64)
        combine_strip_sorted(data, masks, scales, ignore_bits, stat, clip, n_iter, _sorting_network(data.shape[0]),
                             work, out_image, out_var, out_mask, out_n, method)
    return out
