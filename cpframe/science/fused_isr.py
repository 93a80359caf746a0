"""The per-pixel ISR of the fused path (:mod:`cpframe.science.fused`) as two compiled passes (numba, no GIL held).

Per block of raw rows and per amp:

* :func:`raw_rows`: the raw's big-endian integers -> float32 (+ BZERO, rounded once as astropy's scaled
  data read by run_isr), + the dither numbers (made in the kernel, below),
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

**The dither numbers** (the second half of this module) are those of :func:`cpframe.science.isr.run_isr`'s
``numpy.random.default_rng(seed).random(shape, dtype=float32)``, made inside the kernels for exactly the pixels
read, at any position of the stream:

* PCG64 (numpy's ``PCG64``, O'Neill's 128-bit LCG with the XSL-RR output): each draw steps
  ``state = state * M + inc`` (mod 2**128) and outputs 64 bits; numpy's float32 takes the low 32 bits of a
  draw, then the high 32 bits (its buffered ``next_uint32``), and keeps the top 24 of them:
  ``(u32 >> 8) * 2**-24``.  So float number ``p`` of the stream comes from draw ``p // 2``.
* Jumping ahead ``k`` draws is one affine map ``state * A_k + C_k``; the maps for ``k = 2**j`` are a table of
  64 rows made once per raw (:func:`jump_table`), and a jump by any ``k`` applies the rows of ``k``'s set
  bits.  A kernel reading rows in order keeps a cursor and jumps by the gap from the previous row.
* The 128-bit multiply is LLVM's ``i128`` (:func:`_muladd`, a numba intrinsic), as numpy's C code uses the
  compiler's ``__uint128_t``.

The numbers equal numpy's bit for bit (tests/test_pcg64.py); one thread makes a full-size raw's 19 million in
about half numpy's time (numpy can position a generator, ``PCG64.advance``, but only from Python).  The
generator lives here, beside the kernels that call it, because numba's cache of a compiled function is renewed
when its own file changes, not when a compiled function it calls from another module does.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["DitherStream", "accumulate_block", "accumulate_row", "amp_steps", "amp_to_band", "fill_floats",
           "jump_table", "raw_rows", "threshold"]

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

    ``dither``: the raw's dither numbers (:class:`DitherStream`), ``dither_start``:
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
    numbers :func:`accumulate_block` gives for the amp's columns of the block (the same
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
    # row by row in the output's orientation, each step a branch-free loop over the amp's part of the row; a
    # mirrored index is unsigned (a signed one is checked for wrap-around, which keeps LLVM from vectorising the
    # loop: 11x slower)
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
                o[x] = s[np.uint64(n - 1 - x)]
        else:
            for x in range(n):
                o[x] = s[x]
        if do_pvec:
            if flip_x:
                for x in range(n):
                    o[x] = o[x] - pvec[np.uint64(n - 1 - x)]
            else:
                for x in range(n):
                    o[x] = o[x] - pvec[x]
        if do_bits:
            b = bits[r]
            if flip_x:
                for x in range(n):
                    rb = b[np.uint64(n - 1 - x)]
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
        if do_acc:  # accumulate_block's step for this row, in its order
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
            hist[np.uint64(nb + 1)] += 1
        else:  # (unsigned indices: no wrap-around check, 11 % faster)
            hist[np.uint64(k) + np.uint64(1)] += 1
    return n, s1, s2, n_sat, n_bad, n_sus


@njit(nogil=True, cache=True)
def accumulate_block(values, mask, ignore, sat_bit, bad_bit, sus_bit, shift, lo, inv_width, hist):
    """:func:`accumulate_row` over the rows of a block, from zero: ``(n, sum, sum of squares, SAT, BAD, SUSPECT
    counts)`` (:class:`cpframe.science.fused_stats._AmpAccumulator`'s first block; no temporaries)."""
    n = n_sat = n_bad = n_sus = 0
    s1 = s2 = 0.0
    for r in range(values.shape[0]):
        n, s1, s2, n_sat, n_bad, n_sus = accumulate_row(values[r], mask[r], ignore, sat_bit, bad_bit, sus_bit, shift,
                                                        lo, inv_width, hist, n, s1, s2, n_sat, n_bad, n_sus)
    return n, s1, s2, n_sat, n_bad, n_sus


# ----------------------------------------------------------------------------------------------
# the dither numbers: numpy's PCG64 float32 stream (module docstring)
# ----------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1
#: PCG64's multiplier (numpy's ``PCG_DEFAULT_MULTIPLIER_128``), high and low 64 bits.
M_HI = np.uint64(0x2360ED051FC65DA4)
M_LO = np.uint64(0x4385DF649FCCF645)


@intrinsic
def _muladd(typingctx, s_hi, s_lo, a_hi, a_lo, c_hi, c_lo):
    """``(s * a + c) mod 2**128`` of three 128-bit numbers given as (high, low) uint64 halves."""
    u64 = types.uint64
    sig = types.UniTuple(u64, 2)(u64, u64, u64, u64, u64, u64)

    def codegen(context, builder, signature, args):
        i128, i64 = ir.IntType(128), ir.IntType(64)
        shift = ir.Constant(i128, 64)

        def join(hi, lo):
            return builder.or_(builder.shl(builder.zext(hi, i128), shift), builder.zext(lo, i128))

        r = builder.add(builder.mul(join(args[0], args[1]), join(args[2], args[3])), join(args[4], args[5]))
        hi = builder.trunc(builder.lshr(r, shift), i64)
        return context.make_tuple(builder, signature.return_type, [hi, builder.trunc(r, i64)])

    return sig, codegen


@njit(nogil=True, cache=True, inline="always")
def _output(hi, lo):
    """PCG's XSL-RR output of a state: (high xor low) rotated right by the top 6 bits."""
    v = hi ^ lo
    rot = hi >> np.uint64(58)
    return (v >> rot) | (v << ((np.uint64(64) - rot) & np.uint64(63)))


@njit(nogil=True, cache=True, inline="always")
def _u32_float(u):
    """numpy's float32 of a 32-bit draw: its top 24 bits times 2**-24 (exact)."""
    return np.float32(np.uint32(u) >> np.uint32(8)) * np.float32(1.0 / 16777216.0)


@njit(nogil=True, cache=True)
def _jump_table(inc_hi, inc_lo):
    tab = np.empty((64, 4), np.uint64)
    a_hi, a_lo, c_hi, c_lo = M_HI, M_LO, inc_hi, inc_lo
    zero, one = np.uint64(0), np.uint64(1)
    for j in range(64):
        tab[j, 0] = a_hi
        tab[j, 1] = a_lo
        tab[j, 2] = c_hi
        tab[j, 3] = c_lo
        # the map of 2k draws from that of k: A_2k = A_k**2, C_2k = C_k * (A_k + 1)
        p_hi, p_lo = _muladd(a_hi, a_lo, zero, one, zero, one)
        c_hi, c_lo = _muladd(c_hi, c_lo, p_hi, p_lo, zero, zero)
        a_hi, a_lo = _muladd(a_hi, a_lo, a_hi, a_lo, zero, zero)
    return tab


def jump_table(inc: int) -> np.ndarray:
    """The jump maps of ``2**j`` draws (j = 0..63) of a PCG64 with increment ``inc``: rows ``(A_hi, A_lo, C_hi,
    C_lo)``; row 0 is one draw (the multiplier and the increment)."""
    return _jump_table(np.uint64(inc >> 64), np.uint64(inc & _MASK64))


@njit(nogil=True, cache=True, inline="always")
def _jump(s_hi, s_lo, k, tab):
    s_hi, s_lo = np.uint64(s_hi), np.uint64(s_lo)  # (an int64 and a uint64 unify to float64 in numba)
    j = 0
    while k > 0:
        if k & 1:
            s_hi, s_lo = _muladd(s_hi, s_lo, tab[j, 0], tab[j, 1], tab[j, 2], tab[j, 3])
        k >>= 1
        j += 1
    return s_hi, s_lo


@njit(nogil=True, cache=True)
def fill_floats(tab, c_hi, c_lo, cursor, p, out):
    """Float numbers ``[p, p + out.size)`` of the stream into ``out`` (float32), from a generator whose state
    after ``cursor`` draws is ``(c_hi, c_lo)`` (``cursor <= p // 2``; from Python, as ``numpy.uint64``).

    Returns ``(c_hi, c_lo, cursor)`` for the next call: the state after the draws whose two numbers were both
    taken (a draw whose high number may still be wanted is not counted), so ranges in increasing order
    continue from there.  For use inside other compiled kernels.
    """
    m_hi, m_lo, i_hi, i_lo = tab[0, 0], tab[0, 1], tab[0, 2], tab[0, 3]
    n = out.size
    c_hi, c_lo = np.uint64(c_hi), np.uint64(c_lo)
    if n == 0:
        return c_hi, c_lo, cursor
    d = p // 2
    s_hi, s_lo = _jump(c_hi, c_lo, d - cursor, tab)
    k = 0
    if p & 1:  # the range starts with a draw's high number
        s_hi, s_lo = _muladd(s_hi, s_lo, m_hi, m_lo, i_hi, i_lo)
        out[0] = _u32_float(_output(s_hi, s_lo) >> np.uint64(32))
        d += 1
        k = 1
    while k + 1 < n:
        s_hi, s_lo = _muladd(s_hi, s_lo, m_hi, m_lo, i_hi, i_lo)
        u = _output(s_hi, s_lo)
        out[k] = _u32_float(u & np.uint64(0xFFFFFFFF))
        out[k + 1] = _u32_float(u >> np.uint64(32))
        d += 1
        k += 2
    if k < n:  # ends with a draw's low number: the cursor stays before that draw
        t_hi, t_lo = _muladd(s_hi, s_lo, m_hi, m_lo, i_hi, i_lo)
        out[k] = _u32_float(_output(t_hi, t_lo) & np.uint64(0xFFFFFFFF))
    return s_hi, s_lo, d


class DitherStream:
    """The float32 numbers of ``numpy.random.default_rng(seed)`` (a PCG64) by position, from its state.

    ``state``: ``numpy.random.PCG64(seed).state`` (a fresh generator: nothing buffered).  Small and
    picklable; :attr:`table` is made on first use in each process.
    """

    def __init__(self, state: Mapping[str, Any]):
        inner = state["state"]
        self.s_hi = np.uint64(int(inner["state"]) >> 64)
        self.s_lo = np.uint64(int(inner["state"]) & _MASK64)
        self.inc = int(inner["inc"])
        self._table: np.ndarray | None = None

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            self._table = jump_table(self.inc)
        return self._table

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DitherStream)
                and (self.s_hi, self.s_lo, self.inc) == (other.s_hi, other.s_lo, other.inc))

    def __hash__(self) -> int:
        return hash((int(self.s_hi), int(self.s_lo), self.inc))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}

    def floats(self, start: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """Numbers ``[start, start + count)`` (float32, without any offset)."""
        out = np.empty(count, np.float32) if out is None else out[:count]
        fill_floats(self.table, self.s_hi, self.s_lo, 0, int(start), out)
        return out
