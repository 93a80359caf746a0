"""PTC verification (stage ``PTC``, spec verification.md §4.5; DMTN-101 §16).

Runs on the ``ptc`` product of one detector (``fits-ptc``: a ``PTC`` table with one
row per amp).  It compares the fitted gain and read noise with the *nominal* values
of the camera -- in cpframe those come from the caller (the camera model / curated
values used by the simulator or the site; see docs/verification.md), given as
``nominal = {amp: {"gain": e-/adu, "noise": e-}}``.

Without ``nominal`` (the executor of a pipeline has none), there is no gain to compare
with -- ``PTC_GAIN`` is not tested -- and the noise is compared with the read noise the
overscan showed during the PTC exposures (median per-pair overscan noise x gain), the
independent measure DMTN-101 16.2 asks for.

Per amp: ``PTC_GAIN``, ``PTC_GAIN_ERR``, ``AMP_GAIN``, ``PTC_NOISE``, ``PTC_NOISE_ERR``,
``AMP_NOISE``, ``PTC_TURNOFF`` (adu), ``PTC_TURNOFF_E`` (x gain), ``PTC_BFE_A00``,
``PTC_N_PAIRS``, ``NOISE_SIGNAL_INDEPENDENCE``, ``OVERSCAN_NOISE`` (e-).

Tests: ``PTC_GAIN`` (100 |g - g_nom| / g_nom < 5, or |g - g_nom| < 3 x the fit's
``gain_err``: a difference the fit cannot resolve is not a failure), ``PTC_NOISE`` (the
same for the noise: on small images the PTC's read-noise intercept is uncertain by tens
of percent, see docs/verification.md),
``PTC_TURNOFF`` (turnoff x gain > 90000 e-), ``PTC_BFE_A00`` (a00 strictly inside the
vendor's range; only when the fit type is EXPAPPROXIMATION / FULLCOVARIANCE or not
recorded) and ``NOISE_SIGNAL_INDEPENDENCE`` (< 1.25, when per-pair overscan noises
are stored).  The vendor is the prefix of ``DET_SER`` (else the camera model's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage
from cpframe.verify.stats import header_value, overscan_correction_variance, truncated_std_factor

__all__ = [
    "MISSING_NOMINAL_PTC_MESSAGE",
    "PTC",
    "UNKNOWN_VENDOR_MESSAGE",
    "check_ptc",
    "measure_ptc",
    "noise_signal_independence",
    "nominal_from_truth",
    "read_ptc_table",
]

#: Messages tests check.
MISSING_NOMINAL_PTC_MESSAGE = "nominal gain and noise missing"
UNKNOWN_VENDOR_MESSAGE = "unknown sensor vendor"

_A00_FIT_TYPES = ("EXPAPPROXIMATION", "FULLCOVARIANCE")


def read_ptc_table(path: str | Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """Rows of the ``PTC`` table keyed by amp name, and the primary header (``cpframe.science.imageio.read_ptc``).

    Raises
    ------
    UserInputError
        Missing file or not a ``fits-ptc`` file.
    """
    from cpframe.science.imageio import read_ptc

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"PTC file {p} does not exist; check the ptc dataset given to verification.")
    rows, header = read_ptc(p)
    return {str(a).strip(): dict(r, amp=str(a).strip()) for a, r in rows.items()}, header


def nominal_from_truth(truth: Any, detector_id: int) -> dict[str, dict[str, float]]:
    """Nominal per-amp gain and read noise of a *simulated* detector: the simulator's truth.

    ``truth`` is a ``cpframe.camera.simulate.Truth`` or the ``truth/`` directory the simulator
    saved.  For a simulated camera these stand in for the vendor / curated values a real
    camera's verification compares its PTC with (docs/verification.md).
    """
    from cpframe.camera.simulate import Truth

    t = truth if isinstance(truth, Truth) else Truth.load(truth)
    amps = t.detectors[int(detector_id)].amps
    return {a: {"gain": float(v.gain), "noise": float(v.read_noise)} for a, v in amps.items()}


def noise_signal_independence(noises: np.ndarray) -> float:
    """Spec §4.5 statistic over the per-pair overscan noises: sum((x - mean)^2) / std(x) / n.

    >>> round(noise_signal_independence(np.array([1.0, 2.0, 3.0])), 6)
    0.816497
    """
    x = np.asarray(noises, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan
    sd = float(np.std(x))
    if sd == 0:
        return 0.0
    return float(np.sum((x - x.mean()) ** 2) / sd / x.size)


def _scalar(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def measure_ptc(
    path: str | Path, detector: Detector, config: VerifyConfig,
    nominal: Mapping[str, Mapping[str, float]] | None = None,
) -> dict:
    """Statistics of the PTC stage (module docstring)."""
    rows, header = read_ptc_table(path)
    missing_amps = [a for a in detector.amp_names if a not in rows]
    if missing_amps:
        raise UserInputError(f"{path}: the PTC table has no row for amp(s) {', '.join(missing_amps)} of {detector.name}.")
    given = nominal is not None
    nominal = nominal or {}
    lacking = [a for a in detector.amp_names
               if not all(math.isfinite(float(nominal.get(a, {}).get(k, math.nan))) for k in ("gain", "noise"))]
    if given and lacking:
        raise UserInputError(
            f"{detector.name}: {MISSING_NOMINAL_PTC_MESSAGE} for amp(s) {', '.join(lacking)}. Pass "
            "nominal={amp: {'gain': e-/adu, 'noise': e-}} from the camera's curated values."
        )
    serial = header_value(header, "DET_SER") or detector.serial
    vendor = str(serial).split("-")[0].upper() if serial else str(detector.vendor).upper()
    fit_type = str(header_value(header, "PTC_FIT_TYPE", header_value(header, "PTCFIT", "")) or "").upper()
    amps: dict[str, dict] = {}
    for a in detector.amp_names:
        r = rows[a]
        gain = _scalar(r, "gain")
        turnoff = _scalar(r, "turnoff")
        os_noise = np.asarray(r.get("overscan_noise", []), dtype=float)
        os_noise = os_noise[np.isfinite(os_noise)]
        overscan_rn = float(np.median(os_noise)) * gain if os_noise.size else math.nan
        # Without a curated nominal, the PTC noise is compared with the noise the ISR leaves:
        # the overscan's clipped stdev reads low by the truncation factor, and subtracting
        # per-row / per-column overscan medians adds variance (docs/verification.md).
        # A PTC that divided that variance out of its intercept (column ``overscan_var_factor``,
        # issue 16) is compared with the overscan read noise alone.
        k_os = 0.0 if "overscan_var_factor" in r else overscan_correction_variance(
            detector.amp(a), config.overscan_skip_cols)
        expected_rn = overscan_rn / truncated_std_factor(config.overscan_clip_n_sigma) * math.sqrt(1.0 + k_os)
        s = {
            "PTC_GAIN": gain,
            "PTC_GAIN_ERR": _scalar(r, "gain_err"),
            "AMP_GAIN": float(nominal[a]["gain"]) if given else math.nan,
            "PTC_NOISE": _scalar(r, "noise"),
            "PTC_NOISE_ERR": _scalar(r, "noise_err"),
            "AMP_NOISE": float(nominal[a]["noise"]) if given else expected_rn,
            "OVERSCAN_NOISE": overscan_rn,
            "PTC_TURNOFF": turnoff,
            "PTC_TURNOFF_E": turnoff * gain,
            "PTC_BFE_A00": _scalar(r, "a00"),
            "PTC_N_PAIRS": int(_scalar(r, "n_pairs")) if math.isfinite(_scalar(r, "n_pairs")) else -1,
        }
        if "overscan_noise" in r:
            s["NOISE_SIGNAL_INDEPENDENCE"] = noise_signal_independence(np.atleast_1d(r["overscan_noise"]))
        amps[a] = s
    meta = {"VENDOR": vendor, "PTC_FIT_TYPE": fit_type, "HAS_A00": any("a00" in r for r in rows.values()),
            "NOMINAL": "given" if given else "overscan"}
    return {"METADATA": meta, "AMP": amps, "DET": {}, "HEADER": header}


def check_ptc(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the PTC stage (module docstring).

    Raises
    ------
    UserInputError
        The sensor vendor has no a00 range in the settings.
    """
    meta = stats["METADATA"]
    test_a00 = meta.get("HAS_A00") and (meta.get("PTC_FIT_TYPE") in _A00_FIT_TYPES or not meta.get("PTC_FIT_TYPE"))
    if test_a00 and meta["VENDOR"] not in config.ptc_a00_ranges:
        raise UserInputError(
            f"{UNKNOWN_VENDOR_MESSAGE} {meta['VENDOR']!r} (from DET_SER); the a00 test knows "
            f"{', '.join(sorted(config.ptc_a00_ranges))}. Add its range to ptc_a00_ranges."
        )
    out = {}
    for amp, s in stats["AMP"].items():
        dg, dn = abs(s["PTC_GAIN"] - s["AMP_GAIN"]), abs(s["PTC_NOISE"] - s["AMP_NOISE"])
        k = config.ptc_error_n_sigma
        g_err = s["PTC_GAIN_ERR"] if math.isfinite(s["PTC_GAIN_ERR"]) else 0.0
        n_err = s["PTC_NOISE_ERR"] if math.isfinite(s["PTC_NOISE_ERR"]) else 0.0
        tests = {
            "PTC_NOISE": bool(100.0 * dn / s["AMP_NOISE"] < config.ptc_noise_threshold_pct or dn < k * n_err),
            "PTC_TURNOFF": bool(s["PTC_TURNOFF_E"] > config.ptc_turnoff_threshold_e),
        }
        if math.isfinite(s["AMP_GAIN"]):  # no nominal gain: nothing to compare the PTC gain with
            tests = {"PTC_GAIN": bool(100.0 * dg / s["AMP_GAIN"] < config.ptc_gain_threshold_pct
                                      or dg < k * g_err), **tests}
        if test_a00:
            lo, hi = config.ptc_a00_ranges[meta["VENDOR"]]
            tests["PTC_BFE_A00"] = bool(lo < s["PTC_BFE_A00"] < hi)
        nsi = s.get("NOISE_SIGNAL_INDEPENDENCE")
        if nsi is not None and math.isfinite(nsi):
            tests["NOISE_SIGNAL_INDEPENDENCE"] = bool(nsi < config.ptc_noise_independence_threshold)
        out[amp] = tests
    return {"AMP": out, "DET": {}}


PTC = register_stage(Stage(name="PTC", type_name="Ptc", kind="calib", measure=measure_ptc, check=check_ptc))
