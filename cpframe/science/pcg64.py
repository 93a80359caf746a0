"""numpy's PCG64 float32 stream, compiled and addressable by position (the ISR dither of :mod:`cpframe.science.fused`).

:func:`cpframe.science.isr.run_isr` dithers each raw with ``numpy.random.default_rng(seed).random(shape,
dtype=float32)``, amp after amp.  The fused path reads a raw in blocks of rows and columns, so it needs
the numbers of any range of pixels, and in the prepass only those of the overscan columns.  numpy can
position a generator (``PCG64.advance``) but only from Python, per call; here the same generator runs inside
the compiled kernels:

* PCG64 (numpy's ``PCG64``, O'Neill's 128-bit LCG with the XSL-RR output): each draw steps
  ``state = state * M + inc`` (mod 2**128) and outputs 64 bits; numpy's float32 takes the low 32 bits of a
  draw, then the high 32 bits (its buffered ``next_uint32``), and keeps the top 24 of them:
  ``(u32 >> 8) * 2**-24``.  So float number ``p`` of the stream comes from draw ``p // 2``.
* Jumping ahead ``k`` draws is one affine map ``state * A_k + C_k``; the maps for ``k = 2**j`` are a table of
  64 rows made once per raw (:func:`jump_table`), and a jump by any ``k`` applies the rows of ``k``'s set
  bits.  A kernel reading rows in order keeps a cursor and jumps by the gap from the previous row.
* The 128-bit multiply is LLVM's ``i128`` (:func:`_muladd`, a numba intrinsic), as numpy's C code uses the
  compiler's ``__uint128_t``.

The numbers equal numpy's bit for bit (tests/test_pcg64.py); one thread makes a full-size raw's 19 million
in about half numpy's time, and a range costs only its own length plus a few multiplications.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["DitherStream", "fill_floats", "jump_table"]

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
