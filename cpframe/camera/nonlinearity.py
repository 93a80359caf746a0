"""Simulated amplifier non-linearity: the per-amp response curves the simulator injects.

Each amplifier converts the true signal ``s`` (adu, after the gain) into the measured
signal::

    m = s * (1 + k2 * s + k3 * s**2)

with ``k2`` (1/adu) and ``k3`` (1/adu²) drawn per amp around the nominal strength ``k``
of the ``nonlinearity`` effect (``cpframe.camera.simulate.EFFECTS``):

* ``k2 = k * U(0.6, 1.4)`` -- the quadratic term (negative: the response compresses);
* ``k3 = k * U(0, 0.3) / s_fw`` with ``s_fw`` the sensor type's largest full well in adu
  (largest full well / smallest gain of the camera YAML) -- a cubic term that adds up to
  30 % to the deviation at full well, so that a pure quadratic
  correction (cp_pipe ``Squared``) is not enough and ``Polynomial``/``Spline`` are needed.

With the default ``k = -1e-7`` the deviation at 90 % of full well is 0.3-1 %.  The draws
use their own ``SeedSequence`` stream ``(seed, TAG, detector)``, so switching the effect on
leaves every other draw of the truth unchanged.

:func:`linearity_residual` is the truth test a linearizer must pass: it applies a
correction to ``m(s)`` on a grid of true signals and reports the largest relative
departure from proportionality.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["TAG_NONLINEARITY", "draw_amp_nonlinearity", "measured_signal", "true_signal", "apply_nonlinearity",
           "linearity_residual"]

#: SeedSequence tag of the non-linearity draws (arbitrary constant).
TAG_NONLINEARITY = 0x6E6F_6E6C

_K2_RANGE = (0.6, 1.4)
_K3_RANGE = (0.0, 0.3)


def draw_amp_nonlinearity(seed: int, detector_id: int, full_well_adu: Sequence[float],
                          strength: float) -> list[tuple[float, float]]:
    """(k2, k3) per amp, in amp order, for nominal strength ``strength`` (1/adu); zeros when 0.

    >>> draw_amp_nonlinearity(1, 4, [60000.0, 60000.0], 0.0)
    [(0.0, 0.0), (0.0, 0.0)]
    """
    if not strength:
        return [(0.0, 0.0) for _ in full_well_adu]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_NONLINEARITY, int(detector_id)]))
    out = []
    for fw in full_well_adu:
        k2 = strength * float(rng.uniform(*_K2_RANGE))
        c3 = float(rng.uniform(*_K3_RANGE))
        k3 = strength * c3 / fw if np.isfinite(fw) and fw > 0 else 0.0
        out.append((k2, k3))
    return out


def measured_signal(s, k2: float, k3: float):
    """m = s (1 + k2 s + k3 s²) (float64 for arrays).

    >>> float(measured_signal(10000.0, -1e-7, 0.0))
    9990.0
    """
    s = np.asarray(s, dtype=np.float64)
    return s * (1.0 + k2 * s + k3 * s * s)


def true_signal(m, k2: float, k3: float, iterations: int = 30):
    """Inverse of :func:`measured_signal` (fixed-point iteration; exact to float64 for |k s| < 0.1)."""
    m = np.asarray(m, dtype=np.float64)
    s = m.copy()
    for _ in range(iterations):
        s = m / (1.0 + k2 * s + k3 * s * s)
    return s


def apply_nonlinearity(e: np.ndarray, k2: float, k3: float) -> None:
    """Apply the response curve in place to a float32 signal array (adu)."""
    if not (k2 or k3):
        return
    factor = np.float32(k2) * e
    if k3:
        factor += np.float32(k3) * e * e
    factor += np.float32(1.0)
    e *= factor


def linearity_residual(correct: Callable[[np.ndarray], np.ndarray], k2: float, k3: float,
                       full_well_adu: float, lo: float = 0.01, hi: float = 0.90,
                       n: int = 400) -> float:
    """Largest |c(m(s)) / (a s) − 1| over true signals ``s`` in [lo, hi] × full well.

    ``correct`` maps measured adu to corrected adu (a linearizer); ``a`` is the scale that
    minimises the largest departure, the mid-range of c(m(s))/s (a linearizer is defined up
    to a gain factor, which the PTC then measures).  0 for a perfect correction.

    >>> round(linearity_residual(lambda m: m, -1e-7, 0.0, 60000.0), 5)  # no correction
    0.00268
    """
    s = np.linspace(lo * full_well_adu, hi * full_well_adu, n)
    c = np.asarray(correct(measured_signal(s, k2, k3)), dtype=np.float64)
    ratio = c / s
    a = 0.5 * (float(ratio.max()) + float(ratio.min()))
    return float(np.max(np.abs(ratio / a - 1.0)))
