"""Per-amp statistics of each exposure in the fused ISR (:mod:`cpframe.science.fused`, step 3): count, sums and a
fine histogram of the good pixels, accumulated block by block while streaming (``LSST ISR FINAL MEAN|MEDIAN|STDEV``).
"""

from __future__ import annotations

import math

import numpy as np

from cpframe.science.fused_isr import accumulate_block
from cpframe.science.imageio import MASK_BITS
from cpframe.science.isr import _STAT_IGNORE

#: Histogram of each amp for the median: bins of this fraction of the first block's stdev,
#: +-8 stdev around the first block's median (values beyond fall in two end bins), int32
#: counts: 16 KB per amp and input, so that N inputs' histograms stay small (N = 200: 51 MB
#: reserved, about half of it touched; benchmarks/bench_memory.py).  Linear interpolation
#: inside the bin makes the median good to a small fraction of a bin.
_HIST_BIN_SIGMA = 0.004
_HIST_BINS = 4_001


class _AmpAccumulator:
    """Count, sums and histogram of one amp's good pixels (FINAL MEAN / STDEV / MEDIAN)."""

    def __init__(self):
        self.n = 0
        self.s1 = 0.0
        self.s2 = 0.0
        self.shift = math.nan
        self.lo = 0.0
        self.width = 1.0
        self.hist = None
        self.n_sat = 0
        self.n_bad = 0
        self.n_sus = 0

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        if self.hist is None:
            v = values[(mask & _STAT_IGNORE) == 0]
            v = v[np.isfinite(v)]
            if v.size:
                self.shift = float(np.median(v))
                sig = float(np.std(v)) or 1.0
                self.width = _HIST_BIN_SIGMA * sig
                self.lo = self.shift - self.width * (_HIST_BINS // 2)
                self.hist = np.zeros(_HIST_BINS + 2, np.int32)
        hist = self.hist if self.hist is not None else _NO_HIST
        n, s1, s2, n_sat, n_bad, n_sus = accumulate_block(values, mask, _STAT_IGNORE, _SAT_BIT, _BAD_BIT, _SUS_BIT,
                                                     self.shift, self.lo, 1.0 / self.width, hist)
        self.n_sat += n_sat
        self.n_bad += n_bad
        self.n_sus += n_sus
        if self.hist is not None:
            self.n += n
            self.s1 += s1
            self.s2 += s2

    def kernel_args(self) -> tuple | None:
        """What :func:`cpframe.science.fused_isr.amp_to_band` needs to accumulate the pixels it writes (its
        ``stats``), or None before the first block has set the histogram's range (then :meth:`add`)."""
        if self.hist is None:
            return None
        return (np.int32(_STAT_IGNORE), np.int32(_SAT_BIT), np.int32(_BAD_BIT), np.int32(_SUS_BIT), self.shift,
                self.lo, 1.0 / self.width, self.hist)

    def merge(self, n: int, s1: float, s2: float, n_sat: int, n_bad: int, n_sus: int) -> None:
        """Add what the kernel accumulated (``amp_to_band``'s return value), as :meth:`add` adds its own."""
        self.n_sat += n_sat
        self.n_bad += n_bad
        self.n_sus += n_sus
        self.n += n
        self.s1 += s1
        self.s2 += s2

    def finish(self) -> tuple[float, float, float]:
        """(mean, stdev (ddof=0), median) of the good pixels seen; NaN without any."""
        if self.n == 0 or self.hist is None:
            return math.nan, math.nan, math.nan
        mean_d = self.s1 / self.n
        var = max(self.s2 / self.n - mean_d * mean_d, 0.0)
        return self.shift + mean_d, math.sqrt(var), _hist_median(self.hist, self.n, self.lo, self.width)


_SAT_BIT = 1 << MASK_BITS["SAT"]
_BAD_BIT = 1 << MASK_BITS["BAD"]
_SUS_BIT = 1 << MASK_BITS["SUSPECT"]
_NO_HIST = np.zeros(0, np.int32)


def _hist_median(hist: np.ndarray, n: int, lo: float, width: float) -> float:
    """Median from the histogram (linear within the bin; exact to one bin width)."""
    cum = np.cumsum(hist)
    half = 0.5 * n
    k = int(np.searchsorted(cum, half, side="left"))
    if k == 0 or k == hist.shape[0] - 1:
        return math.nan  # the median is outside the histogram's range (cannot happen for the middle)
    before = cum[k - 1]
    inside = hist[k]
    frac = (half - before) / inside if inside else 0.5
    return lo + (k - 1 + frac) * width
