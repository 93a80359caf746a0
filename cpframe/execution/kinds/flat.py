"""The flat kinds: ``flatMeasure`` (background of one flat) and ``flatNormalize`` (focal-plane
scales per exposure; cp_pipe ``CpFlatMeasureTask`` / ``CpFlatNormalizationTask``)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import ConfigError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, enum
from cpframe.science.configs.flat_measure import FlatMeasureConfig, FlatNormalizeConfig


_DET = ("exposure", "detector")
_DOWN_FIELDS = ("observation_reason", "observation_type", "science_program", "group")
MSG_DOWN_VALUE = ("{label}: doDownSelection is true but downSelectionValue is not set; give the value the exposures "
                  "must have (e.g. --config {label}:downSelectionValue=single_led_flat_m455l4).")


class FlatMeasure(TaskKind):
    name = "flatMeasure"
    summary = "Clipped background of one flat ISR intermediate (per detector and amp)."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = FlatMeasureConfig
    task_classes = MappingProxyType({
        "lsst.cp.pipe.CpFlatMeasureTask": ClassMap(
        "flatMeasure", _DET, (("inputExp", "postISRCCD"),), ("outputStats", "flatStats"),
        {}, ("maskNameList", "doVignette", "numSigmaClip", "clipMaxIter", "stat")),
    })
    options = MappingProxyType({"clip": Option(float, "clip"), "nIter": Option(int, "n_iter")})

    @classmethod
    def plan(cls, task, settings, explicit):
        return {"config": FlatMeasureConfig(**{cls.options[k].field: v for k, v in task.config.items()})}, []

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import flat_measure_task

        (exp,) = next(iter(groups.values()))
        cfg = spec.settings["config"]
        return flat_measure_task(exp.path, clip=cfg.clip, n_iter=cfg.n_iter)


class FlatNormalize(TaskKind):
    name = "flatNormalize"
    summary = "Exposure and detector scales of a set of flats (one per physical filter)."
    dimensions = (frozenset({"physical_filter"}),)
    config_class = FlatNormalizeConfig
    task_classes = MappingProxyType({
        "lsst.cp.pipe.CpFlatNormalizationTask": ClassMap(
        "flatNormalize", ("physical_filter",), (("inputMDs", "cpFlatProc"),), ("outputScales", "cpFlatNormScales"),
        {"level": "level", "scaleMaxIter": "scaleMaxIter", "doDownSelection": "doDownSelection",
         "downSelectionField": "downSelectionField", "downSelectionValue": "downSelectionValue"}, (),
        defaults={"doDownSelection": False, "downSelectionField": "observation_reason"},
        extra_connections=("camera", "inputDims")),
    })
    options = MappingProxyType({
        "level": Option(enum("DETECTOR", "AMP"), None, "DETECTOR", doc="only DETECTOR is implemented"),
        "scaleMaxIter": Option(int, "max_iter"),
        "doDownSelection": Option(bool, None, False, doc="read only the exposures whose downSelectionField is "
                                                         "downSelectionValue (chosen at planning)"),
        "downSelectionField": Option(enum(*_DOWN_FIELDS), None, "observation_reason",
                                     doc="exposure record field of the down-selection"),
        "downSelectionValue": Option(str, None, "", doc="its value (case-insensitive); required with "
                                                        "doDownSelection"),
    })

    @classmethod
    def exposure_filter(cls, task):
        cfg = task.config
        if not cfg.get("doDownSelection"):
            return None
        value = str(cfg.get("downSelectionValue") or "")
        if not value:
            raise ConfigError(MSG_DOWN_VALUE.format(label=task.label))
        return str(cfg.get("downSelectionField") or "observation_reason"), value

    @classmethod
    def plan(cls, task, settings, explicit):
        cfg = task.config
        notes = [f"{task.label}: level=AMP is not implemented; DETECTOR used"] if cfg.get("level") == "AMP" else []
        cls.exposure_filter(task)  # a down-selection without a value is refused at planning
        kw = {cls.options[k].field: v for k, v in cfg.items() if cls.options[k].field}
        return {"config": FlatNormalizeConfig(**kw)}, notes

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import flat_normalize_task

        return flat_normalize_task(next(iter(groups.values())), max_iter=spec.settings["config"].max_iter)
