"""The approval lifecycle and its ledger (cpframe.campaign.lifecycle, cpframe.repository.ledger).

A small calibration set is built in a real repository (SQLite file, or a schema on the
test PostgreSQL server): a generation RUN, its certification into the ticket chain, a
verification summary with one failing test, a report.  The tests move it through
review, approval and deployment with the CLI, and tamper with the ledger with plain SQL.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cpframe.campaign import lifecycle as L
from cpframe.cli import main
from cpframe.core.errors import LedgerTamperedError, LifecycleError
from cpframe.core.model import CollectionType, DatasetType
from cpframe.repository.ledger import GENESIS, Ledger, row_hash

P = "LSSTComCam/calib/DM-1"
T = P + "/test"
RAW = "LSSTComCam/raw/all"
DEPLOY = ["--instrument", "LSSTComCam", "--chain", P, "--raw-collection", RAW]


def _exposure(day_obs, seq, begin):
    from cpframe.core.model import Timespan, parse_tai

    b = parse_tai(begin)
    return {"instrument": "LSSTComCam", "id": day_obs * 100000 + seq, "obs_id": f"CC_O_{day_obs}_{seq:06d}",
            "day_obs": day_obs, "seq_num": seq, "physical_filter": "r_03", "observation_type": "bias",
            "observation_reason": "bias", "science_program": "test", "exposure_time": 0.0, "dark_time": 0.0,
            "timespan": Timespan(b, b + 10**9)}


def build_set(repo, tmp_path, failing=("R22_S11 C10 NOISE",)):
    """Generation RUN -> certified bias in P; verification summary (failing tests); report."""
    from cpframe.verify.results import write_stats

    repo.register_instrument("LSSTComCam", scale="mini")
    reg = repo.registry
    reg.insert_exposures([_exposure(20241110, 7, "2024-11-10T20:00:00")])
    reg.register_collection(RAW, CollectionType.RUN)
    run = T + "/biasGen.20250101a/20250101T000000Z"
    reg.register_collection(run, CollectionType.RUN)
    items = []
    for d in (0, 1):
        f = tmp_path / f"bias{d}.fits"
        f.write_bytes(f"bias {d}".encode())
        items.append((f, "bias", {"instrument": "LSSTComCam", "detector": d}))
    repo.put_files(items, run)
    reg.set_chain(T + "/biasGen.20250101a", [run])
    repo.certify_calibrations(run, T + "/bias.20250101a", "bias", begin_date="2024-11-01")
    reg.set_chain(P, [T + "/bias.20250101a"])
    reg.register_dataset_type(DatasetType("verifyBiasSummary", ("instrument",), False, "json"))
    vrun = T + "/verifyBias.20250102a/20250102T000000Z"
    reg.register_collection(vrun, CollectionType.RUN)
    summary = {"SUCCESS": not failing, "FAILURES": {"2024111000007": list(failing)} if failing else {}}
    repo.put_files([(write_stats(summary, tmp_path / "s.json"), "verifyBiasSummary", {"instrument": "LSSTComCam"})],
                   vrun)
    reg.set_chain(T + "/verifyBias.20250102a", [vrun])
    report = repo.root / "reports" / "DM-1" / "test.20250102a" / "index.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html><body>verification report</body></html>")
    return repo


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def set_repo(request, repo_factory, tmp_path):
    return build_set(repo_factory(request.param), tmp_path)


def _cli(args, user="alice"):
    return CliRunner().invoke(main, args, env={"CPFRAME_USER": user})


def _n_rows(repo) -> int:
    return len(Ledger(repo.registry).rows())


def test_observed_states_then_review_approve_deploy(set_repo):
    root = str(set_repo.root)
    facts = L.observe(set_repo, P)
    assert facts.generated and facts.certified and facts.verified
    assert facts.failing_tests == ["bias:NOISE"] and facts.verdicts == {"bias": False}
    # deploy refuses a set that is not approved; nothing changes
    res = _cli(["deploy", "--repo", root, *DEPLOY, "--yes"])
    assert res.exit_code == 2 and "refusing to deploy 'LSSTComCam/calib/DM-1': it is 'certified'" in res.output
    assert L.set_status(set_repo, P).state == "certified"
    with pytest.raises(Exception):
        set_repo.registry.get_chain("LSSTComCam/calib")
    res = _cli(["review", "submit", root, P])
    assert res.exit_code == 0, res.output
    assert "certified -> under_review by alice" in res.output and "bias:NOISE" in res.output
    st = L.set_status(set_repo, P)
    assert [r.state for r in st.transitions] == ["generated", "verified", "certified", "under_review"]
    assert st.last.report == "reports/DM-1/test.20250102a/index.html" and len(st.last.report_sha256) == 64
    n = _n_rows(set_repo)
    # the submitter cannot approve; a failing test needs a waiver; a waiver must name a failing test
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2"], user="alice")
    assert res.exit_code == 2 and "second person" in res.output and len(res.output.strip().splitlines()) == 1
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2"], user="bob")
    assert res.exit_code == 2 and "1 failing test(s) without a waiver: bias:NOISE" in res.output
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2", "--waive", "bias:NOISE=ok",
                "--waive", "bias:MEAN=typo"], user="bob")
    assert res.exit_code == 2 and "bias:MEAN: not a failing test" in res.output
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2", "--waive", "bias:NOISE"], user="bob")
    assert res.exit_code == 2 and "PRODUCT:TEST=reason" in res.output
    assert _n_rows(set_repo) == n  # nothing was written by the refusals
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2", "--waive",
                "bias:NOISE=C10 noise understood (DM-3)"], user="bob")
    assert res.exit_code == 0, res.output
    last = L.set_status(set_repo, P).last
    assert (last.state, last.who, last.ticket) == ("approved", "bob", "DM-2")
    assert last.detail["waivers"] == {"bias:NOISE": "C10 noise understood (DM-3)"}
    res = _cli(["deploy", "--repo", root, *DEPLOY, "--yes", "--ticket", "DM-4"], user="carol")
    assert res.exit_code == 0, res.output
    assert "self-check PASS" in res.output and f"ledger: {P} is deployed" in res.output
    st = L.set_status(set_repo, P)
    assert (st.state, st.last.who, st.last.ticket, st.override) == ("deployed", "carol", "DM-4", False)
    assert set_repo.registry.get_chain("LSSTComCam/calib")[0] == P
    # the CLI table and the history
    res = _cli(["ledger", root])
    assert res.exit_code == 0 and re.search(r"LSSTComCam/calib/DM-1 +deployed +\S+ +carol", res.output), res.output
    res = _cli(["ledger", root, P])
    assert res.exit_code == 0 and "approved     under_review bob   DM-2" in res.output, res.output


def test_wrong_transitions_are_refused(set_repo, tmp_path):
    root = str(set_repo.root)
    with pytest.raises(LifecycleError, match="unknown calibration set 'nosuch/x'"):
        L.submit(set_repo, "nosuch/x")
    n = _n_rows(set_repo)
    # each bad input at the command line: one line, exit 2, no row appended
    for args in (["review", "submit", root, "nosuch/x"], ["review", "approve", root, "nosuch/x", "--ticket", "DM-2"],
                 ["ledger", root, "nosuch/x"]):
        res = _cli(args, user="bob")
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, (args, res.output)
        assert "unknown calibration set 'nosuch/x'" in res.output, (args, res.output)
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2"], user="bob")
    assert res.exit_code == 2 and "cannot approve 'LSSTComCam/calib/DM-1': it is 'certified'" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert _n_rows(set_repo) == n
    res = _cli(["review", "reject", root, P, "--why", "no"], user="bob")
    assert res.exit_code == 2 and "it is 'certified'" in res.output and len(res.output.strip().splitlines()) == 1
    assert _n_rows(set_repo) == n
    L.submit(set_repo, P, who="alice")
    with pytest.raises(LifecycleError, match="is 'under_review'"):
        L.submit(set_repo, P, who="alice")
    # the report judged on must not change between submission and approval
    (set_repo.root / "reports/DM-1/test.20250102a/index.html").write_text("<html>edited</html>")
    with pytest.raises(LifecycleError, match="missing or changed since the submission"):
        L.approve(set_repo, P, ticket="DM-2", who="bob", waivers={"bias:NOISE": "fine"})
    st = L.reject(set_repo, P, why="report edited after submission", who="bob")
    assert st.state == "rejected" and st.last.detail["submitted_by"] == "alice"
    st = L.submit(set_repo, P, who="alice", why="report rebuilt")  # resubmission after rejection
    assert st.state == "under_review"
    with pytest.raises(LifecycleError, match="approval ticket"):
        L.approve(set_repo, P, ticket=" ", who="bob")


def test_override_is_recorded_with_who_and_why(set_repo):
    res = _cli(["deploy", "--repo", str(set_repo.root), *DEPLOY, "--yes", "--override-approval",
                "night-time emergency, review tomorrow"], user="dora")
    assert res.exit_code == 0, res.output
    assert "OVERRIDE recorded" in res.output
    st = L.set_status(set_repo, P)
    assert st.state == "deployed" and st.override
    assert st.last.detail["override"] == {"who": "dora", "why": "night-time emergency, review tomorrow"}
    assert st.next_step().startswith("cpframe review submit")
    # an overridden set can still be reviewed after the fact
    assert L.submit(set_repo, P, who="dora").state == "under_review"


def _sql(repo, *statements):
    with repo.registry.engine.connect() as conn, conn.begin():
        for stmt in statements:
            conn.exec_driver_sql(stmt)


def test_database_refuses_update_and_delete(set_repo):
    L.record_observed(set_repo, P)
    for stmt in ("UPDATE lifecycle_event SET who = 'mallory'", "DELETE FROM lifecycle_event"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            _sql(set_repo, stmt)
    # two rows cannot follow the same row (no fork of the chain)
    first = Ledger(set_repo.registry).rows()[0]
    with pytest.raises(sa.exc.IntegrityError):
        _sql(set_repo, "INSERT INTO lifecycle_event (set_name, state, previous, site, who, at, why, report, "
                       "report_sha256, ticket, detail, prev_hash, hash) VALUES ('x', 'generated', '', '', 'm', 'now', "
                       f"'', '', '', '', '{{}}', '{first.prev_hash}', 'f00')")


def test_tampered_row_is_detected_and_nothing_changes(set_repo):
    root = str(set_repo.root)
    L.submit(set_repo, P, who="alice")
    rows = Ledger(set_repo.registry).rows()
    # an administrator drops the guard and edits who approved... the hash chain catches it
    drop = ("DROP TRIGGER lifecycle_event_no_update" if set_repo.registry.engine.dialect.name == "sqlite"
            else "DROP TRIGGER lifecycle_event_append_only ON lifecycle_event")
    _sql(set_repo, drop, f"UPDATE lifecycle_event SET who = 'mallory' WHERE id = {rows[1].id}")
    res = _cli(["ledger", root])
    assert res.exit_code == 3 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"ledger row {rows[1].id} (set '{P}', state 'verified')" in res.output and "content was edited" in res.output
    res = _cli(["review", "approve", root, P, "--ticket", "DM-2", "--waive", "bias:NOISE=x"], user="bob")
    assert res.exit_code == 3 and "does not match its hash chain" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    with set_repo.registry.engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT count(*) FROM lifecycle_event").scalar()
    assert n == len(rows)  # nothing was appended
    # cpframe put the guard back when it next opened the ledger
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        _sql(set_repo, f"UPDATE lifecycle_event SET who = 'alice' WHERE id = {rows[1].id}")
    _sql(set_repo, drop, f"UPDATE lifecycle_event SET who = 'alice' WHERE id = {rows[1].id}")
    assert Ledger(set_repo.registry).verify() == len(rows)  # restored: intact again
    drops = (["DROP TRIGGER lifecycle_event_no_delete", "DROP TRIGGER lifecycle_event_no_update"]
             if set_repo.registry.engine.dialect.name == "sqlite" else [drop])
    _sql(set_repo, *drops, f"DELETE FROM lifecycle_event WHERE id = {rows[2].id}")
    with pytest.raises(LedgerTamperedError, match="does not follow the row before it"):
        Ledger(set_repo.registry).verify()


def test_hash_is_sha256_of_previous_hash_and_canonical_row(sqlite_repo):
    import hashlib

    led = Ledger(sqlite_repo.registry)
    (row,) = led.append([{"set_name": "A/calib/T", "state": "generated", "who": "w", "why": "é"}])
    content = {"set_name": "A/calib/T", "state": "generated", "previous": "", "site": "", "who": "w",
               "at": row.at, "why": "é", "report": "", "report_sha256": "", "ticket": "", "detail": "{}"}
    text = GENESIS + json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert row.hash == hashlib.sha256(text.encode()).hexdigest() == row_hash(GENESIS, content)
    (row2,) = led.append([{"set_name": "A/calib/T", "state": "verified"}])
    assert row2.prev_hash == row.hash and led.head() == row2.hash


def test_ledger_table_is_created_in_a_repository_made_without_it(tmp_path):
    """Repositories from before the ledger open unchanged and get the table on first use."""
    from cpframe.repository.repo import Repository

    repo = Repository.create(tmp_path / "old")
    _sql(repo, "DROP TABLE lifecycle_event")
    repo.close()
    repo = Repository.open(tmp_path / "old")
    try:
        assert Ledger(repo.registry).verify() == 0
        Ledger(repo.registry).append([{"set_name": "x", "state": "generated"}])
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            _sql(repo, "DELETE FROM lifecycle_event")
    finally:
        repo.close()


@pytest.mark.browser
def test_ledger_page_renders_in_headless_chromium(set_repo, chromium, tmp_path):
    L.submit(set_repo, P, who="alice")
    out = tmp_path / "page"
    res = _cli(["ledger", str(set_repo.root), "--html", str(out)])
    assert res.exit_code == 0, res.output
    index = out / "index.html"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
            "--allow-file-access-from-files", "--dump-dom", index.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sets = re.findall(r'<tr class="set" data-set="([^"]+)" data-state="([^"]+)"', dom.stdout)
    assert sets == [(P, "under_review")]
    assert len(re.findall(r'<tr class="event', dom.stdout)) == 4
    assert 'data-ledger-ok="1"' in dom.stdout
    href = re.search(r'<a class="report" href="([^"]+)"', dom.stdout).group(1)
    assert (out / href).resolve() == (set_repo.root / "reports/DM-1/test.20250102a/index.html").resolve()
