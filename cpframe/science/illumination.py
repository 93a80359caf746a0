"""Illumination correction from repeated star photometry (cp_pipe ``cpIlluminationCorrection``).

cp_pipe builds it with FGCM: ``CalibrateImageTask`` measures stars on dome-flat corrected
science images, the isolated stars are associated across visits, and ``FgcmFitCycleTask``
fits a "super-star flat" (a Chebyshev polynomial per detector, ``superStarSubCcdChebyshevOrder``,
forced to zero mean) to the magnitude residuals of the same stars seen on different pixels;
``FgcmOutputIlluminationCorrectionTask`` writes it as an image per detector and filter.

cpframe, per detector and physical filter (own words, no code copied):

1. :func:`measure_stars` (``CalibrateImageTask``): peaks of the PSF-smoothed image above
   ``detection_threshold`` sigma, kept when isolated (no other peak within ``isolation_radius``)
   and clear of masked pixels; aperture flux in ``aperture_radius`` minus the median of the
   annulus ``annulus_radii``.  With ``do_illumination_correction`` the image is first divided
   by an existing correction (cp_verify's check).
2. :func:`solve_illumination` (association + FGCM fit): each exposure's catalogue is
   registered onto the first by the mode of the pairwise star offsets (the dither), stars are
   associated within ``match_radius``, and the magnitudes per second ``m = M_star + S(x, y)``
   (``+ Z_exposure`` with ``fit_exposure_zero_points``) are fitted by weighted least squares with
   ``S`` a 2-d Chebyshev polynomial of total order ``chebyshev_order`` (3-sigma clipped until
   stable, at most three fits); ``S`` is forced to zero mean over the detector.
3. The product (``illuminationCorrection``, fits-masked, dimensions detector + physical_filter)
   is ``c = 10^(−0.4 S)``: ISR divides a flat-fielded image by it (ip_isr
   ``illuminationCorrection``: ``image /= c``).  Its header records the fit (stars, exposures,
   rms of the residuals, the correction's peak-to-peak) and, for the verification product, the
   verdict: the correction measured *after* applying one must be flat, rms of ``c − 1`` over the
   detector below ``verify_max_deviation``.

Deliberate differences from FGCM (docs/illumination.md): one detector at a time (the
detector-to-detector zero point stays in the flat), no atmosphere / reference catalogue, star
association by dither registration instead of WCS sky coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import json_ready, write_json
from cpframe.science.imageio import MASK_BITS, MaskedImage, read_masked, write_masked
from cpframe.science.configs.illumination import (  # noqa: F401 (defined there, importable without the science stack)
    IlluminationConfig,
    VERIFY_MAX_DEVIATION,
)

__all__ = [
    "VERIFY_MAX_DEVIATION",
    "IlluminationConfig",
    "StarCatalog",
    "adaptive_moments",
    "apply_illumination_correction",
    "chebyshev_surface",
    "illumination_task",
    "measure_stars",
    "read_catalog",
    "solve_illumination",
    "write_catalog",
]


_BAD_PLANES = ("BAD", "SAT", "SUSPECT", "NO_DATA", "UNMASKEDNAN", "CR", "EDGE")


@dataclass
class StarCatalog:
    """Stars measured on one exposure x detector (pixel coordinates of the assembled image)."""

    exposure: int
    detector: int
    physical_filter: str
    shape: tuple[int, int]
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    exposure_time: float = 1.0
    """Seconds (fluxes are compared per second)."""
    meta: dict = field(default_factory=dict)
    """Instrument, detector and scale cards of the image (carried into the product)."""
    size: np.ndarray | None = None
    """Trace ``Ixx + Iyy`` (px²) of each star's adaptive second moments (:func:`adaptive_moments`; the
    brighter-fatter check, cp_verify's ``ext_shapeHSM_HsmSourceMoments_xx + _yy``); None in older files."""


# ------------------------------------------------------------------------------------------
# 1. stars
# ------------------------------------------------------------------------------------------
def measure_stars(img: MaskedImage, config: IlluminationConfig, exposure: int = 0, detector: int = 0,
                  physical_filter: str = "", correction: np.ndarray | None = None) -> StarCatalog:
    """Detect isolated stars and measure their aperture fluxes (see the module docstring, step 1)."""
    from scipy import ndimage

    image = np.asarray(img.image, dtype=np.float64)
    variance = np.asarray(img.variance, dtype=np.float64)
    if correction is not None:
        image = image / correction
        variance = variance / (correction * correction)
    bad = (img.mask & sum(1 << MASK_BITS[p] for p in _BAD_PLANES)) != 0
    work = np.where(bad | ~np.isfinite(image), np.nan, image)
    sky = float(np.nanmedian(work))
    filled = np.where(np.isnan(work), sky, work)
    smooth = ndimage.gaussian_filter(filled - sky, config.psf_sigma)
    # noise of the smoothed image: sky variance x the kernel's sum of squares
    noise = math.sqrt(max(float(np.nanmedian(variance)), 1e-12) / (4 * math.pi * config.psf_sigma ** 2))
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & (smooth > config.detection_threshold * noise)
    py, px = np.nonzero(peaks)
    r_out = config.annulus_radii[1]
    ny, nx = image.shape
    keep = (py >= r_out) & (py < ny - r_out) & (px >= r_out) & (px < nx - r_out)
    py, px = py[keep], px[keep]
    if len(py) > 1:  # isolation: nearest other peak (of all detections, edge ones included)
        from scipy.spatial import cKDTree

        ay, ax = np.nonzero(peaks)
        tree = cKDTree(np.column_stack([ay, ax]))
        d, _ = tree.query(np.column_stack([py, px]), k=2)
        iso = d[:, 1] > config.isolation_radius
        py, px = py[iso], px[iso]
    rr = int(math.ceil(r_out))
    oy, ox = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    core = (oy * oy + ox * ox <= 4).astype(np.float64)
    xs, ys, fl, fe, sz = [], [], [], [], []
    for k in range(0, len(py), 2048):  # cut-outs of all peaks at once, in batches (25 x 25 px each)
        by, bx = py[k:k + 2048, None, None], px[k:k + 2048, None, None]
        cut, cbad, cvar = filled[by + oy, bx + ox], bad[by + oy, bx + ox], variance[by + oy, bx + ox]
        w = np.clip(cut - sky, 0, None) * core  # first moment within 2 px of the peak
        tot = w.sum(axis=(1, 2))
        safe = np.where(tot > 0, tot, 1.0)
        dy = np.where(tot > 0, (w * oy).sum(axis=(1, 2)) / safe, 0.0)
        dx = np.where(tot > 0, (w * ox).sum(axis=(1, 2)) / safe, 0.0)
        r2 = (oy - dy[:, None, None]) ** 2 + (ox - dx[:, None, None]) ** 2
        ap = r2 <= config.aperture_radius ** 2
        ann = (r2 >= config.annulus_radii[0] ** 2) & (r2 <= r_out ** 2) & ~cbad
        n_ap, n_ann = ap.sum(axis=(1, 2)), ann.sum(axis=(1, 2))
        ok = ~(cbad & ap).any(axis=(1, 2)) & (n_ann >= 10) & np.isfinite(np.where(ap, cvar, 0.0)).all(axis=(1, 2))
        if not ok.any():
            continue
        cut, cvar, ap, ann, n_ap, n_ann = cut[ok], cvar[ok], ap[ok], ann[ok], n_ap[ok], n_ann[ok]
        bg = np.nanmedian(np.where(ann, cut, np.nan).reshape(len(cut), -1), axis=1)
        flux = np.where(ap, cut, 0.0).sum(axis=(1, 2)) - bg * n_ap
        var_ap = np.clip(np.where(ap, cvar, 0.0).sum(axis=(1, 2)), 0.0, None)
        var_ann = np.where(ann, cvar, 0.0).sum(axis=(1, 2)) / n_ann
        err = np.sqrt(var_ap + n_ap ** 2 * var_ann / n_ann)
        good = (flux > 0) & np.isfinite(err)
        sz.append(adaptive_moments(cut - bg[:, None, None], oy - dy[ok][:, None, None], ox - dx[ok][:, None, None],
                                   config.psf_sigma)[good])
        xs.append(px[k:k + 2048][ok][good] + dx[ok][good] + 0.5)  # pixel centres at +0.5 (the simulator's)
        ys.append(py[k:k + 2048][ok][good] + dy[ok][good] + 0.5)
        fl.append(flux[good])
        fe.append(err[good])
    xs, ys, fl, fe, sz = (np.concatenate(a) if a else np.zeros(0) for a in (xs, ys, fl, fe, sz))
    t = float(img.header.get("EXPTIME", 1.0) or 1.0)
    meta = {k: img.header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in img.header}
    return StarCatalog(int(exposure), int(detector), str(physical_filter), (ny, nx), xs, ys, fl, fe, t, meta, sz)


def adaptive_moments(cuts: np.ndarray, dy: np.ndarray, dx: np.ndarray, sigma0: float, n_iter: int = 20) -> np.ndarray:
    """Trace ``Ixx + Iyy`` (px²) of the adaptive second moments of background-subtracted cut-outs.

    A circular Gaussian weight of variance ``s²`` is matched to the star: ``s² ← 2 M_w / 2`` with
    ``M_w`` the weighted trace, which converges to the star's own variance for a Gaussian star (the
    weighted variance of a Gaussian of variance σ² under a weight of variance σ² is σ²/2 per axis).
    ``dy``/``dx``: offsets of the cut-out pixels from the star's centre (broadcast with ``cuts``).
    HSM's elliptical weight and centroid iteration are not reproduced (docs/algorithms.md, BF stars).

    >>> y, x = np.mgrid[-12:13, -12:13].astype(float)
    >>> star = np.exp(-0.5 * (x * x + y * y) / 2.0 ** 2)[None]
    >>> round(float(adaptive_moments(star, y[None], x[None], 1.0)[0]), 3)
    8.0
    """
    r2 = dy * dy + dx * dx
    s2 = np.full(cuts.shape[0], float(sigma0) ** 2)
    for _ in range(n_iter):
        w = cuts * np.exp(-0.5 * r2 / s2[:, None, None])
        tot = w.sum(axis=(1, 2))
        m = np.where(tot > 0, (w * r2).sum(axis=(1, 2)) / np.where(tot > 0, tot, 1.0), np.nan)
        s2 = np.clip(m, 0.05, 50.0)  # weighted trace = s²·σ²/(s² + σ²)·2 -> at s² = σ²: σ² (= half the trace)
    return np.where(np.isfinite(m), 2.0 * s2, np.nan)


def write_catalog(path: str | os.PathLike, cat: StarCatalog) -> str:
    """Write a star catalogue (JSON; cpframe's ``single_visit_star`` storage)."""
    doc = {"format": "cpframe-star-catalog", "version": 1, "exposure": cat.exposure, "detector": cat.detector,
           "physical_filter": cat.physical_filter, "shape": list(cat.shape), "x": cat.x, "y": cat.y,
           "flux": cat.flux, "flux_err": cat.flux_err, "exposure_time": cat.exposure_time, "meta": cat.meta}
    if cat.size is not None:
        doc["size"] = cat.size
    write_json(path, json_ready(doc))
    return str(path)


def read_catalog(path: str | os.PathLike) -> StarCatalog:
    """Read :func:`write_catalog`'s file.

    Raises
    ------
    UserInputError
        Not a cpframe star catalogue.
    """
    import json

    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != "cpframe-star-catalog":
        raise UserInputError(f"{path}: not a cpframe star catalogue (format cpframe-star-catalog).")
    return StarCatalog(int(doc["exposure"]), int(doc["detector"]), str(doc["physical_filter"]),
                       tuple(doc["shape"]), *(np.asarray(doc[k], dtype=np.float64) for k in ("x", "y", "flux", "flux_err")),
                       float(doc.get("exposure_time", 1.0)), dict(doc.get("meta") or {}),
                       None if doc.get("size") is None else np.asarray(doc["size"], dtype=np.float64))


# ------------------------------------------------------------------------------------------
# 2. association + super-star fit
# ------------------------------------------------------------------------------------------
def _terms(order: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


def _cheb(u: np.ndarray, n: int) -> np.ndarray:
    return np.polynomial.chebyshev.chebvander(u, n)


def chebyshev_surface(coeffs: Mapping[tuple[int, int], float] | Sequence, order: int, shape: tuple[int, int],
                      x: np.ndarray | None = None, y: np.ndarray | None = None) -> np.ndarray:
    """Evaluate ``S = Σ c_ij T_i(xn) T_j(yn)`` on the pixel grid (or at points ``x, y``, pixel units)."""
    terms = _terms(order)
    c = [coeffs[t] for t in terms] if isinstance(coeffs, Mapping) else list(coeffs)
    if x is None:
        yn = (np.arange(shape[0]) + 0.5) / shape[0] * 2 - 1
        xn = (np.arange(shape[1]) + 0.5) / shape[1] * 2 - 1
        tx, ty = _cheb(xn, order), _cheb(yn, order)
        out = np.zeros(shape)
        for (i, j), cij in zip(terms, c):
            out += cij * np.outer(ty[:, j], tx[:, i])
        return out
    tx, ty = _cheb(np.asarray(x) / shape[1] * 2 - 1, order), _cheb(np.asarray(y) / shape[0] * 2 - 1, order)
    return sum(cij * tx[:, i] * ty[:, j] for (i, j), cij in zip(terms, c))


def _offset(ref: StarCatalog, cat: StarCatalog, radius: float) -> tuple[float, float] | None:
    """(dy, dx) to add to ``cat`` to land on ``ref``: the mode of pairwise offsets, refined by the matches."""
    from scipy.spatial import cKDTree

    if len(ref.x) < 3 or len(cat.x) < 3:
        return None
    bright = lambda c, n=60: np.argsort(c.flux)[::-1][:n]
    ri, ci = bright(ref), bright(cat)
    dy = (ref.y[ri][:, None] - cat.y[ci][None, :]).ravel()
    dx = (ref.x[ri][:, None] - cat.x[ci][None, :]).ravel()
    lim = max(cat.shape) * 0.5
    h, ey, ex = np.histogram2d(dy, dx, bins=int(2 * lim / 2), range=[[-lim, lim], [-lim, lim]])
    k = np.unravel_index(np.argmax(h), h.shape)
    if h[k] < 3:
        return None
    oy, ox = (ey[k[0]] + ey[k[0] + 1]) / 2, (ex[k[1]] + ex[k[1] + 1]) / 2
    for r in (3.0, radius):  # refine: median offset of the matched pairs
        tree = cKDTree(np.column_stack([ref.y, ref.x]))
        d, j = tree.query(np.column_stack([cat.y + oy, cat.x + ox]), distance_upper_bound=r)
        ok = np.isfinite(d)
        if ok.sum() < 3:
            return None
        oy = float(np.median(ref.y[j[ok]] - cat.y[ok]))
        ox = float(np.median(ref.x[j[ok]] - cat.x[ok]))
    return oy, ox


def _associate(cats: Sequence[StarCatalog], radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(star index, exposure index, catalogue row) of every kept measurement, and the per-exposure offsets."""
    from scipy.spatial import cKDTree

    ref = max(range(len(cats)), key=lambda i: len(cats[i].x))
    offsets = np.full((len(cats), 2), np.nan)
    offsets[ref] = 0.0
    for i, c in enumerate(cats):
        if i != ref:
            o = _offset(cats[ref], c, radius)
            if o is not None:
                offsets[i] = o
    pos: list[tuple[float, float]] = []
    star, expo, row = [], [], []
    for i in [ref, *[k for k in range(len(cats)) if k != ref]]:
        if not np.isfinite(offsets[i]).all():
            continue
        c = cats[i]
        yy, xx = c.y + offsets[i, 0], c.x + offsets[i, 1]
        if pos:
            tree = cKDTree(np.asarray(pos))
            d, j = tree.query(np.column_stack([yy, xx]), distance_upper_bound=radius)
        else:
            d, j = np.full(len(yy), np.inf), np.zeros(len(yy), int)
        for r in range(len(yy)):
            if np.isfinite(d[r]):
                s = int(j[r])
            else:
                s = len(pos)
                pos.append((yy[r], xx[r]))
            star.append(s)
            expo.append(i)
            row.append(r)
    return np.asarray(star, int), np.asarray(expo, int), np.asarray(row, int), offsets


@dataclass
class IlluminationFit:
    """Result of :func:`solve_illumination`."""

    correction: np.ndarray
    """``10^(−0.4 S)`` on the detector's pixel grid (float64): ISR divides by it."""
    coeffs: list[float]
    order: int
    n_stars: int
    n_measurements: int
    n_exposures: int
    rms_mmag: float
    """rms of the fit residuals (millimag)."""
    offsets: list[list[float]]
    """(dy, dx) registration of each exposure onto the reference one (px)."""


def solve_illumination(cats: Sequence[StarCatalog], config: IlluminationConfig) -> IlluminationFit:
    """Fit the super-star flat of one detector from its exposures' star catalogues (module step 2).

    Raises
    ------
    UserInputError
        Fewer than two exposures, or too few repeated stars to constrain the surface.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    cats = [c for c in cats if len(c.x)]
    what = f"illumination correction of detector {cats[0].detector if cats else '?'}"
    if len(cats) < 2:
        raise UserInputError(f"{what}: stars were measured on {len(cats)} exposure(s); the fit needs at least "
                               "two dithered science exposures. Select more exposures (SELECTION_ILLUMINATION_CORRECTION).")
    shape = cats[0].shape
    star, expo, row, offsets = _associate(cats, config.match_radius)
    counts = np.bincount(star)
    keep = counts[star] >= config.min_observations
    zp = config.fit_exposure_zero_points
    terms = [t for t in _terms(config.chebyshev_order) if t != (0, 0) and (not zp or sum(t) > 1)]
    if keep.sum() < 3 * (len(terms) + 2):
        raise UserInputError(f"{what}: {int(keep.sum())} measurements of repeated stars; at least "
                               f"{3 * (len(terms) + 2)} are needed for order {config.chebyshev_order}. Use more "
                               "(dithered) exposures or a lower superStarSubCcdChebyshevOrder.")
    x = np.array([cats[e].x[r] for e, r in zip(expo, row)])
    y = np.array([cats[e].y[r] for e, r in zip(expo, row)])
    f = np.array([cats[e].flux[r] for e, r in zip(expo, row)])
    fe = np.array([cats[e].flux_err[r] for e, r in zip(expo, row)])
    m = -2.5 * np.log10(f / np.array([cats[e].exposure_time for e in expo]))
    sig = np.hypot(1.0857 * fe / f, 1e-3)
    tx = _cheb(x / shape[1] * 2 - 1, config.chebyshev_order)
    ty = _cheb(y / shape[0] * 2 - 1, config.chebyshev_order)
    surf = np.column_stack([tx[:, i] * ty[:, j] for i, j in terms])
    good = keep.copy()
    for _ in range(3):
        idx = np.nonzero(good)[0]
        stars_u, s_idx = np.unique(star[idx], return_inverse=True)
        exps_u, e_idx = np.unique(expo[idx], return_inverse=True)
        ns, ne, nt = len(stars_u), len(exps_u), len(terms)
        n = len(idx)
        w = 1.0 / sig[idx]
        nz = ne - 1 if zp else 0
        ze = (e_idx > 0) if zp else np.zeros(n, bool)
        rows_ = np.concatenate([np.arange(n), np.arange(n)[ze], np.repeat(np.arange(n), nt)])
        cols = np.concatenate([s_idx, ns + e_idx[ze] - 1, np.tile(ns + nz + np.arange(nt), n)])
        vals = np.concatenate([np.ones(n), np.ones(int(ze.sum())), surf[idx].ravel()])
        a = coo_matrix((vals * w[rows_], (rows_, cols)), shape=(n, ns + nz + nt)).tocsr()
        # normal equations (sparse, well conditioned: one exposure's zero point and the constant term are fixed)
        sol = spsolve((a.T @ a).tocsc(), a.T @ (m[idx] * w))
        zps = np.concatenate([[0.0], sol[ns:ns + nz]]) if zp else np.zeros(ne)
        model = sol[s_idx] + zps[e_idx] + surf[idx] @ sol[ns + nz:]
        resid = np.full(len(m), np.inf)
        resid[idx] = (m[idx] - model) / sig[idx]
        clip = 3.0 * max(float(np.std(resid[idx])), 1e-9)
        new = keep & (np.abs(resid) < clip)
        rms = float(np.sqrt(np.mean(((m[idx] - model)) ** 2)) * 1000)
        if (new == good).all():
            break
        good = new
    full = dict(zip(terms, sol[ns + nz:]))
    coeffs = [float(full.get(t, 0.0)) for t in _terms(config.chebyshev_order)]
    s_map = chebyshev_surface(coeffs, config.chebyshev_order, shape)
    if config.force_zero_mean:
        s_map -= s_map.mean()
    corr = 10 ** (-0.4 * s_map)
    return IlluminationFit(corr, [float(c) for c in coeffs], config.chebyshev_order, len(stars_u), int(good.sum()),
                           ne, rms, offsets.tolist())


def apply_illumination_correction(image: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                                  correction: MaskedImage | np.ndarray) -> None:
    """ip_isr ``illuminationCorrection``: divide the image (and the variance by c²) in place."""
    c = correction.image if isinstance(correction, MaskedImage) else np.asarray(correction)
    if c.shape != image.shape:
        raise UserInputError(f"illumination correction has shape {c.shape}; the image has {image.shape}. Use the "
                               "correction built for this camera and scale.")
    c = c.astype(np.float32)
    image /= c
    variance /= c * c
    if isinstance(correction, MaskedImage):
        mask |= correction.mask


def illumination_task(catalog_paths: Sequence[str], output_path: str | os.PathLike, config: IlluminationConfig,
                      meta: Mapping[str, Any] | None = None, verify: bool = False) -> dict[str, Any]:
    """Solve and write the ``illuminationCorrection`` (or, ``verify``, the verification) product."""
    cats = [read_catalog(p) for p in catalog_paths]
    fit = solve_illumination(cats, config)
    meta = {**(cats[0].meta if cats else {}), **dict(meta or {})}
    dev = float(np.max(np.abs(fit.correction - 1.0)))
    rms = float(np.sqrt(np.mean((fit.correction - 1.0) ** 2)))
    header = dict(meta or {})
    header.update({
        "OBSTYPE": "illuminationCorrection", "LSST ILLUM ORDER": fit.order, "LSST ILLUM NSTARS": fit.n_stars,
        "LSST ILLUM NMEAS": fit.n_measurements, "LSST ILLUM NEXP": fit.n_exposures,
        "LSST ILLUM RMS MMAG": fit.rms_mmag, "LSST ILLUM MAX DEVIATION": dev, "LSST ILLUM RMS DEVIATION": rms,
        "LSST ILLUM PTP": float(fit.correction.max() - fit.correction.min()),
    })
    for k, c in enumerate(fit.coeffs):
        header[f"LSST ILLUM COEFF {k}"] = c
    verdict = None
    if verify:
        verdict = rms < config.verify_max_deviation
        header["LSST ILLUM VERIFY THRESHOLD"] = config.verify_max_deviation
        header["LSST ILLUM VERIFY SUCCESS"] = bool(verdict)
    write_masked(output_path, fit.correction.astype(np.float32), np.zeros(fit.correction.shape, np.int32),
                 np.zeros(fit.correction.shape, np.float32), header)
    return {"path": str(output_path), "n_stars": fit.n_stars, "rms_mmag": fit.rms_mmag, "max_deviation": dev,
            "rms_deviation": rms, "success": verdict}


def read_correction(path: str | os.PathLike) -> MaskedImage:
    """An ``illuminationCorrection`` product (fits-masked)."""
    return read_masked(path)
