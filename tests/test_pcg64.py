"""The fused ISR's dither numbers (cpframe.science.fused_isr: DitherStream, fill_floats, jump_table) against numpy's own generator."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cpframe.science.fused_isr import DitherStream, fill_floats, jump_table


def _numpy(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).random(count, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2024111000010 & 0xFFFFFFFF, 2**32 - 1])
def test_numbers_equal_numpys_float32_stream_at_any_position(seed):
    ref = _numpy(seed, 200_003)
    s = DitherStream(np.random.PCG64(seed).state)
    np.testing.assert_array_equal(s.floats(0, ref.size).view(np.int32), ref.view(np.int32))
    for start, count in [(1, 1), (1, 2), (2, 1), (7, 5000), (12_344, 777), (ref.size - 5, 5), (ref.size - 1, 1),
                         (99_999, 0), (131_072, 65_536)]:
        got = s.floats(start, count)
        assert got.shape == (count,)
        np.testing.assert_array_equal(got, ref[start:start + count], err_msg=f"start {start}, count {count}")


def test_far_positions_equal_numpys_advance():
    # a position past 2**32 numbers (a jump using high rows of the table), checked against numpy's own advance
    seed, start = 99, 3 * 2**32 + 5
    bg = np.random.PCG64(seed)
    bg.advance(start // 2)
    ref = np.random.Generator(bg).random(9, dtype=np.float32)[start % 2:start % 2 + 8]
    np.testing.assert_array_equal(DitherStream(np.random.PCG64(seed).state).floats(start, 8), ref)


def test_a_cursor_carries_over_ranges_in_order_including_a_shared_draw():
    seed = 4242
    ref = _numpy(seed, 10_000)
    s = DitherStream(np.random.PCG64(seed).state)
    tab = s.table
    hi, lo, cur = s.s_hi, s.s_lo, 0
    # contiguous odd-length ranges: every second one starts with the high half of a draw the previous ended in
    p = 3
    for n in (5, 7, 1, 1, 4, 9, 2, 301):
        out = np.empty(n, np.float32)
        hi, lo, cur = fill_floats(tab, hi, lo, cur, p, out)
        hi, lo = np.uint64(hi), np.uint64(lo)  # numba hands back Python ints; a Python caller passes uint64
        np.testing.assert_array_equal(out, ref[p:p + n], err_msg=f"range at {p}")
        assert cur <= (p + n) // 2
        p += n
    # then a gap, as between the rows of an amp read column range by column range
    out = np.empty(33, np.float32)
    fill_floats(tab, hi, lo, cur, p + 1000, out)
    np.testing.assert_array_equal(out, ref[p + 1000:p + 1033])


def test_jump_table_row_zero_is_one_draw_and_the_stream_pickles_without_its_table():
    state = np.random.PCG64(7).state
    tab = jump_table(state["state"]["inc"])
    assert tab.shape == (64, 4) and tab.dtype == np.uint64
    assert (int(tab[0, 0]) << 64 | int(tab[0, 1])) == 0x2360ED051FC65DA44385DF649FCCF645
    assert (int(tab[0, 2]) << 64 | int(tab[0, 3])) == state["state"]["inc"]
    # row j jumps 2**j draws: compare with numpy's advance for a few j
    for j in (1, 5, 40, 63):
        bg = np.random.PCG64(7)
        bg.advance(2**j)
        a = int(tab[j, 0]) << 64 | int(tab[j, 1])
        c = int(tab[j, 2]) << 64 | int(tab[j, 3])
        assert (state["state"]["state"] * a + c) % 2**128 == bg.state["state"]["state"], j
    s = DitherStream(state)
    s.floats(0, 4)
    again = pickle.loads(pickle.dumps(s))
    assert again._table is None and again == s and again != DitherStream(np.random.PCG64(8).state)
    np.testing.assert_array_equal(again.floats(10, 20), _numpy(7, 30)[10:])
