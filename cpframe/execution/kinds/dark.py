"""The ``darkCr`` kind: cosmic rays of one dark exposure (cp_pipe ``CpDarkTask``)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, output_path
from cpframe.science.configs.tasks import CrConfig


_DET = ("exposure", "detector")


class DarkCr(TaskKind):
    name = "darkCr"
    summary = "Mask cosmic rays (CR, grown) and clear BAD on one dark ISR intermediate."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = CrConfig
    settings_key = "cr"
    task_classes = MappingProxyType({
        "lsst.cp.pipe.CpDarkTask": ClassMap(
        "darkCr", _DET, (("inputExp", "cpDarkIsr"),), ("outputExp", "cpDarkProc"),
        {"repair.cosmicray.minSigma": "minSigma", "repair.cosmicray.min_DN": "minDn",
         "repair.cosmicray.cond3_fac": "cond3Fac", "repair.cosmicray.nCrPixelMax": "nCrPixelMax",
         "crGrow": "crGrow"}, ("psfFwhm", "psfSize", "maskListToInterpolate", "repair.*")),
    })
    options = MappingProxyType({
        "minSigma": Option(float, "min_sigma"),
        "minDn": Option(float, "min_dn"),
        "cond3Fac": Option(float, "neighbour_factor"),
        "crGrow": Option(int, "cr_grow"),
        "nCrPixelMax": Option(int, "n_cr_pixel_max", doc="more CR pixels: a warning, the mask is kept"),
    })

    @classmethod
    def plan(cls, task, settings, explicit):
        kw = {cls.options[k].field: v for k, v in task.config.items() if k in cls.options}
        return {"cr": CrConfig(**kw)}, []

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import dark_cr_task

        (exp,) = next(iter(groups.values()))
        res = dark_cr_task(exp.path, output_path(spec), spec.settings["cr"])
        return replace(exp, path=res.path)
