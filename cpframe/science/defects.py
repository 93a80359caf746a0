"""Defect finding on combined calibrations (cp_pipe ``MeasureDefectsTask`` + ``MergeDefectsCombinedTask``).

Also the simple cosmic-ray finder used by CpDark (:func:`find_cosmic_rays`).

Measure (spec algorithms.md §8), per amp of one combined bias, dark or flat:
m = clipped mean, s = clipped stdev of the amp; pixels beyond the threshold are bad:

==========  ====================================  ======================================
image       ``STDEV`` (default)                   ``VALUE``
==========  ====================================  ======================================
bias        none                                  value − m > ``bias_threshold`` (adu)
dark        value − m > ``n_sigma_bright``·s      value − m > ``dark_current_threshold``·t/g
flat        hot > 4.8 s, cold < −5 s              value < ``frac_threshold_flat``·m
==========  ====================================  ======================================

Then the column rules (saturated-column dilation, filling bad column blocks, whole
amp columns).  Merge: per image type the input made from the most exposures; the
fraction of inputs flagging a pixel > 0 (OR), AND or FRACTION; OR across types;
optional manual defects and edge borders.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.science.combine import clipped_stats
from cpframe.science.imageio import (
    MASK_BITS,
    MaskedImage,
    amp_boxes,
    boxes_to_mask,
    read_defects,
    write_defects,
)
from cpframe.science.configs.defects import (  # noqa: F401 (defined there, importable without the science stack)
    COMBINATION_MODES,
    DefectsConfig,
    MSG_BAD_VALUE,
    MSG_UNKNOWN_KEYS,
    THRESHOLD_TYPES,
)

__all__ = [
    "DefectsConfig",
    "DefectMeasurement",
    "DefectsResult",
    "measure_defects",
    "merge_defects",
    "mask_to_boxes",
    "find_cosmic_rays",
    "image_type_of",
]

log = logging.getLogger(__name__)

MSG_NO_INPUTS = ("defects merge: no measurements. Measure at least one combined bias, dark or flat "
                 "(defects_measure_task).")
MSG_SHAPES = "defects merge: measurements differ in shape: {detail}. Use calibrations of one detector."


@dataclass
class DefectMeasurement:
    """Defects found on one combined calibration."""

    image_type: str
    """bias, dark or flat."""
    n_inputs: int
    """Exposures the calibration was made from (``CPP_INPUT_*`` keys)."""
    bad: np.ndarray
    """Boolean image of defect pixels (after the column rules)."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per amp: hot, cold (pixels)."""
    path: str = ""
    header: dict[str, Any] = field(default_factory=dict)


@dataclass
class DefectsResult:
    """What :func:`merge_defects` returns."""

    path: str
    n_defects: int
    """Boxes written."""
    n_pixels: int
    """Pixels covered."""
    inputs: list[str]
    """Calibrations used, one per image type."""
    by_type: dict[str, int] = field(default_factory=dict)
    """Image type -> defect pixels found on it."""


def image_type_of(header: Mapping[str, Any]) -> str:
    """bias / dark / flat from ``IMGTYPE`` (falls back to ``OBSTYPE``); anything else is a flat."""
    t = str(header.get("IMGTYPE", header.get("OBSTYPE", ""))).strip().lower()
    return t if t in ("bias", "dark") else "flat"


def _n_inputs(header: Mapping[str, Any]) -> int:
    return sum(1 for k in header if str(k).startswith("CPP_INPUT_") and str(k)[len("CPP_INPUT_"):].isdigit())


def _smooth_surface(data: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Quadratic surface fitted to an amp (good pixels), for flat gradient removal."""
    yy, xx = np.mgrid[0:data.shape[0], 0:data.shape[1]]
    y = yy / max(1, data.shape[0] - 1) * 2 - 1
    x = xx / max(1, data.shape[1] - 1) * 2 - 1
    terms = [np.ones_like(x), x, y, x * x, x * y, y * y]
    a = np.stack([t[good] for t in terms], axis=1)
    coef, *_ = np.linalg.lstsq(a, data[good].astype(np.float64), rcond=None)
    return sum(c * t for c, t in zip(coef, terms))


def measure_defects(calib: MaskedImage, config: DefectsConfig, gains: Mapping[str, float] | None = None,
                    path: str = "") -> DefectMeasurement:
    """Hot/cold pixels of one combined calibration (spec §8 measure, column rules included)."""
    header = calib.header
    itype = image_type_of(header)
    image = calib.image
    shape = image.shape
    usable = (calib.mask & (1 << MASK_BITS["NO_DATA"])) == 0
    bad = np.zeros(shape, bool)
    counts: dict[str, dict[str, int]] = {}
    ttype = getattr(config, f"threshold_type_{itype}")
    t_exp = float(header.get("EXPTIME", 1.0) or 1.0) if itype == "dark" else 1.0
    if not math.isfinite(t_exp) or t_exp == 0:
        t_exp = 1.0
    if itype == "bias" and ttype == "STDEV":
        log.warning("defects on a bias with thresholdType STDEV: no threshold defined; nothing measured.")
    for name, bbox in amp_boxes(header, shape):
        data = image[bbox].astype(np.float64)
        good = usable[bbox] & np.isfinite(data)
        if not good.any():
            continue
        if itype == "flat" and config.fit_amp_gradient:
            surf = _smooth_surface(data, good)
            data = data / surf * np.mean(surf[good])
        m, s, _ = clipped_stats(data[good])
        hot = np.zeros(data.shape, bool)
        cold = np.zeros(data.shape, bool)
        with np.errstate(invalid="ignore"):
            if ttype == "STDEV":
                if s > 0 and itype in ("dark", "flat"):
                    hot = data - m > config.n_sigma_bright * s
                if s > 0 and itype == "flat":
                    cold = data - m < config.n_sigma_dark * s
            else:
                if itype == "bias":
                    hot = data - m > config.bias_threshold
                elif itype == "dark":
                    g = (gains or {}).get(name)
                    if g is None:
                        g = _header_gain(header, name)
                    hot = data - m > config.dark_current_threshold * t_exp / g
                else:
                    cold = data < config.frac_threshold_flat * m
        hot &= good
        cold &= good
        # non-finite pixels of a usable region are defects too
        cold |= usable[bbox] & ~np.isfinite(data)
        bad[bbox] |= hot | cold
        counts[name] = {"hot": int(hot.sum()), "cold": int(cold.sum())}
    sat = (calib.mask & (1 << MASK_BITS["SAT"])) != 0
    bad = _column_rules(bad, sat, header, config)
    return DefectMeasurement(image_type=itype, n_inputs=_n_inputs(header), bad=bad, counts=counts, path=path,
                             header={k: header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE",
                                                            "CALIBDATE") if k in header})


def _header_gain(header, amp: str) -> float:
    try:
        g = float(header.get(f"LSST ISR GAIN {amp}", 1.0))
    except (TypeError, ValueError):
        g = 1.0
    return g if math.isfinite(g) and g > 0 else 1.0


def _column_rules(bad: np.ndarray, sat: np.ndarray, header, config: DefectsConfig) -> np.ndarray:
    bad = bad.copy()
    r = int(config.saturated_column_dilation_radius)
    if r > 0 and sat.any():
        ys, xs = np.nonzero(sat)
        for d in range(-r, r + 1):
            bad[ys, np.clip(xs + d, 0, bad.shape[1] - 1)] = True
    elif sat.any():
        bad |= sat
    for _, bbox in amp_boxes(header, bad.shape):
        sub = bad[bbox]
        ssub = sat[bbox]
        n_bad_col = sub.sum(axis=0)
        for c in np.flatnonzero(n_bad_col >= config.bad_on_and_off_pixel_column_threshold):
            rows = np.flatnonzero(sub[:, c])
            lo, hi = rows[0], rows[-1]
            col = sub[lo:hi + 1, c]
            # fill the gaps shorter than the good-pixel gap threshold
            good_runs = _runs(~col)
            for start, length in good_runs:
                if length < config.good_pixel_column_gap_threshold:
                    col[start:start + length] = True
            sub[lo:hi + 1, c] = col
        if config.bad_pixels_to_fill_column_threshold >= 0:
            full = sub.sum(axis=0) >= config.bad_pixels_to_fill_column_threshold
            sub[:, full] = True
        if config.saturated_pixels_to_fill_column_threshold >= 0:
            full = ssub.sum(axis=0) >= config.saturated_pixels_to_fill_column_threshold
            sub[:, full] = True
        bad[bbox] = sub
    return bad


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the True runs of a 1-d boolean array."""
    f = np.concatenate([[False], flags.astype(bool), [False]])
    d = np.diff(f.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def mask_to_boxes(bad: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover a boolean image exactly with boxes ``(x0, y0, width, height)``.

    Runs along rows are merged with identical runs in the rows above, so a bad column
    is one box.

    >>> m = np.zeros((4, 5), bool); m[:, 2] = True; m[0, 0] = True
    >>> sorted(mask_to_boxes(m))
    [(0, 0, 1, 1), (2, 0, 1, 4)]
    """
    open_boxes: dict[tuple[int, int], list[int]] = {}  # (x0, width) -> [y0, height]
    done: list[tuple[int, int, int, int]] = []
    for y in range(bad.shape[0]):
        runs = set(_runs(bad[y])) if bad[y].any() else set()
        for key in list(open_boxes):
            if key not in runs:
                y0, h = open_boxes.pop(key)
                done.append((key[0], y0, key[1], h))
        for key in runs:
            if key in open_boxes:
                open_boxes[key][1] += 1
            else:
                open_boxes[key] = [y, 1]
    for key, (y0, h) in open_boxes.items():
        done.append((key[0], y0, key[1], h))
    return [(int(x), int(y), int(w), int(h)) for x, y, w, h in done]


def merge_defects(measurements: Sequence[DefectMeasurement], output_path: str | os.PathLike,
                  config: DefectsConfig, manual_defects_path: str | os.PathLike | None = None,
                  meta: Mapping[str, Any] | None = None) -> DefectsResult:
    """OR-merge (spec §8 merge) and write an ecsv-defects file."""
    if not measurements:
        raise UserInputError(MSG_NO_INPUTS)
    shapes = {m.bad.shape for m in measurements}
    if len(shapes) > 1:
        raise UserInputError(MSG_SHAPES.format(detail=", ".join(f"{m.path or m.image_type}: {m.bad.shape}"
                                                                  for m in measurements)))
    shape = measurements[0].bad.shape
    by_type: dict[str, list[DefectMeasurement]] = {}
    for m in measurements:
        by_type.setdefault(m.image_type, []).append(m)
    total = np.zeros(shape, bool)
    used: list[str] = []
    per_type: dict[str, int] = {}
    for itype, group in by_type.items():
        most = max(m.n_inputs for m in group)
        chosen = [m for m in group if m.n_inputs == most]
        frac = np.mean([m.bad for m in chosen], axis=0)
        if config.combination_mode == "OR":
            flagged = frac > 0
        elif config.combination_mode == "AND":
            flagged = frac >= 1.0
        else:
            flagged = frac > config.combination_fraction
        per_type[itype] = int(flagged.sum())
        total |= flagged
        used.extend(m.path for m in chosen)
    if manual_defects_path:
        total |= boxes_to_mask(read_defects(manual_defects_path)[0], shape)
    if config.edges_as_defects:
        bx, by = int(config.n_pix_border_left_right), int(config.n_pix_border_up_down)
        if bx:
            total[:, :bx] = True
            total[:, shape[1] - bx:] = True
        if by:
            total[:by, :] = True
            total[shape[0] - by:, :] = True
    boxes = mask_to_boxes(total)
    info = dict(measurements[0].header)
    out_meta = {"instrument": info.get("INSTRUME", ""), "detector": info.get("DETECTOR", -1),
                "calib_date": info.get("CALIBDATE", ""), "n_pixels": int(total.sum()),
                "n_defects": len(boxes), "combination_mode": config.combination_mode,
                "inputs": [Path(p).name for p in used if p]}
    out_meta.update({f"n_pixels_{t}": n for t, n in per_type.items()})
    out_meta.update(dict(meta or {}))
    write_defects(output_path, boxes, out_meta)
    return DefectsResult(path=str(output_path), n_defects=len(boxes), n_pixels=int(total.sum()), inputs=used,
                         by_type=per_type)


# --------------------------------------------------------------------------------------
# cosmic rays (CpDark)
# --------------------------------------------------------------------------------------
def find_cosmic_rays(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, config) -> tuple[np.ndarray, int]:
    """Simple CR finder: sharp positive outliers above the local median, grown.

    Pixels with ``SAT`` or ``BAD`` are first replaced by the local median (so defects are
    not taken for cosmic rays).  A pixel is a CR candidate when it is more than
    ``min_sigma``·σ (σ from the variance plane) and ``min_dn`` above the local median,
    and more than ``neighbour_factor``·σ above the mean of its 8 neighbours.  Candidates
    are grouped (8-connected); neighbours of a group above ``min_sigma/2``·σ join it;
    the result is grown by ``cr_grow`` pixels.

    Returns
    -------
    (numpy.ndarray of bool, int)
        CR mask and number of groups.
    """
    from scipy import ndimage

    img = image.astype(np.float32, copy=True)
    skip = (mask & ((1 << MASK_BITS["SAT"]) | (1 << MASK_BITS["BAD"]))) != 0
    finite = np.isfinite(img)
    size = int(config.median_size)
    filled = np.where(finite, img, np.float32(0.0))
    if size % 2:  # compiled, value for value scipy's (cpframe/science/filters.py): 6 s -> 0.3 s per full detector
        from cpframe.science.filters import median_filter_nearest

        med = median_filter_nearest(filled, size)
    else:
        med = ndimage.median_filter(filled, size=size, mode="nearest")
    img[skip | ~finite] = med[skip | ~finite]
    sigma = np.sqrt(np.clip(variance, 0, None)).astype(np.float32)
    sigma_floor = float(np.median(sigma[np.isfinite(sigma)])) if np.isfinite(sigma).any() else 1.0
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, sigma_floor)
    excess = img - med
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = 0
    neigh = ndimage.convolve(img, kernel / 8.0, mode="nearest")
    cand = (excess > config.min_sigma * sigma) & (excess > config.min_dn) & (img - neigh > config.neighbour_factor
                                                                               * sigma)
    cand &= ~skip
    if not cand.any():
        return cand, 0
    # extend into the faint wings of each track
    wings = (excess > 0.5 * config.min_sigma * sigma) & ~skip
    grown = ndimage.binary_dilation(cand, structure=np.ones((3, 3), bool)) & wings | cand
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    if config.cr_grow > 0:
        g = 2 * int(config.cr_grow) + 1
        grown = ndimage.binary_dilation(grown, structure=np.ones((g, g), bool))
    if grown.sum() > config.n_cr_pixel_max:
        log.warning("CR finder: %d CR pixels exceed nCrPixelMax=%d; keeping them anyway.",
                    int(grown.sum()), config.n_cr_pixel_max)
    return grown, int(n)
