"""Repository (datastore) behaviour beyond the contract: schema versions, crash repair, concurrency.

Crashes are real: a child process is killed with ``os._exit`` between two steps of a
write or a removal, then the repository is opened again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa
import yaml

from cpframe.core.errors import DatastoreError, RegistryError, SchemaVersionError
from cpframe.core.model import CollectionType
from cpframe.repository.repo import CONFIG_NAME, Repository
from tests.registry_contract import INST, files, put_bias, sha

RUN = CollectionType.RUN


@pytest.fixture
def repo(sqlite_repo):
    sqlite_repo.register_instrument(INST, "mini")
    return sqlite_repo


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=os.getcwd())


def test_open_rejects_other_schema_versions(repo):
    root = repo.root
    repo.close()
    cfg = yaml.safe_load((root / CONFIG_NAME).read_text())
    (root / CONFIG_NAME).write_text(yaml.safe_dump({**cfg, "schema_version": "0.9"}))
    with pytest.raises(SchemaVersionError, match="schema version 0.9"):
        Repository.open(root)
    (root / CONFIG_NAME).write_text(yaml.safe_dump(cfg))
    engine = sa.create_engine(f"sqlite:///{root / 'registry.sqlite3'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE cpframe_meta SET value = '7.0' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="schema version 7.0"):
        Repository.open(root)


def test_open_non_repository(tmp_path):
    with pytest.raises(RegistryError, match="not a cpframe repository.*cpframe create"):
        Repository.open(tmp_path / "nothing")


def test_sqlite_uses_wal_and_busy_timeout(repo):
    with repo.registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with Repository.open(repo.root, busy_timeout_s=2.5) as again:
        with again.registry.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500


def test_failure_between_steps_leaves_nothing(repo, tmp_path, monkeypatch):
    """An exception after the files are placed and before the rows commit is undone at once."""
    repo.registry.register_collection("r1", RUN)
    srcs = files(tmp_path / "in", 3, "b")

    def boom(refs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(repo.registry, "insert_datasets", boom)
    with pytest.raises(RuntimeError, match="injected"):
        repo.put_files([(p, "bias", {"instrument": INST, "detector": d}) for d, p in enumerate(srcs)], "r1")
    assert all(p.exists() for p in srcs)  # sources kept (move happens only after commit)
    assert not (repo.datastore_root / "r1").exists()
    assert repo.registry.pending_files() == []


def test_missing_source_stores_nothing(repo, tmp_path):
    repo.registry.register_collection("r1", RUN)
    srcs = files(tmp_path / "in", 2, "b")
    with pytest.raises(DatastoreError, match="do not exist.*ghost.fits"):
        repo.put_files([(srcs[0], "bias", {"instrument": INST, "detector": 0}),
                        (tmp_path / "ghost.fits", "bias", {"instrument": INST, "detector": 1})], "r1")
    assert repo.registry.query_datasets("bias", ["r1"]) == [] and srcs[0].exists()


def test_crash_after_files_placed_is_repaired_on_open(repo, tmp_path):
    root = repo.root
    repo.registry.register_collection("r1", RUN)
    srcs = files(tmp_path / "in", 3, "b")
    repo.close()
    child = run_child(f"""
        import os
        from cpframe.repository.repo import Repository
        from cpframe.repository.sql import SqlRegistry
        SqlRegistry.insert_datasets = lambda self, refs: os._exit(17)   # die before the rows commit
        repo = Repository.open({str(root)!r})
        repo.put_files([({str(srcs[0])!r}, "bias", {{"instrument": "{INST}", "detector": 0}}),
                        ({str(srcs[1])!r}, "bias", {{"instrument": "{INST}", "detector": 1}})], "r1", transfer="copy")
    """)
    assert child.returncode == 17, child.stderr
    placed = [root / f"r1/bias/bias_{INST}_{d}.fits" for d in (0, 1)]
    assert all(p.exists() for p in placed)  # the crash left files without rows
    with Repository.open(root) as again:
        assert len(again.repairs) == 2 and all("repaired" in line for line in again.repairs)
        assert not any(p.exists() for p in placed)
        assert again.registry.pending_files() == []
        refs = again.put_files([(srcs[0], "bias", {"instrument": INST, "detector": 0})], "r1", transfer="copy")
        assert sha(again.get_path(refs[0])) == sha(srcs[0])


def test_crash_during_removal_is_repaired_on_open(repo, tmp_path):
    root = repo.root
    refs = put_bias(repo, "r1", [0, 1, 2], tmp_path)
    paths = [repo.get_path(r) for r in refs]
    repo.close()
    child = run_child(f"""
        import os
        from cpframe.repository import datastore, repo as m
        datastore._unlink = lambda p: os._exit(19)   # die after the rows are gone, before any file is deleted
        r = m.Repository.open({str(root)!r})
        r.remove_runs(["r1"])
    """)
    assert child.returncode == 19, child.stderr
    assert all(p.exists() for p in paths)
    with Repository.open(root) as again:
        assert len(again.repairs) == 3
        assert not any(p.exists() for p in paths) and again.registry.pending_files() == []
        assert [c.name for c in again.registry.query_collections()] == []


def test_live_writer_leftovers_are_reported_not_touched(repo, tmp_path):
    refs = put_bias(repo, "r1", [0], tmp_path)
    rel = "r1/bias/in_progress.fits"
    (repo.datastore_root / rel).write_bytes(b"partial")
    repo.registry.add_pending_files([rel], f"{os.uname().nodename}:{os.getpid()}")  # this process: alive
    with Repository.open(repo.root) as again:
        assert again.repairs == [f"{rel}: being written by {os.uname().nodename}:{os.getpid()} (left alone)"]
        assert (again.datastore_root / rel).exists()
        again.repair(force=True)
        assert not (again.datastore_root / rel).exists() and again.registry.pending_files() == []
        assert again.get_path(refs[0]).exists()  # a file with a row is never touched


def test_two_processes_write_one_sqlite_repo(repo, tmp_path):
    """Both writers succeed: the busy timeout makes the second wait instead of failing."""
    root = repo.root
    repo.close()
    script = """
        import sys
        from pathlib import Path
        from cpframe.core.model import CollectionType, Timespan
        from cpframe.repository.repo import Repository
        tag, root, tmp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        repo = Repository.open(root)
        tmp.mkdir()
        for i in range(12):
            run = f"{tag}/run{i}"
            repo.registry.register_collection(run, CollectionType.RUN)
            items = []
            for d in range(9):
                p = tmp / f"{i}_{d}.fits"
                p.write_bytes(f"{tag} {i} {d}".encode())
                items.append((p, "bias", {"instrument": "LSSTComCam", "detector": d}))
            refs = repo.put_files(items, run)
            repo.registry.certify(f"{tag}/calib", refs, Timespan(i * 10**9, (i + 1) * 10**9))
            repo.registry.set_chain("shared/chain", [f"{tag}/calib"], mode="extend")
        print("ok", tag)
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), tag, str(root), str(tmp_path / tag)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("A", "B")]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    with Repository.open(root) as again:
        reg = again.registry
        for tag in ("A", "B"):
            assert len(reg.query_datasets("bias", f"{tag}/run*")) == 12 * 9
            assert len(reg.query_certifications(f"{tag}/calib")) == 12 * 9
        assert set(reg.get_chain("shared/chain")) == {"A/calib", "B/calib"}
        assert again.verify_checksums(reg.query_datasets("bias", "*")) == []


@pytest.mark.postgres
def test_postgres_create_refuses_a_database_with_a_registry(postgres_server, tmp_path):
    url = postgres_server.new_schema()
    with Repository.create(tmp_path / "a", db_url=url) as a:
        a.register_instrument(INST, "mini")
    with pytest.raises(RegistryError, match="already holds a cpframe registry"):
        Repository.create(tmp_path / "b", db_url=url)
    with Repository.open(tmp_path / "a") as again:
        assert again.registry.engine.dialect.name == "postgresql"
        assert [r["name"] for r in again.registry.query_dimension_records("instrument")] == [INST]


def test_put_files_takes_checksums_computed_by_the_writer(repo, tmp_path):
    """cpframe submit's workers hash their outputs; the driver stores those hashes and computes the others."""
    import hashlib

    repo.registry.register_collection("r1", RUN)
    srcs = files(tmp_path / "in", 2, "b")
    truth = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in srcs]
    given = {str(srcs[0]): truth[0]}
    refs = repo.put_files([(p, "bias", {"instrument": INST, "detector": d}) for d, p in enumerate(srcs)], "r1",
                          checksums=given)
    assert [r.checksum for r in refs] == truth
    # a given hash is taken as is (the writer is trusted, the file is not read again)
    src = files(tmp_path / "in2", 1, "c")[0]
    (ref,) = repo.put_files([(src, "bias", {"instrument": INST, "detector": 5})], "r1", checksums={str(src): "sha256:" + "0" * 64})
    assert ref.checksum == "sha256:" + "0" * 64
