"""What the benchmarks print as a control: how many cores other jobs leave free right now."""

from __future__ import annotations

import time


def _burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def parallel_control() -> float:
    """Speed-up of a pure CPU loop on 2 processes vs 1, measured now: how many cores other jobs
    leave us (2.0 on an idle 2-core machine)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    for _ in range(8):
        _burn(2_000_000)
    serial = time.perf_counter() - t0
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        t0 = time.perf_counter()
        list(ex.map(_burn, [2_000_000] * 8))
        par = time.perf_counter() - t0
    return serial / par
