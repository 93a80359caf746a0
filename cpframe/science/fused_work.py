"""Work arrays and threads of the fused path (:mod:`cpframe.science.fused`): buffers reused from block to
block, the split of a block's work between the quantum's threads, and the product's planes."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

__all__ = ["Scratch", "in_threads", "output_planes", "split"]


class Scratch:
    """Work arrays reused from block to block and raw to raw (issue 14: allocation cost).

    A Dask worker runs with ``MALLOC_TRIM_THRESHOLD_`` set (distributed's nanny), which
    fixes glibc's mmap threshold at 128 KB: every larger temporary is a fresh ``mmap``
    whose pages fault in zeroed, and is unmapped when freed.  Allocated per block and per
    amp, that cost 12 s of system time for 20 full-size raws (4.5 million page faults,
    more than the ISR arithmetic).  Buffers taken here are allocated once at their largest
    size and handed out as contiguous views.
    """

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}
        self._views: dict[tuple, np.ndarray] = {}  # (key, shape, dtype) -> the view handed out (cheap repeats)

    def get(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A contiguous array of ``shape`` and ``dtype`` (contents undefined), valid until the next ``get(key)``."""
        view = self._views.get((key, shape, dtype))
        if view is not None:
            return view
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        buf = self._bufs.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self._bufs[key] = np.empty(max(nbytes, 1), np.uint8)
            self._forget(key)
        view = self._views[(key, shape, dtype)] = buf[:nbytes].view(dt).reshape(shape)
        return view

    def _forget(self, key: str) -> None:
        for k in [k for k in self._views if k[0] == key]:
            del self._views[k]

    def release(self, *keys: str) -> None:
        """Free these buffers (all of them without ``keys``)."""
        for k in keys or list(self._bufs):
            self._bufs.pop(k, None)
            self._forget(k)


def split(n: int, parts: int) -> list[range]:
    """[0, n) in ``parts`` contiguous ranges as equal as can be (none empty when n >= parts).

    >>> split(7, 3)
    [range(0, 3), range(3, 5), range(5, 7)]
    """
    q, r = divmod(n, parts)
    out, a = [], 0
    for p in range(parts):
        z = a + q + (1 if p < r else 0)
        out.append(range(a, z))
        a = z
    return out


def in_threads(pool: ThreadPoolExecutor | None, fn, parts: list[range], scratches: list[Scratch]) -> None:
    """``fn(part, scratch)`` for every part: the first in this thread, the others in ``pool``; an error is raised
    here once every thread has stopped (none is left writing into the buffers)."""
    futures = [pool.submit(fn, part, w) for part, w in zip(parts[1:], scratches[1:])] if pool is not None else []
    try:
        fn(parts[0], scratches[0])
    finally:
        wait(futures)
    for f in futures:
        f.result()


def output_planes(shape: tuple[int, int], output_path) -> tuple[np.ndarray, ...]:
    """Image, variance, mask and input-count planes of the product.

    With an output file they live in an anonymous temporary file next to it (``O_TMPFILE``:
    nothing is left behind, even after a kill) mapped into memory, so the 14 bytes per
    pixel of the product (228 MB at full size) are page cache the kernel can write back and
    drop, not a worker's anonymous memory (benchmarks/bench_memory.py).  Without an output
    file they are ordinary arrays.
    """
    dtypes = (np.float32, np.float32, np.int32, np.int16)
    if output_path is None:
        return tuple(np.empty(shape, dt) for dt in dtypes)
    import tempfile
    from pathlib import Path

    parent = Path(output_path).parent
    parent.mkdir(parents=True, exist_ok=True)
    npix = int(shape[0]) * int(shape[1])
    with tempfile.TemporaryFile(dir=parent, prefix=".fused-") as f:
        f.truncate(sum(npix * np.dtype(dt).itemsize for dt in dtypes))
        out, pos = [], 0
        for dt in dtypes:
            out.append(np.memmap(f, dtype=dt, mode="r+", offset=pos, shape=tuple(shape)))
            pos += npix * np.dtype(dt).itemsize
    return tuple(out)
