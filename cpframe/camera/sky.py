"""Simulated night-sky structure a sky frame removes: a static per-detector pattern in the sky.

The night sky seen through the telescope is not flat after flat-fielding: scattered light,
ghosts of the pupil and detector-level structure leave the same fractional pattern in every
science exposure of a detector.  cp_pipe's ``cpSky`` measures it (``CpSkyImageTask`` ...
``CpSkyCombineTask``) after removing each exposure's focal-plane-scale background, and
pipe_tasks' sky correction subtracts it, scaled, from science images.

Model (effect ``sky_frame``, strength ``A`` = the pattern's rms, relative to the sky; ``True`` = 0.02),
science exposures only:

``sky(x, y) = L · (1 + l_e) · (1 + g_e(x_fp, y_fp)) · (1 + A · s_d(x, y))``

* ``L`` the exposure's sky rate (``ExposureSpec.flux``), ``l_e`` ~ U(−0.2, 0.2) a per-exposure level
  change and ``g_e`` a planar focal-plane gradient (up to :data:`GRADIENT` per 100 mm, random direction),
  both drawn from ``(seed, day_obs, seq_num)``: what the per-exposure focal-plane background removes;
* ``s_d`` a smooth pattern of unit rms and **zero mean over each detector** (a Gaussian glow plus a
  long-wavelength ripple, drawn per detector from its own ``SeedSequence`` stream): the sky frame.

:func:`extra_sky` returns the part added to the uniform sky ``L`` (e-/s per pixel, before the
response); the simulator multiplies it by the response as it does the sky.  Truth:
:func:`sky_frame_truth` ``= A · s_d`` is what a sky frame (residual / exposure scale, averaged)
must recover (docs/sky.md states the tolerance).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["GRADIENT", "LEVEL", "TAG_SKY", "exposure_sky", "extra_sky", "sky_frame_truth", "sky_pattern"]

#: SeedSequence tag of the sky draws (arbitrary constant).
TAG_SKY = 0x736B_7946
#: Largest per-exposure focal-plane gradient, relative change per 100 mm.
GRADIENT = 0.05
#: Largest per-exposure relative change of the sky level.
LEVEL = 0.2


def sky_pattern(seed: int, detector_id: int, shape: tuple[int, int]) -> np.ndarray:
    """``s_d(y, x)`` (float64): unit rms, zero mean over the detector."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_SKY, int(detector_id)]))
    yc, xc, w, kx, ky, phase, mix = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.35), \
        rng.uniform(-1.2, 1.2), rng.uniform(-1.2, 1.2), rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.7)
    yn = (np.arange(shape[0]) + 0.5)[:, None] / shape[0]
    xn = (np.arange(shape[1]) + 0.5)[None, :] / shape[1]
    glow = np.exp(-0.5 * ((xn - xc) ** 2 + (yn - yc) ** 2) / w**2)
    ripple = np.cos(2 * math.pi * (kx * xn + ky * yn) + phase)
    s = mix * glow / glow.std() + (1 - mix) * ripple / max(ripple.std(), 1e-12)
    s -= s.mean()
    return s / s.std()


def sky_frame_truth(seed: int, detector_id: int, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """The sky frame a solve must recover: ``A · s_d`` (relative to the exposure's sky level)."""
    return amplitude * sky_pattern(seed, detector_id, shape)


def exposure_sky(seed: int, day_obs: int, seq_num: int) -> tuple[float, float, float]:
    """(l_e, gx, gy) of one exposure: level change and gradient per mm along x and y."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_SKY, 1, int(day_obs), int(seq_num)]))
    lev, g, ang = rng.uniform(-LEVEL, LEVEL), rng.uniform(0, GRADIENT) / 100.0, rng.uniform(0, 2 * math.pi)
    return float(lev), float(g * math.cos(ang)), float(g * math.sin(ang))


def extra_sky(camera, det, spec, seed: int, amplitude: float) -> np.ndarray | None:
    """e-/s per pixel added to the uniform sky ``spec.flux`` of a science exposure (None: nothing)."""
    if not amplitude or spec.observation_type != "science" or spec.flux <= 0:
        return None
    from cpframe.camera.focal_plane import pixel_to_focal_plane

    rows, cols = det.shape
    xf, yf = pixel_to_focal_plane(camera, det, np.arange(cols)[None, :], np.arange(rows)[:, None])
    lev, gx, gy = exposure_sky(seed, spec.day_obs, spec.seq_num)
    total = (1 + lev) * (1 + gx * xf + gy * yf) * (1 + amplitude * sky_pattern(seed, det.id, det.shape))
    return (spec.flux * (total - 1.0)).astype(np.float32)
