"""Cost per detector of the sky-family generation tasks against ISR + combine of the same inputs.

Illumination correction (``cp_illumination_correction``): dithered science exposures of one
LSSTComCam detector (full size by default) with the simulator's dome-flat pattern, ISR with
the dome flat and the truth PTC, stars measured on each, the per-detector super-star fit.
Reference: ISR of the same raws with the same switches + a MEANCLIP combine of the
intermediates (``combine_task``), i.e. what a flat of the same inputs costs.  The ratio is the
figure; the raws are simulated once into benchmarks/_data/ (deleted afterwards unless --keep).

Usage::

    python benchmarks/bench_sky.py                  # full size, 12 exposures, 2 workers
    python benchmarks/bench_sky.py --scale mini     # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from cpframe.camera import illumination as il  # noqa: E402
from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate  # noqa: E402
from cpframe.science.combine import combine_config_for  # noqa: E402
from cpframe.science.drivers import cp_illumination_correction  # noqa: E402
from cpframe.science.imageio import read_masked, write_masked  # noqa: E402
from cpframe.science.isr import isr_config_for  # noqa: E402
from cpframe.science.tasks import _run_isr_all, combine_task  # noqa: E402
from tests._run_helpers import write_truth_ptc  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=12, help="dithered science exposures")
    ap.add_argument("--data", default=str(HERE / "_data" / "sky"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", args.scale)
    det = cam.detector(args.detector)
    seed = 5
    truth = make_truth(cam, seed, illumination_correction=True, cosmics=False, defects=False, manual_defects=False)
    specs = [ExposureSpec(20241110, 100 + i, "science", "r_03", 30.0, 30.3, f"2024-11-10T03:{i:02d}:00", "science",
                          "BENCH", 50.0) for i in range(args.n)]
    try:
        t0 = time.perf_counter()
        paths = simulate(specs, data / "raw", cam.name, args.scale, seed=seed, detectors=[det.id],
                         workers=args.workers, truth=truth)
        sim_s = time.perf_counter() - t0
        out = data / "out"
        out.mkdir(parents=True, exist_ok=True)
        dome = truth.flat(det.id, cam.band_of("r_03")) * il.dome_pattern(seed, det.id, det.shape, 0.04)
        write_masked(out / "flat.fits", dome.astype(np.float32), np.zeros(det.shape, np.int32),
                     np.zeros(det.shape, np.float32), {"LSST ISR UNITS": "electron"})
        write_truth_ptc(out / "ptc.fits", truth, det.id)
        calibs = {"flat": str(out / "flat.fits"), "ptc": str(out / "ptc.fits")}
        icfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = cp_illumination_correction(paths, out / "illum.fits", calibs=calibs, isr_config=icfg,
                                         workers=args.workers)
        gen_s = time.perf_counter() - t0
        c = read_masked(out / "illum.fits").image
        t = il.illumination_correction_truth(seed, det.id, det.shape, 0.04)
        t0 = time.perf_counter()
        exps = _run_isr_all(paths, out / "isr", icfg, calibs, args.workers, None)
        isr_s = time.perf_counter() - t0
        combine_task([e.path for e in exps], out / "combined.fits", combine_config_for("biasBootstrap"), threads=args.workers)
        ref_s = time.perf_counter() - t0
        row = {"type": "illuminationCorrection", "scale": args.scale, "raws": args.n, "simulate_s": round(sim_s, 1),
               "generation_s": round(gen_s, 1), "isr_s": round(isr_s, 1), "isr_combine_s": round(ref_s, 1),
               "ratio": round(gen_s / ref_s, 2), "generation_per_raw_s": round(gen_s / args.n, 2),
               "n_stars": res["n_stars"], "truth_rms": round(float(np.sqrt(np.mean((c / t - 1) ** 2))), 5),
               "load_start": round(load, 1), "load_end": round(os.getloadavg()[0], 1)}
        print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
