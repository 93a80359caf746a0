"""Cost per detector of the flat-family generation tasks against ISR + combine of the same inputs.

Gain correction (``gain_correction_task``: the new flat over the certified flat, binned,
fitted per amp) on one LSSTComCam detector (full size by default), with the drifted-gain
flats it is measured from:

1. the reference: ISR of the flats (PTC gains, bias, dark, defects; ``isr_config_for("flat")``)
   + the flat combine (``combine_task``, InputList scales 1): what the flat of the same inputs
   costs, and what the gain-correction pipeline runs before its own task;
2. the generation task itself on that combined flat and a reference flat.

The figure is 2 per detector beside 1 (and the ratio).

``--only flat_gradient``: every detector's flats through ISR + combine, then the focal-plane fit of the
reference, the fit and correction of a new flat (``flat_gradient_apply_task``, cp_pipe
``CpFlatApplyGradientsTask``) and the anaglyph mix of two flats (``combine_two_flats_task``), each per detector.  Raws are simulated into
benchmarks/_data/ (deleted afterwards unless --keep); calibrations are written from the truth.

Usage::

    python benchmarks/bench_flat_types.py                  # full size, 2 workers
    python benchmarks/bench_flat_types.py --scale mini     # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate  # noqa: E402
from cpframe.science.combine import combine_config_for  # noqa: E402
from cpframe.science.gain_correction import gain_correction_task  # noqa: E402
from cpframe.science.imageio import write_masked, write_ptc  # noqa: E402
from cpframe.science.isr import isr_config_for  # noqa: E402
from cpframe.science.tasks import _run_isr_all, combine_task  # noqa: E402


def _calibs(truth, cam, det, out: Path) -> dict:
    z = np.zeros(det.shape, np.float32)
    zm = np.zeros(det.shape, np.int32)
    head = {"INSTRUME": cam.name, "DETECTOR": det.id, "DETNAME": det.name, "CAMSCALE": cam.scale}
    rows = [{"amp": a.name, "gain": truth.amp(det.id, a.name).gain, "gain_err": 0.0,
             "noise": truth.amp(det.id, a.name).read_noise, "noise_err": 0.0, "turnoff": 9e4, "a00": 0.0,
             "n_pairs": 0, "raw_means": [np.nan] * 2, "raw_vars": [np.nan] * 2, "exp_times": [np.nan] * 2,
             "mask": [False] * 2, "overscan_noise": [np.nan] * 2} for a in det.amps]
    return {"ptc": str(write_ptc(out / "ptc.fits", rows, {**head, "OBSTYPE": "ptc"})),
            "bias": str(write_masked(out / "bias.fits", z, zm, z + 1.0, {**head, "LSST ISR UNITS": "electron"})),
            "dark": str(write_masked(out / "dark.fits", z, zm, z, {**head, "LSST ISR UNITS": "electron"})),
            "flat": str(write_masked(out / "flat.fits", truth.flat(det.id, "r").astype(np.float32), zm, z,
                                     {**head, "FILTER": "r_03"}))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-flats", type=int, default=10)
    ap.add_argument("--data", default=str(HERE / "_data" / "flat_types"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", choices=("gain_correction", "flat_gradient"))
    args = ap.parse_args(argv)
    if args.only == "flat_gradient":
        return _bench_gradient(args)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", args.scale)
    det = cam.detector(args.detector)
    truth = make_truth(cam, 5, gain_drift=0.004, cosmics=False, dark_current=False, bias_pattern=False)
    try:
        specs = [ExposureSpec(20241111, i + 1, "flat", "r_03", 10.0, 10.3, f"2024-11-11T20:{i:02d}:00",
                              "gain_correction", "BENCH", 5000.0) for i in range(args.n_flats)]
        t0 = time.perf_counter()
        paths = simulate(specs, data / "raw", cam.name, args.scale, seed=5, detectors=[det.id],
                         workers=args.workers, truth=truth)
        sim_s = time.perf_counter() - t0
        out = data / "out"
        out.mkdir(parents=True, exist_ok=True)
        calibs = _calibs(truth, cam, det, out)
        icfg = isr_config_for("flat")
        t0 = time.perf_counter()
        exps = _run_isr_all(paths, out / "isr", icfg, {k: calibs[k] for k in ("ptc", "bias", "dark")},
                            args.workers, None)
        isr_s = time.perf_counter() - t0
        new = combine_task([e.path for e in exps], out / "flat_gain_correction.fits", combine_config_for("flat"),
                           scales=[1.0] * len(exps), threads=args.workers)
        ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gain_correction_task(new.path, [calibs["flat"]], calibs["ptc"], out / "gain_correction.json",
                             detector=det)
        gen_s = time.perf_counter() - t0
        row = {"type": "gain_correction", "scale": args.scale, "raws": args.n_flats, "simulate_s": round(sim_s, 1),
               "isr_s": round(isr_s, 2), "isr_combine_s": round(ref_s, 2), "generation_task_s": round(gen_s, 2),
               "task_over_isr_combine": round(gen_s / ref_s, 3), "load_1min": round(os.getloadavg()[0], 2)}
        print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


def _bench_gradient(args) -> int:
    """Flat gradient reference: ISR + combine of every detector's flats, then the focal-plane fit (per detector)."""
    from cpframe.science.anaglyph import combine_two_flats_task
    from cpframe.science.flat_gradient import flat_gradient_apply_task, flat_gradient_task

    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", args.scale)
    truth = make_truth(cam, 5, qe=False, vignetting=False, flat_gradient=True, cosmics=False, dark_current=False,
                       bias_pattern=False)
    ids = [d.id for d in cam.science_detectors]
    try:
        specs = [ExposureSpec(20241110, i + 1, "flat", "r_03", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00", "flat",
                              "BENCH", 5000.0) for i in range(args.n_flats)]
        paths = simulate(specs, data / "raw", cam.name, args.scale, seed=5, detectors=ids, workers=args.workers,
                         truth=truth)
        out = data / "out"
        out.mkdir(parents=True, exist_ok=True)
        icfg = isr_config_for("flat")
        ref_s, flats = 0.0, []
        for d in ids:
            det = cam.detector(d)
            calibs = _calibs(truth, cam, det, out)
            mine = [p for p in paths if p.name.endswith(f"_{det.name}.fits")]
            t0 = time.perf_counter()
            exps = _run_isr_all(mine, out / f"isr{d}", icfg, {k: calibs[k] for k in ("ptc", "bias", "dark")},
                                args.workers, None)
            res = combine_task([e.path for e in exps], out / f"flat{d}.fits", combine_config_for("flat"),
                               scales=[1.0] * len(exps), threads=args.workers)
            ref_s += time.perf_counter() - t0
            flats.append(str(res.path))
            shutil.rmtree(out / f"isr{d}", ignore_errors=True)
        t0 = time.perf_counter()
        flat_gradient_task(flats, out / "grad.json", {"radialSplineNodes": [0, 15, 30, 45, 60, 75, 90],
                                                      "doFitGradient": True, "doReferenceGradient": True})
        gen_s = time.perf_counter() - t0
        # the correction of a new flat (CpFlatApplyGradientsTask): its own fit, then every detector corrected
        # against the reference; and the anaglyph mix (CalibCombineTwoFlatsByFilterTask) of two corrected flats
        t0 = time.perf_counter()
        flat_gradient_task(flats, out / "new.json", {"radialSplineNodes": [0, 15, 30, 45, 60, 75, 90],
                                                     "doFitGradient": True, "doFitCentroid": True})
        corrected = [flat_gradient_apply_task(f, str(out / "new.json"), str(out / "grad.json"), out / f"corr{i}.fits").path
                     for i, f in enumerate(flats)]
        apply_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, c in enumerate(corrected):
            combine_two_flats_task(c, flats[i], out / f"mix{i}.fits", {"weightOne": 0.63})
        mix_s = time.perf_counter() - t0
        n = len(ids)
        row = {"type": "flat_gradient_reference", "scale": args.scale, "detectors": n, "raws_per_detector": args.n_flats,
               "isr_combine_per_detector_s": round(ref_s / n, 2), "generation_task_per_detector_s": round(gen_s / n, 3),
               "task_over_isr_combine": round(gen_s / ref_s, 3),
               "fit_and_apply_per_detector_s": round(apply_s / n, 3), "apply_over_isr_combine": round(apply_s / ref_s, 3),
               "two_flat_mix_per_detector_s": round(mix_s / n, 3), "mix_over_isr_combine": round(mix_s / ref_s, 3),
               "load_1min": round(os.getloadavg()[0], 2)}
        print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
