"""Simulator throughput against plain disk writes, side by side in one run.

For each scale, simulates a small mixed night (bias, dark, flat, science) for N detectors with
``cpframe.camera.simulate.simulate`` using 1 worker, a thread pool and a process pool, and compares
the bytes/s with writing the same number of bytes with ``numpy.ndarray.tofile`` (the disk
speed reference) in the same run.

    python benchmarks/bench_simulate.py [--scale mini|full|both] [--detectors 2] [--exposures 8]

The full scale writes 75 MB per file: keep --exposures x --detectors modest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cpframe.camera.models import load_camera
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate

from _control import parallel_control  # benchmarks/ is on sys.path when run as a script


def _night(n: int) -> list[ExposureSpec]:
    kinds = [("bias", 0.0, 0.0), ("dark", 30.0, 0.0), ("flat", 10.0, 2000.0), ("science", 30.0, 150.0)]
    out = []
    for i in range(n):
        kind, t, flux = kinds[i % len(kinds)]
        out.append(
            ExposureSpec(
                20241110,
                100 + i,
                kind,
                "r_03",
                t,
                t + 0.3,
                f"2024-11-10T{20 + i // 60:02d}:{i % 60:02d}:00",
                kind,
                "BENCH",
                flux,
            )
        )
    return out


def _plain_write(nbytes: int, nfiles: int, directory: Path) -> float:
    """Seconds to write ``nfiles`` files of ``nbytes`` with numpy (the disk-speed reference)."""
    data = np.random.default_rng(0).integers(0, 2**18, nbytes // 4, dtype=np.int32).astype(">i4")
    t0 = time.perf_counter()
    for i in range(nfiles):
        p = directory / f"plain_{i}.bin"
        data.tofile(p)
    os.sync()
    return time.perf_counter() - t0


def bench(scale: str, ndet: int, nexp: int, root: Path) -> None:
    cam = load_camera("LSSTComCam", scale)
    specs = _night(nexp)
    dets = list(cam.detector_ids[:ndet])
    truth = make_truth(cam, 1, date=specs[0].begin)
    # warm the per-detector caches (flat response, PRNU) so every mode starts equal
    simulate(specs[:1], root / "warm", "LSSTComCam", scale, seed=1, detectors=dets, workers=1, truth=truth)
    rows = []
    for label, kw in (
        ("1 worker", dict(workers=1)),
        ("2 threads", dict(workers=2, executor="thread")),
        ("2 processes", dict(workers=2, executor="process")),
    ):
        out = root / label.replace(" ", "_")
        t0 = time.perf_counter()
        paths = simulate(specs, out, "LSSTComCam", scale, seed=1, detectors=dets, truth=truth, **kw)
        os.sync()
        dt = time.perf_counter() - t0
        nbytes = sum(p.stat().st_size for p in paths)
        rows.append((label, len(paths), nbytes, dt))
        shutil.rmtree(out)
    per_file = rows[0][2] // rows[0][1]
    plain = _plain_write(per_file, rows[0][1], root)
    for p in root.glob("plain_*"):
        p.unlink()
    print(
        f"\n{scale} scale: {ndet} detector(s) x {nexp} exposures (bias/dark/flat/science), "
        f"{per_file / 1e6:.1f} MB per file"
    )
    print(f"  plain numpy tofile of the same bytes: {plain:.2f} s ({rows[0][2] / plain / 1e6:.0f} MB/s)")
    for label, n, nbytes, dt in rows:
        print(
            f"  simulate, {label:<11}: {dt:6.2f} s  {nbytes / dt / 1e6:6.0f} MB/s  "
            f"{dt / n * 1e3:7.1f} ms/file  "
            f"time / plain write = {dt / plain:5.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["mini", "full", "both"], default="both")
    ap.add_argument("--detectors", type=int, default=2)
    ap.add_argument("--exposures", type=int, default=8)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    a = ap.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="cpframe-bench-sim-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"cpu count {os.cpu_count()}, scratch {root}")
    print(f"control: a CPU loop runs {parallel_control():.2f}x faster on 2 processes than on 1 right now")
    try:
        for scale in ["mini", "full"] if a.scale == "both" else [a.scale]:
            bench(scale, a.detectors, a.exposures if scale == "full" else a.exposures * 8, root / scale)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
