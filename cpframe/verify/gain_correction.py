"""Gain-correction verification (stage ``GAIN_CORRECTION``; cp_verify has no such task: cpframe's check).

Runs on the ``gain_correction`` product itself (no ISR).  Per amp: ``ADJUSTMENT`` (the factor on the
PTC gain), ``ADJUSTMENT_PCT`` (its departure from 1, %) and ``FLAT_RATIO`` (the new flat over the
reference flat the amp showed, before the correction).  Tests: ``ADJUSTMENT``: the adjustment is
finite and within ``gain_correction_max_adjustment`` (5 %, cp_pipe's ``max_fractional_gain_ratio``:
a restart moves gains by tenths of a percent, more means a broken amp or a wrong reference flat);
``MEASURED``: the amp was measured (not excluded by the solve, which leaves it uncorrected).
"""

from __future__ import annotations

import math
from pathlib import Path

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["GAIN_CORRECTION", "measure_gain_correction", "check_gain_correction"]


def measure_gain_correction(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the GAIN_CORRECTION stage (module docstring)."""
    from cpframe.science.gain_correction import read_gain_correction

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"gain_correction file {p} does not exist; check the gain_correction dataset given "
                             "to verification.")
    cal = read_gain_correction(p)
    missing = [a for a in detector.amp_names if a not in cal.adjustments]
    if missing:
        raise UserInputError(f"{p}: the gain correction has no amp(s) {', '.join(missing)} of {detector.name}.")
    excluded = set(cal.meta.get("excluded_amps") or [])
    ratios = cal.meta.get("flat_ratio_per_amp") or {}
    amps = {a: {"ADJUSTMENT": float(cal.adjustments[a]), "ADJUSTMENT_PCT": 100.0 * (float(cal.adjustments[a]) - 1.0),
                "FLAT_RATIO": float(ratios[a]) if ratios.get(a) is not None else math.nan,
                "EXCLUDED": a in excluded} for a in detector.amp_names}
    meta = {k: cal.meta.get(k) for k in ("FILTER", "fixed_amp", "median_amp", "n_bins")}
    return {"METADATA": meta, "AMP": amps, "DET": {}, "HEADER": dict(cal.meta)}


def check_gain_correction(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the GAIN_CORRECTION stage (module docstring)."""
    out = {}
    for a, s in stats["AMP"].items():
        adj = s["ADJUSTMENT"]
        out[a] = {"ADJUSTMENT": bool(math.isfinite(adj) and abs(adj - 1.0) <= config.gain_correction_max_adjustment),
                  "MEASURED": not s["EXCLUDED"]}
    return {"AMP": out, "DET": {}}


GAIN_CORRECTION = register_stage(Stage(name="GAIN_CORRECTION", type_name="GainCorrection", kind="calib",
                                       measure=measure_gain_correction, check=check_gain_correction,
                                       calib_type="gain_correction"))
