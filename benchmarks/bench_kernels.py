"""Combine kernels against what a user would write and against the I/O floor, interleaved, medians.

One run, the same N fits-masked files (bias-like: Gaussian noise, cosmic rays, a few SAT
pixels; written to benchmarks/_data/, deleted at the end unless --keep), page cache warm.
Every method is timed ``--repeat`` times in an interleaved order (round r runs every method
once) and the median is reported, so a load change on the shared machine hits all methods.

Methods (exact forms in benchmarks/RESULTS.md):

* floor ``cat``: ``cat files > /dev/null`` (subprocess);
* floor ``pread+sum``: read each IMAGE plane once (``pread``) and add it into a float32 sum;
* cpframe ``combine_images`` MEANCLIP (cp_pipe rule and ``clip_method='astropy'``), MEDIAN,
  MEAN, with 1 and 2 threads, budget ``--budget``;
* ``ccdproc.combine(files, method='average', sigma_clip=True, sigma_clip_low_thresh=3,
  sigma_clip_high_thresh=3, sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std,
  mem_limit=budget, hdu='IMAGE', hdu_mask='MASK')`` and ``method='median'``;
* astropy on row blocks: read the rows of every input, masked array,
  ``sigma_clip(sigma=3, maxiters=3, cenfunc='median', stdfunc='std', axis=0).mean(axis=0)``;
* bottleneck on row blocks: masked pixels -> NaN, ``bn.nanmedian`` / ``bn.nanmean`` over axis 0;
* numpy on row blocks: ``np.nanmedian`` / ``np.nanmean`` over axis 0;
* the numba probe on row blocks: per pixel, the unmasked values gathered, then ``np.median``, their mean, or a
  one-pass 3-sigma clipped mean around the median (``_numba_probe_kernels``), one thread.

Row blocks for the user forms hold the same number of input pixels as cpframe's budget.

Usage::

    python benchmarks/bench_kernels.py                     # N=20 x 1000 x 4072, 3 rounds
    python benchmarks/bench_kernels.py --rows 4000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_combine import floor_sum, make_inputs  # noqa: E402

from cpframe.core.config import format_bytes, parse_bytes  # noqa: E402
from cpframe.science.combine import CombineConfig, combine_images  # noqa: E402
from cpframe.science.imageio import masked_layout, read_rows  # noqa: E402


def cat(paths):
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)


def blocks(paths, budget):
    """(data with NaN where masked, masked array) per row block of all inputs."""
    lays = [masked_layout(p) for p in paths]
    rows, cols = lays[0].shape
    step = max(1, budget // (len(paths) * cols * 8))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        data = np.empty((len(paths), r1 - r0, cols), np.float32)
        mask = np.empty((len(paths), r1 - r0, cols), np.int32)
        for i, lay in enumerate(lays):
            read_rows(lay, "IMAGE", r0, r1, out=data[i])
            read_rows(lay, "MASK", r0, r1, out=mask[i])
        yield data, mask != 0


def astropy_blocks(paths, budget):
    from astropy.stats import sigma_clip

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data, bad in blocks(paths, budget):
            m = np.ma.masked_array(data, mask=bad)
            out.append(sigma_clip(m, sigma=3, maxiters=3, cenfunc="median", stdfunc="std", axis=0).mean(axis=0))
    return out


def nan_blocks(paths, budget, fn):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data, bad in blocks(paths, budget):
            data[bad] = np.nan
            out.append(fn(data, axis=0))
    return out


def _numba_probe_kernels():
    """The straightforward numba kernels a user would write (issue 14's "numba probe" forms): per pixel, gather
    the unmasked values of the N inputs, then ``np.median`` of them, their mean, or a mean within 3 sigma of the
    median (one pass); no vectorisation across columns, no sorting network."""
    from numba import njit

    @njit(nogil=True, cache=True)
    def probe(data, bad, stat):
        n, rows, cols = data.shape
        out = np.empty((rows, cols), np.float32)
        buf = np.empty(n, np.float32)
        for r in range(rows):
            for c in range(cols):
                k = 0
                for i in range(n):
                    if not bad[i, r, c]:
                        buf[k] = data[i, r, c]
                        k += 1
                if k == 0:
                    out[r, c] = np.nan
                elif stat == 0:  # mean
                    out[r, c] = buf[:k].mean()
                elif stat == 1:  # median
                    out[r, c] = np.median(buf[:k])
                else:  # one-pass clipped mean around the median
                    med = np.median(buf[:k])
                    sd = buf[:k].std()
                    s = 0.0
                    m = 0
                    for j in range(k):
                        if abs(buf[j] - med) <= 3.0 * sd:
                            s += buf[j]
                            m += 1
                    out[r, c] = s / m if m else med
        return out

    return probe


def numba_probe_blocks(paths, budget, probe, stat):
    return [probe(data, bad, stat) for data, bad in blocks(paths, budget)]


def ccdproc_combine(paths, method, budget):
    import ccdproc

    kw = dict(method=method, mem_limit=budget, hdu="IMAGE", hdu_mask="MASK", hdu_uncertainty=None,
              hdu_flags=None, unit="electron")
    if method == "average":
        kw.update(sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
                  sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ccdproc.combine([str(p) for p in paths], **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--cols", type=int, default=4072)
    ap.add_argument("--budget", default="128 MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-ccdproc", action="store_true")
    ap.add_argument("--data", default=str(HERE / "_data" / "kernels"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    budget = parse_bytes(args.budget)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    try:
        paths = make_inputs(data / "main", args.n, args.rows, args.cols)
        warm = make_inputs(data / "warm", 7, 8, args.cols, prefix="w")
        for stat in ("MEANCLIP", "MEDIAN", "MEAN"):
            combine_images(warm, CombineConfig(combine=stat), memory_bytes=budget)
        combine_images(warm, CombineConfig(clip_method="astropy"), memory_bytes=budget)
        try:
            import bottleneck as bn
        except ImportError:  # optional (pip install '.[bench]'); astropy uses it too when present
            bn = None
            print("bottleneck not installed: its rows are left out", flush=True)
        methods = {
            "floor cat": lambda: cat(paths),
            "floor pread+sum": lambda: floor_sum(paths),
        }
        for threads in (1, 2):
            for label, cfg in (("MEANCLIP cp_pipe", CombineConfig()),
                               ("MEANCLIP astropy", CombineConfig(clip_method="astropy")),
                               ("MEDIAN", CombineConfig(combine="MEDIAN")), ("MEAN", CombineConfig(combine="MEAN"))):
                methods[f"cpframe {label} t{threads}"] = (
                    lambda cfg=cfg, threads=threads: combine_images(paths, cfg, memory_bytes=budget, threads=threads))
        methods["astropy sigma_clip row blocks"] = lambda: astropy_blocks(paths, budget)
        if bn is not None:
            methods["bottleneck nanmedian row blocks"] = lambda: nan_blocks(paths, budget, bn.nanmedian)
            methods["bottleneck nanmean row blocks"] = lambda: nan_blocks(paths, budget, bn.nanmean)
        probe = _numba_probe_kernels()
        for stat, label in ((0, "mean"), (1, "median"), (2, "clipped mean")):
            probe(np.zeros((3, 2, 2), np.float32), np.zeros((3, 2, 2), bool), stat)  # compile
            methods[f"numba probe {label} row blocks"] = (
                lambda stat=stat: numba_probe_blocks(paths, budget, probe, stat))
        methods["numpy nanmedian row blocks"] = lambda: nan_blocks(paths, budget, np.nanmedian)
        methods["numpy nanmean row blocks"] = lambda: nan_blocks(paths, budget, np.nanmean)
        if not args.skip_ccdproc:
            methods["ccdproc average sigma_clip"] = lambda: ccdproc_combine(paths, "average", budget)
            methods["ccdproc median"] = lambda: ccdproc_combine(paths, "median", budget)
        times: dict[str, list[float]] = {k: [] for k in methods}
        size = sum(p.stat().st_size for p in paths)
        print(f"N={args.n} inputs of {args.rows} x {args.cols} ({format_bytes(size)}), budget {args.budget}, "
              f"{args.repeat} interleaved rounds", flush=True)
        for r in range(args.repeat):
            for k, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
            print(f"round {r + 1} done", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        floor = med["floor pread+sum"]
        print(f"\n{'method':40s} {'median s':>9s} {'/ pread floor':>14s} {'/ cat':>7s}")
        for k, v in med.items():
            print(f"{k:40s} {v:9.3f} {v / floor:14.2f} {v / med['floor cat']:7.2f}")
        print()
        for t in (1, 2):
            mc = med[f"cpframe MEANCLIP cp_pipe t{t}"]
            if "ccdproc average sigma_clip" in med:
                print(f"threads={t}: ccdproc sigma-clipped average / cpframe MEANCLIP = "
                      f"{med['ccdproc average sigma_clip'] / mc:.1f}x (target >= 10)")
                print(f"threads={t}: ccdproc median / cpframe MEDIAN = "
                      f"{med['ccdproc median'] / med[f'cpframe MEDIAN t{t}']:.1f}x")
            print(f"threads={t}: cpframe MEANCLIP / pread floor = {mc / floor:.2f} (target <= 4 with 2 threads)")
            print(f"threads={t}: astropy row blocks / cpframe MEANCLIP astropy = "
                  f"{med['astropy sigma_clip row blocks'] / med[f'cpframe MEANCLIP astropy t{t}']:.1f}x")
            for stat, base in (("MEDIAN", "bottleneck nanmedian"), ("MEDIAN", "numpy nanmedian"),
                               ("MEAN", "bottleneck nanmean"), ("MEAN", "numpy nanmean")):
                if f"{base} row blocks" in med:
                    print(f"threads={t}: cpframe {stat} / {base} = "
                          f"{med[f'cpframe {stat} t{t}'] / med[f'{base} row blocks']:.2f}")
        print("\n" + json.dumps({"median_s": {k: round(v, 4) for k, v in med.items()},
                                 "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()}}))
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
