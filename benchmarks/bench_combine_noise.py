"""Run-to-run noise of the combine timing: the same MEANCLIP of N full-size inputs, 1 and 2 threads, twice each.

    python benchmarks/bench_combine_noise.py [--n 20] [--rows 4000]

Alternating the thread counts shows how much one timing varies on a shared machine, which is
the error bar to put on the single-run ratios of bench_combine.py.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench_combine import make_inputs  # benchmarks/ is on sys.path when run as a script

from cpframe.science.combine import CombineConfig, combine_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--cols", type=int, default=4072)
    ap.add_argument("--budget-mib", type=int, default=512)
    args = ap.parse_args()
    data = Path(__file__).parent / "_data" / "noise"
    data.mkdir(parents=True, exist_ok=True)
    try:
        paths = make_inputs(data / "main", args.n, args.rows, args.cols)
        warm = make_inputs(data / "warm", 7, 8, args.cols, prefix="w")
        budget = args.budget_mib * 2**20
        combine_images(warm, CombineConfig(combine="MEANCLIP"), memory_bytes=budget)  # numba compile
        for threads in (1, 2, 1, 2):
            t0 = time.perf_counter()
            _, res = combine_images(paths, CombineConfig(combine="MEANCLIP"), memory_bytes=budget, threads=threads)
            print(f"MEANCLIP threads={threads}: {time.perf_counter() - t0:.2f} s  strip={res.strip_rows} rows",
                  flush=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
