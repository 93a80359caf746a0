"""The compiled MEANCLIP of one set of values (cpframe/science/robust.py) against the numpy form it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.science.combine import clipped_stats
from cpframe.science.kernels import IQ_TO_STDEV
from cpframe.science.overscan import overscan_vector, row_clipped_statistic
from cpframe.science.robust import quartiles


def numpy_clipped_stats(values, clip=3.0, n_iter=3):
    """The numpy form (cpframe before issue 14's prepass work), kept here as the reference."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    q25, med, q75 = np.percentile(v, (25, 50, 75))
    hw = clip * IQ_TO_STDEV * (q75 - q25)
    lo, hi = med - hw, med + hw
    keep = None
    for it in range(int(n_iter) + 1):
        new = (v >= lo) & (v <= hi)
        if not new.any():
            return math.nan, math.nan, 0
        if keep is not None and np.array_equal(new, keep):
            break
        keep = new
        sel = v[keep]
        mean = float(sel.mean())
        std = float(sel.std(ddof=1)) if sel.size > 1 else math.nan
        if it == n_iter or not math.isfinite(std) or std == 0:
            break
        lo, hi = mean - clip * std, mean + clip * std
    return mean, std, int(keep.sum())


def _cases():
    rng = np.random.default_rng(7)
    noise = rng.normal(1000.0, 7.0, 131072)
    outliers = noise.copy()
    outliers[rng.integers(0, noise.size, 500)] += rng.uniform(50, 5000, 500)
    holes = outliers.copy()
    holes[::97] = np.nan
    holes[::1013] = np.inf
    ints = np.round(rng.normal(20000, 5, (2048, 64))).astype(np.int32)
    f32 = rng.normal(0.0, 4.0, (200, 64)).astype(np.float32)
    skew = np.concatenate([rng.normal(0, 1, 5000), rng.exponential(30.0, 2000)])
    return {"gaussian": noise, "outliers": outliers, "nan_and_inf": holes, "int32_2d": ints, "float32_2d": f32,
            "skewed": skew, "constant": np.full(100, 3.5), "one": np.array([2.0]), "two": np.array([1.0, 9.0]),
            "all_nan": np.full(5, np.nan), "empty": np.array([]), "doctest": np.array([1.0, 2.0, 3.0, 100.0])}


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("clip,n_iter", [(3.0, 3), (2.0, 5), (5.0, 0)])
def test_compiled_clipped_stats_equal_the_numpy_form(name, clip, n_iter):
    values = _cases()[name]
    got = clipped_stats(values, clip, n_iter)
    want = numpy_clipped_stats(values, clip, n_iter)
    assert got[2] == want[2], (got, want)  # the same pixels kept
    for g, w in zip(got[:2], want[:2]):
        if math.isnan(w):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12), (got, want)


def test_quartiles_equal_numpy_percentile():
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 4, 5, 10, 1001, 4096, 131072):
        for x in (rng.normal(size=n), np.round(rng.normal(0, 3, n)), rng.exponential(size=n)):
            got = quartiles(x.copy(), n)
            np.testing.assert_array_equal(got, np.percentile(x, (25, 50, 75)))  # bit for bit (numpy's lerp)


def test_quartiles_fall_back_when_the_sample_misses():
    # every sampled value (each 64th) is 0, every other value 1: the sample's brackets cannot hold the ranks
    x = np.ones(131072)
    x[::64] = 0.0
    np.testing.assert_array_equal(quartiles(x.copy(), x.size), np.percentile(x, (25, 50, 75)))
    y = np.arange(131072, dtype=np.float64)[::-1].copy()  # sorted descending: the sample is an even grid
    np.testing.assert_array_equal(quartiles(y.copy(), y.size), np.percentile(y, (25, 50, 75)))


def _row_quantile(xs, start, count, q):
    rows = np.arange(xs.shape[0])
    pos = start + q * np.maximum(count - 1, 0)
    k = np.floor(pos).astype(np.int64)
    frac = pos - k
    k = np.clip(k, 0, xs.shape[1] - 1)
    k1 = np.clip(np.minimum(k + 1, start + count - 1), 0, xs.shape[1] - 1)
    lo, hi = xs[rows, k], xs[rows, k1]
    with np.errstate(invalid="ignore"):
        out = lo + (hi - lo) * frac
    return np.where(count > 0, out, np.nan)


def numpy_row_clipped_statistic(data, valid, clip, use_mean):
    """The numpy form of the per-row overscan statistic (one sort of the whole region), kept as the reference."""
    xs = np.sort(np.where(valid, data, np.inf), axis=1)
    n = valid.sum(axis=1)
    zero = np.zeros_like(n)
    med = _row_quantile(xs, zero, n, 0.5)
    sig = IQ_TO_STDEV * (_row_quantile(xs, zero, n, 0.75) - _row_quantile(xs, zero, n, 0.25))
    good = np.isfinite(sig)
    if not good.any():
        return np.full(data.shape[0], np.nan)
    msig = float(np.median(sig[good]))
    sig = np.where(sig > 2.0 * msig, msig, sig)
    with np.errstate(invalid="ignore"):
        lo, hi = med - clip * sig, med + clip * sig
        start = (xs < lo[:, None]).sum(axis=1)
        end = (xs <= hi[:, None]).sum(axis=1)
    count = end - start
    if use_mean:
        kept = (xs >= lo[:, None]) & (xs <= hi[:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(kept, xs, 0.0).sum(axis=1) / count
    else:
        out = _row_quantile(xs, start, count, 0.5)
    out = np.where(count > 0, out, med)
    return np.where(n > 0, out, np.nan)


@pytest.mark.parametrize("use_mean", [False, True])
def test_per_row_overscan_statistic_equals_the_numpy_form(use_mean):
    rng = np.random.default_rng(11)
    data = np.round(rng.normal(20000.0, 6.0, (2048, 64)))
    data[100, :5] += 3000.0  # a bleed into the overscan: the row's sigma is capped at twice the median sigma
    data[200:210, 10] = 65535.0
    valid = rng.uniform(size=data.shape) > 0.02
    valid[300] = False  # a row without valid pixels: NaN
    valid[301, 1:] = False  # one valid pixel
    valid[302, 2:] = False  # two
    got = row_clipped_statistic(data, valid, 3.0, use_mean)
    want = numpy_row_clipped_statistic(data, valid, 3.0, use_mean)
    if use_mean:  # sequential sums vs numpy's pairwise ones
        np.testing.assert_allclose(got, want, rtol=1e-13, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)
    assert np.isnan(got[300]) and got[301] == data[301, 0]
    none = row_clipped_statistic(data, np.zeros_like(valid), 3.0, use_mean)
    assert np.isnan(none).all()


def test_overscan_vector_uses_the_finite_median():
    rng = np.random.default_rng(5)
    region = rng.normal(500.0, 4.0, (512, 32))
    region[:, 3] = np.nan
    ignore = np.zeros(region.shape, bool)
    ignore[:, 7] = True
    region[:, 7] = 1e6  # ignored column, far beyond max_deviation from the rest anyway
    valid = np.isfinite(region) & ~ignore
    med = float(np.median(region[valid]))
    want = numpy_row_clipped_statistic(region, valid & (np.abs(region - med) <= 1000.0), 3.0, False)
    got = overscan_vector(region, "MEDIAN_PER_ROW", 3.0, 1000.0, ignore)
    np.testing.assert_array_equal(got, want)
