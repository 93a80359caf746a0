"""The worker side of a plan: what one Dask task runs for one quantum.

:func:`cpframe.execution.graph.build_graph` wraps :func:`run_quantum` once per quantum.  A worker
gets a small picklable :class:`QuantumSpec` (paths, settings built at plan time) and the
results of the quanta it reads, calls the task kind's run function
(:meth:`cpframe.execution.kinds.TaskKind.run`, which calls :mod:`cpframe.science.tasks` or
:mod:`cpframe.verify`), writes its outputs to the scratch paths
named in the spec (every writer there writes a temporary file and renames it, so a file
that exists is complete), and returns a small :class:`QuantumResult`.  Workers never
touch the registry: the driver registers the files (:mod:`cpframe.execution.execute`).

A worker killed half-way leaves at most a temporary file; Dask runs the quantum again
elsewhere and the rerun writes the same paths.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from cpframe.core.errors import ExecutionError
from cpframe.core.timeline import mark

__all__ = ["GroupResult", "QuantumSpec", "QuantumResult", "run_group", "run_quantum"]


@dataclass(frozen=True)
class QuantumSpec:
    """Everything a worker needs for one quantum (built by the driver; no registry objects)."""

    key: str
    """The quantum's Dask key."""
    kind: str
    """Task kind."""
    task: str
    """Task label."""
    data_id: Mapping[str, Any]
    """Quantum data ID (plain dict)."""
    raw_path: str | None
    """Raw file (ISR)."""
    calib_paths: Mapping[str, Sequence[str]]
    """Calibration type -> absolute file paths."""
    outputs: tuple[tuple[str, str, Mapping[str, Any], bool], ...]
    """(scratch path, dataset type, data ID, registered) per output."""
    settings: Mapping[str, Any]
    """Science-side settings built at plan time."""
    input_types: tuple[str, ...] = ()
    """Dataset type of each input group, in order."""
    input_counts: tuple[int, ...] = ()
    """Number of upstream results in each input group."""
    fused_raws: tuple[str, ...] = ()
    """Kind ``isrCombine``: the raws of the ISR quanta fused into this combine, by exposure; a fused
    ``verifyStats``: the raw of each ISR quantum it runs (the same raw)."""
    fused_calibs: tuple[Mapping[str, str], ...] = ()
    """Kind ``isrCombine``: each raw's ISR calibrations (type -> path); a fused ``verifyStats``: each ISR
    quantum's."""
    fused_isr: Any = None
    """Kind ``isrCombine`` and the prepass kinds: the ISR settings (one IsrConfig for every raw)."""
    fused_keys: tuple[str, ...] = ()
    """Kind ``isrCombine``: the keys of the fused ISR quanta (same order as ``fused_raws``); a fused
    ``verifyStats``: of the ISR quanta it runs, in its input order (the image under test first)."""
    fused_isrs: tuple[Any, ...] = ()
    """A fused ``verifyStats``: each ISR quantum's IsrConfig (same order as ``fused_keys``; verifyDefects runs
    two, with and without the defects), where ``fused_isr`` holds the one IsrConfig of a fused combine."""
    upstream_keys: tuple[str, ...] = ()
    """Key of each upstream result (an upstream value may be a :class:`GroupResult` holding it)."""
    limits: Any = None
    """:class:`cpframe.execution.isolate.QuantumLimits` when the task asks for BPS job limits
    (requestWalltime, retryUnlessExit, memoryMultiplier): the quantum then runs in a child process."""
    raw_cards: tuple[tuple[str, Mapping[str, Any], int, int], ...] = ()
    """(path, translated cards, begin, end ns TAI) of every raw the quantum reads, from the registry
    (:func:`cpframe.science.imageio.remember_raw_cards`): reading them needs no header translation."""


@dataclass
class QuantumResult:
    """What a quantum returns to the driver (small)."""

    key: str
    """The quantum's key."""
    value: Any
    """Passed to the quanta that read this one (stats, measurements, scales)."""
    outputs: list[tuple[str, str, dict]]
    """(scratch path, dataset type, data ID) of the outputs to register."""
    elapsed_s: float = 0.0
    """Seconds the science function took."""
    where: str = ""
    """Host and Slurm job (if any) that ran it."""
    worker: str = ""
    """Name of the Dask worker that ran it."""
    checksums: dict = None
    """Scratch path -> sha256 of each registered output, computed on the worker right after
    writing (page cache warm), so the driver does not read every product again to register it."""

    # ``value`` travels pickled on its own and is unpickled where it is first read (a downstream quantum's
    # worker): the driver, which gathers every result to register its outputs but never reads a value, then
    # neither imports the science modules that define the values' classes (numba, astropy: ~0.5 s of CPU
    # taken from the busy workers of a local run, issue 14) nor unpickles what a prepass carries (its
    # overscan vectors, ~0.2 MB per full-size raw).
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if "value" in state and type(state["value"]) is not _PickledValue:  # not read here: passed on as it came
            state["value"] = _PickledValue(_dumps(state["value"]))
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __getattribute__(self, name: str) -> Any:
        got = object.__getattribute__(self, name)
        if name == "value" and type(got) is _PickledValue:
            import pickle

            got = pickle.loads(got.data)
            object.__setattr__(self, "value", got)  # once
        return got


class _PickledValue:
    """A :class:`QuantumResult`'s value as pickled bytes, until read."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self):
        return (_PickledValue, (self.data,))


def _dumps(value: Any) -> bytes:
    """The value pickled as distributed pickles a task's result: pickle, else cloudpickle (e.g. a local class)."""
    import pickle

    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - what pickle cannot take, cloudpickle can (distributed does the same)
        import cloudpickle

        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class GroupResult:
    """What one Dask task running a ``cluster.<label>`` group of quanta returns: their results, in order."""

    results: list[QuantumResult]
    """One per member quantum."""

    def get(self, key: str) -> QuantumResult:
        """The result of member ``key``."""
        for r in self.results:
            if r.key == key:
                return r
        raise KeyError(key)  # pragma: no cover - build_graph only refers to members


def _resolve(spec: QuantumSpec, upstream: Sequence[Any]) -> list[QuantumResult]:
    """Upstream results, a grouped upstream quantum's picked out of its group's result."""
    if not spec.upstream_keys:
        return list(upstream)
    return [u.get(k) if isinstance(u, GroupResult) else u for u, k in zip(upstream, spec.upstream_keys)]


def run_group(members: Sequence[tuple[QuantumSpec, Sequence[tuple[str, int]]]], external: Sequence[Any]
              ) -> GroupResult:
    """Run the quanta of one ``cluster.<label>`` group, in order, as one Dask task.

    ``members``: each quantum's spec and, per upstream input, ``("member", i)`` (an earlier member's
    result) or ``("external", j)`` (``external[j]``, a result computed outside the group).
    """
    done: list[QuantumResult] = []
    for spec, refs in members:
        ups = [done[i] if where == "member" else external[i] for where, i in refs]
        done.append(run_quantum(spec, ups))
    return GroupResult(done)


def _groups(spec: QuantumSpec, upstream: Sequence[QuantumResult]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    i = 0
    for dt, n in zip(spec.input_types, spec.input_counts):
        out[dt] = [r.value for r in upstream[i:i + n]]
        i += n
    return out


def _isr_combine(spec: QuantumSpec, groups: dict) -> Any:
    """ISR quanta fused into their combine (:mod:`cpframe.science.fused`): no ISR files."""
    from cpframe.execution.kinds.base import output_path
    from cpframe.science.tasks import fused_combine_task

    raws, calibs, keys = list(spec.fused_raws), list(spec.fused_calibs), list(spec.fused_keys)
    pre = list(groups.get("prepass") or [])
    scales = None
    if "scales" in groups:  # a flat: measurements (with the prepasses) and the normalisation's scales
        from cpframe.science.tasks import FlatScales

        (sc,) = [v for v in groups["scales"] if isinstance(v, FlatScales)]
        keep = [i for i, m in enumerate(pre) if m.exposure_id in sc.exp_scale]  # as the unfused combine
        scales = [sc.exp_scale[pre[i].exposure_id] for i in keep]
        raws, calibs, keys = [raws[i] for i in keep], [calibs[i] for i in keep], [keys[i] for i in keep]
        pre = [pre[i] for i in keep]
    pre = [getattr(v, "prepass", v) for v in pre] or None
    cfg = spec.settings["combine"]
    if cfg.fused_threads:
        threads = cfg.fused_threads
    else:  # its own thread + the idle workers' of its node (execution/idle.py), no more than it has raws
        from cpframe.execution.idle import idle_threads_here

        threads = idle_threads_here(limit=len(raws))
    logging.getLogger(__name__).info("%s: streaming %d raws with %d thread(s)", spec.key, len(raws), threads)
    try:
        res = fused_combine_task(raws, output_path(spec), spec.fused_isr, cfg, calibs, scales=scales,
                                 memory_bytes=spec.settings.get("fused_memory_bytes"), prepasses=pre, threads=threads)
    except Exception as err:
        # name the ISR quantum whose raw failed, as the unfused graph would
        text = str(err)
        bad = [(k, p) for k, p in zip(keys, raws) if p in text]
        if not bad:
            raise
        raise ExecutionError(f"ISR quantum {bad[0][0]} (fused into {spec.key}) failed: {text}") from err
    return res.combine


def _isr_prepass(spec: QuantumSpec, groups: dict) -> Any:
    """An ISR quantum fused into its combine: the raw's prepass only (:func:`cpframe.science.fused.prepass`),
    handed to the combine, which streams the raws (no ISR file)."""
    from cpframe.science.fused_tasks import prepass_task

    return prepass_task(spec.fused_raws[0], spec.fused_isr, spec.fused_calibs[0])


def _isr_cr_prepass(spec: QuantumSpec, groups: dict) -> Any:
    """A CpDark quantum fused into its combine: the raw's prepass and its cosmic rays, found on the raw's ISR in
    memory (:func:`cpframe.science.fused.prepass_cosmic_rays`); no file."""
    from cpframe.science.fused_tasks import prepass_cr_task

    return prepass_cr_task(spec.fused_raws[0], spec.fused_isr, spec.fused_calibs[0], spec.settings["cr"])


def _isr_measure_prepass(spec: QuantumSpec, groups: dict) -> Any:
    """A CpFlatMeasure quantum fused into its flat's combine: the raw's ISR in memory, its measurement (for the
    normalisation) carrying the raw's prepass (for the combine)
    (:func:`cpframe.science.fused_tasks.prepass_flat_measure_task`)."""
    from cpframe.science.fused_tasks import prepass_flat_measure_task

    return prepass_flat_measure_task(spec.fused_raws[0], spec.fused_isr, spec.fused_calibs[0], spec.settings["config"])


def without_prepass(res: QuantumResult) -> QuantumResult:
    """A fused CpFlatMeasure quantum's result as the normalisation reads it: the measurement without the raw's
    prepass (~0.2 MB per full raw), so that a focal plane's prepasses do not all travel to one normalisation."""
    from dataclasses import replace

    return replace(res, value=replace(res.value, prepass=None))


def _fused_away(spec: QuantumSpec, groups: dict) -> Any:
    """An ISR quantum whose work the fused CpDark / CpFlatMeasure quantum after it does (kept for progress and
    failure accounting)."""
    return None


#: Graph-only kinds the planner makes when it fuses ISR into a combine (execution/graph.py ``fusion``);
#: no pipeline names them, so they are not :mod:`cpframe.execution.kinds` entries.
_FUSED_RUNNERS: dict[str, Callable[[QuantumSpec, dict], Any]] = {
    "isrCombine": _isr_combine, "isrPrepass": _isr_prepass, "isrCrPrepass": _isr_cr_prepass,
    "isrMeasurePrepass": _isr_measure_prepass, "fusedAway": _fused_away}


def run_quantum(spec: QuantumSpec, upstream: Sequence[QuantumResult]) -> QuantumResult:
    """Run one quantum on a worker.

    Raises
    ------
    ExecutionError
        A registered output was not written.
    Exception
        Whatever the science function raises (Dask retries it, then reports it).
    """
    upstream = _resolve(spec, upstream)
    if spec.limits is not None:
        return _run_limited(spec, upstream)
    mark(f"quantum {spec.kind} start")
    if spec.raw_cards:
        from cpframe.science.imageio import remember_raw_cards

        for path, cards, begin, end in spec.raw_cards:
            remember_raw_cards(path, cards, begin, end)
    t0 = time.perf_counter()
    runner = _FUSED_RUNNERS.get(spec.kind)
    if runner is None:
        # only here: importing the kinds imports the science stack (astropy, scipy, numba), ~1.5 s of
        # CPU a worker that only runs fused-away placeholders never needs (issue 14, pipeline start-up)
        from cpframe.execution.kinds import get_kind

        runner = get_kind(spec.kind).run
    value = runner(spec, _groups(spec, upstream))
    outputs = [(p, dt, dict(did)) for p, dt, did, reg in spec.outputs if reg]
    absent = [p for p, _, _ in outputs if not os.path.isfile(p)]
    if absent:
        raise ExecutionError(f"{spec.key}: the task finished but did not write {', '.join(absent)}.")
    from cpframe.core.files import take_remembered_sha256
    from cpframe.repository.datastore import sha256_file

    # a fits-masked output's digest was taken as it was written (cpframe.science.imageio.write_masked)
    checksums = {p: take_remembered_sha256(p) or sha256_file(p) for p, _, _ in outputs}
    job = os.environ.get("SLURM_JOB_ID")
    where = socket.gethostname() + (f" (Slurm job {job})" if job else "")
    mark(f"quantum {spec.kind} end")
    return QuantumResult(key=spec.key, value=value, outputs=outputs, elapsed_s=time.perf_counter() - t0, where=where,
                         worker=_worker_name(), checksums=checksums)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:  # run outside a worker (tests calling it directly, the isolated child)
        return ""


#: Imported by a memory-limited child before its limit applies (what the task kinds may import lazily).
_PRELOAD = ("cpframe.camera", "cpframe.science", "cpframe.verify", "cpframe.execution.kinds")


def _run_limited(spec: QuantumSpec, upstream: Sequence[QuantumResult]) -> QuantumResult:
    """Run the quantum in a child process under its BPS limits (:mod:`cpframe.execution.isolate`)."""
    from dataclasses import replace

    from cpframe.execution.isolate import call_with_retries

    res = call_with_retries("cpframe.execution.graph_tasks:run_quantum",
                            (replace(spec, limits=None, upstream_keys=()), list(upstream)),
                            spec.limits, label=spec.key, preload=_PRELOAD)
    res.worker = _worker_name()
    return res
