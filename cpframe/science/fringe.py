"""Fringe frames: building them (cp_pipe ``CpFringeTask``) and removing them in ISR (ip_isr ``FringeTask``).

Generation, per exposure x detector after ISR with bias, dark and flat (:func:`fringe_measure`):
the image's clipped-mean level ``bg`` is measured, a smooth background (clipped means of
``subtractBackground.binSize`` pixel bins, bilinear between them) is subtracted, image and variance
are divided by ``bg`` (``bg²``), and sources, smoothed by a Gaussian of ``detectSigma`` pixels, are
masked ``DETECTED`` above ``detection.thresholdValue`` sigma, positive and negative.  The frames of one
detector and filter are then combined like any calibration (``CalibCombineByFilterTask``,
``calibrationType: fringe``, ``exposureScaling: Unity``): the ``fringe`` calibration, in units of
the sky level.

Application (:func:`fringe_correct`, ISR ``doFringe`` for the filters of ``fringe.filters``): the
fringe amplitude ``a`` of the science image is the least-squares scale of the fringe frame to the image,
both with a smooth background of ``2 x fringe.large`` pixel bins removed and averaged in boxes of
``2 x fringe.small + 1`` pixels (the frame's own noise would otherwise bias ``a`` low), over unmasked pixels, with
``fringe.iterations`` rounds of ``fringe.clip``-sigma rejection; then ``image -= a x fringe``.

Deliberate differences (docs/fringe.md): ip_isr measures fringes at ``fringe.num`` random positions
(median of small boxes minus median of large ones) and solves on those; cpframe uses every unmasked
pixel's box mean against a binned background, the same least-squares estimator on more points.  Source detection
is a threshold on the smoothed image, not ``SourceDetectionTask``'s footprints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.combine import clipped_stats
from cpframe.science.imageio import MASK_BITS, MaskedImage
from cpframe.science.sky import _bad, _block_stat, _expand
from cpframe.science.configs.fringe import (  # noqa: F401 (defined there, importable without the science stack)
    FringeConfig,
)

__all__ = ["FringeConfig", "FringeSolution", "fringe_correct", "fringe_measure", "smooth_background"]


def smooth_background(image: np.ndarray, good: np.ndarray, bin_size: int) -> np.ndarray:
    """Clipped means of ``bin_size`` pixel bins, bilinear between bin centres."""
    b = _block_stat(image, good, bin_size, bin_size, 3.0, 3)
    return _expand(b, image.shape, bin_size, bin_size)


def fringe_measure(img: MaskedImage, config: FringeConfig) -> MaskedImage:
    """One exposure's fringe frame: background-subtracted, divided by its level, sources masked.

    Raises
    ------
    UserInputError
        The image has no positive level (no sky: not a science exposure).
    """
    from scipy import ndimage

    image = img.image.astype(np.float64)
    good = ~_bad(img.mask, config.bad_planes) & np.isfinite(image)
    level = clipped_stats(image[good], config.stat_clip, config.stat_iter)[0] if good.any() else math.nan
    if not (math.isfinite(level) and level > 0):
        raise UserInputError(f"fringe measure: the image level is {level!r}; fringe frames need science "
                             "exposures with sky in a red band (check the selection).")
    resid = image - smooth_background(image, good, int(config.background_bin_size))
    smooth = ndimage.gaussian_filter(np.where(good, resid, 0.0), config.detect_sigma) if config.detect_sigma > 0 \
        else resid
    _, sigma, _ = clipped_stats(smooth[good], 3.0, 3)
    det = good & (np.abs(smooth) > config.detect_threshold * sigma)
    mask = img.mask.copy()
    mask[ndimage.binary_dilation(det, iterations=2)] |= np.int32(1 << MASK_BITS["DETECTED"]).astype(mask.dtype)
    h = dict(img.header)
    h["LSST FRINGE LEVEL"] = float(level)
    return MaskedImage((resid / level).astype(np.float32), mask,
                       (img.variance.astype(np.float64) / level**2).astype(np.float32), h)


@dataclass(frozen=True)
class FringeSolution:
    """What :func:`fringe_correct` found."""

    amplitude: float
    """Scale of the fringe frame subtracted (image units per fringe-frame unit)."""
    n_pixels: int
    """Pixels used in the last iteration."""
    applied: bool


def fringe_correct(image: np.ndarray, mask: np.ndarray, fringe: np.ndarray, *, small: int = 3, large: int = 30,
                   iterations: int = 20, clip: float = 3.0,
                   bad_planes: Sequence[str] = ("BAD", "SAT", "NO_DATA", "DETECTED")) -> FringeSolution:
    """Fit and subtract ``fringe`` from ``image`` in place (module docstring).

    Raises
    ------
    UserInputError
        The fringe frame and the image differ in shape.
    """
    if fringe.shape != image.shape:
        raise UserInputError(f"fringe frame shape {fringe.shape} differs from the image's {image.shape}; use the "
                             "fringe of this detector (certified per detector x physical_filter).")
    f = np.asarray(fringe, dtype=np.float64)
    good = ~_bad(mask, bad_planes) & np.isfinite(image) & np.isfinite(f)
    if good.sum() < 100:
        return FringeSolution(0.0, int(good.sum()), False)
    from scipy import ndimage

    bin_size = max(8, 2 * int(large))
    d = image.astype(np.float64) - smooth_background(image.astype(np.float64), good, bin_size)
    ff = f - smooth_background(f, good, bin_size)
    if small > 0:  # box means of (2 small + 1) px: the frame's own pixel noise would bias the scale low
        w = 2 * int(small) + 1
        n = ndimage.uniform_filter(good.astype(np.float64), w)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = ndimage.uniform_filter(np.where(good, d, 0.0), w) / n
            ff = ndimage.uniform_filter(np.where(good, ff, 0.0), w) / n
    use = good.copy()
    amp = 0.0
    for _ in range(max(1, int(iterations))):
        den = float(np.sum(ff[use] ** 2))
        if den <= 0:
            return FringeSolution(0.0, int(use.sum()), False)
        amp = float(np.sum(ff[use] * d[use]) / den)
        r = d - amp * ff
        sigma = float(np.std(r[use]))
        new = good & (np.abs(r) < clip * sigma)
        if np.array_equal(new, use):
            break
        use = new
    image -= (amp * f).astype(image.dtype)
    return FringeSolution(amp, int(use.sum()), True)
