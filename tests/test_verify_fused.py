"""The verification ISR fused into its verifyStats quantum (docs/algorithms.md "Fused ISR -> combine", verification).

A verifyStats quantum that alone reads unregistered ISR quanta of one raw (one; two for verifyDefects, with and
without the defects) runs that raw's ISR in memory and measures it; the ISR quanta do nothing and no ISR file is
written.  Real submissions of the verify templates on the
mini ComCam data set (truth PTC and defects, a zero bias and dark, a unit flat under test), fused and with
``fuseIsr: false``: the registered statistics and previews must be the same.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cpframe.execution.execute import SCRATCH_DIR
from cpframe.execution.graph import build_graph, verify_fusion
from cpframe.execution.graph_fusion import verify_isr_keys
from cpframe.execution.submit import plan_template, submit_template

from tests._run_helpers import (
    INSTRUMENT, TICKET, TRUTH_COLLECTION, make_repo, put_certified, truth_isr_calibs, variables,
)

P = f"{INSTRUMENT}/calib/{TICKET}"


def write_unit_flats(work: Path, camera, detectors, physical_filter: str) -> list:
    """A flat of ones (variance 0) per detector, for ``put_certified``."""
    from cpframe.science.imageio import write_masked

    out = []
    for d in detectors:
        det = camera.detector(d)
        head = {"INSTRUME": camera.name, "DETECTOR": d, "DETNAME": det.name, "CAMSCALE": camera.scale,
                "FILTER": physical_filter}
        one, zero = np.ones(det.shape, np.float32), np.zeros(det.shape, np.float32)
        path = write_masked(work / f"flat{d}_{physical_filter}.fits", one, np.zeros(det.shape, np.int32), zero, head)
        out.append((path, {"instrument": camera.name, "detector": d, "physical_filter": physical_filter}))
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mini_dataset):
    root = tmp_path_factory.mktemp("verify_fused")
    r = make_repo(root / "repo", mini_dataset)
    work = root / "calibs"
    work.mkdir()
    items = truth_isr_calibs(work, mini_dataset.truth, mini_dataset.camera, mini_dataset.detectors,
                             ("ptc", "defects", "bias", "dark"))
    items["flat"] = [it for f in ("g_01", "r_03")  # verifyFlat g; verifyDefects' flats are r
                     for it in write_unit_flats(work, mini_dataset.camera, mini_dataset.detectors, f)]
    for dt, its in items.items():
        put_certified(r, dt, its, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION)
    r.registry.set_chain(P, [TRUTH_COLLECTION], mode="redefine")
    yield r
    r.close()


def _env(repo, tmp_path, dataset, rerun: str, **kw):
    return variables(repo.root, tmp_path / "scratch", dataset, CALIB_COLLECTIONS="", VERIFY_RERUN=rerun, **kw)


def unfused_pipelines(tmp_path: Path, name: str) -> Path:
    """A copy of cpframe's pipelines whose verifyStats task in ``name`` sets ``fuseIsr: false``."""
    from cpframe.execution.templates import default_pipelines_dir

    pipes = tmp_path / "pipelines"
    if not pipes.exists():
        shutil.copytree(default_pipelines_dir(), pipes)
    text = (pipes / name).read_text()
    line = "      settings: {}               # cpframe.verify VerifyConfig overrides by field name\n"
    assert text.count(line) == 1
    (pipes / name).write_text(text.replace(line, line + "      fuseIsr: false\n"))
    return pipes


def _scratch_watch(repo, isr_tasks: tuple[str, ...], seen: set):
    """An ``on_progress`` callback that records every file under the ISR tasks' scratch folders as quanta finish."""
    root = Path(repo.datastore_root) / SCRATCH_DIR

    def watch(_event):
        seen.update(p.name for t in isr_tasks for p in root.glob(f"*/{t}/*")
                    if not p.name.startswith("."))  # not temporaries
    return watch


def _stats_and_previews(repo, run: str, stats_type: str, preview_type: str | None):
    """(data ID -> statistics as canonical JSON text, data ID -> preview planes and header) of a RUN."""
    from cpframe.science.imageio import read_masked

    reg = repo.registry
    stats = {tuple(sorted(r.data_id.items())): json.dumps(json.loads(Path(repo.get_path(r)).read_text()),
                                                           sort_keys=True)
             for r in reg.query_datasets(stats_type, collections=[run])}
    previews = {tuple(sorted(r.data_id.items())): read_masked(repo.get_path(r))
                for r in (reg.query_datasets(preview_type, collections=[run]) if preview_type else [])}
    return stats, previews


@pytest.mark.parametrize("template, pipeline, isr_tasks, stats_type, preview_type", [
    ("bps_verify_bias", "verifyBias.yaml", ("verifyBiasIsr",), "verifyBiasStats", "verifyBiasPreview"),
    ("bps_verify_dark", "verifyDark.yaml", ("verifyDarkIsr",), "verifyDarkStats", "verifyDarkPreview"),
    ("bps_verify_flat_g", "verifyFlat.yaml", ("verifyFlatIsr",), "verifyFlatStats", "verifyFlatPreview"),
    # two ISR images of each raw, with and without the defects, both made in memory (issue 14)
    ("bps_verify_defects", "verifyDefects.yaml", ("verifyDefectsIsr", "verifyUncorrectedDefectsIsr"),
     "verifyDefectsStats", "verifyDefectsPreview"),
])
def test_fused_verification_writes_no_isr_file_and_equals_unfused(repo, mini_dataset, local_dask, tmp_path, monkeypatch,
                                                                   template, pipeline, isr_tasks, stats_type,
                                                                   preview_type):
    """Fused: every ISR quantum is fused into the verifyStats quantum reading it and writes nothing; with
    ``fuseIsr: false`` the ISR files are written; the registered statistics (JSON) and previews are equal."""
    monkeypatch.chdir(tmp_path)  # bps_verify_defects sets no submitPath: ./submit/{outputRun}, as cp_verify's
    env = _env(repo, tmp_path, mini_dataset, "20241126f")
    plan = plan_template(template, environ=env, repo=repo).plan
    n_isr = sum(1 for q in plan.quanta.values() if q.kind == "isr")
    n_stats = sum(1 for q in plan.quanta.values() if q.kind == "verifyStats")
    fused = verify_fusion(plan)
    assert n_isr and len(fused) == n_isr == n_stats * len(isr_tasks)
    assert Counter(plan.quanta[v].kind for v in fused.values()) == {"verifyStats": n_isr}
    # each verifyStats quantum runs one ISR quantum of each ISR task, in its input order
    assert {tuple(plan.quanta[k].task for k in ks) for ks in verify_isr_keys(plan).values()} == {isr_tasks}
    seen_fused: set = set()
    res_f = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"],
                            on_progress=_scratch_watch(repo, isr_tasks, seen_fused))
    assert seen_fused == set()  # the placeholders wrote no ISR file

    plain_env = _env(repo, tmp_path, mini_dataset, "20241126u", CPFRAME_PIPELINES=str(unfused_pipelines(tmp_path,
                                                                                                          pipeline)))
    assert verify_fusion(plan_template(template, environ=plain_env, repo=repo).plan) == {}
    seen_plain: set = set()
    res_u = submit_template(template, environ=plain_env, client=local_dask.client, argv=["cpframe", "submit"],
                            on_progress=_scratch_watch(repo, isr_tasks, seen_plain))
    assert len(seen_plain) == n_isr, seen_plain  # one ISR file per ISR quantum when not fused

    stats_f, prev_f = _stats_and_previews(repo, res_f.run, stats_type, preview_type)
    stats_u, prev_u = _stats_and_previews(repo, res_u.run, stats_type, preview_type)
    assert len(stats_f) == n_stats and stats_f == stats_u
    assert sorted(prev_f) == sorted(prev_u) and len(prev_f) == n_stats
    for k, a in prev_f.items():
        b = prev_u[k]
        for plane in ("image", "mask", "variance"):
            np.testing.assert_array_equal(getattr(a, plane), getattr(b, plane))
        assert a.header == b.header


def _spec(graph, key):
    """The :class:`QuantumSpec` a Delayed of ``build_graph`` runs."""
    from cpframe.execution.graph_tasks import QuantumSpec

    task = graph[key].dask[graph[key].key]
    args = getattr(task, "args", None) or task[1:]
    found = [a.value if hasattr(a, "value") else a for a in args]
    return next(a for a in found if isinstance(a, QuantumSpec))


def test_fuse_isr_false_keeps_the_isr_quanta(repo, mini_dataset, tmp_path):
    """``fuseIsr: false`` on the verifyStats task: no fusion, the ISR quanta stay ISR quanta writing their file,
    and the verifyStats quanta read it; fused (the default) the ISR quanta are placeholders without outputs."""
    env = _env(repo, tmp_path, mini_dataset, "20241126p")
    plan = plan_template("bps_verify_bias", environ=env, repo=repo).plan
    graph = build_graph(plan, str(tmp_path / "s"), repo.get_path)
    isr_keys = [k for k, q in plan.quanta.items() if q.kind == "isr"]
    for k in isr_keys:
        spec = _spec(graph, k)
        assert spec.kind == "fusedAway" and spec.outputs == ()
        reader = _spec(graph, verify_fusion(plan)[k])
        assert reader.kind == "verifyStats" and reader.fused_keys == (k,)
        assert reader.fused_raws == (str(repo.get_path(plan.quanta[k].raw)),)
        assert set(reader.fused_calibs[0]) == {"ptc", "defects", "bias"}

    plain_env = dict(env, CPFRAME_PIPELINES=str(unfused_pipelines(tmp_path, "verifyBias.yaml")))
    plain = plan_template("bps_verify_bias", environ=plain_env, repo=repo).plan
    assert verify_fusion(plain) == {}
    graph = build_graph(plain, str(tmp_path / "s"), repo.get_path)
    for k, q in plain.quanta.items():
        spec = _spec(graph, k)
        if q.kind == "isr":
            assert spec.kind == "isr" and [o[1] for o in spec.outputs] == ["verifyBiasIsrExp"]
        if q.kind == "verifyStats":
            assert spec.fused_raws == () and spec.kind == "verifyStats"


def test_not_fused_when_the_isr_output_is_registered_renamed_or_read_twice(repo, mini_dataset, tmp_path):
    """The rule on a real plan changed one way at a time: a registered ISR output, a renamed calibration input
    (connections.flat=flat_<LED>) or a second reader of the ISR image each keep that ISR quantum apart."""
    env = _env(repo, tmp_path, mini_dataset, "20241126r")
    plan = plan_template("bps_verify_bias", environ=env, repo=repo).plan
    fused = verify_fusion(plan)
    a, b = sorted(fused)[:2]

    def changed(**quanta):
        return verify_fusion(dataclasses.replace(plan, quanta={**plan.quanta, **quanta}))

    q = plan.quanta[a]
    assert a not in changed(**{a: dataclasses.replace(q, registered=("verifyBiasIsrExp",))})
    assert a not in changed(**{a: dataclasses.replace(q, settings={**q.settings, "renamed": {"flat": "flat_blue"}})})
    # the verifyStats quantum of b also reads a's image: neither ISR is fused (two readers; two inputs)
    vb = plan.quanta[fused[b]]
    two = changed(**{vb.key: dataclasses.replace(vb, inputs=((vb.inputs[0][0], (b, a)),))})
    assert a not in two and b not in two
    assert set(two) == set(fused) - {a, b}


def _lsst_env(env: dict) -> dict:
    """``env`` with the stack variables set: the templates read cp_verify's LSST pipeline files (tests/data/lsst)."""
    lsst = Path(__file__).parent / "data" / "lsst"
    return dict(env, CP_PIPE_DIR=str(lsst / "cp_pipe"), CP_VERIFY_DIR=str(lsst / "cp_verify"),
                ANALYSIS_TOOLS_DIR=str(lsst / "analysis_tools"))


def test_verify_defects_runs_both_isr_quanta_of_its_raw(repo, mini_dataset, tmp_path):
    """verifyDefects' statistics read two ISR images of one raw (with and without the defects): both ISR quanta
    are placeholders, and the verifyStats quantum carries each one's raw, calibrations and settings, the image
    under test first; the cp_verify pipeline file (verifyDefectsLSST, CpVerifyDefectsTask) is fused the same way."""
    env = _env(repo, tmp_path, mini_dataset, "20241126d")
    plan = plan_template("bps_verify_defects", environ=env, repo=repo).plan
    runs = verify_isr_keys(plan)
    assert len(runs) == sum(1 for q in plan.quanta.values() if q.kind == "verifyStats") and runs
    graph = build_graph(plan, str(tmp_path / "s"), repo.get_path)
    for v, (cor, unc) in runs.items():
        assert (plan.quanta[cor].task, plan.quanta[unc].task) == ("verifyDefectsIsr", "verifyUncorrectedDefectsIsr")
        for k in (cor, unc):
            assert _spec(graph, k).kind == "fusedAway" and _spec(graph, k).outputs == ()
        spec = _spec(graph, v)
        assert spec.kind == "verifyStats" and spec.fused_keys == (cor, unc) and spec.fused_isr is None
        assert spec.fused_raws == (str(repo.get_path(plan.quanta[cor].raw)),) * 2
        assert [c.do_defect for c in spec.fused_isrs] == [True, False]
        assert set(spec.fused_calibs[0]) == {"ptc", "bias", "dark", "flat", "defects"}
        assert set(spec.fused_calibs[1]) == {"ptc", "bias", "dark", "flat"}  # doDefect false: no defects read

    lsst = plan_template(Path(__file__).parent / "data/lsst/cp_verify/bps/templates/bps_verify_defects.yaml",
                         environ=_lsst_env(env), repo=repo).plan
    runs = verify_isr_keys(lsst)
    assert runs and len(verify_fusion(lsst)) == 2 * len(runs) == sum(1 for q in lsst.quanta.values() if q.kind == "isr")
    assert {tuple(lsst.quanta[k].task for k in ks) for ks in runs.values()} == {
        ("verifyDefectsIsr", "verifyUncorrectedDefectsIsr")}


def test_verify_defects_not_fused_when_one_isr_output_is_registered_or_read_elsewhere(repo, mini_dataset, tmp_path):
    """A verifyDefects quantum is fused with both its ISR quanta or neither: not when one of the two ISR outputs is
    registered or read by another quantum too, nor when its two ISR quanta read different raws."""
    env = _env(repo, tmp_path, mini_dataset, "20241126e")
    plan = plan_template("bps_verify_defects", environ=env, repo=repo).plan
    fused = verify_fusion(plan)
    runs = verify_isr_keys(plan)
    (va, (cor_a, unc_a)), (vb, (cor_b, unc_b)) = sorted(runs.items())[:2]
    assert plan.quanta[cor_a].raw.id != plan.quanta[cor_b].raw.id

    def changed(*quanta):
        return verify_fusion(dataclasses.replace(plan, quanta={**plan.quanta, **{q.key: q for q in quanta}}))

    for k in (cor_a, unc_a):  # either output registered: neither ISR quantum of that raw is fused
        q = plan.quanta[k]
        assert changed(dataclasses.replace(q, registered=q.outputs[0][:1])) == \
            {i: v for i, v in fused.items() if v != va}
    # the exposure merge reads the uncorrected image too
    merge = next(q for q in plan.quanta.values() if q.kind == "verifyMerge" and va in q.upstream)
    read_twice = dataclasses.replace(merge, inputs=(*merge.inputs, ("verifyDefectsUncorrectedIsrExp", (unc_a,))))
    assert changed(read_twice) == {i: v for i, v in fused.items() if v != va}
    # each reads its own corrected image and the other raw's uncorrected one: every ISR output has one reader
    qa, qb = plan.quanta[va], plan.quanta[vb]
    swapped = changed(dataclasses.replace(qa, inputs=((qa.inputs[0][0], (cor_a,)), (qa.inputs[1][0], (unc_b,)))),
                      dataclasses.replace(qb, inputs=((qb.inputs[0][0], (cor_b,)), (qb.inputs[1][0], (unc_a,)))))
    assert swapped == {i: v for i, v in fused.items() if v not in (va, vb)}


def test_a_failing_fused_isr_names_its_isr_quantum(repo, mini_dataset, tmp_path):
    """An error in either ISR of a fused verifyDefects quantum names that ISR quantum and the fused quantum."""
    from cpframe.execution.graph_tasks import run_quantum

    env = _env(repo, tmp_path, mini_dataset, "20241126g")
    plan = plan_template("bps_verify_defects", environ=env, repo=repo).plan
    v = sorted(verify_isr_keys(plan))[0]
    spec = _spec(build_graph(plan, str(tmp_path / "s"), repo.get_path), v)
    for i, isr_key in enumerate(spec.fused_keys):
        calibs = list(spec.fused_calibs)
        calibs[i] = {**calibs[i], "bias": str(tmp_path / "no_such_bias.fits")}
        with pytest.raises(FileNotFoundError, match="no_such_bias") as err:
            run_quantum(dataclasses.replace(spec, fused_calibs=tuple(calibs)), [])
        notes = getattr(err.value, "__notes__", [])
        assert notes == [f"in ISR quantum {isr_key}, fused into {v} (fuseIsr: false keeps it apart)"]
    assert not list((tmp_path / "s").rglob("*.json"))  # no statistics written


# -- the ISR task's BPS requests carried to the fused quanta (docs/submit.md "Resources") -------------------------
def _with_requests(tmp_path: Path, template: str, extra: str) -> Path:
    from cpframe.execution.templates import default_templates_dir

    t = tmp_path / f"{template}.yaml"
    t.write_text((default_templates_dir() / f"{template}.yaml").read_text() + "\n" + extra)
    return t


_VERIFY_REQUESTS = """pipetask:
  verifyBiasIsr:
    requestMemory: 3000
    requestWalltime: 600
    memoryMultiplier: 2
    numberOfRetries: 2
    retryUnlessExit: [2]
  verifyBiasMeasure:
    requestMemory: 1000
    requestCpus: 2
    retryUnlessExit: [3]
"""


def _annotated_resources(graph, key):
    layer = graph[key].dask.layers[graph[key].key]
    return dict((layer.annotations or {}).get("resources") or {})


def test_fused_verify_stats_gets_the_larger_of_both_tasks_requests(repo, mini_dataset, tmp_path):
    """A fused verifyStats quantum runs the ISR too: per field the larger of the two tasks' requests (memory and
    walltime of the ISR task, cores of its own), every retryUnlessExit code; the placeholder requests nothing.
    Unfused, each quantum keeps its own task's."""
    from cpframe.execution.resources import quantum_limits, quantum_requests, quantum_resources, task_requests

    env = _env(repo, tmp_path, mini_dataset, "20241126l")
    out = plan_template(_with_requests(tmp_path, "bps_verify_bias", _VERIFY_REQUESTS), environ=env, repo=repo)
    plan, requests = out.plan, task_requests(out.submission, out.pipeline)
    assert requests["verifyBiasMeasure"].memory_mib == 1000 and requests["verifyBiasMeasure"].walltime_s is None
    per_q = quantum_requests(plan, requests)
    fused = verify_fusion(plan)
    assert fused
    for isr_key, v in fused.items():
        assert isr_key not in per_q
        r = per_q[v]
        assert (r.memory_mib, r.cpus, r.walltime_s, r.memory_multiplier, r.retries, r.retry_unless_exit) == \
            (3000, 2, 600, 2.0, 2, (2, 3))
    graph = build_graph(plan, str(tmp_path / "s"), repo.get_path, resources=quantum_resources(plan, requests),
                        limits=quantum_limits(per_q, 0))
    for isr_key, v in fused.items():
        spec = _spec(graph, v)
        assert spec.limits.walltime_s == 600 and spec.limits.memory_bytes == 3000 * 2**20
        assert spec.limits.retries == 2 and spec.limits.retry_unless_exit == (2, 3)
        assert _annotated_resources(graph, v) == {"MEMORY": 3000 * 2**20, "CPU": 2}
        assert _spec(graph, isr_key).limits is None and _annotated_resources(graph, isr_key) == {}

    plain_env = dict(env, CPFRAME_PIPELINES=str(unfused_pipelines(tmp_path, "verifyBias.yaml")))
    plain = plan_template(_with_requests(tmp_path, "bps_verify_bias", _VERIFY_REQUESTS), environ=plain_env,
                          repo=repo).plan
    per_q = quantum_requests(plain, requests)
    for k, q in plain.quanta.items():
        if q.kind in ("isr", "verifyStats"):
            assert per_q[k] == requests[q.task]


def test_capacity_check_refuses_a_fused_quantum_no_worker_can_run(repo, mini_dataset, tmp_path):
    """Each task's own request fits a worker of a real two-worker cluster (3000 MiB x 1 core, 1000 MiB x 2 cores),
    but the fused verifyStats quanta need 3000 MiB and 2 cores at once: refused before anything runs, naming both
    tasks, the request, the largest worker and the ways out."""
    from cpframe.execution.resources import capacity_requests, task_requests

    env = _env(repo, tmp_path, mini_dataset, "20241126n")
    out = plan_template(_with_requests(tmp_path, "bps_verify_bias", _VERIFY_REQUESTS), environ=env, repo=repo)
    plan, requests = out.plan, task_requests(out.submission, out.pipeline)
    merged = capacity_requests(plan, requests)
    assert set(merged) - set(requests) == {("verifyBiasMeasure", "verifyBiasIsr")}
    msg = _refused_by_two_workers(3000, requests, merged)
    assert "task verifyBiasMeasure runs verifyBiasIsr's ISR in memory" in msg
    assert "3000 MiB and 2 core(s)" in msg and "the largest has 3000 MiB and 1 core(s)" in msg
    assert "pipetask.verifyBiasMeasure or pipetask.verifyBiasIsr" in msg and "fuseIsr: false" in msg
    assert "(with" not in msg


def _refused_by_two_workers(big_mib: int, requests, merged) -> str:
    """On a real cluster of a 1-core worker with ``big_mib`` MiB and a 2-core one with 1000 MiB: every task's own
    request fits one of them, the fused quanta's ``merged`` requests none; the capacity check's message."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    from cpframe.core.errors import ExecutionError
    from cpframe.execution.resources import check_capacity

    workers = {"big": {"cls": Worker, "options": {"nthreads": 1, "resources": {"MEMORY": big_mib * 2**20, "CPU": 1}}},
               "wide": {"cls": Worker, "options": {"nthreads": 2, "resources": {"MEMORY": 1000 * 2**20, "CPU": 2}}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        check_capacity(client, requests)  # every task alone fits one of them
        with pytest.raises(ExecutionError) as err:
            check_capacity(client, merged)
    return str(err.value)


_DEFECTS_REQUESTS = """pipetask:
  verifyDefectsIsr:
    requestMemory: 3000
    requestWalltime: 600
  verifyUncorrectedDefectsIsr:
    requestMemory: 4000
    retryUnlessExit: [5]
  verifyDefectsMeasure:
    requestMemory: 1000
    requestCpus: 2
"""


def test_fused_verify_defects_requests_cover_both_isr_tasks(repo, mini_dataset, tmp_path):
    """A fused verifyDefects quantum does the work of both ISR tasks: per field the larger of the three tasks'
    requests (memory of the uncorrected ISR, walltime of the other, cores of its own; every retryUnlessExit
    code), neither placeholder requests anything, and the capacity check, on a real cluster whose workers each
    fit one task's request, refuses it naming the three tasks."""
    from cpframe.execution.resources import (
        capacity_requests, quantum_limits, quantum_requests, quantum_resources, task_requests,
    )

    env = _env(repo, tmp_path, mini_dataset, "20241126q")
    out = plan_template(_with_requests(tmp_path, "bps_verify_defects", _DEFECTS_REQUESTS), environ=env, repo=repo)
    plan, requests = out.plan, task_requests(out.submission, out.pipeline)
    per_q = quantum_requests(plan, requests)
    runs = verify_isr_keys(plan)
    assert runs
    for v, isr_keys in runs.items():
        assert len(isr_keys) == 2 and not set(isr_keys) & set(per_q)
        r = per_q[v]
        assert (r.memory_mib, r.cpus, r.walltime_s, r.retry_unless_exit) == (4000, 2, 600, (5,))
    graph = build_graph(plan, str(tmp_path / "s"), repo.get_path, resources=quantum_resources(plan, requests),
                        limits=quantum_limits(per_q, 0))
    for v, isr_keys in runs.items():
        assert _annotated_resources(graph, v) == {"MEMORY": 4000 * 2**20, "CPU": 2}
        assert _spec(graph, v).limits.walltime_s == 600 and _spec(graph, v).limits.retry_unless_exit == (5,)
        assert all(_annotated_resources(graph, k) == {} and _spec(graph, k).limits is None for k in isr_keys)

    merged = capacity_requests(plan, requests)
    assert set(merged) - set(requests) == {("verifyDefectsMeasure", "verifyDefectsIsr", "verifyUncorrectedDefectsIsr")}
    msg = _refused_by_two_workers(4000, requests, merged)
    assert "task verifyDefectsMeasure runs verifyDefectsIsr's and verifyUncorrectedDefectsIsr's ISR in memory" in msg
    assert "the largest of the 3 tasks' requests, 4000 MiB and 2 core(s)" in msg
    assert "pipetask.verifyDefectsMeasure, pipetask.verifyDefectsIsr or pipetask.verifyUncorrectedDefectsIsr" in msg


def test_fused_verify_stats_is_retried_with_the_isr_tasks_memory_multiplier(repo, mini_dataset, tmp_path):
    """Out of memory, a fused verifyStats quantum is run again with more memory as its ISR task allows (its own
    task sets no memoryMultiplier): requestMemory 3000 x 2, the larger of the two requests."""
    from cpframe.execution.execute import _memory_retry
    from cpframe.execution.resources import quantum_resources, task_requests

    env = _env(repo, tmp_path, mini_dataset, "20241126m")
    out = plan_template(_with_requests(tmp_path, "bps_verify_bias", _VERIFY_REQUESTS), environ=env, repo=repo)
    plan, requests = out.plan, task_requests(out.submission, out.pipeline)
    failed = sorted(verify_fusion(plan).values())[0]
    status = {k: "done" for k in plan.quanta if k != failed}
    attempt: dict = {}
    todo = _memory_retry(plan, requests, {failed: "x"}, {failed: "MemoryError"}, attempt, status)
    assert todo is not None and failed in todo.quanta and attempt == {failed: 1}
    assert quantum_resources(todo, requests, attempt)[failed]["MEMORY"] == 6000 * 2**20


def test_fused_dark_quanta_requests(repo, mini_dataset, tmp_path):
    """A fused dark: the CpDark quantum (the raw's ISR in memory, then its cosmic rays) gets the larger of the ISR
    and CpDark requests; the ISR placeholder none; the fused combine (streaming the ISR within fusedMemory) its
    own task's only."""
    from cpframe.execution.graph import fusion
    from cpframe.execution.resources import quantum_requests, task_requests

    extra = ("pipetask:\n  cpDarkIsr:\n    requestMemory: 5000\n    requestWalltime: 900\n"
             "  cpDark:\n    requestMemory: 2000\n    requestCpus: 3\n"
             "  cpDarkCombine:\n    requestMemory: 1500\n")
    env = variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="", RERUN="20241110l")
    out = plan_template(_with_requests(tmp_path, "bps_dark", extra), environ=env, repo=repo)
    plan, requests = out.plan, task_requests(out.submission, out.pipeline)
    per_q = quantum_requests(plan, requests)
    kinds = Counter(plan.quanta[k].kind for k in fusion(plan))
    assert kinds["darkCr"] and kinds["isr"] == kinds["darkCr"]
    for k, q in plan.quanta.items():
        if q.kind == "darkCr":
            r = per_q[k]
            assert (r.memory_mib, r.cpus, r.walltime_s) == (5000, 3, 900)
        elif q.kind == "isr":
            assert k not in per_q
        elif q.kind == "combine":
            assert per_q[k] == requests["cpDarkCombine"] and per_q[k].walltime_s is None


def test_fused_verify_stats_runs_under_the_isr_tasks_limits(repo, mini_dataset, local_dask, tmp_path):
    """A requestWalltime on the ISR task only: the fused verifyStats quanta run in a child process enforcing it
    (:mod:`cpframe.execution.isolate`), and the submission registers every statistic."""
    extra = "pipetask:\n  verifyBiasIsr:\n    requestWalltime: 3600\n"
    env = _env(repo, tmp_path, mini_dataset, "20241126w")
    t = _with_requests(tmp_path, "bps_verify_bias", extra)
    n = len(verify_fusion(plan_template(t, environ=env, repo=repo).plan))
    res = submit_template(t, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
    assert res.counts["verifyBiasStats"] == n and res.counts["verifyBiasPreview"] == n


def test_verify_science_is_fused(repo, mini_dataset, tmp_path):
    """verifyScience's statistics read one ISR image each: fused like bias, dark and flat."""
    env = _env(repo, tmp_path, mini_dataset, "20241126s")
    plan = plan_template("bps_verify_science", environ=env, repo=repo).plan
    n = sum(1 for q in plan.quanta.values() if q.kind == "isr")
    assert n and len(verify_fusion(plan)) == n
