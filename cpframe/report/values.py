"""What the report shows, apart from how: the overall verdict, the unit of every Results column
and of each product's colour bar, the command that verifies a type, and number formatting."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

__all__ = ["COLUMN_UNITS", "overall_verdict", "product_units", "verify_command"]


def overall_verdict(verdicts: Mapping[str, bool | None]) -> str:
    """PASS / FAIL / INCOMPLETE of a set of per-type verdicts (None = not verified).

    >>> overall_verdict({"bias": True, "ptc": None}), overall_verdict({"bias": True, "flat": False})
    ('INCOMPLETE', 'FAIL')
    >>> overall_verdict({}), overall_verdict({"bias": True})
    ('INCOMPLETE', 'PASS')
    """
    if any(v is False for v in verdicts.values()):
        return "FAIL"
    if not verdicts or any(v is None for v in verdicts.values()):
        return "INCOMPLETE"
    return "PASS"


_E = "e-"
_IMAGE_UNITS = {"MEAN": _E, "MEDIAN": _E, "MEANCLIP": _E, "NOISE": _E, "EXPECTED_NOISE": _E, "READ_NOISE": _E,
                "NMASKED": "pixels"}
#: Unit of each Results column (name without the stage prefix) per stage, shown under the column
#: name; a column not listed is a count, a flag, a name or a date.  Image stages measure the
#: verification ISR's residual images, in electrons.
COLUMN_UNITS: dict[str, dict[str, str]] = {
    "BIAS": {**_IMAGE_UNITS, "READ_NOISE_OVERSCAN": _E, "OVERSCAN_NOISE_VAR": "e-²", "CALIB_NOISE": _E,
             "CR_NOISE": _E, "READ_NOISE_ADU": "adu", "AMP_CORNER": _E, "GAIN": "e-/adu"},
    "FLAT": {**_IMAGE_UNITS, "SAT_FRACTION": "fraction", "DET_MEAN": _E, "DET_SCATTER": "fraction",
             "EXP_MEAN": _E, "EXP_SCATTER": "fraction"},
    "PTC": {"PTC_GAIN": "e-/adu", "PTC_GAIN_ERR": "e-/adu", "AMP_GAIN": "e-/adu", "PTC_NOISE": _E,
            "PTC_NOISE_ERR": _E, "AMP_NOISE": _E, "OVERSCAN_NOISE": _E, "PTC_TURNOFF": "adu",
            "PTC_TURNOFF_E": _E, "PTC_BFE_A00": "1/e-",
            "NOISE_SIGNAL_INDEPENDENCE": "adu"},  # the spread of the per-pair overscan noises (adu)
    "LINEARITY": {"LINEARITY_TURNOFF": "adu", "MAX_CORRECTION_PCT": "%", "MAX_FIT_RESIDUAL": "fraction",
                  "FIT_RESIDUAL_SIGMA_MAD": "fraction"},
    "CROSSTALK": {"MAX_RESIDUAL": "adu/adu", "MAX_GHOST_E": _E},
    "CTI": {"GLOBAL_CTI": "per transfer", "TRAP_SIZE": _E, "TRAP_EMISSION_TIME": "transfers"},
    "GAIN_CORRECTION": {"ADJUSTMENT": "x PTC gain", "ADJUSTMENT_PCT": "%", "FLAT_RATIO": "new / reference flat"},
    "FLAT_GRADIENT": {"MODEL": "relative to the centre", "DET_RESIDUAL_RMS": "fraction", "DET_GRADIENT_PCT": "%"},
    "BFK": {"A00": "1/e-", "CURVATURE": "fraction", "NONLINEARITY": "fraction", "DET_CURVATURE": "fraction",
            "DET_NONLINEARITY": "fraction", "DET_MAX_MEAN_E": _E, "DET_UNCORRECTED_CURVATURE": "fraction",
            "DET_UNCORRECTED_NONLINEARITY": "fraction"},
}
COLUMN_UNITS["ELECTROSTATIC_BF"] = {**COLUMN_UNITS["BFK"]}
COLUMN_UNITS["DARK"] = {**COLUMN_UNITS["BIAS"]}
COLUMN_UNITS["FLAT_ANAGLYPH"] = {**COLUMN_UNITS["FLAT"]}
COLUMN_UNITS["FLAT_SINGLE_LED"] = {**COLUMN_UNITS["FLAT"]}


def product_units(product: str | None, isr_units: str) -> str:
    """Colour-bar label of a combined product: a flat is normalised (dimensionless, whatever
    units its inputs had), a dark is per second of dark time, a bias is in the ISR's units.

    >>> product_units("flat", "electron"), product_units("dark", "electron"), product_units("bias", "adu")
    ('relative response (dimensionless)', 'electron / s', 'adu')
    """
    if product in ("flat", "flatBootstrap"):
        return "relative response (dimensionless)"
    if product in ("dark", "darkBootstrap") and isr_units:
        return f"{isr_units} / s"
    return isr_units


def verify_command(key: str) -> str:
    """The command that verifies a calibration type (the template of its verify pipeline).

    >>> verify_command("flat")
    'cpframe submit templates/bps_verify_flat_<band>.yaml'
    >>> verify_command("electroBfDistortionMatrix")  # cp_pipe's template stem
    'cpframe submit templates/bps_verify_electrostaticBFDistortionMatrix.yaml'
    """
    name = {"flat": "flat_<band>", "flat_anaglyph": "flat_anaglyph_<band>",
            "electroBfDistortionMatrix": "electrostaticBFDistortionMatrix"}.get(key, key)
    return f"cpframe submit templates/bps_verify_{name}.yaml"


def _floats(column: Any) -> np.ndarray:
    """A table column as floats, masked cells (empty in the ECSV) as NaN."""
    return np.ma.asarray(column, dtype=float).filled(np.nan)


def _fmt(value: Any, column: str = "") -> str:
    if value is None or np.ma.is_masked(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "pass" if value else "FAIL"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):d}"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return ""
        if column == "mjd":
            return f"{float(value):.10f}"
        return f"{float(value):.1f}" if abs(float(value)) >= 1e4 else f"{float(value):.4g}"
    return str(value)
