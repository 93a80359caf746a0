"""Science-frame check (stage ``SCIENCE``; cpframe's own definition, docs/verification.md).

cp_verify's ``verifyScience`` pipeline only runs ISR; cpframe adds measurable tests
so that a flat-fielded science exposure shows whether the calibrations left
structure behind.  The residual is a science exposure processed by ISR with bias,
dark, defects and flat (electrons); its sky background should be smooth and the
same on both sides of every amp boundary.

Per amp (masks DETECTED, BAD, NO_DATA and clipped pixels excluded):
``MEAN`` (clipped mean = background), ``NOISE`` (clipped stdev), ``COL_PROFILE_RATIO``
and ``ROW_PROFILE_RATIO``: the robust scatter of the column (row) median profile,
taken on first differences so a smooth sky gradient does not count, over its
pure-noise expectation ``1.2533 NOISE / sqrt(n)``.  A residual bias or dark column
pattern, or a bad flat's row structure, raises the ratio.

Per detector: ``BACKGROUND`` (clipped mean) and ``AMP_STEP_MAX``, the largest level
jump across an amp boundary (medians of 4-pixel strips on each side) relative to
the background.

Tests: amp ``COLUMN_STRUCTURE`` / ``ROW_STRUCTURE`` (ratio <= 3); detector
``AMP_STEP``: every boundary jump <= 1 % of the background + 5 x its statistical error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from cpframe.camera.models import Detector
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage
from cpframe.verify.stats import IQR_TO_SIGMA, ResidualImage, clipped_stats, mask_of

__all__ = ["SCIENCE", "check_science", "measure_science", "profile_ratio"]

#: sigma of a median of n Gaussian values = MEDIAN_EFFICIENCY * sigma / sqrt(n).
MEDIAN_EFFICIENCY = 1.2533


def profile_ratio(data: np.ndarray, axis: int, noise: float) -> float:
    """Robust scatter of the median profile along ``axis`` (NaN = excluded) over its noise expectation.

    ``axis=0`` collapses rows (one value per column: column structure); ``axis=1`` rows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        profile = np.nanmedian(data, axis=axis)
    n = np.sum(np.isfinite(data), axis=axis)
    good = np.isfinite(profile) & (n > 0)
    profile, n = profile[good], n[good]
    if profile.size < 4 or not (noise > 0):
        return math.nan
    diffs = np.diff(profile)
    q25, q75 = np.percentile(diffs, [25.0, 75.0])
    observed = IQR_TO_SIGMA * (q75 - q25) / math.sqrt(2.0)
    expected = MEDIAN_EFFICIENCY * noise / math.sqrt(float(np.median(n)))
    return float(observed / expected)


def _strip_median(values: np.ndarray) -> tuple[float, float, int]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(np.median(v)), float(IQR_TO_SIGMA * np.subtract(*np.percentile(v, [75.0, 25.0]))), int(v.size)


def _boundary_steps(image: np.ndarray, detector: Detector, width: int) -> list[dict]:
    """Level jumps across shared amp edges (horizontal and vertical neighbours)."""
    by_pos = {(a.row, a.col): a for a in detector.amps}
    steps = []
    for (r, c), a in sorted(by_pos.items()):
        for (dr, dc) in ((0, 1), (1, 0)):
            b = by_pos.get((r + dr, c + dc))
            if b is None:
                continue
            ays, axs = a.bbox
            bys, bxs = b.bbox
            if dc:  # a is left of b
                sa = image[ays, axs.stop - width:axs.stop]
                sb = image[bys, bxs.start:bxs.start + width]
            else:  # a is below b
                sa = image[ays.stop - width:ays.stop, axs]
                sb = image[bys.start:bys.start + width, bxs]
            ma, sda, na = _strip_median(sa)
            mb, sdb, nb = _strip_median(sb)
            err = MEDIAN_EFFICIENCY * math.hypot(sda / math.sqrt(max(na, 1)), sdb / math.sqrt(max(nb, 1)))
            steps.append({"pair": f"{a.name}-{b.name}", "step": mb - ma, "error": err})
    return steps


def measure_science(residual: ResidualImage, detector: Detector, config: VerifyConfig) -> dict:
    """Statistics of the SCIENCE stage (module docstring)."""
    exclude = mask_of(residual, config.mask_names) | ~np.isfinite(residual.image)
    work = np.where(exclude, np.nan, residual.image)
    amps: dict[str, dict] = {}
    for amp in detector.amps:
        ys, xs = amp.bbox
        data = work[ys, xs]
        clip = clipped_stats(data, config.n_sigma_clip, config.clip_max_iter)
        clipped = np.where((data >= clip.low) & (data <= clip.high), data, np.nan)
        work[ys, xs] = clipped
        amps[amp.name] = {
            "MEAN": clip.mean,
            "NOISE": clip.stdev,
            "COL_PROFILE_RATIO": profile_ratio(clipped, 0, clip.stdev),
            "ROW_PROFILE_RATIO": profile_ratio(clipped, 1, clip.stdev),
        }
    background = clipped_stats(work, config.n_sigma_clip, config.clip_max_iter).mean
    steps = _boundary_steps(work, detector, config.science_step_strip)
    rel = [abs(s["step"]) / abs(background) for s in steps if background]
    det = {
        "BACKGROUND": background,
        "AMP_STEP_MAX": float(max(rel)) if rel else math.nan,
        "STEPS": steps,
    }
    return {"METADATA": {}, "AMP": amps, "DET": det}


def check_science(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the SCIENCE stage (module docstring)."""
    out = {}
    for amp, s in stats["AMP"].items():
        out[amp] = {
            "COLUMN_STRUCTURE": bool(s["COL_PROFILE_RATIO"] <= config.science_structure_threshold),
            "ROW_STRUCTURE": bool(s["ROW_PROFILE_RATIO"] <= config.science_structure_threshold),
        }
    bg = abs(stats["DET"]["BACKGROUND"])
    ok = all(
        math.isfinite(s["step"]) and abs(s["step"]) <= config.science_step_threshold * bg + 5.0 * s["error"]
        for s in stats["DET"]["STEPS"]
    )
    return {"AMP": out, "DET": {"AMP_STEP": bool(ok)}}


SCIENCE = register_stage(Stage(
    name="SCIENCE", type_name="Science", kind="exposure", measure=measure_science, check=check_science,
))
