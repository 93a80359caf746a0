"""The crosstalk kinds: ``crosstalkExtract`` (source/target ratios of one bright exposure) and
``crosstalkSolve`` (the intra-detector matrix; cp_pipe ``CrosstalkExtractTask`` /
``CrosstalkSolveTask``; science in :mod:`cpframe.science.crosstalk`)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, header_meta, output_path
from cpframe.science.configs import crosstalk as _xt


def _field(key: str) -> str:
    return _xt._ALIASES.get(key, key)


class _Crosstalk(TaskKind):
    config_class = _xt.CrosstalkConfig
    settings_key = "crosstalk"


class CrosstalkExtract(_Crosstalk):
    name = "crosstalkExtract"
    summary = "Crosstalk ratios target/source per amp pair from the bright pixels of one exposure x detector."
    dimensions = (frozenset({"exposure", "detector"}),)
    task_classes = MappingProxyType({"lsst.cp.pipe.CrosstalkExtractTask": ClassMap(
        "crosstalkExtract", ("exposure", "detector"), (("inputExp", "cpCrosstalkIsrExp"),),
        ("outputRatios", "cpCrosstalkRatio"), {k: k for k in ("threshold", "badMask", "growMaskRadius")},
        ("ignoreSaturatedPixels", "isTrimmed", "doSubtractBackground", "background.*", "python"),
        extra_connections=("outputFluxes", "camera"))})
    options = MappingProxyType({
        "threshold": Option(float, _field("threshold")),
        "badMask": Option("planes", _field("badMask")),
        "growMaskRadius": Option(int, _field("growMaskRadius")),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import crosstalk as _xt  # the science itself: only where quanta run
        (exp,) = next(iter(groups.values()))
        return (_xt.crosstalk_extract_task(exp.path, spec.settings["crosstalk"]), header_meta(exp.path))


class CrosstalkSolve(_Crosstalk):
    name = "crosstalkSolve"
    summary = "Crosstalk matrix of one detector from the ratios of its exposures (insignificant terms set to 0)."
    dimensions = (frozenset({"detector"}),)
    task_classes = MappingProxyType({"lsst.cp.pipe.CrosstalkSolveTask": ClassMap(
        "crosstalkSolve", ("detector",), (("inputRatios", "cpCrosstalkRatio"),), ("outputCrosstalk", "crosstalk"),
        {k: k for k in ("rejIter", "rejSigma", "fluxOrder", "significanceLimit", "doSignificanceScaling",
                        "rejectNegativeSolutions", "doFiltering", "unitsAreElectrons")},
        ("python",), extra_connections=("inputFluxes", "camera"))})
    #: cp_pipe's separate filter step is the solve's ``doFiltering`` here (the reader turns it on)
    folded_classes = MappingProxyType({"lsst.cp.pipe.CrosstalkFilterTask": "filter"})
    options = MappingProxyType({k: Option(t, _field(k)) for k, t in (
        ("rejIter", int), ("rejSigma", float), ("fluxOrder", int), ("significanceLimit", float),
        ("doSignificanceScaling", bool), ("rejectNegativeSolutions", bool), ("doFiltering", bool),
        ("unitsAreElectrons", bool))})

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import crosstalk as _xt  # the science itself: only where quanta run
        values = next(iter(groups.values()))
        return _xt.crosstalk_solve_task([m for m, _ in values], output_path(spec), spec.settings["crosstalk"],
                                        meta=values[0][1])
