"""Compiled image filters of the ISR-side steps (numba, no GIL held).

:func:`median_filter_nearest` is ``scipy.ndimage.median_filter(image, size=size, mode="nearest")``
for an odd ``size`` and an image without NaN, value for value.  CpDark's cosmic-ray finder
(:func:`cpframe.science.defects.find_cosmic_rays`) takes the 5 x 5 median of every pixel of a
dark; scipy's rank filter spent 6 s on a full-size detector, most of cpDark's cost (issue 14).
Here each output row is done in tiles of columns: the ``size * size`` neighbours of every
pixel of the tile are gathered into rows of a small work array (edges clamped, as "nearest"),
and the comparators of a Batcher sorting network that can move a value into the median's
position (the network pruned backwards from that position) are applied to whole rows at
once, so the compiler vectorises them.  A median is a selection, not arithmetic, so the
result is exactly scipy's (tests/test_filters.py).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from cpframe.science.kernels import sorting_network

__all__ = ["median_filter_nearest"]

#: Columns per tile: 25 rows x 512 float32 = 50 KB of work, in the L2 cache.
_TILE = 512


@functools.lru_cache(maxsize=16)
def _median_network(n: int) -> np.ndarray:
    """The comparators of the n-value sorting network that can change the value at position n // 2."""
    need = {n // 2}
    keep = []
    for i, j in sorting_network(n)[::-1]:
        if i in need or j in need:
            keep.append((i, j))
            need.update((int(i), int(j)))
    return np.array(keep[::-1], dtype=np.int64).reshape(-1, 2)


@njit(nogil=True, cache=True)
def _median_rows(img, out, net, size, rank, tile):
    h, w = img.shape
    r = size // 2
    work = np.empty((size * size, tile), img.dtype)
    for y in range(h):
        for x0 in range(0, w, tile):
            n = min(w, x0 + tile) - x0
            t = 0
            for dy in range(-r, r + 1):
                yy = min(max(y + dy, 0), h - 1)
                row = img[yy]
                for dx in range(-r, r + 1):
                    dst = work[t]
                    for i in range(n):
                        xx = x0 + i + dx
                        if xx < 0:
                            xx = 0
                        elif xx > w - 1:
                            xx = w - 1
                        dst[i] = row[xx]
                    t += 1
            for c in range(net.shape[0]):
                a = work[net[c, 0]]
                b = work[net[c, 1]]
                for i in range(n):
                    va = a[i]
                    vb = b[i]
                    a[i] = va if va <= vb else vb
                    b[i] = vb if va <= vb else va
            for i in range(n):
                out[y, x0 + i] = work[rank, i]


def median_filter_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """``scipy.ndimage.median_filter(image, size=size, mode="nearest")`` of a 2-d image without NaN (odd ``size``).

    Raises
    ------
    ValueError
        An even or non-positive ``size``, or an image that is not 2-d.
    """
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median_filter_nearest: size must be odd and positive, got {size}.")
    img = np.ascontiguousarray(image)
    if img.ndim != 2:
        raise ValueError(f"median_filter_nearest: a 2-d image is needed, got shape {img.shape}.")
    out = np.empty_like(img)
    if img.size:
        _median_rows(img, out, _median_network(size * size), size, (size * size) // 2, _TILE)
    return out
