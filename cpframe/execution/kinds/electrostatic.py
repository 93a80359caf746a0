"""The ``electrostaticBfSolve`` kind: the electrostatic brighter-fatter solution of one detector from its
FULLCOVARIANCE PTC (cp_pipe ``ElectrostaticBrighterFatterSolveTask``, product ``electroBfDistortionMatrix``;
science and the differences in :mod:`cpframe.science.electrostatic`).

cp_pipe reads the certified ``ptc`` (``inputPtc``) and, to place the quantum, the detector's raws (``dummy``,
never opened) -- or, with ``useBfPtc``, a PTC of the same pipeline (``inputBfPtc``).  cpframe does the same
(:mod:`cpframe.execution.lsst_pipeline`).
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, calib_path, output_path
from cpframe.science.configs import electrostatic as _es

MSG_NO_PTC = ("electrostaticBfSolve {key}: no PTC to read: certify a FULLCOVARIANCE ptc in the input collections "
              "(or connect a ptcSolve output with useBfPtc: true).")
PRODUCT = "electroBfDistortionMatrix"


class ElectrostaticBfSolve(TaskKind):
    name = "electrostaticBfSolve"
    summary = "Electrostatic brighter-fatter model (pixel-boundary shifts) fitted to a FULLCOVARIANCE PTC's a matrix."
    dimensions = (frozenset({"detector"}),)
    config_class = _es.ElectrostaticConfig
    settings_key = "electrostatic"
    task_classes = MappingProxyType({
        "lsst.cp.pipe.ElectrostaticBrighterFatterSolveTask": ClassMap(
            "electrostaticBfSolve", ("detector",), (("dummy", "raw"),), ("output", PRODUCT),
            {k: k for k in ("fitRange", "initialParametersDict", "parametersToVary", "nImageChargePairs",
                            "doNormalizeElectrostaticModel", "doFitNormalizationOffset", "useBfPtc")},
            # no conversion-depth model (cpframe has no filter transmission curves); scipy, not lmfit
            ("doFilterCorrection", "physicalFiltersToSolve", "fitMethod"),
            extra_connections=("camera", "inputPtc", "inputBfPtc", "transmissionFilter")),
    })
    options = MappingProxyType({
        "fitRange": Option(int, "fit_range"),
        "initialParametersDict": Option("mapping", "initial_parameters"),
        "parametersToVary": Option("mapping", "parameters_to_vary"),
        "nImageChargePairs": Option(int, "n_image_charge_pairs"),
        "doNormalizeElectrostaticModel": Option(bool, "do_normalize_electrostatic_model"),
        "doFitNormalizationOffset": Option(bool, "do_fit_normalization_offset"),
        "useBfPtc": Option(bool, None, False, doc="accepted; the pipeline's connections decide which PTC is read"),
    })

    @classmethod
    def run(cls, spec, groups):
        # useBfPtc: the pipeline's own PTC is the input; otherwise the inputs are the raws (never opened)
        from cpframe.science import electrostatic as _es  # the science itself: only where quanta run
        ptc = next((getattr(v[0], "path", None) for name, v in groups.items() if name != "raw" and v), None)
        ptc = ptc or calib_path(spec, "ptc")
        if not ptc:
            raise UserInputError(MSG_NO_PTC.format(key=spec.key))
        sol = _es.electrostatic_solve_task(ptc, output_path(spec), spec.settings["electrostatic"])
        return sol.path
