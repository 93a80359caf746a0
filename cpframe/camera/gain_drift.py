"""Simulated gain drift after a detector restart (the truth behind a gain correction).

A detector restart leaves each amplifier's gain slightly different from the one the PTC
measured.  From the observing day ``gain_drift_day_obs`` on (an effect of
:func:`cpframe.camera.truth.make_truth`; 0 = from the first exposure) amp ``i`` has the gain
``g_i (1 + δ_i)``: the same charge gives ``1 / (1 + δ_i)`` times the counts.  Before that day
the gain is ``g_i``, which is what a PTC of those exposures measures.

Truth per amp (``AmpTruth.gain_drift`` = δ_i), drawn from its own ``SeedSequence`` stream when
the ``gain_drift`` effect is on (its value is the rms of δ; ``True`` = 0.003): δ ~ N(0, rms),
clipped to ±3 rms.  A gain correction multiplies the PTC gain by ``1 + δ_i`` (up to a common
factor: cp_pipe and cpframe pin the median amp at 1; :func:`expected_adjustments`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TAG_GAIN_DRIFT", "draw_amp_gain_drift", "exposure_gain", "expected_adjustments"]

TAG_GAIN_DRIFT = 0x6764_7266


def draw_amp_gain_drift(seed: int, detector_id: int, n_amps: int, rms: float) -> list[float]:
    """δ per amp (fractional gain change after the restart); zeros when ``rms`` is 0.

    >>> draw_amp_gain_drift(1, 4, 2, 0.0)
    [0.0, 0.0]
    """
    if not rms:
        return [0.0] * n_amps
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_GAIN_DRIFT, int(detector_id)]))
    return [float(v) for v in np.clip(rng.normal(0.0, float(rms), n_amps), -3 * rms, 3 * rms)]


def exposure_gain(gain: float, drift: float, day_obs: int, drift_day_obs: float) -> float:
    """The gain (e-/adu) an amp has in an exposure of ``day_obs``.

    >>> round(exposure_gain(1.5, 0.01, 20240102, 20240102), 6), exposure_gain(1.5, 0.01, 20240101, 20240102)
    (1.515, 1.5)
    """
    if drift and int(day_obs) >= int(drift_day_obs):
        return gain * (1.0 + drift)
    return gain


def expected_adjustments(drifts) -> np.ndarray:
    """The gain adjustments a perfect measurement finds: ``1 + δ``, divided by the median amp's.

    The median amp is cp_pipe's choice (the amp at index n/2 of the sorted values).

    >>> expected_adjustments([0.0, 0.02, -0.01]).round(4).tolist()
    [1.0, 1.02, 0.99]
    """
    a = 1.0 + np.asarray(drifts, dtype=np.float64)
    return a / a[np.argsort(a)[len(a) // 2]]
