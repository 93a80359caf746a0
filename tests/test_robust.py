"""The compiled MEANCLIP of one set of values (cpframe/science/robust.py) against the numpy form it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.science.combine import clipped_stats
from cpframe.science.kernels import IQ_TO_STDEV
from cpframe.science.overscan import overscan_vector, row_clipped_statistic
from cpframe.science.robust import percentiles, quartiles


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


@pytest.mark.parametrize("name", sorted(_cases()))
def test_clipped_stats_and_median_at_once_are_the_two_calls(name):
    """One copy and one quartile selection for both (the prepass's overscan residual): bit for bit the
    separate clipped statistics and finite median, and the median numpy's over the finite values."""
    from cpframe.science.robust import clipped_stats_1d, clipped_stats_and_median_1d, median_of_finite

    values = _cases()[name]
    flat = values.ravel() if values.dtype.kind in "fiu" else values.astype(np.float64).ravel()
    got = clipped_stats_and_median_1d(flat, 3.0, 3, IQ_TO_STDEV)
    want = (*clipped_stats_1d(flat, 3.0, 3, IQ_TO_STDEV), *median_of_finite(flat))
    assert len(got) == 5 and got[2] == want[2] and got[4] == want[4], (got, want)
    for g, w in zip(got[:2] + got[3:4], want[:2] + want[3:4]):
        assert (math.isnan(g) and math.isnan(w)) or g == w, (got, want)
    finite = flat[np.isfinite(flat)].astype(np.float64)
    assert got[4] == finite.size
    if finite.size:
        assert got[3] == np.median(finite)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_equal_numpy_percentile_bit_for_bit(dtype):
    """The product QA's percentiles (any q, any n, ties, infinities, sorted input, the sample missing its ranks)
    are numpy's own numbers and type; NaN, integers and 2-d input go to numpy."""
    rng = np.random.default_rng(5)
    qs = ([0, 5, 16, 50, 84, 95, 100], [50.0], [100.0, 0.0, 50.0], [0.1, 33.3, 66.6, 99.9])
    for n in (1, 2, 3, 4, 5, 7, 10, 255, 256, 257, 321, 1001, 4096, 131_072, 1_018_000):  # (256: _extremes' lanes)
        base = rng.normal(0, 5, n).astype(dtype)
        ties = np.round(base)
        infs = base.copy()
        infs[: min(n, 3)] = [np.inf, -np.inf, np.inf][: min(n, 3)]
        grid = np.ones(n, dtype)
        grid[::64] = 0  # every sampled value differs from the others
        for x in (base, ties, infs, np.sort(base), np.sort(base)[::-1].copy(), grid):
            kept = x.copy()
            for q in qs:
                with np.errstate(invalid="ignore"):
                    ref = np.percentile(x, q)
                    got = percentiles(x, q)
                assert got.dtype == ref.dtype
                np.testing.assert_array_equal(got, ref, err_msg=f"n {n}, q {q}")
            np.testing.assert_array_equal(x, kept)  # the input is left alone
    with_nan = np.array([1.0, np.nan, 3.0], dtype)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(percentiles(with_nan, [50]), np.percentile(with_nan, [50]))
    np.testing.assert_array_equal(percentiles(np.arange(9), [10, 90]), np.percentile(np.arange(9), [10, 90]))


def test_overscan_vector_uses_the_finite_median():
    """The region's median (compiled, NaN and ignored pixels left out) decides which pixels are within
    max_deviation of it: with a deviation of 6 adu on 4 adu noise, a median off by a fraction of an adu keeps
    other pixels and moves the per-row levels."""
    rng = np.random.default_rng(5)
    region = rng.normal(500.0, 4.0, (512, 32))
    region[:, 3] = np.nan
    ignore = np.zeros(region.shape, bool)
    ignore[:, 7] = True
    region[:, 7] = 480.0  # ignored: counted, it would pull the median down by ~0.4 adu
    valid = np.isfinite(region) & ~ignore
    med = float(np.median(region[valid]))

    def levels(m):
        return row_clipped_statistic(region, valid & (np.abs(region - m) <= 6.0), 3.0, False)

    want = levels(med)
    np.testing.assert_array_equal(overscan_vector(region, "MEDIAN_PER_ROW", 3.0, 6.0, ignore), want)
    assert not np.array_equal(levels(float(np.median(region[np.isfinite(region)]))), want)  # the ignore matters


def _numpy_row_clipped_statistic(data, valid, clip, use_mean):
    """row_clipped_statistic as numpy passes over the whole region (cpframe before issue 14's compiled rows):
    the reference the compiled rows must equal bit for bit."""
    def row_quantile(xs, start, count, q):
        rows = np.arange(xs.shape[0])
        pos = start + q * np.maximum(count - 1, 0)
        k = np.floor(pos).astype(np.int64)
        frac = pos - k
        k = np.clip(k, 0, xs.shape[1] - 1)
        k1 = np.clip(np.minimum(k + 1, start + count - 1), 0, xs.shape[1] - 1)
        lo, hi = xs[rows, k], xs[rows, k1]
        with np.errstate(invalid="ignore"):
            return np.where(count > 0, lo + (hi - lo) * frac, np.nan)

    xs = np.sort(np.where(valid, data, np.inf), axis=1)
    n = valid.sum(axis=1)
    zero = np.zeros_like(n)
    med = row_quantile(xs, zero, n, 0.5)
    sig = IQ_TO_STDEV * (row_quantile(xs, zero, n, 0.75) - row_quantile(xs, zero, n, 0.25))
    good = np.isfinite(sig)
    if not good.any():
        return np.full(data.shape[0], np.nan)
    msig = float(np.median(sig[good]))
    sig = np.where(sig > 2.0 * msig, msig, sig)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo, hi = med - clip * sig, med + clip * sig
        start = (xs < lo[:, None]).sum(axis=1)
        end = (xs <= hi[:, None]).sum(axis=1)
        count = end - start
        if use_mean:
            out = np.where((xs >= lo[:, None]) & (xs <= hi[:, None]), xs, 0.0).sum(axis=1) / count
        else:
            out = row_quantile(xs, start, count, 0.5)
        out = np.where(count > 0, out, med)
    return np.where(n > 0, out, np.nan)


@pytest.mark.parametrize("shape", [(2048, 58), (48, 509), (7, 3), (1, 1), (300, 64)])
def test_compiled_row_statistics_equal_the_numpy_passes(shape):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    for clip in (3.0, 1.5):
        data = rng.normal(1000.0, 5.0, shape)
        data[rng.random(shape) < 0.01] += 400.0  # outliers for the clipping
        valid = rng.random(shape) > 0.05
        valid[0] = False  # an empty row
        if shape[0] > 3:
            valid[1, 1:] = False  # a row of one value
            data[2] = np.round(data[2])  # ties
            data[3] += rng.normal(0, 40.0, shape[1])  # a wide row: sigma capped at twice the median sigma
        for use_mean in (False, True):  # MEDIAN_PER_ROW and MEAN_PER_ROW
            want = _numpy_row_clipped_statistic(data, valid, clip, use_mean)
            got = row_clipped_statistic(data, valid, clip, use_mean)
            np.testing.assert_array_equal(got, want)
            assert np.isnan(got[0]) and (shape[0] == 1 or np.isfinite(got[1:]).any())
    nothing = np.zeros(shape, bool)
    for use_mean in (False, True):
        assert np.isnan(row_clipped_statistic(np.ones(shape), nothing, 3.0, use_mean)).all()


def test_overscan_vector_skips_the_median_only_when_no_value_can_be_cut():
    """Values spanning less than max_deviation: the cut around the median removes nothing, so the levels are the
    same without computing it; one value further away: the median decides, as before."""
    rng = np.random.default_rng(9)
    region = rng.normal(1000.0, 5.0, (256, 40))
    valid = np.isfinite(region)
    span = float(region.max() - region.min())
    for dev in (span, span * 1.01, 1000.0):
        np.testing.assert_array_equal(overscan_vector(region, "MEDIAN_PER_ROW", 3.0, dev),
                                      row_clipped_statistic(region, valid, 3.0, False))
    region[5, 5] = 1000.0 + 2.0 * span  # now beyond max_deviation = 1.5 span of the median
    med = float(np.median(region))
    cut = valid & (np.abs(region - med) <= 1.5 * span)
    assert not cut[5, 5]
    np.testing.assert_array_equal(overscan_vector(region, "MEDIAN_PER_ROW", 3.0, 1.5 * span),
                                  row_clipped_statistic(region, cut, 3.0, False))


def test_float32_values_give_the_float64_numbers():
    """float32 values are copied and swept as float32 (half the memory), each taken to float64 where it is used:
    the statistics equal those of the same values given as float64, bit for bit."""
    from cpframe.science.robust import clipped_stats_1d, clipped_stats_and_median_1d, median_of_finite

    rng = np.random.default_rng(12)
    for n in (1, 2, 5, 1000, 131_072, 1_018_000):
        x = rng.normal(1000.0, 5.0, n).astype(np.float32)
        x[rng.random(n) < 0.001] = 1e4  # outliers to clip
        if n > 5:
            x[3] = np.nan
            x[4] = np.inf
        y = x.astype(np.float64)

        def same(a, b):
            np.testing.assert_array_equal(np.array(a, float), np.array(b, float))  # NaN where NaN (n = 1: stdev)

        for clip, n_iter in ((3.0, 3), (2.0, 1)):
            same(clipped_stats_1d(x, clip, n_iter, IQ_TO_STDEV), clipped_stats_1d(y, clip, n_iter, IQ_TO_STDEV))
            same(clipped_stats_and_median_1d(x, clip, n_iter, IQ_TO_STDEV),
                 clipped_stats_and_median_1d(y, clip, n_iter, IQ_TO_STDEV))
        same(median_of_finite(x), median_of_finite(y))
        assert median_of_finite(x)[0] == np.median(y[np.isfinite(y)])
    grid = np.ones(131_072, np.float32)
    grid[::64] = 0  # the quartiles' sample misses: the selection over all float32 values
    assert clipped_stats_1d(grid, 3.0, 3, IQ_TO_STDEV) == clipped_stats_1d(grid.astype(np.float64), 3.0, 3, IQ_TO_STDEV)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_statistics_equal_the_boolean_index_forms(dtype):
    """The product QA's BAD count and clipped statistics of the other pixels, taken on views of the product without
    temporaries, are ``np.count_nonzero(mask & bad)`` and ``clipped_stats(values[(mask & bad) == 0])`` exactly."""
    from cpframe.science.robust import clipped_stats_unmasked, count_bits

    rng = np.random.default_rng(11)
    image = rng.normal(100.0, 6.0, (300, 257)).astype(dtype)
    image[rng.integers(0, 300, 40), rng.integers(0, 257, 40)] += 500.0
    image[::37, ::11] = np.nan
    mask = np.zeros(image.shape, np.int32)
    mask[rng.integers(0, 300, 900), rng.integers(0, 257, 900)] |= 4
    mask[rng.integers(0, 300, 900), rng.integers(0, 257, 900)] |= 1
    for box in ((slice(0, 300), slice(0, 257)), (slice(13, 250), slice(40, 200))):
        view, mview = image[box], mask[box]  # non-contiguous views, as an amp's box of the product
        for bits in (4, 1, 5, 8):
            assert count_bits(mview, bits) == np.count_nonzero(mview & bits)
            ref = clipped_stats(view.ravel()[(mview.ravel() & bits) == 0])
            got = clipped_stats_unmasked(view, mview, bits, 3.0, 3, IQ_TO_STDEV)
            assert got[2] == ref[2] and got[0] == ref[0] and got[1] == ref[1], (box, bits, got, ref)
    empty = clipped_stats_unmasked(image[:2, :2], np.full((2, 2), 4, np.int32), 4, 3.0, 3, IQ_TO_STDEV)
    assert math.isnan(empty[0]) and empty[2] == 0


def test_percentiles_may_reorder_the_copy_it_is_given():
    """``overwrite_input``: the product QA hands percentiles its own copy, which then serves as the work array (it
    may be reordered); the numbers are numpy's either way, and without it the values are left as they were."""
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, 100_000).astype(np.float32)
    q = [0, 5, 16, 50, 84, 95, 100]
    ref = np.percentile(values, q)
    work = values.copy()
    np.testing.assert_array_equal(percentiles(work, q, overwrite_input=True), ref)
    np.testing.assert_array_equal(np.sort(work), np.sort(values))  # the same values, in any order
    kept = values.copy()
    np.testing.assert_array_equal(percentiles(kept, q), ref)
    np.testing.assert_array_equal(kept, values)


def _lanes_reference(v, n, lo, hi, mean=None):
    """Four partial sums in plain Python floats: value j into sum j % 4 (the tail into the first), +0.0 for a value
    outside [lo, hi], then (s0 + s1) + (s2 + s3): the order the compiled passes promise."""
    s = [0.0, 0.0, 0.0, 0.0]
    for j in range(n):
        x = float(v[j])
        t = x if mean is None else (x - mean) * (x - mean)
        lane = j % 4 if j < n - n % 4 else 0
        s[lane] += t if (lo <= x) and (x <= hi) else 0.0
    return (s[0] + s[1]) + (s[2] + s[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_lane_sums_are_the_four_partial_sums(dtype):
    """The clipping passes' sums (four float64 lanes of one vector register, issue 14) add the same values in the
    same order as four scalar partial sums: equal bit for bit, for any length, NaN, infinities and bounds."""
    from cpframe.science.robust import _pass_squares, _pass_sums

    rng = np.random.default_rng(5)
    for n in list(range(0, 18)) + [1001, 4096, 5003]:
        v = (rng.normal(10.0, 3.0, n) * rng.choice([1.0, 1e6, 1e-6], n)).astype(dtype)
        if n > 6:
            v[[1, 5]] = np.nan
            v[3] = np.inf
            v[n - 1] = -np.inf
        for lo, hi in ((5.0, 15.0), (-np.inf, np.inf), (10.0, 10.0), (20.0, 0.0), (-1e7, 1e7)):
            cnt, s, prev, both = _pass_sums(v, n, lo, hi, 4.0, 16.0)
            inside = (v >= lo) & (v <= hi)
            assert cnt == int(inside.sum()) and prev == int(((v >= 4.0) & (v <= 16.0)).sum())
            assert both == int((inside & (v >= 4.0) & (v <= 16.0)).sum())
            ref = _lanes_reference(v, n, lo, hi)
            assert s == ref or (math.isnan(s) and math.isnan(ref)), (n, lo, hi, s, ref)
            mean = 9.75
            sq, ref = _pass_squares(v, n, lo, hi, mean), _lanes_reference(v, n, lo, hi, mean)
            assert sq == ref or (math.isnan(sq) and math.isnan(ref)), (n, lo, hi, sq, ref)
