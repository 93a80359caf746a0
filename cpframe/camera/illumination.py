"""Simulated illumination error: the dome flat sees a large-scale pattern the night sky does not.

A dome screen is not lit like the sky: scattered light and the screen's own non-uniformity
add a smooth pattern ``P(x, y)`` to every dome flat that the sky (and the stars in it) never
have.  A flat built from dome flats is then ``response × P`` and divides science images by
``P`` too much: star fluxes and the sky background come out ``1 / P`` too bright or faint.
The illumination correction (cp_pipe ``cpIlluminationCorrection``: FGCM's super-star flat from
repeated photometry of stars) measures exactly that.

Model (effect ``illumination_correction``, strength ``A`` = the pattern's amplitude, relative;
``True`` = 0.04):

* ``P = 1 + A · (c1·xn + c2·yn + c3·xn·yn + c4·(xn² − 1/3) + c5·(yn² − 1/3))`` over each
  detector's assembled image (``xn, yn`` in [−1, 1] at the pixel centres), with the ``c`` drawn
  per detector from U(−1, 1) (own ``SeedSequence`` stream); multiplies the response of
  **flat** exposures only.
* Science exposures get a **fixed** star field per detector (positions on the sky and rates
  from the same stream) seen through a pointing **dither** per exposure (drawn from
  ``(seed, day_obs, seq_num)``, up to :data:`DITHER_FRACTION` of the detector size), so the
  same stars land on different pixels: the repeated photometry an illumination correction is
  solved from.  Without the effect, science stars are drawn anew for every exposure.

Truth: :func:`illumination_correction_truth` is the correction ISR must divide a dome-flat
corrected image by, ``c = (1/P) / exp(mean(log(1/P)))`` (zero mean in magnitudes over the
detector: cp_pipe's ``superStarForceZeroMean``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "DITHER_FRACTION",
    "STAR_DENSITY",
    "TAG_ILLUM",
    "dither",
    "dithered_star_field",
    "dome_pattern",
    "dome_response",
    "illumination_correction_truth",
]

#: SeedSequence tag of the illumination draws (arbitrary constant).
TAG_ILLUM = 0x696C_6C75
#: Largest pointing offset, as a fraction of the detector's rows / columns.
DITHER_FRACTION = 0.15
#: Stars per pixel of the fixed field (isolated enough for 6 px apertures at sigma 1.7 px).
STAR_DENSITY = 2.5e-4
_RATES_LOG10 = (2.7, 3.9)  # e-/s: S/N of a few hundred, far below full well in a 30 s exposure
_PSF_SIGMA = 1.7


def _coeffs(seed: int, detector_id: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_ILLUM, int(detector_id)]))
    return rng.uniform(-1.0, 1.0, 5)


def dome_pattern(seed: int, detector_id: int, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """``P(y, x)`` (float64, ~1) of one detector's dome flats; all ones when ``amplitude`` is 0."""
    if not amplitude:
        return np.ones(shape)
    c = _coeffs(seed, detector_id)
    yn = (np.arange(shape[0]) + 0.5) / shape[0] * 2 - 1
    xn = (np.arange(shape[1]) + 0.5) / shape[1] * 2 - 1
    x, y = xn[None, :], yn[:, None]
    return 1.0 + amplitude * (c[0] * x + c[1] * y + c[2] * x * y + c[3] * (x * x - 1 / 3) + c[4] * (y * y - 1 / 3))


def illumination_correction_truth(seed: int, detector_id: int, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """The correction a solve must recover: ``1/P`` scaled to zero mean magnitude over the detector."""
    inv = 1.0 / dome_pattern(seed, detector_id, shape, amplitude)
    return inv / math.exp(float(np.log(inv).mean()))


def dome_response(resp: np.ndarray, seed: int, detector_id: int, observation_type: str, amplitude: float) -> np.ndarray:
    """``resp`` times the dome pattern for flat exposures (unchanged otherwise, or when the effect is off)."""
    if observation_type != "flat" or not amplitude:
        return resp
    return resp * dome_pattern(seed, detector_id, resp.shape, amplitude).astype(np.float32)


def dither(seed: int, day_obs: int, seq_num: int, shape: tuple[int, int]) -> tuple[float, float]:
    """Pointing offset (dy, dx) in pixels of one exposure (the same for every detector)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_ILLUM, 1, int(day_obs), int(seq_num)]))
    dy, dx = rng.uniform(-DITHER_FRACTION, DITHER_FRACTION, 2)
    return float(dy * shape[0]), float(dx * shape[1])


def dithered_star_field(seed: int, detector_id: int, day_obs: int, seq_num: int,
                        shape: tuple[int, int]) -> np.ndarray:
    """Stars (e-/s per pixel, Gaussian PSF) of the detector's fixed field seen through this exposure's dither."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_ILLUM, 2, int(detector_id)]))
    pad = DITHER_FRACTION
    ext = ((1 + 2 * pad) * shape[0], (1 + 2 * pad) * shape[1])
    n = int(rng.poisson(STAR_DENSITY * ext[0] * ext[1]))
    ys = rng.uniform(-pad * shape[0], (1 + pad) * shape[0], n)
    xs = rng.uniform(-pad * shape[1], (1 + pad) * shape[1], n)
    rates = 10 ** rng.uniform(*_RATES_LOG10, n)
    dy, dx = dither(seed, day_obs, seq_num, shape)
    img = np.zeros(shape, dtype=np.float32)
    half = 8
    norm = 1.0 / (2 * math.pi * _PSF_SIGMA**2)
    for yc, xc, rate in zip(ys - dy, xs - dx, rates):
        y0, x0 = max(0, int(yc) - half), max(0, int(xc) - half)
        y1, x1 = min(shape[0], int(yc) + half + 1), min(shape[1], int(xc) + half + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        gy = np.exp(-0.5 * ((np.arange(y0, y1) + 0.5 - yc) / _PSF_SIGMA) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) + 0.5 - xc) / _PSF_SIGMA) ** 2)
        img[y0:y1, x0:x1] += np.float32(rate * norm) * np.outer(gy, gx).astype(np.float32)
    return img
