"""Issue 11: the repository never loses or leaks data (import, names, paths, checksums, removal, umask).

Each test tries an attack or a mistake for real (real files, real SQLite and PostgreSQL, real
processes) and checks the three promises of docs/guarantees.md: a one-line error with the
documented exit code, no traceback, and nothing changed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpframe.core.errors import (
    ChecksumError,
    CollectionNameError,
    ConflictingDefinitionError,
    DatasetConflictError,
    DatasetTypeNameError,
    DatastoreError,
    ExportError,
    UserInputError,
)
from cpframe.core.model import CollectionType, DatasetType, Timespan
from cpframe.repository.names import collection_name_problem
from cpframe.repository.repo import Repository
from cpframe.repository.transfer import export_calibs, import_export
from tests.registry_contract import INST, put_bias, sha

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request) -> str:
    if request.param == "postgres":
        request.getfixturevalue("postgres_server")
    return request.param


@pytest.fixture
def src(backend, repo_factory, tmp_path):
    """A repository with two certified RUNs in a chain, and its export in tmp_path/export."""
    r = repo_factory(backend, "source")
    r.register_instrument(INST, "mini")
    a = put_bias(r, "T/bias/a", range(4), tmp_path)
    b = put_bias(r, "T/bias/b", range(2), tmp_path)
    r.registry.certify("T/calib/a", a, Timespan())
    r.registry.certify("T/calib/b", b, Timespan(10**18, None))
    r.registry.set_chain("T/calib", ["T/calib/b", "T/calib/a"])
    export_calibs(r, tmp_path / "export", ["T/calib"])
    return r


def snapshot(repo: Repository) -> dict[str, str]:
    """Every file under the repository root (registry excluded) -> its sha256."""
    return {str(p.relative_to(repo.root)): sha(p) for p in sorted(repo.root.rglob("*"))
            if p.is_file() and not p.name.startswith("registry.sqlite3")}


def registry_state(repo: Repository) -> tuple:
    reg = repo.registry
    return (sorted((c.name, c.type.name, c.children) for c in reg.query_collections()),
            sorted((r.id, r.run, r.checksum) for r in reg.query_datasets(None, "*")),
            sorted((r.id, r.extra["timespan"].begin_ns or 0) for c in reg.query_collections("*", [CollectionType.CALIBRATION])
                   for r in reg.query_certifications(c.name)),
            reg.pending_files())


def cpframe(*args, env=None, **kw) -> subprocess.CompletedProcess:
    """Run the real command line in a child process (so a traceback would show)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cpframe", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=300, **kw)


def one_line_error(res: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert err and err[0].startswith("error: "), res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


# -- 1. import never deletes existing data ----------------------------------------------------------
def test_import_twice_is_idempotent_and_keeps_every_file(src, repo_factory, backend, tmp_path):
    target = repo_factory(backend, "target")
    first = import_export(target, tmp_path / "export")
    assert first["datasets"] == 6 and first["links"] == 6
    before_files, before_reg = snapshot(target), registry_state(target)
    second = import_export(target, tmp_path / "export")
    assert second["datasets"] == 0 and second["skipped"] == 6 and second["links"] == 0
    assert snapshot(target) == before_files and registry_state(target) == before_reg
    for ref in target.registry.query_datasets(None, "*"):
        assert sha(target.get_path(ref)) == ref.checksum


def test_import_into_its_own_source_changes_nothing(src, tmp_path):
    before_files, before_reg = snapshot(src), registry_state(src)
    counts = import_export(src, tmp_path / "export")
    assert counts["datasets"] == 0 and counts["skipped"] == 6
    assert snapshot(src) == before_files and registry_state(src) == before_reg


def test_failed_import_removes_only_files_it_created(src, repo_factory, backend, tmp_path):
    """A conflicting dataset (same RUN + data ID, another id) fails the import; the other file stays."""
    target = repo_factory(backend, "target")
    target.register_instrument(INST, "mini")
    mine = put_bias(target, "T/bias/b", [1], tmp_path / "mine")  # detector 1 of T/bias/b, different id
    before_files, before_reg = snapshot(target), registry_state(target)
    with pytest.raises(DatasetConflictError, match="already exist"):
        import_export(target, tmp_path / "export")
    assert snapshot(target) == before_files and registry_state(target) == before_reg
    assert sha(target.get_path(mine[0])) == mine[0].checksum


def test_a_file_already_at_a_target_path_is_never_replaced(src, repo_factory, backend, tmp_path):
    target = repo_factory(backend, "target")
    doc = yaml.safe_load((tmp_path / "export" / "export.yaml").read_text())
    rec = doc["datasets"][0]["records"][0]
    squatter = target.datastore_root / rec["path"]
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    before = snapshot(target)
    with pytest.raises(DatastoreError, match="never replaces"):
        import_export(target, tmp_path / "export")
    assert snapshot(target) == before and squatter.read_bytes() == b"someone else's file"
    assert target.registry.query_collections() == [] and target.registry.pending_files() == []


def test_three_concurrent_imports_lose_nothing(src, tmp_path):
    """Three processes import one export into one (SQLite) repository at the same time."""
    if src.registry.engine.dialect.name != "sqlite":
        dest = Repository.create(tmp_path / "target", db_url=None)
    else:
        dest = Repository.create(tmp_path / "target")
    dest.close()
    procs = [subprocess.Popen([sys.executable, "-m", "cpframe", "import", str(tmp_path / "target"),
                               str(tmp_path / "export")], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert "Traceback" not in err, err
        assert p.returncode in (0, 3), (out, err)  # 3: a clear "another writer" conflict, nothing lost
    assert any(p.returncode == 0 for p in procs)
    with Repository.open(tmp_path / "target") as r:
        refs = r.registry.query_datasets(None, "*")
        assert len(refs) == 6 and r.registry.pending_files() == []
        for ref in refs:
            assert sha(r.get_path(ref)) == ref.checksum
        assert r.registry.get_chain("T/calib") == ("T/calib/b", "T/calib/a")
    # a later import (the "retry") completes whatever a refused one did not
    res = cpframe("import", tmp_path / "target", tmp_path / "export")
    assert res.returncode == 0 and "6 already present" in res.stdout, res.stderr


# -- 2. crafted exports and names never escape the repository ---------------------------------------
@pytest.mark.parametrize("field,value", [
    ("dataset_type", "../../escaped"),
    ("run", "../../victim"),
    ("run", "T/../../../victim"),
    ("run", "/tmp/victim"),
    ("run", "T/./x"),
    ("run", "T//x"),
    ("run", "T/x\x00y"),
    ("run", "T/" + "x" * 256),
    ("dataset_type", "bias/../../x"),
    ("dataset_type", "bi as"),
    ("chain_child", "../../victim"),
])
def test_crafted_export_names_are_refused_before_anything_is_written(src, repo_factory, backend, tmp_path,
                                                                   field, value):
    doc = yaml.safe_load((tmp_path / "export" / "export.yaml").read_text())
    if field == "dataset_type":
        old = doc["dataset_types"][0]["name"]
        doc["dataset_types"][0]["name"] = value
        for d in doc["datasets"]:
            for rec in d["records"]:
                if rec["dataset_type"] == old:
                    rec["dataset_type"] = value
    elif field == "run":
        old = doc["datasets"][0]["run"]
        doc["datasets"][0]["run"] = value
        for c in doc["collections"]:
            if c["name"] == old:
                c["name"] = value
    else:
        doc["collections"][-1]["children"].append(value)
    (tmp_path / "export" / "export.yaml").write_text(yaml.safe_dump(doc))
    target = repo_factory(backend, "target")
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    before = snapshot(target)
    with pytest.raises(ExportError, match="invalid name"):
        import_export(target, tmp_path / "export")
    assert snapshot(target) == before and sorted(p.name for p in tmp_path.iterdir()) == outside_before
    assert target.registry.query_collections() == []
    res = cpframe("import", target.root, tmp_path / "export")
    one_line_error(res, 3, "invalid name", "Nothing was imported")


def test_symlinked_folder_inside_the_datastore_cannot_lead_outside(src, repo_factory, backend, tmp_path):
    target = repo_factory(backend, "target")
    victim = tmp_path / "victim"
    victim.mkdir()
    (target.datastore_root / "T").symlink_to(victim)  # T/bias/a/... would land in victim/
    with pytest.raises(DatastoreError, match="outside"):
        import_export(target, tmp_path / "export")
    assert list(victim.rglob("*")) == [] and target.registry.query_collections() == []


@pytest.mark.parametrize("name", ["../x", "a/../b", "a//b", "/a", "a/", "a\tb", "a\x07b", "a\\b", ".", "x/./y",
                                  "a" * 256, "é" * 128, "a,b", "a*b"])
def test_collection_names_follow_one_rule_everywhere(name, sqlite_repo):
    assert collection_name_problem(name)
    with pytest.raises(CollectionNameError):
        sqlite_repo.registry.register_collection(name, CollectionType.RUN)
    with pytest.raises(CollectionNameError):
        sqlite_repo.registry.set_chain(name, [], allow_empty=True)


def test_names_that_stay_valid():
    for good in ["LSSTComCam/calib/DM-48520/newCalibs/biasGen.20250207a", "u/someone/x.y-z_1", "a" * 255,
                 "LATISS/runs/..hidden.ok", "é" * 127]:
        assert collection_name_problem(good) is None, good


@pytest.mark.parametrize("name", ["../bias", "bias/x", "", "1bias", "bias.", "bi-as", "a" * 300])
def test_dataset_type_names_follow_the_butler_rule(name, sqlite_repo):
    with pytest.raises(DatasetTypeNameError, match="dataset type name"):
        sqlite_repo.registry.register_dataset_type(DatasetType(name, ("instrument", "detector"), True, "fits-masked"))
    assert sqlite_repo.registry.register_dataset_type(
        DatasetType("cpBias.component_1", ("instrument", "detector"), True, "fits-masked"))


def test_submission_and_template_names_use_the_same_rule():
    from cpframe.core.errors import SubmissionError
    from cpframe.execution.submission import validate_submission

    for bad in ["u/x/../../../victim", "u//x", "u/" + "y" * 300]:
        with pytest.raises(SubmissionError, match="outputRun"):
            validate_submission({"pipelineYaml": "pipelines/cpBias.yaml", "instrument": INST,
                                 "payload": {"inCollection": "LSSTComCam/raw/all", "dataQuery": "detector=0",
                                             "output": "u/x/out", "outputRun": bad, "payloadName": "bias"}})


# -- 3. a missing checksum is an error unless asked ---------------------------------------------------
def test_missing_checksum_is_an_error_unless_allowed(src, repo_factory, backend, tmp_path):
    path = tmp_path / "export" / "export.yaml"
    doc = yaml.safe_load(path.read_text())
    rec = doc["datasets"][0]["records"][0]
    del rec["checksum"]
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "export" / rec["path"]).write_bytes(b"tampered, and its checksum line deleted")
    target = repo_factory(backend, "target")
    with pytest.raises(ChecksumError, match="no checksum.*--allow-missing-checksums"):
        import_export(target, tmp_path / "export")
    assert target.registry.query_collections() == [] and snapshot(target) == {
        k: v for k, v in snapshot(target).items() if k == "cpframe-repo.yaml"}
    res = cpframe("import", target.root, tmp_path / "export")
    one_line_error(res, 3, "no checksum", "--allow-missing-checksums")
    res = cpframe("import", target.root, tmp_path / "export", "--allow-missing-checksums")
    assert res.returncode == 0, res.stderr
    with Repository.open(target.root) as r:
        assert len(r.registry.query_datasets(None, "*")) == 6


# -- 7 (part). rollback with impossible file names must not crash or leave journal rows ---------------
def test_put_with_a_too_long_name_fails_cleanly(sqlite_repo, tmp_path):
    sqlite_repo.register_instrument(INST, "mini")
    with pytest.raises(CollectionNameError, match="segment of 300 bytes"):
        sqlite_repo.registry.register_collection("u/" + "r" * 300, CollectionType.RUN)
    assert sqlite_repo.registry.pending_files() == []


def test_conflicting_dataset_id_is_refused(src, repo_factory, backend, tmp_path):
    target = repo_factory(backend, "target")
    import_export(target, tmp_path / "export")
    path = tmp_path / "export" / "export.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["datasets"][0]["records"][0]["data_id"]["detector"] = 7  # same id, another data ID
    path.write_text(yaml.safe_dump(doc))
    before = snapshot(target), registry_state(target)
    with pytest.raises(ConflictingDefinitionError, match="already exist here"):
        import_export(target, tmp_path / "export")
    assert (snapshot(target), registry_state(target)) == before


# -- 9. removal globs and chain redefinition like the butler ------------------------------------------
def test_remove_runs_and_collections_accept_globs(sqlite_repo, tmp_path):
    r = sqlite_repo
    r.register_instrument(INST, "mini")
    for run in ["C/calib/DM-1/a", "C/calib/DM-1/b", "C/calib/DM-2/a"]:
        put_bias(r, run, [0], tmp_path)
    r.registry.certify("C/calib/DM-1/cert", r.registry.query_datasets("bias", ["C/calib/DM-2/a"]), Timespan())
    r.close()
    root = r.root
    res = cpframe("remove-runs", root, "C/calib/DM-1/*", "--yes")
    assert res.returncode == 0 and "Removed 2 RUN(s)" in res.stdout, res.stderr
    res = cpframe("remove-runs", root, "C/nothing/*", "--yes")
    assert res.returncode == 0 and "No RUN collections were removed." in res.stdout
    res = cpframe("remove-collections", root, "C/calib/*", "--yes")  # the glob never picks a RUN
    assert res.returncode == 0 and "Removed 1 collection(s)" in res.stdout, res.stderr
    with Repository.open(root) as r2:
        assert [c.name for c in r2.registry.query_collections()] == ["C/calib/DM-2/a"]
        assert not (root / "C/calib/DM-1").exists()
    one_line_error(cpframe("remove-runs", root, "C/calib/DM-9", "--yes"), 3, "does not exist")


def test_collection_chain_redefine_with_no_children_is_refused(sqlite_repo, tmp_path):
    r = sqlite_repo
    r.register_instrument(INST, "mini")
    put_bias(r, "u/run", [0], tmp_path)
    r.registry.set_chain("u/chain", ["u/run"])
    with pytest.raises(UserInputError, match="needs at least one child"):
        r.registry.set_chain("u/chain", [], mode="redefine")
    r.close()
    one_line_error(cpframe("collection-chain", r.root, "u/chain"), 2, "needs at least one child")
    one_line_error(cpframe("collection-chain", r.root, "u/chain", "--mode", "redefine", ","), 2,
                   "needs at least one child")
    with Repository.open(r.root) as r2:
        assert r2.registry.get_chain("u/chain") == ("u/run",)


# -- 10. files honour the umask ---------------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_datastore_and_export_files_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        repo = Repository.create(tmp_path / "repo")
        repo.register_instrument(INST, "mini")
        refs = put_bias(repo, "u/run", [0, 1], tmp_path)
        out = export_calibs(repo, tmp_path / "export", ["u/run"])
        want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
        for p in [repo.get_path(r) for r in refs] + [out, repo.root / "cpframe-repo.yaml"]:
            assert _mode(p) == want_file, (p, oct(_mode(p)))
        for d in [repo.get_path(refs[0]).parent, out.parent]:
            assert _mode(d) == want_dir, (d, oct(_mode(d)))
        repo.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_products_reports_and_plots_honour_the_umask(umask, tmp_path):
    """The FITS/ECSV writers, verify results, stats, binned residuals, plots and report pages."""
    import numpy as np
    from matplotlib.figure import Figure

    from cpframe.science.imageio import MaskedWriter, write_defects, write_masked, write_ptc
    from cpframe.verify.plots import _save
    from cpframe.verify.results import atomic_write_text, write_stats

    old = os.umask(umask)
    try:
        want = 0o666 & ~umask
        img = np.arange(12, dtype=np.float32).reshape(3, 4)
        paths = [
            write_masked(tmp_path / "m.fits", img, np.zeros((3, 4), np.int32), img),
            write_defects(tmp_path / "d.ecsv", [(0, 0, 1, 1)]),
            write_ptc(tmp_path / "p.fits", [{"amp": "C00", "gain": 1.5, "gain_err": 0.1, "noise": 6.0, "noise_err": 0.1,
                                             "turnoff": 9e4, "a00": -1e-6, "n_pairs": 2, "raw_means": [1.0, 2.0],
                                             "raw_vars": [1.0, 2.0], "exp_times": [1.0, 2.0], "mask": [True, True],
                                             "overscan_noise": [5.0, 5.0]}]),
            atomic_write_text(tmp_path / "r" / "index.html", "<html></html>"),
            write_stats({"a": 1.0}, tmp_path / "s.json"),
        ]
        with MaskedWriter(tmp_path / "w.fits", (3, 4)) as w:  # the streaming writer of combine
            w.write_rows(0, img, np.zeros((3, 4), np.int32), img)
        paths.append(tmp_path / "w.fits")
        fig = Figure(figsize=(1, 1))
        fig.add_subplot().plot([0, 1])
        paths.append(_save(fig, tmp_path / "plot.png"))
        for p in paths:
            assert _mode(Path(p)) == want, (p, oct(_mode(Path(p))))
    finally:
        os.umask(old)


# -- 9. dates: empty is not "forever", begin == end is refused, YYYY:DDD is accepted -------------------
@pytest.fixture
def certifiable(sqlite_repo, tmp_path):
    sqlite_repo.register_instrument(INST, "mini")
    put_bias(sqlite_repo, "u/run", [0, 1], tmp_path)
    sqlite_repo.close()
    return sqlite_repo.root


@pytest.mark.parametrize("args,words", [
    (["--begin-date", ""], ["begin date is empty"]),
    (["--begin-date", "   "], ["begin date is empty"]),
    (["--end-date", ""], ["end date is empty"]),
    (["--begin-date", "2024-06-01", "--end-date", "2024-06-01"], ["is empty: begin equals end"]),
    (["--begin-date", "2024:153", "--end-date", "2024-06-01T00:00:00"], ["is empty: begin equals end"]),
    (["--begin-date", "2023:366"], ["day of year 366 does not exist in 2023"]),
    (["--begin-date", "2024-02-30"], ["not a valid calendar date"]),
])
def test_certify_dates_that_would_silently_mean_something_else_are_refused(certifiable, args, words):
    res = cpframe("certify-calibrations", certifiable, "u/run", "u/calib", "bias", *args)
    one_line_error(res, 2, *words)
    with Repository.open(certifiable) as r:
        assert [c.name for c in r.registry.query_collections()] == ["u/run"]  # nothing created


def test_certify_accepts_day_of_year_dates_like_the_butler(certifiable):
    from cpframe.core.model import parse_tai

    res = cpframe("certify-calibrations", certifiable, "u/run", "u/calib", "bias", "--begin-date", "2024:153",
                  "--end-date", "2024:154:12:00:00")
    assert res.returncode == 0, res.stderr
    with Repository.open(certifiable) as r:
        spans = {x.extra["timespan"] for x in r.registry.query_certifications("u/calib")}
    assert spans == {Timespan(parse_tai("2024-06-01T00:00:00"), parse_tai("2024-06-02T12:00:00"))}


def test_api_certify_refuses_an_empty_range(sqlite_repo, tmp_path):
    from cpframe.core.errors import BadDateError

    sqlite_repo.register_instrument(INST, "mini")
    refs = put_bias(sqlite_repo, "u/run", [0], tmp_path)
    with pytest.raises(BadDateError, match="begin equals end"):
        sqlite_repo.registry.certify("u/calib", refs, Timespan(10**18, 10**18))
    assert [c.name for c in sqlite_repo.registry.query_collections()] == ["u/run"]


# -- 7. selections that used to be tracebacks; 9. obs_id needs the instrument -----------------------------
@pytest.mark.parametrize("size", [1000, 3000])
def test_long_or_and_chains_are_answered(sqlite_repo, size):
    sqlite_repo.register_instrument(INST, "mini")
    ors = " OR ".join(f"detector = {i % 9}" for i in range(size))
    ands = " AND ".join("detector = 4" for _ in range(size))
    reg = sqlite_repo.registry
    assert len(reg.query_dimension_records("detector", f"instrument='{INST}' and ({ors})")) == 9
    assert [r["id"] for r in reg.query_dimension_records("detector", f"instrument='{INST}' and ({ands})")] == [4]


@pytest.mark.parametrize("expr", ["NOT " * 500 + "detector = 1",
                                  "(" * 200 + "detector = 1" + "".join(f" {'and' if i % 2 else 'or'} detector = 2)"
                                                                        for i in range(200)),
                                  " OR ".join(["detector = 1"] * 10_001)])
def test_too_deep_or_too_long_selections_are_one_clear_error(sqlite_repo, expr):
    from cpframe.core.errors import SelectionError

    sqlite_repo.register_instrument(INST, "mini")
    with pytest.raises(SelectionError, match="levels deep|comparisons"):
        sqlite_repo.registry.query_dimension_records("detector", f"instrument='{INST}' and ({expr})")
    sqlite_repo.close()
    if len(expr) < 100_000:  # one command-line argument holds at most 128 KiB
        res = cpframe("query-datasets", sqlite_repo.root, "--where", f"instrument='{INST}' and ({expr})")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_obs_id_selection_needs_the_instrument(sqlite_repo):
    from cpframe.core.errors import SelectionError

    sqlite_repo.register_instrument(INST, "mini")
    with pytest.raises(SelectionError, match="instrument"):
        sqlite_repo.registry.query_data_ids(["exposure"], "exposure.obs_id = 'CC_O_20241110_000044'")
    assert sqlite_repo.registry.query_data_ids(
        ["exposure"], f"instrument = '{INST}' and exposure.obs_id = 'CC_O_20241110_000044'") == []
