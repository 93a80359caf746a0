"""Cost per detector of the sky-frame and fringe-frame generation against ISR + combine of the same inputs.

On one LSSTComCam detector (full size by default), science exposures with the simulator's ``sky_frame``
(sky) or ``fringe`` (fringe, band z) effect:

1. ISR of every raw (the science switches, truth flat and PTC) — shared by both sides, timed once;
2. the reference: a MEANCLIP combine of those ISR images (``combine_task``): what a flat of them costs;
3. the generation steps on the same ISR images: sky — ``sky_image`` (mask + superpixels), ``scale_measure``,
   ``subtract_background`` per exposure, ``combine_sky``; fringe — ``fringe_measure`` per exposure and the
   combine of the measured frames (``calibrationType: fringe``).

The figure is (ISR + generation) / (ISR + combine).  One detector: the sky's focal-plane plane is a constant.

Usage::

    python benchmarks/bench_sky_fringe.py                 # full size, 5 exposures
    python benchmarks/bench_sky_fringe.py --scale mini --only sky
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

import numpy as np

from cpframe.camera.models import load_camera
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
from cpframe.science import fringe as sfr
from cpframe.science import sky as ssky
from cpframe.science.combine import CombineConfig, combine_config_for
from cpframe.science.imageio import read_masked, write_masked
from cpframe.science.isr import isr_config_for
from cpframe.science.tasks import _run_isr_all, combine_task


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("-n", type=int, default=5, help="science exposures")
    ap.add_argument("--only", choices=("sky", "fringe"))
    ap.add_argument("--data", default=str(HERE / "_data" / "skyfringe"))
    args = ap.parse_args(argv)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", args.scale)
    det = cam.detector(args.detector)
    try:
        for kind, pf, band in (("sky", "r_03", "r"), ("fringe", "z_03", "z")):
            if args.only and kind != args.only:
                continue
            truth = make_truth(cam, 7, **{"sky_frame" if kind == "sky" else "fringe": True})
            specs = [ExposureSpec(20241110, 100 + i, "science", pf, 30.0, 30.0, f"2024-11-10T03:{i:02d}:00",
                                  observation_reason="science", flux=200.0) for i in range(args.n)]
            t0 = time.perf_counter()
            paths = simulate(specs, data / kind, cam.name, args.scale, seed=7, detectors=[det.id], truth=truth,
                             workers=args.workers)
            sim_s = time.perf_counter() - t0
            out = data / f"{kind}_out"
            out.mkdir(parents=True, exist_ok=True)
            z = np.zeros(det.shape, np.float32)
            flat = write_masked(out / "flat.fits", truth.flat(det.id, band).astype(np.float32), z.astype(np.int32),
                                z, {"LSST ISR UNITS": "electron"})
            from tests._run_helpers import write_truth_ptc

            calibs = {"flat": str(flat), "ptc": str(write_truth_ptc(out / "ptc.fits", truth, det.id))}
            icfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False)
            t0 = time.perf_counter()
            exps = _run_isr_all(paths, out / "isr", icfg, calibs, args.workers, None)
            isr_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            combine_task([e.path for e in exps], out / "combined.fits", combine_config_for("biasBootstrap"),
                         threads=args.workers)
            comb_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            if kind == "sky":
                cfg = ssky.SkyConfig()
                masked = [ssky.sky_image(read_masked(e.path), cam, det, cfg) for e in exps]
                scales = [ssky.scale_measure([bg], cfg) for _, bg in masked]
                res = [ssky.subtract_background(m, cam, det, s, cfg) for (m, _), s in zip(masked, scales)]
                ssky.combine_sky(res, out / "sky.fits", cfg)
            else:
                meas = []
                for i, e in enumerate(exps):
                    m = sfr.fringe_measure(read_masked(e.path), sfr.FringeConfig())
                    meas.append(write_masked(out / f"meas{i}.fits", m.image, m.mask, m.variance, m.header))
                combine_task(meas, out / "fringe.fits", CombineConfig(calibration_type="fringe", dataset_type="fringe",
                                                                     exposure_scaling="Unity"), threads=args.workers)
            gen_s = time.perf_counter() - t0
            row = {"type": kind, "scale": args.scale, "raws": args.n, "simulate_s": round(sim_s, 1),
                   "isr_s": round(isr_s, 1), "combine_s": round(comb_s, 2), "generation_steps_s": round(gen_s, 2),
                   "isr_combine_s": round(isr_s + comb_s, 1), "isr_generation_s": round(isr_s + gen_s, 1),
                   "ratio": round((isr_s + gen_s) / (isr_s + comb_s), 2)}
            print(json.dumps(row), flush=True)
            shutil.rmtree(data / kind, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
