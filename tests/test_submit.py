"""``cpframe submit`` end to end on a real LocalCluster and a real SQLite repository.

The simulated mini ComCam data set of the data area is ingested in place; PTC gains and
defects are certified from the simulator's truth so that the bias, dark and flat templates
can run (DMTN-222 steps 9-11).  Products are checked loosely against the injected truth
(the science tests check accuracy); errors are checked to leave nothing behind.
"""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from cpframe.core.errors import ExecutionError, PlanningError, SelectionError, SubmissionError
from cpframe.core.model import CollectionType
from cpframe.execution.provenance import load_provenance
from cpframe.execution.submit import plan_template, submit_template

from tests._run_helpers import (
    INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_run, certify_truth_calibs, make_repo, ticket_chain_add, variables,
)

P = f"{INSTRUMENT}/calib/{TICKET}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mini_dataset):
    root = tmp_path_factory.mktemp("submit")
    r = make_repo(root / "repo", mini_dataset)
    certify_truth_calibs(r, mini_dataset.truth, mini_dataset.detectors, root / "calibs")
    r.registry.set_chain(P, [TRUTH_COLLECTION], mode="redefine")
    yield r
    r.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch")


def _env(repo, scratch, dataset, **kw):
    return variables(repo.root, scratch, dataset, CALIB_COLLECTIONS="", **kw)


def _snapshot(repo, scratch):
    """Collections (with chain children and dataset counts) and files under SCRATCH."""
    reg = repo.registry
    cols = {}
    for c in reg.query_collections("*"):
        cols[c.name] = (c.type, tuple(reg.get_chain(c.name)) if c.type == CollectionType.CHAINED else
                        len(reg.query_datasets(None, collections=[c.name])) if c.type == CollectionType.RUN else None)
    files = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*")) if scratch.exists() else []
    return cols, files


def _image(repo, ref):
    from cpframe.science.imageio import read_masked

    return read_masked(repo.get_path(ref))


def _amp_median(img, amp, good=None):
    sl = img[amp.bbox]
    return float(np.nanmedian(sl if good is None else sl[good[amp.bbox]]))


@pytest.fixture(scope="module")
def chain(repo, scratch, mini_dataset, local_dask):
    """bias -> certify -> dark -> certify -> flat_g, as DMTN-222 steps 9-11 (run once for the module)."""
    env = _env(repo, scratch, mini_dataset)
    out = {}
    for name, dtype in (("bias", "bias"), ("dark", "dark"), ("flat_g", "flat")):
        res = submit_template(f"bps_{name}", environ=env, client=local_dask.client, argv=["cpframe", "submit", name])
        out[name] = res
        if dtype != "flat":
            cert = f"{P}/{dtype}.20241110a"
            certify_run(repo, res.run, dtype, cert)
            ticket_chain_add(repo, cert)
    return out


def test_bias_matches_truth_and_run_is_chained(repo, chain, mini_dataset):
    res = chain["bias"]
    assert res.counts == {"bias": len(mini_dataset.detectors)}
    reg = repo.registry
    assert reg.get_collection_type(res.run) == CollectionType.RUN
    assert res.run.startswith(res.output + "/")
    assert reg.get_chain(res.output) == (res.run, P, f"{INSTRUMENT}/raw/all")
    truth = mini_dataset.truth
    for ref in reg.query_datasets("bias", collections=[res.run]):
        d = int(ref.data_id["detector"])
        img = _image(repo, ref).image
        det = mini_dataset.camera.detector(d)
        expected = np.zeros(det.shape)
        for amp in det.amps:
            expected[amp.bbox] = truth.bias_pattern(d)[amp.bbox] * truth.amp(d, amp.name).gain
        for amp in det.amps:
            resid = _amp_median(img - expected, amp)
            assert abs(resid) < 2.0, (d, amp.name, resid)  # e-, overscan-corrected bias ~ 0 + bump


def test_dark_matches_truth(repo, chain, mini_dataset):
    res = chain["dark"]
    assert res.counts == {"dark": len(mini_dataset.detectors)}
    truth = mini_dataset.truth
    for ref in repo.registry.query_datasets("dark", collections=[res.run]):
        d = int(ref.data_id["detector"])
        img = _image(repo, ref).image
        hot = truth.defect_mask(d)
        for amp in mini_dataset.camera.detector(d).amps:
            got = _amp_median(img, amp, ~hot)
            want = truth.amp(d, amp.name).dark_current
            assert abs(got - want) < 0.02 + 0.2 * want, (d, amp.name, got, want)


def test_flat_matches_truth(repo, chain, mini_dataset):
    res = chain["flat_g"]
    assert res.counts == {"flat": len(mini_dataset.detectors)}
    truth = mini_dataset.truth
    means = {}
    for ref in repo.registry.query_datasets("flat", collections=[res.run]):
        d = int(ref.data_id["detector"])
        img = _image(repo, ref).image
        want = truth.flat(d, "g")
        good = ~truth.defect_mask(d) & np.isfinite(img)
        ratio = img[good] / want[good]
        assert np.std(ratio / np.median(ratio)) < 0.02, d
        means[d] = (np.median(img[good]), np.median(want[good]))
    (a, ta), (b, tb) = (means[d] for d in sorted(means))
    assert abs((a / b) / (ta / tb) - 1) < 0.02  # detector-to-detector response kept


def test_provenance_recorded_and_shown(repo, chain, mini_dataset):
    res = chain["bias"]
    (rec,) = load_provenance(repo.registry, res.run)
    assert rec["status"] == "complete"
    assert "pipelineYaml" in rec["template"]["text"]
    assert rec["submission"]["payload"]["dataQuery"] == mini_dataset.plan.selections["SELECTION_BIAS"]
    assert rec["environment"]["SELECTION_BIAS"] == mini_dataset.plan.selections["SELECTION_BIAS"]
    n_exp = len(mini_dataset.plan.intended["SELECTION_BIAS"])
    assert len(rec["data_ids"]) == n_exp * len(mini_dataset.detectors)
    for o in rec["outputs"]:
        raws = [i for i in o["inputs"] if i.startswith("raw ")]
        assert len(raws) == n_exp and all(f"detector={o['data_id'].split('detector=')[1][0]}" in i for i in raws)
        assert any(i.startswith("ptc ") for i in o["inputs"])
    assert rec["versions"]["dask"] and rec["host"]["hostname"] and rec["timings"]["total_s"] > 0
    assert rec["command_line"] == ["cpframe", "submit", "bias"]
    for f in ("submission.yaml", "settings.yaml", "versions.yaml", "plan.txt", "graph.dot", "logs/submit.log"):
        assert (res.submit_dir / f).is_file(), f
    from cpframe.cli import main

    out = CliRunner().invoke(main, ["provenance", res.run, "--repo", str(repo.root)])
    assert out.exit_code == 0, out.output
    assert "rendered submission" in out.output and "SELECTION_BIAS=" in out.output and "<- raw" in out.output
    out = CliRunner().invoke(main, ["provenance", res.output, "--repo", str(repo.root)])
    assert out.exit_code == 0 and f"newest RUN {res.run}" in out.output
    out = CliRunner().invoke(main, ["provenance", f"{INSTRUMENT}/raw/all", "--repo", str(repo.root)])
    assert out.exit_code == 3 and "no provenance record" in out.output and "Traceback" not in out.output


def test_existing_run_refused_and_nothing_written(repo, scratch, mini_dataset):
    env = _env(repo, scratch, mini_dataset)
    run = f"{P}/test/biasBootstrapGen.20241110a/run1"
    repo.registry.register_collection(run, CollectionType.RUN)
    before = _snapshot(repo, scratch)
    with pytest.raises(SubmissionError, match=r"already exists .*--extend-run.*BOOTSTRAP_RUN_NUMBER"):
        submit_template("bps_biasBootstrap", environ=env)
    assert _snapshot(repo, scratch) == before
    from cpframe.cli import main

    out = CliRunner().invoke(main, ["submit", "bps_biasBootstrap", "--quiet"], env=env)
    assert out.exit_code == 4 and "already exists" in out.output and "Traceback" not in out.output
    assert _snapshot(repo, scratch) == before


def test_missing_calibration_fails_before_anything(repo, scratch, mini_dataset):
    # a ticket whose chain holds only the truth PTC and defects: the dark's bias is missing
    repo.registry.set_chain(f"{INSTRUMENT}/calib/DM-NOBIAS", [TRUTH_COLLECTION], mode="redefine")
    env = _env(repo, scratch, mini_dataset, TICKET="DM-NOBIAS")
    before = _snapshot(repo, scratch)
    from cpframe.cli import main

    out = CliRunner().invoke(main, ["submit", "bps_dark", "--quiet"], env=env)
    assert out.exit_code == 5, out.output
    for d in mini_dataset.detectors:
        assert f"no bias certified for detector {d} at 2024-11-10T" in out.output
    assert f"in: {INSTRUMENT}/calib/DM-NOBIAS, {INSTRUMENT}/raw/all" in out.output
    assert "Traceback" not in out.output
    assert _snapshot(repo, scratch) == before


def test_bad_selection_and_missing_variable_leave_nothing(repo, scratch, mini_dataset):
    from cpframe.cli import main

    env = _env(repo, scratch, mini_dataset)
    before = _snapshot(repo, scratch)
    bad = dict(env, SELECTION_BIAS="instrument='LSSTComCam' and exposure.seq_num in (15..10)")
    out = CliRunner().invoke(main, ["submit", "bps_bias", "--quiet"], env=bad)
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    missing = {k: v for k, v in env.items() if k != "SELECTION_BIAS"}
    out = CliRunner().invoke(main, ["submit", "bps_bias", "--quiet"], env={**missing, "SELECTION_BIAS": None})
    assert out.exit_code == 4 and "SELECTION_BIAS" in out.output, out.output
    assert _snapshot(repo, scratch) == before


def _child_pids() -> set[int]:
    """Processes whose parent is this one (the local cluster's nannies and workers are)."""
    import os

    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        out.add(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def test_a_failed_plan_closes_the_cluster_started_while_planning(repo, scratch, mini_dataset, caplog):
    # no client given: the local cluster starts in the background as soon as the template is rendered
    # (cpframe.execution.cluster_early); a plan that then fails closes it, and leaves nothing else
    import logging

    env = _env(repo, scratch, mini_dataset, SELECTION_BIAS="instrument='LSSTComCam' and exposure.seq_num in (15..10)")
    before_pids, before = _child_pids(), _snapshot(repo, scratch)
    with caplog.at_level(logging.INFO, logger="cpframe.execution.cluster_early"):
        with pytest.raises(SelectionError, match=r"15\.\.10"):
            submit_template("bps_bias", environ=env, quiet=True)
    text = caplog.text
    assert "starting a local cluster while planning" in text
    assert "closing the local cluster started while planning: the run did not use it" in text
    assert _child_pids() <= before_pids  # its nanny and worker processes are gone
    assert _snapshot(repo, scratch) == before


def test_failure_then_skip_existing_finishes_only_the_rest(tmp_path, mini_dataset, local_dask):
    """A raw made unreadable: the other detector's bias is registered, the RUN is reported incomplete;
    after the file is repaired, --extend-run --skip-existing runs only what is missing."""
    from cpframe.core.config import Settings

    ids = set(mini_dataset.plan.intended["SELECTION_BIAS"])
    files = [mini_dataset.path(e, d) for e in sorted(ids) for d in mini_dataset.detectors]
    repo = make_repo(tmp_path / "repo", mini_dataset, files=files, transfer="copy")
    try:
        certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / "calibs")
        repo.registry.set_chain(P, [TRUTH_COLLECTION], mode="redefine")
        env = _env(repo, tmp_path / "scratch", mini_dataset)
        bad_exp = sorted(ids)[2]
        (raw,) = repo.registry.query_datasets("raw", collections=[f"{INSTRUMENT}/raw/all"],
                                              where=f"instrument='{INSTRUMENT}' and exposure={bad_exp} and detector=4")
        path = repo.get_path(raw)
        keep = tmp_path / "good.fits"
        shutil.copy(path, keep)
        path.write_bytes(b"SIMPLE  = not a FITS file any more")
        with pytest.raises(ExecutionError, match=r"(?s)cpBiasIsr.*4.*--extend-run --skip-existing") as err:
            submit_template("bps_bias", environ=env, client=local_dask.client, settings=Settings(retries=0))
        first = err.value.result
        assert first.counts == {"bias": 1}
        reg = repo.registry
        (done,) = reg.query_datasets("bias", collections=[first.run])
        assert int(done.data_id["detector"]) == 0
        (rec,) = load_provenance(reg, first.run)
        assert rec["status"] == "failed" and any("detector=4" in m for m in rec["missing"])

        shutil.copy(keep, path)
        second = submit_template("bps_bias", environ=env, client=local_dask.client, extend_run=True,
                                 skip_existing=True)
        assert second.run == first.run
        assert {q.data_id["detector"] for q in second.plan.quanta.values()} == {4}
        assert second.counts == {"bias": 1}
        assert sorted(int(r.data_id["detector"]) for r in reg.query_datasets("bias", collections=[first.run])) == [0, 4]
        assert [r["status"] for r in load_provenance(reg, first.run)] == ["failed", "complete"]
        with pytest.raises(PlanningError, match="already exist"):
            submit_template("bps_bias", environ=env, client=local_dask.client, extend_run=True)
    finally:
        repo.close()


def _unfused_pipelines(tmp_path, name, calibration_type):
    """A copy of cpframe's pipelines whose ``name`` combine has ``fuseIsr: false`` (for CPFRAME_PIPELINES)."""
    from cpframe.execution.templates import default_pipelines_dir

    pipes = tmp_path / "pipelines"
    shutil.copytree(default_pipelines_dir(), pipes)
    text = (pipes / name).read_text()
    line = f"      calibrationType: {calibration_type}\n"
    assert line in text
    (pipes / name).write_text(text.replace(line, line + "      fuseIsr: false\n"))
    return pipes


def _same_products(repo, dataset_type, run_a, run_b, detectors):
    """The products of two RUNs, detector by detector: images and variances to float32 precision, masks equal."""
    reg = repo.registry
    a_refs = {int(r.data_id["detector"]): r for r in reg.query_datasets(dataset_type, collections=[run_a])}
    b_refs = {int(r.data_id["detector"]): r for r in reg.query_datasets(dataset_type, collections=[run_b])}
    assert sorted(a_refs) == sorted(b_refs) == sorted(detectors)
    for d, ref in a_refs.items():
        a, b = _image(repo, ref), _image(repo, b_refs[d])
        np.testing.assert_allclose(a.image, b.image, rtol=2.4e-7, atol=0)
        np.testing.assert_allclose(a.variance, b.variance, rtol=2.4e-7, atol=0)
        np.testing.assert_array_equal(a.mask, b.mask)


def test_dark_is_fused_and_equals_the_unfused_submission(repo, chain, scratch, mini_dataset, local_dask, tmp_path):
    """cpDark fuses ISR, CpDark's cosmic rays and the combine (no per-exposure file); with ``fuseIsr: false`` the
    same submission writes them and gives the same dark, plane for plane."""
    from cpframe.execution.graph import fusion

    env = _env(repo, scratch, mini_dataset)
    out = plan_template("bps_dark", environ=dict(env, RERUN="20241110x"), repo=repo)
    fused = fusion(out.plan)
    n_exp = sum(1 for q in out.plan.quanta.values() if q.kind == "darkCr")
    assert n_exp and Counter(out.plan.quanta[k].kind for k in fused) == {"isr": n_exp, "darkCr": n_exp}
    pipes = _unfused_pipelines(tmp_path, "cpDark.yaml", "dark")
    plain_env = dict(env, RERUN="20241110u", CPFRAME_PIPELINES=str(pipes))
    assert not fusion(plan_template("bps_dark", environ=plain_env, repo=repo).plan)
    res = submit_template("bps_dark", environ=plain_env, client=local_dask.client, argv=["cpframe", "submit", "dark"])
    _same_products(repo, "dark", chain["dark"].run, res.run, mini_dataset.detectors)


def test_flat_is_fused_and_equals_the_unfused_submission(repo, chain, scratch, mini_dataset, local_dask, tmp_path):
    """cpFlat fuses ISR, CpFlatMeasure and the combine (no per-exposure file; the normalisation reads the
    measurements taken on each raw's ISR in memory); with ``fuseIsr: false`` the same flat, plane for plane."""
    from cpframe.execution.graph import build_graph, fusion

    env = _env(repo, scratch, mini_dataset)
    out = plan_template("bps_flat_g", environ=dict(env, RERUN="20241110x"), repo=repo)
    fused = fusion(out.plan)
    n = sum(1 for q in out.plan.quanta.values() if q.kind == "flatMeasure")
    assert n and Counter(out.plan.quanta[k].kind for k in fused) == {"isr": n, "flatMeasure": n}
    # the normalisation reads each measurement through a task that drops the raw's prepass
    graph = build_graph(out.plan, str(tmp_path / "s"), repo.get_path)
    norm = next(k for k, q in out.plan.quanta.items() if q.kind == "flatNormalize")
    deps = graph[norm].dask.dependencies[norm]
    assert deps and all(str(d).endswith("-measurement") for d in deps), deps
    pipes = _unfused_pipelines(tmp_path, "cpFlat.yaml", "flat")
    plain_env = dict(env, RERUN="20241110u", CPFRAME_PIPELINES=str(pipes))
    assert not fusion(plan_template("bps_flat_g", environ=plain_env, repo=repo).plan)
    res = submit_template("bps_flat_g", environ=plain_env, client=local_dask.client, argv=["cpframe", "submit", "f"])
    _same_products(repo, "flat", chain["flat_g"].run, res.run, mini_dataset.detectors)
