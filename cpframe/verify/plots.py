"""PNG renderings for the report: detector images, focal-plane mosaics, metric plots, PTC curves.

Matplotlib is used through ``Figure`` + the Agg canvas (no pyplot state, safe in
threads).  Every image uses the report's stretch: median +- 3 x 0.74 x IQR of the
finite pixels (spec verification.md §6), a grey map and a colour bar.  Files are
written under a temporary name and renamed.

Focal-plane layout: detector ``R<ry><rx>_S<sy><sx>`` sits at grid row ``3 ry + sy``,
column ``3 rx + sx`` (row 0 at the bottom), the convention the simulator uses; a
camera whose names do not follow it (LATISS ``RXX_S00``) is laid out in one row.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.core import files as _files
from cpframe.camera.models import Camera, Detector

__all__ = [
    "amp_value_image",
    "display_bin",
    "focal_plane_grid",
    "render_image_png",
    "render_metric_png",
    "render_mosaic_png",
    "render_ptc_png",
    "stretch_limits",
]

_GRID_RE = re.compile(r"R(\d)(\d)_S(\d)(\d)")


def stretch_limits(data: np.ndarray) -> tuple[float, float]:
    """Display range ``median +- 3 * 0.74 * IQR`` of the finite values (a tiny range if flat).

    >>> stretch_limits(np.array([0.0, 1.0, 2.0, 3.0, 4.0]))
    (-2.44, 6.44)
    """
    v = np.asarray(data, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    q25, med, q75 = np.percentile(v, [25.0, 50.0, 75.0])
    half = 3.0 * 0.74 * (q75 - q25)
    if not half > 0:
        half = max(abs(med) * 1e-3, 1e-6)
    return float(round(med - half, 10)), float(round(med + half, 10))


def display_bin(image: np.ndarray, max_side: int = 160) -> tuple[np.ndarray, int]:
    """Block-average ``image`` (NaN ignored) so that its longer side is at most ``max_side``."""
    factor = max(1, int(math.ceil(max(image.shape) / max_side)))
    if factor == 1:
        return np.asarray(image, dtype=float), 1
    ny, nx = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    blocks = np.asarray(image[:ny, :nx], dtype=float).reshape(ny // factor, factor, nx // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3)), factor


def focal_plane_grid(camera: Camera) -> dict[int, tuple[int, int]]:
    """Detector id -> (row, col) in the focal-plane grid (module docstring), rows from 0."""
    pos: dict[int, tuple[int, int]] = {}
    parsed = {d.id: _GRID_RE.fullmatch(d.name) for d in camera.detectors}
    if all(parsed.values()) and len(camera.detectors) > 1:
        for d in camera.detectors:
            ry, rx, sy, sx = (int(g) for g in parsed[d.id].groups())
            pos[d.id] = (3 * ry + sy, 3 * rx + sx)
        r0 = min(r for r, _ in pos.values())
        c0 = min(c for _, c in pos.values())
        return {k: (r - r0, c - c0) for k, (r, c) in pos.items()}
    return {d.id: (0, i) for i, d in enumerate(camera.detectors)}


def _save(fig, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = _files.mkstemp(prefix=f".{p.stem}.", suffix=".png", dir=p.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _figure(width_in: float, height_in: float):
    # fixed axes positions instead of a layout engine: constrained layout doubles the drawing time
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100)


def _image_axes(fig, title_in: float = 0.35, bottom_in: float = 0.45, left_in: float = 0.6, cbar_in: float = 1.0):
    """Image axes plus a colour-bar axes at fixed positions (inches converted to figure fractions)."""
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left_in / w, bottom_in / h, 1 - (left_in + cbar_in + 0.1) / w, 1 - (bottom_in + title_in) / h))
    cax = fig.add_axes((1 - (cbar_in - 0.05) / w, bottom_in / h, 0.15 / w, 1 - (bottom_in + title_in) / h))
    return ax, cax


def render_image_png(image: np.ndarray, path: str | os.PathLike, title: str, label: str = "") -> Path:
    """One detector image, stretched, with a colour bar."""
    shown, factor = display_bin(image, 400)
    lo, hi = stretch_limits(shown)
    fig = _figure(5.6, 4.0 * shown.shape[0] / max(shown.shape[1], 1) + 0.8)
    ax, cax = _image_axes(fig)
    im = ax.imshow(shown, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                   extent=(0, image.shape[1], 0, image.shape[0]))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (pixel)", fontsize=8)
    ax.set_ylabel("y (pixel)", fontsize=8)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label + (f" (binned {factor}x{factor})" if factor > 1 else ""), fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return _save(fig, path)


def render_mosaic_png(
    images: Mapping[int, np.ndarray], camera: Camera, path: str | os.PathLike, title: str, label: str = "",
    max_side: int = 128,
) -> Path:
    """Focal-plane mosaic of per-detector images (detectors without an image are left blank)."""
    grid = focal_plane_grid(camera)
    binned = {k: display_bin(v, max_side)[0] for k, v in images.items() if k in grid}
    if binned:
        h = max(b.shape[0] for b in binned.values())
        w = max(b.shape[1] for b in binned.values())
    else:
        h = w = max_side
    gap = max(2, h // 40)
    # the mosaic covers the detectors that have an image (their bounding box on the focal plane):
    # a few detectors of a 189-detector camera do not shrink to dots in an empty grid (issue 16)
    used = [grid[k] for k in binned] or list(grid.values())
    r0, c0 = min(r for r, _ in used), min(c for _, c in used)
    grid = {k: (r - r0, c - c0) for k, (r, c) in grid.items()}
    nrow = 1 + max(r for r, _ in used) - r0
    ncol = 1 + max(c for _, c in used) - c0
    canvas = np.full((nrow * (h + gap), ncol * (w + gap)), np.nan)
    for det_id, b in binned.items():
        r, c = grid[det_id]
        y0, x0 = r * (h + gap), c * (w + gap)
        canvas[y0:y0 + b.shape[0], x0:x0 + b.shape[1]] = b
    lo, hi = stretch_limits(np.concatenate([b.ravel() for b in binned.values()]) if binned else canvas)
    fig = _figure(min(2.2 * ncol + 1.5, 14.0), min(2.2 * nrow * h / w + 0.7, 14.0))
    ax, cax = _image_axes(fig, left_in=0.15, bottom_in=0.15)
    from matplotlib import colormaps

    cmap = colormaps["gray"].with_extremes(bad="#f2f2f2")
    im = ax.imshow(canvas, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    names = {d.id: d for d in camera.detectors}
    for det_id in binned:
        r, c = grid[det_id]
        det: Detector = names[det_id]
        ax.text(c * (w + gap) + 3, r * (h + gap) + h - 3, det.name, color="#b00020", fontsize=7, va="top",
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 1.0, "edgecolor": "none"})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return _save(fig, path)


def amp_value_image(detector: Detector, values: Mapping[str, float]) -> np.ndarray:
    """A detector-shaped image where each amp box holds its value (for per-amp focal-plane plots)."""
    img = np.full(detector.shape, np.nan)
    for amp in detector.amps:
        v = values.get(amp.name)
        if v is not None:
            img[amp.bbox] = float(v)
    return img


def render_metric_png(
    x_labels: Sequence[str], series: Mapping[str, Sequence[Sequence[float]]], path: str | os.PathLike, title: str,
    ylabel: str, limits: Sequence[float] = (),
) -> Path:
    """A metric across exposures: ``series[name][i]`` holds the per-amp values at ``x_labels[i]``.

    Each series (a detector) is drawn as its per-amp points and the median line; ``limits``
    are drawn as dashed horizontal lines (test thresholds).
    """
    from matplotlib import colormaps

    fig = _figure(7.0, 3.4)
    ax = fig.add_axes((0.09, 0.22, 0.89, 0.7))
    colors = colormaps["tab10"]
    x = np.arange(len(x_labels))
    for k, (name, per_x) in enumerate(series.items()):
        col = colors(k % 10)
        med = []
        for i, vals in enumerate(per_x):
            v = np.asarray([u for u in vals if u is not None and np.isfinite(u)], dtype=float)
            ax.plot(np.full(v.size, i) + (k - len(series) / 2) * 0.03, v, ".", color=col, alpha=0.35, ms=3)
            med.append(np.median(v) if v.size else np.nan)
        ax.plot(x, med, "-o", color=col, ms=3, lw=1, label=name)
    for lim in limits:
        ax.axhline(lim, color="#d62728", ls="--", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(x_labels, rotation=30, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if 0 < len(series) <= 12:
        ax.legend(fontsize=6, ncol=min(len(series), 6), loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def render_ptc_png(rows: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Photon-transfer curves (variance vs mean, adu) of every amp, with the fitted linear model."""
    from matplotlib import colormaps

    fig = _figure(6.0, 4.0)
    ax = fig.add_axes((0.12, 0.12, 0.85, 0.8))
    cmap = colormaps["viridis"]
    n = max(len(rows), 1)
    for i, (amp, r) in enumerate(sorted(rows.items())):
        means = np.asarray(r.get("raw_means", []), dtype=float)
        vars_ = np.asarray(r.get("raw_vars", []), dtype=float)
        ok = np.isfinite(means) & np.isfinite(vars_) & (means > 0) & (vars_ > 0)
        col = cmap(i / n)
        ax.loglog(means[ok], vars_[ok], ".", color=col, ms=3)
        g, noise = float(r.get("gain", np.nan)), float(r.get("noise", np.nan))
        if np.isfinite(g) and g > 0 and ok.any():
            mu = np.geomspace(means[ok].min(), means[ok].max(), 50)
            ax.loglog(mu, mu / g + (noise / g) ** 2, "-", color=col, lw=0.6, label=amp if i < 16 else None)
    ax.set_xlabel("mean (adu)", fontsize=8)
    ax.set_ylabel("variance (adu$^2$)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=5, ncol=4, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
