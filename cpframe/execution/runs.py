"""Run management like BPS: detached submissions, their state and per-task counts, cancel.

``cpframe submit --detach`` starts the submission as its own process (a new session, so it
survives the shell that started it) and returns a run id at once.  The process keeps a small
state file up to date; ``cpframe status`` reads every state file (like ``bps report``) and
``cpframe cancel`` asks the process to stop (SIGTERM to its recorded process id only).  A cancelled
submission stops like one interrupted with Ctrl-C: what was registered stays in the RUN, the
rest is cancelled and its scratch files removed; if nothing was registered the new RUN is
removed again (:mod:`cpframe.execution.submit`).

State lives in ``$CPFRAME_RUNS_DIR`` (default ``$XDG_STATE_HOME/cpframe/runs``, i.e.
``~/.local/state/cpframe/runs``): one folder per run id with ``state.json`` and ``submit.log``.

States: ``starting`` (process started, planning) -> ``running`` (quanta submitted) -> ``done`` |
``failed`` | ``cancelled``; ``lost`` when the state says starting/running but the process is gone
(killed, machine restarted).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cpframe.core.errors import UserInputError

__all__ = [
    "ACTIVE",
    "FINAL",
    "RunTracker",
    "cancel_run",
    "effective_state",
    "format_status",
    "list_runs",
    "read_state",
    "runs_dir",
    "start_detached",
]

ACTIVE = ("starting", "running")
FINAL = ("done", "failed", "cancelled")


def runs_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where run states are kept (``$CPFRAME_RUNS_DIR``, else ``$XDG_STATE_HOME/cpframe/runs``)."""
    env = os.environ if environ is None else environ
    if env.get("CPFRAME_RUNS_DIR"):
        return Path(env["CPFRAME_RUNS_DIR"])
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "cpframe" / "runs"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, data: Mapping[str, Any] | int) -> None:
    """Atomically replace ``path`` (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    """A ``state.json``, with the process id the launcher recorded beside it (``pid``) until the
    submission has written its own."""
    state = json.loads(path.read_text())
    if not state.get("pid"):
        try:
            state["pid"] = int((path.parent / "pid").read_text())
        except (OSError, ValueError):
            pass
    return state


def read_state(run_id: str, directory: Path | None = None) -> dict:
    """The state of ``run_id``; UserInputError names the known ids when it does not exist."""
    d = (directory or runs_dir()) / run_id
    try:
        return _load(d / "state.json")
    except FileNotFoundError:
        known = [s["id"] for s in list_runs(directory)][-10:]
        raise UserInputError(f"no run {run_id!r} in {directory or runs_dir()}; known runs: "
                             f"{', '.join(known) or '(none)'} (cpframe status lists them).") from None


def list_runs(directory: Path | None = None) -> list[dict]:
    """Every run's state, oldest first."""
    d = directory or runs_dir()
    out = []
    for f in sorted(d.glob("*/state.json")) if d.is_dir() else ():
        try:
            out.append(_load(f))
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
    return sorted(out, key=lambda s: s.get("created", ""))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child, not reaped yet) is not running
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def effective_state(state: Mapping[str, Any]) -> str:
    """``state`` as recorded, or ``lost`` when it claims to be active but its process is gone."""
    s = str(state.get("state", "?"))
    if s in ACTIVE and not _alive(state.get("pid")):
        return "lost"
    return s


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-xxxx`` (sortable, unique enough for one user).

    >>> len(new_run_id()) == 21
    True
    """
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def start_detached(argv: Sequence[str], *, template: str, environ: Mapping[str, str] | None = None,
                   directory: Path | None = None) -> str:
    """Start ``cpframe <argv> --run-id ID`` as a new session and return ID at once.

    The child's output goes to ``<runs dir>/<ID>/submit.log``; its state to ``state.json``.
    """
    base = directory or runs_dir(environ)
    run_id = new_run_id()
    d = base / run_id
    d.mkdir(parents=True, exist_ok=False)
    env = dict(os.environ if environ is None else environ)
    env["CPFRAME_RUNS_DIR"] = str(base)
    log = d / "submit.log"
    state = {"id": run_id, "template": template, "argv": ["cpframe", *argv], "state": "starting",
             "created": _now(), "updated": _now(), "log": str(log), "counts": {}, "cwd": os.getcwd()}
    _write(d / "state.json", state)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cpframe", *argv, "--run-id", run_id], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=os.getcwd())
    # beside the state, not into it: the child writes its state (with its own pid) from now on, and a
    # read-modify-write here could put back an older state over a newer one
    _write(d / "pid", proc.pid)
    return run_id


class RunTracker:
    """Keeps one run's ``state.json`` up to date from inside the submitting process."""

    def __init__(self, run_id: str, directory: Path | None = None, min_interval_s: float = 1.0):
        self.dir = (directory or runs_dir()) / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.json"
        try:
            self.state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.state = {"id": run_id, "created": _now(), "counts": {}}
        self.state["pid"] = os.getpid()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self.update(state="starting")

    def update(self, force: bool = True, **changes: Any) -> None:
        """Merge ``changes`` and write (at most every ``min_interval_s`` unless ``force``)."""
        self.state.update(changes)
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.state["updated"] = _now()
        _write(self.path, self.state)

    def progress(self, event: Mapping[str, Any]) -> None:
        """Callback for :func:`cpframe.execution.execute.execute_plan` (counts per state)."""
        counts = dict(event.get("counts") or {})
        changes: dict[str, Any] = {"counts": counts, "state": "running"}
        for k in ("run", "output", "submit_dir"):
            if event.get(k):
                changes[k] = event[k]
        self.update(force=bool(event.get("final")) or "run" in event, **changes)

    def install_sigterm(self) -> None:
        """SIGTERM (``cpframe cancel``) stops the submission as Ctrl-C does."""
        def handler(signum, frame):
            from cpframe.execution.execute import run_finished

            self.update(cancel_requested=True)
            if run_finished():  # the run's outcome is known: it is recorded as it is ("done", "failed")
                return
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)


def cancel_run(run_id: str, *, directory: Path | None = None, wait_s: float = 60.0,
               poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Ask run ``run_id`` to stop (SIGTERM to its process id) and wait until it has.

    Returns
    -------
    dict
        Its final state.

    Raises
    ------
    UserInputError
        Unknown run, or one that is not active (the message says its state).
    """
    state = read_state(run_id, directory)
    eff = effective_state(state)
    if eff not in ACTIVE:
        raise UserInputError(f"run {run_id} is {eff}, not running: nothing to cancel.")
    try:
        os.kill(int(state["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = read_state(run_id, directory)
        if effective_state(state) not in ACTIVE:
            break
        sleep(poll_s)
    return state


def format_status(states: Sequence[Mapping[str, Any]]) -> str:
    """A table like ``bps report``: id, state, counts per quantum state, RUN.

    >>> print(format_status([{"id": "r1", "state": "done", "counts": {"total": 4, "done": 4, "failed": 0,
    ...                       "pending": 0, "retried": 1}, "run": "u/me/x/1"}]))
    ID  STATE  TOTAL  PENDING/RUNNING  DONE  FAILED  RETRIED  RUN
    r1  done       4                0     4       0        1  u/me/x/1
    """
    rows = [("ID", "STATE", "TOTAL", "PENDING/RUNNING", "DONE", "FAILED", "RETRIED", "RUN")]
    for s in states:
        c = s.get("counts") or {}
        rows.append((str(s.get("id", "?")), effective_state(s), *(str(c.get(k, "-")) for k in (
            "total", "pending", "done", "failed", "retried")), str(s.get("run") or s.get("template") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]),
                 *(r[i].rjust(widths[i]) for i in range(2, 7)), r[7]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
