"""The ``fringeMeasure`` kind: one ISR image made into a fringe input (cp_pipe ``CpFringeTask``): its
smooth background removed, divided by its level, sources masked.  The combine (``CalibCombineByFilterTask``,
``calibrationType: fringe``) is the ``combine`` kind; ISR's ``doFringe`` applies the product.  Science and
differences: :mod:`cpframe.science.fringe`, docs/fringe.md.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, output_path
from cpframe.science.configs import fringe as _fringe

_FIELDS = {k: k for k in ("detectSigma", "stats.clip", "stats.nIter", "subtractBackground.binSize",
                          "detection.thresholdValue")}


class FringeMeasure(TaskKind):
    name = "fringeMeasure"
    summary = "One ISR image -> background-subtracted, level-normalised, sources masked (a fringe input)."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = _fringe.FringeConfig
    settings_key = "fringe"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpFringeTask": ClassMap(
        "fringeMeasure", ("exposure", "detector"), (("inputExp", "cpFringeISR"),), ("outputExp", "cpFringeProc"),
        _FIELDS, ("stats.*", "subtractBackground.*", "detection.*"))})
    options = MappingProxyType({
        "detectSigma": Option(float, "detect_sigma", doc="Gaussian smoothing before the source threshold (px)"),
        "stats.clip": Option(float, "stat_clip"),
        "stats.nIter": Option(int, "stat_iter"),
        "subtractBackground.binSize": Option(int, "background_bin_size"),
        "detection.thresholdValue": Option(float, "detect_threshold"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import fringe as _fringe  # the science itself: only where quanta run
        from cpframe.science.imageio import read_masked, write_masked

        src = next(iter(groups.values()))[0]
        out = _fringe.fringe_measure(read_masked(src.path), spec.settings["fringe"])
        path = str(write_masked(output_path(spec), out.image, out.mask, out.variance, out.header))
        return dataclasses.replace(src, path=path)  # the ISR's ExposureStats, now naming the fringe input
