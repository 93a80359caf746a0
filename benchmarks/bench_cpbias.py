"""A whole cpBias for one detector (ISR + combine + write) against the combine alone.

Simulates ``--n`` full-size bias raws of one LSSTComCam detector (benchmarks/_data/, deleted
afterwards unless --keep), writes a PTC with the simulator's gains and read noise, then in
one run:

1. ``cp_bias(raws, ..., calibs={"ptc": ...})``: ISR of every raw (gains -> electrons, overscan,
   variance, statistics; an uncompressed fits-masked intermediate each) + MEANCLIP combine +
   product write;
2. the combine alone: ``combine_task`` of the same intermediates into another product.

Both with the same workers/threads and memory budget; the ratio 1/2 is the figure
(target <= 3).  The files are in the page cache for both (just written).

Usage::

    python benchmarks/bench_cpbias.py                  # 20 full-size raws, 2 workers, 2 threads
    python benchmarks/bench_cpbias.py --scale mini     # quick check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpframe.science import tasks
from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.science.combine import combine_config_for  # noqa: E402
from cpframe.core.config import parse_bytes  # noqa: E402
from cpframe.science.imageio import write_ptc  # noqa: E402
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="ISR workers")
    ap.add_argument("--executor", default="process", choices=("thread", "process"), help="ISR workers are ...")
    ap.add_argument("--threads", type=int, default=2, help="combine threads")
    ap.add_argument("--budget", default="512 MiB")
    ap.add_argument("--data", default=str(HERE / "_data" / "cpbias"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    budget = parse_bytes(args.budget)
    try:
        cam = load_camera("LSSTComCam", args.scale)
        truth = make_truth(cam, 11)
        specs = [ExposureSpec(20241110, 10 + i, "bias", "r_03", 0.0, 0.0, f"2024-11-10T20:{i:02d}:00", "bias",
                              "BENCH", 0.0) for i in range(args.n)]
        t0 = time.perf_counter()
        raws = [str(p) for p in simulate(specs, data / "raw", "LSSTComCam", scale=args.scale, seed=11,
                                         detectors=[args.detector], workers=2, truth=truth, executor="thread")]
        print(f"simulated {len(raws)} {args.scale} raws in {time.perf_counter() - t0:.1f} s", flush=True)
        det = cam.detector(args.detector)
        rows = []
        for a in det.amps:
            t = truth.amp(det.id, a.name)
            rows.append({"amp": a.name, "gain": t.gain, "gain_err": 0.0, "noise": t.read_noise, "noise_err": 0.0,
                         "turnoff": t.saturation - t.bias_level, "a00": 0.0, "n_pairs": 1, "raw_means": [1.0],
                         "raw_vars": [1.0], "exp_times": [1.0], "mask": [True], "overscan_noise": [1.0]})
        ptc = write_ptc(data / "ptc.fits", rows, {"DETECTOR": det.id})
        # warm up (numba compile, imports) on two raws
        tasks.cp_bias(raws[:6], data / "warm.fits", calibs={"ptc": ptc}, workers=args.workers,
                      threads=args.threads, memory_bytes=budget)  # compile numba kernels (cached on disk)
        work = data / "isr"
        t0 = time.perf_counter()
        res = tasks.cp_bias(raws, data / "bias.fits", calibs={"ptc": ptc}, work_dir=work, workers=args.workers,
                            threads=args.threads, memory_bytes=budget, executor=args.executor)
        t_full = time.perf_counter() - t0
        inputs = [e.path for e in res.exposures]
        t0 = time.perf_counter()
        tasks.combine_task(inputs, data / "bias_combine_only.fits", combine_config_for("bias"), memory_bytes=budget,
                           threads=args.threads)
        t_comb = time.perf_counter() - t0
        kind = {"thread": "threads", "process": "processes"}[args.executor]
        print(f"cpBias (ISR of {args.n} raws + combine + write), {args.workers} ISR {kind}, "
              f"{args.threads} combine threads: {t_full:.2f} s (process start-up included)")
        print(f"combine alone (same {args.n} ISR intermediates, + write): {t_comb:.2f} s")
        print(f"ratio cpBias / combine alone = {t_full / t_comb:.2f} (target <= 3)")
        print(json.dumps({"cpbias_s": round(t_full, 3), "combine_s": round(t_comb, 3),
                          "ratio": round(t_full / t_comb, 3), "n": args.n, "scale": args.scale,
                          "executor": args.executor}))
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
