"""A full LSSTCam night of calibration construction on 10, 100 and 1,000 nodes: a cost model.

Nobody here has 1,000 nodes, so this is a discrete-event simulation of what ``cpframe
campaign`` does with a night (189 detectors, DMTN-222-typical exposure counts) on a cluster of
``--nodes`` x ``--cores`` single-threaded Dask workers, fed with costs measured on this machine:

* **measured now** (each run): the Dask scheduler's cost per task (``--sched-tasks`` no-op
  tasks through a ``LocalCluster`` of 2 workers: wall / tasks, an upper bound since the
  workers share the cores); the registry's cost per registered quantum (``put_files`` of a
  small file into a SQLite repository, checksum given, one transaction per quantum as
  :func:`cpframe.execution.execute.execute_plan` does); ``sha256`` throughput on a full-size
  product-sized file (what registering costs when the driver hashes the file itself);
* **measured earlier** (constants below, with their source): CPU seconds of each task kind
  on one core for a full-size detector, and the driver's planning cost per quantum.

Model: the campaign runs its steps one after the other (a step is one submission: plan in the
driver, then its graph); inside a step tasks become ready when their inputs are done, a single
scheduler dispatches them one at a time (``sched_s`` each) to the first free worker slot, and
the single driver registers each registering quantum's outputs one at a time (``reg_s`` per
quantum, plus hashing every byte when the driver computes the checksums). Reported per cluster
size: wall time, the compute-only bound (CPU / slots, or the longest per-detector chain),
scheduler busy time, registry busy time and their shares of the wall.

Usage::

    python benchmarks/bench_scaleout.py                       # measure, then 10/100/1000 nodes
    python benchmarks/bench_scaleout.py --no-measure          # the constants only (fast)
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DETECTORS = 189
#: DMTN-222-typical counts per detector (spec dependencies.md §2: 15-20 biases/darks/flats per set,
#: a dense PTC about 100 pairs); one flat band.
COUNTS = {"bias": 20, "dark": 20, "flat": 20, "ptc_pairs": 100}
PRODUCT_BYTES = 195 * 10**6  # a full-size fits-masked product (4000 x 4072 x 12 bytes)

#: CPU seconds on one core, full-size detector.  Sources:
#: fused ISR->combine of N raws: a + b N fitted to benchmarks/bench_memory.py (this issue, N = 10, 20,
#: 50, 100: 21.8, 32.4, 63.8, 128.7 s CPU under load ~15, budget 64 MiB);
#: ISR of one raw writing its intermediate: 0.7 s CPU on an idle core + writing 195 MB (RESULTS.md,
#: "ISR and combine"); combine of N ISR files: 3.7 s for 20 (ibid.); verification of a product:
#: 2.2 s (RESULTS.md "Verification", bias stage); defects from the three bootstraps: 6.6 s (ibid.,
#: defects stage, two images, taken as the generation cost); PTC pair extraction: 17 s per pair
#: (RESULTS.md "New calibration types": linearizer generation minus ISR, per pair, under load);
#: CR finder / flat measurement per exposure: 1 s (assumed: not measured at full size).
COST = {
    "fused_a": 8.2, "fused_b": 1.19,
    "isr": 1.2, "cr": 1.0, "measure": 1.0, "combine_per_input": 3.7 / 20,
    "verify": 2.2, "defects": 6.6, "ptc_pair": 17.0, "ptc_solve": 1.0,
}
#: Driver: planning + graph building per quantum (RESULTS.md "Submit": bias, 21 quanta, plan 0.08 s +
#: graph 0.054 s).
PLAN_S_PER_QUANTUM = (0.08 + 0.054) / 21


@dataclass
class Task:
    key: str
    cpu: float
    deps: list[str] = field(default_factory=list)
    registers: int = 0  # product-sized files registered by this quantum
    small_outputs: int = 0  # small registered files (stats, defects, ptc)


def night_steps(hash_on_worker: bool, sha_bps: float) -> list[tuple[str, list[Task]]]:
    """The campaign's steps, each a list of tasks over all detectors (DMTN-222 order)."""
    c = COST
    hash_cpu = PRODUCT_BYTES / sha_bps if hash_on_worker else 0.0
    steps: list[tuple[str, list[Task]]] = []

    def fused(step: str, n: int) -> list[Task]:
        out = []
        for d in range(DETECTORS):
            # the combine and its N fusedAway placeholders (still Dask tasks), then verification
            away = [Task(f"{step}/{d}/isr{i}", 0.0) for i in range(n)]
            comb = Task(f"{step}/{d}/combine", c["fused_a"] + c["fused_b"] * n + hash_cpu,
                        [t.key for t in away], registers=1)
            ver = Task(f"{step}/{d}/verify", c["verify"], [comb.key], small_outputs=1)
            out += away + [comb, ver]
        return out

    def unfused(step: str, n: int, per_exp: str) -> list[Task]:
        out = []
        for d in range(DETECTORS):
            isr = [Task(f"{step}/{d}/isr{i}", c["isr"]) for i in range(n)]
            mid = [Task(f"{step}/{d}/{per_exp}{i}", c[per_exp], [isr[i].key]) for i in range(n)]
            comb = Task(f"{step}/{d}/combine", c["combine_per_input"] * n + hash_cpu, [t.key for t in mid],
                        registers=1)
            ver = Task(f"{step}/{d}/verify", c["verify"], [comb.key], small_outputs=1)
            out += isr + mid + [comb, ver]
        return out

    steps.append(("biasBootstrap", fused("bb", COUNTS["bias"])))
    steps.append(("darkBootstrap", fused("db", COUNTS["dark"])))
    steps.append(("flatBootstrap", fused("fb", COUNTS["flat"])))
    steps.append(("defects", [Task(f"defects/{d}", c["defects"], small_outputs=1) for d in range(DETECTORS)]))
    ptc = []
    for d in range(DETECTORS):
        isr = [Task(f"ptc/{d}/isr{i}", c["isr"]) for i in range(2 * COUNTS["ptc_pairs"])]
        ext = [Task(f"ptc/{d}/pair{i}", c["ptc_pair"], [isr[2 * i].key, isr[2 * i + 1].key])
               for i in range(COUNTS["ptc_pairs"])]
        ptc += isr + ext + [Task(f"ptc/{d}/solve", c["ptc_solve"], [t.key for t in ext], small_outputs=1)]
    steps.append(("ptc", ptc))
    steps.append(("bias", fused("bias", COUNTS["bias"])))
    steps.append(("dark", unfused("dark", COUNTS["dark"], "cr")))
    steps.append(("flat", unfused("flat", COUNTS["flat"], "measure")))
    return steps


def simulate_step(tasks: list[Task], slots: int, sched_s: float, reg_s: float, reg_hash_s: float) -> dict:
    """Event simulation of one submission's graph; returns wall and busy times (seconds)."""
    by_key = {t.key: t for t in tasks}
    waiting = {t.key: len(t.deps) for t in tasks}
    readers = defaultdict(list)
    for t in tasks:
        for d in t.deps:
            readers[d].append(t.key)
    # ready tasks in graph order (Dask's priorities follow the graph: detector by detector)
    order = {t.key: i for i, t in enumerate(tasks)}
    ready = [(order[k], k) for k, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    events: list[tuple[float, int, str]] = []  # (finish time, seq, key)
    free = slots
    sched_free_at = 0.0
    reg_free_at = 0.0
    sched_busy = reg_busy = 0.0
    now = 0.0
    seq = 0
    done = 0
    cpu = 0.0
    while done < len(tasks):
        while free > 0 and ready:
            _, k = heapq.heappop(ready)
            start = max(now, sched_free_at) + sched_s  # the scheduler dispatches one task at a time
            sched_free_at = start
            sched_busy += sched_s
            free -= 1
            seq += 1
            heapq.heappush(events, (start + by_key[k].cpu, seq, k))
            cpu += by_key[k].cpu
        t_fin, _, k = heapq.heappop(events)
        now = t_fin
        free += 1
        done += 1
        t = by_key[k]
        if t.registers or t.small_outputs:  # the driver registers, one quantum at a time
            cost = reg_s + t.registers * reg_hash_s
            reg_free_at = max(now, reg_free_at) + cost
            reg_busy += cost
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, (order[r], r))
    return {"wall": max(now, reg_free_at), "compute_end": now, "sched_busy": sched_busy, "reg_busy": reg_busy,
            "cpu": cpu, "tasks": len(tasks)}


def chain_bound(tasks: list[Task]) -> float:
    """Longest dependency chain (seconds of CPU) of a step."""
    by_key = {t.key: t for t in tasks}
    memo: dict[str, float] = {}

    def depth(k: str) -> float:
        if k not in memo:
            t = by_key[k]
            memo[k] = t.cpu + max((depth(d) for d in t.deps), default=0.0)
        return memo[k]

    return max(depth(t.key) for t in tasks)


def night(nodes: int, cores: int, sched_s: float, reg_s: float, sha_bps: float, hash_on_worker: bool) -> dict:
    slots = nodes * cores
    tot = defaultdict(float)
    rows = []
    for name, tasks in night_steps(hash_on_worker, sha_bps):
        plan = len(tasks) * PLAN_S_PER_QUANTUM
        r = simulate_step(tasks, slots, sched_s, reg_s, 0.0 if hash_on_worker else PRODUCT_BYTES / sha_bps)
        bound = max(r["cpu"] / slots, chain_bound(tasks))
        rows.append({"step": name, "tasks": r["tasks"], "plan_s": plan, "wall_s": plan + r["wall"], "bound_s": bound})
        for k, v in (("plan", plan), ("wall", plan + r["wall"]), ("bound", bound), ("sched", r["sched_busy"]),
                     ("reg", r["reg_busy"]), ("cpu", r["cpu"]), ("tasks", r["tasks"])):
            tot[k] += v
    return {"nodes": nodes, "slots": slots, "hash_on_worker": hash_on_worker, **tot, "steps": rows}


# -- live measurements -------------------------------------------------------------------------
def measure_scheduler(n_tasks: int) -> float:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as client:
        client.gather(client.map(lambda x: x, range(50), pure=False))  # warm
        t = time.perf_counter()
        client.gather(client.map(lambda x: x, range(n_tasks), pure=False))
        return (time.perf_counter() - t) / n_tasks


def measure_registry(n: int, work: Path) -> float:
    from cpframe.repository.repo import Repository
    from cpframe.core.model import CollectionType

    repo = Repository.create(work / "repo")
    repo.register_instrument("LSSTCam", "full")
    repo.registry.register_collection("bench/run", CollectionType.RUN)
    src = work / "src"
    src.mkdir()
    paths = []
    for i in range(n):
        p = src / f"q{i}.fits"
        p.write_bytes(b"x" * 2880)
        paths.append(p)
    t = time.perf_counter()
    for i, p in enumerate(paths):
        repo.put_files([(p, "bias", {"instrument": "LSSTCam", "detector": i})], "bench/run",
                       checksums={str(p): "sha256:" + "0" * 64})
    dt = (time.perf_counter() - t) / n
    repo.close()
    return dt


def measure_sha(work: Path) -> float:
    from cpframe.repository.datastore import sha256_file

    p = work / "product.bin"
    with open(p, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(PRODUCT_BYTES >> 20):
            f.write(block)
    sha256_file(p)  # page cache warm, as just written by a worker
    t = time.perf_counter()
    sha256_file(p)
    return p.stat().st_size / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10,100,1000")
    ap.add_argument("--cores", type=int, default=16, help="single-threaded workers per node")
    ap.add_argument("--no-measure", action="store_true", help="use the defaults below instead of measuring")
    ap.add_argument("--sched-s", type=float, default=1e-3, help="scheduler s/task without --measure (Dask docs: ~1 ms)")
    ap.add_argument("--reg-s", type=float, default=0.01, help="registry s/quantum without measuring")
    ap.add_argument("--sha-mbps", type=float, default=500.0, help="sha256 MB/s without measuring")
    ap.add_argument("--sched-tasks", type=int, default=2000)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    try:
        if args.no_measure:
            sched_s, reg_s, sha_bps = args.sched_s, args.reg_s, args.sha_mbps * 1e6
        else:
            sha_bps = measure_sha(work)
            reg_s = measure_registry(DETECTORS, work)
            sched_s = measure_scheduler(args.sched_tasks)
        print(f"scheduler {sched_s * 1e3:.2f} ms/task, registry {reg_s * 1e3:.1f} ms/quantum, "
              f"sha256 {sha_bps / 1e6:.0f} MB/s ({PRODUCT_BYTES / sha_bps:.2f} s per product), "
              f"plan {PLAN_S_PER_QUANTUM * 1e3:.1f} ms/quantum; load average {os.getloadavg()[0]:.1f}", flush=True)
        results = []
        print("\n| nodes (x%d workers) | checksums by | wall | compute-only bound | driver planning | scheduler busy "
              "| registry busy | tasks | CPU |" % args.cores)
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for nodes in [int(x) for x in args.nodes.split(",")]:
            for on_worker in (False, True):
                r = night(nodes, args.cores, sched_s, reg_s, sha_bps, on_worker)
                results.append(r)
                w = r["wall"]
                print(f"| {nodes} | {'worker' if on_worker else 'driver'} | {w / 60:.1f} min | {r['bound'] / 60:.1f} min "
                      f"| {r['plan'] / 60:.1f} min ({r['plan'] / w:.0%}) | {r['sched'] / 60:.1f} min ({r['sched'] / w:.0%}) "
                      f"| {r['reg'] / 60:.1f} min ({r['reg'] / w:.0%}) | {int(r['tasks'])} | {r['cpu'] / 3600:.0f} h |",
                      flush=True)
        print("\nper step, 1000 nodes, checksums by the worker:")
        for s in results[-1]["steps"]:
            print(f"  {s['step']:14s} tasks {s['tasks']:6d}  plan {s['plan_s']:6.1f} s  wall {s['wall_s']:7.1f} s  "
                  f"bound {s['bound_s']:7.1f} s")
        print(json.dumps({"sched_s": sched_s, "reg_s": reg_s, "sha_bps": sha_bps,
                          "results": [{k: v for k, v in r.items() if k != "steps"} for r in results]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
