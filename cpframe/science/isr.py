# Long module: every ISR step in cp_pipe order (overscan, crosstalk, linearity, CTI, gains, bias, dark, defects, brighter-fatter, flat, variance) with its header records, so the order a raw goes through is read top to bottom in one file.
"""Instrument signature removal (ISR) of one exposure x detector, numpy-vectorised.

Steps run in the order of ip_isr ``IsrTaskLSST.run`` (spec algorithms.md §1-§3):

 1. check inputs (every enabled step has its calibration; all problems reported at once)
 2. int -> float (variance 0, mask 0; see docs/algorithms.md for why not 1)
 3. bad amps (amps fully covered by defects)
 4. dither (``integer_dither_mode``, seed = exposure id & 0xFFFFFFFF)
 5. serial overscan per amp: ``MEDIAN_PER_ROW`` with the §2 clipping, 3 leading/trailing
    columns skipped; residual statistics (the empirical read noise) into the header
 6. saturation / suspect masking
 7. gains (electrons) and the per-amp ``LSST ISR GAIN|READNOISE|PTCTURNOFF`` keys
 8. crosstalk (linear, optionally quadratic) on the read-out-ordered segments
 9. parallel overscan per amp (one value per column)
10. linearity (per amp, in adu: :mod:`cpframe.science.linearity`)
11. assembly with flips into the detector image
12. bias, dark (scaled by dark time), defects -> ``BAD``, NaN -> ``UNMASKEDNAN``
13. variance (image/g + (σ_RN/g)² added), flat, standard statistics

Bootstrap mode (``do_bootstrap``): no PTC; gain 1, read noise from the overscan
residual, no saturation level, output in adu.

Size: about 830 lines, one module for the steps of ip_isr's ``IsrTaskLSST`` in order; the
overscan statistics live in :mod:`cpframe.science.overscan` and the streamed variant used by
the combine pipelines in :mod:`cpframe.science.fused`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cpframe.camera.models import Amplifier, Detector
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.bfk import BfkCalib, apply_brighter_fatter, read_bfk
from cpframe.science.electrostatic import ElectrostaticSolution, apply_electrostatic, read_electrostatic
from cpframe.science.crosstalk import read_crosstalk
from cpframe.science.cti import CtiCalib, deferred_charge_step, read_cti
from cpframe.science.gain_correction import GainCorrection, read_gain_correction
from cpframe.science.fringe import fringe_correct
from cpframe.science.illumination import apply_illumination_correction
from cpframe.science.imageio import (
    MASK_BITS,
    MaskedImage,
    RawExposure,
    boxes_to_mask,
    read_defects,
    read_masked,
    read_ptc,
    read_raw,
    update_header,
    write_masked,
)
from cpframe.science.linearity import Linearizer, linearizer_from_mapping, read_linearizer
from cpframe.science.overscan import _fill_masked, _robust_stats, overscan_vector, row_clipped_statistic  # noqa: F401
from cpframe.science.configs.isr import (  # noqa: F401 (defined there, importable without the science stack)
    DITHER_MODES,
    FLAT_SCALINGS,
    IsrConfig,
    MSG_BAD_VALUE,
    MSG_NOT_IMPLEMENTED,
    MSG_UNKNOWN_KEYS,
    OVERSCAN_FIT_TYPES,
    SATURATION_SOURCES,
)

__all__ = [
    "IsrConfig",
    "IsrCalibs",
    "IsrError",
    "AmpStats",
    "isr_config_for",
    "load_calibs",
    "run_isr",
    "isr_file",
    "overscan_vector",
    "overscan_variance_factor",
]

log = logging.getLogger(__name__)


class IsrError(UserInputError):
    """ISR cannot run as configured (missing or mismatched calibrations, bad exposure metadata)."""


MSG_MISSING_CALIBS = ("ISR of {what}: step(s) enabled without their calibration: {missing}. "
                      "Pass them in calibs={{...}} or switch the steps off ({flags}).")
MSG_SHAPE = ("ISR of {what}: the {calib} has shape {shape}, the detector {expected}. Use a {calib} of the "
             "same detector and camera scale.")
MSG_DARK_TIME = ("ISR of {what}: the exposure's dark time is {value!r}; dark correction needs a finite dark "
                 "time (header DARKTIME).")
MSG_UNITS = ("ISR of {what}: the {calib} is in {calib_units} but the image is in {units}. Build the {calib} "
             "with the same doApplyGains/doBootstrap setting, or set doRaiseOnCalibMismatch: false.")


# --------------------------------------------------------------------------------------
# configuration (IsrConfig and its names: cpframe.science.configs.isr)
# --------------------------------------------------------------------------------------


def _fringe_filter(header, config: IsrConfig) -> bool:
    """ip_isr ``FringeTask.checkFilter``: the physical filter or its band is in ``fringe.filters``."""
    pf = str(header.get("FILTER", ""))
    return pf in config.fringe_filters or pf.split("_", 1)[0] in config.fringe_filters


def isr_config_for(product: str, **overrides: Any) -> IsrConfig:
    """The cp_pipe LSST ISR switches of a calibration product (spec §3, §7, dependencies §7).

    Crosstalk and linearity stay off here: cpframe treats them as optional inputs, and the
    pipeline turns them on when the camera has them.  ``darkBootstrap`` subtracts the
    bias bootstrap (the intended behaviour, spec §3 note).

    >>> isr_config_for("dark").do_bias, isr_config_for("dark").units
    (True, 'electron')
    """
    table: dict[str, dict[str, Any]] = {
        "biasBootstrap": dict(do_bootstrap=True),
        "darkBootstrap": dict(do_bootstrap=True, do_bias=True),
        "flatBootstrap": dict(do_bootstrap=True, do_bias=True, do_dark=True),
        "bias": dict(do_apply_gains=True),
        "dark": dict(do_apply_gains=True, do_bias=True, do_defect=True),
        "flat": dict(do_apply_gains=True, do_bias=True, do_dark=True),
        "ptc": dict(do_bootstrap=True, do_defect=True),
        "bfk": dict(do_bootstrap=True, do_defect=True),
        "linearizer": dict(do_bootstrap=True, do_defect=True),
        "crosstalk": dict(do_apply_gains=True, do_defect=True),
        "cti": dict(do_apply_gains=True, use_gains_from="LINEARIZER", do_linearize=True, do_defect=True,
                    do_cti_statistics=True),
        "science": dict(do_apply_gains=True, do_bias=True, do_dark=True, do_flat=True, do_defect=True,
                        do_saturation=True),
    }
    if product not in table:
        raise ConfigError(f"no ISR settings for product {product!r}; known: {', '.join(table)}.")
    return replace(IsrConfig(**table[product]), **overrides)


# --------------------------------------------------------------------------------------
# calibrations
# --------------------------------------------------------------------------------------
@dataclass
class IsrCalibs:
    """Calibrations loaded for ISR (any may be None)."""

    bias: MaskedImage | None = None
    dark: MaskedImage | None = None
    flat: MaskedImage | None = None
    defects: list[tuple[int, int, int, int]] | None = None
    ptc: dict[str, dict[str, Any]] | None = None
    """amp -> {gain, noise, turnoff, ...} from a fits-ptc file."""
    crosstalk: np.ndarray | None = None
    """(n_amp, n_amp) linear coefficients C[target, source]."""
    crosstalk_quadratic: np.ndarray | None = None
    """(n_amp, n_amp) quadratic coefficients, or None."""
    cti: CtiCalib | None = None
    """Deferred-charge model per amp (:mod:`cpframe.science.cti`)."""
    linearizer: Linearizer | None = None
    """Per-amp corrections (:mod:`cpframe.science.linearity`; a ``{amp: c}`` mapping is ``x + c x²``)."""
    bfk: BfkCalib | None = None
    """Brighter-fatter kernels (:mod:`cpframe.science.bfk`)."""
    electro_bf: ElectrostaticSolution | None = None
    """Electrostatic brighter-fatter solution (dataset ``electroBfDistortionMatrix``; ASTIER23)."""
    gain_correction: GainCorrection | None = None
    """Per-amp factors on the PTC gains (:mod:`cpframe.science.gain_correction`)."""
    illumination: MaskedImage | None = None
    """Illumination correction (:mod:`cpframe.science.illumination`; dataset ``illuminationCorrection``)."""
    fringe: MaskedImage | None = None
    """Fringe frame (:mod:`cpframe.science.fringe`; dataset ``fringe``)."""


CALIB_KEYS = ("bias", "dark", "flat", "defects", "ptc", "crosstalk", "linearizer", "cti", "bfk", "gain_correction",
              "illumination", "fringe", "electro_bf")


def _mtime_key(path) -> tuple[str, float]:
    p = str(path)
    return p, os.stat(p).st_mtime


@functools.lru_cache(maxsize=16)
def _load_cached(kind: str, path: str, mtime: float):
    if kind in ("bias", "dark", "flat", "illumination", "fringe"):
        return read_masked(path)
    if kind == "defects":
        return read_defects(path)[0]
    if kind == "ptc":
        return read_ptc(path)[0]
    if kind == "crosstalk":
        return _read_crosstalk(path)
    if kind == "linearizer":
        return read_linearizer(path)
    if kind == "cti":
        return read_cti(path)
    if kind == "bfk":
        return read_bfk(path)
    if kind == "electro_bf":
        return read_electrostatic(path)
    if kind == "gain_correction":
        return read_gain_correction(path)
    raise KeyError(kind)


def _read_crosstalk(path: str):
    """Crosstalk matrix from cpframe's ``.json`` (cpframe/science/crosstalk.py), ``.npy`` (n,n) or
    (2,n,n) [linear, quadratic], ``.npz`` or text."""
    if path.endswith(".json"):
        calib = read_crosstalk(path)
        # a measured crosstalk always carries its quadratic matrix (zero with fluxOrder 0), as ip_isr's
        # CrosstalkCalib does: pipelines asking for the quadratic correction then apply a zero term instead of
        # failing for want of coefficients (cpframe demo --full-set found it: cpBias after a certified crosstalk)
        return calib.coeffs, np.asarray(calib.coeffs_sqr, dtype=np.float64)
    if path.endswith(".npz"):
        with np.load(path) as z:
            lin = np.asarray(z["linear"] if "linear" in z else z[z.files[0]], dtype=np.float64)
            quad = np.asarray(z["quadratic"], dtype=np.float64) if "quadratic" in z else None
        return lin, quad
    if path.endswith(".npy"):
        a = np.load(path)
    else:
        a = np.loadtxt(path)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        return a[0], a[1]
    return a, None


def load_calibs(paths: Mapping[str, Any] | None) -> IsrCalibs:
    """Load calibrations from file paths (cached by path and modification time).

    Keys: ``bias``, ``dark``, ``flat`` (fits-masked), ``defects`` (ecsv-defects), ``ptc``
    (fits-ptc), ``crosstalk`` (.npy/.npz/text matrix C[target, source], or an array),
    ``linearizer`` (cpframe linearizer JSON, a YAML/JSON ``{amp: c}``, or a dict / Linearizer).  ``None`` values are skipped.

    Raises
    ------
    IsrError
        An unknown key (all listed).
    """
    paths = dict(paths or {})
    unknown = [k for k in paths if k not in CALIB_KEYS]
    if unknown:
        raise IsrError(f"unknown calibration key(s) {', '.join(map(repr, unknown))}; "
                       f"known: {', '.join(CALIB_KEYS)}.")
    c = IsrCalibs()
    for k, v in paths.items():
        if v is None:
            continue
        if k == "crosstalk" and not isinstance(v, (str, os.PathLike)):
            a = np.asarray(v, dtype=np.float64)
            c.crosstalk, c.crosstalk_quadratic = (a[0], a[1]) if a.ndim == 3 else (a, None)
            continue
        if k == "linearizer" and isinstance(v, (Mapping, Linearizer)):
            c.linearizer = v if isinstance(v, Linearizer) else linearizer_from_mapping(v)
            continue
        value = _load_cached(k, *_mtime_key(v))
        if k == "crosstalk":
            c.crosstalk, c.crosstalk_quadratic = value
        else:
            setattr(c, k, value)
    return c


# --------------------------------------------------------------------------------------
# the ISR
# --------------------------------------------------------------------------------------
@dataclass
class AmpStats:
    """Per-amp numbers an ISR run returns (small, picklable)."""

    gain: float
    """Gain used (e-/adu; 1 in bootstrap)."""
    read_noise: float
    """Read noise used for the variance plane (e-, or adu in bootstrap)."""
    overscan_noise_adu: float
    """Clipped stdev of the serial-overscan residual (adu): the empirical read noise."""
    overscan_median_adu: float
    """Median of the serial-overscan fit (adu)."""
    mean: float = math.nan
    median: float = math.nan
    stdev: float = math.nan
    n_sat: int = 0
    n_bad: int = 0
    saturation_adu: float = math.inf


def _what(raw: RawExposure) -> str:
    return f"exposure {raw.exposure_id} detector {raw.detector.id} ({Path(raw.path).name or 'in memory'})"


def _check_calibs(raw: RawExposure, config: IsrConfig, calibs: IsrCalibs) -> None:
    need = [("do_bias", "bias", "doBias"), ("do_dark", "dark", "doDark"), ("do_flat", "flat", "doFlat"),
            ("do_defect", "defects", "doDefect"), ("do_crosstalk", "crosstalk", "doCrosstalk"),
            ("do_linearize", "linearizer", "doLinearize"), ("do_deferred_charge", "cti", "doDeferredCharge"),
            ("do_brighter_fatter", "electro_bf" if config.brighter_fatter_correction_method == "ASTIER23" else "bfk",
             "doBrighterFatter"),
            ("do_illumination_correction", "illumination", "doIlluminationCorrection")]
    missing, flags = [], []
    for attr, key, flag in need:
        if getattr(config, attr) and getattr(calibs, key) is None:
            missing.append(key)
            flags.append(f"{flag}: false")
    gains_from_lin = config.use_gains_from == "LINEARIZER" and config.do_apply_gains
    if not config.do_bootstrap and gains_from_lin and calibs.linearizer is None and not config.do_linearize:
        missing.append("linearizer (gains and read noise, useGainsFrom: LINEARIZER)")
        flags.append("useGainsFrom: PTC")
    if not config.do_bootstrap and not gains_from_lin and calibs.ptc is None:
        missing.append("ptc (gains and read noise)")
        flags.append("doBootstrap: true")
    if config.do_crosstalk and config.do_quadratic_crosstalk and calibs.crosstalk is not None \
            and calibs.crosstalk_quadratic is None:
        missing.append("quadratic crosstalk coefficients")
        flags.append("doQuadraticCrosstalkCorrection: false")
    if missing:
        raise IsrError(MSG_MISSING_CALIBS.format(what=_what(raw), missing=", ".join(missing),
                                                 flags=", ".join(flags)))
    shape = raw.detector.shape
    for key in ("bias", "dark", "flat"):
        img = getattr(calibs, key)
        if getattr(config, f"do_{key}") and img is not None and img.shape != shape:
            raise IsrError(MSG_SHAPE.format(what=_what(raw), calib=key, shape=img.shape, expected=shape))
    n_amp = len(raw.detector.amps)
    if config.do_crosstalk and calibs.crosstalk is not None and calibs.crosstalk.shape != (n_amp, n_amp):
        raise IsrError(f"ISR of {_what(raw)}: crosstalk matrix has shape {calibs.crosstalk.shape}; "
                       f"expected ({n_amp}, {n_amp}) (target, source) for this detector.")


def _amp_gain_noise(amp: Amplifier, config: IsrConfig, calibs: IsrCalibs) -> tuple[float, float, float]:
    """(gain, read noise e-, turnoff adu) before the overscan (bootstrap noise comes later)."""
    gain, noise, turnoff = 1.0, math.nan, math.inf
    if not config.do_bootstrap and config.use_gains_from == "LINEARIZER" and config.do_apply_gains:
        gain, noise = calibs.linearizer.gain_noise(amp.name)  # cpframe/science/linearity.py
    elif not config.do_bootstrap and calibs.ptc is not None:
        rec = calibs.ptc.get(amp.name)
        if rec is None:
            raise IsrError(f"the PTC has no amp {amp.name}; amps in the PTC: {', '.join(calibs.ptc)}.")
        gain, noise, turnoff = float(rec["gain"]), float(rec["noise"]), float(rec["turnoff"])
        if config.do_correct_gains and calibs.gain_correction is not None:  # ip_isr correctGains
            gain *= calibs.gain_correction.adjustments.get(amp.name, 1.0)
    g = config.gains.get(amp.name, math.nan)
    if math.isfinite(g):
        gain = g
    return gain, noise, turnoff


def _dither(raw: RawExposure, mode: str) -> np.random.Generator | None:
    if mode == "NONE":
        return None
    seed = raw.exposure_id & 0xFFFFFFFF if raw.exposure_id else 12345
    return np.random.default_rng(seed)


def _dither_offset(mode: str) -> float:
    return {"SYMMETRIC": -0.5, "POSITIVE": 0.0, "NEGATIVE": -1.0}[mode]


def serial_amp(amp: Amplifier, seg: np.ndarray, config: IsrConfig, calibs: IsrCalibs, cards: dict,
               masks: bool = True, partial: bool = False
               ) -> tuple[AmpStats, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Serial overscan, saturation/suspect levels and gain of one dithered float32 segment, in place.

    Returns the amp's :class:`AmpStats`, the SAT / SUSPECT masks of its data box (None when
    off, or when ``masks`` is false: the fused ISR finds them row block by row block) and
    the serial-overscan level per raw row (float64; None without overscan).  ``partial``
    (the fused prepass, with ``masks`` false): only the serial overscan columns of the data
    rows and every column of the rows below the data hold pixels; the in-place steps skip the
    rest (the same float32 operations on the pixels they touch).
    """
    units = config.units
    lead, trail = config.overscan_leading_to_skip, config.overscan_trailing_to_skip
    gain, noise, turnoff = _amp_gain_noise(amp, config, calibs)
    # serial overscan (spec §2), all rows of the segment
    os_sl = amp.serial_overscan_slice
    c0, c1 = os_sl[1].start + lead, os_sl[1].stop - trail
    os_fit = {"MEAN": 0.0, "MEDIAN": 0.0, "STDEV": 0.0}
    residual = {"MEAN": math.nan, "MEDIAN": math.nan, "STDEV": math.nan}
    st = AmpStats(gain=gain, read_noise=noise, overscan_noise_adu=math.nan, overscan_median_adu=0.0)
    vec = None
    # (raw rows, view) of the pixels the in-place steps change
    held = ([(slice(0, amp.data_rows), seg[:amp.data_rows, c0:c1]), (slice(amp.data_rows, None), seg[amp.data_rows:])]
            if partial else [(slice(None), seg)])
    if config.do_overscan:
        vec = overscan_vector(seg[:, c0:c1], config.overscan_fit_type, config.overscan_num_sigma_clip,
                              config.serial_max_deviation)
        level = vec.astype(np.float32)[:, None]
        for rows, view in held:
            view -= level[rows]
        os_fit = {"MEAN": float(vec.mean()), "MEDIAN": float(np.median(vec)), "STDEV": float(vec.std())}
        residual = _robust_stats(seg[:, c0:c1].ravel())
    cards[f"LSST ISR OVERSCAN VARIANCE FACTOR {amp.name}"] = overscan_variance_factor(
        config, c1 - c0, amp.raw_shape[0] - trail - (amp.data_rows + lead), amp.raw_shape[0])
    for k in ("MEAN", "MEDIAN", "STDEV"):
        cards[f"LSST ISR OVERSCAN SERIAL {k} {amp.name}"] = os_fit[k]
        cards[f"LSST ISR OVERSCAN RESIDUAL SERIAL {k} {amp.name}"] = residual[k]
    if config.do_bootstrap or not math.isfinite(noise):
        noise = residual["STDEV"] * gain
    # saturation / suspect on the data box (levels in adu)
    sat_level = math.inf
    sat = sus = None
    if config.do_saturation:
        if math.isfinite(config.saturation_level):
            sat_level = config.saturation_level
        elif config.saturation_source == "PTCTURNOFF" and not config.do_bootstrap:
            sat_level = turnoff
        if math.isfinite(sat_level) and masks:
            sat = seg[amp.data_slice] >= sat_level
        cards[f"LSST ISR SATURATION LEVEL {amp.name}"] = sat_level * (gain if units == "electron" else 1.0)
    if config.do_suspect and math.isfinite(config.suspect_level) and masks:
        sus = seg[amp.data_slice] >= config.suspect_level
    if units == "electron":
        for _rows, view in held:
            view *= np.float32(gain)
    cards[f"LSST ISR GAIN {amp.name}"] = gain
    cards[f"LSST ISR READNOISE {amp.name}"] = noise
    cards[f"LSST ISR PTCTURNOFF {amp.name}"] = turnoff * gain
    st.read_noise = noise
    st.overscan_noise_adu = residual["STDEV"]
    st.overscan_median_adu = os_fit["MEDIAN"]
    st.saturation_adu = sat_level
    return st, sat, sus, vec


def run_isr(raw: RawExposure, config: IsrConfig, calibs: IsrCalibs | None = None,
            overscans: dict[str, Any] | None = None) -> tuple[MaskedImage, dict[str, AmpStats]]:
    """Run ISR on an in-memory raw.

    Parameters
    ----------
    overscans : dict, optional
        Filled, when given, with what the overscan fits found, so that the fused ISR's
        prepass of this raw need not fit them again (:func:`cpframe.science.fused.prepass_with_isr`):
        ``"serial"`` and ``"parallel"`` (amp -> the float64 level vector, or None),
        ``"stats"`` (amp -> a copy of its :class:`AmpStats` as the overscan left them) and
        ``"cards"`` (a copy of the cards written up to the end of the per-amp steps).

    Returns
    -------
    (MaskedImage, dict of AmpStats)
        Assembled image/mask/variance with the raw header plus the ISR keys, and per-amp
        numbers.

    Raises
    ------
    IsrError
        Missing/mismatched calibrations or unusable exposure metadata.
    """
    calibs = calibs or IsrCalibs()
    _check_calibs(raw, config, calibs)
    det: Detector = raw.detector
    header = raw.header.copy()
    cards: dict[str, Any] = {}
    units = config.units
    rng = _dither(raw, config.integer_dither_mode)
    segs: dict[str, np.ndarray] = {}
    stats: dict[str, AmpStats] = {}

    # bad amps: fully covered by defects
    defect_mask = None
    bad_amps: set[str] = set()
    if config.do_defect and calibs.defects is not None:
        defect_mask = boxes_to_mask(calibs.defects, det.shape)
        bad_amps = {a.name for a in det.amps if defect_mask[a.bbox].all()}

    sat_masks: dict[str, np.ndarray] = {}
    sus_masks: dict[str, np.ndarray] = {}
    for amp in det.amps:
        seg = raw.segments[amp.name].astype(np.float32)
        if rng is not None:
            seg += rng.random(seg.shape, dtype=np.float32) + np.float32(_dither_offset(config.integer_dither_mode))
        st, sat, sus, svec = serial_amp(amp, seg, config, calibs, cards)
        if overscans is not None:
            overscans.setdefault("serial", {})[amp.name] = svec
            overscans.setdefault("stats", {})[amp.name] = replace(st)  # _standard_statistics changes st
        if sat is not None:
            sat_masks[amp.name] = sat
        if sus is not None:
            sus_masks[amp.name] = sus
        segs[amp.name] = seg
        stats[amp.name] = st

    if config.do_crosstalk:
        gains = {a: st.gain for a, st in stats.items()} if units == "electron" else None
        _crosstalk(det, segs, calibs.crosstalk,
                   calibs.crosstalk_quadratic if config.do_quadratic_crosstalk else None, gains)

    shape = det.shape
    image = np.empty(shape, np.float32)
    mask = np.zeros(shape, np.int32)
    sat_bit = np.int32(1 << MASK_BITS["SAT"])
    sus_bit = np.int32(1 << MASK_BITS["SUSPECT"])
    for amp in det.amps:
        seg = segs[amp.name]
        st = stats[amp.name]
        pvec = _parallel_overscan(amp, seg, config, st, cards) if config.do_parallel_overscan else None
        if overscans is not None:
            overscans.setdefault("parallel", {})[amp.name] = pvec
        data = seg[amp.data_slice]
        if config.do_linearize:  # cpframe/science/linearity.py; in adu (gain passed for electrons)
            calibs.linearizer.correct(data, amp.name, st.gain if units == "electron" else None)
        if config.do_deferred_charge or config.do_cti_statistics:  # cpframe/science/cti.py
            deferred_charge_step(seg, amp, calibs.cti if config.do_deferred_charge else None, units, st.gain,
                                 cards)
        image[amp.bbox] = _orient(data, amp)
        if amp.name in sat_masks:
            mask[amp.bbox] |= np.where(_orient(sat_masks[amp.name], amp), sat_bit, np.int32(0))
        if amp.name in sus_masks:
            mask[amp.bbox] |= np.where(_orient(sus_masks[amp.name], amp), sus_bit, np.int32(0))
    if overscans is not None:
        overscans["cards"] = dict(cards)
    variance = np.zeros(shape, np.float32)

    what = _what(raw)
    if config.do_bias:
        _check_units(what, "bias", calibs.bias.header, units, config)
        image -= calibs.bias.image
        variance += calibs.bias.variance
        mask |= calibs.bias.mask
    if config.do_dark:
        _check_units(what, "dark", calibs.dark.header, units, config)
        t_exp = _float_or_nan(header.get("DARKTIME"))
        if not math.isfinite(t_exp):
            raise IsrError(MSG_DARK_TIME.format(what=what, value=header.get("DARKTIME")))
        t_dark = _float_or_nan(calibs.dark.header.get("DARKTIME"))
        scale = t_exp / t_dark if (math.isfinite(t_dark) and t_dark > 0) else 1.0
        image -= np.float32(scale) * calibs.dark.image
        variance += np.float32(scale * scale) * calibs.dark.variance
        mask |= calibs.dark.mask
        cards["LSST ISR DARK SCALE"] = scale
    bad_bit = np.int32(1 << MASK_BITS["BAD"])
    if defect_mask is not None:
        mask[defect_mask] |= bad_bit
        for name in bad_amps:
            mask[det.amp(name).bbox] |= bad_bit
    if config.do_nan_masking:
        nan = ~np.isfinite(image)
        if nan.any():
            mask[nan] |= np.int32(1 << MASK_BITS["UNMASKEDNAN"])
    if config.do_brighter_fatter and config.brighter_fatter_correction_method == "ASTIER23":
        apply_electrostatic(image, det, calibs.electro_bf, units, {a: st.gain for a, st in stats.items()}, cards)
    elif config.do_brighter_fatter:  # cpframe/science/bfk.py (ip_isr: after defects, before variance and flat)
        apply_brighter_fatter(image, mask, det, calibs.bfk, units, {a: st.gain for a, st in stats.items()},
                              config.brighter_fatter_max_iter, config.brighter_fatter_threshold, cards)
    if config.do_variance:
        for amp in det.amps:
            st = stats[amp.name]
            g = 1.0 if units == "electron" else st.gain
            sub = image[amp.bbox]
            variance[amp.bbox] += sub * np.float32(1.0 / g) + np.float32((st.read_noise / g) ** 2)
        if config.mask_negative_variance:
            mask[variance < 0] |= bad_bit
    if config.do_flat:
        _flat_correct(image, variance, mask, calibs.flat, config)
    if config.do_illumination_correction:  # cpframe/science/illumination.py (ip_isr: after the flat)
        apply_illumination_correction(image, variance, mask, calibs.illumination)
    if config.do_fringe and _fringe_filter(header, config) and calibs.fringe is not None:  # fringeAfterFlat
        sol = fringe_correct(image, mask, calibs.fringe.image, small=config.fringe_small, large=config.fringe_large,
                             iterations=config.fringe_iterations, clip=config.fringe_clip)
        cards["LSST ISR FRINGE AMPLITUDE"] = sol.amplitude
    if config.do_standard_statistics:
        _standard_statistics(det, image, mask, stats, cards, bad_amps)
    cards["LSST ISR UNITS"] = units
    cards["LSST ISR BOOTSTRAP"] = bool(config.do_bootstrap)
    if config.do_correct_gains and calibs.gain_correction is not None and not config.do_bootstrap \
            and calibs.ptc is not None:  # written only when applied
        cards["LSST ISR GAINCORRECTION APPLIED"] = True
    update_header(header, cards)
    return MaskedImage(image, mask, variance, header), stats


def _float_or_nan(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _check_units(what: str, calib: str, header, units: str, config: IsrConfig) -> None:
    cu = header.get("LSST ISR UNITS")
    if cu is None or str(cu) == units:
        return
    msg = MSG_UNITS.format(what=what, calib=calib, calib_units=cu, units=units)
    if config.do_raise_on_calib_mismatch:
        raise IsrError(msg)
    log.warning(msg)


def _orient(data: np.ndarray, amp: Amplifier) -> np.ndarray:
    if amp.flip_x:
        data = data[:, ::-1]
    if amp.flip_y:
        data = data[::-1, :]
    return data


def _crosstalk(det: Detector, segs: dict[str, np.ndarray], lin: np.ndarray, quad: np.ndarray | None,
               gains: Mapping[str, float] | None = None) -> None:
    """target -= sum_s C[t, s] * source (+ Q[t, s] * source²), on read-out-ordered segments.

    Coefficients are adu/adu (target adu per source adu).  Every segment is stored in its
    own read-out order, so the pixel read at the same time in the source is at the same
    (row, col): no flip is needed.  With ``gains`` the segments are in electrons and a
    coefficient becomes C·g_t/g_s (Q·g_t/g_s²).
    """
    names = [a.name for a in det.amps]
    src = {n: segs[n].copy() for n in names}
    for t, tname in enumerate(names):
        acc = None
        for s, sname in enumerate(names):
            if s == t:
                continue
            c = lin[t, s]
            q = 0.0 if quad is None else quad[t, s]
            if gains is not None:
                c = c * gains[tname] / gains[sname]
                q = q * gains[tname] / gains[sname] ** 2
            if c == 0 and q == 0:
                continue
            term = np.float32(c) * src[sname]
            if q:
                term += np.float32(q) * src[sname] * src[sname]
            acc = term if acc is None else acc + term
        if acc is not None:
            segs[tname] -= acc


def overscan_variance_factor(config: IsrConfig, n_serial: int, n_parallel: int, n_rows: int) -> float:
    """Variance the overscan subtraction adds to every data pixel, in units of the read noise squared.

    A per-row median of n Gaussian values has variance (pi / 2) sigma^2 / n (a mean: sigma^2 /
    n); the serial correction subtracts one per row (``n_serial`` values each), the parallel
    one per column (``n_parallel`` values).  A single value per amp adds ~1 / (n rows).  The
    PTC's read-noise intercept contains this variance (issue 16: +3 % on ComCam geometry).

    >>> round(overscan_variance_factor(IsrConfig(), 58, 42, 2048), 4)
    0.0645
    """
    if not config.do_overscan:
        return 0.0
    per = (math.pi / 2) if config.overscan_fit_type.startswith("MEDIAN") else 1.0
    if not config.overscan_fit_type.endswith("_PER_ROW"):  # one value per amp: negligible
        return float(per / (max(1, n_serial) * max(1, n_rows)))
    k = per / max(1, n_serial)
    if config.do_parallel_overscan and n_parallel > 0:
        k += per / n_parallel
    return float(k)


def _parallel_overscan(amp: Amplifier, seg: np.ndarray, config: IsrConfig, st: AmpStats,
                       cards: dict) -> np.ndarray | None:
    vec = parallel_overscan_vector(amp, seg[amp.data_rows:], config, st, cards)
    if vec is not None:
        seg[:, amp.data_slice[1]] -= vec.astype(np.float32)[None, :]
    return vec


def parallel_overscan_vector(amp: Amplifier, below: np.ndarray, config: IsrConfig, st: AmpStats,
                             cards: dict) -> np.ndarray | None:
    """Parallel-overscan level per data column (float64) from the segment rows below the data.

    ``below`` = the segment's rows ``[data_rows, raw_rows)`` after the serial overscan, gains
    and crosstalk (the fused ISR computes it before streaming the data rows).  Writes the
    ``LSST ISR OVERSCAN PARALLEL *`` cards; None when the region is empty.
    """
    lead, trail = config.overscan_leading_to_skip, config.overscan_trailing_to_skip
    cols = amp.data_slice[1]
    region = below[lead:below.shape[0] - trail, cols]
    if region.size == 0:
        return None
    # saturated columns: level 0.75 x saturation (20000 adu when off), grown by 7 columns
    level = 0.75 * st.saturation_adu if math.isfinite(st.saturation_adu) else 20000.0
    if config.units == "electron":
        level *= st.gain
    hot_cols = (region >= level).any(axis=0)
    ignore = None
    if hot_cols.any():
        grown = np.convolve(hot_cols.astype(np.int32), np.ones(15, np.int32), mode="same") > 0
        ignore = np.broadcast_to(grown[:, None], (region.shape[1], region.shape[0]))
    max_dev = config.parallel_max_deviation * (st.gain if config.units == "electron" else 1.0)
    vec = overscan_vector(region.T, config.overscan_fit_type, config.overscan_num_sigma_clip, max_dev, ignore)
    # reject columns that jump more than 5 adu from a 5-wide running median
    if vec.size >= 5 and config.overscan_fit_type.endswith("_PER_ROW"):
        pad = np.pad(vec, 2, mode="edge")
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(pad, 5), axis=1)
        thresh = 5.0 * (st.gain if config.units == "electron" else 1.0)
        out = np.abs(vec - smooth) > thresh
        if out.any():
            vec = vec.copy()
            vec[out] = np.nan
            vec, _ = _fill_masked(vec)
    cards[f"LSST ISR OVERSCAN PARALLEL MEAN {amp.name}"] = float(vec.mean())
    cards[f"LSST ISR OVERSCAN PARALLEL MEDIAN {amp.name}"] = float(np.median(vec))
    cards[f"LSST ISR OVERSCAN PARALLEL STDEV {amp.name}"] = float(vec.std())
    return vec


def _flat_correct(image, variance, mask, flat: MaskedImage, config: IsrConfig) -> None:
    f = flat.image
    if config.flat_scaling_type == "USER":
        s = config.flat_user_scale
    elif config.flat_scaling_type == "MEAN":
        s = float(np.nanmean(f))
    else:
        s = float(np.nanmedian(f))
    f = f / np.float32(s)
    fv = flat.variance / np.float32(s * s)
    with np.errstate(divide="ignore", invalid="ignore"):
        new_var = variance / (f * f) + image * image * fv / (f * f * f * f)
        image /= f
    variance[...] = new_var
    mask |= flat.mask
    nodata = (flat.mask & (1 << MASK_BITS["NO_DATA"])) != 0
    if nodata.any():
        image[nodata] = 0.0
        variance[nodata] = config.no_data_variance


_STAT_IGNORE = sum(1 << MASK_BITS[n] for n in ("BAD", "SAT", "SUSPECT", "NO_DATA", "UNMASKEDNAN", "CR"))


def _standard_statistics(det: Detector, image, mask, stats: dict[str, AmpStats], cards: dict,
                         bad_amps: set[str]) -> None:
    for amp in det.amps:
        st = stats[amp.name]
        sub = image[amp.bbox]
        msub = mask[amp.bbox]
        flagged = (msub & _STAT_IGNORE) != 0
        good = sub[~flagged] if flagged.any() else sub.ravel()  # either way a fresh copy
        if good.size and amp.name not in bad_amps:
            st.mean = float(good.mean(dtype=np.float64))
            st.stdev = float(good.std(dtype=np.float64))
            st.median = float(np.median(good, overwrite_input=True))
        st.n_sat = int(np.count_nonzero(msub & (1 << MASK_BITS["SAT"])))
        st.n_bad = int(np.count_nonzero(msub & (1 << MASK_BITS["BAD"])))
        n_sus = int(np.count_nonzero(msub & (1 << MASK_BITS["SUSPECT"])))
        cards[f"LSST ISR FINAL MEAN {amp.name}"] = st.mean
        cards[f"LSST ISR FINAL MEDIAN {amp.name}"] = st.median
        cards[f"LSST ISR FINAL STDEV {amp.name}"] = st.stdev
        cards[f"LSST ISR MASK SAT {amp.name}"] = st.n_sat
        cards[f"LSST ISR MASK BAD {amp.name}"] = st.n_bad
        cards[f"LSST ISR MASK SUSPECT {amp.name}"] = n_sus
        cards[f"LSST ISR LEVEL {amp.name}"] = st.median - st.overscan_median_adu


def isr_file(raw_path: str | os.PathLike, output_path: str | os.PathLike, config: IsrConfig,
             calib_paths: Mapping[str, Any] | None = None, camera=None) -> tuple[MaskedImage, dict[str, AmpStats]]:
    """Read a raw, run ISR with calibrations loaded from paths, write a fits-masked file."""
    raw = read_raw(raw_path, camera)
    img, stats = run_isr(raw, config, load_calibs(calib_paths))
    write_masked(output_path, img.image, img.mask, img.variance, img.header)
    return img, stats
