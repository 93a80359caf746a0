"""Fused streaming ISR -> combine: N raws of one detector to a combined product, no intermediates.

The unfused path (:func:`cpframe.science.tasks.isr_task` per exposure, then
:func:`cpframe.science.combine.combine_files`) writes one full-size ``fits-masked`` file
per exposure (195 MB at full size) and reads it back.  Here the same arithmetic runs on row
blocks instead:

1. **Prepass**, one raw at a time: read the raw, convert and dither the overscan pixels (the
   data pixels are left for the stream), fit the serial overscan of every amp
   (:func:`cpframe.science.isr.serial_amp`), apply gains and crosstalk to the rows below
   the data and fit the parallel overscan (:func:`cpframe.science.isr.parallel_overscan_vector`).
   What is kept per raw is small: two vectors and a few numbers per amp, plus the header.
2. **Stream**: for each block of raw rows, every raw's rows are read again (``pread``),
   dithered with the same random numbers (the PCG64 stream is advanced to the block's first
   pixel), corrected with the stored vectors, crosstalk-corrected, assembled, then bias /
   dark / defects / NaN / variance / flat are applied with the calibration rows of the
   block (read once per block, shared by all raws) and the N blocks are combined by the
   kernels of :mod:`cpframe.science.kernels` straight into the product.
3. Per-amp statistics of each exposure (``LSST ISR FINAL MEAN|MEDIAN|STDEV``) accumulate
   while streaming: mean and stdev from sums, the median from a fine histogram (bins of
   0.004 of the amp's noise; documented in docs/algorithms.md).

Every float32 operation is the one :func:`cpframe.science.isr.run_isr` does, in the same
order, so the product equals the unfused one to float32 precision (tests/test_fused.py).

Steps the fused path does not implement raise :class:`FusedUnsupported`; the drivers
then run the unfused path (:func:`fused_unsupported` tells why beforehand).
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.timeline import mark
from cpframe.science.combine import (
    CombineConfig,
    CombineResult,
    _amp_qa,
    _clip_code,
    _repair_and_censor,
    _stat_code,
    product_header,
    resolve_scales,
)
from cpframe.science.fused_stats import _HIST_BINS, _AmpAccumulator
from cpframe.science.imageio import (
    MASK_BITS,
    _hdu_headers,
    boxes_to_mask,
    masked_layout,
    read_header,
    read_raw,
    read_rows,
    update_header,
    write_masked,
)
from cpframe.science.isr import (
    AmpStats,
    IsrCalibs,
    IsrConfig,
    _check_calibs,
    _check_units,
    _crosstalk,
    _dither_offset,
    _float_or_nan,
    _what,
    load_calibs,
    parallel_overscan_vector,
    serial_amp,
)
from cpframe.science.fused_isr import amp_steps, amp_to_band, raw_rows, threshold
from cpframe.science.fused_work import Scratch, in_threads, output_planes, split
from cpframe.science.kernels import combine_block
from cpframe.science.fused_isr import DitherStream
from cpframe.science.configs.fused import fused_unsupported  # defined there, for the planner

__all__ = ["FusedUnsupported", "FusedExposure", "fused_unsupported", "isr_combine", "fused_rows_for_budget"]


class FusedUnsupported(UserInputError):
    """The fused path cannot run this configuration (the drivers fall back to the unfused one)."""


#: A SAT / SUSPECT level that is never reached (:func:`cpframe.science.fused_isr.threshold`).
_NO_LEVEL = (math.inf, False)

#: The inputs' mask rows in a block: int16 (every mask plane's bit is below 15, checked here; the product's mask
#: plane stays int32): a quarter less memory traffic per block than int32 and a third more rows per block for the
#: same budget (fewer blocks, fewer compiled calls).
_BLOCK_MASK = np.int16
if max(MASK_BITS.values()) >= 15:  # (not an assert: `python -O` would skip it)
    raise ImportError("cpframe.science.fused: a mask plane's bit does not fit the int16 row blocks; widen _BLOCK_MASK.")

#: Bytes per input pixel held per block: image float32 + mask int16 (+ variance float32).
_BLOCK_BYTES = 6
_BLOCK_BYTES_VAR = 10


def input_state_bytes(det) -> int:
    """Memory the fused path keeps per input for the whole run (measured: ~0.2 MB + histograms at full size).

    Serial-overscan vector per raw row and parallel vector per column of every amp (float32),
    one median histogram per amp (int32), plus 128 KB for the header, cards and statistics
    objects (tracemalloc: ~60 KB for a full-size raw, ~120 KB for a mini one).
    """
    per_amp = [a.raw_shape[0] * 4 + a.raw_shape[1] * 4 + (_HIST_BINS + 2) * 4 for a in det.amps]
    return int(sum(per_amp)) + 128 * 1024


def fused_rows_for_budget(memory_bytes: int, n_inputs: int, n_cols: int, n_bands: int, with_variance: bool,
                          max_rows: int, per_input_bytes: int = 0, threads: int = 1) -> int:
    """Raw rows per block so that the N inputs' state and blocks (all bands) fit in ``memory_bytes``.

    ``memory_bytes`` covers everything that grows with N or with the block: ``per_input_bytes``
    per input kept for the whole run, the N inputs' row blocks and the transient rows of the
    raw being corrected (counted as two more inputs per thread); so a worker's memory is flat in N.  At
    least one row per block (N so large that its state alone exceeds the budget: one row).

    >>> fused_rows_for_budget(128 * 2**20, 20, 4072, 2, False, 2000)
    124
    >>> fused_rows_for_budget(96 * 2**20, 200, 4072, 2, False, 2000, per_input_bytes=300_000)
    4
    """
    # + 2 inputs' worth: the raw being corrected holds its rows as read (int32) and as float32
    held = max(1, n_inputs) + 2 * max(1, min(threads, n_inputs))
    per_row = held * n_cols * n_bands * (_BLOCK_BYTES_VAR if with_variance else _BLOCK_BYTES)
    left = memory_bytes - max(1, n_inputs) * per_input_bytes
    return int(max(1, min(max_rows, left // per_row)))


@dataclass
class FusedExposure:
    """What the fused path keeps of one exposure (the ISR header and per-amp numbers)."""

    raw_path: str
    header: dict[str, Any]
    stats: dict[str, AmpStats]
    units: str


class _CalibRef:
    """A bias/dark/flat calibration known by its file: rows are read per block."""

    def __init__(self, path: str):
        self.path = str(path)
        self.layout = masked_layout(self.path)
        self.header = read_header(self.path)
        self.shape = self.layout.shape

    def rows(self, y0: int, y1: int, scratch: Scratch | None = None, key: str = ""):
        """Rows [y0, y1) of the three planes (in ``scratch`` buffers named after ``key`` when given)."""
        lay = self.layout
        shape = (y1 - y0, self.shape[1])

        def plane(name, dtype):
            out = None if scratch is None else scratch.get(f"{key}{name}", shape, dtype)
            return read_rows(lay, name, y0, y1, out=out)

        return _Rows(plane("IMAGE", np.float32), plane("MASK", np.int32), plane("VARIANCE", np.float32), self.header)


@dataclass
class _Rows:
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    header: dict


_CALIB_IMAGES = ("bias", "dark", "flat")


def _calibs(paths: Mapping[str, Any] | None) -> IsrCalibs:
    paths = dict(paths or {})
    small = load_calibs({k: v for k, v in paths.items() if k not in _CALIB_IMAGES})
    for k in _CALIB_IMAGES:
        if paths.get(k) is not None:
            setattr(small, k, _CalibRef(paths[k]))
    return small


class _RawSource:
    """One raw after the prepass: stored vectors + how to read and dither any block of rows."""

    def __init__(self, path: str, config: IsrConfig, calibs: IsrCalibs, calib_paths: Mapping[str, Any],
                 scratch: Scratch | None = None, prepass: Mapping[str, Any] | None = None,
                 raw=None, overscans: Mapping[str, Any] | None = None):
        """The prepass of ``path`` (or its result ``prepass``); with ``raw`` and the ``overscans`` run_isr recorded
        of it (:func:`prepass_with_isr`), the fits are taken from there instead of reading every amp again."""
        self.config = config
        self.calibs = calibs
        self.calib_paths = dict(calib_paths or {})
        self.scratch = scratch if scratch is not None else Scratch()
        self.cr_index = None
        if prepass is not None:  # made by the raw's own ISR quantum (:func:`prepass`)
            if prepass.get("path") != str(path):
                raise FusedUnsupported(f"prepass of {prepass.get('path')!r} given for {str(path)!r}.")
            self.__dict__.update({k: prepass[k] for k in _PREPASS_FIELDS if k in prepass})
            self.acc = {a.name: _AmpAccumulator() for a in self.det.amps}
            return
        self._open(str(path), raw if raw is not None else read_raw(path, segments=False))
        if overscans is None:
            self._fit_overscans()
        else:
            self._take_overscans(overscans)
        self._dark_scale_and_units()
        # per-amp statistics accumulators: n, sum, sum of squares (relative to a shift), histogram
        self.acc = {a.name: _AmpAccumulator() for a in self.det.amps}

    def _open(self, path: str, raw) -> None:
        """What the headers say: detector, units, dither seed, where each amp's segment is in the file."""
        config = self.config
        self.path = path
        self.det = det = raw.detector
        _check_calibs(raw, config, self.calibs)
        self.what = _what(raw)
        self.units = config.units
        self.header = raw.header.copy()
        self.cards: dict[str, Any] = {}
        self.seed = None
        if config.integer_dither_mode != "NONE":
            self.seed = raw.exposure_id & 0xFFFFFFFF if raw.exposure_id else 12345
            self.dither = DitherStream(np.random.PCG64(self.seed).state)
            self.dither_offset = np.float32(_dither_offset(config.integer_dither_mode))
        self.layout = _raw_layout(self.path, det, getattr(raw, "segment_layout", None))
        sizes = [a.raw_shape[0] * a.raw_shape[1] for a in det.amps]  # segments in the order run_isr dithers them
        self.start = {a.name: int(sum(sizes[:i])) for i, a in enumerate(det.amps)}

    def _fit_overscans(self) -> None:
        """Serial overscan of every amp, then gains and crosstalk of the rows below the data and their parallel
        overscan (run_isr's functions, in its order)."""
        config, calibs, det = self.config, self.calibs, self.det
        self.stats: dict[str, AmpStats] = {}
        svec, below = {}, {}
        for amp in det.amps:
            # one amp at a time: the prepass holds one float32 segment, not the raw (docs/algorithms.md, memory)
            seg = self._overscan_pixels(amp)
            st, _, _, vec = serial_amp(amp, seg, config, calibs, self.cards, masks=False, partial=True)
            self.stats[amp.name] = st
            svec[amp.name] = vec
            below[amp.name] = seg[amp.data_rows:].copy()
        if config.do_crosstalk:
            self.xt_gains = {a: st.gain for a, st in self.stats.items()} if self.units == "electron" else None
            _crosstalk(det, below, calibs.crosstalk,
                       calibs.crosstalk_quadratic if config.do_quadratic_crosstalk else None, self.xt_gains)
        pvec = {amp.name: parallel_overscan_vector(amp, below[amp.name], config, self.stats[amp.name], self.cards)
                for amp in det.amps} if config.do_parallel_overscan else {}
        self._set_vectors(svec, pvec)

    def _overscan_pixels(self, amp) -> np.ndarray:
        """The pixels of one amp that the overscan fits read, float32 and dithered as :meth:`read_block` makes
        them: the serial overscan columns (without the skipped leading / trailing ones) of the data rows and
        every column of the rows below the data.  The data pixels are neither converted nor dithered (87 % of
        a full-size amp; their dither numbers are not made either): the array's other pixels are undefined
        (:func:`cpframe.science.isr.serial_amp` with ``partial``)."""
        cols, n_rows, below = amp.raw_shape[1], amp.raw_shape[0], amp.data_rows
        os_cols = amp.serial_overscan_slice[1]
        c0 = os_cols.start + self.config.overscan_leading_to_skip
        c1 = max(c0, os_cols.stop - self.config.overscan_trailing_to_skip)
        _offset, dtype, bzero = self.layout[amp.name]
        buf = self._pread(amp, 0, n_rows)
        seg = self.scratch.get("prepass", (n_rows, cols), np.float32)
        os_rows = self.scratch.get("prepass_os", (below, c1 - c0), np.float32)
        dither = self.dither if self.seed is not None else None
        offset = self.dither_offset if self.seed is not None else 0.0
        start = self.start[amp.name]
        raw_rows(buf[:below * cols], dtype.itemsize, bzero, cols, c0, c1, dither, start, offset, None, _NO_LEVEL,
                 _NO_LEVEL, None, os_rows, None)
        seg[:below, c0:c1] = os_rows
        raw_rows(buf[below * cols:], dtype.itemsize, bzero, cols, 0, cols, dither, start + below * cols, offset, None,
                 _NO_LEVEL, _NO_LEVEL, None, seg[below:], None)
        return seg

    def _take_overscans(self, overscans: Mapping[str, Any]) -> None:
        """The fits as :func:`cpframe.science.isr.run_isr` recorded them for this raw (``overscans``)."""
        self.stats = dict(overscans["stats"])
        self.cards.update(overscans["cards"])
        if self.config.do_crosstalk:
            self.xt_gains = {a: st.gain for a, st in self.stats.items()} if self.units == "electron" else None
        self._set_vectors(overscans["serial"], overscans.get("parallel") or {})

    def _set_vectors(self, serial: Mapping[str, np.ndarray | None], parallel: Mapping[str, np.ndarray | None]
                     ) -> None:
        """The levels per raw row (serial) and per data column (parallel) as float32, as they are subtracted."""
        self.svec = {a: None if v is None else v.astype(np.float32)[:, None] for a, v in serial.items()}
        self.pvec = {a.name: None if parallel.get(a.name) is None else parallel[a.name].astype(np.float32)[None, :]
                     for a in self.det.amps}

    def _dark_scale_and_units(self) -> None:
        config, calibs = self.config, self.calibs
        self.dark_scale = 1.0
        if config.do_dark:
            t_exp = _float_or_nan(self.header.get("DARKTIME"))
            if not math.isfinite(t_exp):
                from cpframe.science.isr import MSG_DARK_TIME, IsrError

                raise IsrError(MSG_DARK_TIME.format(what=self.what, value=self.header.get("DARKTIME")))
            t_dark = _float_or_nan(calibs.dark.header.get("DARKTIME"))
            self.dark_scale = t_exp / t_dark if (math.isfinite(t_dark) and t_dark > 0) else 1.0
            self.cards["LSST ISR DARK SCALE"] = self.dark_scale
        for key in ("bias", "dark"):
            if getattr(config, f"do_{key}"):
                _check_units(self.what, key, getattr(calibs, key).header, self.units, config)

    def _pread(self, amp, r0: int, r1: int, fd: int | None = None, scratch: Scratch | None = None) -> np.ndarray:
        """The bytes of raw rows [r0, r1) of one amp as stored (big-endian integers, scratch buffer "raw");
        ``fd``: the raw, already open."""
        offset, dtype, _bzero = self.layout[amp.name]
        cols = amp.raw_shape[1]
        buf = (scratch or self.scratch).get("raw", ((r1 - r0) * cols,), dtype)
        mv = memoryview(buf).cast("B")
        own = fd is None
        if own:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            got = 0
            base = offset + r0 * cols * dtype.itemsize
            while got < mv.nbytes:
                k = os.preadv(fd, [mv[got:]], base + got)
                if k <= 0:
                    raise FusedUnsupported(f"{self.path}: raw file is truncated in amp {amp.name}.")
                got += k
        finally:
            if own:
                os.close(fd)
        return buf

    def _rows(self, amp, r0: int, r1: int, c0: int, c1: int, out: np.ndarray, svec=None, sat=_NO_LEVEL,
              sus=_NO_LEVEL, gain=None, bits=None, fd: int | None = None, scratch: Scratch | None = None) -> bool:
        """Columns [c0, c1) of raw rows [r0, r1) into ``out`` through :func:`cpframe.science.fused_isr.raw_rows`."""
        _offset, dtype, bzero = self.layout[amp.name]
        cols = amp.raw_shape[1]
        buf = self._pread(amp, r0, r1, fd, scratch)
        return raw_rows(buf, dtype.itemsize, bzero, cols, c0, c1, self.dither if self.seed is not None else None,
                        self.start[amp.name] + r0 * cols, self.dither_offset if self.seed is not None else 0.0, svec,
                        sat, sus, gain, out, bits)

    def read_block(self, amp, r0: int, r1: int, key: str | None = None) -> np.ndarray:
        """Raw rows [r0, r1) of one amp as float32, dithered, in read-out order (all columns).

        The array lives in the scratch buffer ``key`` (default: the amp's name) until the
        next read into that key.
        """
        cols = amp.raw_shape[1]
        seg = self.scratch.get(key or amp.name, (r1 - r0, cols), np.float32)
        self._rows(amp, r0, r1, 0, cols, seg)
        return seg

    def _amp_plan(self) -> list[tuple[Any, int, int, tuple, tuple, bool, float | None]]:
        """Per amp, once per raw: (amp, first and end data column, SAT level, SUSPECT level, whether any bit can
        be set, gain to multiply by)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            cfg = self.config
            plan = []
            for amp in self.det.amps:
                st = self.stats[amp.name]
                c0, c1, _ = amp.data_slice[1].indices(amp.raw_shape[1])
                sat = threshold(st.saturation_adu) if cfg.do_saturation else _NO_LEVEL
                sus = threshold(cfg.suspect_level) if cfg.do_suspect else _NO_LEVEL
                plan.append((amp, c0, c1, sat, sus, math.isfinite(sat[0]) or math.isfinite(sus[0]),
                             st.gain if self.units == "electron" else None))
            self._plan = plan
        return plan

    def amp_blocks(self, r0: int, r1: int, scratch: Scratch | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None], bool]:
        """Data columns of raw rows [r0, r1) of every amp, read-out order: serial overscan, SAT / SUSPECT bits
        (:data:`cpframe.science.fused_isr.RAW_SAT` ...; None: no bit set), gain, crosstalk; with a linearizer
        also the parallel overscan and the linearizer (third value True: the parallel overscan is done).
        Work arrays from ``scratch`` (default: the raw's own)."""
        cfg = self.config
        scratch = scratch or self.scratch
        segs: dict[str, np.ndarray] = {}
        bits: dict[str, np.ndarray | None] = {}
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for amp, c0, c1, sat, sus, do_bits, gain in self._amp_plan():
                seg = scratch.get(amp.name, (r1 - r0, c1 - c0), np.float32)
                b = scratch.get("bits" + amp.name, (r1 - r0, c1 - c0), np.int32) if do_bits else None
                vec = self.svec[amp.name]
                any_bit = self._rows(amp, r0, r1, c0, c1, seg, None if vec is None else vec[r0:r1], sat, sus, gain,
                                     b, fd, scratch)
                segs[amp.name] = seg
                bits[amp.name] = b if any_bit else None
        finally:
            os.close(fd)
        if cfg.do_crosstalk:
            _crosstalk(self.det, segs, self.calibs.crosstalk,
                       self.calibs.crosstalk_quadratic if cfg.do_quadratic_crosstalk else None, self.xt_gains)
        if cfg.do_linearize:  # pixel by pixel (cpframe/science/linearity.py), as run_isr, after the parallel level
            for amp in self.det.amps:
                seg, pv = segs[amp.name], self.pvec[amp.name]
                if pv is not None:
                    seg -= pv
                st = self.stats[amp.name]
                self.calibs.linearizer.correct(seg, amp.name, st.gain if self.units == "electron" else None)
        return segs, bits, bool(cfg.do_linearize)

    def prepass_state(self) -> dict[str, Any]:
        """What the prepass found (small, picklable; :data:`_PREPASS_FIELDS`)."""
        return {k: self.__dict__[k] for k in _PREPASS_FIELDS if k in self.__dict__}


#: What :class:`_RawSource`'s prepass keeps of a raw: vectors and numbers per amp, the header and how to read and
#: dither its rows again.  About 0.2 MB per full-size raw.
_PREPASS_FIELDS = ("path", "det", "what", "units", "header", "cards", "seed", "dither", "dither_offset",
                   "layout", "stats", "svec", "pvec", "start", "xt_gains", "dark_scale", "cr_index")


def prepass(raw_path: str | os.PathLike, isr_config: IsrConfig, calib_paths: Mapping[str, Any] | None = None
            ) -> dict[str, Any]:
    """The prepass of one raw (step 1 of the module docstring), for :func:`isr_combine`'s ``prepasses``.

    The planner runs it as the raw's own ISR quantum, so the prepasses of a detector's raws
    run in parallel on the cluster's workers while the combine waits for them; the combine
    then only streams.  Raises what the prepass inside :func:`isr_combine` raises.
    """
    return _RawSource(str(raw_path), isr_config, _calibs(calib_paths), calib_paths or {}).prepass_state()


def prepass_with_isr(raw_path: str | os.PathLike, isr_config: IsrConfig, calib_paths: Mapping[str, Any] | None
                     ) -> tuple[dict[str, Any], Any]:
    """(:func:`prepass`, the raw's whole ISR image in memory, made as the unfused ISR quantum makes it), for a step
    between ISR and a fused combine that needs each whole image (CpDark's cosmic rays, CpFlatMeasure).

    The overscans are fitted once: the prepass takes the vectors and numbers ``run_isr``
    recorded (its ``overscans``) instead of reading every amp again and refitting them; they
    are the same arrays, since both read the same dithered segments and run the same
    functions in the same order (tests/test_fused_prepass.py).
    """
    from cpframe.science.isr import run_isr

    path = str(raw_path)
    calibs = load_calibs(dict(calib_paths or {}))
    raw = read_raw(path)
    overscans: dict[str, Any] = {}
    img, _ = run_isr(raw, isr_config, calibs, overscans=overscans)
    state = _RawSource(path, isr_config, calibs, calib_paths or {}, raw=raw, overscans=overscans).prepass_state()
    return state, img


def prepass_cosmic_rays(raw_path: str | os.PathLike, isr_config: IsrConfig, calib_paths: Mapping[str, Any] | None,
                        cr_config: Any) -> dict[str, Any]:
    """:func:`prepass` plus CpDark's cosmic rays of the raw (cpframe.science.tasks.dark_cr_task), for a fused dark.

    The cosmic-ray finder needs the whole ISR image (median filters, neighbours, a global
    noise level), so the raw's ISR runs here in memory, exactly as the unfused ISR quantum
    runs it, and only the flat indices of its CR pixels are kept (``cr_index``, a few
    thousand per dark); the combine streams the raw again and sets ``CR`` there and clears
    ``BAD``, as the unfused CpDark step does on its file.  Nothing is written.
    """
    from cpframe.science.defects import find_cosmic_rays

    state, img = prepass_with_isr(raw_path, isr_config, calib_paths)
    cr, _groups = find_cosmic_rays(img.image, img.variance, img.mask, cr_config)
    del img
    state["cr_index"] = np.flatnonzero(cr.reshape(-1))
    return state


def _apply_cosmic_rays(mk: np.ndarray, index: np.ndarray, y0: int, y1: int, width: int, cr_bit, bad_bit) -> None:
    """CpDark on one block of an exposure (output rows [y0, y1) in ``mk``): CR at its cosmic-ray pixels, no BAD."""
    lo, hi = np.searchsorted(index, (y0 * width, y1 * width))
    flat = mk.reshape(-1)
    flat[index[lo:hi] - y0 * width] |= cr_bit
    mk &= ~bad_bit


def _raw_layout(path: str, det, known: Mapping[str, tuple] | None = None) -> dict[str, tuple[int, np.dtype, int]]:
    """Data offset, big-endian dtype and BZERO of every amp's segment (uncompressed images only).

    ``known``: :attr:`cpframe.science.imageio.RawExposure.segment_layout` of the raw, read with its headers (issue
    14: the headers are then not read and parsed a second time, 4.4 ms of a full-size raw's prepass); else the
    file's headers are read here."""
    if known is None:
        hdus = {str(h.get("EXTNAME", "")): (h, off) for h, off in _hdu_headers(path)}
        known = {}
        for amp in det.amps:
            h, off = hdus.get("SEGMENT" + amp.name[1:], (None, None))
            if h is not None:
                known[amp.name] = (int(off), int(h.get("BITPIX", 0)), float(h.get("BZERO", 0) or 0),
                                   float(h.get("BSCALE", 1)), bool(h.get("ZIMAGE")))
    out = {}
    for amp in det.amps:
        off, bitpix, bzero, bscale, compressed = known.get(amp.name, (None, None, 0.0, 1.0, False))
        if off is None or bitpix not in (16, 32) or bscale != 1.0 or compressed or bzero != int(bzero):
            raise FusedUnsupported(f"{path}: amp {amp.name} is not an uncompressed 16/32-bit integer image.")
        out[amp.name] = (int(off), np.dtype(">i2" if bitpix == 16 else ">i4"), int(bzero))
    return out


def _bands(det, r0: int, r1: int) -> list[tuple[int, int, list]]:
    """Output row ranges (y0, y1) touched by raw rows [r0, r1), each with its amps (must cover the width)."""
    bands: dict[tuple[int, int], list] = {}
    for amp in det.amps:
        y = amp.bbox[0].start
        if amp.flip_y:
            y0, y1 = y + amp.data_rows - r1, y + amp.data_rows - r0
        else:
            y0, y1 = y + r0, y + r1
        bands.setdefault((y0, y1), []).append(amp)
    width = det.shape[1]
    out = []
    for (y0, y1), amps in sorted(bands.items()):
        if sum(a.data_cols for a in amps) != width:
            raise FusedUnsupported(f"detector {det.id}: amps of one output row band do not share their row flip.")
        out.append((y0, y1, amps))
    return out


def isr_combine(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike | None,
                isr_config: IsrConfig, combine_config: CombineConfig,
                calib_paths: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                scales: Sequence[float] | None = None, memory_bytes: int = 128 * 2**20,
                extra_header: Mapping[str, Any] | None = None, prepasses: Sequence[Mapping[str, Any]] | None = None,
                threads: int = 1):
    """ISR of every raw and the combine, streamed in row blocks (module docstring).

    Parameters
    ----------
    raw_paths : sequence of path-like
        Raws of one detector.
    output_path : path-like or None
        Product file; None keeps the product in memory only.
    isr_config, combine_config
        As for :func:`cpframe.science.isr.run_isr` and :func:`cpframe.science.combine.combine_files`.
    calib_paths : mapping or sequence of mappings, optional
        ISR calibrations (paths) for every raw, or one mapping per raw.
    scales : sequence of float, optional
        One per raw (``InputList``).
    memory_bytes : int
        Budget of what grows with the number of raws: their per-input state
        (:func:`input_state_bytes`) and their row blocks.
    extra_header : mapping, optional
        More primary-header cards of the product.
    prepasses : sequence of mappings, optional
        One :func:`prepass` result per raw (same order), made elsewhere (the raws' ISR quanta);
        without them the prepass runs here, one raw after the other.
    threads : int
        Threads streaming the blocks: each block's raws are split between them (a raw's state is only ever
        touched by one thread at a time, its blocks in row order), then its rows for the combine.  The product
        is the same bit for bit for any number.  Each thread holds two more raws' rows in flight, so the budget
        may give fewer rows per block, and the exposures' FINAL MEDIAN (histogram bins from the first block)
        and the grouping of their sums may then differ slightly (docs/algorithms.md "Threads").

    Returns
    -------
    (MaskedImage, CombineResult, list of FusedExposure)

    Raises
    ------
    FusedUnsupported
        Settings or files the fused path cannot handle (run the unfused path instead).
    IsrError, CombineError
        As the unfused path.
    """
    from cpframe.science.combine import MSG_NO_INPUTS, CombineError
    from cpframe.science.imageio import MaskedImage

    what = combine_config.dataset_type or combine_config.calibration_type
    paths = [str(p) for p in raw_paths]
    if not paths:
        raise CombineError(MSG_NO_INPUTS.format(what=what))
    why = fused_unsupported(isr_config, combine_config)
    if why:
        raise FusedUnsupported("; ".join(why))
    per_raw = list(calib_paths) if isinstance(calib_paths, (list, tuple)) else [calib_paths or {}] * len(paths)
    cache: dict[tuple, IsrCalibs] = {}
    sources = []
    scratch = Scratch()
    if prepasses is not None and len(prepasses) != len(paths):
        raise FusedUnsupported(f"{len(prepasses)} prepasses for {len(paths)} raws.")
    for i, (p, cp) in enumerate(zip(paths, per_raw)):
        key = tuple(sorted((k, str(v)) for k, v in dict(cp or {}).items()))
        if key not in cache:
            cache[key] = _calibs(cp)
        sources.append(_RawSource(p, isr_config, cache[key], cp, scratch,
                                  prepass=None if prepasses is None else prepasses[i]))
    scratch.release("prepass", "prepass_os", "raw")
    det = sources[0].det
    if any(s.det.id != det.id or s.det.shape != det.shape for s in sources):
        raise CombineError(f"combine of {what}: raws of different detectors: "
                           f"{sorted({s.det.id for s in sources})}. Give the raws of one detector.")
    n = len(sources)
    headers = []
    for s in sources:
        h = dict(s.header)
        update_header(h, s.cards)
        headers.append(h)
    sc = resolve_scales(paths, combine_config, scales, headers)
    use_var = n < combine_config.max_visits_to_calc_error_from_input_variance
    data_rows = det.amps[0].data_rows
    if any(a.data_rows != data_rows for a in det.amps):
        raise FusedUnsupported(f"detector {det.id}: amps with different numbers of data rows.")
    n_bands = len(_bands(det, 0, 1))
    rows = fused_rows_for_budget(memory_bytes, n, det.shape[1], n_bands, use_var, data_rows, threads=threads,
                                 per_input_bytes=input_state_bytes(det) + max(  # + a dark's CR pixel indices
                                     (s.cr_index.nbytes for s in sources if s.cr_index is not None), default=0))
    shape = det.shape
    planes = output_planes(shape, output_path)
    out_image, out_var, out_mask, out_n = planes
    ignore = sum(1 << MASK_BITS[m] for m in combine_config.mask)
    stat = _stat_code(combine_config.combine)
    method = _clip_code(combine_config.clip_method)
    defects = {}
    for s in sources:
        if isr_config.do_defect and s.calibs.defects is not None:
            key = id(s.calibs)
            if key not in defects:
                dm = boxes_to_mask(s.calibs.defects, shape)
                defects[key] = (dm, {a.name for a in det.amps if dm[a.bbox].all()})
    flat_cfg = {}
    for s in sources:
        if isr_config.do_flat and id(s.calibs) not in flat_cfg:
            flat_cfg[id(s.calibs)] = _flat_config(s.calibs.flat, isr_config)
    bad_bit = np.int32(1 << MASK_BITS["BAD"])
    cr_bit = np.int32(1 << MASK_BITS["CR"])
    width = shape[1]
    workers = max(1, min(int(threads), n))
    scratches = [scratch] + [Scratch() for _ in range(workers - 1)]
    pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="cpframe-fused") if workers > 1 else None
    try:
        for r0 in range(0, data_rows, rows):
            r1 = min(data_rows, r0 + rows)
            bands = _bands(det, r0, r1)
            b = r1 - r0
            # the N inputs' blocks of every band: exactly what fused_rows_for_budget counted; each raw's
            # rows are read, corrected and placed one raw at a time (no second copy of all N blocks)
            # (buffers reused from block to block: Scratch)
            img = [scratch.get(f"img{k}", (n, b, width), np.float32) for k in range(len(bands))]
            msk = [scratch.get(f"msk{k}", (n, b, width), _BLOCK_MASK) for k in range(len(bands))]
            var = [scratch.get(f"var{k}", (n, b, width), np.float32) if use_var else None for k in range(len(bands))]
            calib_rows: list[dict[tuple, _Rows]] = [{} for _ in bands]
            for k, (y0, y1, _amps) in enumerate(bands):  # read once per block for all raws (and threads)
                for s in sources:
                    _calib_rows(s, y0, y1, calib_rows[k], scratch, f"cal{k}-")

            def isr(part: range, work: Scratch) -> None:
                """The ISR of raws ``part`` of this block into their slots of the N blocks (``work``: this thread's)."""
                for i in part:
                    s = sources[i]
                    segs, bits, pv_done = s.amp_blocks(r0, r1, work)
                    for k, (y0, y1, amps) in enumerate(bands):
                        im, mk = img[k][i], msk[k][i]
                        vr = var[k][i] if use_var else work.get("scratch_var", (b, width), np.float32)
                        _block_isr(s, segs, bits, pv_done, amps, im, mk, vr, y0, y1, calib_rows[k],
                                   defects.get(id(s.calibs)), flat_cfg.get(id(s.calibs)),
                                   s.acc if isr_config.do_standard_statistics else None)
                        if s.cr_index is not None:  # after the ISR statistics, as CpDark runs after the ISR
                            _apply_cosmic_rays(mk, s.cr_index, y0, y1, width, cr_bit, bad_bit)

            def combine(part: range) -> None:
                """The combine of rows ``part`` of this block, every band."""
                lo, hi = part.start, part.stop
                for k, (y0, _y1, _amps) in enumerate(bands):
                    combine_block(img[k][:, lo:hi], msk[k][:, lo:hi], var[k][:, lo:hi] if use_var else _NO_VAR, sc,
                                  ignore, stat, float(combine_config.clip), int(combine_config.n_iter), use_var, method,
                                  out=(out_image[y0 + lo:y0 + hi], out_var[y0 + lo:y0 + hi], out_mask[y0 + lo:y0 + hi],
                                       out_n[y0 + lo:y0 + hi]))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                in_threads(pool, isr, split(n, workers), scratches)  # each raw by one thread: its state is its own
                in_threads(pool, lambda part, _sc: combine(part), split(b, workers if b >= 2 * workers else 1),
                            scratches)
            del calib_rows
            del img, msk, var
    finally:
        if pool is not None:
            pool.shutdown()
    mark("fused: streamed")
    for w in scratches:
        w.release()  # the row blocks go before the product's repair, statistics and write
    exposures = []
    for s, h in zip(sources, headers):
        bad_amps = defects.get(id(s.calibs), (None, set()))[1]
        cards: dict[str, Any] = {}
        for amp in det.amps:
            st = s.stats[amp.name]
            acc = s.acc[amp.name]
            if isr_config.do_standard_statistics:
                if amp.name not in bad_amps and acc.n:
                    st.mean, st.stdev, st.median = acc.finish()
                st.n_sat, st.n_bad = acc.n_sat, acc.n_bad
                cards[f"LSST ISR FINAL MEAN {amp.name}"] = st.mean
                cards[f"LSST ISR FINAL MEDIAN {amp.name}"] = st.median
                cards[f"LSST ISR FINAL STDEV {amp.name}"] = st.stdev
                cards[f"LSST ISR MASK SAT {amp.name}"] = st.n_sat
                cards[f"LSST ISR MASK BAD {amp.name}"] = st.n_bad
                cards[f"LSST ISR MASK SUSPECT {amp.name}"] = acc.n_sus
                cards[f"LSST ISR LEVEL {amp.name}"] = st.median - st.overscan_median_adu
        cards["LSST ISR UNITS"] = s.units
        cards["LSST ISR BOOTSTRAP"] = bool(isr_config.do_bootstrap)
        update_header(h, cards)
        exposures.append(FusedExposure(raw_path=s.path, header=h, stats=s.stats, units=s.units))
    n_bad = _repair_and_censor(out_image, out_var, out_mask, out_n, combine_config)
    del out_n, planes
    header = product_header(headers, combine_config, sc)
    amp_stats = _amp_qa(header, out_image, out_mask, combine_config, threads=workers)
    mark("fused: QA done")
    if extra_header:
        update_header(header, extra_header)
    product = MaskedImage(out_image, out_mask, out_var, header)
    res = CombineResult(path=str(output_path or ""), n_inputs=n, shape=tuple(shape), strip_rows=rows, n_bad=n_bad,
                        scales=list(sc), amp_stats=amp_stats)
    if output_path is not None:
        write_masked(output_path, out_image, out_mask, out_var, header)
    return product, res, exposures


_NO_VAR = np.zeros((1, 1, 1), np.float32)


def _flat_config(flat: _CalibRef, config: IsrConfig) -> IsrConfig:
    """The flat scale s of the whole flat, fixed as a USER scale (blocks only see their rows)."""
    if config.flat_scaling_type == "USER":
        return config
    f = read_rows(flat.layout, "IMAGE", 0, flat.shape[0])
    s = float(np.nanmean(f)) if config.flat_scaling_type == "MEAN" else float(np.nanmedian(f))
    return replace(config, flat_scaling_type="USER", flat_user_scale=s)


def _calib_rows(s: _RawSource, y0: int, y1: int, calib_rows: dict, scratch: Scratch, band_key: str) -> None:
    """Rows [y0, y1) of the raw's bias / dark / flat into ``calib_rows`` (once per file and band)."""
    for kind in ("bias", "dark", "flat"):
        if getattr(s.config, f"do_{kind}"):
            key = (kind, str(s.calib_paths[kind]))
            if key not in calib_rows:
                calib_rows[key] = getattr(s.calibs, kind).rows(y0, y1, scratch, f"{band_key}{len(calib_rows)}-")


def _block_isr(s: _RawSource, segs, bits, pv_done: bool, amps, im, mk, vr, y0: int, y1: int, calib_rows: dict,
               defect, flat_config, accs: Mapping[str, _AmpAccumulator] | None = None) -> None:
    """Every amp of one output band of one raw through the rest of run_isr's per-pixel steps, in its order
    (parallel overscan, orientation, bias, dark, defects, NaN masking, variance, flat), one compiled pass
    per amp (:func:`cpframe.science.fused_isr.amp_to_band`); with ``accs`` the exposure's per-amp statistics
    accumulate in the same pass (its first block through :meth:`_AmpAccumulator.add`: the histogram's range
    comes from that block's values)."""
    cfg = s.config

    def rows(kind):
        return calib_rows[(kind, str(s.calib_paths[kind]))] if getattr(cfg, f"do_{kind}") else None

    bias, dark, flat = rows("bias"), rows("dark"), rows("flat")
    dm = None if defect is None else defect[0][y0:y1]
    steps = s.__dict__.setdefault("_steps", {})
    for amp in amps:
        k = steps.get(amp.name)
        if k is None:  # the amp's constants, once per raw
            st = s.stats[amp.name]
            g = 1.0 if s.units == "electron" else st.gain
            k = steps[amp.name] = amp_steps(
                MASK_BITS, dark_scale=s.dark_scale, amp_bad=defect is not None and amp.name in defect[1],
                nan_masking=cfg.do_nan_masking,
                variance=(1.0 / g, (st.read_noise / g) ** 2) if cfg.do_variance else None,
                mask_negative_variance=cfg.mask_negative_variance,
                flat_scale=flat_config.flat_user_scale if flat is not None else 1.0,
                no_data_variance=cfg.no_data_variance)
        acc = None if accs is None else accs[amp.name]
        stats = None if acc is None else acc.kernel_args()
        got = amp_to_band(segs[amp.name], bits[amp.name], None if pv_done else s.pvec[amp.name], amp.flip_x,
                          amp.flip_y, amp.bbox[1].start, im, mk, vr, bias, dark, dm, flat, k, stats)
        if stats is not None:
            acc.merge(*got)
        elif acc is not None:
            cs = amp.bbox[1]
            acc.add(im[:, cs], mk[:, cs])
