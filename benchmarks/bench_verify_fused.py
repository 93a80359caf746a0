"""verifyBias (or ``--stage defects``: verifyDefects) of N full-size raws of one detector: the fused verifyStats
quantum vs ISR file(s) + verifyStats.

Takes ``--n`` full-size LSSTComCam bias raws of one detector (``--raws DIR``, searched recursively; else
simulated with ``bench_pipeline.simulate_raws``), writes the calibrations the verifyBias ISR reads into a
temporary directory (a PTC and defects from the simulator's truth, seed 11 as ``simulate_raws``; the bias under
test made by ``cp_bias`` on the same raws), then runs, interleaved, ``--repeat`` rounds of, in this one
process (no Dask; every quantum through :func:`cpframe.execution.graph_tasks.run_quantum`, the function a Dask
worker calls, with the :class:`QuantumSpec` that ``build_graph`` makes):

* ``cat`` of the raws to /dev/null (reading them once, page cache warm: the floor);
* unfused, per raw: the ``verifyBiasIsr`` quantum (kind ``isr``: ``isr_task`` writes the ISR file, a
  fits-masked full-size image), then the ``verifyBiasMeasure`` quantum (kind ``verifyStats``, stage BIAS:
  reads that file, writes the statistics and the preview); the ISR files' bytes are counted, then removed
  (outside the timing);
* fused, per raw: the ``verifyBiasIsr`` placeholder (``fusedAway``) and the fused ``verifyBiasMeasure``
  quantum (``isr_image`` in memory -> ``residual_in_memory`` -> the same statistics and preview); it writes
  only what verifyStats writes.

The ISR and verifyStats settings are planned from ``pipelines/verifyBias.yaml`` by the kinds' own ``plan`` and
``for_quantum`` (the planner's calls) with the calibrations found being ptc, bias and defects: the optional
crosstalk and linearizer are not there, so ``doCrosstalk``, ``doQuadraticCrosstalkCorrection`` and
``doLinearize`` go off as in a repository without them.  The order of the two paths alternates between rounds.
Each round checks that both paths' statistics (returned values and JSON files) and previews are equal.

``--stage defects`` (issue 14): ``--n`` full-size r_03 flat raws (simulated here unless ``--raws``), the
verifyDefects ISR calibrations (truth PTC and defects, a zero bias and dark, a unit flat; no bias under test to
make), and per raw two ISR quanta (``verifyDefectsIsr`` with the defects, ``verifyUncorrectedDefectsIsr``
without) writing two files, then ``verifyDefectsMeasure`` reading both; fused, the one verifyStats quantum makes
both ISR images in memory, the uncorrected one first.  The bytes of the ISR files avoided are counted, and each
path's peak of traced allocations per quantum (``tracemalloc``, numpy's arrays included) is measured once on
one raw outside the timing: unfused, the larger of its ISR and verifyStats quanta (each a Dask task of its own).

Usage::

    python benchmarks/bench_verify_fused.py --raws /tmp/raws20/20241110 --n 5 --repeat 3
    python benchmarks/bench_verify_fused.py --n 3 --repeat 1          # simulated raws
    python benchmarks/bench_verify_fused.py --stage defects --n 3 --repeat 3
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


#: Per stage: pipeline file, its ISR task labels (in the verifyStats task's input order) and its verifyStats task.
STAGES = {"bias": ("verifyBias.yaml", ("verifyBiasIsr",), "verifyBiasMeasure"),
          "defects": ("verifyDefects.yaml", ("verifyDefectsIsr", "verifyUncorrectedDefectsIsr"), "verifyDefectsMeasure")}


def _calibs(raws: list[str], out: Path, detector: int, stage: str) -> dict[str, str]:
    """ptc and defects from the simulator's truth (seed 11, as ``simulate_raws``; bench_fused_dark's writer); for
    verifyBias the bias under test made by ``cp_bias`` from the raws; for verifyDefects a zero bias (variance 1)
    and dark and a unit flat, as tests/test_verify_fused.py certifies."""
    from bench_fused_dark import _calibs as truth_calibs

    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import make_truth
    from cpframe.science.imageio import write_masked
    from cpframe.science.tasks import cp_bias

    cam = load_camera("LSSTComCam", "full")
    det = cam.detector(detector)
    out.mkdir(parents=True, exist_ok=True)
    truth = truth_calibs(make_truth(cam, 11), cam, det, out)
    if stage == "bias":
        bias = str(cp_bias(raws, out / "bias_under_test.fits", calibs={"ptc": truth["ptc"]}).path)
        return {"ptc": truth["ptc"], "bias": bias, "defects": truth["defects"]}
    head = {"INSTRUME": cam.name, "DETECTOR": det.id, "DETNAME": det.name, "CAMSCALE": cam.scale}
    z, zm = np.zeros(det.shape, np.float32), np.zeros(det.shape, np.int32)
    dark = write_masked(out / "dark.fits", z, zm, z, {**head, "LSST ISR UNITS": "electron"})
    flat = write_masked(out / "flat.fits", z + 1.0, zm, z, {**head, "FILTER": "r_03"})
    return {"ptc": truth["ptc"], "bias": truth["bias"], "dark": str(dark), "flat": str(flat),
            "defects": truth["defects"]}


def _simulate_flats(directory: Path, n: int, detector: int) -> list[Path]:
    """``n`` full-size r_03 flats of one detector (10 s at 1000 e-/s/pixel; seed 11, as ``simulate_raws``)."""
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate

    cam = load_camera("LSSTComCam", "full")
    specs = [ExposureSpec(20241110, 40 + i, "flat", "r_03", 10.0, 10.0, f"2024-11-10T21:{i:02d}:00", "flat",
                          "BENCH", 1000.0) for i in range(n)]
    return [Path(p) for p in simulate(specs, directory, "LSSTComCam", scale="full", seed=11, detectors=[detector],
                                      workers=2, truth=make_truth(cam, 11), executor="thread")]


def _specs(raws: list[str], calib_paths: dict[str, list[str]], scratch: Path, detector: int, stage: str):
    """Per raw: (ISR specs, unfused verifyStats spec, placeholder specs, fused verifyStats spec), as build_graph."""
    import yaml

    from cpframe.execution.graph import registered_types
    from cpframe.execution.graph_tasks import QuantumSpec
    from cpframe.execution.kinds import get_kind
    from cpframe.execution.kinds.isr import isr_calibs
    from cpframe.execution.pipeline import load_pipeline
    from cpframe.science.imageio import read_header

    pipe_file, isr_labels, stats_label = STAGES[stage]
    pipe = load_pipeline(ROOT / "pipelines" / pipe_file)
    task = {t.label: t for t in pipe.tasks}
    reg = set(registered_types(pipe))
    # the keys the pipeline file writes (graph._explicit_options): the planner's notes name only those
    cfg = (yaml.safe_load((ROOT / "pipelines" / pipe_file).read_text()) or {})["tasks"]
    explicit = {label: set((sec or {}).get("config") or {}) for label, sec in cfg.items()}
    notes: list[str] = []
    isr_settings, isr_calib_paths = [], []
    for label in isr_labels:
        shared, n1 = get_kind("isr").plan(task[label], None, explicit[label])
        # the calibrations the ISR task reads (no defects with doDefect false); crosstalk, linearizer: not found
        mine = {c: v for c, v in calib_paths.items() if c in task[label].calibrations}
        isr_settings.append(get_kind("isr").for_quantum(shared, mine))
        isr_calib_paths.append(mine)
        notes += n1
    stats_t = task[stats_label]
    stats_shared, n2 = get_kind("verifyStats").plan(stats_t, None, explicit[stats_label])
    stats_settings = get_kind("verifyStats").for_quantum(stats_shared, {})
    out = []
    for raw in raws:
        h = read_header(raw)
        exp = int(h["DAYOBS"]) * 100000 + int(h["SEQNUM"])  # the exposure ID ingest gives (no EXPID in a raw)
        did = {"instrument": "LSSTComCam", "exposure": exp, "detector": detector}

        def outputs(label, types):
            return tuple((str(scratch / label / f"{dt}_LSSTComCam_{exp}_{detector}{'.json' if dt.endswith('Stats') else '.fits'}"),
                          dt, did, dt in reg) for dt in types)

        keys = [f"{label}_{exp}_{detector}" for label in isr_labels]
        isr = tuple(QuantumSpec(key=k, kind="isr", task=label, data_id=did, raw_path=raw, calib_paths=c,
                                outputs=outputs(label, task[label].outputs), settings=st)
                    for k, label, c, st in zip(keys, isr_labels, isr_calib_paths, isr_settings))
        meas = QuantumSpec(key=f"{stats_label}_{exp}_{detector}", kind="verifyStats", task=stats_label,
                           data_id=did, raw_path=None, calib_paths={},
                           outputs=outputs(stats_label, stats_t.outputs), settings=stats_settings,
                           input_types=tuple(task[label].outputs[0] for label in isr_labels),
                           input_counts=(1,) * len(isr_labels))
        away = tuple(QuantumSpec(key=k, kind="fusedAway", task=label, data_id=did, raw_path=None,
                                 calib_paths={}, outputs=(), settings={}) for k, label in zip(keys, isr_labels))
        fused = replace(meas, outputs=outputs(stats_label + "Fused", stats_t.outputs), fused_raws=(raw,) * len(keys),
                        fused_isrs=tuple(st["isr"] for st in isr_settings),
                        fused_calibs=tuple(isr_calibs(c) for c in isr_calib_paths), fused_keys=tuple(keys))
        out.append((isr, meas, away, fused))
    return out, isr_settings[0]["isr"], notes + n2


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _unfused(specs) -> tuple[list[dict], list]:
    from cpframe.execution.graph_tasks import run_quantum

    rows, values = [], []
    for isr, meas, _away, _fused in specs:
        c0, t0 = _cpu(), time.perf_counter()
        r_isr = [run_quantum(q, []) for q in isr]
        t1 = time.perf_counter()
        r = run_quantum(meas, r_isr)
        t2, c2 = time.perf_counter(), _cpu()
        rows.append({"wall_s": t2 - t0, "isr_s": t1 - t0, "stats_s": t2 - t1, "cpu_s": c2 - c0,
                     "isr_file_bytes": sum(os.path.getsize(q.outputs[0][0]) for q in isr)})
        values.append(r.value)
    return rows, values


def _fused(specs) -> tuple[list[dict], list]:
    from cpframe.execution.graph_tasks import run_quantum

    rows, values = [], []
    for _isr, _meas, away, fused in specs:
        c0, t0 = _cpu(), time.perf_counter()
        r = run_quantum(fused, [run_quantum(a, []) for a in away])
        rows.append({"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - c0})
        values.append(r.value)
    return rows, values


def _traced_peaks(spec_row) -> dict[str, float]:
    """MiB: the peak of traced allocations of each quantum of one raw, run alone (tracemalloc; outside timing)."""
    import tracemalloc

    from cpframe.execution.graph_tasks import run_quantum

    isr, meas, away, fused = spec_row

    def peak(fn):
        tracemalloc.start()
        try:
            value = fn()
            return value, tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    out, results = {}, []
    for q in isr:
        res, out[f"isr {q.task}"] = peak(lambda q=q: run_quantum(q, []))
        results.append(res)
    _, out["unfused verifyStats"] = peak(lambda: run_quantum(meas, results))
    _, out["fused verifyStats"] = peak(lambda: run_quantum(fused, [run_quantum(a, []) for a in away]))
    return out


def _same(specs, unfused_values, fused_values) -> tuple[bool, str]:
    """Statistics dictionaries equal (NaN == NaN), JSON files and preview files byte-equal."""
    from cpframe.science.imageio import read_masked

    def eq(a, b) -> bool:
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
        if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
            return True
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return np.array_equal(a, b, equal_nan=True)
        return a == b

    bad = []
    for (_i, meas, _a, fused), u, f in zip(specs, unfused_values, fused_values):
        did = meas.data_id["exposure"]
        if not eq(u, f):
            bad.append(f"{did}: statistics dictionaries differ")
        (ju, _, _, _), (pu, _, _, _) = meas.outputs
        (jf, _, _, _), (pf, _, _, _) = fused.outputs
        if not filecmp.cmp(ju, jf, shallow=False):
            bad.append(f"{did}: statistics JSON files differ")
        if not filecmp.cmp(pu, pf, shallow=False):
            a, b = read_masked(pu), read_masked(pf)
            if not (np.array_equal(a.image, b.image, equal_nan=True) and np.array_equal(a.mask, b.mask)):
                bad.append(f"{did}: previews differ")
    n_keys = len(unfused_values[0]) if unfused_values and isinstance(unfused_values[0], dict) else 0
    return not bad, "; ".join(bad) or (f"{len(specs)} x statistics dict ({n_keys} top-level keys) equal, "
                                       f"JSON files byte-equal, previews equal")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--raws", help="directory of existing full-size raws of one detector (searched recursively): "
                                   "biases for verifyBias, flats for verifyDefects")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stage", choices=sorted(STAGES), default="bias")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-verify-fused-", dir=HERE / "_data" if (HERE / "_data").exists() else None))
    try:
        if args.raws:
            raws = [str(p) for p in sorted(Path(args.raws).rglob("*.fits"))[: args.n]]
        else:
            from bench_pipeline import simulate_raws

            t = time.perf_counter()
            sim = simulate_raws if args.stage == "bias" else _simulate_flats
            raws = [str(p) for p in sim(work / "raw", args.n, args.detector)]
            print(f"simulated {len(raws)} full-size raws in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        calibs = _calibs(raws, work / "calib", args.detector, args.stage)
        print(f"calibrations ({', '.join(calibs)}) in {time.perf_counter() - t:.1f} s", flush=True)
        calib_paths = {k: [v] for k, v in calibs.items()}
        scratch = work / "scratch"
        scratch.mkdir()
        specs, isr_cfg, notes = _specs(raws, calib_paths, scratch, args.detector, args.stage)
        isr_labels = STAGES[args.stage][1]

        def remove_isr_files():
            for label in isr_labels:
                for p in scratch.glob(f"{label}/*.fits"):
                    p.unlink()
        on = sorted(k for k, v in vars(isr_cfg).items() if k.startswith("do_") and v is True)
        off = sorted(k for k, v in vars(isr_cfg).items() if k.startswith("do_") and v is False)
        print(f"ISR steps on: {', '.join(on)}\nISR steps off: {', '.join(off)}")
        for n in notes:
            print(f"planner note: {n}")

        # warm-up on one raw, both paths (imports, numba caches, the calibrations' page cache)
        u, uv = _unfused(specs[:1])
        f, fv = _fused(specs[:1])
        ok, text = _same(specs[:1], uv, fv)
        print(f"warm-up on 1 raw: unfused {u[0]['wall_s']:.2f} s, fused {f[0]['wall_s']:.2f} s; {text}", flush=True)
        if not ok:
            raise SystemExit(f"fused and unfused {args.stage} statistics differ")
        remove_isr_files()
        peaks = _traced_peaks(specs[0])
        remove_isr_files()
        print("peak of traced allocations per quantum, MiB (tracemalloc, one raw): "
              + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()), flush=True)

        size = sum(os.path.getsize(p) for p in raws)
        print(f"{len(raws)} full-size raws of detector {args.detector}, {size / 2**20:.0f} MiB; "
              f"{args.repeat} interleaved rounds (load {os.getloadavg()[0]:.2f})", flush=True)
        rows: dict[str, list] = {"cat": [], "unfused": [], "fused": []}
        for r in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(["cat", *raws], stdout=subprocess.DEVNULL, check=True)
            rows["cat"].append({"wall_s": time.perf_counter() - t, "per_raw_s": (time.perf_counter() - t) / len(raws)})
            order = ("unfused", "fused") if r % 2 == 0 else ("fused", "unfused")
            res = {}
            for label in order:
                res[label] = (_unfused if label == "unfused" else _fused)(specs)
                for row in res[label][0]:
                    row["load"] = os.getloadavg()[0]
                rows[label].append(res[label][0])
                if label == "unfused":
                    remove_isr_files()
            ok, text = _same(specs, res["unfused"][1], res["fused"][1])
            u, f = res["unfused"][0], res["fused"][0]
            print(f"round {r + 1} ({' then '.join(order)}): cat {rows['cat'][-1]['per_raw_s']:.3f} s/raw; "
                  f"unfused {statistics.median(x['wall_s'] for x in u):.2f} s/raw (ISR "
                  f"{statistics.median(x['isr_s'] for x in u):.2f} + stats {statistics.median(x['stats_s'] for x in u):.2f}); "
                  f"fused {statistics.median(x['wall_s'] for x in f):.2f} s/raw; load {os.getloadavg()[0]:.2f}\n"
                  f"  statistics equal: {ok} ({text})", flush=True)
            assert ok, f"round {r + 1}: fused and unfused {args.stage} statistics differ: {text}"

        def med(label, key="wall_s"):
            return statistics.median(x[key] for rnd in rows[label] for x in (rnd if isinstance(rnd, list) else [rnd]))

        cat_s = statistics.median(x["per_raw_s"] for x in rows["cat"])
        u_s, f_s = med("unfused"), med("fused")
        mib = med("unfused", "isr_file_bytes") / 2**20
        print(f"\nmedians over {args.repeat} rounds x {len(raws)} raws (one process, load "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())})")
        print(f"stage {args.stage}: ISR tasks {', '.join(isr_labels)}")
        print("| path | s per raw (wall) | s per raw (CPU) | / cat | ISR file MiB per raw |")
        print("|---|---:|---:|---:|---:|")
        print(f"| cat of the raws | {cat_s:.3f} | | 1 | |")
        print(f"| unfused: ISR file(s) + verifyStats | {u_s:.2f} | {med('unfused', 'cpu_s'):.2f} | {u_s / cat_s:.0f} | "
              f"{mib:.0f} |")
        print(f"|   of which the ISR quanta | {med('unfused', 'isr_s'):.2f} | | | |")
        print(f"|   of which verifyStats reading it | {med('unfused', 'stats_s'):.2f} | | | |")
        print(f"| fused verifyStats (ISR in memory) | {f_s:.2f} | {med('fused', 'cpu_s'):.2f} | {f_s / cat_s:.0f} | 0 |")
        print(f"unfused / fused: {u_s / f_s:.2f} (wall), {med('unfused', 'cpu_s') / med('fused', 'cpu_s'):.2f} (CPU)")
        unfused_peak = max(v for k, v in peaks.items() if not k.startswith("fused"))
        print(f"peak traced MiB per quantum: unfused {unfused_peak:.0f} (the largest of its quanta), fused "
              f"{peaks['fused verifyStats']:.0f}")
        print(json.dumps({"stage": args.stage, "n": len(raws), "repeat": args.repeat, "raws_mib": size / 2**20,
                          "traced_peak_mib": peaks,
                          "isr_on": on, "cat_s_per_raw": cat_s, "unfused_s_per_raw": u_s, "fused_s_per_raw": f_s,
                          "ratio": u_s / f_s, "isr_file_mib_per_raw": mib, "rounds": rows}, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
