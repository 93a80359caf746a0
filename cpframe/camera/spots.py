"""Crosstalk-source exposures: one amp at a time lit past full well, the others dark.

cp_pipe measures crosstalk from pixels of a *source* amp above a threshold (30 000 by
default) and the simultaneous pixels of every *target* amp (spec algorithms.md §10;
``CrosstalkExtractTask``), on saturated stars or flat edges.  Flats light every amp at
once and a small detector holds too few bright stars, so the simulator has an
observation type ``spot`` (``IMGTYPE = spot``; a CCOB-like projector): in exposure
``seq_num`` only amp ``seq_num mod n_amps`` (camera file order) is lit, on a checkerboard
of squares (side :func:`block_size`: a quarter of the amp's short side) at ``flux``
e-/s/pixel (times the flat response); every other pixel is dark.  With ``flux ×
exposure_time`` above the full well the lit squares saturate, giving half an amp of source
pixels per exposure, and every row and column of each target keeps unlit pixels, from
which its background (the per-row serial and per-column parallel overscan residuals) is
measured.  A run of
``n_amps`` consecutive spot exposures lights every amp once.

The crosstalk itself is ``DetectorTruth.crosstalk``: ``C[target, source]`` (adu/adu,
read-out frames, after the full-well clip), added as ``s_t += Σ_s C[t, s] s_s``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lit_amp", "block_size", "spot_field"]


def lit_amp(detector, seq_num: int):
    """The amp a ``spot`` exposure lights: ``detector.amps[seq_num % n_amps]``."""
    return detector.amps[int(seq_num) % len(detector.amps)]


def block_size(amp) -> int:
    """Side (pixels) of the lit squares of a ``spot`` exposure: a quarter of the amp's short side, >= 8."""
    return max(8, min(amp.data_rows, amp.data_cols) // 4)


def spot_field(detector, seq_num: int, rate: float) -> np.ndarray:
    """Rate image (e-/s/pixel, float32, assembled frame) of one ``spot`` exposure.

    >>> from cpframe.camera.models import load_camera
    >>> det = load_camera("LSSTComCam", "mini").detector(4)
    >>> img = spot_field(det, 17, 1000.0)
    >>> a = lit_amp(det, 17)
    >>> round(float((img[a.bbox] > 0).mean()), 2), float(img[a.bbox].max()), float(img.sum()) == float(img[a.bbox].sum())
    (0.5, 1000.0, True)
    """
    img = np.zeros(detector.shape, dtype=np.float32)
    amp = lit_amp(detector, seq_num)
    b = block_size(amp)
    r, c = np.mgrid[0:amp.data_rows, 0:amp.data_cols]
    img[amp.bbox] = np.where(((r // b) + (c // b)) % 2 == 0, np.float32(rate), np.float32(0.0))
    return img
