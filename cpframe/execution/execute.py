"""Run a plan's graph on a ``distributed.Client`` and register its outputs into the RUN.

* Every quantum is one Dask task (:func:`cpframe.execution.graph.build_graph`), retried up to
  ``retries`` times when it raises (the submission's ``numberOfRetries``).  A worker that
  is lost (killed, out of memory, walltime) has its tasks rescheduled by Dask.
* Workers write outputs to scratch files; the **driver** registers them with
  ``Repository.put_files(..., transfer="move")`` as each quantum finishes -- file and row
  together, in one transaction per quantum.  Registration happens here, once per output:
  a quantum recomputed after a lost worker writes the same scratch paths again, and an
  output already registered is never registered twice.
* A quantum that still fails after its retries does not stop the others: everything
  that does not depend on it finishes and is registered.  The RUN therefore only ever
  holds complete, registered outputs; :class:`ExecutionResult` says what is missing.

* Registration never throws computed work away (issue 11): a registration that fails
  because the registry is busy or unreachable, or the disk is full, is retried with
  exponential backoff (:data:`REGISTER_ATTEMPTS`, :data:`REGISTER_BACKOFF_S`); if it still
  fails, the outputs are **staged** -- moved to ``<datastore>/.cpframe-staged/<run>/`` with a
  manifest -- and :func:`register_staged` (called by ``cpframe submit --extend-run``) registers
  them later without recomputing.
* SIGINT/SIGTERM (Slurm's walltime signal) never cut a registration in half: inside
  :func:`registering` the signal waits until the transaction has committed or rolled back
  (see :class:`Interrupted` and :func:`signals_interrupt`).
* Scratch directories carry an ``.owner`` file; ``Repository.open`` removes those of
  processes that are gone (kill -9), so scratch never leaks.

The caller (``cpframe.execution.submit``) creates the RUN before and records provenance after.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cpframe.core.errors import DiskFullError, ServiceError
from cpframe.core.model import DataId, DatasetRef

__all__ = ["ExecutionResult", "execute_plan", "scratch_dir_for", "staging_dir_for", "register_staged",
           "staged_outputs", "remove_scratch", "Interrupted", "signals_interrupt", "registering", "raise_if_signalled", "REGISTER_ATTEMPTS",
           "REGISTER_BACKOFF_S"]

log = logging.getLogger("cpframe.execution.execute")

_MUTED: dict[str, int] = {}


def mute_dask_logs() -> None:
    """Only critical messages of Dask (and asyncio) until :func:`restore_dask_logs`: after SIGINT/SIGTERM.

    The run is then abandoned and its quanta cancelled, and the scheduler of a local cluster (in this process)
    may log errors about futures cancelled under it, with a traceback (seen: ``assert ts.who_wants`` in
    ``add_client``, a quantum's worker client registering as the quantum was cancelled; then asyncio's "Task
    exception was never retrieved").  A user who stopped the run must not read them as a crash.
    """
    names = ["distributed", "asyncio"] + [n for n, lg in logging.root.manager.loggerDict.items()
                                          if n.startswith("distributed.") and isinstance(lg, logging.Logger)
                                          and lg.level != logging.NOTSET]
    for name in names:
        lg = logging.getLogger(name)
        _MUTED.setdefault(name, lg.level)
        lg.setLevel(logging.CRITICAL)


def restore_dask_logs() -> None:
    """The levels :func:`mute_dask_logs` changed, as they were (``cpframe submit``, once its cluster is closed)."""
    for name, level in list(_MUTED.items()):
        logging.getLogger(name).setLevel(level)
    _MUTED.clear()

#: Attempts to register one quantum's outputs before they are staged.
REGISTER_ATTEMPTS = 4
#: First wait between attempts (doubles each time: 2, 4, 8 s).
REGISTER_BACKOFF_S = 2.0
#: Errors after which a registration is retried, then staged (the registry or the disk may recover).
TRANSIENT = (ServiceError, DiskFullError)
STAGED_DIR = ".cpframe-staged"
SCRATCH_DIR = ".cpframe-scratch"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; ``signum`` says which (exit code ``128 + signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Guard:
    """Defers SIGINT/SIGTERM while a registration commits (so it finishes or rolls back whole)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.installed = False
        self.finished = False
        self.received: int | None = None

    def handler(self, signum: int, _frame: Any) -> None:
        if self.finished:  # every quantum has finished and its outputs are registered: nothing left to stop
            log.warning("%s received after the run had finished: it completes as it is",
                        signal.Signals(signum).name)
            return
        if self.depth:
            self.pending = signum
            log.warning("%s received: finishing the registration in progress first", signal.Signals(signum).name)
            return
        # kept until the run sees it: an exception raised in a signal handler is swallowed when the signal lands
        # while Python runs a finalizer or a callback ("Exception ignored in ..."), and the run would go on
        self.received = signum
        raise Interrupted(signum)


def raise_if_signalled() -> None:
    """Raise :class:`Interrupted` for a SIGINT/SIGTERM whose exception was swallowed where it landed (a finalizer,
    a callback): called between quanta and before the run is marked finished, so such a signal still stops it."""
    if _GUARD.received is not None and not _GUARD.finished:
        signum, _GUARD.received = _GUARD.received, None
        raise Interrupted(signum)


_GUARD = _Guard()


@contextlib.contextmanager
def registering() -> Iterator[None]:
    """Block in which SIGINT/SIGTERM wait (a registration commits or rolls back, then the signal acts)."""
    _GUARD.depth += 1
    try:
        yield
    finally:
        _GUARD.depth -= 1
        if not _GUARD.depth and _GUARD.pending is not None:
            signum, _GUARD.pending = _GUARD.pending, None
            raise Interrupted(signum)


def mark_finished() -> None:
    """The run's quanta have all finished (or failed) and their outputs are registered: a SIGINT/SIGTERM
    arriving from now on (a ``cpframe cancel`` that came too late) no longer interrupts the clean-up and the
    provenance record, and the run ends with its real outcome.  Cleared when the next submission starts."""
    _GUARD.finished = True


def run_finished() -> bool:
    """Whether :func:`mark_finished` was called since the current submission started."""
    return _GUARD.finished


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block SIGTERM (and SIGINT) raise :class:`Interrupted` (deferred by :func:`registering`).

    Only the main thread can install signal handlers; elsewhere the block does nothing.
    """
    _GUARD.finished = False  # a new submission: signals stop it until its quanta have finished
    _GUARD.received = None
    if threading.current_thread() is not threading.main_thread() or _GUARD.installed:
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in old:
        signal.signal(sig, _GUARD.handler)
    _GUARD.installed = True
    try:
        yield
    finally:
        _GUARD.installed = False
        _GUARD.pending = None
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class ExecutionResult:
    """What a run produced and what it did not."""

    run: str
    """The RUN written into."""
    registered: list[DatasetRef] = field(default_factory=list)
    """Datasets registered by this run, in completion order."""
    failures: dict[str, str] = field(default_factory=dict)
    """Quantum key -> error text, for quanta that failed themselves (after retries)."""
    not_run: list[str] = field(default_factory=list)
    """Quanta not run because something they read failed."""
    missing: list[tuple[str, DataId]] = field(default_factory=list)
    """Planned outputs not registered."""
    inputs_of: dict[str, list[DatasetRef]] = field(default_factory=dict)
    """Registered dataset id -> raws and calibrations it was made from."""
    compute_s: float = 0.0
    """Seconds from submitting the graph to the last result."""
    register_s: float = 0.0
    """Seconds spent registering (included in ``compute_s``)."""
    n_quanta: int = 0
    """Quanta submitted."""
    where: dict[str, int] = field(default_factory=dict)
    """Host / Slurm job -> quanta it ran."""
    worker_of: dict[str, str] = field(default_factory=dict)
    """Quantum key -> name of the Dask worker that ran it."""
    retried: dict[str, int] = field(default_factory=dict)
    """Quantum key -> times it was run again with more memory (BPS memoryMultiplier)."""
    dask_tasks: int = 0
    """Dask tasks submitted (fewer than quanta when ``cluster.<label>`` groups them; retries add theirs)."""
    walltime_exceeded: list[str] = field(default_factory=list)
    """Quanta stopped because they ran past their ``requestWalltime`` (not retried)."""
    interrupted: bool = False
    """Stopped by SIGINT (Ctrl-C) or SIGTERM."""
    signum: int = 0
    """The signal that stopped the run (0 when not interrupted)."""
    staged: list[tuple[str, DataId]] = field(default_factory=list)
    """Outputs computed but not registered (the registry stayed unavailable): kept in the
    staging directory for :func:`register_staged`."""
    staging_dir: str = ""
    """Where staged outputs wait."""
    registry_error: str = ""
    """The last registration error that made outputs staged."""
    scratch_dir: str = ""
    """The scratch folder used (removed at the end unless kept)."""

    @property
    def ok(self) -> bool:
        """True when every planned output was registered."""
        return not self.missing and not self.failures and not self.interrupted and not self.staged

    def counts(self) -> dict[str, int]:
        """Registered datasets per dataset type."""
        out: dict[str, int] = defaultdict(int)
        for r in self.registered:
            out[r.dataset_type] += 1
        return dict(out)

    def failure_report(self, limit: int = 10) -> str:
        """The failed quanta with the last line of their error, then what is missing."""
        lines = [f"{len(self.failures)} quantum/quanta failed after their retries:"]
        for key, err in list(self.failures.items())[:limit]:
            last = err.strip().splitlines()[-1] if err.strip() else "?"
            lines.append(f"  - {key}: {last}")
        if len(self.failures) > limit:
            lines.append(f"  ... {len(self.failures) - limit} more (the submit log has every traceback)")
        if self.walltime_exceeded:
            lines.append(f"{len(self.walltime_exceeded)} quantum/quanta stopped at their requestWalltime: "
                         + ", ".join(self.walltime_exceeded[:limit]))
        if self.not_run:
            lines.append(f"{len(self.not_run)} quantum/quanta did not run because an input failed.")
        miss: dict[str, int] = defaultdict(int)
        for dt, _ in self.missing:
            miss[dt] += 1
        if miss:
            lines.append("missing outputs: " + ", ".join(f"{n} {dt}" for dt, n in miss.items()))
        if self.staged:
            lines.append(f"{len(self.staged)} computed output(s) could not be registered ({self.registry_error}); "
                         f"they are kept in {self.staging_dir} and registered, without recomputing, by "
                         "--extend-run --skip-existing.")
        if self.interrupted:
            lines.append(f"stopped by {signal.Signals(self.signum or signal.SIGINT).name}: the registration in "
                         "progress finished or was rolled back.")
        if not self.failures:
            lines = lines[1:]
        return "\n".join(lines)


def scratch_dir_for(repo: Any, plan: Any) -> Path:
    """Scratch directory for a plan's worker outputs: inside the datastore, so moves are renames."""
    name = (plan.run.replace("/", "_") + "-" + plan.token)[-150:]
    return Path(repo.datastore_root) / SCRATCH_DIR / name


def staging_dir_for(repo: Any, run: str) -> Path:
    """Where outputs of ``run`` that could not be registered wait (one folder per RUN)."""
    return Path(repo.datastore_root) / STAGED_DIR / run.replace("/", "_")[-200:]


def _stage(repo: Any, run: str, items: list, quantum: str, inputs: list[DatasetRef]) -> Path:
    """Move one quantum's output files to the staging folder and append them to its manifest."""
    d = staging_dir_for(repo, run)
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, dt, did in items:
        target = d / f"{uuid.uuid4().hex[:12]}-{Path(path).name}"
        os.replace(path, target)  # same file system (both inside the datastore): a rename
        lines.append(json.dumps({"run": run, "file": target.name, "dataset_type": dt, "data_id": dict(did),
                                 "quantum": quantum, "inputs": [r.id for r in inputs]}, default=str))
    with open(d / "manifest.jsonl", "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())
    return d


def staged_outputs(repo: Any, run: str) -> list[dict[str, Any]]:
    """Entries of ``run``'s staging manifest whose file is still there."""
    d = staging_dir_for(repo, run)
    manifest = d / "manifest.jsonl"
    if not manifest.is_file():
        return []
    out = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut by a crash while appending: its file is re-made on resume
            continue
        if entry.get("run") == run and (d / entry["file"]).is_file():
            out.append(entry)
    return out


def register_staged(repo: Any, run: str) -> list[DatasetRef]:
    """Register the staged outputs of ``run`` (those not in the RUN yet); returns the new refs.

    Outputs whose data ID is already in the RUN are dropped with their file (they were
    registered meanwhile).  The staging folder is removed when empty.
    """
    d = staging_dir_for(repo, run)
    entries = staged_outputs(repo, run)
    if not entries:
        shutil.rmtree(d, ignore_errors=True)
        _prune_empty(d.parent)
        return []
    reg = repo.registry
    by_type: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        by_type[e["dataset_type"]].append(e)
    todo, done = [], []
    for dt, group in by_type.items():
        found = reg.find_datasets(dt, [e["data_id"] for e in group], [run])
        for e, f in zip(group, found):
            (done if f else todo).append(e)
    refs = []
    if todo:
        with registering():
            refs = repo.put_files([(d / e["file"], e["dataset_type"], e["data_id"]) for e in todo], run,
                                  transfer="move")
    for e in done:
        with contextlib.suppress(FileNotFoundError):
            (d / e["file"]).unlink()
    shutil.rmtree(d, ignore_errors=True)
    _prune_empty(d.parent)
    log.info("registered %d staged output(s) of RUN %s", len(refs), run)
    return refs


def _register(repo: Any, items: list, run: str, attempts: int, backoff_s: float,
              checksums: dict | None = None) -> list[DatasetRef]:
    """``put_files`` with retries and exponential backoff on transient errors; the last one propagates.

    ``checksums``: the sha256 the worker computed of each output (the driver then reads no product).
    """
    for attempt in range(max(1, attempts)):
        try:
            with registering():
                return repo.put_files(items, run, transfer="move", checksums=checksums)
        except TRANSIENT as err:
            if attempt + 1 >= attempts:
                raise
            wait = backoff_s * 2 ** attempt
            log.warning("registration into %s failed (%s); retrying in %.0f s (attempt %d of %d)", run,
                        str(err).splitlines()[0], wait, attempt + 2, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Bar:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, total: int, enabled: bool, label: str):
        self.progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=sys.stderr), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, description: str | None = None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=description)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def execute_plan(plan: Any, repo: Any, client: Any, *, retries: int = 0, scratch_dir: str | Path | None = None,
                 progress: bool = False, keep_scratch: bool = False, clusters: Any = (),
                 resources: Any = None, requests: Any = None,
                 on_progress: Any = None, register_attempts: int | None = None,
                 register_backoff_s: float | None = None, on_registered: Any = None) -> ExecutionResult:
    """Compute every quantum of ``plan`` on ``client`` and register the outputs into ``plan.run``.

    Parameters
    ----------
    plan : cpframe.execution.graph.Plan
    repo : cpframe.repository.repo.Repository
        The RUN ``plan.run`` must exist and the plan's dataset types be registered.
    client : distributed.Client
    retries : int
        Extra attempts of a quantum that raises.
    scratch_dir : path, optional
        Where workers write (default :func:`scratch_dir_for`); removed at the end unless
        ``keep_scratch``.
    progress : bool
        Show a progress bar on stderr.
    resources : mapping, optional
        Quantum key -> Dask worker resources (:func:`cpframe.execution.resources.quantum_resources`):
        such a quantum runs only on a worker advertising that much.
    requests : mapping, optional
        Task label -> :class:`cpframe.execution.submission.Resources`.  A quantum of a task with a
        ``memoryMultiplier`` that runs out of memory (``MemoryError``, or its worker killed) is
        run again with ``requestMemory * memoryMultiplier**n`` (capped at ``requestMemoryMax``),
        at most ``numberOfRetries`` times, with what it reads -- BPS's retry-with-more-memory.
        Quanta of a task with ``requestWalltime``, ``retryUnlessExit`` or ``memoryMultiplier`` run in
        a child process enforcing them (:mod:`cpframe.execution.isolate`); a quantum stopped at its
        walltime is listed in ``result.walltime_exceeded``.
    clusters : sequence, optional
        ``cluster.<label>`` sections: their quanta run grouped, one Dask task per group
        (:func:`cpframe.execution.graph.cluster_groups`); ``result.dask_tasks`` counts the tasks.
    on_progress : callable, optional
        Called with ``{"counts": {total, pending, done, failed, retried}}`` as quanta finish
        (``cpframe status``), and once more with ``"final": True``.
    register_attempts, register_backoff_s : int, float
        Registration attempts on a busy/unreachable registry or a full disk, and the first wait
        (doubled each time); default :data:`REGISTER_ATTEMPTS`, :data:`REGISTER_BACKOFF_S`.
        Outputs still unregistered are staged (``result.staged``).
    on_registered : callable, optional
        Called with the (partial) result after each registration, inside the registration
        guard (the submit driver updates the provenance record with it).

    Returns
    -------
    ExecutionResult
        Never raises for a failed quantum: the result lists failures, missing and staged outputs.
    """
    from distributed import as_completed

    from cpframe.execution.graph import build_graph
    from cpframe.execution.resources import quantum_limits, quantum_requests, quantum_resources

    register_attempts = REGISTER_ATTEMPTS if register_attempts is None else register_attempts
    register_backoff_s = REGISTER_BACKOFF_S if register_backoff_s is None else register_backoff_s
    from cpframe.execution.graph_tasks import GroupResult

    scratch = Path(scratch_dir) if scratch_dir is not None else scratch_dir_for(repo, plan)
    result = ExecutionResult(run=plan.run, n_quanta=len(plan.quanta), scratch_dir=str(scratch))
    registry_down = False
    planned = {(dt, did.key()): did for dt, did in plan.planned_outputs()}
    done_outputs: set[tuple[str, str]] = set()
    status: dict[str, str] = {}
    bar = _Bar(len(plan.quanta), progress, f"{plan.pipeline.name}")
    t0 = time.perf_counter()
    futures = []
    err_type: dict[str, str] = {}
    attempt: dict[str, int] = {}
    limits = quantum_limits(quantum_requests(plan, requests or {}), int(retries))  # per quantum key
    try:
        # made inside the try, so a SIGTERM (cpframe cancel) landing as the run starts still removes it
        # (in CI a cancel just after the run started once left the scratch folder non-empty)
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / ".owner").write_text(f"{socket.gethostname()}:{os.getpid()}\n")  # repair removes it after kill -9
        todo = plan
        rounds = 0
        while True:
            # a memory-retry round's Dask keys differ from the round before (build_graph's key_suffix)
            graph = build_graph(todo, str(scratch), repo.get_path, resources=resources, limits=limits,
                                clusters=clusters, key_suffix=f"~retry{rounds}" if rounds else "")
            rounds += 1
            tasks = {str(d.key): d for d in graph.values()}  # grouped quanta share one Dask task
            members_of: dict[str, list[str]] = defaultdict(list)
            for qkey, d in graph.items():
                members_of[str(d.key)].append(qkey)
            result.dask_tasks += len(tasks)
            futures = client.compute(list(tasks.values()), retries=int(retries), optimize_graph=False)
            log.info("submitted %d quanta of %s as %d Dask task(s) to %s (retries %d)", len(graph), plan.pipeline.name,
                     len(futures), getattr(client, "dashboard_link", "?"), retries)
            for fut in as_completed(futures):
                raise_if_signalled()
                task_key = str(fut.key)
                if fut.status == "finished":
                    value = fut.result()
                    for res in (value.results if isinstance(value, GroupResult) else [value]):
                        key = res.key
                        if status.get(key) != "done":
                            result.where[res.where] = result.where.get(res.where, 0) + 1
                        status[key] = "done"
                        result.failures.pop(key, None)
                        result.worker_of[key] = res.worker
                        items = [(p, dt, did) for p, dt, did in res.outputs
                                 if (dt, DataId(did).key()) in planned and (dt, DataId(did).key()) not in done_outputs]
                        if items:
                            t1 = time.perf_counter()
                            inputs = plan.inputs_of(key)  # walks the quantum's upstream: once, shared by its outputs
                            refs = []
                            if not registry_down:
                                try:
                                    refs = _register(repo, items, plan.run, register_attempts, register_backoff_s,
                                                     checksums=getattr(res, "checksums", None))
                                except TRANSIENT as err:
                                    registry_down = True  # later quanta are staged at once; one last try at the end
                                    result.registry_error = str(err).splitlines()[0]
                                    log.error("registration into %s failed after %d attempts: %s; staging outputs",
                                              plan.run, register_attempts, result.registry_error)
                            if registry_down:
                                result.staging_dir = str(_stage(repo, plan.run, items, key, inputs))
                                result.staged += [(dt, DataId(did)) for _, dt, did in items]
                                done_outputs.update((dt, DataId(did).key()) for _, dt, did in items)  # not twice
                            result.register_s += time.perf_counter() - t1
                            for ref in refs:
                                done_outputs.add((ref.dataset_type, DataId(ref.data_id).key()))
                                result.registered.append(ref)
                                result.inputs_of[ref.id] = inputs
                                log.info("registered %s %s (%s) in %s", ref.dataset_type, ref.data_id, ref.id,
                                         plan.run)
                            if refs and on_registered is not None:
                                try:
                                    with registering():
                                        on_registered(result)
                                except TRANSIENT as err:  # provenance is best effort while the registry is busy
                                    log.warning("could not update the provenance record: %s", err)
                else:
                    try:
                        exc = fut.exception()
                        etype = type(exc).__name__
                        tb = "".join(traceback.format_exception(type(exc), exc, fut.traceback()))
                    except Exception as err:  # cancelled futures have no exception object
                        etype, tb = "", f"{fut.status}: {err}"
                    for key in members_of[task_key]:  # a group fails as a whole, as a BPS job would
                        status[key] = "error"
                        err_type[key] = etype
                        if etype == "WalltimeExceeded" and key not in result.walltime_exceeded:
                            result.walltime_exceeded.append(key)
                        result.failures[key] = tb
                for _ in members_of[task_key]:
                    bar.advance()
                fut.release()
                if on_progress is not None:
                    on_progress({"counts": _counts(plan, status, result)})
            todo = _memory_retry(plan, requests, result.failures, err_type, attempt, status)
            if todo is None:
                break
            resources = quantum_resources(todo, requests, attempt)
            for k in todo.quanta:
                if k in attempt:
                    result.retried[k] = attempt[k]
            log.warning("retrying %d quantum/quanta that ran out of memory with more memory: %s", len(attempt),
                        ", ".join(f"{k} ({resources[k].get('MEMORY', 0) / 2**20:.0f} MiB)"
                                  for k in todo.quanta if k in attempt and k in resources))
    except KeyboardInterrupt as exc:
        result.interrupted = True
        result.signum = getattr(exc, "signum", int(signal.SIGINT))
        log.warning("interrupted: cancelling %d quanta", len(futures))
        mute_dask_logs()
        with contextlib.suppress(Exception):
            client.cancel(futures)
            _wait_idle(client)  # a cancelled quantum already running still writes its scratch file
    finally:
        bar.stop()
        result.compute_s = time.perf_counter() - t0
        if not keep_scratch:
            remove_scratch(scratch)
    # a quantum whose inputs all succeeded failed by itself; the others failed because of them
    own = {}
    for key, err in result.failures.items():
        ups = plan.quanta[key].upstream
        if all(status.get(u) == "done" for u in ups):
            own[key] = err
            log.error("quantum %s failed after %d retries:\n%s", key, retries, err)
        else:
            result.not_run.append(key)
    result.failures = own
    if result.staged and not result.interrupted:  # the registry may be back: one last try, else they wait
        try:
            refs = register_staged(repo, plan.run)
        except TRANSIENT as err:
            result.registry_error = str(err).splitlines()[0]
        except KeyboardInterrupt as exc:
            result.interrupted, result.signum = True, getattr(exc, "signum", int(signal.SIGINT))
        else:
            for ref in refs:
                done_outputs.add((ref.dataset_type, DataId(ref.data_id).key()))
                result.registered.append(ref)
            result.staged = []
    staged = {(dt, did.key()) for dt, did in result.staged}
    result.missing = [(dt, did) for (dt, k), did in planned.items() if (dt, k) not in done_outputs
                      and (dt, k) not in staged]
    if on_progress is not None:
        on_progress({"counts": _counts(plan, status, result), "final": True})
    return result


def remove_scratch(scratch: str | Path) -> None:
    """Remove a scratch folder and its parent when empty (a task still running may race: call again
    once the workers are stopped)."""
    scratch = Path(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    _prune_empty(scratch.parent)


def _executing(dask_worker: Any) -> int:
    # Client.run passes the worker as ``dask_worker`` (get_worker() is for task threads only)
    return int(dask_worker.state.executing_count)


def _wait_idle(client: Any, timeout_s: float = 120.0) -> None:
    """Wait until no worker runs a task (Dask cannot stop a running thread), so cleanup comes last."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not any(client.run(_executing).values()):
                return
        except Exception as err:  # noqa: BLE001 - workers gone: nothing runs any more
            log.debug("waiting for idle workers: %s", err)
            return
        time.sleep(0.2)
    log.warning("workers still busy %.0f s after cancelling; their scratch files may remain", timeout_s)


def _counts(plan: Any, status: dict, result: ExecutionResult) -> dict[str, int]:
    """Quanta per state, as ``bps report`` shows them."""
    done = sum(1 for v in status.values() if v == "done")
    failed = sum(1 for v in status.values() if v == "error")
    total = len(plan.quanta)
    return {"total": total, "pending": total - done - failed, "done": done, "failed": failed,
            "retried": len(result.retried)}


#: Exception types meaning "ran out of memory": raised in the task, or its worker killed (by the nanny)
MEMORY_ERRORS = ("MemoryError", "KilledWorker", "QuantumOutOfMemory")


def _memory_retry(plan: Any, requests: Any, failures: dict, err_type: dict, attempt: dict, status: dict) -> Any:
    """The part of ``plan`` to run again with more memory, or None.

    The quanta that ran out of memory (with a task allowing growth and retries left), the quanta
    below them that did not run, and everything above them (their inputs are passed in memory).
    """
    if not requests:
        return None
    from cpframe.execution.resources import quantum_requests

    per_quantum = quantum_requests(plan, requests)  # a fused quantum's cover the ISR it runs
    grow = []
    for key in failures:
        r = per_quantum.get(key)
        if r is None or not r.memory_multiplier or err_type.get(key) not in MEMORY_ERRORS:
            continue
        if attempt.get(key, 0) >= (r.retries if r.retries is not None else 5):
            continue
        if r.memory_for_attempt(attempt.get(key, 0) + 1) == r.memory_for_attempt(attempt.get(key, 0)):
            continue  # at requestMemoryMax already: more of the same would fail the same way
        grow.append(key)
    if not grow:
        return None
    for key in grow:
        attempt[key] = attempt.get(key, 0) + 1
    keep = set(grow)
    changed = True
    while changed:  # downstream not done
        changed = False
        for k, q in plan.quanta.items():
            if k not in keep and status.get(k) != "done" and set(q.upstream) & keep:
                keep.add(k)
                changed = True
    stack = list(keep)
    while stack:  # upstream (inputs are passed in memory, so they run again; outputs are not re-registered)
        for u in plan.quanta[stack.pop()].upstream:
            if u not in keep:
                keep.add(u)
                stack.append(u)
    import dataclasses

    return dataclasses.replace(plan, quanta={k: q for k, q in plan.quanta.items() if k in keep})


def _prune_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
