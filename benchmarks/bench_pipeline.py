"""``cpframe submit`` of the bias bootstrap on N full-size raws of one detector vs reading the raws once.

Simulates ``--n`` full-size LSSTComCam bias raws of one detector into a fresh directory (or copies
there the first ``--n`` of ``--raws DIR``), ingests them in place into a new SQLite repository, then
runs, interleaved, ``--repeat`` rounds of:

* ``cat`` of the raws to /dev/null (the floor: reading the raws once, page cache warm; fresh files,
  because files written long ago may be partly evicted from the page cache, most likely by the
  kernel's proactive reclaim on these machines, and their ``cat`` then reads part of them from the
  disk: issue 14 measured 0.21-0.28 s for 20 raws in place against 0.12-0.13 s for fresh copies of
  the same bytes, ``fincore`` shows what is resident; ``--in-place`` reads ``--raws`` where they are,
  to compare with older figures);
* ``python -m cpframe submit templates/bps_biasBootstrap.yaml`` from the command line, under
  a measuring wrapper (wall time including interpreter start, planning, the LocalCluster
  start with 2 workers x 1 thread, the work and registration; peak RSS of the largest
  process), default settings: the ISR quanta are fused into the combine;
* the same with the combine's ``fuseIsr: false`` (a copy of the pipeline in a temporary
  ``CPFRAME_PIPELINES``): ISR files per exposure, then the combine (the previous behaviour).

After each submission the repository is searched for files larger than 50 MB that are not
raws (full-size intermediates left behind); there must be none besides the product.

Usage::

    python benchmarks/bench_pipeline.py                     # 20 full-size raws, 3 rounds
    python benchmarks/bench_pipeline.py --raws /tmp/raws --repeat 1 --skip-unfused
    python benchmarks/bench_pipeline.py --raws /tmp/raws --skip-unfused --baseline /tmp/before  # side by side
    python benchmarks/bench_pipeline.py --raws /tmp/raws --in-place --repeat 1   # the raws where they are
    python benchmarks/bench_pipeline.py --repeat 1 --skip-unfused --timeline     # where each run's time went
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def simulate_raws(directory: Path, n: int, detector: int) -> list[Path]:
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate

    cam = load_camera("LSSTComCam", "full")
    truth = make_truth(cam, 11)
    specs = [ExposureSpec(20241110, 10 + i, "bias", "r_03", 0.0, 0.0, f"2024-11-10T20:{i:02d}:00", "bias",
                          "BENCH", 0.0) for i in range(n)]
    return [Path(p) for p in simulate(specs, directory, "LSSTComCam", scale="full", seed=11, detectors=[detector],
                                      workers=2, truth=truth, executor="thread")]


def code_of(env: dict, cwd: Path) -> str:
    """The cpframe checkout a command run with ``env`` in ``cwd`` imports.

    ``python -m`` puts its working directory first on ``sys.path`` (and the workers it spawns inherit that
    path): run from a checkout, every submission imported that checkout whatever ``PYTHONPATH`` said, so the
    "baseline" of earlier runs was this code (benchmarks/RESULTS.md).  Submissions now run in the benchmark's
    temporary directory, and each label's checkout is checked before timing.
    """
    out = subprocess.run([sys.executable, "-c", "import cpframe, os; print(os.path.dirname(os.path.dirname("
                          "os.path.abspath(cpframe.__file__))))"], env=env, cwd=cwd, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def submit(env: dict, label: str, cwd: Path, timeline: Path | None = None) -> dict:
    # measure.py: counts the workers forked by the local cluster's fork server (/usr/bin/time missed them)
    cmd = [sys.executable, str(HERE / "measure.py"), sys.executable, "-m", "cpframe", "submit",
           str(ROOT / "templates" / "bps_biasBootstrap.yaml")]
    if timeline is not None:  # every process of the run appends its moments there (cpframe.core.timeline)
        env = dict(env, CPFRAME_TIMELINE=str(timeline))
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"{label}: submit failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    m = json.loads(re.findall(r"^MEASURED (.*)$", out.stderr, re.MULTILINE)[-1])
    # wall: the command's, from its start to its exit (what a user waits for); CPU: the command and every process
    # it started (the LocalCluster's workers, forked or spawned): under load the wall time is inflated, the CPU
    # seconds much less; max RSS is the largest process's VmHWM, which counts file-backed pages (libraries, the
    # product's memory-mapped planes), see bench_memory.py
    res = {"wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "max_rss_mib": m["max_rss_kib"] / 1024,
           "load": os.getloadavg()[0]}
    if timeline is not None:
        from timeline import summary

        res["timeline"] = summary(str(timeline), t0)
    return res


def big_files(repo: Path, raws: set[str], limit: int = 50 * 2**20) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(repo):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            if st.st_size > limit and os.path.realpath(p) not in raws:
                out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--detector", type=int, default=4)
    ap.add_argument("--raws", help="directory of existing full-size bias raws of one detector (copied first, see above)")
    ap.add_argument("--in-place", action="store_true",
                    help="with --raws: ingest and read the raws where they are instead of fresh copies")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-unfused", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeline", action="store_true",
                    help="print where each submission's time went (CPFRAME_TIMELINE, benchmarks/timeline.py; seconds "
                         "from the measuring wrapper's launch)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another cpframe checkout (e.g. `git worktree add /tmp/before <commit>`) whose fused "
                         "submission runs interleaved with this one's, same repository, as 'baseline'")
    args = ap.parse_args(argv)
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=HERE / "_data" if (HERE / "_data").exists() else None))
    try:
        if args.raws:
            raws = sorted(Path(args.raws).rglob("*.fits"))[: args.n]
            if not args.in_place:  # fresh copies, wholly in the page cache (module docstring)
                (work / "raw").mkdir()
                copies = [work / "raw" / f"{i:03d}_{p.name}" for i, p in enumerate(raws)]
                for p, q in zip(raws, copies):
                    shutil.copyfile(p, q)
                raws = copies
        else:
            t = time.perf_counter()
            raws = simulate_raws(work / "raw", args.n, args.detector)
            print(f"simulated {len(raws)} full-size raws in {time.perf_counter() - t:.1f} s", flush=True)
        repo_root = work / "repo"
        repo = Repository.create(repo_root)
        rep = ingest_raws(repo, [str(p) for p in raws], run="LSSTComCam/raw/all", transfer="direct", processes=1)
        assert not rep.failed, rep.summary()
        repo.close()
        pipes = work / "pipelines"
        shutil.copytree(ROOT / "pipelines", pipes)
        text = (pipes / "cpBiasBootstrap.yaml").read_text()
        (pipes / "cpBiasBootstrap.yaml").write_text(text.replace("      combine: MEANCLIP\n",
                                                                  "      combine: MEANCLIP\n      fuseIsr: false\n"))
        env = dict(os.environ, PYTHONPATH=str(ROOT), INSTRUMENT="LSSTComCam", TICKET="BENCH", REPO=str(repo_root),
                   RAW_COLLECTION="LSSTComCam/raw/all", CALIB_COLLECTIONS="", TAG="bench", USER_CALIB_PREFIX="",
                   BOOTSTRAP_RUN_NUMBER="1", SCRATCH=str(work / "scratch"),
                   SELECTION_BIAS_BOOTSTRAP="instrument='LSSTComCam' and exposure.observation_type='bias'")
        raw_set = {os.path.realpath(p) for p in raws}
        size = sum(p.stat().st_size for p in raws)
        print(f"{len(raws)} raws, {size / 2**20:.0f} MiB; {args.repeat} interleaved rounds", flush=True)
        results: dict[str, list[dict]] = {"cat": [], "fused": [], "unfused": [], "baseline": []}
        for r in range(args.repeat):
            t = time.perf_counter()
            subprocess.run(["cat", *map(str, raws)], stdout=subprocess.DEVNULL, check=True)
            results["cat"].append({"wall_s": time.perf_counter() - t})
            for label in ("baseline", "fused", "unfused"):
                if (label == "unfused" and args.skip_unfused) or (label == "baseline" and not args.baseline):
                    continue
                e = dict(env, RERUN=f"r{r}{label[0]}")
                if label == "unfused":
                    e["CPFRAME_PIPELINES"] = str(pipes)
                if label == "baseline":
                    e["PYTHONPATH"] = str(Path(args.baseline).resolve())
                if r == 0:  # the code each label really runs (see code_of)
                    want = Path(e["PYTHONPATH"]).resolve()
                    got = Path(code_of(e, work)).resolve()
                    if got != want:
                        raise SystemExit(f"{label}: the submission would import cpframe from {got}, not {want}")
                    print(f"{label}: cpframe from {got}", flush=True)
                res = submit(e, label, work, work / f"timeline-{r}{label[0]}.txt" if args.timeline else None)
                res["big_files"] = big_files(repo_root, raw_set)
                results[label].append(res)
                print(f"round {r + 1} {label}: {res['wall_s']:.1f} s (CPU {res['cpu_s']:.1f} s, load {res['load']:.1f}), "
                      f"max RSS {res['max_rss_mib']:.0f} MiB, "
                      f"big non-raw files in the repository: {len(res['big_files'])}", flush=True)
                if "timeline" in res:
                    print("    " + res["timeline"].replace("\n", "\n    "), flush=True)
        cat_s = statistics.median(x["wall_s"] for x in results["cat"])
        print(f"\ncat of the raws (median): {cat_s:.3f} s")
        for label in ("baseline", "fused", "unfused"):
            if results[label]:
                w = statistics.median(x["wall_s"] for x in results[label])
                print(f"cpframe submit biasBootstrap, {label}: median {w:.1f} s = {w / cat_s:.0f}x cat "
                      f"(target <= 30x); max RSS {max(x['max_rss_mib'] for x in results[label]):.0f} MiB")
        print("\n" + json.dumps(results, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
