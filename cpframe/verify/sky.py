"""Sky and fringe frame verification (stages ``SKY`` and ``FRINGE``; cp_verify has neither: cpframe's checks).

Both run on the product itself (no ISR), per detector x physical_filter.

``SKY`` (the binned ``sky`` of :mod:`cpframe.science.sky`): ``NOISE`` (median over bins of the frame's
standard error, from the scatter of the exposures, relative to the sky level), ``RMS`` (the frame's
pattern), ``COVERAGE`` (fraction of bins measured), ``N_EXPOSURES`` and ``LOO_RATIO`` (median over
exposures of the residual rms left after subtracting the frame of the other exposures, over the rms
before: below 1 when there is a pattern to remove; reported, not tested).  Tests: ``NOISE`` below
``sky_max_noise`` (0.3 % of the sky: a frame noisier than the patterns it removes adds noise) and
``COVERAGE`` at least ``sky_min_coverage`` (90 %).

``FRINGE`` (the ``fringe`` of :mod:`cpframe.science.fringe`, relative to the sky): ``RMS`` (fringe rms in
boxes of ``2 x 3 + 1`` pixels, ip_isr's measurement size), ``NOISE`` (the frame's median pixel sigma
divided by 7, its noise in such a box) and ``SNR`` = ``RMS / NOISE``.  Test ``SNR`` at least
``fringe_min_snr`` (3: the amplitude fit in ISR is biased low by about ``1 / SNR²``, < 11 %).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["FRINGE", "SKY", "check_fringe", "check_sky", "measure_fringe", "measure_sky"]


def _meta(h: dict) -> dict:
    return {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "FILTER") if k in h}


def measure_sky(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the SKY stage (module docstring)."""
    from cpframe.science.imageio import read_header

    if not Path(path).is_file():
        raise UserInputError(f"{path}: no sky frame file; check the sky dataset given to verification.")
    h = read_header(path)
    if "LSST SKY NOISE" not in h:
        raise UserInputError(f"{path}: not a sky frame made by cpframe (no LSST SKY keys).")
    det = {"NOISE": float(h["LSST SKY NOISE"]), "RMS": float(h["LSST SKY RMS"]),
           "COVERAGE": float(h["LSST SKY FINITE"]), "LOO_RATIO": float(h.get("LSST SKY LOO RATIO", math.nan)),
           "N_EXPOSURES": int(h.get("LSST SKY NEXP", 0))}
    return {"METADATA": {"N_EXPOSURES": det["N_EXPOSURES"]}, "AMP": {}, "DET": det, "HEADER": _meta(h)}


def check_sky(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the SKY stage (module docstring)."""
    d = stats["DET"]
    return {"AMP": {}, "DET": {"NOISE": bool(math.isfinite(d["NOISE"]) and d["NOISE"] < config.sky_max_noise),
                               "COVERAGE": bool(d["COVERAGE"] >= config.sky_min_coverage)}}


def measure_fringe(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the FRINGE stage (module docstring)."""
    from scipy import ndimage

    from cpframe.science.imageio import read_masked

    if not Path(path).is_file():
        raise UserInputError(f"{path}: no fringe frame file; check the fringe dataset given to verification.")
    f = read_masked(path)
    good = (f.mask == 0) & np.isfinite(f.image) & np.isfinite(f.variance)
    if good.sum() < 100:
        raise UserInputError(f"{path}: the fringe frame has fewer than 100 unmasked pixels; rebuild it from more "
                             "red-band science exposures.")
    n = ndimage.uniform_filter(good.astype(np.float64), 7)
    with np.errstate(invalid="ignore", divide="ignore"):
        box = ndimage.uniform_filter(np.where(good, f.image.astype(np.float64), 0.0), 7) / n
    rms = float(np.std(box[good & (n > 0.99)]))
    noise = float(np.median(np.sqrt(np.maximum(f.variance[good], 0)))) / 7.0
    det = {"RMS": rms, "NOISE": noise, "SNR": rms / noise if noise > 0 else math.inf}
    return {"METADATA": {}, "AMP": {}, "DET": det, "HEADER": _meta(f.header)}


def check_fringe(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the FRINGE stage (module docstring)."""
    snr = stats["DET"]["SNR"]
    return {"AMP": {}, "DET": {"SNR": bool(math.isfinite(snr) and snr >= config.fringe_min_snr)}}


SKY = register_stage(Stage(name="SKY", type_name="Sky", kind="calib", measure=measure_sky, check=check_sky,
                           by_filter=True, calib_type="sky"))
FRINGE = register_stage(Stage(name="FRINGE", type_name="Fringe", kind="calib", measure=measure_fringe,
                              check=check_fringe, by_filter=True, calib_type="fringe"))
