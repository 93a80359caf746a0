"""The flat kinds: ``flatMeasure`` (background of one flat) and ``flatNormalize`` (focal-plane
scales per exposure; cp_pipe ``CpFlatMeasureTask`` / ``CpFlatNormalizationTask``)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import Option, TaskKind, enum
from cpframe.science.tasks import FlatMeasureConfig, FlatNormalizeConfig


class FlatMeasure(TaskKind):
    name = "flatMeasure"
    summary = "Clipped background of one flat ISR intermediate (per detector and amp)."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = FlatMeasureConfig
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
    options = MappingProxyType({
        "level": Option(enum("DETECTOR", "AMP"), None, "DETECTOR", doc="only DETECTOR is implemented"),
        "scaleMaxIter": Option(int, "max_iter"),
    })

    @classmethod
    def plan(cls, task, settings, explicit):
        cfg = task.config
        notes = [f"{task.label}: level=AMP is not implemented; DETECTOR used"] if cfg.get("level") == "AMP" else []
        kw = {cls.options[k].field: v for k, v in cfg.items() if cls.options[k].field}
        return {"config": FlatNormalizeConfig(**kw)}, notes

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import flat_normalize_task

        return flat_normalize_task(next(iter(groups.values())), max_iter=spec.settings["config"].max_iter)
