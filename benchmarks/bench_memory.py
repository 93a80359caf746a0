"""Peak anonymous memory of one worker running the fused ISR -> combine of a full-size detector.

For every N in ``--n`` and every row-block budget in ``--budgets`` a fresh Python process
(what a Dask worker holds: ``distributed``, numpy, astropy, numba, cpframe's science code,
with the environment a Dask nanny gives its workers, e.g. ``MALLOC_TRIM_THRESHOLD_``)
first runs a 2-raw fused combine to load the compiled kernels, records its memory
("base"), then runs :func:`cpframe.science.fused.isr_combine` of N raws of one detector
into a product file (the bias bootstrap's settings, as ``cpframe submit`` runs it) while a
thread samples ``/proc/self/status`` every millisecond:

* ``RssAnon``: anonymous memory (heap, numpy arrays) - the figure of the target
  "<= 300 MB per worker"; its peak is sampled, so a spike shorter than ~1 ms may be missed;
* ``RssFile``: file-backed pages (shared libraries, the product planes, which live in a
  memory-mapped temporary file the kernel can write back and drop);
* ``VmHWM``: the kernel's exact peak of the whole resident set (anonymous + file-backed).

The N inputs are the ``--files`` raws on disk repeated in turn (N = 200 full-size raws
would need 15 GB of disk); the memory the fused path holds per input (headers, overscan
vectors, statistics) and per block does not depend on whether two inputs are the same file.

Usage::

    python benchmarks/bench_memory.py                            # simulate 20 raws; N = 10..200
    python benchmarks/bench_memory.py --raws DIR --n 10,20,200 --budgets 16,32,64,96
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import json, os, sys, threading, time
import distributed  # noqa: F401  (a Dask worker has it loaded)

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) / 1024
    return out

from cpframe.science.combine import combine_config_for
from cpframe.science.fused import isr_combine
from cpframe.science.isr import isr_config_for

paths, n, budget, out_dir = json.loads(sys.argv[1])
inputs = [paths[i % len(paths)] for i in range(n)]
icfg, ccfg = isr_config_for("biasBootstrap"), combine_config_for("biasBootstrap")
isr_combine(inputs[:2], os.path.join(out_dir, "warm.fits"), icfg, ccfg, memory_bytes=budget)
os.unlink(os.path.join(out_dir, "warm.fits"))
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
    f.write("5")
base = status()
peak = {"RssAnon": 0.0, "RssFile": 0.0}
done = False

def sample():
    while not done:
        s = status()
        for k in peak:
            peak[k] = max(peak[k], s[k])
        time.sleep(0.001)

th = threading.Thread(target=sample, daemon=True)
th.start()
t0, c0 = time.perf_counter(), time.process_time()
_, res, _ = isr_combine(inputs, os.path.join(out_dir, "product.fits"), icfg, ccfg, memory_bytes=budget)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
done = True
th.join()
end = status()
print(json.dumps({"n": n, "budget_mib": budget / 2**20, "rows": res.strip_rows, "wall_s": wall, "cpu_s": cpu,
                  "base": base, "peak_anon_mib": peak["RssAnon"], "peak_file_mib": peak["RssFile"],
                  "vmhwm_mib": end["VmHWM"], "end": end}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raws", help="directory of full-size raws of one detector (default: simulate --files)")
    ap.add_argument("--files", type=int, default=20, help="raws to simulate when --raws is not given")
    ap.add_argument("--n", default="10,20,50,100,200", help="numbers of inputs")
    ap.add_argument("--budgets", default="32", help="row-block budgets in MiB")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        if args.raws:
            raws = sorted(str(p) for p in Path(args.raws).rglob("*.fits") if "truth" not in p.parts)
        else:
            sys.path.insert(0, str(HERE))
            from bench_pipeline import simulate_raws

            raws = [str(p) for p in simulate_raws(work / "raw", args.files, 4)]
        import dask.config
        import distributed  # noqa: F401  (registers the distributed config)

        # the environment a Dask nanny gives its worker (MALLOC_TRIM_THRESHOLD_, thread counts)
        spawn = {k: str(v) for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()}
        env = dict(os.environ, PYTHONPATH=str(ROOT), **spawn)
        print(f"worker environment as a Dask nanny sets it: {spawn}", flush=True)
        rows = []
        for n in [int(x) for x in args.n.split(",")]:
            for mib in [int(x) for x in args.budgets.split(",")]:
                runs = []
                for _ in range(args.repeat):
                    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([raws, n, mib * 2**20, str(work)])],
                                         env=env, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"N={n} budget={mib} MiB failed:\n{out.stderr[-3000:]}")
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = runs[0] if len(runs) == 1 else {**runs[0], **{
                    k: statistics.median(x[k] for x in runs) for k in ("wall_s", "cpu_s", "peak_anon_mib",
                                                                       "peak_file_mib", "vmhwm_mib")}}
                rows.append(r)
                print(f"N={n:4d} budget={mib:4d} MiB rows/block={r['rows']:4d}  peak anon {r['peak_anon_mib']:6.0f} "
                      f"MiB (base {r['base']['RssAnon']:.0f})  peak file-backed {r['peak_file_mib']:5.0f} MiB  "
                      f"VmHWM {r['vmhwm_mib']:5.0f} MiB  wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s",
                      flush=True)
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
