"""The fused graph's per-raw quanta (:mod:`cpframe.science.fused`) as task functions on files: the prepass of a
raw's ISR quantum, and the CpDark / CpFlatMeasure quanta that run the raw's ISR in memory instead of reading an
ISR file (docs/algorithms.md "Fused ISR -> combine").  Split out of :mod:`cpframe.science.tasks`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from cpframe.science.flat_measure import FlatMeasureConfig, FlatMeasurement, prepass_flat_measure
from cpframe.science.isr import IsrConfig
from cpframe.science.tasks import CrConfig, _isr_config, _str_calibs, cr_config_of

__all__ = ["prepass_cr_task", "prepass_flat_measure_task", "prepass_task"]


def prepass_task(raw_path: str | os.PathLike, isr_config: IsrConfig | Mapping[str, Any] | None,
                 calibs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fused ISR's prepass of one raw (:func:`cpframe.science.fused.prepass`), for :func:`fused_combine_task`."""
    from cpframe.science.fused import prepass

    return prepass(raw_path, _isr_config(isr_config), _str_calibs(calibs))


def prepass_flat_measure_task(raw_path: str | os.PathLike, isr_config: IsrConfig | Mapping[str, Any] | None,
                              calibs: Mapping[str, Any] | None, config: FlatMeasureConfig | None = None
                              ) -> FlatMeasurement:
    """A fused flat's CpFlatMeasure quantum: the raw's ISR in memory (as the unfused ISR quantum runs it), its
    measurement, and the raw's prepass for the combine (``prepass``); nothing written
    (:func:`cpframe.science.flat_measure.prepass_flat_measure`)."""
    return prepass_flat_measure(raw_path, _isr_config(isr_config), _str_calibs(calibs), config or FlatMeasureConfig())


def prepass_cr_task(raw_path: str | os.PathLike, isr_config: IsrConfig | Mapping[str, Any] | None,
                    calibs: Mapping[str, Any] | None, cr_config: CrConfig | Mapping[str, Any] | bool | None
                    ) -> dict[str, Any]:
    """:func:`prepass_task` plus CpDark's cosmic rays of the raw (:func:`cpframe.science.fused.prepass_cosmic_rays`)."""
    from cpframe.science.fused import prepass_cosmic_rays

    return prepass_cosmic_rays(raw_path, _isr_config(isr_config), _str_calibs(calibs), cr_config_of(cr_config))
