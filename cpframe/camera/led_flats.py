"""Simulated single-LED flats (LSSTCam's anaglyph flats): each LED lights the focal plane its own way.

LSSTCam's dome has narrow-band LEDs; an *anaglyph* flat of a band combines the flats of a blue and a
red LED inside it, weighted (cp_pipe ``cpFlatAnaglyph.yaml``: ``weightOne``), so that the mix has the
band's colour.  The ``led_flats`` effect of :func:`cpframe.camera.truth.make_truth` (strength s,
``True`` = 0.02; 0 = off) multiplies the response of a flat whose observation reason is
``single_led_flat_<led>`` by

    L(d, x, y) = (1 + s · t_led · c_d(x, y)) / (1 + a_led x + b_led y)

with (x, y) the focal-plane position in mm, c_d(x, y) ~ N(0, 1) per pixel (the pixels' colour: how
their response changes across the band, zero on average so the focal-plane fits do not see it),
t_led ~ U(−1, 1) per LED (where the LED sits in the band) and (a_led, b_led) = s / R × (cos θ_led,
sin θ_led) a planar gradient per LED (the LED's place on the screen), R the largest focal-plane
radius of a science pixel (mm), each drawn from its own stream of (seed, LED name).  Flats with
any other reason are unchanged.  The gradient correction removes each LED's plane; the weighted
mix w · blue + (1 − w) · red then has the colour 1 + s (w t_blue + (1 − w) t_red) c_d: the truth
an anaglyph flat is checked against (``tests/test_anaglyph.py``).
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np

__all__ = ["LED_PREFIX", "TAG_LED", "pixel_colour", "field_radius_mm", "led_factor", "led_name", "led_params",
           "response_factor"]

TAG_LED = 0x6C65_6473
LED_PREFIX = "single_led_flat_"


def led_name(observation_reason: str | None) -> str | None:
    """The LED of a single-LED flat's observation reason, else None.

    >>> led_name("single_led_flat_m455l4"), led_name("flat")
    ('m455l4', None)
    """
    r = str(observation_reason or "")
    return r[len(LED_PREFIX):] if r.startswith(LED_PREFIX) and len(r) > len(LED_PREFIX) else None


def led_params(seed: int, led: str, strength: float, radius_mm: float) -> dict[str, float]:
    """t_led and the plane (a, b) of one LED (1/mm).

    >>> p = led_params(1, "m455l4", 0.02, 100.0)
    >>> round(math.hypot(p["a"], p["b"]), 6), -1 <= p["t"] <= 1
    (0.0002, True)
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_LED, zlib.crc32(led.encode())]))
    t, theta = float(rng.uniform(-1.0, 1.0)), float(rng.uniform(0.0, 2.0 * math.pi))
    g = float(strength) / float(radius_mm)
    return {"t": t, "a": g * math.cos(theta), "b": g * math.sin(theta)}


def pixel_colour(seed: int, detector_id: int, shape: tuple[int, int]) -> np.ndarray:
    """c_d ~ N(0, 1) per pixel of one detector (its own stream), float64."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), TAG_LED, 0, int(detector_id)]))
    return rng.standard_normal(shape)


def led_factor(seed: int, led: str, detector_id: int, strength: float, radius_mm: float, xf, yf) -> np.ndarray:
    """L at the pixels of one detector (focal-plane ``xf``, ``yf`` mm, its full shape) lit by ``led``."""
    p = led_params(seed, led, strength, radius_mm)
    xf, yf = np.asarray(xf, np.float64), np.asarray(yf, np.float64)
    c = pixel_colour(seed, detector_id, xf.shape)
    return (1.0 + strength * p["t"] * c) / (1.0 + p["a"] * xf + p["b"] * yf)


@functools.lru_cache(maxsize=8)
def _radius(instrument: str, scale: str) -> float:
    from cpframe.camera.focal_plane import pixel_to_focal_plane
    from cpframe.camera.models import load_camera

    cam = load_camera(instrument, scale)
    r = 0.0
    for d in cam.science_detectors:
        xf, yf = pixel_to_focal_plane(cam, d, np.array([0, d.shape[1] - 1] * 2), np.array([0, 0, d.shape[0] - 1,
                                                                                             d.shape[0] - 1]))
        r = max(r, float(np.hypot(xf, yf).max()))
    return r


def field_radius_mm(camera) -> float:
    """R: the largest focal-plane radius of a science pixel of ``camera`` (mm)."""
    return _radius(camera.name, camera.scale)


def response_factor(truth, det, observation_reason: str) -> np.ndarray:
    """L over every pixel of ``det`` for a single-LED flat (1 for any other reason)."""
    from cpframe.camera.focal_plane import pixel_to_focal_plane

    led = led_name(observation_reason)
    if led is None:
        return np.ones(det.shape)
    yy, xx = np.mgrid[0:det.shape[0], 0:det.shape[1]]
    xf, yf = pixel_to_focal_plane(truth.camera, det, xx, yy)
    return led_factor(truth.seed, led, det.id, float(truth.effects["led_flats"]), field_radius_mm(truth.camera), xf, yf)
