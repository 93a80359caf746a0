"""Simulated fringes: interference of night-sky emission lines in thin red-sensitive silicon.

In the red bands (i, z, y) the OH emission lines of the night sky interfere inside the detector's
silicon and leave a fixed fringe pattern, additive, whose strength follows the line emission
rather than the continuum.  cp_pipe's ``cpFringe`` (``CpFringeTask`` + ``CalibCombineByFilterTask``)
builds the pattern per detector x filter; ip_isr's ``doFringe`` (``FringeTask``) fits its amplitude
in each science image and subtracts it.

Model (effect ``fringe``, strength ``f`` = the fringe rms relative to the sky; ``True`` = 0.02),
science exposures in :data:`FRINGE_BANDS` only:

``fringe(x, y) = f · L · a_e · F_{d,b}(x, y)``

* ``L`` the exposure's sky rate (``ExposureSpec.flux``), ``a_e`` ~ U(0.7, 1.3) per exposure (the line
  emission changes apart from the continuum; drawn from ``(seed, day_obs, seq_num)``);
* ``F_{d,b}`` three plane waves (wavelengths 1/12 to 1/6 of the detector width, random directions
  and phases, per detector and band from their own ``SeedSequence`` stream), zero mean, unit rms.

Truth: :func:`fringe_pattern` (shape) and :func:`fringe_scale` (``a_e``); the combined fringe frame
must be ``f · mean(a_e) · F`` and ISR must leave a fringe amplitude below the tolerance of docs/fringe.md.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FRINGE_BANDS", "TAG_FRINGE", "add_fringes", "fringe_pattern", "fringe_scale"]

#: SeedSequence tag of the fringe draws (arbitrary constant).
TAG_FRINGE = 0x6672_6E67
#: Bands with fringes.
FRINGE_BANDS = ("i", "z", "y")


def fringe_pattern(seed: int, detector_id: int, band: str, shape: tuple[int, int]) -> np.ndarray:
    """``F(y, x)`` (float64): zero mean, unit rms."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_FRINGE, int(detector_id),
                                                        FRINGE_BANDS.index(band) if band in FRINGE_BANDS else 9]))
    y = np.arange(shape[0])[:, None] + 0.5
    x = np.arange(shape[1])[None, :] + 0.5
    f = np.zeros(shape)
    for _ in range(3):
        lam = shape[1] / rng.uniform(6.0, 12.0)
        ang, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        f += np.cos(2 * math.pi * (x * math.cos(ang) + y * math.sin(ang)) / lam + phase)
    f -= f.mean()
    return f / f.std()


def fringe_scale(seed: int, day_obs: int, seq_num: int) -> float:
    """``a_e`` of one exposure (the same for every detector)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_FRINGE, 1, int(day_obs), int(seq_num)]))
    return float(rng.uniform(0.7, 1.3))


def add_fringes(extra: np.ndarray | None, det, spec, band: str, seed: int, strength: float) -> np.ndarray | None:
    """``extra`` (e-/s per pixel added to the sky, or None) plus this exposure's fringes."""
    if not strength or spec.observation_type != "science" or band not in FRINGE_BANDS or spec.flux <= 0:
        return extra
    f = (strength * spec.flux * fringe_scale(seed, spec.day_obs, spec.seq_num)
         * fringe_pattern(seed, det.id, band, det.shape)).astype(np.float32)
    return f if extra is None else extra + f
