"""The ``combine`` kind: stack ISR intermediates of one detector into a product (cp_pipe ``CalibCombineTask``)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import ExecutionError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, accepted, enum, output_path
from cpframe.science.configs import combine as _combine
from cpframe.science.configs.masks import MASK_BITS
from cpframe.science.configs.tasks import DEFAULT_FUSED_MEMORY_BYTES


def _field(key: str) -> str:
    return _combine._CAMEL[key]


PRODUCTS = ("bias", "dark", "flat", "biasBootstrap", "darkBootstrap", "flatBootstrap", "fringe")


_COMBINE_FIELDS = {k: k for k in ("calibrationType", "exposureScaling", "scalingLevel", "combine", "clip", "nIter",
                                  "mask", "noGoodPixelsMask", "maxVisitsToCalcErrorFromInputVariance", "checkNoData",
                                  "censorMaskPlanes", "distributionPercentiles", "flatSource")}
_COMBINE_IGNORED = ("doVignetteMask", "vignette.*", "doPartialVignetteMask", "partialVignette.*", "python")


class Combine(TaskKind):
    name = "combine"
    summary = "Combine the ISR intermediates of one detector (and filter) into bias, dark or flat."
    dimensions = (frozenset({"detector"}), frozenset({"detector", "physical_filter"}))
    config_class = _combine.CombineConfig
    settings_key = "combine"
    task_classes = MappingProxyType({
        "lsst.cp.pipe.CalibCombineTask": ClassMap(
        "combine", ("detector",), (("inputExpHandles", "cpInputs"),), ("outputData", "cpProposal"),
        _COMBINE_FIELDS, _COMBINE_IGNORED, extra_connections=("inputScales",)),
        "lsst.cp.pipe.CalibCombineByFilterTask": ClassMap(
        "combine", ("detector", "physical_filter"), (("inputExpHandles", "cpInputs"), ("inputScales", "cpFilterScales")),
        ("outputData", "cpFilterProposal"), _COMBINE_FIELDS, _COMBINE_IGNORED, optional_inputs=("inputScales",)),
    })
    options = MappingProxyType({
        "calibrationType": Option(enum(*PRODUCTS), _field("calibrationType"), required=True),
        "exposureScaling": Option(enum(*_combine.SCALINGS), _field("exposureScaling")),
        "scalingLevel": Option(enum("DETECTOR", "AMP"), _field("scalingLevel"), doc="only DETECTOR is implemented"),
        "combine": Option(enum(*_combine.STATISTICS), _field("combine")),
        "clip": Option(float, _field("clip")),
        "nIter": Option(int, _field("nIter")),
        "mask": Option("planes", _field("mask")),
        "noGoodPixelsMask": Option("plane", _field("noGoodPixelsMask")),
        "maxVisitsToCalcErrorFromInputVariance": Option(int, _field("maxVisitsToCalcErrorFromInputVariance")),
        "checkNoData": Option(bool, _field("checkNoData")),
        "censorMaskPlanes": Option(bool, _field("censorMaskPlanes")),
        "distributionPercentiles": Option("floats", _field("distributionPercentiles")),
        "flatSource": Option(enum("DOME", "TWILIGHT", "PSEUDO", "SKY"), _field("flatSource")),
        # cpframe options: the MEANCLIP rule (docs/algorithms.md) and whether the ISR quanta this combine
        # alone reads run fused into it, streamed without per-exposure files (execution/graph.py fusion)
        "clipMethod": Option(enum(*_combine.CLIP_METHODS), _field("clipMethod")),
        "fuseIsr": Option(bool, _field("fuseIsr")),
        "fusedThreads": Option(int, _field("fusedThreads"),
                               doc="threads of the fused quantum; 0: idle cores of its node"),
    })
    @classmethod
    def required_example(cls):
        return {"calibrationType": "bias"}

    @classmethod
    def direct_config(cls):
        # what combine_task(..., config={"calibrationType": "bias", "datasetType": "bias"}) uses
        return _combine.CombineConfig(calibration_type="bias", dataset_type="bias")

    @classmethod
    def plan(cls, task, settings, explicit):
        keep, notes = accepted(task.label, dict(task.config), _combine.CombineConfig.from_dict, explicit)
        keep.setdefault("datasetType", task.output)  # bias: header exposure time 0 (spec §4.3)
        return {"combine": _combine.CombineConfig.from_dict(keep),
                "memory_bytes": settings.combine_memory_bytes if settings is not None else None,
                "fused_memory_bytes": DEFAULT_FUSED_MEMORY_BYTES}, notes

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import FlatScales, combine_task

        exposures, scales_obj = [], None
        for values in groups.values():
            for v in values:
                if isinstance(v, FlatScales):
                    scales_obj = v
                else:
                    exposures.append(v)
        exposures.sort(key=lambda e: e.exposure_id)
        cfg = spec.settings["combine"]
        scales = None
        if cfg.exposure_scaling == "InputList":
            if scales_obj is None:
                raise ExecutionError(f"{spec.key}: exposureScaling InputList needs a normalisation input.")
            exposures = [e for e in exposures if e.exposure_id in scales_obj.exp_scale]
            scales = [scales_obj.exp_scale[e.exposure_id] for e in exposures]
        return combine_task([e.path for e in exposures], output_path(spec), cfg, scales=scales,
                            memory_bytes=spec.settings["memory_bytes"], threads=1)


assert set(MASK_BITS) >= set(_combine.CombineConfig().mask)  # the planes option checks against MASK_PLANES
