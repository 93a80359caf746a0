"""Binned previews of verification residuals: what the report draws per exposure.

The ISR output a verification measures (``verify<Type>IsrExp``, full size: 200 MB per exposure
and detector at LSSTCam size) is an intermediate that is not kept in the RUN.  The report still
has to show a reviewer *where* an exposure failed, so the statistics task also writes
``verify<Type>Preview``: the residual block-averaged to at most :data:`PREVIEW_SIDE` pixels on
its longer side (about 0.8 MB), pixels masked BAD, DETECTED or NO_DATA left out of the average
(a block with none left is NaN), read in bands of rows so that memory stays a few MB.

The preview is a ``fits-masked`` file: IMAGE is the binned residual, VARIANCE the variance of
the block's mean (the residual's variance summed over the good pixels / their count squared),
MASK is NO_DATA where a block had no good pixel.  Its header carries the residual's cards plus
``CPF PREVIEW BINNING`` (the block side) and ``CPF PREVIEW NAXIS1``/``NAXIS2`` (the residual's
shape), so that a reader finds the camera the residual belongs to.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PREVIEW_SIDE", "write_preview", "preview_shape"]

#: Longest side of a preview, pixels (the report's mosaics show at most 128 per detector).
PREVIEW_SIDE = 256
#: Pixels left out of the block averages.
EXCLUDED_PLANES = ("BAD", "DETECTED", "NO_DATA")


def write_preview(residual: str | os.PathLike | Any, out: str | os.PathLike, max_side: int = PREVIEW_SIDE) -> Path:
    """Write the binned preview of the residual to ``out``: a ``fits-masked`` file, or an ISR image in memory
    (:class:`cpframe.science.imageio.MaskedImage`, a fused verifyStats quantum's), previewed as if written first."""
    from cpframe.science.imageio import (
        MaskedImage, mask_value, masked_header_bytes, masked_layout, parse_header, read_header, read_rows, write_masked,
    )

    if isinstance(residual, MaskedImage):
        planes = {"IMAGE": (residual.image, np.float32), "MASK": (residual.mask, np.int32),
                  "VARIANCE": (residual.variance, np.float32)}
        rows, cols = residual.image.shape

        def read(plane: str, r0: int, r1: int) -> np.ndarray:  # the file's types: float32 planes, int32 mask
            arr, dtype = planes[plane]
            return np.asarray(arr[r0:r1], dtype=dtype)

        source_header = parse_header(masked_header_bytes(residual.header))
    else:
        layout = masked_layout(residual)
        rows, cols = layout.shape

        def read(plane: str, r0: int, r1: int) -> np.ndarray:
            return read_rows(layout, plane, r0, r1)

        source_header = read_header(residual)
    factor = max(1, math.ceil(max(rows, cols) / max_side))
    ny, nx = rows // factor, cols // factor  # a partial block at the edge is left out, as in the mosaics
    excluded = mask_value(list(EXCLUDED_PLANES))
    total = np.zeros((ny, nx))
    var = np.zeros((ny, nx))
    good = np.zeros((ny, nx))
    band = factor * max(1, 64 // factor)  # whole blocks of rows, a few MB at a time
    for r0 in range(0, ny * factor, band):
        r1 = min(r0 + band, ny * factor)
        k0, k1 = r0 // factor, r1 // factor
        img = read("IMAGE", r0, r1)[:, : nx * factor].astype(float)
        vv = read("VARIANCE", r0, r1)[:, : nx * factor].astype(float)
        ok = (read("MASK", r0, r1)[:, : nx * factor] & excluded) == 0
        ok &= np.isfinite(img) & np.isfinite(vv)

        def blocks(a):
            return a.reshape(k1 - k0, factor, nx, factor).sum(axis=(1, 3))

        total[k0:k1] = blocks(np.where(ok, img, 0.0))
        var[k0:k1] = blocks(np.where(ok, vv, 0.0))
        good[k0:k1] = blocks(ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(good > 0, total / good, np.nan).astype(np.float32)
        variance = np.where(good > 0, var / good**2, np.nan).astype(np.float32)
    mask = np.where(good > 0, 0, mask_value("NO_DATA")).astype(np.int32)
    header = dict(source_header)
    for k in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "NAXIS1", "NAXIS2"):
        header.pop(k, None)
    header.update({"CPF PREVIEW BINNING": factor, "CPF PREVIEW NAXIS1": cols, "CPF PREVIEW NAXIS2": rows})
    return write_masked(out, image, mask, variance, header)


def preview_shape(header) -> tuple[int, int] | None:
    """(rows, cols) of the residual a preview was made from; None for a file that is not a preview."""
    try:
        return int(header["CPF PREVIEW NAXIS2"]), int(header["CPF PREVIEW NAXIS1"])
    except (KeyError, TypeError, ValueError):
        return None
