"""The registry commands end to end through click (real SQLite repositories; one PostgreSQL run)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.cli._registry import MSG_ABORTED
from cpframe.core.model import CollectionType, Timespan
from cpframe.repository.repo import Repository
from tests.registry_contract import INST, add_exposure, put_bias, sha


def cli(*args, input=None, code=0):
    res = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.output


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "repo"
    out = cli("create", root)
    assert "Created repository" in out and "SQLite" in out
    cli("register-instrument", root, INST, "--scale", "mini")
    with Repository.open(root) as r:
        put_bias(r, "u/run1", range(9), tmp_path)
        put_bias(r, "u/run2", range(3), tmp_path)
    return root


def test_create_twice_and_register_instrument_summary(root, tmp_path):
    assert "already holds a cpframe repository" in cli("create", root, code=3)
    out = cli("register-instrument", root, INST, "--scale", "mini")
    assert "already registered (identical): 9 detectors" in out
    assert "unknown instrument 'HSC'" in cli("register-instrument", root, "HSC", code=2)
    assert "not a cpframe repository" in cli("query-collections", tmp_path / "nope", code=3)


def test_certify_chain_lookup_workflow(root):
    out = cli("certify-calibrations", root, "u/run1", "u/calib/t1", "bias", "--begin-date", "1970-01-01T00:00:00")
    assert "Certified 9 bias dataset(s)" in out and "[-inf, +inf)" in out
    cli("certify-calibrations", root, "u/run2", "u/calib/t2", "bias", "--begin-date", "2024-06-01")
    out = cli("collection-chain", root, "u/calib", "u/calib/t1")
    out = cli("collection-chain", root, "--mode", "prepend", "u/calib", "u/calib/t2")
    assert "0: u/calib/t2\n  1: u/calib/t1" in out
    with Repository.open(root) as r:
        e = add_exposure(r, 20240610, 3, "2024-06-10T00:00:00", "2024-06-10T00:00:30")
        picks = r.registry.find_calibrations("bias", [{"instrument": INST, "detector": d, "exposure": e}
                                                      for d in range(9)], ["u/calib"])
        assert [p.run for p in picks] == ["u/run2"] * 3 + ["u/run1"] * 6
    table = cli("query-collections", root)
    assert "u/calib    CHAINED     u/calib/t2\n                       u/calib/t1" in table
    data = json.loads(cli("query-collections", root, "u/calib*", "--format", "json"))
    assert {d["name"]: d["children"] for d in data}["u/calib"] == ["u/calib/t2", "u/calib/t1"]
    got = json.loads(cli("query-datasets", root, "bias", "--collections", "u/calib/t2", "--format", "json"))
    assert len(got) == 3 and got[0]["valid_from"] == "2024-06-01T00:00:00.000" and got[0]["valid_until"] == "+inf"


def test_certify_errors_exit_codes(root):
    out = cli("certify-calibrations", root, "u/run1", "c", "bias", "--begin-date", "2024-01-01T00:00:00Z", code=2)
    assert "time-zone suffix" in out and "Traceback" not in out
    assert "after it ends" in cli("certify-calibrations", root, "u/run1", "c", "bias", "--begin-date", "2024-02-01",
                                  "--end-date", "2024-01-01", code=2)
    cli("certify-calibrations", root, "u/run1", "c", "bias")
    assert "overlapping validity" in cli("certify-calibrations", root, "u/run1", "c", "bias", code=3)
    assert "not a calibration" in cli("certify-calibrations", root, "u/run1", "c2", "raw", code=3)
    assert "collection name 'c,d' contains ','" in cli("certify-calibrations", root, "u/run1", "c,d", "bias", code=3)


def test_collection_chain_cli_modes(root):
    cli("collection-chain", root, "ch", "u/run1,u/run2", "--doc", "calibs of ticket DM-1")
    assert json.loads(cli("query-collections", root, "ch", "--format", "json"))[0]["doc"] == "calibs of ticket DM-1"
    assert "0: u/run2\n  1: u/run1" in cli("collection-chain", root, "--mode", "extend", "ch", "u/run1")
    assert "0: u/run2\n" in cli("collection-chain", root, "--mode", "pop", "ch", "-1")
    cli("collection-chain", root, "outer", "ch")
    assert "would make a cycle" in cli("collection-chain", root, "--mode", "extend", "ch", "outer", code=3)
    assert "not CHAINED" in cli("collection-chain", root, "u/run1", "ch", code=3)
    assert "itself" in cli("collection-chain", root, "ch", "ch", code=3)
    assert "out of range" in cli("collection-chain", root, "--mode", "pop", "ch", "5", code=2)
    assert "--flatten cannot be combined" in cli("collection-chain", root, "--mode", "remove", "--flatten", "ch",
                                                 "u/run2", code=2)


def test_query_datasets_table_where_and_find_first(root):
    out = cli("query-datasets", root, "bias", "--collections", "u/run2,u/run1", "--find-first",
              "--where", f"instrument='{INST}' and detector in (1, 5)")
    assert "u/run2" in out and "u/run1" in out and "2 dataset(s)." in out
    assert out.count("bias ") == 2
    err = cli("query-datasets", root, "bias", "--where", "detector = ", code=2)
    assert "^" in err and "Traceback" not in err


def test_remove_runs_asks_and_refuses(root, tmp_path):
    cli("certify-calibrations", root, "u/run2", "cal", "bias")
    out = cli("remove-runs", root, "u/run2", code=3)
    assert "certified in CALIBRATION collection(s) cal" in out and "--force" in out
    out = cli("remove-runs", root, "u/run1", input="n\n")
    assert "Will remove:" in out and "RUN u/run1: 9 dataset(s)" in out and MSG_ABORTED in out
    with Repository.open(root) as r:
        paths = [r.get_path(x) for x in r.registry.query_datasets("bias", ["u/run1"])]
    assert len(paths) == 9 and all(p.exists() for p in paths)
    out = cli("remove-runs", root, "u/run1", "--no-confirm")
    assert "Removed 1 RUN(s) and 9 dataset(s)." in out and not any(p.exists() for p in paths)
    out = cli("remove-runs", root, "u/run2", "--force", "--yes")
    assert "drops links in cal" in out
    assert json.loads(cli("query-collections", root, "--format", "json")) == [
        {"name": "cal", "type": "CALIBRATION", "children": [], "doc": ""}]


def test_remove_collections_cli(root):
    cli("certify-calibrations", root, "u/run1", "cal", "bias")
    cli("collection-chain", root, "ch", "cal")
    assert "--remove-from-parents" in cli("remove-collections", root, "cal", "--no-confirm", code=3)
    out = cli("remove-collections", root, "cal", "--remove-from-parents", input="y\n")
    assert "Removed 1 collection(s)." in out
    with Repository.open(root) as r:
        assert r.registry.get_chain("ch") == ()


def test_decertify_cli(root):
    cli("certify-calibrations", root, "u/run2", "cal", "bias", "--begin-date", "2024-01-01")
    out = cli("decertify", root, "cal", "bias", "--begin-date", "2024-03-01", "--end-date", "2024-04-01",
              "--instrument", INST, "--detector", "1", "--yes")
    assert "Changed 1 validity range(s)" in out
    with Repository.open(root) as r:
        links = r.registry.query_certifications("cal")
    assert len(links) == 4
    assert {x.extra["timespan"] for x in links if x.data_id["detector"] == 1} == {
        Timespan.from_text("2024-01-01", "2024-03-01"), Timespan.from_text("2024-04-01")}


def test_retrieve_artifacts_cli(root, tmp_path):
    dest = tmp_path / "out"
    out = cli("retrieve-artifacts", root, dest, "--dataset-type", "bias", "--collections", "u/run2,u/run1",
              "--find-first", "--where", f"instrument='{INST}' and detector in (0..1)")
    assert "Retrieved 2 file(s)" in out
    with Repository.open(root) as r:
        for x in r.registry.query_datasets("bias", ["u/run2"]):
            if x.data_id["detector"] < 2:
                assert sha(dest / x.path) == x.checksum
    assert "--clobber" in cli("retrieve-artifacts", root, dest, "--collections", "u/run2", code=3)


def test_export_import_cli(root, tmp_path):
    cli("certify-calibrations", root, "u/run1", "u/calib/t1", "bias")
    cli("collection-chain", root, "u/calib", "u/calib/t1")
    out = cli("export-calibs", root, tmp_path / "exp", "u/calib")
    assert "Exported 9 dataset(s) in 3 collection(s)" in out
    assert "already exists" in cli("export-calibs", root, tmp_path / "exp", "u/calib", code=3)
    new = tmp_path / "new"
    cli("create", new)
    cli("register-instrument", new, INST, "--scale", "mini")
    out = cli("import", new, tmp_path / "exp", "-s", "instrument", "-s", "detector", "-s", "physical_filter",
              "--transfer", "symlink")
    assert "Imported 9 dataset(s), 3 collection(s), 9 validity range(s), 0 new dimension record(s)" in out
    with Repository.open(new) as r:
        assert r.registry.get_chain("u/calib") == ("u/calib/t1",)
        refs = r.registry.query_datasets("bias", ["u/calib"])
        assert len(refs) == 9 and all(r.get_path(x).is_symlink() for x in refs)
        assert r.verify_checksums(refs) == []


def test_create_with_unreachable_database_is_a_service_error(tmp_path):
    out = cli("create", tmp_path / "r", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", code=8)
    assert "cannot reach the registry database" in out and "Traceback" not in out
    assert not (tmp_path / "r").exists()


@pytest.mark.postgres
def test_create_with_postgres_db(postgres_server, tmp_path):
    url = postgres_server.new_schema()
    out = cli("create", tmp_path / "pg", "--db", url)
    assert "PostgreSQL registry" in out
    cli("register-instrument", tmp_path / "pg", INST, "--scale", "mini")
    with Repository.open(tmp_path / "pg") as r:
        assert r.registry.engine.dialect.name == "postgresql"
        r.registry.register_collection("x", CollectionType.RUN)
    assert "x" in cli("query-collections", tmp_path / "pg")
