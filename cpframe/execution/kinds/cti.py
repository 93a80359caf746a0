"""The ``ctiSolve`` kind: serial CTI and trap per amp from the overscan of ISR-processed flats
(cp_pipe ``CpCtiSolveTask``; science and the differences in :mod:`cpframe.science.cti`)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, header_meta, output_path
from cpframe.science.configs import cti as _cti


class CtiSolve(TaskKind):
    name = "ctiSolve"
    summary = "Serial CTI and trap size per amp from the CTI statistics of one detector's flats."
    dimensions = (frozenset({"detector"}),)
    config_class = _cti.CtiConfig
    settings_key = "cti"
    # cp_pipe reads the ISR's outputStatistics; cpframe's ISR output carries those statistics, so the
    # reader points inputMeasurements at the ISR output (cpframe.execution.lsst_pipeline)
    task_classes = MappingProxyType({"lsst.cp.pipe.CpCtiSolveTask": ClassMap(
        "ctiSolve", ("detector",), (("inputMeasurements", "cpCtiStatistics"),), ("outputCalib", "cti"),
        {k: k for k in ("minTrapSignal", "maxSignalFraction", "nTrailColumns")},
        ("maxImageMean", "localOffsetColumnRange", "globalCtiColumnRange", "serialTrapColumnRange",
         "fixLocalOffset", "useGains", "python"), extra_connections=("linearizer", "camera"))})
    options = MappingProxyType({
        "minTrapSignal": Option(float, "min_trap_signal"),
        "maxSignalFraction": Option(float, "max_signal_fraction"),
        "nTrailColumns": Option(int, "n_trail_columns"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import cti as _cti  # the science itself: only where quanta run
        from cpframe.science.imageio import read_header

        exposures = sorted(next(iter(groups.values())), key=lambda e: e.exposure_id)
        meas = [_cti.measure_cti(read_header(e.path), list(e.amp_stats), e.exposure_id) for e in exposures]
        return _cti.cti_solve_task(meas, output_path(spec), spec.settings["cti"], meta=header_meta(exposures[0].path))
