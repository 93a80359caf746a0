"""cpframe.execution.execute on a real LocalCluster: retries, a lost worker, registration once per output."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cpframe.execution.graph import dataset_type_defs
from cpframe.core.model import CollectionType
from cpframe.execution.submit import plan_template

from tests._run_helpers import INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables

P = f"{INSTRUMENT}/calib/{TICKET}"


@pytest.fixture(scope="module")
def bias_repo(tmp_path_factory, mini_dataset):
    """Bias raws copied into a fresh repository (so one can be damaged) + truth PTC and defects."""
    root = tmp_path_factory.mktemp("execute")
    ids = sorted(mini_dataset.plan.intended["SELECTION_BIAS"])
    files = [mini_dataset.path(e, d) for e in ids for d in mini_dataset.detectors]
    r = make_repo(root / "repo", mini_dataset, files=files, transfer="copy")
    certify_truth_calibs(r, mini_dataset.truth, mini_dataset.detectors, root / "calibs")
    r.registry.set_chain(P, [TRUTH_COLLECTION], mode="redefine")
    yield r, variables(r.root, root / "scratch", mini_dataset, CALIB_COLLECTIONS="")
    r.close()


def _planned(repo, env, run_suffix, fuse=False):
    out = plan_template("bps_bias", environ=dict(env, RERUN=run_suffix), repo=repo)
    if not fuse:
        # these tests inject faults into single ISR quanta: run them unfused (fuseIsr: false)
        for q in out.plan.quanta.values():
            if q.kind == "combine":
                q.settings["combine"] = replace(q.settings["combine"], fuse_isr=False)
    for dt in dataset_type_defs(out.plan):
        repo.registry.register_dataset_type(dt)
    repo.registry.register_collection(out.plan.run, CollectionType.RUN)
    return out.plan


def test_failed_quantum_is_retried_then_reported(bias_repo, local_dask):
    from cpframe.execution.execute import execute_plan

    repo, env = bias_repo
    plan = _planned(repo, env, "20241110r")
    bad = next(q for q in plan.quanta.values() if q.kind == "isr" and q.data_id["detector"] == 4)
    path = repo.get_path(bad.raw)
    good = path.read_bytes()
    path.write_bytes(b"not a FITS file")
    try:
        res = execute_plan(plan, repo, local_dask.client, retries=2)
    finally:
        path.write_bytes(good)
    client = local_dask.client
    attempts = [s for s in client.story(bad.key) if s[1:4] == (bad.key, "ready", "executing")]
    assert len(attempts) == 3  # first try + numberOfRetries
    assert list(res.failures) == [bad.key]
    assert [k for k in res.not_run if plan.quanta[k].kind == "combine"] and not res.ok
    assert [(dt, did["detector"]) for dt, did in res.missing] == [("bias", 4)]
    assert [(r.dataset_type, r.data_id["detector"]) for r in res.registered] == [("bias", 0)]
    assert "failed after their retries" in res.failure_report() and bad.key in res.failure_report()


def test_failed_fused_combine_is_reported_with_its_raw(bias_repo, local_dask):
    """A bad raw fails its ISR quantum (the fused prepass) and so the fused combine of its detector; the other
    detector's bias is registered."""
    from cpframe.execution.execute import execute_plan
    from cpframe.execution.graph import fusion

    repo, env = bias_repo
    plan = _planned(repo, env, "20241110f", fuse=True)
    assert fusion(plan)
    bad = next(q for q in plan.quanta.values() if q.kind == "isr" and q.data_id["detector"] == 4)
    comb = fusion(plan)[bad.key]
    path = repo.get_path(bad.raw)
    good = path.read_bytes()
    path.write_bytes(b"not a FITS file")
    try:
        res = execute_plan(plan, repo, local_dask.client, retries=0)
    finally:
        path.write_bytes(good)
    # the raw's own ISR quantum (its prepass) fails naming the raw; the fused combine of that detector does not run
    assert list(res.failures) == [bad.key] and path.name in res.failures[bad.key]
    report = res.failure_report()
    assert f"{bad.key}: cpframe.science.imageio.FileFormatError" in report and path.name in report
    assert "1 quantum/quanta did not run because an input failed" in report and comb not in res.failures
    assert [(dt, did["detector"]) for dt, did in res.missing] == [("bias", 4)]
    assert [(r.dataset_type, r.data_id["detector"]) for r in res.registered] == [("bias", 0)]


def test_lost_worker_neither_loses_nor_duplicates_outputs(bias_repo, local_dask):
    from cpframe.execution.execute import execute_plan

    repo, env = bias_repo
    plan = _planned(repo, env, "20241110w")
    client = local_dask.client
    killed: list[int] = []
    isr_prefix = next(k for k, q in plan.quanta.items() if q.kind == "isr").rsplit("-", 2)[0]

    def kill_first_holder():
        """SIGKILL the worker process holding the first finished ISR result (a process our cluster started)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            held = [ws for k, ws in client.who_has().items() if str(k).startswith(isr_prefix) and ws]
            if held:
                pid = client.run(os.getpid, workers=[held[0][0]])[held[0][0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    t = threading.Thread(target=kill_first_holder, daemon=True)
    t.start()
    res = execute_plan(plan, repo, client, retries=1)
    t.join(timeout=5)
    assert killed, "no worker was killed: the plan finished before any ISR result was held"
    assert res.ok, res.failure_report()
    refs = repo.registry.query_datasets("bias", collections=[plan.run])
    assert sorted(int(r.data_id["detector"]) for r in refs) == [0, 4]
    assert len(res.registered) == 2 and {r.id for r in res.registered} == {r.id for r in refs}
    assert repo.verify_checksums(refs) == []
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker for the next tests


def test_dask_errors_after_an_interrupt_are_muted_until_the_cluster_is_closed():
    """After SIGINT/SIGTERM the scheduler may log errors about the quanta cancelled under it (seen in CI: a
    traceback on stderr of an interrupted `cpframe submit`); they are muted, then the levels are put back."""
    import logging

    from cpframe.execution.execute import mute_dask_logs, restore_dask_logs

    got: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append(f"{record.name}:{record.getMessage()}")

    core, sched = logging.getLogger("distributed.core"), logging.getLogger("distributed.scheduler")
    before = {n: logging.getLogger(n).level for n in ("distributed", "asyncio", "distributed.scheduler")}
    keep = Keep()
    sched_level = sched.level
    sched.setLevel(logging.INFO)  # a child with its own level (Dask's logging config sets some)
    for lg in (core, sched):
        lg.addHandler(keep)
    try:
        mute_dask_logs()
        core.error("Exception while handling op register-client")
        sched.error("cancelled under it")
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        assert got == []
        restore_dask_logs()
        core.error("after")
        sched.error("after")
        assert got == ["distributed.core:after", "distributed.scheduler:after"]
        assert logging.getLogger("distributed.scheduler").level == logging.INFO
    finally:
        for lg in (core, sched):
            lg.removeHandler(keep)
        sched.setLevel(sched_level)
    assert {n: logging.getLogger(n).level for n in ("distributed", "asyncio")} == {
        n: before[n] for n in ("distributed", "asyncio")}


def _translators_loaded() -> bool:
    import sys

    return "astro_metadata_translator" in sys.modules or "cpframe.camera.translators" in sys.modules


def test_planned_raws_are_read_without_the_header_translators(bias_repo):
    """The raws' translated cards travel with the quanta from the registry (issue 14): the workers of a fresh local
    cluster run the ISR of real-format raws, fused and unfused, without ever importing a header translator (their
    fork server does not import them either: 0.2-0.3 s of every cluster's start)."""
    from cpframe.core.config import Settings
    from cpframe.execution.cluster import open_cluster
    from cpframe.execution.execute import execute_plan

    repo, env = bias_repo
    settings = Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30)
    with open_cluster(settings, kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        assert not any(oc.client.run(_translators_loaded).values())
        for fuse in (False, True):
            plan = _planned(repo, env, f"20241110t{int(fuse)}", fuse=fuse)
            assert any(q.kind == "isr" for q in plan.quanta.values())
            res = execute_plan(plan, repo, oc.client)
            assert not res.failures and res.registered, res.failures
        loaded = oc.client.run(_translators_loaded)
    assert len(loaded) == 2 and not any(loaded.values()), loaded


#: Modules a submitting command never needs: the science stack (numba, astropy, scipy) and the science and
#: verification modules that run on the workers.
_SCIENCE = ("numba", "astropy", "scipy", "cpframe.science.combine", "cpframe.science.fused", "cpframe.science.isr",
            "cpframe.science.imageio", "cpframe.verify")


def test_a_local_submission_leaves_the_science_stack_to_its_workers(bias_repo, tmp_path):
    """``cpframe submit`` plans from the kinds' configurations (cpframe.science.configs) and gathers every quantum's
    result without unpickling its value (cpframe.execution.graph_tasks.QuantumResult): the command process of a
    real local submission, fused and unfused, never imports numba, astropy, scipy or the science modules (issue 14:
    ~0.5 s of CPU while planning, and as much again when the first prepass result came back, taken from the busy
    workers); the workers did run them."""
    import json
    import subprocess
    import sys

    repo, env = bias_repo
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CPFRAME_WORKER", "CPFRAME_CLUSTER"))}
    unfused = tmp_path / "pipelines"
    unfused.mkdir()
    text = (Path(__file__).resolve().parents[1] / "pipelines" / "cpBias.yaml").read_text()
    assert "      combine: MEANCLIP\n" in text
    (unfused / "cpBias.yaml").write_text(text.replace("      combine: MEANCLIP\n", "      combine: MEANCLIP\n      fuseIsr: false\n"))
    for fuse, pipes in (("fused", {}), ("unfused", {"CPFRAME_PIPELINES": str(unfused)})):
        modules = tmp_path / f"modules-{fuse}.json"
        code = (f"import atexit, json, runpy, sys; atexit.register(lambda: open({str(modules)!r}, 'w').write("
                "json.dumps(sorted(sys.modules)))); sys.argv = ['cpframe', 'submit', 'bps_bias', '--quiet']; "
                "runpy.run_module('cpframe', run_name='__main__')")
        out = subprocess.run([sys.executable, "-c", code], env={**run_env, **env, **pipes, "RERUN": f"20241110s{fuse}"},
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        loaded = set(json.loads(modules.read_text()))
        assert "cpframe.execution.execute" in loaded and "cpframe.science.configs.isr" in loaded
        assert not loaded & set(_SCIENCE), (fuse, sorted(loaded & set(_SCIENCE)))
        assert "registered: 2 bias" in out.stdout, out.stdout[-2000:]  # the workers did the science


def test_a_quantum_result_unpickles_its_value_where_it_is_read():
    """The driver's copy of a result: key, outputs and checksums, the value still pickled (its class's module not
    imported) until read; then the value as it was (numpy arrays and all), read once."""
    import pickle
    import subprocess
    import sys

    import numpy as np

    from cpframe.execution.graph_tasks import GroupResult, QuantumResult
    from cpframe.science.isr import AmpStats

    value = {"stats": AmpStats(gain=1.5, read_noise=4.25, overscan_noise_adu=3.0, overscan_median_adu=12.0, mean=0.5,
                               median=0.25, stdev=2.0),
             "vector": np.arange(7, dtype=np.float32)}
    res = QuantumResult(key="isr_1", value=value, outputs=[("/p", "bias", {"detector": 1})], checksums={"/p": "ab"})
    blob = pickle.dumps(GroupResult([res]), protocol=5)
    code = ("import pickle, sys; g = pickle.loads(sys.stdin.buffer.read()); r = g.results[0]; "
            "before = 'cpframe.science.isr' in sys.modules; print(r.key, r.outputs[0][1], r.checksums['/p'], before, "
            "'cpframe.science.isr' in sys.modules); v = r.value; print(type(v['stats']).__name__, v['stats'].gain, "
            "v['vector'].tolist(), 'cpframe.science.isr' in sys.modules, r.value is v)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    first, second = out.stdout.decode().splitlines()
    assert first == "isr_1 bias ab False False"
    assert second == "AmpStats 1.5 [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0] True True"
    # passed on unread (a worker hands its upstream results to a quantum's child process): still the value
    hop = pickle.loads(pickle.dumps(pickle.loads(blob), protocol=5)).results[0]
    assert hop.value["stats"] == value["stats"] and np.array_equal(hop.value["vector"], value["vector"])
    back = pickle.loads(blob).results[0]  # and in a process that has the classes: equal to what was sent
    assert back.value["stats"] == value["stats"] and np.array_equal(back.value["vector"], value["vector"])
    assert (back.key, back.outputs, back.checksums) == (res.key, res.outputs, res.checksums)


def test_a_submission_records_its_timeline_from_every_process(bias_repo, tmp_path):
    """``CPFRAME_TIMELINE``: the command, the fork server and each worker of a real local submission append their
    moments (cpframe.core.timeline), in the order the run takes: the command, the fork server launched before the
    rendering, its imports, the workers, the plan, the execution, every quantum's start before its end, the exit."""
    import subprocess
    import sys

    repo, env = bias_repo
    path = tmp_path / "timeline.txt"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CPFRAME_WORKER", "CPFRAME_CLUSTER"))}
    run_env.update(env, RERUN="20241110tl", CPFRAME_TIMELINE=str(path))
    out = subprocess.run([sys.executable, "-m", "cpframe", "submit", "bps_bias", "--quiet"], env=run_env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [ln.split(" ", 3) for ln in path.read_text().splitlines()]
    rows.sort(key=lambda r: float(r[1]))
    labels = [r[3] for r in rows]
    command = {r[0] for r in rows if r[3] == "command"}
    server = {r[0] for r in rows if r[3].startswith("fork server:")}
    workers = {r[0] for r in rows if r[3] == "worker start"}
    assert len(command) == 1 and len(server) == 1 and len(workers) == 2 and not (command | server) & workers
    order = ["command", "fork server launched", "rendered", "planned", "workers ready", "execute", "exit"]
    (cmd,) = command
    assert [r[3] for r in rows if r[0] == cmd] == order  # the command's own moments, once each, in order
    assert labels.index("fork server: start") < labels.index("fork server: imports done") < labels.index(
        "fork server: numba ready") < min(i for i, lab in enumerate(labels) if lab == "worker start")
    assert labels.index("fork server launched") < labels.index("fork server: start")
    quanta = [(r[0], r[3]) for r in rows if r[3].startswith("quantum ")]
    assert quanta and {pid for pid, _ in quanta} <= workers
    open_by_pid: dict[str, str] = {}
    for pid, lab in quanta:  # a worker's quanta one after the other, each start before its end
        kind, edge = lab.split()[1:]
        if edge == "start":
            assert pid not in open_by_pid
            open_by_pid[pid] = kind
        else:
            assert open_by_pid.pop(pid) == kind
    assert not open_by_pid
    assert labels.index("execute") < labels.index(quanta[0][1]) and labels.index("exit") > labels.index(quanta[-1][1])
