"""CpFlatMeasure and CpFlatNormalization: each flat's background, the focal-plane scales (spec §6).

Re-exported by :mod:`cpframe.science.tasks` (split out of it).  Besides the task functions on
ISR files, :func:`prepass_flat_measure` measures a raw on its ISR made in memory, for a fused
flat (docs/algorithms.md "Fused ISR -> combine", "The flat's measurement"), and
:func:`flat_scales` turns one detector's measurements into the combine's scales.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.combine import clipped_stats
from cpframe.science.imageio import MaskedImage, detector_from_header, mask_value, read_masked
from cpframe.science.isr import IsrConfig
from cpframe.science.configs.flat_measure import (  # noqa: F401 (defined there, importable without the science stack)
    FlatMeasureConfig,
    FlatNormalizeConfig,
)

__all__ = ["FlatMeasureConfig", "FlatNormalizeConfig", "FlatMeasurement", "FlatScales", "flat_measure_task",
           "flat_measure_image", "flat_normalize_task", "flat_scales", "prepass_flat_measure"]

_FLAT_IGNORE = mask_value(("DETECTED", "BAD", "NO_DATA"))


@dataclass
class FlatMeasurement:
    """Background of one flat exposure x detector (spec §6 measure)."""

    exposure_id: int
    detector: int
    physical_filter: str
    background: float
    """MEANCLIP (3σ, 3 iterations) of the detector, ignoring DETECTED, BAD, NO_DATA."""
    sigma: float
    n_pixels: int
    amp_background: dict[str, float] = field(default_factory=dict)
    path: str = ""
    prepass: Any = field(default=None, repr=False, compare=False)
    """A fused flat's raw prepass (:func:`prepass_flat_measure`), for its combine; None otherwise."""


@dataclass
class FlatScales:
    """Focal-plane normalisation B[d,e] ≈ E[e]·G[d] (spec §6 normalize)."""

    exp_scale: dict[int, float]
    """Exposure id -> E[e] (divide each input of that exposure by it)."""
    det_scale: dict[int, float]
    """Detector id -> G[d] (mean over detectors weighted by pixel count = 1)."""
    n_iter: int


def flat_measure_task(input_path: str | os.PathLike, clip: float = FlatMeasureConfig.clip,
                      n_iter: int = FlatMeasureConfig.n_iter) -> FlatMeasurement:
    """CpFlatMeasure: clipped mean background of the detector and of each amp."""
    return flat_measure_image(read_masked(input_path), clip, n_iter, str(input_path))


def flat_measure_image(img: MaskedImage, clip: float = FlatMeasureConfig.clip, n_iter: int = FlatMeasureConfig.n_iter,
                       path: str = "") -> FlatMeasurement:
    """CpFlatMeasure of an ISR image in memory (:func:`flat_measure_task` reads it from its file)."""
    h = img.header
    good = (img.mask & _FLAT_IGNORE) == 0
    bg, sig, n = clipped_stats(img.image[good], clip, n_iter)
    det = detector_from_header(h, img.shape)
    amp_bg = {} if det is None else {
        amp.name: clipped_stats(img.image[amp.bbox][good[amp.bbox]], clip, n_iter)[0] for amp in det.amps}
    return FlatMeasurement(exposure_id=int(h.get("EXPID", 0)), detector=int(h.get("DETECTOR", 0)),
                           physical_filter=str(h.get("FILTER", "")), background=bg, sigma=sig, n_pixels=n,
                           amp_background=amp_bg, path=path)


def flat_normalize_task(measurements: Sequence[FlatMeasurement],
                        max_iter: int = FlatNormalizeConfig.max_iter) -> FlatScales:
    """Solve B[d,e] ≈ E[e]·G[d] in log space (spec §6), weights = pixel counts.

    Raises
    ------
    UserInputError
        No measurement with a finite, positive background.
    """
    exps = sorted({m.exposure_id for m in measurements})
    dets = sorted({m.detector for m in measurements})
    ei = {e: i for i, e in enumerate(exps)}
    di = {d: i for i, d in enumerate(dets)}
    logb = np.full((len(dets), len(exps)), np.nan)
    w = np.zeros((len(dets), len(exps)))
    for m in measurements:
        if math.isfinite(m.background) and m.background > 0 and m.n_pixels > 0:
            logb[di[m.detector], ei[m.exposure_id]] = math.log(m.background)
            w[di[m.detector], ei[m.exposure_id]] = m.n_pixels
    if not (w > 0).any():
        raise UserInputError("flat normalisation: no flat exposure has a finite positive background; "
                             "check that the flats are illuminated and ISR ran without errors.")
    ok = w > 0
    lb = np.where(ok, logb, 0.0)

    def wmean(values, weights, axis):
        s = weights.sum(axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s > 0, (values * weights).sum(axis=axis) / np.where(s > 0, s, 1), np.nan)

    log_g = np.zeros(len(dets))
    log_e = wmean(lb - log_g[:, None], w, axis=0)
    for _ in range(int(max_iter)):
        log_g = wmean(lb - np.nan_to_num(log_e)[None, :], w, axis=1)
        bad = ~np.isfinite(log_g)
        if bad.any():
            log_g[bad] = np.nanmean(log_g[~bad])
        log_e = wmean(lb - log_g[:, None], w, axis=0)
        det_w = w.sum(axis=1)
        flux = float((np.exp(log_g) * det_w).sum() / det_w.sum())
        log_g -= math.log(flux)
    log_e = wmean(lb - log_g[:, None], w, axis=0)
    return FlatScales(exp_scale={e: float(np.exp(log_e[i])) for e, i in ei.items() if np.isfinite(log_e[i])},
                      det_scale={d: float(np.exp(log_g[i])) for d, i in di.items()}, n_iter=int(max_iter))


def prepass_flat_measure(raw_path: str | os.PathLike, isr_config: IsrConfig, calib_paths: Mapping[str, Any] | None,
                         config: FlatMeasureConfig | None = None) -> FlatMeasurement:
    """CpFlatMeasure of a raw on its ISR made in memory (as the unfused ISR quantum makes it), carrying the raw's
    prepass for a fused combine (``prepass``; :func:`cpframe.science.fused.prepass_with_isr`); nothing written."""
    from cpframe.science.fused import prepass_with_isr

    cfg = config or FlatMeasureConfig()
    state, img = prepass_with_isr(raw_path, isr_config, calib_paths)
    m = flat_measure_image(img, cfg.clip, cfg.n_iter)
    m.prepass = state
    return m


def flat_scales(measurements: Sequence[FlatMeasurement], max_iter: int = FlatNormalizeConfig.max_iter
                ) -> tuple[list[int], list[float]]:
    """One detector's flat scales: (indices of the exposures the normalisation kept, their E[e]).

    The normalisation leaves out an exposure without a finite positive background (a dark
    frame among the flats, all pixels masked); its combine leaves it out too, as the
    combine of a submission does.
    """
    norm = flat_normalize_task(measurements, max_iter)
    keep = [i for i, m in enumerate(measurements) if m.exposure_id in norm.exp_scale]
    return keep, [norm.exp_scale[measurements[i].exposure_id] for i in keep]
