"""After the build, on the demo repository: review and approval (with waivers), deployment, the
ledger page, curated text extracted from the built products, and daily monitoring.

One module fixture runs ``cpframe demo`` at its smallest size with the broken saturated flat
(real simulator, SQLite, LocalCluster, verification, report): its own set ``DEMO-1`` passes and is
deployed by the demo (an explicit override), the broken set ``DEMO-1-SAT`` fails its flat tests.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from cpframe.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the demo alone takes minutes on a loaded machine

GOOD = "LSSTComCam/calib/DEMO-1"
BAD = "LSSTComCam/calib/DEMO-1-SAT"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from cpframe.campaign.demo import run_demo
    from cpframe.core.config import load_settings
    from cpframe.execution.cluster import open_cluster

    oc = open_cluster(load_settings({"n_workers": 2, "cluster_kind": "local"}))
    try:
        res = run_demo(tmp_path_factory.mktemp("lcdemo") / "demo", detectors=[4], bands=["r"],
                       broken="saturated-flat", client=oc.client)
    finally:
        oc.close()
    return res


def _cli(args, user):
    return CliRunner().invoke(main, args, env={"CPFRAME_USER": user})


def test_demo_ends_with_its_ledger_state_and_the_next_command(demo):
    text = demo.summary()
    assert f"Ledger: {GOOD} is deployed (deployed by the demo as an explicit override" in text
    assert f"Next step: cpframe review submit {demo.repo_root} {GOOD}" in text
    assert [r.state for r in demo.ledger.transitions] == ["generated", "verified", "certified", "deployed"]


def test_review_of_the_broken_set_needs_a_waiver_per_failing_test(demo):
    root = str(demo.repo_root)
    res = _cli(["review", "submit", root, BAD], "alice")
    assert res.exit_code == 0, res.output
    failing = re.search(r"failing tests \(each needs --waive TEST=reason to approve\): (.*)", res.output).group(1)
    tests = failing.split(", ")
    assert "flat-r:NOISE" in tests and all(t.startswith("flat-r:") for t in tests)
    res = _cli(["review", "approve", root, BAD, "--ticket", "DM-2"], "bob")
    assert res.exit_code == 2 and f"{len(tests)} failing test(s) without a waiver" in res.output
    waives = [a for t in tests[1:] for a in ("--waive", f"{t}=accepted for the test")]
    res = _cli(["review", "approve", root, BAD, "--ticket", "DM-2", *waives], "bob")
    assert res.exit_code == 2 and f"1 failing test(s) without a waiver: {tests[0]}" in res.output
    res = _cli(["review", "reject", root, BAD, "--why", "a saturated flat is in the selection; drop it"], "bob")
    assert res.exit_code == 0 and "under_review -> rejected by bob" in res.output
    res = _cli(["deploy", "--repo", root, "--instrument", "LSSTComCam", "--chain", BAD, "--raw-collection",
                "LSSTComCam/raw/all", "--yes"], "carol")
    assert res.exit_code == 2 and "it is 'rejected', not 'approved'" in res.output


def test_good_set_reviewed_after_the_fact_then_deployed_and_listed(demo, tmp_path):
    root = str(demo.repo_root)
    assert _cli(["review", "submit", root, GOOD], "alice").exit_code == 0
    res = _cli(["review", "approve", root, GOOD, "--ticket", "DM-3"], "bob")
    assert res.exit_code == 0, res.output
    res = _cli(["deploy", "--repo", root, "--instrument", "LSSTComCam", "--chain", GOOD, "--raw-collection",
                "LSSTComCam/raw/all", "--yes", "--ticket", "DM-4"], "carol")
    assert res.exit_code == 0 and "self-check PASS" in res.output and "is deployed; next: cpframe distribute" in res.output
    res = _cli(["ledger", root, "--html", str(tmp_path / "ledger.html")], "carol")
    assert res.exit_code == 0, res.output
    assert re.search(rf"^{re.escape(GOOD)} +deployed +\S+ +carol +reports/DEMO-1/", res.output, re.M), res.output
    page = (tmp_path / "ledger.html").read_text()
    assert page.count('<tr class="set"') >= 2 and f'data-set="{GOOD}" data-state="deployed"' in page


def test_distribute_the_approved_demo_set_to_a_site(demo, tmp_path):
    """Runs after the good set was approved and deployed (the test above)."""
    import yaml

    from cpframe.campaign.lifecycle import set_status
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository

    site = Repository.create(tmp_path / "site")
    try:
        site.register_instrument("LSSTComCam", scale="mini")
        report = ingest_raws(site, sorted((demo.directory / "raw").rglob("*.fits")), transfer="symlink")
        assert not report.failed
    finally:
        site.close()
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump({"archive": str(tmp_path / "archive"),
                                     "sites": [{"name": "site", "repo": str(tmp_path / "site")}]}))
    res = _cli(["distribute", str(demo.repo_root), GOOD, "--sites", str(sites)], "dora")
    assert res.exit_code == 0, res.output
    assert re.search(r"site: self-check PASS: exposure \d+ picks the new calibration for 5/5 lookups", res.output)
    with Repository.open(demo.repo_root) as repo:
        st = set_status(repo, GOOD)
    assert st.state == "distributed" and st.sites["site"] == "checked"
    with Repository.open(tmp_path / "site") as site:
        assert site.registry.get_chain("LSSTComCam/calib") == (GOOD,)


def test_curated_text_from_the_built_defects(demo, tmp_path):
    from cpframe.camera.curated import read_defects
    from cpframe.campaign.curated_text import validate
    from cpframe.repository.repo import Repository

    root = str(demo.repo_root)
    run = f"{GOOD}/demo/defectGen.20241111a"
    res = _cli(["curated", "extract", "defects", "--repo", root, "--out", str(tmp_path / "cur"), "--from", run,
                "--valid-from", "2024-11-01T00:00:00"], "alice")
    assert res.exit_code == 0, res.output
    out = tmp_path / "cur" / "LSSTComCam" / "manual_defects_R22_S11_20241101T000000.ecsv"
    with Repository.open(root) as repo:
        (ref,) = repo.registry.query_datasets("defects", collections=[run], find_first=True)
        built, _ = read_defects(repo.get_path(ref))
    got, meta = read_defects(out)
    assert got == built and meta["scale"] == "mini" and len(got) > 0
    (tmp_path / "cur" / "LSSTComCam" / "curated.yaml").write_text("manual_defects: {scale: mini}\n")
    assert validate(tmp_path / "cur").ok


def test_verify_daily_history_trend_and_metrics(demo, tmp_path):
    root = str(demo.repo_root)
    hist = tmp_path / "daily.ecsv"
    for night in (20241110, 20241126):
        res = _cli(["verify-daily", root, "--instrument", "LSSTComCam", "--day-obs", str(night), "--collections",
                    "LSSTComCam/calib", "--history", str(hist), "--trend", str(tmp_path / "trend"),
                    "--metrics", str(tmp_path / "m.prom"), "--min-nights", "1"], "ops")
        assert res.exit_code in (0, 7), res.output
        assert "monitor: " in res.output and "trend report:" in res.output
    page = (tmp_path / "trend" / "index.html").read_text()
    assert "2 night(s): 20241110 .. 20241126" in page and 'data-plots="7"' in page
    assert (tmp_path / "trend" / "bias_noise.png").stat().st_size > 10000
    prom = (tmp_path / "m.prom").read_text()
    n = len(re.findall(r'^cpframe_daily_metric\{instrument="LSSTComCam",stage="(BIAS|DARK|FLAT)",detector="4"',
                       prom, re.M))
    assert n == 16 * (3 + 2 + 2)  # 16 amps x monitored metrics of the three stages
