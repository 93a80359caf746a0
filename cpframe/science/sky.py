"""Sky frames: the static fractional pattern the night sky leaves on each detector (cp_pipe ``cpSky``).

cp_pipe builds a sky frame in four steps after ISR; cpframe keeps the steps and their products:

1. ``CpSkyImageTask`` (:func:`sky_image`, per exposure x detector): mask the sources (pixels above
   ``maskThresh`` sigma of the local background, grown by 2 px; plane ``DETECTED``) and measure the
   detector's part of the focal-plane background: clipped means of superpixels of
   ``largeScaleBackground.xSize x ySize`` mm at their focal-plane position.
2. ``CpSkyScaleMeasureTask`` (:func:`scale_measure`, per exposure): merge the superpixels of every
   detector of the exposure into the focal-plane background and take its median as the exposure's
   scale.
3. ``CpSkySubtractBackgroundTask`` (:func:`subtract_background`, per exposure x detector): subtract
   the focal-plane background from the masked image, divide by the scale, and measure what is left
   in bins of ``sky.background.xBinSize x yBinSize`` pixels (clipped mean, ``sky.skyIter``
   iterations at ``sky.skyRej`` sigma).
4. ``CpSkyCombineTask`` (:func:`combine_sky`, per detector x physical_filter): average those
   residual bins over the exposures (clipped mean) into the ``sky`` calibration: a **binned**
   image, as the LSST product, in units of the exposure's sky level.

:func:`subtract_sky` is what a science processing step does with it (pipe_tasks' sky correction):
fit the frame's amplitude together with a plane to an image's binned background and subtract the
scaled frame, expanded to full resolution (:func:`sky_model`, bilinear between bin centres).

Deliberate differences (docs/sky.md): cpframe's superpixels tile each detector (as many as fit, at
least one) rather than a focal-plane grid, and the focal-plane background is a plane in focal-plane mm
fitted to them (a constant with fewer than three superpixels), not the interpolated superpixel image;
with ``includeAlternateBackground`` each physical sensor type gets its own plane and scale, all in
one ``cpSkyExpBackground`` product.  Object masking is a threshold on the background-subtracted image,
not ``MaskObjectsTask``'s detection iterations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.combine import clipped_stats
from cpframe.science.imageio import MASK_BITS, MaskedImage, write_masked
from cpframe.science.configs.sky import (  # noqa: F401 (defined there, importable without the science stack)
    SkyConfig,
)

__all__ = ["SkyConfig", "binned_background", "combine_sky", "mask_objects", "scale_measure", "sky_image",
           "sky_model", "subtract_background", "subtract_sky"]


def _bad(mask: np.ndarray, planes: Sequence[str]) -> np.ndarray:
    bits = 0
    for p in planes:
        if p in MASK_BITS:
            bits |= 1 << MASK_BITS[p]
    return (mask & bits) != 0 if bits else np.zeros(mask.shape, bool)


def _block_stat(image: np.ndarray, good: np.ndarray, by: int, bx: int, clip: float, n_iter: int) -> np.ndarray:
    """Clipped mean of each (by x bx) block (NaN where fewer than 5 good pixels)."""
    ny, nx = math.ceil(image.shape[0] / by), math.ceil(image.shape[1] / bx)
    out = np.full((ny, nx), np.nan)
    for j in range(ny):
        for i in range(nx):
            sl = (slice(j * by, (j + 1) * by), slice(i * bx, (i + 1) * bx))
            v = image[sl][good[sl]]
            if v.size >= 5:
                out[j, i] = clipped_stats(v.astype(np.float64), clip, n_iter)[0]
    return out


def _expand(bins: np.ndarray, shape: tuple[int, int], by: float, bx: float) -> np.ndarray:
    """Bilinear interpolation between bin centres (edges: nearest); NaN bins filled from neighbours first."""
    from scipy import ndimage

    b = np.array(bins, dtype=np.float64)
    bad = ~np.isfinite(b)
    if bad.all():
        return np.zeros(shape)
    if bad.any():
        idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
        b = b[tuple(idx)]
    yy = (np.arange(shape[0]) + 0.5) / by - 0.5
    xx = (np.arange(shape[1]) + 0.5) / bx - 0.5
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    return ndimage.map_coordinates(b, [gy, gx], order=1, mode="nearest")


def binned_background(image: np.ndarray, good: np.ndarray, config: SkyConfig) -> np.ndarray:
    """Residual-background bins of an image (clipped means; NaN where nothing is good)."""
    return _block_stat(image, good, int(config.y_bin_size), int(config.x_bin_size), config.sky_rej, config.sky_iter)


def mask_objects(img: MaskedImage, config: SkyConfig) -> np.ndarray:
    """Set ``DETECTED`` on sources (above ``mask_thresh`` sigma of a 64-px local background); returns the mask."""
    from scipy import ndimage

    mask = img.mask.copy()
    image = img.image.astype(np.float64)
    good = ~_bad(mask, [p for p in config.mask_list if p != "DETECTED"]) & np.isfinite(image)
    det = np.zeros(image.shape, bool)
    for _ in range(2):  # a second pass with the first sources left out of the background
        use = good & ~det
        bg = _expand(_block_stat(image, use, 64, 64, 3.0, 3), image.shape, 64, 64)
        resid = image - bg
        _, sigma, _ = clipped_stats(resid[use], 3.0, 3)
        det = ndimage.binary_dilation(good & (resid > config.mask_thresh * sigma), iterations=2)
    mask[det] |= np.int32(1 << MASK_BITS["DETECTED"]).astype(mask.dtype)
    return mask


def _focal_plane(camera, det, shape):
    from cpframe.camera.focal_plane import pixel_to_focal_plane

    return pixel_to_focal_plane(camera, det, np.arange(shape[1])[None, :], np.arange(shape[0])[:, None])


def sky_image(img: MaskedImage, camera, det, config: SkyConfig) -> tuple[MaskedImage, dict]:
    """Step 1: the masked image and the detector's superpixels ``{"samples": [[x_mm, y_mm, value, n], ...]}``."""
    from cpframe.camera.focal_plane import detector_size_mm

    mask = mask_objects(img, config)
    good = ~_bad(mask, config.mask_list) & np.isfinite(img.image)
    w_mm, h_mm = detector_size_mm(camera, det)
    nx, ny = max(1, int(w_mm // config.x_size_mm)), max(1, int(h_mm // config.y_size_mm))
    rows, cols = img.image.shape
    xf, yf = _focal_plane(camera, det, (rows, cols))
    samples = []
    for j in range(ny):
        for i in range(nx):
            sl = (slice(j * rows // ny, (j + 1) * rows // ny), slice(i * cols // nx, (i + 1) * cols // nx))
            g = good[sl]
            if g.sum() < 10:
                continue
            mean = clipped_stats(img.image[sl][g].astype(np.float64), config.sky_rej, config.sky_iter)[0]
            samples.append([float(np.broadcast_to(xf, (rows, cols))[sl].mean()),
                            float(np.broadcast_to(yf, (rows, cols))[sl].mean()), float(mean), int(g.sum())])
    out = MaskedImage(img.image, mask, img.variance, dict(img.header))
    return out, {"samples": samples, "detector": int(det.id), "physical_type": str(det.sensor_type)}


def _fit_plane(samples: np.ndarray) -> list[float]:
    if len(samples) >= 3 and np.ptp(samples[:, 0]) > 0 and np.ptp(samples[:, 1]) > 0:
        a = np.column_stack([np.ones(len(samples)), samples[:, 0], samples[:, 1]])
        w = np.sqrt(samples[:, 3])
        coef = np.linalg.lstsq(a * w[:, None], samples[:, 2] * w, rcond=None)[0]
        return [float(c) for c in coef]
    return [float(np.average(samples[:, 2], weights=samples[:, 3])), 0.0, 0.0]


def scale_measure(detector_backgrounds: Sequence[Mapping[str, Any]], config: SkyConfig) -> dict:
    """Step 2: ``{"backgrounds": {type: {"plane": [c0, cx, cy], "scale": s}}}`` of one exposure.

    Raises
    ------
    UserInputError
        No detector of the exposure had a usable superpixel.
    """
    groups: dict[str, list] = {}
    for b in detector_backgrounds:
        key = str(b.get("physical_type", "homogeneous")) if config.include_alternate_background else "homogeneous"
        groups.setdefault(key, []).extend(b["samples"])
    out = {}
    for key, samples in sorted(groups.items()):
        s = np.asarray(samples, dtype=np.float64).reshape(-1, 4)
        if not len(s):
            continue
        plane = _fit_plane(s)
        model = plane[0] + plane[1] * s[:, 0] + plane[2] * s[:, 1]
        out[key] = {"plane": plane, "scale": float(np.median(model)), "n_samples": len(s)}
    if not out:
        raise UserInputError("sky scale measure: no detector of the exposure has unmasked pixels to measure the "
                             "focal-plane background; check the ISR images (all masked?).")
    return {"backgrounds": out}


def subtract_background(img: MaskedImage, camera, det, exposure_background: Mapping[str, Any],
                        config: SkyConfig) -> dict:
    """Step 3: residual bins ``(image - plane) / scale`` of one detector and exposure."""
    bgs = exposure_background["backgrounds"]
    key = str(det.sensor_type) if str(det.sensor_type) in bgs else "homogeneous"
    if key not in bgs:
        key = min(bgs)
    c0, cx, cy = bgs[key]["plane"]
    scale = float(bgs[key]["scale"])
    if not (math.isfinite(scale) and scale > 0):
        raise UserInputError(f"sky subtract background: the exposure's sky scale is {scale!r}; a sky frame needs "
                             "science exposures with sky (check the selection's observation type and exposure time).")
    xf, yf = _focal_plane(camera, det, img.image.shape)
    resid = (img.image - (c0 + cx * xf + cy * yf)) / scale
    good = ~_bad(img.mask, config.mask_list) & np.isfinite(resid)
    bins = binned_background(resid, good, config)
    return {"bins": [[None if not math.isfinite(v) else float(v) for v in row] for row in bins],
            "x_bin_size": int(config.x_bin_size), "y_bin_size": int(config.y_bin_size),
            "shape": list(img.image.shape), "scale": scale}


def combine_sky(residuals: Sequence[Mapping[str, Any]], output_path: str | Path, config: SkyConfig,
                header: Mapping[str, Any] | None = None) -> dict:
    """Step 4: the sky frame (binned, clipped mean over exposures) and its verification cards.

    Raises
    ------
    UserInputError
        No residuals, or residuals binned differently.
    """
    if not residuals:
        raise UserInputError("sky combine: no residual backgrounds to combine; the selection has no science "
                             "exposures of this detector and filter.")
    keys = {(tuple(r["shape"]), r["x_bin_size"], r["y_bin_size"]) for r in residuals}
    if len(keys) > 1:
        raise UserInputError(f"sky combine: residual backgrounds with different shapes or bins {sorted(keys)}; "
                             "combine exposures of one detector made with one configuration.")
    stack = np.array([[[np.nan if v is None else v for v in row] for row in r["bins"]] for r in residuals],
                     dtype=np.float64)
    n = len(stack)
    frame = np.full(stack.shape[1:], np.nan)
    err = np.full(stack.shape[1:], np.nan)
    for idx in np.ndindex(*frame.shape):
        v = stack[(slice(None), *idx)]
        v = v[np.isfinite(v)]
        if v.size:
            mean, std, k = clipped_stats(v, config.sky_rej, config.sky_iter) if v.size >= 3 else \
                (float(v.mean()), float(v.std()), v.size)
            frame[idx] = mean
            err[idx] = std / math.sqrt(max(k, 1)) if k > 1 else np.nan
    finite = np.isfinite(frame)
    # leave-one-out: how much of each exposure's residual the frame of the others explains
    gain = []
    for e in range(n) if n >= 3 else ():
        others = np.nanmean(np.delete(stack, e, axis=0), axis=0)
        ok = np.isfinite(others) & np.isfinite(stack[e])
        if ok.sum() > 3:
            before = float(np.std(stack[e][ok]))
            after = float(np.std(stack[e][ok] - others[ok]))
            gain.append(after / before if before > 0 else 1.0)
    noise = float(np.nanmedian(err)) if np.isfinite(err).any() else math.nan
    h = dict(header or {})
    h.update({"OBSTYPE": "sky", "LSST SKY BINX": int(residuals[0]["x_bin_size"]),
              "LSST SKY BINY": int(residuals[0]["y_bin_size"]), "LSST SKY ROWS": int(residuals[0]["shape"][0]),
              "LSST SKY COLS": int(residuals[0]["shape"][1]), "LSST SKY NEXP": n,
              "LSST SKY RMS": float(np.nanstd(frame)) if finite.any() else math.nan,
              "LSST SKY NOISE": noise, "LSST SKY FINITE": float(finite.mean()),
              "LSST SKY LOO RATIO": float(np.median(gain)) if gain else math.nan,
              "LSST SKY VERIFY SUCCESS": bool(math.isfinite(noise) and noise < config.verify_max_noise)})
    mask = np.where(finite, 0, 1 << MASK_BITS["BAD"]).astype(np.int32)
    var = np.where(np.isfinite(err), err**2, 0.0).astype(np.float32)
    write_masked(output_path, np.where(finite, frame, 0.0).astype(np.float32), mask, var, h)
    return {"path": str(output_path), "n_exposures": n, "noise": noise, "rms": h["LSST SKY RMS"]}


def sky_model(frame: MaskedImage, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The binned sky frame expanded to the full image (``shape`` defaults to the frame's cards)."""
    h = frame.header
    shape = shape or (int(h["LSST SKY ROWS"]), int(h["LSST SKY COLS"]))
    bins = np.where(frame.mask == 0, frame.image.astype(np.float64), np.nan)
    return _expand(bins, shape, float(h["LSST SKY BINY"]), float(h["LSST SKY BINX"]))


def subtract_sky(img: MaskedImage, frame: MaskedImage, config: SkyConfig | None = None) -> tuple[np.ndarray, float]:
    """Science-side use: fit ``a · frame + plane`` to the image's binned background, return ``(image - a · frame, a)``."""
    config = config or SkyConfig(x_bin_size=int(frame.header["LSST SKY BINX"]),
                                 y_bin_size=int(frame.header["LSST SKY BINY"]))
    mask = mask_objects(img, config)
    good = ~_bad(mask, config.mask_list) & np.isfinite(img.image)
    b = binned_background(img.image.astype(np.float64), good, config)
    f = np.where(frame.mask == 0, frame.image.astype(np.float64), np.nan)
    if f.shape != b.shape:
        raise UserInputError(f"sky frame bins {f.shape} do not match the image's {b.shape} (bin size "
                             f"{config.x_bin_size} x {config.y_bin_size}); use the frame of this detector.")
    jj, ii = np.indices(b.shape)
    ok = np.isfinite(b) & np.isfinite(f)
    a = np.column_stack([f[ok], np.ones(ok.sum()), ii[ok], jj[ok]])
    coef = np.linalg.lstsq(a, b[ok], rcond=None)[0]
    amp = float(coef[0])
    return img.image - amp * sky_model(frame, img.image.shape), amp
