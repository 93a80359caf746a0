"""Gain correction: per-amp adjustments of the PTC gains measured from a new flat (cp_pipe ``cpGainCorrection``).

After a detector restart the amplifier gains move by a few tenths of a percent; the PTC's
gains are then slightly wrong and every ISR-processed image shows small steps at the amp
boundaries that the (older) certified flat does not remove.  cp_pipe measures them from a
flat taken after the restart (``flat_gain_correction``: ISR with the PTC gains and no gain
correction, combined like a flat) divided by the certified reference flat.

**Measure** (:func:`measure_gain_correction`; cp_pipe ``CpMeasureGainCorrectionTask``):

1. ``ratio = flat / reference`` per pixel (pixels masked ``BAD``, ``SAT``, ``NO_DATA`` or
   non-finite in either are left out), binned per amp in ``bin_factor`` x ``bin_factor`` blocks
   after dropping ``amp_boundary`` pixels at every amp edge (cp_pipe ``bin_flat``).
2. Outlying bins (more than ``ratio_outlier_nsig_clip`` robust sigmas from the median ratio)
   are dropped.
3. Model: ``ratio(x, y) = S(x, y) r_amp``, with S a tensor Chebyshev surface of order
   ``chebyshev_gradient_order`` over the detector and one factor per amp (the PTC's reference
   amp fixed at 1; it is the median-gain amp among those with read noise below
   ``max_noise_reference`` and a turnoff above the ``turnoff_percentile_reference`` percentile).
   cpframe solves it as one linear least-squares problem in ``log ratio`` and iterates with
   bins further than ``chebyshev_gradient_nsig_clip`` robust sigmas from the model left out
   (cp_pipe alternates a Chebyshev fit and per-amp medians: the same model).
4. An amp whose factor differs from the median by more than ``max_fractional_gain_ratio`` is
   left out and the fit repeated (at most n_amp / 2 times); it keeps an adjustment of 1, as does an
   amp all of whose bins step 2 dropped (both are listed in the product's ``excluded_amps``).
5. ``adjustment_amp = 1 / r_amp``, divided by the median amp's value (cp_pipe's choice of
   the amp at index n/2 of the sorted values), so that the median amp is 1 exactly.

**Apply** (ip_isr ``GainCorrection.correctGains``, ``doCorrectGains``): ISR multiplies each PTC
gain by its adjustment before converting to electrons (:mod:`cpframe.science.isr`).

*Deliberate difference*: cp_pipe stores the flat ratio itself (``r_amp``) as the adjustment.
ip_isr multiplies the gain by it; an amp whose gain went up gives fewer counts, a ratio below 1,
and would need a gain *above* the PTC's.  cpframe stores ``1 / r_amp``, the factor that makes
the amp-boundary steps vanish in ISR (``tests/test_gain_correction.py`` checks both the
values against the simulator's truth and the steps).  ``do_remove_radial_gradient`` (a
focal-plane radial spline fitted first) is accepted and not applied: the ratio of two flats
of the same band has no radial structure left that the Chebyshev surface does not absorb.

The product is a ``json`` file (:func:`write_gain_correction`).
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
from cpframe.science.configs.gain_correction import (  # noqa: F401 (defined there, importable without the science stack)
    GainCorrectionConfig,
)

__all__ = [
    "GainCorrectionConfig",
    "GainCorrection",
    "choose_reference_amp",
    "measure_gain_correction",
    "write_gain_correction",
    "read_gain_correction",
    "gain_correction_task",
]

FORMAT = "cpframe-gain-correction"
VERSION = 1
_BAD_PLANES = ("BAD", "SAT", "NO_DATA", "UNMASKEDNAN", "VIGNETTED")
MSG_NO_MATCH = ("gain correction: no reference flat with physical_filter {filt!r} (found: {found}); certify the "
                "{filt} flat in the input collections (cp_pipe raises NoWorkFound here).")
MSG_SHAPE = "gain correction: flat {a} has shape {sa} but the reference flat {b} has shape {sb}; use flats of one camera."


@dataclass
class GainCorrection:
    """Per-amp gain adjustments: ISR multiplies each PTC gain by its value (ip_isr ``GainCorrection``)."""

    adjustments: dict[str, float]
    """amp -> factor on the PTC gain (median amp 1)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Instrument, detector, filter, reference amp, excluded amps, bins used."""
    path: str = ""

    def correct(self, gains: Mapping[str, float]) -> dict[str, float]:
        """The gains multiplied by the adjustments (amps without one keep their gain).

        >>> GainCorrection({"C00": 1.01}).correct({"C00": 2.0, "C01": 1.5})
        {'C00': 2.02, 'C01': 1.5}
        """
        return {a: g * self.adjustments.get(a, 1.0) for a, g in gains.items()}


def choose_reference_amp(ptc: Mapping[str, Mapping[str, Any]], amp_names: Sequence[str],
                         cfg: GainCorrectionConfig) -> int:
    """Index of the fixed amp: median gain among the quiet amps with a high enough turnoff; -1 if < 2 qualify.

    >>> ptc = {"A": {"gain": 1.0, "noise": 5, "turnoff": 9e4}, "B": {"gain": 1.2, "noise": 5, "turnoff": 9e4},
    ...        "C": {"gain": 1.1, "noise": 30, "turnoff": 9e4}}
    >>> choose_reference_amp(ptc, ["A", "B", "C"], GainCorrectionConfig())
    1
    """
    gains = np.array([float(ptc.get(a, {}).get("gain", np.nan)) for a in amp_names])
    noise = np.array([float(ptc.get(a, {}).get("noise", np.nan)) for a in amp_names])
    turnoff = np.array([float(ptc.get(a, {}).get("turnoff", np.nan)) for a in amp_names])
    gains[~(noise <= cfg.max_noise_reference)] = np.nan
    if np.isfinite(turnoff).any():
        gains[turnoff < np.nanpercentile(turnoff, cfg.turnoff_percentile_reference)] = np.nan
    good = np.flatnonzero(np.isfinite(gains))
    if len(good) <= 1:
        return -1
    return int(good[np.argsort(gains[good])[len(good) // 2]])


def _bin_ratio(ratio: np.ndarray, det, cfg: GainCorrectionConfig) -> tuple[np.ndarray, ...]:
    """(x, y, value, amp index) of the binned ratio, detector pixel coordinates of bin centres."""
    xs, ys, vs, idx = [], [], [], []
    b, edge = cfg.bin_factor, cfg.amp_boundary
    for i, amp in enumerate(det.amps):
        sy, sx = amp.bbox
        arr = ratio[sy, sx]
        ny, nx = (arr.shape[0] - 2 * edge) // b, (arr.shape[1] - 2 * edge) // b
        if ny <= 0 or nx <= 0:
            continue
        arr = arr[edge:edge + ny * b, edge:edge + nx * b].reshape(ny, b, nx, b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
            binned = np.nanmean(np.nanmean(arr, axis=3), axis=1)
        yy, xx = np.meshgrid(sy.start + edge + b * (np.arange(ny) + 0.5), sx.start + edge + b * (np.arange(nx) + 0.5),
                             indexing="ij")
        xs.append(xx.ravel())
        ys.append(yy.ravel())
        vs.append(binned.ravel())
        idx.append(np.full(binned.size, i))
    return tuple(np.concatenate(a) for a in (xs, ys, vs, idx))


def _robust_sigma(v: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _fit(x, y, logv, amp, n_amp, fixed, order, shape, nsig, n_iter=5) -> np.ndarray:
    """log r per amp (fixed amp 0; NaN for amps without bins) of log v = Σ c T_i(x) T_j(y) + log r_amp."""
    from numpy.polynomial import chebyshev as C

    xn = 2.0 * x / shape[1] - 1.0
    yn = 2.0 * y / shape[0] - 1.0
    surf = C.chebvander2d(xn, yn, [order, order])
    present = [a for a in range(n_amp) if a != fixed and np.any(amp == a)]
    cols = np.zeros((len(x), len(present)))
    for j, a in enumerate(present):
        cols[amp == a, j] = 1.0
    design = np.hstack([surf, cols])
    use = np.ones(len(x), dtype=bool)
    coef = np.zeros(design.shape[1])
    for _ in range(n_iter):
        coef, *_ = np.linalg.lstsq(design[use], logv[use], rcond=None)
        resid = logv - design @ coef
        sig = max(_robust_sigma(resid[use]), 1e-12)
        new = np.abs(resid) <= nsig * sig
        if np.array_equal(new, use):
            break
        use = new
    out = np.full(n_amp, np.nan)
    out[fixed] = 0.0
    out[present] = coef[surf.shape[1]:]
    return out


def measure_gain_correction(flat: np.ndarray, reference: np.ndarray, det, ptc: Mapping[str, Mapping[str, Any]],
                            config: GainCorrectionConfig | Mapping[str, Any] | None = None, *,
                            flat_mask: np.ndarray | None = None, reference_mask: np.ndarray | None = None,
                            meta: Mapping[str, Any] | None = None) -> GainCorrection:
    """Per-amp gain adjustments from a new flat and the reference flat of the same filter (module docstring).

    Parameters
    ----------
    flat, reference
        Assembled detector images (electrons or normalised; only their ratio matters).
    det
        The camera-model detector (amp boxes in the assembled image).
    ptc
        amp -> {gain, noise, turnoff} (:func:`cpframe.science.imageio.read_ptc`): the fixed amp.

    Raises
    ------
    UserInputError
        The two images differ in shape.
    """
    cfg = config if isinstance(config, GainCorrectionConfig) else GainCorrectionConfig.from_dict(config)
    names = [a.name for a in det.amps]
    info: dict[str, Any] = dict(meta or {})
    if flat.shape != reference.shape:
        raise UserInputError(MSG_SHAPE.format(a="", sa=flat.shape, b="", sb=reference.shape))
    bad_bits = sum(1 << MASK_BITS[p] for p in _BAD_PLANES)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(flat, np.float64) / np.asarray(reference, np.float64)
    bad = ~np.isfinite(ratio) | (np.asarray(reference) <= 0)
    for m in (flat_mask, reference_mask):
        if m is not None:
            bad |= (np.asarray(m) & bad_bits) != 0
    ratio[bad] = np.nan
    x, y, v, amp = _bin_ratio(ratio, det, cfg)
    ok = np.isfinite(v) & (v > 0)
    med = float(np.median(v[ok])) if ok.any() else math.nan
    sig = max(_robust_sigma(v[ok]), 0.01 * abs(med)) if ok.any() else math.nan  # cp_pipe: sigma >= 0.01
    ok &= np.abs(v - med) <= cfg.ratio_outlier_nsig_clip * sig
    fixed = choose_reference_amp(ptc, names, cfg)
    info.update(fixed_amp=names[fixed] if fixed >= 0 else None, n_bins=int(ok.sum()))
    adjustments = {a: 1.0 for a in names}
    if fixed < 0 or not ok.any():
        info["excluded_amps"] = names if fixed < 0 else []
        info["note"] = "fewer than two amps qualify as the fixed amp: every adjustment is 1"
        return GainCorrection(adjustments, json_ready(info))
    excluded: list[int] = []
    keep = ok.copy()
    for _ in range(max(1, len(names) // 2)):
        logr = _fit(x[keep], y[keep], np.log(v[keep]), amp[keep], len(names), fixed, cfg.chebyshev_gradient_order,
                    det.shape, cfg.chebyshev_gradient_nsig_clip)
        r = np.exp(logr)
        frac = np.abs(r / np.nanmedian(r) - 1.0)
        frac[excluded] = -1.0
        worst = int(np.nanargmax(frac))
        if not frac[worst] > cfg.max_fractional_gain_ratio or worst == fixed:
            break
        excluded.append(worst)
        keep &= amp != worst
    adj = 1.0 / r
    adj[excluded] = np.nan
    excluded = sorted(set(excluded) | set(np.flatnonzero(~np.isfinite(adj)).tolist()))  # + amps left without bins
    good = np.flatnonzero(np.isfinite(adj))
    ref = good[np.argsort(adj[good])[len(good) // 2]]
    adj = adj / adj[ref]
    for i, a in enumerate(names):
        adjustments[a] = float(adj[i]) if np.isfinite(adj[i]) else 1.0
    info.update(excluded_amps=[names[i] for i in excluded], median_amp=names[int(ref)],
                flat_ratio_per_amp={a: float(r[i]) for i, a in enumerate(names)})
    return GainCorrection(adjustments, json_ready(info))


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def write_gain_correction(path: str | os.PathLike, calib: GainCorrection) -> Path:
    """Write the gain correction as JSON, atomically (umask honoured)."""
    doc = {"format": FORMAT, "version": VERSION, "meta": json_ready(dict(calib.meta)),
           "amp_names": list(calib.adjustments), "gain_adjustments": [float(v) for v in calib.adjustments.values()]}
    return write_json(path, doc)


def read_gain_correction(path: str | os.PathLike) -> GainCorrection:
    """Read a cpframe gain-correction JSON file.

    Raises
    ------
    FileFormatError
        Unreadable, another format or version, or amp names and adjustments of different lengths.
    """
    p = str(path)
    doc = read_json_product(p, FORMAT, VERSION, "gain correction", FileFormatError)
    names, values = list(doc.get("amp_names") or []), list(doc.get("gain_adjustments") or [])
    if len(names) != len(values):
        raise FileFormatError(f"{p}: {len(names)} amp names but {len(values)} gain adjustments; the file is damaged.")
    return GainCorrection({str(a): float(v) for a, v in zip(names, values)}, dict(doc.get("meta") or {}), p)


# --------------------------------------------------------------------------------------
# task
# --------------------------------------------------------------------------------------
def gain_correction_task(flat_path: str, reference_paths: Sequence[str], ptc_path: str, output_path: str | os.PathLike,
                         config: GainCorrectionConfig | Mapping[str, Any] | None = None,
                         detector=None) -> GainCorrection:
    """cpMeasureGainCorrection for one detector: files in, ``gain_correction`` json out.

    The reference flat is the one of ``reference_paths`` with the new flat's physical filter.

    Raises
    ------
    UserInputError
        No reference flat of that filter.
    """
    from cpframe.science.imageio import read_header, read_masked, read_ptc

    new = read_masked(flat_path)
    filt = str(new.header.get("FILTER", ""))
    refs = {str(read_header(p).get("FILTER", "")): p for p in reference_paths}
    if filt not in refs:
        raise UserInputError(MSG_NO_MATCH.format(filt=filt, found=", ".join(sorted(refs)) or "none"))
    ref = read_masked(refs[filt])
    if new.shape != ref.shape:
        raise UserInputError(MSG_SHAPE.format(a=flat_path, sa=new.shape, b=refs[filt], sb=ref.shape))
    ptc, _ = read_ptc(ptc_path)
    if detector is None:
        from cpframe.camera.models import load_camera

        h = new.header
        detector = load_camera(str(h["INSTRUME"]), str(h.get("CAMSCALE", "full")).lower()).detector(int(h["DETECTOR"]))
    meta = {k: new.header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE", "FILTER") if k in new.header}
    meta.update(OBSTYPE="gain_correction", input_flat=os.path.basename(flat_path),
                reference_flat=os.path.basename(refs[filt]))
    calib = measure_gain_correction(new.image, ref.image, detector, ptc, config, flat_mask=new.mask,
                                    reference_mask=ref.mask, meta=meta)
    calib.path = str(write_gain_correction(output_path, calib))
    return calib
