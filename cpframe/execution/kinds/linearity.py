"""The linearity kinds: ``linearitySolve`` (a linearizer per detector from the flat-pair ramp) and
``linearityNormalize`` (the focal-plane normalisation of the ramp's exposures from several
detectors' linearizers); science in :mod:`cpframe.science.linearity` and
:mod:`cpframe.science.linearity_normalize`.

``linearitySolve`` reads the ``ptcExtract`` measurements of one detector (pairs of equal exposure
time) or a PTC (cp_pipe ``LinearitySolveTask`` / cp_verify ``CpvLinearitySolveTask``: the pairs it
was solved from), and, with ``useFocalPlaneNormalization``, a ``linearityNormalize`` output.

cp_pipe's ``LinearityDoubleSplineSolveTask`` maps onto it as one absolute spline per amp (see
docs/algorithms.md "Linearizer"): cpframe does not fit cp_pipe's relative spline of each amp
against a reference amp (from binned images) nor photodiode, temperature or temporal terms; its
``absoluteSpline*`` settings set the per-amp spline, and the binned images it reads are the pair
measurements of the same extraction.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from cpframe.execution.kinds.base import UNSET, ClassMap, Option, TaskKind, calib_path, enum, output_path
from cpframe.science.configs import linearity as _lin
from cpframe.science.configs import linearity_normalize as _norm


def _field(key: str) -> str:
    return _lin._ALIASES[key]


_SOLVE_FIELDS = ("linearityType", "polynomialOrder", "splineKnots", "maxLinearAdu", "minLinearAdu",
                 "nSigmaClipLinear", "maxFracLinearityDeviation", "minSignalFitLinearityTurnoff", "usePhotodiode",
                 "splineFitMinIter", "splineFitMaxIter", "splineFitMaxRejectionPerIteration", "doSplineFitOffset",
                 "useFocalPlaneNormalization")
_SOLVE_IGNORED = ("trimmedState", "maxLookupTableAdu", "ignorePtcMask", "applyPhotodiodeCorrection",
                  "minPhotodiodeCurrent", "doAutoGrouping", "autoGroupingUseExptime", "autoGroupingThreshold",
                  "autoGroupingMaxSignalFraction", "splineGroupingColumn", "splineGroupingMinPoints",
                  "doSplineFitWeights", "splineFitWeightParsStart", "doSplineFitTemperature",
                  "splineFitTemperatureColumn", "doSplineFitTemporal", "useLinearizerPtc")
_SOLVE_CONNECTIONS = ("dummy", "camera", "inputLinearizerPtc", "inputPhotodiodeCorrection", "inputNormalization")


def _single_spline(default_output: str) -> ClassMap:
    # cp_pipe LinearitySolveTask and its cp_verify subclass: the PTC's means against exposure time
    return ClassMap("linearitySolve", ("detector",), (("inputPtc", "ptc"),), ("outputLinearizer", default_output),
                    {k: k for k in _SOLVE_FIELDS}, _SOLVE_IGNORED, defaults={"linearityType": "Squared"},
                    extra_connections=_SOLVE_CONNECTIONS)


class LinearitySolve(TaskKind):
    name = "linearitySolve"
    summary = "Linearizer (polynomial, squared or spline) per amp from the flat-pair ramp of one detector."
    dimensions = (frozenset({"detector"}),)
    config_class = _lin.LinearityConfig
    settings_key = "linearity"
    task_classes = MappingProxyType({
        "lsst.cp.pipe.LinearitySolveTask": _single_spline("linearity"),
        "lsst.cp.verify.CpvLinearitySolveTask": _single_spline("cpvLinearity"),
        "lsst.cp.pipe.LinearityDoubleSplineSolveTask": ClassMap(
            "linearitySolve", ("detector",),
            (("inputBinnedImagesHandles", "cpPtcPairBinned"), ("inputNormalization", "cpLinearizerPtcNormalization")),
            ("outputLinearizer", "linearity"),
            {"maxFracLinearityDeviation": "maxFracLinearityDeviation",
             "minSignalFitLinearityTurnoff": "minSignalFitLinearityTurnoff", "usePhotodiode": "usePhotodiode",
             "useFocalPlaneNormalization": "useFocalPlaneNormalization",
             "absoluteSplineNodeSize": "splineNodeSize", "absoluteNSigmaClipLinear": "nSigmaClipLinear",
             "absoluteSplineFitMinIter": "splineFitMinIter", "absoluteSplineFitMaxIter": "splineFitMaxIter",
             "absoluteSplineFitMaxRejectionPerIteration": "splineFitMaxRejectionPerIteration",
             "doAbsoluteSplineFitOffset": "doSplineFitOffset"},
            ("maxLinearityTurnoffRelativeToPtcTurnoff", "maxNoiseReference", "minPhotodiodeCurrent", "doAutoGrouping",
             "autoGroupingUseExptime", "autoGroupingThreshold", "autoGroupingMaxSignalFraction", "groupingColumn",
             "absoluteSplineMinimumSignalNode", "absoluteSplineLowThreshold", "absoluteSplineLowNodeSize",
             "doAbsoluteSplineFitWeights", "absoluteSplineFitWeightParsStart", "doAbsoluteSplineFitTemperature",
             "absoluteSplineFitTemperatureColumn", "doAbsoluteSplineFitTemporal", "relativeSpline*",
             "relativeNSigmaClipLinear"),
            defaults={"absoluteSplineNodeSize": 3000.0, "useFocalPlaneNormalization": False},
            fixed={"linearityType": "Spline"},
            extra_connections=("dummy", "camera", "inputLinearizerPtc"),
            optional_inputs=("inputNormalization",)),
    })
    options = MappingProxyType({
        "linearityType": Option(enum(*_lin.LINEARITY_TYPES), _field("linearityType")),
        **{k: Option(t, _field(k)) for k, t in (
            ("polynomialOrder", int), ("splineKnots", int), ("maxLinearAdu", float), ("minLinearAdu", float),
            ("nSigmaClipLinear", float), ("maxFracLinearityDeviation", float),
            ("minSignalFitLinearityTurnoff", float), ("splineFitMinIter", int), ("splineFitMaxIter", int),
            ("splineFitMaxRejectionPerIteration", int), ("doSplineFitOffset", bool), ("splineNodeSize", float),
            ("useFocalPlaneNormalization", bool))},
        "usePhotodiode": Option(bool, _field("usePhotodiode"), doc="only false: cpframe has no photodiode data"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import linearity as _lin  # the science itself: only where quanta run
        from cpframe.science import linearity_normalize as _norm  # the science itself: only where quanta run
        meas, meta, norm = [], None, None
        for values in groups.values():
            for v in values:
                if isinstance(v, tuple) and len(v) == 2:  # ptcExtract: (pair measurement, header cards)
                    meas.append(v[0])
                    meta = meta or v[1]
                elif isinstance(v, Mapping) and "normalization" in v:  # linearityNormalize
                    norm = _norm.read_normalization(v)
                elif getattr(v, "path", None):  # a PTC of this pipeline (ptcSolve): the pairs it was solved from
                    m, meta = _norm.measurements_from_ptc(v.path)
                    meas.extend(m)
        if not meas and calib_path(spec, "ptc"):  # LinearitySolveTask's inputPtc: the certified PTC
            meas, meta = _norm.measurements_from_ptc(calib_path(spec, "ptc"))
        return _lin.linearity_solve_task(meas, output_path(spec), spec.settings["linearity"], meta=meta,
                                         normalization=norm)


class LinearityNormalize(TaskKind):
    name = "linearityNormalize"
    summary = "Focal-plane normalisation of a linearity ramp's exposures from several detectors' linearizers."
    dimensions = (frozenset(),)
    config_class = _norm.NormalizeConfig
    settings_key = "normalize"
    task_classes = MappingProxyType({
        "lsst.cp.pipe.LinearityNormalizeTask": ClassMap(
            "linearityNormalize", (), (("inputLinearizerHandles", "linearizerUnnormalized"),),
            ("outputNormalization", "cpLinearizerNormalization"),
            {"normalizeDetectors": "normalizeDetectors", "referenceDetector": "referenceDetector",
             "minValidFraction": "minValidFraction"},
            ("doNormalizeAbsoluteLinearizer",), extra_connections=("inputPtcHandles", "camera")),
    })
    options = MappingProxyType({
        "normalizeDetectors": Option("floats", "normalize_detectors",
                                     doc="detectors used (empty: every detector of the selection)"),
        "referenceDetector": Option(int, None, UNSET, doc="must be among the detectors of the selection"),
        "minValidFraction": Option(float, "min_valid_fraction"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import linearity_normalize as _norm  # the science itself: only where quanta run
        lins = [v for values in groups.values() for v in values]
        return _norm.normalize_task(lins, output_path(spec), spec.settings["normalize"],
                                    meta={"INSTRUME": spec.data_id.get("instrument")})
