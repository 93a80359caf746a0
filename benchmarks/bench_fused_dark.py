"""cpDark of N full-size darks of one detector: fused (no per-exposure files) vs the ISR files + CpDark + combine.

Simulates ``--n`` full-size LSSTComCam darks of one detector (dark current, cosmic rays; calibrations
written from the simulator's truth: gains, a zero bias, the injected defects), then runs, interleaved,
``--repeat`` rounds of, in this one process (one ISR worker, so CPU seconds compare):

* ``cat`` of the raws to /dev/null (reading them once, page cache warm: the floor);
* ``cp_dark(raws, fused=True)``: each raw's ISR in memory + its cosmic rays (the fused CpDark quantum's
  work), then the streamed ISR -> combine with the CR pixels set; nothing written but the product;
* ``cp_dark(raws, fused=False, work_dir=...)``: ISR files, CpDark rewriting each, the combine reading them
  back (the unfused graph's work); the bytes the ISR files took are counted, then removed.

Both products are compared plane for plane (float32 precision) in every round.

Usage::

    python benchmarks/bench_fused_dark.py               # 10 full-size darks, 3 rounds
    python benchmarks/bench_fused_dark.py --n 4 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpframe.camera.curated import write_defects  # noqa: E402
from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate  # noqa: E402
from cpframe.science.imageio import read_masked, write_masked, write_ptc  # noqa: E402
from cpframe.science.tasks import cp_dark  # noqa: E402


def _calibs(truth, cam, det, out: Path) -> dict:
    z = np.zeros(det.shape, np.float32)
    head = {"INSTRUME": cam.name, "DETECTOR": det.id, "DETNAME": det.name, "CAMSCALE": cam.scale}
    rows = [{"amp": a.name, "gain": truth.amp(det.id, a.name).gain, "gain_err": 0.0,
             "noise": truth.amp(det.id, a.name).read_noise, "noise_err": 0.0, "turnoff": 9e4, "a00": 0.0,
             "n_pairs": 0, "raw_means": [np.nan] * 2, "raw_vars": [np.nan] * 2, "exp_times": [np.nan] * 2,
             "mask": [False] * 2, "overscan_noise": [np.nan] * 2} for a in det.amps]
    rects = [d[:4] for d in truth.detectors[det.id].defects]
    return {"ptc": str(write_ptc(out / "ptc.fits", rows, {**head, "OBSTYPE": "ptc"})),
            "bias": str(write_masked(out / "bias.fits", z, np.zeros(det.shape, np.int32), z + 1.0,
                                     {**head, "LSST ISR UNITS": "electron"})),
            "defects": str(write_defects(out / "defects.ecsv", rects, cam.name, det.id, "2024-01-01T00:00:00"))}


def _timed(fn):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, time.perf_counter() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=str(HERE / "_data" / "fused_dark"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", "full")
    det = cam.detector(args.detector)
    truth = make_truth(cam, 7)
    try:
        specs = [ExposureSpec(20241110, 100 + i, "dark", "r_03", 30.0, 30.0, f"2024-11-10T21:{i:02d}:00", "dark",
                              "BENCH", 0.0) for i in range(args.n)]
        raws = [str(p) for p in simulate(specs, data / "raw", cam.name, "full", seed=7, detectors=[det.id],
                                         workers=2, truth=truth, executor="thread")]
        out = data / "out"
        out.mkdir(parents=True, exist_ok=True)
        calibs = _calibs(truth, cam, det, out)
        cp_dark(raws[:2], out / "warm.fits", calibs=calibs)  # numba caches, imports
        size = sum(os.path.getsize(p) for p in raws)
        print(f"{len(raws)} full-size darks of detector {det.id}, {size / 2**20:.0f} MiB; {args.repeat} rounds",
              flush=True)
        rows: dict[str, list[dict]] = {"cat": [], "fused": [], "unfused": []}
        for r in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(["cat", *raws], stdout=subprocess.DEVNULL, check=True)
            rows["cat"].append({"wall_s": time.perf_counter() - t0})
            f, wall, cpu = _timed(lambda: cp_dark(raws, out / "fused.fits", calibs=calibs))
            rows["fused"].append({"wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0], "fused": f.extra.get("fused")})
            work = out / "isr"
            u, wall, cpu = _timed(lambda: cp_dark(raws, out / "unfused.fits", calibs=calibs, work_dir=work, workers=1))
            written = sum(p.stat().st_size for p in work.glob("*.fits"))
            shutil.rmtree(work)
            rows["unfused"].append({"wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0],
                                    "isr_files_mib": written / 2**20})
            a, b = read_masked(f.path), read_masked(u.path)
            same = (np.allclose(a.image, b.image, rtol=2.4e-7, atol=0, equal_nan=True)
                    and np.allclose(a.variance, b.variance, rtol=2.4e-7, atol=0, equal_nan=True)
                    and np.array_equal(a.mask, b.mask))
            print(f"round {r + 1}: cat {rows['cat'][-1]['wall_s']:.2f} s; fused {rows['fused'][-1]['wall_s']:.1f} s "
                  f"(CPU {rows['fused'][-1]['cpu_s']:.1f} s); unfused {wall:.1f} s (CPU {cpu:.1f} s, "
                  f"{written / 2**20:.0f} MiB of ISR files); products equal: {same}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
            if not same:
                raise SystemExit("fused and unfused darks differ")
        med = {k: statistics.median(x["wall_s"] for x in v) for k, v in rows.items()}
        cpu = {k: statistics.median(x["cpu_s"] for x in v) for k, v in rows.items() if k != "cat"}
        print(f"\nmedians: cat {med['cat']:.2f} s; fused {med['fused']:.1f} s wall, {cpu['fused']:.1f} s CPU; "
              f"unfused {med['unfused']:.1f} s wall, {cpu['unfused']:.1f} s CPU; unfused / fused wall "
              f"{med['unfused'] / med['fused']:.2f}")
        print(json.dumps(rows, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
