"""End-to-end: `cpframe demo` at its smallest size, and a campaign resumed after a failure.

One module fixture runs the demo once (one mini detector, the g band, plus the broken
saturated flat): real simulator, SQLite repository, LocalCluster, submit engine,
verification and report.  The tests then look at what it left behind, and run further
campaigns on the same repository (resume after a failure, a second demo run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.core.errors import CampaignError
from tests.fixtures.verify import failure_links, look_at_report, verdict_order

pytestmark = [pytest.mark.slow]

DETECTOR = 4


@pytest.fixture(scope="module")
def cluster():
    from cpframe.execution.cluster import open_cluster
    from cpframe.core.config import load_settings

    oc = open_cluster(load_settings({"n_workers": 2, "cluster_kind": "local"}))
    yield oc.client
    oc.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cluster):
    from cpframe.campaign.demo import run_demo

    d = tmp_path_factory.mktemp("demo") / "demo"
    lines: list[str] = []
    res = run_demo(
        d, detectors=[DETECTOR], bands=["r"], broken="saturated-flat", client=cluster, echo=lines.append
    )
    return res, lines


def _repo(res):
    from cpframe.repository.repo import Repository

    return Repository.open(res.repo_root)


def _verdict_rows(index: Path) -> dict[str, tuple[str, str]]:
    """calibration -> (row class, verdict cell class) from the report's #verdicts table."""
    html = index.read_text()
    table = html[html.index('id="verdicts"') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r'<tr class="(\w+)"><td><a href="#(\w+)">\w+</a></td><td class="(\w*)">', table)
    return {name: (tr, td) for tr, name, td in rows}


def test_demo_every_product_passes(demo):
    res, lines = demo
    assert set(res.verdicts) == {"bias", "dark", "flat-r", "defects", "ptc", "science"}, res.summary()
    assert all(ok for ok, _ in res.verdicts.values()), res.summary()
    assert res.passed and "RESULT: all products pass verification" in res.summary()
    rows = _verdict_rows(res.report_index)
    for name in ("bias", "dark", "flat", "defects", "ptc"):
        assert rows[name] == ("pass", "pass"), (name, rows)
    assert 'class="verdict pass">PASS</span>' in res.report_index.read_text()


def test_demo_products_match_the_injected_truth(demo):
    """The deployed PTC gains are the simulator's gains (independent of the verification code)."""
    from astropy.table import Table

    from cpframe.camera.simulate import Truth

    res, _ = demo
    truth = Truth.load(res.directory / "raw" / "truth")
    repo = _repo(res)
    try:
        ref = repo.registry.find_calibration(
            "ptc",
            {"instrument": "LSSTComCam", "detector": DETECTOR},
            ["LSSTComCam/defaults"],
            res.deploy.exposure,
        )
        assert ref is not None and "ptcGen" in ref.run
        table = Table.read(repo.get_path(ref), hdu="PTC")
    finally:
        repo.close()
    amps = truth.detectors[DETECTOR].amps
    gains = np.array([row["gain"] for row in table])
    want = np.array([amps[str(row["amp"]).strip()].gain for row in table])
    assert len(gains) == 16
    np.testing.assert_allclose(gains, want, rtol=0.05)


def test_broken_saturated_flat_fails_the_flat_test_in_red(demo):
    from cpframe.camera.simulate import read_plan

    res, _ = demo
    b = res.broken
    assert (b.kind, b.band) == ("saturated-flat", "r") and res.broken_detected
    # the saturated exposure is new: one past the plan's last exposure of that night
    plan = read_plan("demo")
    night = [s for s in plan.specs if s.day_obs == b.exposure_id // 100000]
    assert b.exposure_id == night[0].day_obs * 100000 + max(s.seq_num for s in night) + 1
    ok, failures = b.verdicts["flat-r"]
    assert not ok and failures
    # only the saturated exposure fails, on the flat noise test (a clipped image has no Poisson noise)
    assert all(f.startswith(f"{b.exposure_id}: ") for f in failures), failures
    assert any(f.endswith(" NOISE") for f in failures), failures
    index = b.report_index
    rows = _verdict_rows(index)
    assert rows["flat"] == ("fail", "fail")
    html = index.read_text()
    assert 'class="verdict fail">FAIL</span>' in html
    assert re.search(r'<tr class="fail"><td><a href="#flat">', html)
    css = (index.parent / "assets" / "report.css").read_text()
    fail_colour = re.search(r"--fail:\s*(#[0-9a-f]{6})", css).group(1)
    r, g, b = (int(fail_colour[i : i + 2], 16) for i in (1, 3, 5))
    assert r > 150 and g < 60 and b < 60  # red
    # the demo's own, deployed flat is unaffected
    assert res.verdicts["flat-r"][0]


@pytest.mark.browser
def test_demo_reports_as_a_reviewer_sees_them(demo, chromium, tmp_path):
    """Issue 16 on a real campaign run, not a made-up repository: the demo's report and the broken
    campaign's report in a real browser at 1280 px (tests.fixtures.verify.look_at_report: every
    image of every page loads, nothing scrolls sideways, mosaics use the width, plots sit side by
    side).  The broken one lists the saturated exposure's failures first, and each failure links
    to that exposure's anchor on the per-exposure page with its residual mosaic under it (a
    binned preview: the full-size verification ISR images are not kept in the RUN).
    Screenshots go to $CPFRAME_SCREENSHOTS when set."""
    from cpframe.repository.repo import Repository

    res, _ = demo
    good = res.report_index.parent
    look_at_report(chromium, good, tmp_path, min_images=15)
    verdicts, tests = verdict_order(good / "index.html")
    assert {c for c, _ in verdicts} == {"pass"} and {c for c, _, _ in tests} == {"pass"}
    b = res.broken
    bad = b.report_index.parent
    look_at_report(chromium, bad, tmp_path, min_images=5, shoot=("index", "flat_exp"))
    verdicts, tests = verdict_order(bad / "index.html")
    assert verdicts[0] == ("fail", "flat"), verdicts
    assert [c for c, _, _ in tests[:2]] == ["fail", "fail"] and {t for _, t, _ in tests[:2]} == {"NOISE", "SATURATION"}
    assert "fail" not in [c for c, _, _ in tests[2:]], tests
    hrefs = failure_links(bad)
    assert set(hrefs) == {("flat_exp.html", f"exp{b.exposure_id}")}, hrefs
    # the plot under the failing exposure is the preview of its own residual, registered in the RUN
    with Repository.open(res.repo_root) as repo:
        refs = repo.registry.query_datasets("verifyFlatPreview", "*DEMO-1-SAT*verifyFlat*")
    assert b.exposure_id in {int(r.data_id["exposure"]) for r in refs}, refs


@pytest.mark.parametrize("kind", ["light-leak", "noisy"])
def test_broken_light_leak_and_noisy_fail_their_named_test(demo, cluster, kind, tmp_path):
    """The other --broken kinds, on the demo fixture's repository (its good calibrations): the
    bad exposure is simulated and ingested, and the kind's broken campaign rebuilds and verifies
    its product; that exposure fails the named test (cpframe.campaign.demo.BROKEN_KINDS)."""
    from cpframe.camera.simulate import read_plan
    from cpframe.campaign import demo as demo_mod
    from cpframe.campaign.runner import run_campaign
    from cpframe.core.config import load_settings

    res, _ = demo
    plan = read_plan("demo")
    specs, selections, bad_selections, bad = demo_mod._demo_specs(plan, ["r"], kind)
    # the fixture's repository already holds the saturated flat under the same new id: move this one on
    from dataclasses import replace

    from cpframe.core.model import ns_to_iso

    step = {"light-leak": 1, "noisy": 2}[kind]
    moved = replace(bad, seq_num=bad.seq_num + step, begin=ns_to_iso(bad.begin_ns + step * 120 * 10**9))
    bad_selections = {k: v.replace(f"exposure.seq_num={bad.seq_num})", f"exposure.seq_num={moved.seq_num})")
                      for k, v in bad_selections.items()}
    assert all(f"seq_num={moved.seq_num})" in v for v in bad_selections.values())
    bad = moved
    opts = {"scale": "mini", "detectors": [DETECTOR], "seed": 1}
    raw = tmp_path / "raw"
    files = demo_mod._simulate([bad] if kind != "noisy" else [], raw, opts, 2, lambda m: None,
                               noisy=bad if kind == "noisy" else None)
    with _repo(res) as repo:
        demo_mod._ingest(repo, files, "LSSTComCam/raw/all")
    good = demo_mod.demo_campaign(res.repo_root, ["r"], selections, [DETECTOR], demo_mod._needs_flat_of(plan))
    broken = demo_mod.broken_campaign(res.repo_root, good, bad_selections, kind)
    run_campaign(broken, client=cluster, settings=load_settings({"n_workers": 2, "cluster_kind": "local"}))
    with _repo(res) as repo:
        verdicts = demo_mod.verification_verdicts(broken, repo)
    want = demo_mod.BROKEN_KINDS[kind]
    ok, failures = verdicts[want.product]
    assert not ok and failures
    assert f"{want.test}" in {f.rsplit(" ", 1)[1] for f in failures if f.startswith(f"{bad.exposure_id}: ")}, failures
    result = demo_mod.DemoResult(res.directory, res.repo_root, None, broken=demo_mod.BrokenInput(
        kind, bad.exposure_id, "", verdicts, None))
    assert result.broken_detected and f"{want.product} {want.test} failed" in result.summary()


def test_deploy_self_check(demo):
    res, _ = demo
    assert res.deploy.ok, res.deploy.format()
    types = {c.dataset_type for c in res.deploy.checks}
    assert types == {"bias", "dark", "defects", "flat", "ptc"}
    assert all(c.n_checked == c.n_ok == 1 for c in res.deploy.checks)
    repo = _repo(res)
    try:
        assert repo.registry.get_chain("LSSTComCam/calib")[0] == "LSSTComCam/calib/DEMO-1"
        assert repo.registry.get_chain("LSSTComCam/defaults")[:2] == (
            "LSSTComCam/raw/all",
            "LSSTComCam/calib",
        )
        # the broken campaign was never deployed
        assert "LSSTComCam/calib/DEMO-1-SAT" not in repo.registry.flatten(["LSSTComCam/calib"])
    finally:
        repo.close()


def test_construction_record(demo):
    res, _ = demo
    record_dir = res.campaign.directory
    sh = (record_dir / "commands.sh").read_text()
    assert "export TICKET=DEMO-1" in sh and "export SELECTION_BIAS=\"(instrument='LSSTComCam'" in sh
    assert re.search(r"^cpframe submit \S+/templates/bps_bias\.yaml$", sh, re.M)
    assert re.search(
        r"^cpframe certify-calibrations \S+ LSSTComCam/calib/DEMO-1/demo/defectGen\.20241111a "
        r"LSSTComCam/calib/DEMO-1/demo/defects\.20241111a defects --begin-date 2024-11-01T00:00:00$",
        sh,
        re.M,
    )
    assert re.search(
        r"^cpframe collection-chain \S+ --mode redefine LSSTComCam/calib/DEMO-1 "
        r"LSSTComCam/calib/DEMO-1/demo/defects\.20241111a$",
        sh,
        re.M,
    )
    assert re.search(
        r"^cpframe collection-chain \S+ --mode prepend LSSTComCam/calib/DEMO-1 "
        r"LSSTComCam/calib/DEMO-1/demo/flat-r\.20241111a$",
        sh,
        re.M,
    )
    assert re.search(r"^cpframe report \S+ -c \S+verifyBias\.20241127a", sh, re.M)
    entries = json.loads((record_dir / "record.json").read_text())
    steps = [e for e in entries if "step" in e]
    assert [e["step"] for e in steps] == [s.name for s in res.campaign.campaign.steps]
    assert all(e["outcome"] == "ok" for e in steps)
    repo = _repo(res)
    try:
        for e in steps:
            if e["kind"] == "submit":  # the RUN recorded is the one the registry holds
                assert repo.registry.get_chain(e["outputs"]["output"])[0] == e["outputs"]["run"]
                # submit files stay with the record (also for templates without submitPath)
                assert e["outputs"]["submit_dir"].startswith(str(record_dir / "submit")), e["outputs"]
    finally:
        repo.close()


def _runs(repo) -> set[str]:
    from cpframe.core.model import CollectionType

    return {c.name for c in repo.registry.query_collections("*", types=[CollectionType.RUN])}


def test_campaign_resumes_after_a_failure_finishing_only_what_was_left(demo, cluster):
    """certify-dark fails once (its CALIBRATION name is taken by a RUN); --resume finishes the rest."""
    from cpframe.campaign.runner import CampaignState, campaign_dir, load_campaign, run_campaign
    from cpframe.core.model import CollectionType
    from cpframe.execution.templates import default_templates_dir

    res, _ = demo
    text = (default_templates_dir() / "campaign_demo.yaml").read_text()
    import yaml

    doc = yaml.safe_load(text)
    doc["name"] = "resume-test"
    doc["steps"] = [
        s
        for s in doc["steps"]
        if s["name"]
        in ("bias", "certify-bias", "dark", "certify-dark", "verify-bias", "verify-dark", "report")
    ]
    path = res.directory / "resume-test.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    camp = load_campaign(
        path,
        {
            "REPO": str(res.repo_root),
            "TICKET": "DEMO-R",
            "CALIB_COLLECTIONS": "LSSTComCam/calib/DEMO-1,LSSTComCam/calib/DEMO-1/curated",
        },
    )
    blocker = camp.step("certify-dark").output
    repo = _repo(res)
    repo.registry.register_collection(blocker, CollectionType.RUN)
    repo.close()

    with pytest.raises(
        CampaignError,
        match=r"(?s)step 4 'certify-dark' \(certify\) failed: .*is a RUN collection.*"
        r"Fix the cause, then run: cpframe campaign .*--resume",
    ):
        run_campaign(camp, client=cluster)
    state = CampaignState.load(campaign_dir(camp))
    assert [state.get(n).get("status") for n in ("bias", "certify-bias", "dark", "certify-dark")] == [
        "done",
        "done",
        "done",
        "failed",
    ]
    assert state.get("verify-bias") == {}
    repo = _repo(res)
    runs_before = _runs(repo)
    bias_chain = repo.registry.get_chain(camp.step("bias").gen_output)
    dark_refs = {r.id for r in repo.registry.query_datasets("dark", collections=[state.get("dark")["run"]])}
    repo.remove_runs([blocker])
    repo.close()

    # starting again without saying how is refused
    with pytest.raises(
        CampaignError, match=r"(?s)already started .*\(3 of 7 steps done; certify-dark failed\).*--resume"
    ):
        run_campaign(camp, client=cluster)
    result = run_campaign(camp, resume=True, client=cluster)
    status = {o.name: o.status for o in result.outcomes}
    assert status == {
        "bias": "skipped",
        "certify-bias": "skipped",
        "dark": "skipped",
        "certify-dark": "ran",
        "verify-bias": "ran",
        "verify-dark": "ran",
        "report": "ran",
    }
    assert result.report_index.is_file()
    repo = _repo(res)
    try:
        new_runs = _runs(repo) - runs_before
        # only the verification RUNs are new: bias and dark were not re-created
        assert len(new_runs) == 2 and all("/verify" in r for r in new_runs), new_runs
        assert repo.registry.get_chain(camp.step("bias").gen_output) == bias_chain
        certified = {r.id for r in repo.registry.query_certifications(blocker, "dark")}
        assert certified == dark_refs
        assert repo.registry.get_chain(camp.ticket_chain)[:2] == (blocker, camp.step("certify-bias").output)
    finally:
        repo.close()
    sh = (campaign_dir(camp) / "commands.sh").read_text()
    assert sh.count("(resume)") == 1 and "-> failed" in sh and "-> skipped" in sh
    # a restart would collide with the outputs of these reruns
    with pytest.raises(CampaignError, match=r"(?s)--restart would redo .*--var RERUN=20241111b"):
        run_campaign(camp, restart=True, client=cluster)

    # the state file is only a cache: without it, --resume finds every step done in the registry
    (campaign_dir(camp) / "state.json").unlink()
    args = [
        "campaign",
        str(path),
        "--resume",
        "--var",
        f"REPO={res.repo_root}",
        "--var",
        "TICKET=DEMO-R",
        "--var",
        "CALIB_COLLECTIONS=LSSTComCam/calib/DEMO-1,LSSTComCam/calib/DEMO-1/curated",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    # (the report has no registry output: without the state file it is written again)
    assert "[done]" in r.output and "7 steps, 6 done, 1 to run." in r.output
    assert "campaign 'resume-test': 1 ran, 6 skipped" in r.output and "construction record:" in r.output
    state = CampaignState.load(campaign_dir(camp))
    assert all(state.get(s.name).get("recovered") for s in camp.steps if s.kind != "report")
    repo = _repo(res)
    try:
        assert _runs(repo) == (runs_before - {blocker}) | new_runs
    finally:
        repo.close()


def test_an_incomplete_run_is_finished_in_place(demo, cluster):
    """A submission killed before its provenance said 'complete' is finished, not redone in a new RUN."""
    from cpframe.campaign.runner import run_campaign

    res, _ = demo
    camp = res.campaign.campaign
    out = camp.step("dark").gen_output
    repo = _repo(res)
    run = repo.registry.get_chain(out)[0]
    records = repo.registry.get_run_info(run)["records"]
    records[-1]["status"] = "interrupted"
    repo.registry.set_run_info(run, {"records": records})
    runs = _runs(repo)
    repo.close()
    lines: list[str] = []
    result = run_campaign(camp, resume=True, client=cluster, echo=lines.append)
    ran = {o.name: o.detail for o in result.outcomes if o.status == "ran"}
    assert list(ran) == ["dark"] and ran["dark"].startswith(f"RUN {run}:")
    assert any(f"finishing the incomplete RUN {run} (--extend-run --skip-existing)" in ln for ln in lines)
    repo = _repo(res)
    try:
        assert repo.registry.get_chain(out)[0] == run and _runs(repo) == runs
        statuses = [r["status"] for r in repo.registry.get_run_info(run)["records"]]
        assert statuses[-2:] == ["interrupted", "complete"]
    finally:
        repo.close()
    sh = (result.directory / "commands.sh").read_text()
    assert re.search(r"^cpframe submit \S+/bps_dark\.yaml --extend-run --skip-existing$", sh, re.M)


def test_demo_again_resumes_without_redoing_anything(demo, cluster):
    from cpframe.campaign.demo import run_demo

    res, _ = demo
    repo = _repo(res)
    runs = _runs(repo)
    repo.close()
    again = run_demo(
        res.directory, detectors=[DETECTOR], bands=["r"], broken="saturated-flat", client=cluster
    )
    assert {o.status for o in again.campaign.outcomes} == {"skipped"}
    repo = _repo(res)
    try:
        assert _runs(repo) == runs
    finally:
        repo.close()
    assert again.passed and again.broken_detected


def test_demo_refuses_other_options_in_the_same_directory(demo):
    res, _ = demo
    r = CliRunner().invoke(main, ["demo", str(res.directory), "--detectors", "0"])
    assert r.exit_code == 2 and "holds a demo made with other options" in r.output and "--force" in r.output
    r = CliRunner().invoke(main, ["demo", str(res.directory / "other"), "--bands", "q"])
    assert r.exit_code == 2 and "--bands q: the demo plan has flats in g, i, r only" in r.output
    r = CliRunner().invoke(main, ["demo", str(res.directory / "other2"), "--detectors", "99"])
    assert r.exit_code == 2 and "no detector" in r.output


def test_demo_command_fails_when_the_broken_input_is_not_caught(monkeypatch, tmp_path):
    # no demo run: run_demo is replaced by one whose broken campaign's flat verification passed
    import cpframe.campaign.demo
    from cpframe.cli._campaign import demo_command
    from cpframe.campaign.demo import BROKEN_INPUTS, BrokenInput, DemoResult

    choices = next(p for p in demo_command.params if p.name == "broken").type.choices
    assert set(choices) == {"none", *BROKEN_INPUTS}
    index = tmp_path / "sat" / "index.html"
    broken = BrokenInput("saturated-flat", 1, "r", {"flat-r": (True, [])}, index)
    fake = DemoResult(tmp_path, tmp_path / "repo", tmp_path / "index.html", verdicts={"bias": (True, [])},
                      broken=broken)
    monkeypatch.setattr(cpframe.campaign.demo, "run_demo", lambda *a, **k: fake)
    r = CliRunner().invoke(main, ["demo", str(tmp_path), "--broken", "saturated-flat"])
    assert r.exit_code == 7, r.output
    assert f"verification did not catch the broken input (saturated-flat); see {index}" in r.output
