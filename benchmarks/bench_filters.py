"""The compiled ISR-side statistics against the forms a user would write, side by side, interleaved.

* 5 x 5 median filter of a full-size detector (4000 x 4072 float32, CpDark's cosmic-ray finder):
  ``cpframe.science.filters.median_filter_nearest`` vs ``scipy.ndimage.median_filter(size=5, mode="nearest")``
  (identical output, checked every round);
* MEANCLIP of one amp's serial overscan (2048 x 64, the ISR's residual statistics, once per amp and
  exposure): ``cpframe.science.combine.clipped_stats`` (numba) vs the numpy form it replaced (percentiles,
  masks and gathers per pass: tests/test_robust.py ``numpy_clipped_stats``) vs astropy's
  ``sigma_clipped_stats`` (another rule: median-centred, the form a user would reach for);
* (the per-row clipped overscan level stays numpy: its SIMD sort of the region beat a compiled per-row
  insertion sort 11.5 ms to 33 ms for 16 overscans, benchmarks/RESULTS.md).

Each round runs every method once (interleaved); the median of ``--repeat`` rounds is printed with the
ratio to cpframe.  Usage: ``python benchmarks/bench_filters.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--amps", type=int, default=16, help="overscans per timing (one detector's amps)")
    args = ap.parse_args(argv)
    from astropy.stats import sigma_clipped_stats
    from scipy import ndimage

    from cpframe.science.combine import clipped_stats
    from cpframe.science.filters import median_filter_nearest
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_robust import numpy_clipped_stats

    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 7.0, (4000, 4072)).astype(np.float32)
    image[rng.uniform(size=image.shape) < 1e-4] = 6e4
    scans = [np.round(rng.normal(20000.0, 6.0, (2048, 64))).astype(np.float32) for _ in range(args.amps)]
    methods = {
        "median5 cpframe": lambda: median_filter_nearest(image, 5),
        "median5 scipy.ndimage": lambda: ndimage.median_filter(image, size=5, mode="nearest"),
        "overscan MEANCLIP cpframe": lambda: [clipped_stats(s.ravel()) for s in scans],
        "overscan MEANCLIP numpy form": lambda: [numpy_clipped_stats(s.ravel()) for s in scans],
        "overscan astropy sigma_clipped_stats": lambda: [sigma_clipped_stats(s, sigma=3, maxiters=3) for s in scans],
    }
    for f in methods.values():
        f()  # compile, warm caches
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.repeat):
        for name, f in methods.items():
            t = time.perf_counter()
            out = f()
            times[name].append(time.perf_counter() - t)
            if name == "median5 cpframe":
                ours = out
            elif name == "median5 scipy.ndimage" and not np.array_equal(ours, out):
                raise SystemExit("median filters differ")
    med = {k: statistics.median(v) for k, v in times.items()}
    base = {"median5": med["median5 cpframe"], "overscan MEANCLIP": med["overscan MEANCLIP cpframe"]}
    print(f"load {os.getloadavg()[0]:.1f}; median of {args.repeat} interleaved rounds "
          f"({args.amps} overscans of 2048 x 64 per overscan timing):")
    for k, v in med.items():
        group = "median5" if k.startswith("median5") else "overscan MEANCLIP"
        ref = base[group]
        print(f"  {k:40s} {v * 1e3:9.1f} ms  {v / ref:6.1f}x cpframe")
    print(json.dumps({k: [round(x, 5) for x in v] for k, v in times.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
