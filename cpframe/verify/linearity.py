"""Linearizer verification (stage ``LINEARITY``, spec verification.md §4.7; DMTN-101 §7).

Runs on the ``linearizer`` product of one detector (cpframe linearizer JSON,
:mod:`cpframe.science.linearity`).  Per amp it reports ``LINEARITY_TYPE``,
``LINEARITY_COEFFS``, ``LINEARITY_TURNOFF`` (adu), ``MAX_CORRECTION_PCT`` (largest
|correction / signal| in percent over the fitted range), ``MAX_FIT_RESIDUAL`` and
``FIT_RESIDUAL_SIGMA_MAD`` (the corrected ramp about a line, relative) and ``N_POINTS``.

Tests (cp_verify ``CpVerifyLinearityTask.verify``):

* ``MAX_RESIDUAL_ERROR``: Spline: max |value / node| × 100 ≤
  ``linearity_max_residual_spline_pct`` (1 %; node 0 is 0/0 and skipped); Squared:
  |c_quadratic| ≤ ``linearity_expected_quadratic_coeff`` (1e-6); Polynomial: |c_quadratic|
  ≤ 1e-6 and |c_k| ≤ |c_quadratic| · ε^k with ε = √1e-6; ``None`` fails.  cpframe's
  coefficients start at the quadratic term (ip_isr's convention); cp_verify indexes
  ``coeffs[2]``, which for ip_isr's arrays is the quartic term (docs/verification.md).
* ``FIT_RESIDUAL`` (cpframe): the file's correction is applied to the ramp's means it
  stores; the largest |corrected mean / linear fit in time − 1| over the points used, above
  1 % of the turnoff, is ≤ ``linearity_max_fit_residual`` (0.1 %, the issue's
  residual non-linearity target).  Amps without a correction (NaN coefficients) fail both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["LINEARITY", "measure_linearity", "check_linearity", "max_residual_error"]


def max_residual_error(kind: str, coeffs, config: VerifyConfig) -> tuple[bool, float]:
    """(pass, measured value) of cp_verify's MAX_RESIDUAL_ERROR for one amp.

    >>> max_residual_error("Squared", [2e-7], VerifyConfig())
    (True, 2e-07)
    >>> max_residual_error("Spline", [0, 100, 200, 0, 0.5, 3.0], VerifyConfig())
    (False, 1.5)
    """
    c = np.asarray(coeffs, dtype=float)
    if kind == "None" or c.size == 0 or not np.all(np.isfinite(c)):
        return False, math.nan
    if kind == "Spline":
        nodes, values = np.split(c, 2)
        use = nodes != 0
        err = float(np.max(np.abs(values[use] / nodes[use])) * 100) if use.any() else math.nan
        return bool(err <= config.linearity_max_residual_spline_pct), err
    q = config.linearity_expected_quadratic_coeff
    quad = abs(float(c[0]))
    if kind == "Squared":
        return bool(quad <= q), quad
    eps = math.sqrt(q)
    thresholds = [q] + [quad * eps ** k for k in range(1, c.size)]
    return bool(np.all(np.abs(c) <= np.asarray(thresholds))), quad


def measure_linearity(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the LINEARITY stage (module docstring)."""
    from cpframe.science.linearity import apply_linearity, read_linearizer

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"linearizer file {p} does not exist; check the linearizer dataset given to "
                             "verification.")
    lin = read_linearizer(p)
    missing = [a for a in detector.amp_names if a not in lin.amps]
    if missing:
        raise UserInputError(f"{p}: the linearizer has no amp(s) {', '.join(missing)} of {detector.name}.")
    amps = {}
    for a in detector.amp_names:
        rec = lin.amps[a]
        mu = np.asarray(rec.ordinate, dtype=float)
        t = np.asarray(rec.abscissa, dtype=float)
        mask = np.asarray(rec.mask, dtype=bool) if rec.mask else np.zeros(mu.size, bool)
        turnoff = float(rec.turnoff)
        use = mask & np.isfinite(mu) & np.isfinite(t) & (mu > 0)
        if math.isfinite(turnoff):
            use &= mu > 0.01 * turnoff
        max_corr = max_res = math.nan
        if use.sum() >= 3:
            # the file's correction applied to the ramp's means, then compared with a line in time
            corrected = mu[use].copy()
            apply_linearity(corrected, rec)
            if np.all(np.isfinite(corrected)):
                max_corr = float(np.max(np.abs(corrected / mu[use] - 1.0)) * 100)
                slope, icpt = np.polyfit(t[use], corrected, 1, w=1.0 / np.sqrt(corrected))
                max_res = float(np.max(np.abs(corrected / (slope * t[use] + icpt) - 1.0)))
        amps[a] = {
            "LINEARITY_TYPE": rec.type,
            "LINEARITY_COEFFS": [float(x) for x in rec.coeffs],
            "LINEARITY_TURNOFF": turnoff,
            "MAX_CORRECTION_PCT": max_corr,
            "MAX_FIT_RESIDUAL": max_res,
            "FIT_RESIDUAL_SIGMA_MAD": float(rec.residual_sigma_mad),
            "N_POINTS": int(use.sum()),
        }
    meta = {k: lin.meta[k] for k in ("LINEARITY_TYPE", "NPAIRS") if k in lin.meta}
    header = dict(lin.meta)
    return {"METADATA": meta, "AMP": amps, "DET": {}, "HEADER": header}


def check_linearity(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the LINEARITY stage (module docstring)."""
    out = {}
    for amp, s in stats["AMP"].items():
        ok, _ = max_residual_error(s["LINEARITY_TYPE"], s["LINEARITY_COEFFS"], config)
        fr = s["MAX_FIT_RESIDUAL"]
        out[amp] = {"MAX_RESIDUAL_ERROR": ok,
                    "FIT_RESIDUAL": bool(math.isfinite(fr) and fr <= config.linearity_max_fit_residual)}
    return {"AMP": out, "DET": {}}


LINEARITY = register_stage(Stage(name="LINEARITY", type_name="Linearity", kind="calib", measure=measure_linearity,
                                 check=check_linearity, calib_type="linearizer"))
