"""Flat gradient: the focal-plane radial function and planar gradient of flats (cp_pipe ``CpFlatFitGradientsTask``).

LSSTCam's flats carry the dome screen's illumination: a radial fall-off and a planar gradient
across the focal plane.  cp_pipe fits them once on reference flats (``flat_gradient_reference``,
per physical filter, ``bps_flat_gradient_reference_<band>``) and on each new flat
(``flat_gradient``), and ``CpFlatApplyGradientsTask`` makes the new flat's large-scale shape
that of the reference.

**Bin** (:func:`bin_focal_plane`; cp_pipe ``bin_focal_plane``): every detector's flat, without
``detector_boundary`` pixels at its edges and with defect / ``BAD`` / ``NO_DATA`` pixels left
out, averaged in ``bin_factor`` x ``bin_factor`` blocks at their focal-plane position (mm,
:mod:`cpframe.camera.focal_plane`).

**Fit** (:func:`fit_flat_gradient`): the binned values, divided by their median within
``normalize_center_radius`` of the centroid (``do_normalize_center``) and kept within
``[min_flat_value, max_flat_value]``, are fitted with

    value = S(r) / (1 + a (x - cx) + b (y - cy))

S an Akima spline of the radius r from the centroid (cx + δx, cy + δy; δ fitted with
``do_fit_centroid``) at ``radial_spline_nodes``, (a, b) the planar gradient (``do_fit_gradient``),
by least squares with a soft-L1 loss (cp_pipe minimises the absolute deviation with L-BFGS-B).

*Deliberate differences*: nodes beyond the largest radius with data are dropped (cp_pipe's
defaults reach 350 mm, LSSTCam's edge; a node without data is not determined, and ComCam's
focal plane ends near 90 mm); there is no ITL/E2V throughput ratio (cpframe's cameras have one
sensor type per focal plane), and no second, inner pass that only serves that ratio.

The product is a ``json`` file (:func:`write_flat_gradient`).

**Apply** (:func:`correction_factor`, :func:`flat_gradient_apply_task`; cp_pipe
``CpFlatApplyGradientsTask``): each detector's new flat (``flat_uncorrected``) is multiplied by

    f(x, y) = (1 + a (x - cx) + b (y - cy)) · S_ref(r_ref) / S(r) / normalization_factor

with (a, b, S, centroid, normalisation) of the new flat's ``flat_gradient`` and S_ref the
radial function of the certified ``flat_gradient_reference``: the planar gradient of the new
flat is removed and its radial shape replaced by the reference's.  The variance is multiplied
by f²; pixels where f is not finite or not positive (a radial function at or below 0) become NaN with
``NO_DATA``.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import json_ready, read_json_product, write_json
from cpframe.science.imageio import MASK_BITS, FileFormatError
from cpframe.science.configs.flat_gradient import (  # noqa: F401 (defined there, importable without the science stack)
    FlatGradientConfig,
)

__all__ = [
    "FlatGradientConfig",
    "FlatGradient",
    "bin_focal_plane",
    "fit_flat_gradient",
    "write_flat_gradient",
    "read_flat_gradient",
    "flat_gradient_task",
    "correction_factor",
    "flat_gradient_apply_task",
    "CorrectedFlat",
]

FORMAT = "cpframe-flat-gradient"
VERSION = 1
_BAD_PLANES = ("BAD", "SAT", "NO_DATA", "UNMASKEDNAN", "VIGNETTED")
MSG_NO_DATA = ("flat gradient: no usable binned flat value (of {n} bins) inside the radial nodes up to {rmax} mm "
               "and between min_flat_value and max_flat_value; check the flats and radial_spline_nodes.")
MSG_FEW_NODES = ("flat gradient: {n} radial node(s) inside the data radius {rmax:.1f} mm ({nodes}); give at least "
                 "three radial_spline_nodes (mm) inside the focal plane.")


@dataclass
class FlatGradient:
    """The fitted large-scale model (ip_isr ``FlatGradient``'s parameters)."""

    radial_spline_nodes: list[float]
    radial_spline_values: list[float]
    centroid_x: float = 0.0
    centroid_y: float = 0.0
    centroid_delta_x: float = 0.0
    centroid_delta_y: float = 0.0
    gradient_x: float = 0.0
    """1/mm."""
    gradient_y: float = 0.0
    """1/mm."""
    normalization_factor: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def radial_model(self, x, y) -> np.ndarray:
        """S(r) at focal-plane (x, y) mm (radius clipped to the nodes)."""
        from scipy.interpolate import Akima1DInterpolator

        cx, cy = self.centroid_x + self.centroid_delta_x, self.centroid_y + self.centroid_delta_y
        r = np.hypot(np.asarray(x, float) - cx, np.asarray(y, float) - cy)
        nodes = np.asarray(self.radial_spline_nodes, float)
        return Akima1DInterpolator(nodes, np.asarray(self.radial_spline_values, float))(np.clip(r, nodes[0], nodes[-1]))

    def gradient_model(self, x, y) -> np.ndarray:
        """1 + a (x - cx) + b (y - cy) (pivot at the configured centroid, not the fitted one, as ip_isr)."""
        return 1.0 + self.gradient_x * (np.asarray(x, float) - self.centroid_x) + \
            self.gradient_y * (np.asarray(y, float) - self.centroid_y)

    def full_model(self, x, y) -> np.ndarray:
        """S(r) / gradient: the normalised flat's large-scale shape."""
        return self.radial_model(x, y) / self.gradient_model(x, y)


def bin_focal_plane(flats: Mapping[int, tuple[np.ndarray, np.ndarray | None, Any, Any]],
                    cfg: FlatGradientConfig) -> dict[str, np.ndarray]:
    """Binned flat values at their focal-plane positions.

    ``flats``: detector id -> (image, mask or None, camera, detector).  Returns arrays ``xf``,
    ``yf`` (mm), ``value`` and ``detector``.
    """
    from cpframe.camera.focal_plane import pixel_to_focal_plane

    bad_bits = sum(1 << MASK_BITS[p] for p in _BAD_PLANES)
    out: dict[str, list] = {"xf": [], "yf": [], "value": [], "detector": []}
    b, edge = cfg.bin_factor, cfg.detector_boundary
    for det_id in sorted(flats):
        image, mask, camera, det = flats[det_id]
        img = np.array(image, dtype=np.float64)
        if mask is not None:
            img[(np.asarray(mask) & bad_bits) != 0] = np.nan
        ny, nx = (img.shape[0] - 2 * edge) // b, (img.shape[1] - 2 * edge) // b
        if ny <= 0 or nx <= 0:
            raise UserInputError(f"flat gradient: detector {det_id} ({img.shape[1]} x {img.shape[0]} pixels) has no "
                                 f"whole {b} x {b} bin inside {edge} pixels of its edges; lower bin_factor.")
        blk = img[edge:edge + ny * b, edge:edge + nx * b].reshape(ny, b, nx, b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
            val = np.nanmean(np.nanmean(blk, axis=3), axis=1)
        yy, xx = np.meshgrid(edge + b * np.arange(ny) + 0.5 * b - 0.5, edge + b * np.arange(nx) + 0.5 * b - 0.5,
                             indexing="ij")
        xf, yf = pixel_to_focal_plane(camera, det, xx.ravel(), yy.ravel())
        out["xf"].append(xf)
        out["yf"].append(yf)
        out["value"].append(val.ravel())
        out["detector"].append(np.full(val.size, det_id))
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_flat_gradient(binned: Mapping[str, np.ndarray], config: FlatGradientConfig | Mapping[str, Any] | None = None,
                      meta: Mapping[str, Any] | None = None) -> FlatGradient:
    """Fit the radial spline (and gradient, centroid offset) to binned focal-plane flat values (module docstring).

    Raises
    ------
    UserInputError
        No usable bins, or fewer than three nodes inside the data radius.
    """
    from scipy.interpolate import Akima1DInterpolator
    from scipy.optimize import least_squares

    cfg = config if isinstance(config, FlatGradientConfig) else FlatGradientConfig.from_dict(config)
    xf, yf, value = (np.asarray(binned[k], float) for k in ("xf", "yf", "value"))
    cx, cy = cfg.fp_centroid_x, cfg.fp_centroid_y
    r = np.hypot(xf - cx, yf - cy)
    center = np.isfinite(value) & (r < cfg.normalize_center_radius)
    central = float(np.median(value[center])) if center.any() else math.nan
    norm = central if cfg.do_normalize_center and math.isfinite(central) and central > 0 else 1.0
    v = value / norm
    lo, hi = cfg.min_flat_value, cfg.max_flat_value
    if not cfg.do_normalize_center and math.isfinite(central):
        lo, hi = lo * central, hi * central
    nodes_all = np.asarray(cfg.radial_spline_nodes, float)
    good = np.isfinite(v) & (v >= lo) & (v <= hi) & (r <= nodes_all[-1])
    if not good.any():
        raise UserInputError(MSG_NO_DATA.format(n=len(v), rmax=nodes_all[-1]))
    rmax = float(r[good].max())
    nodes = nodes_all[nodes_all < rmax]
    if len(nodes) < len(nodes_all):
        nodes = np.append(nodes, rmax)  # the last node at the data's edge
    if len(nodes) < 3:
        raise UserInputError(MSG_FEW_NODES.format(n=len(nodes), rmax=rmax, nodes=list(cfg.radial_spline_nodes)))
    x, y, v = xf[good], yf[good], v[good]
    nn = len(nodes)
    idx = {"spline": slice(0, nn)}
    npar = nn
    if cfg.do_fit_centroid:
        idx["centroid"] = slice(npar, npar + 2)
        npar += 2
    if cfg.do_fit_gradient:
        idx["gradient"] = slice(npar, npar + 2)
        npar += 2

    def model(p):
        dx, dy = p[idx["centroid"]] if "centroid" in idx else (0.0, 0.0)
        rr = np.clip(np.hypot(x - cx - dx, y - cy - dy), nodes[0], nodes[-1])
        vals = np.array(p[idx["spline"]])
        if cfg.do_constrain_zero:
            vals[-1] = 0.0
        m = Akima1DInterpolator(nodes, vals)(rr)
        if "gradient" in idx:
            a, b = p[idx["gradient"]]
            m = m / (1.0 + a * (x - cx) + b * (y - cy))
        return m

    p0 = np.zeros(npar)
    rr0 = np.hypot(x - cx, y - cy)
    for i, n in enumerate(nodes):  # median of the bins nearest each node
        lo_r = nodes[i - 1] if i else -np.inf
        hi_r = nodes[i + 1] if i + 1 < nn else np.inf
        near = (rr0 > 0.5 * (lo_r + n)) & (rr0 <= 0.5 * (n + hi_r))
        p0[i] = float(np.median(v[near])) if near.any() else float(np.median(v))
    scale = max(float(np.median(np.abs(v - np.median(v)))) * 0.1, 1e-4)
    res = least_squares(lambda p: model(p) - v, p0, loss="soft_l1", f_scale=scale, x_scale="jac", max_nfev=2000)
    p = res.x
    vals = list(map(float, p[idx["spline"]]))
    if cfg.do_constrain_zero:
        vals[-1] = 0.0
    resid = v / model(p) - 1.0
    info = dict(meta or {})
    info.update(n_bins=int(good.sum()), n_bins_total=int(len(value)), data_radius_mm=rmax,
                residual_rms=float(np.sqrt(np.mean(resid ** 2))), residual_mad=float(np.median(np.abs(resid))),
                nodes_dropped=[float(n) for n in nodes_all if n >= rmax], fit_status=int(res.status),
                reference=bool(cfg.do_reference_gradient))
    dx, dy = (map(float, p[idx["centroid"]]) if "centroid" in idx else (0.0, 0.0))
    a, b = (map(float, p[idx["gradient"]]) if "gradient" in idx else (0.0, 0.0))
    return FlatGradient(list(map(float, nodes)), vals, cx, cy, dx, dy, a, b, float(norm), json_ready(info))


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
_KEYS = ("radial_spline_nodes", "radial_spline_values", "centroid_x", "centroid_y", "centroid_delta_x",
         "centroid_delta_y", "gradient_x", "gradient_y", "normalization_factor")


def write_flat_gradient(path: str | os.PathLike, grad: FlatGradient) -> Path:
    """Write the gradient as JSON, atomically (umask honoured)."""
    doc = {"format": FORMAT, "version": VERSION, "meta": json_ready(dict(grad.meta)),
           **{k: json_ready(getattr(grad, k)) for k in _KEYS}}
    return write_json(path, doc)


def read_flat_gradient(path: str | os.PathLike) -> FlatGradient:
    """Read a cpframe flat-gradient JSON file.

    Raises
    ------
    FileFormatError
        Unreadable, another format or version, or nodes and values of different lengths.
    """
    p = str(path)
    doc = read_json_product(p, FORMAT, VERSION, "flat gradient", FileFormatError)
    missing = [k for k in _KEYS if k not in doc]
    if missing or len(doc["radial_spline_nodes"]) != len(doc["radial_spline_values"]):
        raise FileFormatError(f"{p}: flat gradient without {', '.join(missing) or 'as many values as nodes'}; "
                              "the file is damaged.")
    return FlatGradient(**{k: doc[k] for k in _KEYS}, meta=dict(doc.get("meta") or {}), path=p)


# --------------------------------------------------------------------------------------
# task
# --------------------------------------------------------------------------------------
def flat_gradient_task(flat_paths: Sequence[str], output_path: str | os.PathLike,
                       config: FlatGradientConfig | Mapping[str, Any] | None = None,
                       defect_paths: Mapping[int, str] | None = None) -> FlatGradient:
    """cpFlatFitGradients for one physical filter: every detector's flat in, one gradient json out."""
    from cpframe.camera.models import load_camera
    from cpframe.science.imageio import read_defects, read_masked

    cfg = config if isinstance(config, FlatGradientConfig) else FlatGradientConfig.from_dict(config)
    flats: dict[int, tuple] = {}
    meta: dict[str, Any] = {}
    for path in flat_paths:
        m = read_masked(path)
        h = m.header
        cam = load_camera(str(h["INSTRUME"]), str(h.get("CAMSCALE", "full")).lower())
        det = cam.detector(int(h["DETECTOR"]))
        mask = np.array(m.mask)
        for x0, y0, w, hh in (read_defects(defect_paths[det.id])[0] if defect_paths and det.id in defect_paths
                              else []):
            mask[y0:y0 + hh, x0:x0 + w] |= 1 << MASK_BITS["BAD"]
        flats[det.id] = (m.image, mask, cam, det)
        meta = meta or {k: h[k] for k in ("INSTRUME", "CAMSCALE", "FILTER") if k in h}
    meta.update(OBSTYPE="flat_gradient_reference" if cfg.do_reference_gradient else "flat_gradient",
                detectors=sorted(flats))
    grad = fit_flat_gradient(bin_focal_plane(flats, cfg), cfg, meta=meta)
    grad.path = str(write_flat_gradient(output_path, grad))
    return grad


# --------------------------------------------------------------------------------------
# apply (CpFlatApplyGradientsTask)
# --------------------------------------------------------------------------------------
MSG_APPLY_FILTER = ("flat gradient correction: the {what} is for filter {got!r} but the flat {path} is {want!r}; "
                    "give the gradient and reference fitted for the flat's physical filter.")


def correction_factor(gradient: FlatGradient, reference: FlatGradient, xf, yf) -> np.ndarray:
    """f = gradient model x S_ref / S / normalisation at focal-plane (x, y) mm (module docstring, "Apply").

    >>> g = FlatGradient([0.0, 50.0, 100.0], [1.0, 0.9, 0.8], gradient_x=1e-3, normalization_factor=2.0)
    >>> ref = FlatGradient([0.0, 50.0, 100.0], [1.0, 0.95, 0.9])
    >>> round(float(correction_factor(g, ref, 50.0, 0.0)), 6)  # 1.05 x 0.95 / 0.9 / 2
    0.554167
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return gradient.gradient_model(xf, yf) * reference.radial_model(xf, yf) / gradient.radial_model(xf, yf) \
            / float(gradient.normalization_factor)


@dataclass
class CorrectedFlat:
    """What :func:`flat_gradient_apply_task` returns."""

    path: str
    """The corrected flat (``fits-masked``)."""
    factor_min: float
    """Smallest finite correction factor applied."""
    factor_max: float
    """Largest finite correction factor applied."""


def flat_gradient_apply_task(flat_path: str, gradient_path: str, reference_path: str,
                             output_path: str | os.PathLike, detector=None, rows: int = 256) -> CorrectedFlat:
    """cpFlatApplyGradients for one detector: the corrected flat (``fits-masked``), written atomically.

    ``detector`` defaults to the flat header's.  Works ``rows`` image rows at a time.

    Raises
    ------
    UserInputError
        The gradient or the reference names another physical filter than the flat.
    """
    from cpframe.camera.focal_plane import pixel_to_focal_plane
    from cpframe.camera.models import load_camera
    from cpframe.science.imageio import read_masked, write_masked

    flat = read_masked(flat_path)
    h = flat.header
    grad, ref = read_flat_gradient(gradient_path), read_flat_gradient(reference_path)
    filt = str(h.get("FILTER", ""))
    for what, g in (("flat gradient", grad), ("flat gradient reference", ref)):
        got = str(g.meta.get("FILTER", ""))
        if filt and got and got != filt:
            raise UserInputError(MSG_APPLY_FILTER.format(what=what, got=got, path=flat_path, want=filt))
    camera = load_camera(str(h["INSTRUME"]), str(h.get("CAMSCALE", "full")).lower())
    det = detector if detector is not None else camera.detector(int(h["DETECTOR"]))
    image = np.array(flat.image, dtype=np.float32)
    variance = np.array(flat.variance, dtype=np.float32)
    mask = np.array(flat.mask)
    ny, nx = image.shape
    xx = np.arange(nx, dtype=np.float64)
    lo, hi = math.inf, -math.inf
    for r0 in range(0, ny, rows):
        yy, xg = np.meshgrid(np.arange(r0, min(ny, r0 + rows), dtype=np.float64), xx, indexing="ij")
        xf, yf = pixel_to_focal_plane(camera, det, xg, yy)
        f = correction_factor(grad, ref, xf, yf)
        bad = ~np.isfinite(f) | (f <= 0)  # a radial function at or below 0 (Akima overshoot near a 0 node)
        if not bad.all():
            lo, hi = min(lo, float(np.min(f[~bad]))), max(hi, float(np.max(f[~bad])))
        image[r0:r0 + rows] *= f
        variance[r0:r0 + rows] *= f * f
        if bad.any():
            image[r0:r0 + rows][bad] = np.nan
            mask[r0:r0 + rows][bad] |= 1 << MASK_BITS["NO_DATA"]
    head = dict(h)
    head.update({"OBSTYPE": "flat", "FLATGRAD": os.path.basename(gradient_path),
                 "FLATGREF": os.path.basename(reference_path), "FGNORM": float(grad.normalization_factor)})
    return CorrectedFlat(str(write_masked(output_path, image, mask, variance, head)), lo, hi)
