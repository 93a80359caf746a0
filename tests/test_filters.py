"""The compiled median filter (cpframe/science/filters.py) against scipy.ndimage's, value for value."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cpframe.science.filters import _median_network, median_filter_nearest
from cpframe.science.kernels import sorting_network


@pytest.mark.parametrize("shape", [(64, 1100), (7, 9), (3, 2), (1, 1), (2, 600), (513, 5)])
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_median_filter_equals_scipy(shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    img = rng.normal(100.0, 5.0, shape).astype(np.float32)
    img[rng.uniform(size=shape) < 0.01] = 6e4  # cosmic-ray-like outliers
    img[: shape[0] // 2, : shape[1] // 3] = np.round(img[: shape[0] // 2, : shape[1] // 3])  # ties
    want = ndimage.median_filter(img, size=size, mode="nearest")
    np.testing.assert_array_equal(median_filter_nearest(img, size), want)


def test_median_filter_dtypes_and_refusals():
    rng = np.random.default_rng(1)
    img = rng.integers(-50, 50, (40, 70)).astype(np.float64)
    np.testing.assert_array_equal(median_filter_nearest(img, 5), ndimage.median_filter(img, size=5, mode="nearest"))
    with pytest.raises(ValueError, match="size must be odd and positive, got 4"):
        median_filter_nearest(img, 4)
    with pytest.raises(ValueError, match="a 2-d image is needed"):
        median_filter_nearest(img[0], 3)


def test_the_pruned_network_still_selects_the_median():
    # every comparator that can move a value into the middle position is kept; the others are not needed
    net, full = _median_network(25), sorting_network(25)
    assert 0 < len(net) < len(full)
    rng = np.random.default_rng(4)
    for _ in range(2000):
        v = rng.integers(0, 6, 25).astype(float)  # many ties
        w = v.copy()
        for i, j in net:
            w[i], w[j] = min(w[i], w[j]), max(w[i], w[j])
        assert w[12] == np.sort(v)[12]
