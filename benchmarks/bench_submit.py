"""Scheduling overhead of ``cpframe submit`` next to its compute time, on the demo-sized data.

The demo observing plan (``cpframe/data/plans/demo.yaml``: 6 biases, 5 darks, 5 flats per
band, ...) is simulated for the demo's detectors (mini ComCam 0, 4, 8), ingested in place
into a new SQLite repository, and a PTC and defects made from the simulator truth are
certified (so bias, dark and flat can run without the bootstrap chain).  Then the bias,
dark and g-flat templates are submitted in DMTN-222 order (bias and dark certified in
between), each the way a user runs it: ``submit_template`` opens its own LocalCluster
(2 workers x 1 thread) and closes it.  Per submission it records, side by side:

* plan: render + validate + selection + quanta + calibration lookups (``plan_s``),
* graph: building the Dask graph from the plan (timed separately on the same plan),
* cluster: starting the LocalCluster and connecting (``cluster_start_s``),
* compute: running the graph and registering outputs (``compute_s``),

and prints overhead = plan + graph + cluster, and the ratio overhead / compute.  With
``--shared-cluster`` one cluster is opened once and passed to every submission (as the
campaign runner does), which removes the cluster start from the overhead.

Usage::

    python benchmarks/bench_submit.py [--detectors 0,4,8] [--shared-cluster]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Dataset:
    """The attributes tests._run_helpers needs from a simulated data set."""

    def __init__(self, root, plan, truth, camera, detectors):
        self.root, self.plan, self.truth, self.camera, self.detectors = root, plan, truth, camera, detectors


def _warm_up() -> None:
    import cpframe.execution.graph_tasks  # noqa: F401
    import cpframe.science.tasks  # noqa: F401
    import cpframe.verify  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detectors", default="0,4,8", help="mini ComCam detectors (default: the demo's 0,4,8)")
    ap.add_argument("--shared-cluster", action="store_true", help="one LocalCluster for all submissions")
    args = ap.parse_args()

    from cpframe.camera.models import load_camera
    from cpframe.core.config import Settings
    from cpframe.execution.graph import build_graph
    from cpframe.camera.simulate import make_truth, read_plan, simulate
    from cpframe.execution.submit import plan_template, submit_template
    from tests._run_helpers import (
        INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_run, certify_truth_calibs, make_repo, ticket_chain_add,
        variables,
    )

    dets = tuple(int(d) for d in args.detectors.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    t0 = time.perf_counter()
    plan = read_plan("demo")
    camera = load_camera(plan.instrument, "mini")
    truth = make_truth(camera, 20241110, date=plan.specs[0].begin)
    simulate(plan.specs, work / "raw", plan.instrument, scale="mini", seed=20241110, detectors=dets, truth=truth)
    ds = _Dataset(work / "raw", plan, truth, camera, dets)
    repo = make_repo(work / "repo", ds)
    certify_truth_calibs(repo, truth, dets, work / "calibs")
    chain = f"{INSTRUMENT}/calib/{TICKET}"
    repo.registry.set_chain(chain, [TRUTH_COLLECTION], mode="redefine")
    env = variables(repo.root, work / "scratch", ds, CALIB_COLLECTIONS="")
    print(f"data: demo plan, {len(plan.specs)} exposures x {len(dets)} mini detectors, ready in "
          f"{time.perf_counter() - t0:.1f} s ({work})")

    settings = Settings(n_workers=2, threads_per_worker=1)
    from cpframe.execution.cluster import open_cluster

    with open_cluster(settings, kind="local") as oc:  # what a fresh worker pays before its first quantum
        t = time.perf_counter()
        oc.client.run(_warm_up)
        print(f"fresh workers: importing the science code takes {time.perf_counter() - t:.2f} s "
              "(inside 'compute' below for every new cluster; numba compilation comes on top)")
    shared = None
    if args.shared_cluster:
        t = time.perf_counter()
        shared = open_cluster(settings, kind="local")
        print(f"shared LocalCluster started once in {time.perf_counter() - t:.2f} s")
    rows = []
    try:
        for name, dtype in (("bias", "bias"), ("dark", "dark"), ("flat_g", "flat")):
            out = plan_template(f"bps_{name}", environ=env, repo=repo)
            t = time.perf_counter()
            build_graph(out.plan, str(work / "graph-probe"), repo.get_path)
            graph_s = time.perf_counter() - t
            res = submit_template(f"bps_{name}", environ=env, settings=settings,
                                  client=shared.client if shared else None)
            tm = res.timings
            plan_s = tm["render_s"] + tm["plan_s"]
            overhead = plan_s + graph_s + tm["cluster_start_s"]
            rows.append((name, len(res.plan.quanta), plan_s, graph_s, tm["cluster_start_s"], tm["compute_s"],
                         overhead, overhead / tm["compute_s"]))
            if dtype != "flat":
                cert = f"{chain}/{dtype}.20241110a"
                certify_run(repo, res.run, dtype, cert)
                ticket_chain_add(repo, cert)
    finally:
        if shared is not None:
            shared.close()
        repo.close()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| template | quanta | plan s | graph s | cluster start s | compute s | overhead s | overhead / compute |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.2f} |")
    tot = [sum(r[i] for r in rows) for i in (6, 5)]
    print(f"| all | {sum(r[1] for r in rows)} | | | | {tot[1]:.2f} | {tot[0]:.2f} | {tot[0] / tot[1]:.2f} |")


if __name__ == "__main__":
    main()
