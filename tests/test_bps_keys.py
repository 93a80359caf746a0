"""The BPS keys that change what runs do change it (issue 12).

On a real Dask cluster of unequal workers and a real SQLite repository: a task whose
``requestMemory`` exceeds the small worker runs only on the big one; a request no worker can
meet is refused before anything is written; a ``--config`` override changes the product; a
connection rename changes the dataset type written; the ``environment`` section is applied on
the workers (deferred variables expanded there); retry-with-more-memory grows the request.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cpframe.core.errors import ExecutionError
from cpframe.execution.submission import Resources
from cpframe.execution.submit import submit_template
from cpframe.execution.templates import default_templates_dir

from tests._run_helpers import (
    INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables,
)

GiB = 2**30


@pytest.fixture(scope="module")
def uneven_cluster():
    """A scheduler with a small worker (1 GiB, 1 core advertised) and a big one (8 GiB, 2 cores)."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    def worker(mem, cpu):
        return {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0,
                                          "resources": {"MEMORY": mem, "CPU": cpu}}}

    cluster = SpecCluster(workers={"small": worker(1 * GiB, 1), "big": worker(8 * GiB, 2)},
                          scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}})
    client = Client(cluster)
    client.wait_for_workers(2, timeout=120)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mini_dataset):
    root = tmp_path_factory.mktemp("bpskeys")
    r = make_repo(root / "repo", mini_dataset)
    certify_truth_calibs(r, mini_dataset.truth, mini_dataset.detectors, root / "calibs")
    r.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
    yield r
    r.close()


def _template(tmp_path, extra: str, name: str = "bps_bias.yaml"):
    t = tmp_path / name
    shutil.copy(default_templates_dir() / name, t)
    with open(t, "a") as fh:
        fh.write("\n" + extra)
    return t


def _env(repo, tmp_path, mini_dataset, rerun):
    return variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="", RERUN=rerun)


def _bias_medians(repo, run, mini_dataset):
    from cpframe.science.imageio import read_masked

    out = []
    for ref in repo.registry.query_datasets(None, collections=[run]):
        d = int(ref.data_id["detector"])
        img = read_masked(repo.get_path(ref)).image
        truth = mini_dataset.truth
        for amp in mini_dataset.camera.detector(d).amps:
            expected = truth.bias_pattern(d)[amp.bbox] * truth.amp(d, amp.name).gain
            out.append(float(np.nanmedian(img[amp.bbox] - expected)))
    return out


def test_request_memory_places_a_task_on_a_big_enough_worker(tmp_path, repo, mini_dataset, uneven_cluster):
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestMemory: 4096\n    requestCpus: 2\n")
    res = submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241110a"), client=uneven_cluster)
    combine = {k: w for k, w in res.execution.worker_of.items() if k.startswith("cpBiasCombine")}
    assert len(combine) == len(mini_dataset.detectors)
    assert set(combine.values()) == {"big"}, combine  # never on the 1 GiB / 1 core worker
    assert res.counts == {"bias": len(mini_dataset.detectors)}


def test_request_no_worker_can_meet_is_refused_before_anything(tmp_path, repo, mini_dataset, uneven_cluster):
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestMemory: 16384\n")
    before = {c.name for c in repo.registry.query_collections("*")}
    with pytest.raises(ExecutionError, match=r"task cpBiasCombine requests 16384 MiB, but no worker can run it: "
                                             r"the largest has 8192 MiB and 2 core\(s\)"):
        submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241110b"), client=uneven_cluster)
    assert {c.name for c in repo.registry.query_collections("*")} == before


def test_config_override_and_rename_change_the_product(tmp_path, repo, mini_dataset, local_dask):
    env = _env(repo, tmp_path, mini_dataset, "20241110c")
    base = submit_template(default_templates_dir() / "bps_bias.yaml", environ=env, client=local_dask.client)
    assert max(abs(m) for m in _bias_medians(repo, base.run, mini_dataset)) < 2.0
    t = _template(tmp_path, "extraQgraphOptions: >-\n  --config cpBiasIsr:doOverscan=False\n"
                            "  --config cpBiasCombine:connections.output=biasNoOverscan\n")
    res = submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241110d"), client=local_dask.client)
    assert res.counts == {"biasNoOverscan": len(mini_dataset.detectors)}
    # without overscan subtraction the product keeps electronic offsets: far from the truth
    assert max(abs(m) for m in _bias_medians(repo, res.run, mini_dataset)) > 100.0
    assert res.plan.pipeline.task("cpBiasIsr").config["doOverscan"] is False


def _getenv(name):
    return os.environ.get(name)


def _setenv(name, value):
    os.environ[name] = value


def test_environment_is_applied_on_the_workers_with_deferred_values(local_dask):
    from cpframe.execution.resources import EnvironmentPlugin

    client = local_dask.client
    client.run(_setenv, "CPFRAME_WORKER_HOME", "/on/worker")
    plugin = EnvironmentPlugin({"CPFRAME_TEST_PATH": "<ENV:CPFRAME_WORKER_HOME>/cfg:${CPFRAME_WORKER_HOME}"})
    client.register_plugin(plugin, name=plugin.name)
    try:
        seen = client.run(_getenv, "CPFRAME_TEST_PATH")
        assert set(seen.values()) == {"/on/worker/cfg:/on/worker"}  # expanded where the task runs
    finally:
        client.unregister_worker_plugin(plugin.name)
    assert set(client.run(_getenv, "CPFRAME_TEST_PATH").values()) == {None}  # restored


def test_retry_with_more_memory_follows_bps():
    r = Resources(memory_mib=2048, memory_multiplier=2.0, memory_max_mib=6144, retries=3)
    assert [r.memory_for_attempt(n) for n in range(4)] == [2048, 4096, 6144, 6144]


def test_memory_retry_reruns_the_failed_quantum_with_its_inputs(tmp_path, repo, mini_dataset):
    """Which quanta run again after an out-of-memory failure, and with how much memory."""
    from cpframe.execution.execute import _memory_retry
    from cpframe.execution.resources import quantum_resources
    from cpframe.execution.submit import plan_template

    env = _env(repo, tmp_path, mini_dataset, "20241110e")
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestMemory: 1024\n    memoryMultiplier: 3\n"
                            "    requestMemoryMax: 2500\n    numberOfRetries: 2\n")
    out = plan_template(t, environ=env, repo=repo)
    plan, sub = out.plan, out.submission
    requests = {"cpBiasCombine": sub.resources_for("cpBiasCombine")}
    (failed, *_) = [k for k in plan.quanta if k.startswith("cpBiasCombine")]
    status = {k: "done" for k in plan.quanta if k != failed}
    attempt: dict = {}
    todo = _memory_retry(plan, requests, {failed: "MemoryError"}, {failed: "MemoryError"}, attempt, status)
    assert failed in todo.quanta and set(plan.quanta[failed].upstream) <= set(todo.quanta)
    assert not any(k.startswith("cpBiasCombine") and k != failed for k in todo.quanta)
    assert quantum_resources(todo, requests, attempt)[failed]["MEMORY"] == 2500 * 2**20  # min(1024*3, 2500)
    # at the cap, or another kind of error: no further memory retry
    assert _memory_retry(plan, requests, {failed: "x"}, {failed: "MemoryError"}, attempt, status) is None
    assert _memory_retry(plan, requests, {failed: "x"}, {failed: "ValueError"}, {}, status) is None
