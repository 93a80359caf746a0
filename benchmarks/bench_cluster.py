"""Cluster start-up and template rendering costs, measured side by side in one run.

Measures, with the same settings and the same small workload:

* rendering: every shipped template with the DMTN-222 variables (ms per template), next to
  ``envsubst``-style plain ``os.path.expandvars`` of the same text (the ratio is the price of
  Jinja + BPS substitution + validation);
* LocalCluster: time to 2 connected workers, time of a small computation, time to close;
* SLURMCluster through ``open_cluster`` on the local test Slurm (``cluster/start-local-slurm.sh``;
  needs root): the same three numbers, and the ratio Slurm / local.

Usage::

    python benchmarks/bench_cluster.py [--repeat 3] [--no-slurm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dmtn_env() -> dict[str, str]:
    from tests.fixtures.submit import DMTN222_VARIABLES

    return dict(DMTN222_VARIABLES)


def bench_render(repeat: int) -> tuple[float, float]:
    from cpframe.execution.submission import validate_submission
    from cpframe.execution.templates import default_templates_dir, render

    env = _dmtn_env()
    files = sorted(default_templates_dir().glob("bps_*.yaml"))
    full, plain = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            r = render(f, environ=env)
            validate_submission(r.config, r.path)
        full.append((time.perf_counter() - t0) / len(files))
        old = dict(os.environ)
        os.environ.update(env)
        try:
            t0 = time.perf_counter()
            for f in files:
                os.path.expandvars(f.read_text())
            plain.append((time.perf_counter() - t0) / len(files))
        finally:
            os.environ.clear()
            os.environ.update(old)
    return statistics.median(full), statistics.median(plain)


def _work(client) -> float:
    import dask.array as da

    t0 = time.perf_counter()
    x = da.random.RandomState(1).normal(size=(2000, 2000), chunks=(500, 500))
    x.std().compute()
    return time.perf_counter() - t0


def bench_cluster(kind: str, site=None) -> tuple[float, float, float]:
    from cpframe.execution.cluster import open_cluster
    from cpframe.core.config import Settings

    settings = Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30)
    t0 = time.perf_counter()
    oc = open_cluster(settings, site=site, kind=kind, jobs=2 if kind == "slurm" else None)
    oc.client.wait_for_workers(2, timeout=180)
    start = time.perf_counter() - t0
    work = _work(oc.client)
    t0 = time.perf_counter()
    oc.close()
    close = time.perf_counter() - t0
    return start, work, close


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-slurm", action="store_true")
    args = ap.parse_args()

    full, plain = bench_render(args.repeat)
    print(f"render+validate: {full * 1e3:.1f} ms/template; plain expandvars: {plain * 1e3:.3f} ms/template; "
          f"ratio {full / plain:.0f}x")

    local = [bench_cluster("local") for _ in range(args.repeat)]
    ls, lw, lc = (statistics.median(v) for v in zip(*local))
    print(f"local  : start to 2 workers {ls:.2f} s, work {lw:.2f} s, close {lc:.2f} s")
    if args.no_slurm:
        return
    state = tempfile.mkdtemp(prefix="cpfb-", dir="/tmp")
    start = subprocess.run([str(ROOT / "cluster/start-local-slurm.sh"), state], capture_output=True, text=True)
    if start.returncode != 0:
        print("slurm  : not available:", start.stderr.strip()[-300:])
        return
    os.environ["SLURM_CONF"] = f"{state}/slurm.conf"
    try:
        import dataclasses

        from cpframe.execution.cluster import load_site

        site = dataclasses.replace(load_site("slurm-local.yaml"), log_directory=f"{state}/logs",
                                   local_directory=f"{state}/work")
        slurm = [bench_cluster("slurm", site) for _ in range(args.repeat)]
        ss, sw, sc = (statistics.median(v) for v in zip(*slurm))
        print(f"slurm  : start to 2 workers {ss:.2f} s, work {sw:.2f} s, close (jobs gone) {sc:.2f} s")
        print(f"ratio slurm/local: start {ss / ls:.2f}x, work {sw / lw:.2f}x, close {sc / lc:.2f}x")
    finally:
        subprocess.run([str(ROOT / "cluster/stop-local-slurm.sh"), state, "--wipe"], capture_output=True)


if __name__ == "__main__":
    main()
