"""The PTC kinds: ``ptcExtract`` (one flat pair) and ``ptcSolve`` (the fit per detector;
cp_pipe ``PhotonTransferCurveExtractPairTask`` / ``PhotonTransferCurveSolveTask``).

Pairs are matched by exposure time (cp_pipe matchExposuresType=TIME), gain estimator FULL.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from cpframe.execution.kinds.base import UNSET, ClassMap, Option, TaskKind, enum, header_meta, output_path
from cpframe.science.configs import ptc as _ptc


def _field(key: str) -> str:
    return _ptc._ALIASES[key]


class _Ptc(TaskKind):
    config_class = _ptc.PtcConfig
    settings_key = "ptc"


_DET = ("exposure", "detector")


_EXTRACT_FIELDS = {k: k for k in ("nSigmaClipPtc", "nIterSigmaClipPtc", "numEdgeSuspect",
                                   "maximumRangeCovariancesAstier", "minNumberGoodPixelsForCovariance")}
_EXTRACT_IGNORED = ("edgeMaskLevel", "useEfdPhotodiodeData", "auxiliaryHeaderKeys", "doExtractPhotodiodeData",
                    "efdSalIndex", "matchExposuresType", "doOutputBinnedImages", "doVignetteFunctionRegionSelection",
                    "photodiodeIntegrationMethod", "binSize", "python", "vignetteFunctionPolynomialCoeffs")


class PtcExtract(_Ptc):
    name = "ptcExtract"
    summary = "Mean and variance per amp of one pair of flats of equal exposure time."
    dimensions = (frozenset({"exposure", "detector"}),)
    pairs_exposures = True
    task_classes = MappingProxyType({
        "lsst.cp.pipe.ptc.PhotonTransferCurveExtractPairTask": ClassMap(
        "ptcExtract", _DET, (("inputExp", "ptcInputExposurePairs"),), ("outputCovariance", "ptcCovariances"),
        _EXTRACT_FIELDS, _EXTRACT_IGNORED,
        extra_connections=("outputCovariances", "inputPhotodiodeData", "outputBinnedImages", "taskMetadata")),
        # cp_pipe before 2025 (e.g. f029a3f's predecessors of March 2025): one quantum per detector reading every
        # exposure and pairing them itself, writing one covariance per pair. cpframe pairs the exposures when it
        # plans and runs one quantum per pair: the same measurements (docs/lsst-pipelines.md)
        "lsst.cp.pipe.ptc.PhotonTransferCurveExtractTask": ClassMap(
        "ptcExtract", _DET, (("inputExp", "ptcInputExposurePairs"),), ("outputCovariances", "ptcCovariances"),
        _EXTRACT_FIELDS, _EXTRACT_IGNORED,
        extra_connections=("inputPhotodiodeData", "outputBinnedImages", "taskMetadata")),
    })
    options = MappingProxyType({
        **{k: Option(t, _field(k)) for k, t in (
            ("nSigmaClipPtc", float), ("nIterSigmaClipPtc", int), ("numEdgeSuspect", int),
            ("minNumberGoodPixelsForCovariance", int))},
        "maximumRangeCovariancesAstier": Option(
            int, None, UNSET, doc="covariances on lags [0, L)² are measured (FFT) only when this is set "
                                  "(cp_pipe: always, L = 8)"),
    })

    @classmethod
    def plan(cls, task, settings, explicit):
        """As the default, and covariances are measured when ``maximumRangeCovariancesAstier`` is set."""
        out, notes = super().plan(task, settings, explicit)
        if "maximumRangeCovariancesAstier" in task.config:
            out[cls.settings_key] = dataclasses.replace(out[cls.settings_key], measure_covariances=True)
        return out, notes

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import ptc_extract_task

        a, b = next(iter(groups.values()))
        noise = {amp: 0.5 * (a.amp_stats[amp]["overscan_noise_adu"] + b.amp_stats[amp]["overscan_noise_adu"])
                 for amp in a.amp_stats}
        m = ptc_extract_task(a.path, b.path, spec.settings["ptc"], overscan_noise=noise)
        return (m, header_meta(a.path))


class PtcSolve(_Ptc):
    name = "ptcSolve"
    summary = "Gain, read noise and turnoff per amp from the pair measurements of one detector."
    dimensions = (frozenset({"detector"}),)
    task_classes = MappingProxyType({
        "lsst.cp.pipe.ptc.PhotonTransferCurveSolveTask": ClassMap(
        "ptcSolve", ("detector",), (("inputCovariances", "ptcCovariances"),), ("outputPtcDataset", "ptcDatsetProposal"),
        {k: k for k in ("ptcFitType", "minMeanSignal", "maxMeanSignal", "maxSignalInitialPtcOutlierFit",
                        "scaleMaxSignalInitialPtcOutlierFit", "maxIterationsPtcOutliers", "sigmaCutPtcOutliers",
                        "maxDeltaInitialPtcOutlierFit", "maximumRangeCovariancesAstier",
                        "maximumRangeCovariancesAstierFullCovFit")},
        ("doModelPtcRolloff",
         "extendRollofSearchMaskSizeAdu", "maxPtcRolloffDeviation", "binSize"),
        defaults={"ptcFitType": "EXPAPPROXIMATION"}, extra_connections=("camera",)),
    })
    folded_classes = MappingProxyType({"lsst.cp.pipe.ptc.PhotonTransferCurveAdjustGainRatiosTask": "adjust"})
    options = MappingProxyType({
        "ptcFitType": Option(enum(*_ptc.FIT_TYPES), _field("ptcFitType")),
        "maximumRangeCovariancesAstier": Option(int, _field("maximumRangeCovariancesAstier")),
        "maximumRangeCovariancesAstierFullCovFit": Option(int, _field("maximumRangeCovariancesAstierFullCovFit")),
        **{k: Option(t, _field(k)) for k, t in (
            ("minMeanSignal", float), ("maxMeanSignal", float), ("maxSignalInitialPtcOutlierFit", float),
            ("scaleMaxSignalInitialPtcOutlierFit", bool), ("maxIterationsPtcOutliers", int),
            ("sigmaCutPtcOutliers", float), ("maxDeltaInitialPtcOutlierFit", float))},
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import ptc_solve_task

        pairs = next(iter(groups.values()))
        return ptc_solve_task([m for m, _ in pairs], output_path(spec), spec.settings["ptc"], meta=pairs[0][1])
