"""The ``bfkSolve`` kind: brighter-fatter kernels of one detector from its FULLCOVARIANCE PTC
(cp_pipe ``BrighterFatterKernelSolveTask``; science and the differences in :mod:`cpframe.science.bfk`).

Its input is the ``ptcSolve`` result of the same pipeline (cp_pipe's ``bfkPtc``,
``useBfkPtc: true``) or, without one, the ``ptc`` calibration found for the detector.
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, calib_path, enum, output_path
from cpframe.science.configs import bfk as _bfk

MSG_NO_PTC = ("bfkSolve {key}: no PTC to read: connect the ptcSolve output of the pipeline (bfkPtc) or "
              "certify a FULLCOVARIANCE ptc in the input collections.")


class BfkSolve(TaskKind):
    name = "bfkSolve"
    summary = "Brighter-fatter kernel per amp (and their average for the detector) from a FULLCOVARIANCE PTC."
    dimensions = (frozenset({"detector"}),)
    config_class = _bfk.BfkConfig
    settings_key = "bfk"
    # cp_pipe reads inputBfkPtc (the pipeline's own FULLCOVARIANCE PTC) when useBfkPtc is true, else the
    # certified ``ptc`` (inputPtc); cpframe's translation does the same (lsst_pipeline: _bfk_inputs).
    # useAmatrix keeps cpframe's default (true: the pre-kernel is -a of the full covariance fit), where
    # cp_pipe's is false (the clipped mean of the measured cross-correlations): docs/algorithms.md.
    task_classes = MappingProxyType({
        "lsst.cp.pipe.BrighterFatterKernelSolveTask": ClassMap(
            "bfkSolve", ("detector",), (("inputBfkPtc", "bfkPtc"),), ("outputBFK", "brighterFatterKernel"),
            {k: k for k in ("level", "nSigmaClip", "xcorrCheckRejectLevel", "forceZeroSum", "useAmatrix",
                            "doCheckValidity", "nSigmaTolForValidEdge", "fractionK00ForKernelMax", "useBfkPtc")},
            ("ignoreAmpsForAveraging", "useCovModelSample", "covModelFluxSample", "maxIterSuccessiveOverRelaxation",
             "eLevelSuccessiveOverRelaxation", "correlationQuadraticFit", "correlationModelRadius",
             "correlationModelSlope"),
            extra_connections=("dummy", "camera", "inputPtc")),
    })
    options = MappingProxyType({
        "level": Option(enum("AMP", "DETECTOR"), "level"),
        "nSigmaClip": Option(float, "n_sigma_clip"),
        "xcorrCheckRejectLevel": Option(float, "xcorr_check_reject_level"),
        "forceZeroSum": Option(bool, "force_zero_sum"),
        "useAmatrix": Option(bool, "use_amatrix"),
        "doCheckValidity": Option(bool, "do_check_validity"),
        "nSigmaTolForValidEdge": Option(float, "n_sigma_tol_for_valid_edge"),
        "fractionK00ForKernelMax": Option(float, "fraction_k00_for_kernel_max"),
        "useBfkPtc": Option(bool, None, True, doc="accepted; the pipeline's connections decide which PTC is read"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import bfk as _bfk  # the science itself: only where quanta run
        ptc = None
        for values in groups.values():
            for v in values:
                ptc = getattr(v, "path", None) or ptc
        ptc = ptc or calib_path(spec, "ptc")
        if not ptc:
            raise UserInputError(MSG_NO_PTC.format(key=spec.key))
        return _bfk.bfk_solve_task(ptc, output_path(spec), spec.settings["bfk"])
