"""Campaign benchmarks, measured side by side in one run.

1. One shared LocalCluster for every submission of a campaign versus a new LocalCluster
   per submission (what ``cpframe submit`` does when called step by step): the same N
   bias-bootstrap submissions, each way, on the same simulated repository.
2. The cost of ``--resume`` on a finished campaign (every step checked in the registry,
   nothing run), per step, against the cost of running those steps.

Usage::

    python benchmarks/bench_campaign.py [--n 4] [--detectors 4] [--workers 2] [--dir DIR]

Prints the times and the ratios; the figures go into benchmarks/RESULTS.md
("Campaign and demo").
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def build_repo(root: Path, detectors: list[int], workers: int):
    """Simulate the demo plan's biases for ``detectors`` and ingest them into a new repository."""
    from cpframe.camera.curated import write_curated_calibrations
    from cpframe.campaign.demo import demo_campaign, plan_bands
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository
    from cpframe.camera.simulate import read_plan, simulate

    plan = read_plan("demo")
    biases = [s for s in plan.specs if s.observation_type == "bias" and s.day_obs == 20241110]
    files = simulate(
        biases, root / "raw", "LSSTComCam", scale="mini", seed=1, detectors=detectors, workers=workers
    )
    repo = Repository.create(root / "repo")
    repo.register_instrument("LSSTComCam", scale="mini")
    ingest_raws(repo, files, run="LSSTComCam/raw/all", transfer="symlink")
    write_curated_calibrations(repo, "LSSTComCam", "LSSTComCam/calib/DEMO-1/curated", scale="mini")
    repo.close()
    return demo_campaign(root / "repo", plan_bands(plan), dict(plan.selections))


def bench_clusters(camp, n: int, settings) -> tuple[float, float]:
    """N bias-bootstrap submissions: shared cluster vs one cluster each. Returns (shared_s, each_s)."""
    from cpframe.campaign.runner import _submit_variables
    from cpframe.execution.cluster import open_cluster
    from cpframe.execution.submit import submit_template

    step = camp.step("biasBootstrap")
    base = _submit_variables(camp, step)

    def run(i: int, client) -> None:
        v = dict(base, BOOTSTRAP_RUN_NUMBER=str(i))
        submit_template(step.template, v, client=client, settings=settings, environ=v, quiet=True)

    t0 = time.perf_counter()
    with open_cluster(settings) as oc:
        for i in range(1, n + 1):
            run(i, oc.client)
    shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n + 1, 2 * n + 1):
        run(i, None)
    each = time.perf_counter() - t0
    return shared, each


def bench_resume(root: Path, settings) -> tuple[int, float, float]:
    """A 3-step campaign (bias bootstrap, ...) run, then resumed. Returns (steps, run_s, resume_s)."""
    from cpframe.campaign.runner import parse_campaign, run_campaign
    from cpframe.execution.cluster import open_cluster
    from cpframe.execution.templates import default_templates_dir

    path = default_templates_dir() / "campaign_demo.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["name"] = "bench-resume"
    doc["steps"] = [s for s in doc["steps"] if s["name"] == "biasBootstrap"]
    doc["steps"] += [
        {
            "name": f"biasBootstrap{i}",
            "kind": "submit",
            "template": "bps_biasBootstrap.yaml",
            "vars": {"BOOTSTRAP_RUN_NUMBER": str(100 + i)},
        }
        for i in range(2)
    ]
    camp = parse_campaign(yaml.safe_dump(doc), path, {"REPO": str(root / "repo"), "RERUN": "20241112a"})
    with open_cluster(settings) as oc:
        t0 = time.perf_counter()
        run_campaign(camp, client=oc.client, settings=settings)
        run_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = run_campaign(camp, resume=True, client=oc.client, settings=settings)
        resume_s = time.perf_counter() - t0
    assert {o.status for o in res.outcomes} == {"skipped"}
    return len(camp.steps), run_s, resume_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="submissions per way (default 4)")
    ap.add_argument("--detectors", default="4", help="detector ids, comma-separated (default 4)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    args = ap.parse_args()
    from cpframe.core.config import load_settings

    settings = load_settings({"n_workers": args.workers, "cluster_kind": "local"})
    root = Path(args.dir or tempfile.mkdtemp(prefix="cpframe-bench-campaign-"))
    try:
        camp = build_repo(root, [int(d) for d in args.detectors.split(",")], args.workers)
        shared, each = bench_clusters(camp, args.n, settings)
        print(
            f"{args.n} bias-bootstrap submissions, {args.workers} local workers, detectors {args.detectors}:"
        )
        print(f"  one shared LocalCluster : {shared:7.1f} s  ({shared / args.n:5.1f} s per submission)")
        print(f"  a LocalCluster each     : {each:7.1f} s  ({each / args.n:5.1f} s per submission)")
        print(f"  ratio each / shared     : {each / shared:7.2f}")
        steps, run_s, resume_s = bench_resume(root, settings)
        print(
            f"campaign of {steps} submit steps: run {run_s:.1f} s, --resume of the finished campaign "
            f"{resume_s:.2f} s ({resume_s / steps * 1000:.0f} ms per step checked); ratio run / resume "
            f"{run_s / resume_s:.0f}"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
