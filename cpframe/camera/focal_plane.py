"""Focal-plane coordinates (mm) of detector pixels, on the simulator's detector grid.

cpframe's camera models place each science detector on a grid (``R<ry><rx>_S<sy><sx>`` names,
:func:`grid_position`: the focal-plane centre at (0, 0), detector centres one detector apart; the
simulator's illumination uses the same grid).  A detector is ``full-size columns x pixel size`` wide in mm whatever the
scale, so a mini camera (500 x 512 pixels per detector) covers the same focal plane as the
full one with bigger pixels.  The flat gradient fit (cp_pipe ``CpFlatFitGradientsTask``) works
in these millimetres.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from cpframe.camera.models import Camera, Detector, _camera_yaml, load_camera

__all__ = ["detector_size_mm", "grid_position", "pixel_to_focal_plane"]


def grid_position(camera: Camera, det: Detector) -> tuple[float, float]:
    """(row, col) of a detector in units of detectors, focal-plane centre at (0, 0).

    >>> from cpframe.camera.models import load_camera
    >>> cam = load_camera("LSSTComCam", "mini")
    >>> grid_position(cam, cam.detector(0)), grid_position(cam, cam.detector(4))
    ((-1.0, -1.0), (0.0, 0.0))
    """
    m = re.fullmatch(r"R(\d)(\d)_S(\d)(\d)", det.name)
    if not m or len(camera.detectors) == 1:
        return 0.0, 0.0
    ry, rx, sy, sx = (int(g) for g in m.groups())
    return float(3 * ry + sy - 7), float(3 * rx + sx - 7)


@functools.lru_cache(maxsize=64)
def _size_mm(instrument: str, detector_id: int) -> tuple[float, float]:
    cam = load_camera(instrument, "full")
    det = cam.detector(detector_id)
    st = _camera_yaml(instrument)["sensor_types"][det.sensor_type]
    pix_mm = float((st.get("simulation") or {}).get("pixel_size_um", 10.0)) / 1000.0
    rows, cols = det.shape
    return cols * pix_mm, rows * pix_mm


def detector_size_mm(camera: Camera, det: Detector) -> tuple[float, float]:
    """(width, height) of a detector in mm (its full-size pixels x pixel size)."""
    return _size_mm(camera.name, det.id)


def pixel_to_focal_plane(camera: Camera, det: Detector, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Focal-plane (x, y) in mm of pixel centres ``x`` (column) and ``y`` (row) of ``det`` (assembled frame).

    >>> from cpframe.camera.models import load_camera
    >>> cam = load_camera("LSSTComCam", "mini")
    >>> [round(float(v), 3) for v in pixel_to_focal_plane(cam, cam.detector(4), 255.5, 249.5)]
    [0.0, 0.0]
    """
    gy, gx = grid_position(camera, det)
    w, h = detector_size_mm(camera, det)
    rows, cols = det.shape
    xf = (gx + (np.asarray(x, dtype=np.float64) + 0.5) / cols - 0.5) * w
    yf = (gy + (np.asarray(y, dtype=np.float64) + 0.5) / rows - 0.5) * h
    return xf, yf
