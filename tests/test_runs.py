"""``cpframe submit --detach`` / ``status`` / ``cancel`` with real processes and a real repository.

The detached submission is a separate process in its own session (it survives the shell that
started it); its state file is the only channel, as for a person in another terminal.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.core.errors import UserInputError
from cpframe.execution.runs import cancel_run, effective_state, format_status, list_runs, read_state

from tests._run_helpers import INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables


@pytest.fixture
def bias_env(tmp_path, mini_dataset, monkeypatch):
    repo = make_repo(tmp_path / "repo", mini_dataset)
    certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / "calibs")
    repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
    repo.close()
    env = variables(tmp_path / "repo", tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="")
    env.pop("PATH")
    runs = tmp_path / "runs"
    env["CPFRAME_RUNS_DIR"] = str(runs)
    # a small local cluster for the background process
    env.update({"DASK_CPFRAME__CLUSTER__N_WORKERS": "1"})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return tmp_path / "repo", runs


def _wait(run_id, runs, until, timeout_s=600):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        s = read_state(run_id, runs)
        if until(s):
            return s
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} stuck: {read_state(run_id, runs)}; log:\n"
                         f"{open(read_state(run_id, runs)['log']).read()[-3000:]}")


def test_detach_returns_at_once_and_status_follows_to_done(bias_env):
    repo_root, runs = bias_env
    t0 = time.monotonic()
    out = CliRunner().invoke(main, ["submit", "bps_bias", "--detach"])
    assert out.exit_code == 0, out.output
    started_s = time.monotonic() - t0
    run_id = out.stdout.strip().splitlines()[0]
    st = read_state(run_id, runs)
    assert st["pid"] != os.getpid() and effective_state(st) in ("starting", "running")
    assert started_s < 30  # returned long before the submission finished (it plans, starts a cluster, runs)
    final = _wait(run_id, runs, lambda s: effective_state(s) not in ("starting", "running"))
    assert final["state"] == "done", open(final["log"]).read()[-2000:]
    c = final["counts"]
    assert c["done"] == c["total"] > 0 and c["failed"] == 0 and c["pending"] == 0
    from cpframe.repository.repo import Repository

    with Repository.open(repo_root) as repo:
        assert len(repo.registry.query_datasets("bias", collections=[final["run"]])) == 2
    status = CliRunner().invoke(main, ["status"])
    assert run_id in status.output and "done" in status.output and final["run"] in status.output
    one = json.loads(CliRunner().invoke(main, ["status", run_id, "--json"]).output)
    assert one[0]["counts"] == c
    with pytest.raises(UserInputError, match=f"run {run_id} is done, not running"):
        cancel_run(run_id, directory=runs)


def test_cancel_stops_cleanly_and_keeps_only_registered_outputs(bias_env):
    repo_root, runs = bias_env
    for _ in range(3):  # on a fast, quiet machine the mini run may finish before the cancel lands: try again
        out = CliRunner().invoke(main, ["submit", "bps_bias", "--detach"])
        run_id = out.stdout.strip().splitlines()[0]
        st = _wait(run_id, runs, lambda s: s.get("state") == "running" or effective_state(s) not in
                   ("starting", "running"))
        assert st["state"] == "running", st  # the RUN exists and quanta are submitted
        res = CliRunner().invoke(main, ["cancel", run_id])
        final = read_state(run_id, runs)
        if final["state"] == "cancelled":
            assert res.exit_code == 0, res.output
            break
        # too late: every quantum had finished, and the run says so instead of claiming a cancellation (or had
        # even exited: then there is nothing to cancel)
        assert final["state"] == "done" and final["counts"]["done"] == final["counts"]["total"], final
        assert ((res.exit_code == 0 and "had finished every quantum before the cancel arrived" in res.output)
                or (res.exit_code != 0 and "is done, not running: nothing to cancel" in res.output)), res.output
    assert final["state"] == "cancelled" and not effective_state(final) == "lost", final
    from cpframe.repository.repo import Repository

    with Repository.open(repo_root) as repo:
        reg = repo.registry
        names = {c.name for c in reg.query_collections("*")}
        if final["run"] in names:  # something was registered: only complete outputs, and it is recorded
            refs = reg.query_datasets(None, collections=[final["run"]])
            assert all(repo.get_path(r).is_file() for r in refs)
        # nothing half-written is left: the run's scratch area is gone
        scratch = repo_root / ".cpframe-scratch"
        assert not scratch.exists() or not any(scratch.iterdir()), \
            sorted(str(f.relative_to(scratch)) for f in scratch.rglob("*"))  # what leaked, if anything
    assert "cancelled" in format_status(list_runs(runs))


def test_a_signal_after_the_run_finished_does_not_interrupt_it(tmp_path):
    """SIGTERM interrupts a submission until its quanta have finished (``mark_finished``); after that, in the
    clean-up, the provenance record or the detached process's last state update, it is recorded and ignored
    (a ``cpframe cancel`` that came too late must not turn a complete run into a 'cancelled, nothing written')."""
    import signal

    from cpframe.execution.execute import Interrupted, mark_finished, run_finished, signals_interrupt
    from cpframe.execution.runs import RunTracker

    with pytest.raises(Interrupted), signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # the handler raises in the main thread before this ends
    old = signal.getsignal(signal.SIGTERM)
    tracker = RunTracker("r1", tmp_path)
    try:
        tracker.install_sigterm()
        with signals_interrupt():
            assert not run_finished()
            mark_finished()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        # the detached process's own handler (back in place) also lets the run record its real outcome
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        assert read_state("r1", tmp_path)["cancel_requested"] is True
        with signals_interrupt():
            assert not run_finished()  # cleared when the next submission starts
    finally:
        signal.signal(signal.SIGTERM, old)
    with pytest.raises(KeyboardInterrupt):  # and before the run finished, the tracker's handler stops it
        try:
            tracker.install_sigterm()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        finally:
            signal.signal(signal.SIGTERM, old)


def test_the_launcher_pid_stands_until_the_submission_writes_its_own(tmp_path):
    """start_detached records the child's pid beside state.json (never rewriting the state the child owns)."""
    d = tmp_path / "r2"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"id": "r2", "state": "starting", "created": "x"}))
    (d / "pid").write_text(str(os.getpid()))
    st = read_state("r2", tmp_path)
    assert st["pid"] == os.getpid() and effective_state(st) == "starting"
    assert list_runs(tmp_path)[0]["pid"] == os.getpid()
    (d / "state.json").write_text(json.dumps({"id": "r2", "state": "running", "pid": 2**22 + 9}))
    assert read_state("r2", tmp_path)["pid"] == 2**22 + 9 and effective_state(read_state("r2", tmp_path)) == "lost"


def test_unknown_run_and_lost_process(tmp_path):
    with pytest.raises(UserInputError, match="no run 'nope'"):
        read_state("nope", tmp_path)
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "state.json").write_text(json.dumps({"id": "r1", "state": "running", "pid": 2**22 + 7}))
    assert effective_state(read_state("r1", tmp_path)) == "lost"
