"""Crosstalk and CTI verification (stages ``CROSSTALK`` and ``CTI``; spec verification.md §4.8).

``CROSSTALK`` (cp_verify ``verifyCrosstalk.py``) runs on a *residual* crosstalk matrix: the
bright-source exposures processed by the ISR **with** the crosstalk under test, then the
same extract + solve + filter as ``cpCrosstalk`` (pipelines/verifyCrosstalk.yaml).  Per
target amp: ``N_VALID`` (significant residual coefficients), ``MAX_RESIDUAL`` (largest
|coefficient|, adu/adu), ``MAX_GHOST_E`` (largest |coefficient| × 100 000 e-, the ghost a
full-well source leaves).  Test ``NO_SIGNIFICANT_DETECTION``: no significant residual
coefficient (cp_verify's condition, per amp here: a failing amp is named).

``CTI`` runs on the ``cti`` product itself (cp_verify has no CTI task; cpframe's check):
per amp ``GLOBAL_CTI``, ``TRAP_SIZE`` (e-), ``TRAP_EMISSION_TIME``; tests ``CTI``: the global
CTI is finite and below ``cti_max`` (5e-6, the LSST sensor requirement of serial CTE >
0.999995) and ``TRAP``: the trap fit is finite (size ≥ 0, emission time > 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["CROSSTALK", "CTI", "measure_crosstalk", "check_crosstalk", "measure_cti", "check_cti"]

_FULL_WELL_E = 100000.0


def _exists(path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} file {p} does not exist; check the {what} dataset given to verification.")
    return p


def measure_crosstalk(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the CROSSTALK stage on a residual crosstalk matrix (module docstring)."""
    from cpframe.science.crosstalk import read_crosstalk

    cal = read_crosstalk(_exists(path, "crosstalk"))
    missing = [a for a in detector.amp_names if a not in cal.amps]
    if missing:
        raise UserInputError(f"{path}: the crosstalk matrix has no amp(s) {', '.join(missing)} of {detector.name}.")
    amps = {}
    for a in detector.amp_names:
        t = cal.amps.index(a)
        row = np.abs(np.nan_to_num(cal.coeffs[t], nan=0.0))
        row[t] = 0.0
        valid = cal.coeff_valid[t].copy()
        valid[t] = False
        amps[a] = {"N_VALID": int(valid.sum()), "MAX_RESIDUAL": float(row.max()),
                   "MAX_GHOST_E": float(row.max() * _FULL_WELL_E)}
    meta = {"N_EXPOSURES": cal.meta.get("N_EXPOSURES")}
    return {"METADATA": meta, "AMP": amps, "DET": {"N_VALID": int(sum(s["N_VALID"] for s in amps.values()))},
            "HEADER": dict(cal.meta)}


def check_crosstalk(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the CROSSTALK stage (module docstring)."""
    return {"AMP": {a: {"NO_SIGNIFICANT_DETECTION": s["N_VALID"] == 0} for a, s in stats["AMP"].items()}, "DET": {}}


def measure_cti(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the CTI stage (module docstring)."""
    from cpframe.science.cti import read_cti

    cal = read_cti(_exists(path, "cti"))
    missing = [a for a in detector.amp_names if a not in cal.amps]
    if missing:
        raise UserInputError(f"{path}: the CTI calibration has no amp(s) {', '.join(missing)} of {detector.name}.")
    amps = {a: {"GLOBAL_CTI": float(cal.amps[a].global_cti), "TRAP_SIZE": float(cal.amps[a].trap_size),
                "TRAP_EMISSION_TIME": float(cal.amps[a].trap_emission_time)} for a in detector.amp_names}
    return {"METADATA": {"N_EXPOSURES": cal.meta.get("N_EXPOSURES")}, "AMP": amps, "DET": {},
            "HEADER": dict(cal.meta)}


def check_cti(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the CTI stage (module docstring)."""
    out = {}
    for a, s in stats["AMP"].items():
        cti = s["GLOBAL_CTI"]
        out[a] = {"CTI": bool(math.isfinite(cti) and cti < config.cti_max),
                  "TRAP": bool(math.isfinite(s["TRAP_SIZE"]) and s["TRAP_SIZE"] >= 0
                               and math.isfinite(s["TRAP_EMISSION_TIME"]) and s["TRAP_EMISSION_TIME"] > 0)}
    return {"AMP": out, "DET": {}}


CROSSTALK = register_stage(Stage(name="CROSSTALK", type_name="Crosstalk", kind="calib", measure=measure_crosstalk,
                                 check=check_crosstalk, calib_type="crosstalk"))
CTI = register_stage(Stage(name="CTI", type_name="Cti", kind="calib", measure=measure_cti, check=check_cti,
                           calib_type="cti"))
