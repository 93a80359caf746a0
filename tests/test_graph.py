"""Planning (cpframe.execution.graph, cpframe.execution.submit.plan_template): quanta, lookups, errors -- no cluster.

The repository is real (SQLite, the data area's simulated mini ComCam raws ingested in
place); expected counts are derived independently from the observing plan's exposure list.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import dask
import pytest

from cpframe.core.errors import PlanningError, SelectionError, SubmissionError, UndefinedVariablesError
from cpframe.core.model import DataId
from cpframe.execution.submit import plan_template

from tests._run_helpers import (
    INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, put_certified, variables,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mini_dataset):
    root = tmp_path_factory.mktemp("graph")
    r = make_repo(root / "repo", mini_dataset)
    # truth PTC + defects for detector 0 from November; detector 4's PTC only valid from December,
    # so lookups at the demo's November exposures must find nothing for it.
    certify_truth_calibs(r, mini_dataset.truth, [0], root / "calibs")
    certify_truth_calibs(r, mini_dataset.truth, [4], root / "calibs4", types=("defects",))
    from tests._run_helpers import write_truth_ptc

    p = write_truth_ptc(root / "calibs4" / "ptc_4.fits", mini_dataset.truth, 4)
    put_certified(r, "ptc", [(p, {"instrument": INSTRUMENT, "detector": 4})], f"{TRUTH_COLLECTION}/ptc4-run",
                  TRUTH_COLLECTION, begin="2024-12-01T00:00:00")
    r.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
    yield r
    r.close()


@pytest.fixture
def env(repo, tmp_path, mini_dataset):
    return variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="")


def exposures_of(dataset, selection: str, band: str | None = None) -> list:
    """Exposure specs a selection of the demo plan names, filtered by band (independent of the registry)."""
    ids = set(dataset.plan.intended[selection])
    out = [s for s in dataset.specs if s.exposure_id in ids]
    if band:
        out = [s for s in out if dataset.camera.band_of(s.physical_filter) == band]
    return out


def test_bias_bootstrap_plan_counts_and_raws(repo, env, mini_dataset):
    out = plan_template("bps_biasBootstrap", environ=env, repo=repo)
    plan = out.plan
    specs = exposures_of(mini_dataset, "SELECTION_BIAS_BOOTSTRAP")
    n_det = len(mini_dataset.detectors)
    assert plan.counts() == {"cpBiasBootstrapIsr": len(specs) * n_det, "cpBiasBootstrapCombine": n_det}
    isr = [q for q in plan.quanta.values() if q.kind == "isr"]
    assert {(q.data_id["exposure"], q.data_id["detector"]) for q in isr} == \
        {(s.exposure_id, d) for s in specs for d in mini_dataset.detectors}
    # every ISR quantum reads the raw of its own exposure x detector
    for q in isr:
        assert (q.raw.data_id["exposure"], q.raw.data_id["detector"]) == (q.data_id["exposure"], q.data_id["detector"])
    # a combine reads exactly the ISR quanta of its detector
    for q in plan.quanta.values():
        if q.kind == "combine":
            ups = [plan.quanta[k] for k in q.upstream]
            assert {u.data_id["detector"] for u in ups} == {q.data_id["detector"]}
            assert len(ups) == len(specs)
    assert [dt for dt, _ in plan.planned_outputs()] == ["biasBootstrap"] * n_det
    assert plan.run == f"{INSTRUMENT}/calib/{TICKET}/test/biasBootstrapGen.20241110a/run1"
    assert "cpBiasBootstrapIsr" in plan.summary() and plan.run in plan.summary()


def test_flat_plan_per_filter_and_calibrations(repo, env, mini_dataset, tmp_path):
    # stand-in bias and dark (planning never reads them) certified for both detectors
    for dt in ("bias", "dark"):
        items = []
        for d in mini_dataset.detectors:
            p = tmp_path / f"{dt}{d}.fits"
            p.write_bytes(b"planning does not read this")
            items.append((p, {"instrument": INSTRUMENT, "detector": d}))
        put_certified(repo, dt, items, f"{INSTRUMENT}/calib/{TICKET}/x/{dt}Gen/run", f"{INSTRUMENT}/calib/{TICKET}/{dt}")
    try:
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [f"{INSTRUMENT}/calib/{TICKET}/{dt}"
                                                                   for dt in ("bias", "dark")], mode="prepend")
        # detector 4 has no PTC valid in November: planning fails and says so, for that detector only
        with pytest.raises(PlanningError, match=r"no ptc certified for detector 4 at 2024-11-10T") as err:
            plan_template("bps_flat_g", environ=env, repo=repo)
        assert "detector 0" not in str(err.value)
        assert "more exposure(s)" in str(err.value)
        assert f"{INSTRUMENT}/calib/{TICKET}, {INSTRUMENT}/raw/all" in str(err.value)

        env0 = dict(env, SELECTION_FLAT_g=env["SELECTION_FLAT_g"] + " and detector=0")
        plan = plan_template("bps_flat_g", environ=env0, repo=repo).plan
        specs = exposures_of(mini_dataset, "SELECTION_FLAT_g", band="g")
        c = plan.counts()
        assert c["cpFlatIsr"] == len(specs) and c["cpFlatMeasure"] == len(specs)
        assert c["cpFlatNormalize"] == 1 and c["cpFlatCombine"] == 1
        comb = next(q for q in plan.quanta.values() if q.kind == "combine")
        assert comb.data_id == DataId(instrument=INSTRUMENT, detector=0, physical_filter=specs[0].physical_filter)
        assert dict(comb.inputs).keys() == {"cpFlatIsrExp", "cpFlatNormScales"}
        isr = next(q for q in plan.quanta.values() if q.kind == "isr")
        assert set(isr.calibs) >= {"ptc", "bias", "dark"}
        assert isr.calibs["ptc"][0].extra["collection"] == TRUTH_COLLECTION
        assert isr.calibs["bias"][0].extra["collection"] == f"{INSTRUMENT}/calib/{TICKET}/bias"
    finally:
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")


def test_ptc_plan_pairs(repo, env, mini_dataset):
    plan = plan_template("bps_ptc", environ=env, repo=repo).plan
    specs = exposures_of(mini_dataset, "SELECTION_PTC")
    by_time = Counter(round(s.exposure_time, 6) for s in specs)
    n_pairs = sum(n // 2 for n in by_time.values())
    c = plan.counts()
    n_det = len(mini_dataset.detectors)
    assert c["cpPtcIsr"] == len(specs) * n_det
    assert c["cpPtcExtractPair"] == n_pairs * n_det
    assert c["cpPtcSolve"] == n_det
    ex = plan.quanta
    for q in ex.values():
        if q.kind == "ptcExtract":
            a, b = (ex[k] for k in q.upstream)
            ta = next(s for s in specs if s.exposure_id == a.data_id["exposure"]).exposure_time
            tb = next(s for s in specs if s.exposure_id == b.data_id["exposure"]).exposure_time
            assert ta == tb and a.data_id["detector"] == b.data_id["detector"] == q.data_id["detector"]
            assert a.data_id["exposure"] == q.data_id["exposure"] < b.data_id["exposure"]


def _quantum_spec(d, key):
    """The QuantumSpec a graph's Delayed runs (the first argument of its task)."""
    from cpframe.execution.graph_tasks import QuantumSpec

    args = [getattr(a, "value", a) for a in d.dask[key].args]
    return next(a for a in args if isinstance(a, QuantumSpec))


def test_graph_building_never_computes(repo, env):
    def refuse(dsk, keys, **kwargs):
        raise AssertionError("the graph builder computed something")

    from cpframe.execution.graph import build_graph

    with dask.config.set(scheduler=refuse):
        out = plan_template("bps_biasBootstrap", environ=env, repo=repo)
        graph = build_graph(out.plan, "/nonexistent/scratch", repo.get_path)
    assert list(graph) == list(out.plan.quanta)
    comb_key = next(k for k, q in out.plan.quanta.items() if q.kind == "combine")
    # the bias bootstrap's ISR quanta are fused into the combine: it streams the raws itself
    from cpframe.execution.graph import fusion

    fused = fusion(out.plan)
    assert {k for k, c in fused.items() if c == comb_key} == set(out.plan.quanta[comb_key].upstream)
    assert set(fused) == {k for k, q in out.plan.quanta.items() if q.kind == "isr"}
    # ... reading only the prepass of each raw from its ISR quantum (no ISR file)
    deps = graph[comb_key].dask.dependencies[comb_key]
    assert set(deps) == set(out.plan.quanta[comb_key].upstream)
    specs = {k: _quantum_spec(graph[k], k) for k in {*deps, comb_key}}
    assert specs[comb_key].kind == "isrCombine" and specs[comb_key].input_types == ("prepass",)
    assert specs[comb_key].input_counts == (len(deps),)
    assert all(specs[k].kind == "isrPrepass" and specs[k].outputs == () and specs[k].fused_raws for k in deps)
    # with fuseIsr: false the combine reads the ISR quanta's files
    settings = out.plan.quanta[comb_key].settings
    settings["combine"] = replace(settings["combine"], fuse_isr=False)
    with dask.config.set(scheduler=refuse):
        graph = build_graph(out.plan, "/nonexistent/scratch", repo.get_path)
    deps = graph[comb_key].dask.dependencies[comb_key]
    assert set(deps) == set(out.plan.quanta[comb_key].upstream)
    assert comb_key not in fusion(out.plan).values()
    assert _quantum_spec(graph[comb_key], comb_key).kind == "combine"
    assert {_quantum_spec(graph[k], k).kind for k in deps} == {"isr"}
    dot = out.plan.to_dot()
    assert dot.startswith("digraph") and all(f'"{k}"' in dot for k in out.plan.quanta)
    # a memory-retry round gets Dask keys of its own (the scheduler may still hold the previous round's erred
    # tasks under the old keys, and would hand back their old error: CI saw a retried quantum fail with its
    # first attempt's limit), while the quanta keep their keys
    with dask.config.set(scheduler=refuse):
        again = build_graph(out.plan, "/nonexistent/scratch", repo.get_path, key_suffix="~retry1")
    assert list(again) == list(out.plan.quanta)
    assert {str(d.key) for d in again.values()} == {f"{k}~retry1" for k in out.plan.quanta}


def test_skip_existing_prunes_to_what_is_missing(repo, env, mini_dataset):
    out = plan_template("bps_biasBootstrap", environ=env, repo=repo)
    done = {("biasBootstrap", DataId(instrument=INSTRUMENT, detector=0).key())}
    from cpframe.execution.graph import make_plan

    with pytest.raises(PlanningError, match="already exist in RUN .*--skip-existing"):
        make_plan(out.submission, out.pipeline, repo, existing=done)
    plan = make_plan(out.submission, out.pipeline, repo, existing=done, skip_existing=True)
    assert {q.data_id["detector"] for q in plan.quanta.values()} == {4}
    assert [did["detector"] for _, did in plan.planned_outputs()] == [4]
    assert len(plan.skipped) == len(out.plan.quanta) - len(plan.quanta)


def test_labels_the_pipeline_lacks_are_noted_and_the_rest_planned(repo, env, tmp_path):
    """A cluster naming a task this pipeline does not have plans as BPS does (the label passed over), and the
    plan says so; the cluster's other task is still grouped."""
    from cpframe.execution.templates import default_templates_dir

    t = tmp_path / "bps_biasBootstrap.yaml"
    text = (default_templates_dir() / "bps_biasBootstrap.yaml").read_text()
    assert "    pipetasks: cpBiasBootstrapIsr\n" in text
    t.write_text(text.replace("    pipetasks: cpBiasBootstrapIsr\n", "    pipetasks: cpBiasBootstrapIsr,cpBiasBootstrapMeasure\n"))
    out = plan_template(str(t), environ=env, repo=repo)
    note = "cluster.cpBiasBootstrapIsrByExposure.pipetasks names 'cpBiasBootstrapMeasure'"
    assert any(note in n and "ignored" in n for n in out.plan.notes)
    assert f"note: {note}" in out.plan.summary()
    grouped = plan_template("bps_biasBootstrap", environ=env, repo=repo)  # the same, without the extra label
    assert len(out.plan.quanta) == len(grouped.plan.quanta) > 0


def test_empty_selection_is_a_planning_error(repo, env):
    env = dict(env, SELECTION_BIAS_BOOTSTRAP="instrument='LSSTComCam' and exposure.day_obs=20300101")
    with pytest.raises(PlanningError, match=r"matched no exposure: .*20300101.*query-data-ids"):
        plan_template("bps_biasBootstrap", environ=env, repo=repo)


def test_bad_selection_points_at_the_token(repo, env):
    env = dict(env, SELECTION_BIAS_BOOTSTRAP="instrument='LSSTComCam' and exposure.day_obs='20241110'")
    with pytest.raises(SelectionError, match="day_obs"):
        plan_template("bps_biasBootstrap", environ=env, repo=repo)


def test_missing_variables_listed_at_once(repo, env):
    env = {k: v for k, v in env.items() if k not in ("TICKET", "SELECTION_BIAS_BOOTSTRAP")}
    with pytest.raises(UndefinedVariablesError, match=r"SELECTION_BIAS_BOOTSTRAP.*TICKET|TICKET.*SELECTION"):
        plan_template("bps_biasBootstrap", environ=env, repo=repo)


def test_missing_input_collection_named(repo, env):
    with pytest.raises(PlanningError, match=r"not in the repository: LSSTComCam/calib/nope"):
        plan_template("bps_biasBootstrap", environ=dict(env, CALIB_COLLECTIONS="LSSTComCam/calib/nope"), repo=repo)


def test_no_raws_in_collections(repo, env):
    env = dict(env, RAW_COLLECTION=TRUTH_COLLECTION)
    with pytest.raises(PlanningError, match=r"matched 6 exposure\(s\) but no raw"):
        plan_template("bps_biasBootstrap", environ=env, repo=repo)


def test_extend_run_needs_a_chain(repo, env):
    with pytest.raises(SubmissionError, match="no RUN to extend"):
        plan_template("bps_bias", environ=env, repo=repo, extend_run=True)


def test_plan_cli_summary_dot_and_html(repo, env, tmp_path):
    from click.testing import CliRunner

    from cpframe.cli import main

    dot, page = tmp_path / "plan.dot", tmp_path / "plan.html"
    out = CliRunner().invoke(main, ["plan", "bps_biasBootstrap", "--dot", str(dot), "--html", str(page)], env=env)
    assert out.exit_code == 0, out.output
    assert "cpBiasBootstrapIsr" in out.output and "output RUN:" in out.output and "nothing was run" in out.output
    assert dot.read_text().startswith("digraph") and "<table>" in page.read_text()
    assert not (tmp_path / "scratch").exists()  # planning writes nothing but the files asked for


def test_detector_level_plan_leaves_out_detectors_without_inputs(repo, env, mini_dataset):
    env = dict(env, SELECTION_PTC_V=f"instrument='{INSTRUMENT}'", VERIFY_RERUN="20241126a")
    plan = plan_template("bps_verify_ptc", environ=env, repo=repo).plan
    assert plan.counts() == {"verifyPtcMeasure": len(mini_dataset.detectors), "verifyPtcRunMerge": 1}
    others = sorted(set(mini_dataset.camera.detector_ids) - set(mini_dataset.detectors))
    assert any(f"detector(s) {', '.join(map(str, others))} of the selection have none of ptc" in n for n in plan.notes)
    merge = next(q for q in plan.quanta.values() if q.kind == "verifyMerge")
    assert len(merge.upstream) == len(mini_dataset.detectors)
    assert {dt for dt, _ in plan.planned_outputs()} == {"verifyPtcStats", "verifyPtcResults", "verifyPtcSummary"}


def test_refused_pipeline_option_is_named_with_its_value():
    """An option the science config refuses is dropped with a note showing the value (default used)."""
    from cpframe.science.combine import CombineConfig
    from cpframe.execution.kinds.base import accepted as _accepted

    cfg = {"scalingLevel": "AMP", "clip": 2.5, "combine": "MEDIAN"}
    keep, notes = _accepted("cpFlatCombine", cfg, CombineConfig.from_dict, explicit={"scalingLevel", "clip"})
    assert keep == {"clip": 2.5, "combine": "MEDIAN"}
    assert notes == [("cpFlatCombine: option(s) without a cpframe equivalent or value, ignored (default used): "
                      "scalingLevel='AMP'")]
    assert _accepted("t", cfg, CombineConfig.from_dict, explicit=set())[1] == []  # defaults go unmentioned


def test_bfk_plans_pairs_a_covariance_ptc_and_one_kernel_per_detector(repo, env, mini_dataset):
    """bps_bfk: ISR and pair extraction per exposure, the FULLCOVARIANCE PTC (bfkPtc) and the kernel solve per
    detector (cp_pipe cpBfkLSST's labels); bps_verify_bfk: the ramp with and without the kernel."""
    env = {**env, "SELECTION_PTC_BFK": env["SELECTION_PTC"], "SELECTION_PTC_BFK_V": env["SELECTION_PTC"],
           "VERIFY_RERUN": "v1"}
    plan = plan_template("bps_bfk", environ=env, repo=repo).plan
    specs = exposures_of(mini_dataset, "SELECTION_PTC")
    by_time = Counter(round(s.exposure_time, 6) for s in specs)
    n_det = len(mini_dataset.detectors)
    c = plan.counts()
    assert c["cpBfkIsr"] == len(specs) * n_det
    assert c["cpBfkPtcExtractPair"] == sum(n // 2 for n in by_time.values()) * n_det
    assert c["cpBfkPtcSolve"] == c["cpBfkSolveX"] == n_det
    kinds = {q.kind for q in plan.quanta.values()}
    assert {"isr", "ptcExtract", "ptcSolve", "bfkSolve"} <= kinds
    # cpBfk's extraction sets maximumRangeCovariancesAstier: the covariances are measured; cpPtc's does not
    extract = next(q for q in plan.quanta.values() if q.kind == "ptcExtract")
    assert extract.settings["ptc"].measure_covariances and extract.settings["ptc"].maximum_range_covariances_astier == 10
    ptc = plan_template("bps_ptc", environ=env, repo=repo).plan
    assert not any(q.settings["ptc"].measure_covariances for q in ptc.quanta.values() if q.kind == "ptcExtract")
    v = plan_template("bps_verify_bfk", environ=env, repo=repo).plan.counts()
    assert v["verifyBfkIsr"] == v["verifyUncorrectedBfkIsr"] == len(specs) * n_det
    assert v["verifyBfkMeasure"] == n_det and v["verifyBfkRunMerge"] == 1


def test_linearizer_plan_pairs_and_cti_needs_a_linearizer(repo, env, mini_dataset):
    """bps_linearizer plans ISR, pair extraction and one solve per detector on the PTC ramp; bps_cti takes
    its gains from a linearizer (cpCtiLSST's useGainsFrom: LINEARIZER), so without one nothing is run."""
    from cpframe.core.errors import PlanningError

    env = {**env, "SELECTION_PTC_LINEARIZER": env["SELECTION_PTC"], "SELECTION_PTC_CTI": env["SELECTION_PTC"]}
    plan = plan_template("bps_linearizer", environ=env, repo=repo).plan
    specs = exposures_of(mini_dataset, "SELECTION_PTC")
    by_time = Counter(round(s.exposure_time, 6) for s in specs)
    n_det = len(mini_dataset.detectors)
    c = plan.counts()
    assert c["cpLinearizerIsr"] == len(specs) * n_det
    assert c["cpLinearizerPtcExtractPair"] == sum(n // 2 for n in by_time.values()) * n_det
    assert c["cpLinearizerSolve"] == n_det
    assert any(q.kind == "linearitySolve" for q in plan.quanta.values())
    with pytest.raises(PlanningError, match="linearizer"):
        plan_template("bps_cti", environ=env, repo=repo)


def _on_a_terminal(args: list, env: dict, cwd) -> str:
    """Run ``python -m cpframe ARGS`` with stderr on a real pseudo-terminal (120 columns); what it drew."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(env, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]), TERM="xterm",
               PYTHONIOENCODING="utf-8")  # a bar of "━", whatever the machine's locale
    for k in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich's overrides of what a terminal is
        env.pop(k, None)
    p = subprocess.Popen([sys.executable, "-m", "cpframe", *args], stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    out, _ = p.communicate(timeout=600)
    os.close(master)
    assert p.returncode == 0, (out, drawn[-2000:])
    return drawn.decode(errors="replace")


def test_plan_draws_progress_on_a_terminal_only_and_not_with_quiet(repo, env, tmp_path):
    """Issue 16: ``cpframe plan`` shows its stages as a bar on a terminal; ``--quiet`` and logs stay silent."""
    from click.testing import CliRunner

    from cpframe.cli import main

    drawn = _on_a_terminal(["plan", "bps_biasBootstrap"], env, tmp_path)
    assert "━" in drawn and "plan: " in drawn, drawn[-2000:]
    assert "nothing was run" in drawn  # the summary line is still there (stderr)
    quiet = _on_a_terminal(["plan", "bps_biasBootstrap", "--quiet"], env, tmp_path)
    assert "━" not in quiet and "plan: " not in quiet and "nothing was run" in quiet
    logged = CliRunner().invoke(main, ["plan", "bps_biasBootstrap"], env=env)  # not a terminal
    assert logged.exit_code == 0 and "━" not in logged.output and "plan: " not in logged.output
