"""Simulated focal-plane flat gradient: a known radial fall-off and planar gradient in millimetres.

The ``flat_gradient`` effect of :func:`cpframe.camera.truth.make_truth` (strength s, ``True`` =
0.02; 0 = off) multiplies each band's illumination by

    G(x, y) = (1 − c (r / R)²) / (1 + a x + b y)

with (x, y) the focal-plane position in mm (:mod:`cpframe.camera.focal_plane`), r its radius,
R the focal plane's half-diagonal (mm), c = 2 s and (a, b) = s / R × (cos θ, sin θ), θ drawn
per band from its own stream: the model family cp_pipe's ``CpFlatFitGradientsTask`` fits
(a radial function over a plane), so a fit recovers it exactly.  Its parameters per band are
in ``Truth.bands[band]`` (``fp_radial`` = c, ``fp_gradient_x`` = a, ``fp_gradient_y`` = b, 1/mm,
``fp_radius_mm`` = R).  (The ``vignetting`` effect's own illumination is elliptical in mm on
non-square detectors and is not what this effect describes.)
"""

from __future__ import annotations

import math
import zlib

import numpy as np

__all__ = ["TAG_FP_GRADIENT", "draw_band_gradient", "gradient_factor"]

TAG_FP_GRADIENT = 0x6670_6772


def draw_band_gradient(seed: int, band: str, strength: float, radius_mm: float) -> dict[str, float]:
    """The truth parameters of one band (zeros when ``strength`` is 0).

    >>> draw_band_gradient(1, "r", 0.0, 80.0)["fp_gradient_x"]
    0.0
    """
    if not strength:
        return {"fp_radial": 0.0, "fp_gradient_x": 0.0, "fp_gradient_y": 0.0, "fp_radius_mm": float(radius_mm)}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_FP_GRADIENT, zlib.crc32(band.encode())]))
    theta = float(rng.uniform(0.0, 2.0 * math.pi))
    g = float(strength) / float(radius_mm)
    return {"fp_radial": 2.0 * float(strength), "fp_gradient_x": g * math.cos(theta),
            "fp_gradient_y": g * math.sin(theta), "fp_radius_mm": float(radius_mm)}


def gradient_factor(params, xf, yf) -> np.ndarray:
    """G at focal-plane (x, y) mm for one band's parameters (1 when off).

    >>> float(gradient_factor({"fp_radial": 0.04, "fp_gradient_x": 0.0, "fp_gradient_y": 0.0,
    ...                        "fp_radius_mm": 10.0}, 10.0, 0.0))
    0.96
    """
    c = float(params.get("fp_radial", 0.0))
    a, b = float(params.get("fp_gradient_x", 0.0)), float(params.get("fp_gradient_y", 0.0))
    rr = float(params.get("fp_radius_mm", 1.0))
    xf, yf = np.asarray(xf, dtype=np.float64), np.asarray(yf, dtype=np.float64)
    return (1.0 - c * (xf * xf + yf * yf) / (rr * rr)) / (1.0 + a * xf + b * yf)
