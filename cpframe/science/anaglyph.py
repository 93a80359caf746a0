"""Anaglyph flat: the weighted combination of two flats of one detector (cp_pipe ``CalibCombineTwoFlatsByFilterTask``).

LSSTCam's anaglyph flats (``cpFlatAnaglyph.yaml``, ``bps_flat_anaglyph_<band>``) are made from the flats of
two LEDs inside the band, a blue and a red one, each selected from the band's flats by its observation
reason (``CpFlatNormalizationTask.doDownSelection``), normalised, combined, fitted and gradient-corrected
on its own (:mod:`cpframe.science.flat_gradient`), then mixed:

    flat = w · flat_one + (1 − w) · flat_two,     variance = w² · var_one + (1 − w)² · var_two

``w`` = ``weightOne`` (the templates give it per band: 0.630 for g ... so that the mix has the band's
colour).  cp_pipe divides each input by 0.5 / w and 0.5 / (1 − w) and takes the ``MEAN`` of the two, which
is the same where both are good.  *Deliberate difference*: where exactly one input is finite, cpframe takes
that input as it is (cp_pipe's mean of the one scaled input is 2w or 2(1 − w) times it); where neither is,
the pixel is NaN with ``noGoodPixelsMask``.  The masks are or-ed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.imageio import MASK_BITS
from cpframe.science.configs.anaglyph import (  # noqa: F401 (defined there, importable without the science stack)
    TwoFlatsConfig,
)

__all__ = ["TwoFlatsConfig", "TwoFlatsResult", "combine_two_flats", "combine_two_flats_task"]

MSG_SHAPES = "anaglyph combine: {a} is {sa} but {b} is {sb}; give two flats of the same detector."
MSG_FILTERS = "anaglyph combine: {a} is filter {fa!r} but {b} is {fb!r}; give two flats of one physical filter."


@dataclass
class TwoFlatsResult:
    """What :func:`combine_two_flats_task` returns."""

    path: str
    """The combined flat (``fits-masked``)."""
    weight_one: float
    n_one_only: int
    """Pixels where only one input was finite (that input used)."""
    n_no_data: int
    """Pixels where neither was."""


def combine_two_flats(one, two, cfg: TwoFlatsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(image, mask, variance, n_one_only, n_no_data) of the weighted mix of two masked images (module docstring)."""
    w = cfg.weight_one
    a, b = np.asarray(one.image, np.float64), np.asarray(two.image, np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    img = np.where(fa & fb, w * a + (1 - w) * b, np.where(fa, a, b))
    var = np.where(fa & fb, w * w * np.asarray(one.variance, np.float64) + (1 - w) ** 2 *
                   np.asarray(two.variance, np.float64), np.where(fa, one.variance, two.variance))
    mask = np.asarray(one.mask) | np.asarray(two.mask)
    none = ~(fa | fb)
    mask = np.where(none, mask | (1 << MASK_BITS[cfg.no_good_pixels_mask]), mask)
    img[none] = np.nan
    return img.astype(np.float32), mask.astype(np.int32), var.astype(np.float32), int((fa ^ fb).sum()), int(none.sum())


def combine_two_flats_task(path_one: str, path_two: str, output_path: str | os.PathLike,
                           config: TwoFlatsConfig | Mapping[str, Any] | None = None) -> TwoFlatsResult:
    """cpFlatRedBlueCombine for one detector: two flats in, their weighted mix out (atomically).

    Raises
    ------
    UserInputError
        The flats differ in shape or physical filter.
    """
    from cpframe.science.imageio import read_masked, write_masked

    cfg = config if isinstance(config, TwoFlatsConfig) else TwoFlatsConfig.from_dict(config)
    one, two = read_masked(path_one), read_masked(path_two)
    if one.shape != two.shape:
        raise UserInputError(MSG_SHAPES.format(a=path_one, sa=one.shape, b=path_two, sb=two.shape))
    fa, fb = str(one.header.get("FILTER", "")), str(two.header.get("FILTER", ""))
    if fa and fb and fa != fb:
        raise UserInputError(MSG_FILTERS.format(a=path_one, fa=fa, b=path_two, fb=fb))
    img, mask, var, n1, n0 = combine_two_flats(one, two, cfg)
    head = dict(one.header)
    head.update({"OBSTYPE": "flat", "FLATSRC": "ANAGLYPH", "WEIGHT1": cfg.weight_one,
                 "FLAT1": os.path.basename(path_one), "FLAT2": os.path.basename(path_two)})
    out = write_masked(output_path, img, mask, var, head)
    return TwoFlatsResult(str(out), cfg.weight_one, n1, n0)
