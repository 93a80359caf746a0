"""BPS per-task requests on Dask: worker resources, capacity checks, job environment.

BPS asks the batch system for a job of ``requestMemory`` MiB and ``requestCpus`` cores per
quantum (or per cluster of quanta).  cpframe runs quanta as Dask tasks, so the same keys become
Dask *worker resources*: every cpframe worker advertises ``MEMORY`` (bytes) and ``CPU`` (threads)
(:func:`worker_resources`), and a quantum whose task requests memory or cores is annotated with
them; the Dask scheduler then only places it on a worker with that much free, and never on a
smaller one.  Before anything is written, :func:`check_capacity` refuses a run whose request no
worker (and, on a batch cluster, no job the site can start) can satisfy -- otherwise Dask would
wait for ever.

The ``environment`` section is applied on the workers by :class:`EnvironmentPlugin`; ``${VAR}``
and ``<ENV:VAR>`` left in its values are expanded there, from the worker's own environment, as
BPS does on the compute node.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from cpframe.core.errors import ExecutionError

__all__ = [
    "EnvironmentPlugin",
    "MSG_TOO_SMALL",
    "MSG_TOO_SMALL_FUSED",
    "capacity_requests",
    "check_capacity",
    "expand_deferred",
    "merge_requests",
    "quantum_limits",
    "quantum_requests",
    "quantum_resources",
    "task_requests",
    "worker_resources",
]

MSG_TOO_SMALL = (
    "task {task} requests {what}, but no worker can run it: the largest has {have}. Give the cluster "
    "bigger workers (worker-memory / the site's memory and cores) or lower the request in the template "
    "(pipetask.{task}.requestMemory / requestCpus)."
)
MSG_TOO_SMALL_FUSED = (
    "task {task} runs {isr} ISR in memory (fused, no ISR file), so its quanta request the {larger} "
    "tasks' requests, {what}, but no worker can run them: the largest has {have}. Give the cluster bigger "
    "workers, lower {lower} requestMemory / requestCpus in the template, or run them "
    "apart with fuseIsr: false in the pipeline (on the combine task of a dark or flat, on the verifyStats "
    "task of a verification)."
)
_DEFERRED = re.compile(r"<ENV:([A-Za-z_]\w*)>|\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")


def worker_resources(memory_bytes: int, threads: int) -> dict[str, float]:
    """What one cpframe worker advertises.

    >>> worker_resources(2**30, 2)
    {'MEMORY': 1073741824, 'CPU': 2}
    """
    return {"MEMORY": int(memory_bytes), "CPU": int(threads)}


def task_requests(submission: Any, pipeline: Any) -> dict[str, Any]:
    """Task label -> :class:`cpframe.execution.submission.Resources`, for tasks that request something
    (memory, cores, a walltime, retryUnlessExit or a memoryMultiplier)."""
    out = {}
    for label in pipeline.labels:
        r = submission.resources_for(label)
        if r.memory_mib is not None or r.cpus is not None or _limited(r):
            out[label] = r
    return out


def _limited(r: Any) -> bool:
    """The task asks for a limit only a child process can enforce."""
    return bool(r.walltime_s or r.retry_unless_exit or (r.memory_multiplier and r.memory_multiplier > 1
                                                         and r.memory_mib is not None))


def merge_requests(a: Any, b: Any) -> Any:
    """What a quantum doing the work of two tasks requests: the larger of each (requestMemory, requestCpus,
    requestWalltime, requestMemoryMax, memoryMultiplier, numberOfRetries), every retryUnlessExit code of
    either; a request only one sets is kept; None when neither requests anything.

    >>> from cpframe.execution.submission import Resources
    >>> merge_requests(Resources(memory_mib=2048, walltime_s=600), Resources(memory_mib=4096, cpus=2, retries=1,
    ...                retry_unless_exit=(2,)))
    Resources(memory_mib=4096, cpus=2, walltime_s=600, retries=1, memory_multiplier=None, memory_max_mib=None, retry_unless_exit=(2,))
    """
    if a is None or b is None:
        return a if b is None else b
    from dataclasses import fields, replace

    def larger(x: Any, y: Any) -> Any:
        return x if y is None else y if x is None else max(x, y)

    merged = {f.name: larger(getattr(a, f.name), getattr(b, f.name)) for f in fields(a) if f.name != "retry_unless_exit"}
    return replace(a, **merged, retry_unless_exit=tuple(sorted(set(a.retry_unless_exit) | set(b.retry_unless_exit))))


def quantum_requests(plan: Any, requests: Mapping[str, Any]) -> dict[str, Any]:
    """Quantum key -> :class:`cpframe.execution.submission.Resources` of the quanta that request something.

    A quantum gets its task's requests, except where the planner fused ISR
    (:mod:`cpframe.execution.graph_fusion`): a quantum that runs ISR quanta's ISR in memory (a fused
    dark's CpDark, a fused flat's CpFlatMeasure, a fused verifyStats; verifyDefects' runs two) gets
    :func:`merge_requests` of its task's and every such ISR task's, as it does all of them; the ISR quanta it
    replaces (placeholders that do nothing) get none.  An ISR quantum that only makes its raw's prepass for a
    fused combine keeps the ISR task's; the fused combine, which streams the raws' ISR in row blocks within its
    ``fusedMemory`` budget, keeps the combine task's (docs/submit.md "Resources").
    """
    if not requests:
        return {}
    from cpframe.execution.graph_fusion import isr_run_in_memory

    in_memory = isr_run_in_memory(plan)
    placeholders = {k for isr_keys in in_memory.values() for k in isr_keys}
    out = {}
    for key, q in plan.quanta.items():
        if key in placeholders:
            continue
        r = requests.get(q.task)
        for isr_key in in_memory.get(key, ()):
            r = merge_requests(r, requests.get(plan.quanta[isr_key].task))
        if r is not None:
            out[key] = r
    return out


def capacity_requests(plan: Any, requests: Mapping[str, Any]) -> dict[Any, Any]:
    """``requests`` plus what each fused quantum running other tasks' ISR asks for (:func:`quantum_requests`),
    under the key ``(task, ISR task, ...)`` (two ISR tasks for verifyDefects), for :func:`check_capacity`: the
    tasks' larger memory and larger core count may together exceed every worker though each task's own request
    fits."""
    if not requests:
        return {}
    from cpframe.execution.graph_fusion import isr_run_in_memory

    out: dict[Any, Any] = dict(requests)
    for key, isr_keys in isr_run_in_memory(plan).items():
        task, isr_tasks = plan.quanta[key].task, tuple(dict.fromkeys(plan.quanta[k].task for k in isr_keys))
        merged = requests.get(task)
        for isr_task in isr_tasks:
            merged = merge_requests(merged, requests.get(isr_task))
        if merged is not None and merged != requests.get(task):
            out[(task, *isr_tasks)] = merged
    return out


def quantum_limits(requests: Mapping[str, Any], retries: int) -> dict[str, Any]:
    """Name -> :class:`cpframe.execution.isolate.QuantumLimits` for the requests that ask for BPS job limits
    (task labels, or quantum keys for :func:`quantum_requests`).

    ``requestWalltime``, ``retryUnlessExit`` and ``memoryMultiplier`` (retry with more memory) are
    enforced by running each quantum of such a task in a child process; its memory is limited
    only when it may grow (``memoryMultiplier`` > 1), otherwise ``requestMemory`` only places it.
    ``retries`` is the run's ``numberOfRetries`` for tasks that do not set their own.
    """
    from cpframe.execution.isolate import QuantumLimits

    out = {}
    for label, r in requests.items():
        if not _limited(r):
            continue
        grows = bool(r.memory_multiplier and r.memory_multiplier > 1 and r.memory_mib is not None)
        out[label] = QuantumLimits(
            walltime_s=float(r.walltime_s) if r.walltime_s else None,
            memory_bytes=r.memory_mib * 2**20 if grows else None,
            retries=int(r.retries if r.retries is not None else retries),
            retry_unless_exit=tuple(r.retry_unless_exit or ()))
    return out


def quantum_resources(plan: Any, requests: Mapping[str, Any], attempt: Mapping[str, int] | None = None
                      ) -> dict[str, dict[str, float]]:
    """Quantum key -> Dask resources (``MEMORY`` bytes, ``CPU``) for the quanta of requesting tasks
    (:func:`quantum_requests`: a fused quantum's cover the ISR it runs).

    ``attempt`` (quantum key -> retry number) grows the memory as BPS does after running out of
    memory: ``requestMemory * memoryMultiplier**attempt``, capped at ``requestMemoryMax``.
    """
    out: dict[str, dict[str, float]] = {}
    for key, r in quantum_requests(plan, requests).items():
        res: dict[str, float] = {}
        mib = r.memory_for_attempt((attempt or {}).get(key, 0))
        if mib is not None:
            res["MEMORY"] = mib * 2**20
        if r.cpus is not None:
            res["CPU"] = r.cpus
        out[key] = res
    return out


def check_capacity(client: Any, requests: Mapping[str, Any], scalable: Mapping[str, float] | None = None) -> None:
    """Refuse requests no worker can meet (before anything is written).

    Parameters
    ----------
    client : distributed.Client
    requests : mapping
        Task label -> Resources (:func:`task_requests`), or ``(task, ISR task, ...)`` -> the requests of a fused
        quantum doing the work of all of them (:func:`capacity_requests`).
    scalable : mapping, optional
        Resources of one worker a batch cluster can still start (its job template); counted
        as a worker that may join.

    Raises
    ------
    ExecutionError
        Names the task, what it asks for, and the largest worker.
    """
    if not requests:
        return
    workers = [dict(w.get("resources") or {}) for w in client.scheduler_info(n_workers=-1)["workers"].values()] \
        if _accepts_n_workers(client) else \
        [dict(w.get("resources") or {}) for w in client.scheduler_info()["workers"].values()]
    if scalable:
        workers.append(dict(scalable))
    for label, r in requests.items():
        need = {}
        if r.memory_mib is not None:
            need["MEMORY"] = r.memory_mib * 2**20
        if r.cpus is not None:
            need["CPU"] = r.cpus
        if any(all(w.get(k, 0) >= v for k, v in need.items()) for w in workers):
            continue
        best = max(workers, key=lambda w: (w.get("MEMORY", 0), w.get("CPU", 0)), default={})
        have = (f"{best.get('MEMORY', 0) / 2**20:.0f} MiB and {best.get('CPU', 0):g} core(s)" if best
                else "no worker connected")
        what = " and ".join(x for x in (f"{r.memory_mib} MiB" if r.memory_mib is not None else "",
                                        f"{r.cpus} core(s)" if r.cpus is not None else "") if x)
        if isinstance(label, tuple):
            task, *isr = label
            raise ExecutionError(MSG_TOO_SMALL_FUSED.format(
                task=task, isr=" and ".join(f"{t}'s" for t in isr), what=what, have=have,
                larger="larger of both" if len(label) == 2 else f"largest of the {len(label)}",
                lower=", ".join(f"pipetask.{t}" for t in label[:-1]) + f" or pipetask.{label[-1]}"))
        raise ExecutionError(MSG_TOO_SMALL.format(task=label, what=what, have=have))


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def expand_deferred(value: str, environ: Mapping[str, str]) -> str:
    """Expand ``<ENV:VAR>``, ``${VAR}`` and ``$VAR`` from ``environ``; unset ones become "" (as a shell).

    >>> expand_deferred("<ENV:HOME>/x:${P}:$Q", {"HOME": "/h", "P": "p"})
    '/h/x:p:'
    """
    return _DEFERRED.sub(lambda m: environ.get(m.group(1) or m.group(2) or m.group(3), ""), value)


try:  # distributed is a hard dependency; the guard keeps this module importable for docs
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[assignment,misc]


class EnvironmentPlugin(WorkerPlugin):  # type: ignore[misc,valid-type]
    """Apply a submission's ``environment`` on every worker (also those that join later).

    Values are expanded on the worker, from the worker's environment (deferred ``${VAR}`` /
    ``<ENV:VAR>``).  Removing the plugin restores what the worker had before.
    """

    name = "cpframe-environment"

    def __init__(self, environment: Mapping[str, str]):
        self.environment = dict(environment)
        self._saved: dict[str, str | None] = {}

    def setup(self, worker: Any = None) -> None:
        before = dict(os.environ)
        for name, value in self.environment.items():
            self._saved[name] = before.get(name)
            os.environ[name] = expand_deferred(str(value), before)

    def teardown(self, worker: Any = None) -> None:
        for name, old in self._saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        self._saved.clear()
