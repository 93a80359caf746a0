"""Flat-gradient verification (stage ``FLAT_GRADIENT``; cp_verify has no such task: cpframe's check).

Runs on the ``flat_gradient_reference`` product (no ISR), one row set per detector the selection covers: per
amp ``MODEL`` (the fitted large-scale shape S(r) / plane at the amp's centre, relative to the focal-plane
centre); per detector ``RESIDUAL_RMS`` (rms of the binned flat about the model over the whole fit),
``GRADIENT_PCT`` (the planar gradient's change across the fitted radius, %) and ``N_BINS``.  Tests:
``MODEL_RANGE`` (amp): the model is finite and within the fit's own value range [0.05, 1.5];
``FIT_RESIDUAL`` (detector): ``RESIDUAL_RMS`` ≤ ``flat_gradient_max_residual`` (1 %: the radial spline and
plane describe the flat's large-scale shape); ``GRADIENT`` (detector): ``GRADIENT_PCT`` ≤
``flat_gradient_max_gradient_pct`` (10 %: more is a lamp or screen problem, not a dome gradient).
"""

from __future__ import annotations

import math
from pathlib import Path

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["FLAT_GRADIENT", "measure_flat_gradient", "check_flat_gradient"]


def measure_flat_gradient(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the FLAT_GRADIENT stage (module docstring)."""
    from cpframe.camera.focal_plane import pixel_to_focal_plane
    from cpframe.camera.models import load_camera
    from cpframe.science.flat_gradient import read_flat_gradient

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"flat_gradient_reference file {p} does not exist; check the flat_gradient_reference "
                             "dataset given to verification.")
    g = read_flat_gradient(p)
    m = g.meta
    camera = load_camera(str(m.get("INSTRUME", "LSSTComCam")), str(m.get("CAMSCALE", "full")).lower())
    amps = {}
    for a in detector.amps:
        ys, xs = a.bbox
        xf, yf = pixel_to_focal_plane(camera, detector, 0.5 * (xs.start + xs.stop - 1), 0.5 * (ys.start + ys.stop - 1))
        amps[a.name] = {"MODEL": float(g.full_model(xf, yf))}
    radius = float(m.get("data_radius_mm") or 0.0)
    det = {"RESIDUAL_RMS": float(m.get("residual_rms", math.nan)), "N_BINS": int(m.get("n_bins", 0)),
           "GRADIENT_PCT": 100.0 * math.hypot(g.gradient_x, g.gradient_y) * radius}
    return {"METADATA": {"FILTER": m.get("FILTER")}, "AMP": amps, "DET": det, "HEADER": dict(m)}


def check_flat_gradient(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the FLAT_GRADIENT stage (module docstring)."""
    amps = {a: {"MODEL_RANGE": bool(math.isfinite(s["MODEL"]) and 0.05 <= s["MODEL"] <= 1.5)}
            for a, s in stats["AMP"].items()}
    d = stats["DET"]
    det = {"FIT_RESIDUAL": bool(d["RESIDUAL_RMS"] <= config.flat_gradient_max_residual),
           "GRADIENT": bool(d["GRADIENT_PCT"] <= config.flat_gradient_max_gradient_pct)}
    return {"AMP": amps, "DET": det}


FLAT_GRADIENT = register_stage(Stage(name="FLAT_GRADIENT", type_name="FlatGradientReference", kind="calib",
                                     measure=measure_flat_gradient, check=check_flat_gradient,
                                     calib_type="flat_gradient_reference"))
