"""Fault-injection suite (issue 11): real faults, real services, and what cpframe promises after each.

* kill -9 of an importing and of a submitting process at random points (``CPFRAME_FAULT_ITERATIONS``
  runs each, default 4 and 2): afterwards ``cpframe`` opens the repository, repairs and reports
  what was left, everything is consistent (every row has its file with the right checksum, no
  orphan file, no journal row), and a resume gives the same products as an uninterrupted run;
* disk full on a small tmpfs, a read-only repository (read-only bind mount), a damaged
  registry file, the registry lock held by another process;
* PostgreSQL: server down, a connection killed in the middle of a certification, the server
  restarted while a submission registers its outputs;
* Slurm: ``scancel`` of a worker job in the middle of a run on the real Slurm of ``cluster/``.

Mounting needs root; where it is not allowed the tests skip with the reason locally and fail
in CI (``need_service``).  The docs page docs/guarantees.md names the test holding each promise.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cpframe.core.errors import DiskFullError
from cpframe.core.model import CollectionType, Timespan
from cpframe.repository.repo import Repository
from cpframe.repository.transfer import export_calibs
from tests.conftest import need_service
from tests.registry_contract import INST, put_bias

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = int(os.environ.get("CPFRAME_FAULT_ITERATIONS", "0") or 0)
IMPORT_KILLS = ITERATIONS or 4
SUBMIT_KILLS = ITERATIONS or 2


def cli_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DASK_CPFRAME__EXECUTION__PROGRESS": "false", **extra}


def cpframe(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpframe", *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout)


def one_line_error(res: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    errs = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errs) == 1, res.stderr
    for w in words:
        assert w in errs[0], (w, errs[0])


def inconsistencies(root: Path) -> list[str]:
    """Open (and so repair) the repository, then list anything inconsistent (empty when sound)."""
    problems = []
    with Repository.open(root) as r:
        refs = r.registry.query_datasets(None, "*")
        problems += r.verify_checksums(refs)
        problems += [f"journal row left: {p['path']}" for p in r.registry.pending_files()]
        used = {r.get_path(x).resolve() for x in refs if x.path}
        for p in r.datastore_root.rglob("*"):
            rel = p.relative_to(r.datastore_root)
            if p.is_dir() or rel.parts[0].startswith((".cpframe-", "registry.sqlite3")) or p.name == "cpframe-repo.yaml":
                continue
            if p.resolve() not in used:
                problems.append(f"orphan file {rel}")
    return problems


def state(root: Path) -> tuple:
    with Repository.open(root) as r:
        reg = r.registry
        cols = sorted((c.name, c.type.name, c.children) for c in reg.query_collections())
        ds = sorted((x.id, x.run, x.dataset_type, str(x.data_id), x.checksum) for x in reg.query_datasets(None, "*"))
        links = sorted((c.name, x.id, x.extra["timespan"].begin_ns or 0) for c in
                       reg.query_collections("*", [CollectionType.CALIBRATION]) for x in reg.query_certifications(c.name))
    return cols, ds, links


# -- kill -9 of an import at random points ---------------------------------------------------------
@pytest.fixture
def big_export(sqlite_repo, tmp_path):
    r = sqlite_repo
    r.register_instrument(INST, "mini")
    chain = []
    for i in range(8):
        refs = put_bias(r, f"T/bias/r{i}", range(9), tmp_path / "src")
        r.registry.certify(f"T/calib/c{i}", refs, Timespan(10**18 + i * 10**15, None))
        chain.insert(0, f"T/calib/c{i}")
    r.registry.set_chain("T/calib", chain)
    out = tmp_path / "export"
    export_calibs(r, out, ["T/calib"])
    return out


def test_kill_9_during_import_leaves_a_consistent_repository_and_resumes(big_export, tmp_path):
    ref_root = tmp_path / "reference"
    assert cpframe("create", ref_root).returncode == 0
    t0 = time.monotonic()
    assert cpframe("import", ref_root, big_export).returncode == 0
    full = time.monotonic() - t0
    reference = state(ref_root)
    rng = random.Random(11)
    outcomes = []
    for i in range(IMPORT_KILLS):
        root = tmp_path / f"target{i}"
        assert cpframe("create", root).returncode == 0
        proc = subprocess.Popen([sys.executable, "-m", "cpframe", "import", str(root), str(big_export)],
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, max(0.4, full * 1.1)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        outcomes.append(proc.returncode)
        opened = cpframe("query-collections", root)  # cpframe opens it and reports what it repaired
        assert opened.returncode == 0 and "Traceback" not in opened.stderr, opened.stderr
        assert inconsistencies(root) == []
        cols, ds, links = state(root)
        assert ds in ([], reference[1]), "an import is all or nothing"
        again = cpframe("import", root, big_export)  # the resume
        assert again.returncode == 0, again.stderr
        assert state(root) == reference and inconsistencies(root) == []
    assert any(c == -signal.SIGKILL for c in outcomes), outcomes


# -- kill -9 of a submission at random points of registration -------------------------------------------
@pytest.fixture
def bias_setup(tmp_path, mini_dataset):
    from tests._run_helpers import TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables

    ids = set(mini_dataset.plan.intended["SELECTION_BIAS"])
    files = [mini_dataset.path(e, d) for e in sorted(ids) for d in mini_dataset.detectors]
    run = f"{INST}/calib/{TICKET}/test/biasGen.faults"
    text = (ROOT / "templates" / "bps_bias.yaml").read_text().replace(
        '  dataQuery: "${SELECTION_BIAS}"', f'  dataQuery: "${{SELECTION_BIAS}}"\n  outputRun: "{run}"')
    template = tmp_path / "bps_bias_fixed.yaml"
    template.write_text(text)

    def make(name: str):
        repo = make_repo(tmp_path / name, mini_dataset, files=files, transfer="copy")
        certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / f"calibs-{name}")
        repo.registry.set_chain(f"{INST}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = variables(repo.root, tmp_path / f"scratch-{name}", mini_dataset, CALIB_COLLECTIONS="", RERUN="f")
        repo.close()
        return repo.root, env

    return make, str(template), run


def _products(root: Path, run: str) -> dict:
    from cpframe.science.imageio import read_masked

    with Repository.open(root) as r:
        out = {}
        for x in r.registry.query_datasets(None, collections=[run]):
            m = read_masked(r.get_path(x))
            out[(x.dataset_type, str(x.data_id))] = (np.asarray(m.image), np.asarray(m.mask), np.asarray(m.variance))
    return out


def _submit_env(env: dict) -> dict:
    return cli_env(**env, DASK_CPFRAME__CLUSTER__N_WORKERS="1", DASK_CPFRAME__CLUSTER__WORKER_MEMORY="1 GiB",
                   DASK_CPFRAME__EXECUTION__RETRIES="0")


def test_kill_9_during_submit_then_resume_gives_the_same_products(bias_setup, tmp_path):
    make, template, run = bias_setup
    ref_root, env = make("reference")
    res = subprocess.run([sys.executable, "-m", "cpframe", "submit", template, "--quiet"], env=_submit_env(env),
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    reference = _products(ref_root, run)
    assert reference
    rng = random.Random(5)
    for i in range(SUBMIT_KILLS):
        root, env = make(f"killed{i}")
        proc = subprocess.Popen([sys.executable, "-m", "cpframe", "submit", template, "--quiet"], env=_submit_env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, start_new_session=True)
        try:
            def in_run_stage():
                with Repository.open(root, repair=False) as r:
                    return bool(r.registry.run_locks())
            t0 = time.monotonic()
            while not in_run_stage() and proc.poll() is None and time.monotonic() - t0 < 300:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 8.0))  # somewhere in compute / registration
            # on a quiet machine the submission may be over before the kill: then it must have completed
            finished = proc.poll() == 0
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            with_group = proc.pid
            try:
                os.killpg(with_group, signal.SIGKILL)  # its Dask workers: the node is gone
            except ProcessLookupError:
                pass
        opened = cpframe("query-collections", root)
        assert opened.returncode == 0 and "Traceback" not in opened.stderr, opened.stderr
        assert inconsistencies(root) == []
        with Repository.open(root) as r:
            exists = run in [c.name for c in r.registry.query_collections()]
            locked = bool(r.registry.run_locks())
            done_before_kill = False
            if exists:  # the killed submission left its provenance: status running, outputs so far
                from cpframe.execution.provenance import load_provenance

                (rec,) = load_provenance(r.registry, run)
                # 'complete' is recorded before the process exits (it still writes result.txt and stops its
                # cluster), so a kill can land after it: then the RUN must already be whole and equal the reference
                assert rec["status"] == "complete" if finished else rec["status"] in ("running", "complete")
                done_before_kill = rec["status"] == "complete"
                registered = {x.id for x in r.registry.query_datasets(None, collections=[run])}
                assert {o["id"] for o in rec["outputs"]} <= registered
        if done_before_kill:
            assert _products(root, run).keys() == reference.keys()
        args = (["--extend-run", "--skip-existing"] if exists else []) + (["--take-over-lock"] if locked else [])
        resume = subprocess.run([sys.executable, "-m", "cpframe", "submit", template, "--quiet", *args],
                                env=_submit_env(env), capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert resume.returncode == 0, resume.stderr
        assert inconsistencies(root) == []
        got = _products(root, run)
        assert got.keys() == reference.keys()
        for k in got:
            for a, b in zip(got[k], reference[k]):
                np.testing.assert_array_equal(a, b)


# -- disk full, read-only, damaged registry, lock held ---------------------------------------------------
@pytest.fixture
def mounts():
    """Mount points made by the test, unmounted at the end (needs root and mount(2))."""
    made: list[Path] = []

    def mount(*args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        need_service(res.returncode == 0, f"mount {' '.join(args)} is not allowed here: {res.stderr.strip()}")
        made.append(Path(args[-1]))

    yield mount
    for m in reversed(made):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_disk_full_is_a_clear_error_and_changes_nothing(mounts, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounts("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small))
    root = small / "repo"
    with Repository.create(root) as r:
        r.register_instrument(INST, "mini")
        put_bias(r, "u/ok", [0], tmp_path / "in-ok")
    filler = small / "filler"
    with open(filler, "wb") as fh:  # fill the disk up to the last ~200 KiB
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 200 * 1024))
    big = tmp_path / "big.fits"
    big.write_bytes(os.urandom(1024 * 1024))
    before = state(root)
    with Repository.open(root) as r:
        with pytest.raises(DiskFullError, match="full"):
            r.put_files([(big, "bias", {"instrument": INST, "detector": 1})], "u/ok", transfer="copy")
    assert state(root) == before and inconsistencies(root) == []
    # and from the command line: import of an export bigger than the free space
    exp = tmp_path / "exp"
    with Repository.create(tmp_path / "src") as s:
        s.register_instrument(INST, "mini")
        s.registry.register_collection("x/run", CollectionType.RUN)
        s.put_files([(big, "bias", {"instrument": INST, "detector": 2})], "x/run", transfer="copy")
        export_calibs(s, exp, ["x/run"])
    one_line_error(cpframe("import", root, exp), 8, "full")
    assert state(root) == before and inconsistencies(root) == []


def test_read_only_repository_can_be_queried_and_refuses_writes(mounts, sqlite_repo, tmp_path):
    sqlite_repo.register_instrument(INST, "mini")
    refs = put_bias(sqlite_repo, "u/run", [0, 1], tmp_path)
    sqlite_repo.registry.certify("u/calib", refs, Timespan())
    root = sqlite_repo.root
    sqlite_repo.close()
    ro = tmp_path / "ro"
    ro.mkdir()
    mounts("--bind", str(root), str(ro))
    mounts("-o", "remount,bind,ro", str(ro))
    res = cpframe("query-datasets", ro, "bias", "--collections", "u/calib")
    assert res.returncode == 0 and "2 dataset(s)" in res.stdout, res.stderr
    assert cpframe("query-collections", ro).returncode == 0
    one_line_error(cpframe("certify-calibrations", ro, "u/run", "u/calib2", "bias"), 3, "read-only")
    one_line_error(cpframe("remove-runs", ro, "u/run", "--yes", "--force"), 3, "read-only")


def test_damaged_registry_file_is_a_clear_error(sqlite_repo, tmp_path):
    sqlite_repo.register_instrument(INST, "mini")
    put_bias(sqlite_repo, "u/run", [0], tmp_path)
    sqlite_repo.close()
    db = sqlite_repo.root / "registry.sqlite3"
    data = bytearray(db.read_bytes())
    data[4096:12288] = os.urandom(8192)  # pages of the schema and tables
    db.write_bytes(bytes(data))
    one_line_error(cpframe("query-datasets", sqlite_repo.root), 3, "damaged")
    db.write_bytes(os.urandom(4096))
    one_line_error(cpframe("query-collections", sqlite_repo.root), 3, "damaged", "backup")


HOLD = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_registry_lock_held_by_another_process_is_a_clear_error(sqlite_repo, tmp_path):
    sqlite_repo.register_instrument(INST, "mini")
    put_bias(sqlite_repo, "u/run", [0], tmp_path)
    sqlite_repo.close()
    before = state(sqlite_repo.root)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(sqlite_repo.root / "registry.sqlite3"), "120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = cli_env(DASK_CPFRAME__REGISTRY__BUSY_TIMEOUT_S="0.5")
        one_line_error(cpframe("certify-calibrations", sqlite_repo.root, "u/run", "u/calib", "bias", env=env), 8,
                       "locked", "busy timeout")
        res = cpframe("query-collections", sqlite_repo.root, env=env)  # readers are not blocked (WAL)
        assert res.returncode == 0, res.stderr
    finally:
        holder.kill()
        holder.wait()
    assert state(sqlite_repo.root) == before


# -- PostgreSQL: server down, connection killed mid-certify, restart during registration -------------------
@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test alone (it is stopped and restarted)."""
    from tests.fixtures.registry import _as_owner, _pg_bin, _start

    bin_dir = _pg_bin()
    need_service(bin_dir is not None, "PostgreSQL binaries not found in /usr/lib/postgresql/*/bin")
    server, run_as, top = _start(bin_dir)
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-w", "-t", "60"]

    def ctl(*args: str) -> None:
        subprocess.run(_as_owner(pg_ctl + list(args), run_as), check=True, capture_output=True, timeout=120)

    def start() -> None:
        opts = (f"-p {server.port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c max_connections=200")
        ctl("-l", str(top / "server.log"), "-o", opts, "start")

    server.ctl = ctl
    server.start = start
    server.log = top / "server.log"
    try:
        yield server
    finally:
        subprocess.run(_as_owner(pg_ctl + ["-m", "immediate", "stop"], run_as), capture_output=True, timeout=60)
        import shutil

        shutil.rmtree(top, ignore_errors=True)


def _psql(server, sql: str):
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.postgres
def test_postgres_down_and_connection_killed_mid_certify(own_postgres, tmp_path):
    url = own_postgres.new_schema()
    with Repository.create(tmp_path / "pg", db_url=url) as r:
        r.register_instrument(INST, "mini")
        put_bias(r, "u/run", range(9), tmp_path)
    root = tmp_path / "pg"
    before = state(root)
    own_postgres.ctl("-m", "fast", "stop")
    one_line_error(cpframe("query-collections", root), 8, "cannot", "server")
    own_postgres.start()
    assert state(root) == before
    # a certification blocked inside its transaction, then its connection killed
    import psycopg

    schema = url.split("search_path%3D")[1]
    blocker = psycopg.connect(host="127.0.0.1", port=own_postgres.port, user=own_postgres.user, dbname="postgres")
    blocker.execute(f'LOCK TABLE "{schema}".calib_association IN ACCESS EXCLUSIVE MODE')
    proc = subprocess.Popen([sys.executable, "-m", "cpframe", "certify-calibrations", str(root), "u/run", "u/calib",
                             "bias"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            waiting = _psql(own_postgres, "select pid from pg_locks where not granted")
            if waiting:
                break
            time.sleep(0.2)
        assert waiting, "the certification never reached its lock"
        _psql(own_postgres, f"select pg_terminate_backend({waiting[0][0]})")
        out, err = proc.communicate(timeout=120)
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 8 and "Traceback" not in err, err
    assert "rolled back" in err and "nothing was changed" in err
    assert state(root) == before
    res = cpframe("certify-calibrations", root, "u/run", "u/calib", "bias")  # the resume
    assert res.returncode == 0, res.stderr
    with Repository.open(root) as r:
        assert len(r.registry.query_certifications("u/calib")) == 9


@pytest.mark.postgres
def test_postgres_restart_during_registration_is_retried(own_postgres, tmp_path, mini_dataset, local_dask):
    """The server restarts while a submission registers: registration retries and nothing is lost."""
    import psycopg

    from cpframe.execution.execute import execute_plan
    from cpframe.execution.submit import _prepare_run, plan_template
    from cpframe.repository.ingest import ingest_raws
    from tests._run_helpers import RAW_RUN, TICKET, TRUTH_COLLECTION, certify_truth_calibs, variables

    url = own_postgres.new_schema()
    ids = set(mini_dataset.plan.intended["SELECTION_BIAS"])
    files = [mini_dataset.path(e, d) for e in sorted(ids) for d in mini_dataset.detectors]
    repo = Repository.create(tmp_path / "pg", db_url=url)
    try:
        report = ingest_raws(repo, files, run=RAW_RUN, transfer="copy", processes=1)
        assert not report.failed
        certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / "calibs")
        repo.registry.set_chain(f"{INST}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="", RERUN="pg")
        out = plan_template("bps_bias", environ=env, repo=repo)
        _prepare_run(repo, out)
        schema = url.split("search_path%3D")[1]
        blocker = psycopg.connect(host="127.0.0.1", port=own_postgres.port, user=own_postgres.user,
                                  dbname="postgres")
        blocker.execute(f'LOCK TABLE "{schema}".pending_file IN ACCESS EXCLUSIVE MODE')
        restarted = threading.Event()

        def restart_when_registering():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                if _psql(own_postgres, "select pid from pg_locks where not granted"):
                    own_postgres.ctl("-m", "fast", "-l", str(own_postgres.log), "restart")
                    restarted.set()
                    return
                time.sleep(0.2)

        t = threading.Thread(target=restart_when_registering, daemon=True)
        t.start()
        res = execute_plan(out.plan, repo, local_dask.client, register_attempts=8, register_backoff_s=0.5)
        t.join(timeout=120)
        with_blocker = blocker
        try:
            with_blocker.close()
        except Exception:
            pass
        assert restarted.is_set()
        assert res.ok, res.failure_report()
        planned = sorted((dt, str(d)) for dt, d in out.plan.planned_outputs())
        got = sorted((x.dataset_type, str(x.data_id)) for x in repo.registry.query_datasets(None, [out.plan.run]))
        assert got == planned and repo.registry.pending_files() == []
        assert repo.verify_checksums(repo.registry.query_datasets(None, [out.plan.run])) == []
    finally:
        repo.close()


# -- Slurm: a worker job cancelled in the middle of a run -------------------------------------------------
@pytest.mark.slurm
def test_scancel_of_a_worker_job_mid_run_loses_and_duplicates_nothing(bias_setup, local_slurm, tmp_path):
    import dataclasses

    from cpframe.core.config import Settings
    from cpframe.execution.cluster import load_site, open_cluster
    from cpframe.execution.submit import submit_template

    make, template, run = bias_setup
    root, env = make("slurm")
    site = dataclasses.replace(load_site("slurm-local.yaml"), queue=local_slurm.partition,
                               log_directory=str(tmp_path / "slurm-logs"), local_directory=str(tmp_path / "work"),
                               walltime="00:10:00", worker_lifetime_s=None, worker_lifetime_stagger_s=None)
    oc = open_cluster(Settings(), site=site, kind="slurm", jobs=2)
    try:
        oc.client.wait_for_workers(2, timeout=180)
        jobs = sorted(j.job_id for j in oc.cluster.workers.values())
        cancelled = []

        def cancel_one_when_busy():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                busy = {w for w, n in oc.client.processing().items() if n}
                if busy:
                    subprocess.run(["scancel", jobs[0]], capture_output=True)
                    cancelled.append(jobs[0])
                    return
                time.sleep(0.1)

        t = threading.Thread(target=cancel_one_when_busy, daemon=True)
        t.start()
        res = submit_template(template, environ=env, client=oc.client)
        t.join(timeout=60)
        assert cancelled, "no task ever ran"
        with Repository.open(root) as r:
            refs = r.registry.query_datasets(None, collections=[run])
            keys = [(x.dataset_type, str(x.data_id)) for x in refs]
            assert len(keys) == len(set(keys))  # nothing duplicated
            assert sorted(keys) == sorted((dt, str(d)) for dt, d in res.plan.planned_outputs())  # nothing lost
        assert inconsistencies(root) == []
    finally:
        oc.close()


@pytest.mark.postgres
def test_two_machines_certifying_at_once_never_both_win(postgres_server, tmp_path):
    """Two processes certify overlapping ranges into one CALIBRATION collection at the same moment."""
    url = postgres_server.new_schema()
    with Repository.create(tmp_path / "pg", db_url=url) as r:
        r.register_instrument(INST, "mini")
        put_bias(r, "u/a", range(9), tmp_path / "a")
        put_bias(r, "u/b", range(9), tmp_path / "b")
    root = tmp_path / "pg"
    for i in range(3):
        cal = f"u/calib/{i}"
        procs = [subprocess.Popen([sys.executable, "-m", "cpframe", "certify-calibrations", str(root), run, cal, "bias",
                                   "--begin-date", begin], env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for run, begin in (("u/a", "2024-01-01"), ("u/b", "2024-06-01"))]
        outs = [p.communicate(timeout=300) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 3], (codes, outs)
        loser = [e for p, (_, e) in zip(procs, outs) if p.returncode == 3][0]
        assert "Traceback" not in loser and ("overlap" in loser or "same time" in loser), loser
        with Repository.open(root) as r:
            runs = {x.run for x in r.registry.query_certifications(cal)}
            assert len(runs) == 1 and len(r.registry.query_certifications(cal)) == 9
