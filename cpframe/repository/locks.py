"""One writer per RUN: a lock row in the registry with its owner and a heartbeat.

Two submissions writing into one RUN would mix their outputs, and the clean-up of one could
delete the other's (issue 11).  A submission therefore takes the RUN's lock before it creates
or extends the RUN and holds it until it has recorded its provenance:

* the lock is a row of the registry table ``run_lock`` (``run``, ``owner``, ``command``,
  ``started_ns``, ``heartbeat_ns``), so it works the same on SQLite and PostgreSQL and for
  writers on different machines;
* the owner is ``<hostname>:<pid>:<token>``; a background thread refreshes the heartbeat
  every :data:`HEARTBEAT_S` seconds;
* a second writer gets :class:`~cpframe.core.errors.RunLockedError` naming the owner, its
  command and its last heartbeat;
* a lock whose owner is gone (same host and the process no longer exists, or another host
  and no heartbeat for :data:`STALE_AFTER_S` seconds) is *stale*: it is never taken silently,
  but ``take_over=True`` (``--take-over-lock``) takes it.  A live owner's lock is never taken.

The butler has no such lock (``pipetask --extend-run`` from two places interleaves); this is
a deliberate addition, documented in docs/guarantees.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Any

from cpframe.core.errors import RunLockedError
from cpframe.core.model import ns_to_iso

__all__ = ["RunLock", "lock_run", "owner_is_gone", "describe_lock", "pid_alive", "HEARTBEAT_S", "STALE_AFTER_S"]

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a held lock.
HEARTBEAT_S = 30.0
#: A lock of another host without a heartbeat for this long is stale (its owner is gone).
STALE_AFTER_S = 600.0


def _now_ns() -> int:
    from cpframe.core.model import tai_now_ns

    return tai_now_ns()


def pid_alive(pid: int) -> bool:
    """A process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(row: dict[str, Any], now_ns: int | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
    """True when the lock's owner no longer runs (same host, dead pid) or stopped its heartbeat."""
    host, _, rest = str(row.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        return not pid_alive(int(pid))
    now_ns = _now_ns() if now_ns is None else now_ns
    return now_ns - int(row.get("heartbeat_ns") or 0) > stale_after_s * 1e9


def describe_lock(row: dict[str, Any]) -> str:
    """``host:pid (command), started ..., last heartbeat N s ago`` for messages."""
    age = max(0.0, (_now_ns() - int(row.get("heartbeat_ns") or 0)) / 1e9)
    owner = ":".join(str(row.get("owner", "?")).split(":")[:2])
    cmd = f" running `{row['command']}`" if row.get("command") else ""
    return (f"{owner}{cmd}, started {ns_to_iso(row.get('started_ns')) or '?'} TAI, "
            f"last heartbeat {age:.0f} s ago")


class RunLock:
    """A held RUN lock; refreshes its heartbeat until :meth:`release` (or the ``with`` block ends)."""

    def __init__(self, registry: Any, run: str, owner: str, heartbeat_s: float = HEARTBEAT_S):
        self.registry = registry
        self.run = run
        self.owner = owner
        self.taken_over: dict[str, Any] | None = None
        """The stale lock row this lock replaced, if any."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"cpframe-run-lock-{run}")
        self._thread.start()

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                if not self.registry.heartbeat_run_lock(self.run, self.owner):
                    log.error("the lock of RUN %s was taken from this process (%s)", self.run, self.owner)
                    return
            except Exception as err:  # noqa: BLE001 - a database blip must not kill the submission
                log.warning("could not refresh the lock of RUN %s: %s", self.run, err)

    def release(self) -> None:
        """Stop the heartbeat and drop the lock row (never raises)."""
        self._stop.set()
        try:
            self.registry.release_run_lock(self.run, self.owner)
        except Exception as err:  # noqa: BLE001 - the row is stale now; the next writer can take it over
            log.warning("could not release the lock of RUN %s: %s", self.run, err)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_run(registry: Any, run: str, command: str = "", *, take_over: bool = False,
             heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> RunLock:
    """Take the lock of ``run`` (see the module docstring).

    Parameters
    ----------
    registry : SqlRegistry
    run : str
    command : str
        Shown to a second writer (e.g. the command line).
    take_over : bool
        Take a *stale* lock (its owner is gone).  A live owner's lock is never taken.

    Raises
    ------
    RunLockedError
        The RUN is locked by a live owner, or by a gone one and not ``take_over``.
    """
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def decide(row: dict[str, Any]) -> bool:
        return take_over and owner_is_gone(row, stale_after_s=stale_after_s)

    try:
        previous = registry.acquire_run_lock(run, owner, command, take_over=decide)
    except RunLockedError as err:
        row = err.lock
        if owner_is_gone(row, stale_after_s=stale_after_s):
            msg = (f"RUN {run!r} is locked by {describe_lock(row)}, which is no longer running. If no other "
                   "process writes into this RUN, take the lock over: add --take-over-lock (with "
                   "--extend-run --skip-existing to finish its work).")
        else:
            msg = (f"RUN {run!r} is being written by {describe_lock(row)}. Wait for it to finish, or write into "
                   "another RUN: two writers in one RUN would mix their outputs.")
        new = RunLockedError(msg)
        new.lock = row
        raise new from None
    lock = RunLock(registry, run, owner, heartbeat_s)
    lock.taken_over = previous
    if previous is not None:
        log.warning("took over the stale lock of RUN %s from %s", run, describe_lock(previous))
    return lock
