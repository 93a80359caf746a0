"""The per-pixel ISR of the fused path (:mod:`cpframe.science.fused`) as two compiled passes (numba, no GIL held).

Per block of raw rows and per amp:

* :func:`raw_rows`: the raw's big-endian integers -> float32 (+ BZERO, rounded once as astropy's scaled
  data read by run_isr), + the dither numbers (made in the kernel, :mod:`cpframe.science.pcg64`),
  - the serial-overscan level of each row, the SAT / SUSPECT bits, x gain (electron units),
  for the amp's data columns only (the overscan columns are not needed after the prepass).
* crosstalk (between amps) and a linearizer, when enabled, run in between on these segments
  (numpy, :func:`cpframe.science.isr._crosstalk`; the linearizer's own code);
* :func:`amp_to_band`: - the parallel-overscan level of each column, the flips to the
  assembled orientation, bias, dark (scaled), defects, NaN masking, variance (and negative
  variance masking), flat (with its NO_DATA pixels), written straight into the block of the
  output image, mask and variance planes.

Each float32 operation is the one :func:`cpframe.science.isr.run_isr` does with numpy, in the
same order and precision (the scalars are passed as float32, no fused multiply-add), so the
product equals the numpy steps bit for bit (tests/test_fused_isr.py) and the unfused product
to float32 precision (tests/test_fused.py).  Before (issue 14) the same steps were about 15
numpy passes over each block, with their temporaries.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from cpframe.science.pcg64 import DitherStream, fill_floats

__all__ = ["amp_steps", "amp_to_band", "raw_rows", "threshold"]

_NONE_F = np.zeros((1, 1), np.float32)
_NONE_I = np.zeros((1, 1), np.int32)
_NONE_B = np.zeros((1, 1), np.bool_)
_NONE_V = np.zeros(1, np.float32)
_NONE_TABLE = np.zeros((1, 4), np.uint64)


def threshold(level: Any) -> tuple[float, bool]:
    """A SAT / SUSPECT level as numpy compares a float32 image with it: ``(level, in_float32)``.

    numpy (NEP 50) compares with a Python float in float32 (the level rounded to float32), with
    a numpy float64 in float64; the kernel does the same.  No level (inf / NaN): +inf, never set.
    """
    v = float(level)
    if not math.isfinite(v):
        return math.inf, False
    in32 = np.result_type(np.float32, level) == np.float32
    return (float(np.float32(v)) if in32 else v), bool(in32)


def raw_rows(raw: np.ndarray, itemsize: int, bzero: int, cols: int, c0: int, c1: int,
             dither: DitherStream | None, dither_start: int, dither_offset: float, svec: np.ndarray | None,
             sat: tuple[float, bool], sus: tuple[float, bool], gain: float | None,
             out: np.ndarray, bits: np.ndarray | None) -> bool:
    """Columns [c0, c1) of raw rows as read (``raw``: the rows' bytes, ``cols`` columns) into ``out``.

    ``dither``: the raw's dither numbers (:class:`cpframe.science.pcg64.DitherStream`), ``dither_start``:
    the number of the first pixel of these rows in that stream (only the numbers of columns [c0, c1) are
    made), ``svec``: the serial level per row, ``gain``: multiply by it (electron units), ``bits``: where
    SAT / SUSPECT bits go (``None``: not computed).  Returns whether any bit was set.
    """
    view = raw.view(np.uint16 if itemsize == 2 else np.uint32)
    rows = view.size // cols
    sv = _NONE_V if svec is None else svec.reshape(-1)
    b = _NONE_I if bits is None else bits
    if dither is None:
        tab, d_hi, d_lo = _NONE_TABLE, np.uint64(0), np.uint64(0)
    else:
        tab, d_hi, d_lo = dither.table, dither.s_hi, dither.s_lo
    return _raw_rows(view, rows, cols, itemsize, bzero, c0, c1, tab, d_hi, d_lo, int(dither_start),
                     dither is not None, np.float32(dither_offset), sv, svec is not None, sat[0], sat[1], sus[0],
                     sus[1], bits is not None, np.float32(1.0 if gain is None else gain), gain is not None, out, b)


@njit(nogil=True, cache=True, error_model="numpy")
def _raw_rows(view, rows, cols, itemsize, bzero, c0, c1, tab, d_hi, d_lo, d_start, do_dither, doff, svec, do_svec,
              sat, sat32, sus, sus32, do_bits, gain, do_gain, out, bits):
    # row by row, each step a branch-free loop over the row (vectorised by LLVM; the row stays in L1)
    any_bit = np.int32(0)
    sat_f = np.float32(sat)
    sus_f = np.float32(sus)
    bz = np.float32(bzero)
    n = c1 - c0
    dither = np.empty(n if do_dither else 0, np.float32)
    cursor = 0  # the dither generator: its state after ``cursor`` draws (fill_floats)
    for r in range(rows):
        src = view[r * cols + c0:r * cols + c1]
        x = out[r]
        if itemsize == 2:
            for c in range(n):
                u = np.int32(src[c])
                v = ((u >> 8) & 0xFF) | ((u & 0xFF) << 8)
                x[c] = np.float32(v - ((v & 0x8000) << 1)) + bz
        elif bzero == 0:
            for c in range(n):
                u = np.uint32(src[c])
                v = ((u & 0xFF) << 24) | ((u & 0xFF00) << 8) | ((u >> 8) & 0xFF00) | ((u >> 24) & 0xFF)
                x[c] = np.float32(np.int32(v))
        else:  # int32 + BZERO: the exact sum rounded once to float32, as astropy's scaled data -> float32
            for c in range(n):
                u = np.uint32(src[c])
                v = ((u & 0xFF) << 24) | ((u & 0xFF00) << 8) | ((u >> 8) & 0xFF00) | ((u >> 24) & 0xFF)
                x[c] = np.float32(np.int64(np.int32(v)) + bzero)
        if do_dither:
            d_hi, d_lo, cursor = fill_floats(tab, d_hi, d_lo, cursor, d_start + r * cols + c0, dither)
            for c in range(n):
                x[c] = x[c] + (dither[c] + doff)
        if do_svec:
            level = svec[r]
            for c in range(n):
                x[c] = x[c] - level
        if do_bits:
            m = bits[r]
            if sat32 and sus32:
                for c in range(n):
                    m[c] = np.int32(x[c] >= sat_f) | (np.int32(x[c] >= sus_f) << 1)
            else:
                for c in range(n):
                    m[c] = (np.int32((x[c] >= sat_f) if sat32 else (np.float64(x[c]) >= sat))
                            | (np.int32((x[c] >= sus_f) if sus32 else (np.float64(x[c]) >= sus)) << 1))
            for c in range(n):
                any_bit |= m[c]
        if do_gain:
            for c in range(n):
                x[c] = x[c] * gain
    return any_bit != 0


#: Bits :func:`raw_rows` sets (1: SAT, 2: SUSPECT), translated by :func:`amp_to_band` into the mask's.
RAW_SAT, RAW_SUSPECT = 1, 2


def amp_steps(mask_bits: dict[str, int], *, dark_scale: float = 1.0, amp_bad: bool = False, nan_masking: bool = False,
              variance: tuple[float, float] | None = None, mask_negative_variance: bool = False,
              flat_scale: float = 1.0, no_data_variance: float = 0.0) -> tuple:
    """The constants of one amp's steps for :func:`amp_to_band`, made once per raw (the same for every block).

    ``dark_scale``: the dark's exposure scale; ``amp_bad``: the whole amp is a defect; ``variance``:
    ``(1 / gain, (read noise / gain)**2)`` or None (no variance step); ``flat_scale``: the flat's scale
    (the fused path fixes it for the whole flat).
    """
    inv_g, rn2 = variance if variance is not None else (1.0, 0.0)
    return (np.int32(1 << mask_bits["SAT"]), np.int32(1 << mask_bits["SUSPECT"]), np.float32(dark_scale),
            np.float32(dark_scale * dark_scale), bool(amp_bad), np.int32(1 << mask_bits["BAD"]), bool(nan_masking),
            np.int32(1 << mask_bits["UNMASKEDNAN"]), variance is not None, np.float32(inv_g), np.float32(rn2),
            bool(mask_negative_variance), np.float32(flat_scale), np.float32(flat_scale * flat_scale),
            np.int32(1 << mask_bits["NO_DATA"]), np.float32(no_data_variance))


def amp_to_band(seg, bits, pvec, flip_x: bool, flip_y: bool, x0: int, im, mk, vr, bias, dark, defect, flat,
                steps: tuple, stats: tuple | None = None) -> tuple:
    """One amp's segment (read-out order) into its columns ``x0 ...`` of an output block (module docstring).

    ``bits``: :func:`raw_rows`' SAT / SUSPECT bits or None; ``pvec``: the parallel level per column or None
    (already subtracted); ``bias``, ``dark``, ``flat``: the calibration's rows of this block (``.image``,
    ``.mask``, ``.variance``, full width) or None; ``defect``: the block's rows of the defect mask or None;
    ``steps``: :func:`amp_steps`.  Every pixel of the amp's columns of ``im``, ``mk`` and ``vr`` is written
    (no need to clear them first).

    ``stats``: the exposure's statistics of these pixels as they are written, row by row while the row is in
    the cache (:meth:`cpframe.science.fused_stats._AmpAccumulator.kernel_args`: mask bits to ignore and to
    count, the histogram and its scale); returns ``(n, sum, sum of squares, SAT, BAD, SUSPECT counts)``, the
    numbers :func:`cpframe.science.fused_stats._accumulate` gives for the amp's columns of the block (the same
    additions in the same order), zeros without ``stats``.
    """
    acc = _NO_STATS if stats is None else stats
    return _amp_to_band(seg, _NONE_I if bits is None else bits, _NONE_V if pvec is None else pvec.reshape(-1), x0, im,
                        mk, vr, *(_NONE_PLANES if bias is None else (bias.image, bias.variance, bias.mask)),
                        *(_NONE_PLANES if dark is None else (dark.image, dark.variance, dark.mask)),
                        _NONE_B if defect is None else defect,
                        *(_NONE_PLANES if flat is None else (flat.image, flat.variance, flat.mask)),
                        bool(flip_x), bool(flip_y), bits is not None, pvec is not None, bias is not None,
                        dark is not None, defect is not None, flat is not None, *steps, stats is not None, *acc)


_NONE_PLANES = (_NONE_F, _NONE_F, _NONE_I)
#: ``stats`` of :func:`amp_to_band` when there are none (ignore, SAT, BAD, SUSPECT bits, shift, low edge,
#: 1 / bin width, histogram).
_NO_STATS = (np.int32(0), np.int32(0), np.int32(0), np.int32(0), 0.0, 0.0, 1.0, np.zeros(2, np.int32))


@njit(nogil=True, cache=True, error_model="numpy")
def _amp_to_band(seg, bits, pvec, x0, im, mk, vr, b_im, b_var, b_mk, d_im, d_var, d_mk, defect, f_im, f_var, f_mk,
                 flip_x, flip_y, do_bits, do_pvec, do_bias, do_dark, do_defect, do_flat,
                 sat_bit, sus_bit, d_scale, d_scale2, amp_bad, bad_bit, do_nan, nan_bit, do_var, inv_g, rn2, neg_var,
                 f_scale, f_scale2, nodata_bit, nodata_var, do_acc, ignore, sat_c, bad_c, sus_c, shift, lo,
                 inv_width, hist):
    # row by row in the output's orientation, each step a branch-free loop over the amp's part of the row
    rows, n = seg.shape
    x1 = x0 + n
    a_n = a_sat = a_bad = a_sus = 0
    a_s1 = a_s2 = 0.0
    for y in range(rows):
        r = rows - 1 - y if flip_y else y
        s = seg[r]
        o = im[y, x0:x1]
        m = mk[y, x0:x1]
        w = vr[y, x0:x1]
        if flip_x:
            for x in range(n):
                o[x] = s[n - 1 - x]
        else:
            for x in range(n):
                o[x] = s[x]
        if do_pvec:
            if flip_x:
                for x in range(n):
                    o[x] = o[x] - pvec[n - 1 - x]
            else:
                for x in range(n):
                    o[x] = o[x] - pvec[x]
        if do_bits:
            b = bits[r]
            if flip_x:
                for x in range(n):
                    rb = b[n - 1 - x]
                    m[x] = (sat_bit * (rb & 1)) | (sus_bit * ((rb >> 1) & 1))
            else:
                for x in range(n):
                    rb = b[x]
                    m[x] = (sat_bit * (rb & 1)) | (sus_bit * ((rb >> 1) & 1))
        else:
            for x in range(n):
                m[x] = 0
        for x in range(n):
            w[x] = 0.0
        if do_bias:
            bi, bv, bm = b_im[y, x0:x1], b_var[y, x0:x1], b_mk[y, x0:x1]
            for x in range(n):
                o[x] = o[x] - bi[x]
                w[x] = w[x] + bv[x]
                m[x] |= bm[x]
        if do_dark:
            di, dv, dm = d_im[y, x0:x1], d_var[y, x0:x1], d_mk[y, x0:x1]
            for x in range(n):
                o[x] = o[x] - d_scale * di[x]
                w[x] = w[x] + d_scale2 * dv[x]
                m[x] |= dm[x]
        if do_defect:
            if amp_bad:
                for x in range(n):
                    m[x] |= bad_bit
            else:
                de = defect[y, x0:x1]
                for x in range(n):
                    m[x] |= bad_bit * np.int32(de[x])
        if do_nan:
            for x in range(n):
                m[x] |= nan_bit * np.int32(o[x] - o[x] != 0)
        if do_var:
            for x in range(n):
                w[x] = w[x] + (o[x] * inv_g + rn2)
            if neg_var:
                for x in range(n):
                    m[x] |= bad_bit * np.int32(w[x] < 0)
        if do_flat:
            fi, fv_, fm = f_im[y, x0:x1], f_var[y, x0:x1], f_mk[y, x0:x1]
            for x in range(n):
                f = fi[x] / f_scale
                fv = fv_[x] / f_scale2
                ff = f * f
                w[x] = w[x] / ff + o[x] * o[x] * fv / (ff * f * f)
                o[x] = o[x] / f
                m[x] |= fm[x]
            for x in range(n):
                if fm[x] & nodata_bit:
                    o[x] = 0.0
                    w[x] = nodata_var
        if do_acc:  # fused_stats._accumulate on this row, in its order
            a_n, a_s1, a_s2, a_sat, a_bad, a_sus = accumulate_row(o, m, ignore, sat_c, bad_c, sus_c, shift, lo,
                                                                  inv_width, hist, a_n, a_s1, a_s2, a_sat, a_bad, a_sus)
    return a_n, a_s1, a_s2, a_sat, a_bad, a_sus


@njit(nogil=True, cache=True, inline="always")
def accumulate_row(values, mask, ignore, sat_bit, bad_bit, sus_bit, shift, lo, inv_width, hist, n, s1, s2, n_sat,
                   n_bad, n_sus):
    """One row's pixels into an exposure's per-amp statistics (:mod:`cpframe.science.fused_stats`): the SAT / BAD /
    SUSPECT counts, and for the pixels not ignored and finite their count, sums of deviations from ``shift`` and
    squares, and histogram (bins from ``lo``, ends: under / over; an empty ``hist``: counts only).  The running
    numbers go in and come out, so that rows add up exactly as one sequential loop would."""
    nb = hist.shape[0] - 2
    for x in range(values.shape[0]):
        mm = mask[x]
        if mm:
            n_sat += (mm & sat_bit) != 0
            n_bad += (mm & bad_bit) != 0
            n_sus += (mm & sus_bit) != 0
            if mm & ignore:
                continue
        if nb < 0:
            continue
        v = np.float64(values[x])
        if not math.isfinite(v):
            continue
        d = v - shift
        n += 1
        s1 += d
        s2 += d * d
        k = (v - lo) * inv_width
        if k < 0:
            hist[0] += 1
        elif k >= nb:
            hist[nb + 1] += 1
        else:
            hist[int(k) + 1] += 1
    return n, s1, s2, n_sat, n_bad, n_sus
