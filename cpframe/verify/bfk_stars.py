"""Brighter-fatter kernel verification on stars (stage ``BFK_STARS``; cp_verify's ``CpVerifyBfkTask``).

cp_verify's verifyBfk pipeline processes the same science exposures twice, with the kernel
under test (``verifyBfkIsr``) and without it (``verifyUncorrectedBfkIsr``), measures the stars
of both (``CharacterizeImageTask``: cpframe's ``starMeasure``) and compares them per exposure x
detector.  Brighter-fatter makes bright stars broader than faint ones; the correction shrinks
them back, so the size difference ``uncorrected − corrected`` grows with brightness.

Statistics (detector), from the two star catalogues matched within ``bfk_match_radius`` px:

* ``NUM_MATCHES``; ``BRIGHT_SLOPE``: ``α`` of cp_verify's fit ``d(m) = A exp(α (m − m0))`` of the
  size difference ``d`` (trace ``Ixx + Iyy``, px²) against the instrumental magnitude
  ``m = −2.5 log10(flux)`` (robust Cauchy loss, as cp_verify); ``FIT_SUCCESS``.
* cpframe's own: ``SIZE_SLOPE`` / ``UNCORRECTED_SIZE_SLOPE``: slope of size against flux
  (px² per 10⁶ e-, a straight line through the matched stars weighted by their size errors, Cauchy loss) with and without
  the correction, and ``SLOPE_RATIO`` = |corrected| / |uncorrected|.

Tests (detector): ``BRIGHT_SLOPE``: the fit succeeded and ``α < bfk_bright_slope_max`` (−0.5,
cp_verify's limit: the correction grows by at least a factor e per 2 magnitudes);
``NUM_MATCHES``: more than ``bfk_min_matches`` (10, cp_verify's).  Deliberate difference:
cp_verify passes an exposure with too few matches (its SUCCESS fails only when there are
enough matches and the slope is wrong); cpframe fails it (a check on nothing is not a pass).
``SIZE_SLOPE_REDUCED`` (cpframe's): ``SLOPE_RATIO ≤ bfk_max_slope_ratio`` (0.5): the kernel
removes at least half of the size–flux slope.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, finish_stats, register_stage

__all__ = ["BFK_STARS", "bright_slope", "check_bfk_stars", "measure_bfk_stars", "verify_star_sizes"]


def _exp_model(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    return p[0] * np.exp(p[1] * (m - p[2]))


def bright_slope(mag: np.ndarray, diff: np.ndarray) -> tuple[float, bool]:
    """(α, success) of the robust exponential fit ``diff = A exp(α (mag − m0))`` (module docstring).

    >>> m = np.linspace(-16, -11, 30)
    >>> a, ok = bright_slope(m, 0.2 * np.exp(-0.9 * (m + 16)))
    >>> ok, round(a, 3)
    (True, -0.9)
    """
    from scipy.optimize import least_squares

    mag, diff = np.asarray(mag, float), np.asarray(diff, float)
    ok = np.isfinite(mag) & np.isfinite(diff)
    if ok.sum() < 3:
        return math.nan, False
    mag, diff = mag[ok], diff[ok]
    # start from cp_verify's (A=0 is a flat start; a scale from the data converges on the same optimum faster)
    p0 = [float(np.median(np.abs(diff))) or 1e-3, -0.01, float(np.median(mag))]
    fit = least_squares(lambda p: diff - _exp_model(p, mag), p0, loss="cauchy")
    return float(fit.x[1]), bool(fit.success)


def _size_slope(flux: np.ndarray, flux_err: np.ndarray, size: np.ndarray) -> float:
    """Slope of size (px²) against flux (per 10⁶ e-): straight line, each star weighted by its size error
    (≈ 2 size / (S/N), plus a 0.2 % floor), Cauchy loss."""
    from scipy.optimize import least_squares

    ok = np.isfinite(flux) & np.isfinite(size) & np.isfinite(flux_err) & (flux_err > 0)
    if ok.sum() < 3:
        return math.nan
    f, s = flux[ok] / 1e6, size[ok]
    err = 2.0 * s * flux_err[ok] / flux[ok] + 0.002 * s
    fit = least_squares(lambda p: (s - (p[0] + p[1] * f)) / err, [float(np.median(s)), 0.0], loss="cauchy")
    return float(fit.x[1])


def measure_bfk_stars(corrected: str | Path, detector: Detector, config: VerifyConfig, nominal=None,
                      uncorrected: str | Path | None = None) -> dict:
    """Statistics of the BFK_STARS stage from two star catalogues (module docstring)."""
    from scipy.spatial import cKDTree

    from cpframe.science.illumination import read_catalog

    if uncorrected is None:
        raise UserInputError("stage BFK_STARS compares the stars of an image processed with and without the "
                             "kernel; pass the uncorrected catalogue (verifyUncorrectedBfkIcSrc).")
    cats = []
    for p in (corrected, uncorrected):
        if not Path(p).is_file():
            raise UserInputError(f"{p}: no star catalogue; the BFK_STARS verification reads the starMeasure "
                                 "outputs of the corrected and uncorrected images (cp_verify verifyBfk).")
        cat = read_catalog(p)
        if cat.size is None:
            raise UserInputError(f"{p}: the star catalogue has no sizes (made by an older cpframe); run "
                                 "starMeasure again.")
        cats.append(cat)
    cor, unc = cats
    mags: list[float] = []
    diffs: list[float] = []
    idx_c: list[int] = []
    idx_u: list[int] = []
    if len(cor.x) and len(unc.x):
        tree = cKDTree(np.column_stack([unc.y, unc.x]))
        d, j = tree.query(np.column_stack([cor.y, cor.x]), distance_upper_bound=config.bfk_match_radius)
        for i, (dist, k) in enumerate(zip(d, j)):
            if math.isfinite(dist) and cor.flux[i] > 0:
                idx_c.append(i), idx_u.append(int(k))
    ic, iu = np.asarray(idx_c, int), np.asarray(idx_u, int)
    if ic.size:
        mags = list(-2.5 * np.log10(cor.flux[ic]))
        diffs = list(unc.size[iu] - cor.size[ic])
    slope, success = bright_slope(np.asarray(mags), np.asarray(diffs))
    s_cor = _size_slope(cor.flux[ic], cor.flux_err[ic], cor.size[ic]) if ic.size else math.nan
    s_unc = _size_slope(unc.flux[iu], unc.flux_err[iu], unc.size[iu]) if iu.size else math.nan
    ratio = abs(s_cor) / abs(s_unc) if math.isfinite(s_cor) and math.isfinite(s_unc) and s_unc != 0 else math.nan
    det = {"NUM_MATCHES": int(ic.size), "BRIGHT_SLOPE": slope, "FIT_SUCCESS": success, "SIZE_SLOPE": s_cor,
           "UNCORRECTED_SIZE_SLOPE": s_unc, "SLOPE_RATIO": ratio,
           "MEDIAN_SIZE": float(np.median(cor.size[ic])) if ic.size else math.nan}
    return {"METADATA": {"N_CORRECTED": len(cor.x), "N_UNCORRECTED": len(unc.x)}, "AMP": {}, "DET": det,
            "CATALOG": {"MAGNITUDES": [float(x) for x in mags], "SIZE_DIFF": [float(x) for x in diffs]},
            "HEADER": {"EXPID": cor.exposure, "FILTER": cor.physical_filter, **cor.meta}}


def check_bfk_stars(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the BFK_STARS stage (module docstring)."""
    d = stats["DET"]
    slope, ratio = d["BRIGHT_SLOPE"], d["SLOPE_RATIO"]
    return {"AMP": {}, "DET": {
        "BRIGHT_SLOPE": bool(d["FIT_SUCCESS"] and math.isfinite(slope) and slope < config.bfk_bright_slope_max),
        "NUM_MATCHES": bool(d["NUM_MATCHES"] > config.bfk_min_matches),
        "SIZE_SLOPE_REDUCED": bool(math.isfinite(ratio) and ratio <= config.bfk_max_slope_ratio)}}


BFK_STARS = register_stage(Stage(name="BFK_STARS", type_name="Bfk", kind="exposure", measure=measure_bfk_stars,
                                 check=check_bfk_stars, calib_type="bfk"))


def verify_star_sizes(corrected: str | Path, uncorrected: str | Path, detector: Detector,
                      config: VerifyConfig | Mapping[str, Any] | None = None, *,
                      data_id: Mapping[str, Any] | None = None) -> dict:
    """Measure and test one exposure x detector's star catalogues (stage BFK_STARS)."""
    from cpframe.verify.core import _data_id

    cfg = config if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(config)
    measured = measure_bfk_stars(corrected, detector, cfg, uncorrected=uncorrected)
    header = measured.pop("HEADER", {})
    stats = {"STAGE": BFK_STARS.name, "DATA_ID": _data_id(detector, header, data_id), "MJD": math.nan, **measured}
    return finish_stats(BFK_STARS, stats, check_bfk_stars(stats, cfg))
