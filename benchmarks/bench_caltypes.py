"""Cost per detector of the new generation tasks against ISR + combine of the same inputs.

For each of linearizer (flat-pair ramp), crosstalk (spot exposures), CTI (flats at
several levels), brighter-fatter kernel and electrostatic brighter-fatter matrix (flat-pair
ramp with the simulator's pixel-area effect), on one LSSTComCam detector (full size by default):

1. the generation driver (``cp_linearizer``, ``cp_crosstalk``, ``cp_cti``, ``cp_bfk``): ISR of every
   raw with the type's switches + the type's own extract/solve + product write (BFK: the
   FULLCOVARIANCE PTC of its ramp, cp_pipe's default covariance range 8, then the kernel; electrostatic:
   pipelines/cpElectrostaticBFDistortionMatrixBfPtc.yaml's steps, a FULLCOVARIANCE PTC to lag 10, then the
   electrostatic fit with cp_pipe's LSST settings, fitRange 10);
2. the reference: ISR of the same raws with the same switches + a MEANCLIP combine of the
   intermediates (``combine_task``), i.e. what a bias/flat of the same inputs costs.

The ratio 1/2 is the figure: how much the type's own analysis adds to the ISR cost that
dominates both.  The raws are simulated once into benchmarks/_data/ (deleted afterwards
unless --keep) and are in the page cache for both runs.

Usage::

    python benchmarks/bench_caltypes.py                    # full size, 2 workers
    python benchmarks/bench_caltypes.py --scale mini       # quick check
    python benchmarks/bench_caltypes.py --only crosstalk
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

from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate  # noqa: E402
from cpframe.science.combine import combine_config_for  # noqa: E402
from cpframe.science.drivers import cp_bfk, cp_crosstalk, cp_cti, cp_linearizer  # noqa: E402
from cpframe.science.electrostatic import electrostatic_solve_task  # noqa: E402
from cpframe.science.isr import isr_config_for  # noqa: E402
from cpframe.science.tasks import _run_isr_all, combine_task  # noqa: E402


def _specs(kind: str, n: int) -> list[ExposureSpec]:
    out = []
    for i in range(n):
        begin = f"2024-11-10T2{i // 60}:{i % 60:02d}:00"
        if kind in ("linearizer", "bfk", "electrostatic"):
            t = round(0.5 + 30.0 * (i // 2) / max(1, n // 2 - 1), 3)
            out.append(ExposureSpec(20241110, i + 1, "flat", "r_03", t, t + 0.3, begin, "ptc", "BENCH", 3000.0))
        elif kind == "crosstalk":
            out.append(ExposureSpec(20241110, i + 1, "spot", "r_03", 10.0, 10.3, begin, "crosstalk", "BENCH", 5e4))
        else:
            lv = 1000.0 * 2 ** (i % 7)
            out.append(ExposureSpec(20241110, i + 1, "flat", "r_03", lv / 2000.0, lv / 2000.0 + 0.3, begin, "flat",
                                    "BENCH", 2000.0))
    return out


#: pipelines/cpElectrostaticBFDistortionMatrixBfPtc.yaml (cp_pipe's LSST settings)
_ELECTRO_PTC = {"ptcFitType": "FULLCOVARIANCE", "maximumRangeCovariancesAstier": 10,
                "maximumRangeCovariancesAstierFullCovFit": 10}
_ELECTRO = {"fitRange": 10,
            "initialParametersDict": {"thickness": 100.0, "pixelsize": 10.0, "zq": 1.0, "zsh": 2.0, "zsv": 3.0,
                                      "a": 2.0, "b": 2.0, "alpha": 1.0, "beta": 0.0},
            "parametersToVary": {"thickness": False, "pixelsize": False, "zq": True, "zsh": True, "zsv": True,
                                 "a": True, "b": True, "alpha": True, "beta": False}}


def _electrostatic(paths, out: Path, icfg, workers: int):
    """The electrostatic matrix from a FULLCOVARIANCE PTC of its own ramp (cp_pipe's useBfPtc)."""
    from cpframe.science.tasks import cp_ptc

    cp_ptc(paths, out / "bfPtc.fits", isr_config=icfg, config=_ELECTRO_PTC, workers=workers)
    return electrostatic_solve_task(out / "bfPtc.fits", out / "electro.json", _ELECTRO)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-linearizer", type=int, default=20, help="raws of the ramp (pairs)")
    ap.add_argument("--n-crosstalk", type=int, default=16, help="spot exposures (one lit amp each)")
    ap.add_argument("--n-cti", type=int, default=14, help="flats")
    ap.add_argument("--n-bfk", type=int, default=20, help="raws of the BFK ramp (pairs)")
    ap.add_argument("--n-electrostatic", type=int, default=20, help="raws of the electrostatic ramp (pairs)")
    ap.add_argument("--only", choices=("linearizer", "crosstalk", "cti", "bfk", "electrostatic"))
    ap.add_argument("--data", default=str(HERE / "_data" / "caltypes"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    shutil.rmtree(data, ignore_errors=True)
    cam = load_camera("LSSTComCam", args.scale)
    det = cam.detector(args.detector)
    truth = make_truth(cam, 5, nonlinearity=True, crosstalk=True, cti=True)
    bf_truth = make_truth(cam, 5, brighter_fatter=True, cosmics=False)  # the kernel's own data set
    gains = {a.name: truth.amp(det.id, a.name).gain for a in det.amps}
    counts = {"linearizer": args.n_linearizer, "crosstalk": args.n_crosstalk, "cti": args.n_cti, "bfk": args.n_bfk,
              "electrostatic": args.n_electrostatic}
    results = []
    try:
        for kind, n in counts.items():
            if args.only and kind != args.only:
                continue
            t0 = time.perf_counter()
            paths = simulate(_specs(kind, n), data / kind, cam.name, args.scale, seed=5, detectors=[det.id],
                             workers=args.workers, truth=bf_truth if kind in ("bfk", "electrostatic") else truth)
            sim_s = time.perf_counter() - t0
            out = data / f"{kind}_out"
            out.mkdir(parents=True, exist_ok=True)
            if kind == "linearizer":
                icfg = isr_config_for("linearizer", do_defect=False)
                run = lambda: cp_linearizer(paths, out / "linearizer.json", workers=args.workers)  # noqa: E731
            elif kind == "crosstalk":
                icfg = isr_config_for("crosstalk", do_defect=False, do_apply_gains=False, do_bootstrap=True)
                run = lambda: cp_crosstalk(paths, out / "crosstalk.json", workers=args.workers,  # noqa: E731
                                           config={"growMaskRadius": 0})
            elif kind == "bfk":
                icfg = isr_config_for("bfk", do_defect=False)
                run = lambda: cp_bfk(paths, out / "bfk.json", workers=args.workers)  # noqa: E731
            elif kind == "electrostatic":
                icfg = isr_config_for("bfk", do_defect=False)
                run = lambda: _electrostatic(paths, out, icfg, args.workers)  # noqa: E731
            else:
                icfg = isr_config_for("cti", do_defect=False, do_linearize=False, do_bootstrap=True, gains=gains)
                run = lambda: cp_cti(paths, out / "cti.json", isr_config=icfg, workers=args.workers)  # noqa: E731
            t0 = time.perf_counter()
            run()
            gen_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            work = out / "isr"
            exps = _run_isr_all(paths, work, icfg, {}, args.workers, None)
            isr_s = time.perf_counter() - t0
            combine_task([e.path for e in exps], out / "combined.fits", combine_config_for("biasBootstrap"),
                         threads=args.workers)
            ref_s = time.perf_counter() - t0
            row = {"type": kind, "scale": args.scale, "raws": n, "simulate_s": round(sim_s, 1),
                   "generation_s": round(gen_s, 1), "isr_s": round(isr_s, 1), "isr_combine_s": round(ref_s, 1),
                   "ratio": round(gen_s / ref_s, 2), "generation_per_raw_s": round(gen_s / n, 2)}
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(data / kind, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
