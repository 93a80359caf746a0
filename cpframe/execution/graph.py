"""Planning: Submission + PipelineSpec + registry lookups -> a :class:`Plan` -> a Dask graph.

Planning is the first stage of ``cpframe submit`` and the whole of ``cpframe plan``.
It never computes anything on images and never starts a cluster:

1. resolve the selection (``dataQuery``) against the registry: the raws found first
   through the input collections, and the exposure records (time, filter, exposure time);
2. expand every task of the pipeline into *quanta*, one per distinct value of the
   task's dimensions (spec algorithms.md §11): ISR per exposure x detector, combine per
   detector (x physical_filter), flat normalisation per physical_filter, PTC extract per
   pair of exposures x detector, run merges once...; each quantum knows the quanta whose
   outputs it reads;
3. look up every calibration each quantum needs, find-first through the input
   collections at the time of its exposure, in one batched query per calibration type;
   anything required and missing is reported at once, grouped, in one
   :class:`~cpframe.core.errors.PlanningError` -- before any computation;
4. translate each task's cp_pipe configuration into the science code's settings (also
   at plan time, so a bad option fails here, not on a worker).

:func:`build_graph` then turns a plan into ``dask.delayed`` objects, one per quantum,
keyed ``<taskLabel>-<token>-<dataId values>`` so that the dashboard groups them by task.
Workers run the functions of :mod:`cpframe.execution.graph_tasks` (the worker side) and write
their outputs to scratch files; registering them is the driver's job
(:mod:`cpframe.execution.execute`).

Which outputs are registered in the RUN: the pipeline's products (outputs no task reads:
``bias``, ``flat``, ``verifyBiasResults``...) and every output of the verification tasks
(per-exposure statistics that the report reads).  Image intermediates (ISR outputs,
flat measurements, PTC pair measurements) live in the scratch directory only and are
deleted at the end.
"""

from __future__ import annotations

import contextlib

import secrets
import time
from collections import ChainMap, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from cpframe.core.errors import PlanningError
from cpframe.core.model import DIMENSION_ORDER, DataId, DatasetRef
from cpframe.execution.graph_calibs import resolve_calibs as _resolve_calibs
from cpframe.execution.graph_fusion import (  # noqa: F401 (fusion, verify_fusion: re-exported)
    _FUSED_MIDDLE, _fused_calibs, fusion, verify_fusion, verify_isr_keys,
)
from cpframe.execution.kinds import get_kind
from cpframe.repository.base import Registry

__all__ = [
    "Quantum",
    "Plan",
    "make_plan",
    "build_graph",
    "registered_types",
    "MSG_EMPTY_SELECTION",
    "MSG_NO_RAWS",
    "MSG_MISSING_CALIBS",
    "MSG_NO_COLLECTION",
]

MSG_EMPTY_SELECTION = (
    "the selection matched no {what}: {query!r}. Check it with `cpframe query-data-ids {repo} "
    "exposure detector --where \"{query}\"` (day_obs is an integer YYYYMMDD; strings take single quotes)."
)
MSG_NO_RAWS = (
    "the selection matched {n} exposure(s) but no raw in the input collections {collections}: {query!r}. "
    "Ingest the raws (`cpframe ingest-raws`) or add the raw collection (RAW_COLLECTION) to inCollection."
)
MSG_NO_COLLECTION = (
    "input collection(s) not in the repository: {names}. Check inCollection (and RAW_COLLECTION, "
    "CALIB_COLLECTIONS): did the submission that writes it run, with the same RERUN and BOOTSTRAP_RUN_NUMBER? "
    "`cpframe query-collections REPO` lists what exists."
)
MSG_MISSING_CALIBS = (
    "planning {pipeline}: {n} required calibration lookup(s) found nothing; nothing was run.\n{lines}\n"
    "Build and certify the missing calibrations first "
    "(DMTN-222 order: docs/running.md), or add the collection that holds them to inCollection "
    "(CALIB_COLLECTIONS)."
)

_EXT = {"fits-masked": ".fits", "fits-ptc": ".fits", "fits-raw": ".fits", "ecsv-defects": ".ecsv",
        "ecsv": ".ecsv", "json": ".json"}


@dataclass(frozen=True)
class Quantum:
    """One unit of work: a task on one data ID."""

    key: str
    """Unique Dask key, ``<label>-<token>-<values>``."""
    task: str
    """Task label in the pipeline."""
    kind: str
    """Task kind (``isr``, ``combine``...; :data:`cpframe.execution.pipeline.KINDS`)."""
    data_id: DataId
    """Quantum data ID: ``instrument`` plus the task's dimensions (exposure-level quanta also carry
    ``physical_filter``)."""
    inputs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(dataset type, keys of the quanta that write it) per input, in the task's input order."""
    raw: DatasetRef | None = None
    """The raw read (ISR only)."""
    calibs: Mapping[str, tuple[DatasetRef, ...]] = field(default_factory=dict)
    """Calibration type -> refs found (one, or several for a type with more dimensions than the quantum)."""
    outputs: tuple[tuple[str, DataId], ...] = ()
    """(dataset type, data ID) of every output this quantum writes."""
    registered: tuple[str, ...] = ()
    """The subset of output dataset types registered in the RUN."""
    settings: Any = None
    """Science-side settings object(s) for the worker (built at plan time)."""

    @property
    def upstream(self) -> tuple[str, ...]:
        """Keys of every quantum this one reads from."""
        return tuple(k for _, keys in self.inputs for k in keys)


@dataclass
class Plan:
    """A planned submission: quanta in run order plus what was resolved to get them."""

    pipeline: Any
    """The :class:`cpframe.execution.pipeline.PipelineSpec`."""
    instrument: str
    """The one instrument of the selection."""
    selection: str
    """The ``dataQuery`` as given."""
    collections: tuple[str, ...]
    """Input collections, in search order."""
    run: str
    """The output RUN."""
    output: str
    """The CHAINED output collection."""
    quanta: dict[str, Quantum]
    """Key -> quantum, in an order where inputs come first."""
    data_ids: tuple[DataId, ...]
    """Resolved exposure x detector (or detector) data IDs of the selection."""
    exposures: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    """Exposure id -> record (physical_filter, exposure_time, dark_time, timespan...)."""
    existing: frozenset = frozenset()
    """(dataset type, data ID key) already in the RUN (``--skip-existing``)."""
    skipped: tuple[str, ...] = ()
    """Keys of quanta not run because all they would write exists (``--skip-existing``)."""
    optional_missing: Mapping[str, int] = field(default_factory=dict)
    """Optional calibration type -> number of quanta that run without it."""
    notes: tuple[str, ...] = ()
    """Things a person should know (options without a cpframe equivalent...)."""
    token: str = ""
    """Random text making this plan's Dask keys unique on a shared cluster."""
    plan_s: float = 0.0
    """Seconds planning took."""

    # -- views ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Quanta per task label, in pipeline order."""
        out = {t.label: 0 for t in self.pipeline.tasks}
        for q in self.quanta.values():
            out[q.task] += 1
        return out

    def planned_outputs(self) -> list[tuple[str, DataId]]:
        """(dataset type, data ID) of every output that will be registered, in run order."""
        return [(dt, did) for q in self.quanta.values() for dt, did in q.outputs
                if dt in q.registered and (dt, did.key()) not in self.existing]

    def inputs_of(self, key: str) -> list[DatasetRef]:
        """Raws and calibrations read by quantum ``key`` and its upstream quanta.

        For an output with a detector, only refs of that detector are kept: a flat's
        normalisation reads every detector's background, but its pixels come from its own
        detector's raws and calibrations.
        """
        q0 = self.quanta[key]
        det = q0.data_id.get("detector")
        seen, refs, stack = set(), {}, [key]
        while stack:
            k = stack.pop()
            if k in seen or k not in self.quanta:
                continue
            seen.add(k)
            q = self.quanta[k]
            for ref in ([q.raw] if q.raw else []) + [r for rs in q.calibs.values() for r in rs]:
                if det is None or ref.data_id.get("detector", det) == det:
                    refs[ref.id] = ref
            stack.extend(q.upstream)
        return sorted(refs.values(), key=lambda r: (r.dataset_type, str(r.data_id)))

    def summary(self) -> str:
        """A few lines for people: counts per task, inputs, output RUN, collections searched."""
        n_exp = len({d["exposure"] for d in self.data_ids if "exposure" in d})
        n_det = len({d["detector"] for d in self.data_ids if "detector" in d})
        shape = f"{n_exp} exposure(s) x {n_det} detector(s)" if n_exp else f"{n_det} detector(s)"
        lines = [f"pipeline {self.pipeline.name} ({self.pipeline.path})",
                 f"selection: {self.selection}",
                 f"  -> {len(self.data_ids)} data ID(s): {shape}, instrument {self.instrument}"]
        filters = sorted({str(e.get('physical_filter')) for e in self.exposures.values()})
        if filters:
            lines.append(f"  physical filters: {', '.join(filters)}")
        lines.append("quanta per task:")
        for label, n in self.counts().items():
            lines.append(f"  {label:<32} {n:>6}")
        calib_use: dict[str, set] = defaultdict(set)
        for q in self.quanta.values():
            for c, refs in q.calibs.items():
                for r in refs:
                    calib_use[c].add(r.extra.get("collection", r.run))
        for c in sorted(calib_use):
            lines.append(f"calibration {c} from: {', '.join(sorted(calib_use[c]))}")
        for c, n in sorted(self.optional_missing.items()):
            lines.append(f"optional {c}: not found for {n} quantum/quanta; those run without it")
        planned = self.planned_outputs()
        lines.append(f"outputs to register: {len(planned)} ({_count_types(planned)})")
        if self.skipped:
            lines.append(f"skipped (outputs already in the RUN): {len(self.skipped)} quanta")
        lines.append(f"output RUN: {self.run}   (chain {self.output})")
        lines.append(f"input collections searched, in order: {', '.join(self.collections)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dot(self, max_nodes: int = 2000) -> str:
        """The quantum graph in Graphviz DOT (one node per quantum, clusters per task)."""
        by_task: dict[str, list[Quantum]] = defaultdict(list)
        for q in self.quanta.values():
            by_task[q.task].append(q)
        out = ["digraph plan {", "  rankdir=LR;", '  node [shape=box, fontsize=9, fontname="Helvetica"];']
        shown: set[str] = set()
        for i, (label, qs) in enumerate(by_task.items()):
            out.append(f'  subgraph cluster_{i} {{ label="{label} ({len(qs)})"; color=grey;')
            for q in qs:
                if len(shown) >= max_nodes:
                    break
                shown.add(q.key)
                text = ",".join(f"{k}={v}" for k, v in q.data_id.items() if k != "instrument") or q.data_id["instrument"]
                reg = " *" if q.registered else ""
                out.append(f'    "{q.key}" [label="{text}{reg}"];')
            out.append("  }")
        for q in self.quanta.values():
            for up in q.upstream:
                if up in shown and q.key in shown:
                    out.append(f'  "{up}" -> "{q.key}";')
        out.append("}")
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page: the summary and a table of quanta per task (no scripts)."""
        import html

        rows = []
        for q in self.quanta.values():
            did = ", ".join(f"{k}={v}" for k, v in q.data_id.items() if k != "instrument")
            calibs = "; ".join(f"{c}: {', '.join(r.extra.get('collection', r.run) for r in rs)}"
                               for c, rs in q.calibs.items())
            outs = ", ".join(dt for dt, _ in q.outputs if dt in q.registered)
            rows.append(f"<tr><td>{html.escape(q.task)}</td><td>{html.escape(did)}</td>"
                        f"<td>{len(q.upstream)}</td><td>{html.escape(calibs)}</td><td>{html.escape(outs)}</td></tr>")
        return ("<!doctype html><html><head><meta charset='utf-8'><title>cpframe plan "
                f"{html.escape(self.run)}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;"
                "border-bottom:1px solid #ddd;font-size:12px}}</style></head><body>"
                f"<h1>Plan: {html.escape(self.pipeline.name)}</h1><pre>{html.escape(self.summary())}</pre>"
                "<table><tr><th>task</th><th>data ID</th><th>inputs</th><th>calibrations (collection)</th>"
                f"<th>registered outputs</th></tr>{''.join(rows)}</table></body></html>\n")


def _count_types(items: Iterable[tuple[str, Any]]) -> str:
    c: dict[str, int] = defaultdict(int)
    for dt, _ in items:
        c[dt] += 1
    return ", ".join(f"{n} {dt}" for dt, n in c.items()) or "none"


def registered_types(pipeline: Any) -> tuple[str, ...]:
    """Dataset types of ``pipeline`` that are registered in the RUN (module docstring)."""
    out = list(pipeline.products)
    for t in pipeline.tasks:
        if get_kind(t.kind).registers_all_outputs:
            out.extend(o for o in t.outputs if o not in out)
    return tuple(out)


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
def _exposure_based(pipeline: Any) -> bool:
    return any("exposure" in t.dimensions for t in pipeline.tasks)


def _resolve_selection(pipeline: Any, registry: Registry, query: str, collections: Sequence[str], repo_label: str):
    """-> (instrument, base data IDs, raw refs by data-ID key, exposure records by id)."""
    if _exposure_based(pipeline):
        exposures = {int(r["id"]): r for r in registry.query_dimension_records("exposure", where=query)}
        if not exposures:
            raise PlanningError(MSG_EMPTY_SELECTION.format(what="exposure", query=query, repo=repo_label))
        raws = registry.query_datasets("raw", collections=list(collections), where=query, find_first=True)
        raws = [r for r in raws if int(r.data_id["exposure"]) in exposures]
        if not raws:
            raise PlanningError(MSG_NO_RAWS.format(n=len(exposures), collections=", ".join(collections),
                                                   query=query))
        instruments = sorted({str(r.data_id["instrument"]) for r in raws})
        if len(instruments) > 1:
            raise PlanningError(
                f"the selection {query!r} matches raws of {len(instruments)} instruments "
                f"({', '.join(instruments)}); a submission processes one. Add instrument='...' to the selection."
            )
        base, by_key = [], {}
        for r in sorted(raws, key=lambda r: (int(r.data_id["exposure"]), int(r.data_id["detector"]))):
            e = exposures[int(r.data_id["exposure"])]
            did = DataId(instrument=instruments[0], exposure=int(r.data_id["exposure"]),
                         detector=int(r.data_id["detector"]), physical_filter=str(e["physical_filter"]))
            base.append(did)
            by_key[did.key()] = r
        used = {int(d["exposure"]) for d in base}
        return instruments[0], base, by_key, {k: v for k, v in exposures.items() if k in used}
    ids = registry.query_data_ids(["detector"], where=query)
    if not ids:
        raise PlanningError(MSG_EMPTY_SELECTION.format(what="detector", query=query, repo=repo_label))
    instruments = sorted({str(d["instrument"]) for d in ids})
    if len(instruments) > 1:
        raise PlanningError(f"the selection {query!r} matches {len(instruments)} instruments "
                            f"({', '.join(instruments)}); add instrument='...' to it.")
    base = [DataId(instrument=instruments[0], detector=int(d["detector"])) for d in ids]
    if any("physical_filter" in t.dimensions for t in pipeline.tasks):  # per-filter calibrations (sky, fringe)
        filters = sorted({str(r["physical_filter"]) for r in registry.query_dimension_records("exposure", where=query)})
        base = [DataId(dict(d, physical_filter=f)) for d in base for f in filters] or base
    return instruments[0], base, {}, {}


# ------------------------------------------------------------------------------------------
# quanta
# ------------------------------------------------------------------------------------------
def _key(label: str, token: str, did: Mapping[str, Any]) -> str:
    vals = [str(v) for k, v in did.items() if k not in ("instrument", "physical_filter") or len(did) == 1]
    if "physical_filter" in did and "exposure" not in did:
        vals.append(str(did["physical_filter"]))
    return f"{label}-{token}-" + "-".join(vals or [str(did.get("instrument", "all"))])


def _project(did: DataId, dims: Iterable[str]) -> DataId:
    return did.subset(["instrument", *dims])


def _compatible(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def _pairs(base: Sequence[DataId], exposures: Mapping[int, Mapping[str, Any]]):
    """PTC pairs per detector: equal exposure time, consecutive in exposure id (cp_pipe TIME matching)."""
    from cpframe.science.ptc import pair_exposures

    by_det: dict[int, list[DataId]] = defaultdict(list)
    for d in base:
        by_det[int(d["detector"])].append(d)
    out = []
    for det in sorted(by_det):
        pairs = pair_exposures(by_det[det], key=lambda d: (float(exposures[int(d["exposure"])]["exposure_time"]),
                                                           int(d["exposure"])))
        out.extend(pairs)
    return out


MSG_DOWN_SELECTION = ("{label}: no selected exposure has {field} = {value!r} (doDownSelection); the selection's "
                      "exposures have: {found}. Check downSelectionValue or the selection.")


def _picked(record: Mapping[str, Any], pick: tuple[str, str]) -> bool:
    return str(record.get(pick[0]) or "").lower() == pick[1].lower()


def _expand(pipeline: Any, base: Sequence[DataId], exposures, token: str):
    """-> list of (task, data_id, inputs) in run order."""
    writer = {o: t for t in pipeline.tasks for o in t.outputs}
    by_task: dict[str, list[tuple[DataId, str]]] = {}
    out = []
    for t in pipeline.tasks:
        dims = [d for d in t.dimensions if d != "instrument"]
        items: list[tuple[DataId, tuple]] = []
        if get_kind(t.kind).pairs_exposures:
            for a, b in _pairs(base, exposures):
                items.append((a, (b,)))
        else:
            seen = {}
            for d in base:
                p = _project(d, dims)
                if "exposure" in p:
                    p = DataId(dict(p, physical_filter=d["physical_filter"]))
                elif "physical_filter" not in dims and "physical_filter" in p:
                    p = p.subset([k for k in p if k != "physical_filter"])
                seen.setdefault(p.key(), p)
            items = [(p, ()) for p in seen.values()]
        mine = []
        pick = get_kind(t.kind).exposure_filter(t)  # cp_pipe's down-selection (flat normalisation)
        for did, partners in items:
            inputs = []
            for i in t.inputs:
                if i == "raw":
                    continue
                src = writer[i]
                if get_kind(t.kind).pairs_exposures:
                    wanted = [did, *partners]
                    keys = tuple(k for w in wanted for (sd, k) in by_task[src.label]
                                 if sd["exposure"] == w["exposure"] and sd["detector"] == w["detector"])
                else:
                    keys = tuple(k for sd, k in by_task[src.label] if _compatible(sd, did) and (
                        pick is None or "exposure" not in sd or _picked(exposures[int(sd["exposure"])], pick)))
                    if pick is not None and not keys:
                        found = sorted({str(e.get(pick[0])) for e in exposures.values()})
                        raise PlanningError(MSG_DOWN_SELECTION.format(label=t.label, field=pick[0], value=pick[1],
                                                                      found=", ".join(found)))
                inputs.append((i, keys))
            key = _key(t.label, token, did)
            mine.append((did, key))
            out.append((t, did, tuple(inputs), key, partners))
        by_task[t.label] = mine
    return out


# ------------------------------------------------------------------------------------------
# settings for the science code (translated once, at plan time)
# ------------------------------------------------------------------------------------------
def _explicit_options(pipeline: Any) -> dict[str, set[str]]:
    """Task label -> config keys written in the pipeline file (the rest are cp_pipe defaults)."""
    import yaml

    if any(getattr(t, "explicit", None) for t in getattr(pipeline, "tasks", ())):
        return {t.label: set(t.explicit) for t in pipeline.tasks}

    try:
        with open(pipeline.path) as fh:
            tasks = (yaml.safe_load(fh) or {}).get("tasks") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return {str(label): set((sec or {}).get("config") or {}) for label, sec in tasks.items() if isinstance(sec, dict)}


def _task_settings(task: Any, settings: Any, explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Science-side settings of one task (shared by all its quanta) and notes: the kind's :meth:`plan`."""
    return get_kind(task.kind).plan(task, settings, explicit)


# ------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------
def make_plan(
    submission: Any, pipeline: Any, repo: Any, *, settings: Any = None, existing: Iterable[tuple[str, str]] = (),
    skip_existing: bool = False, now_ns: int | None = None,
) -> Plan:
    """Resolve the selection, expand the pipeline into quanta and look up their calibrations.

    Parameters
    ----------
    submission : cpframe.execution.submission.Submission
    pipeline : cpframe.execution.pipeline.PipelineSpec
    repo : cpframe.repository.repo.Repository
        Registry for lookups, datastore for file paths.
    settings : cpframe.core.config.Settings, optional
        For the combine memory budget (default :func:`cpframe.core.config.load_settings`).
    existing : iterable of (dataset type, data ID key)
        Datasets already in the RUN (when extending it).
    skip_existing : bool
        Leave out quanta whose registered outputs all exist and that no other planned
        quantum needs.  Without it, a planned output that exists is an error.
    now_ns : int, optional
        "Now" (ns TAI) for calibration lookups of quanta without an exposure.

    Raises
    ------
    SelectionError
        The selection does not parse or type-check.
    PlanningError
        Empty selection, no raws, several instruments, missing required calibrations
        (all listed, grouped), outputs already in the RUN without ``skip_existing``.
    """
    from cpframe.execution.submission import check_against_pipeline

    t0 = time.perf_counter()
    if settings is None:
        from cpframe.core.config import load_settings

        settings = load_settings()
    if now_ns is None:
        from cpframe.core.model import tai_now_ns

        now_ns = tai_now_ns()
    label_notes = check_against_pipeline(submission, pipeline)
    registry = repo.registry
    collections = tuple(submission.in_collections)
    _check_collections(registry, collections)
    instrument, base, raws, exposures = _resolve_selection(
        pipeline, registry, submission.data_query, collections, submission.butler_config)
    token = secrets.token_hex(3)
    items = _expand(pipeline, base, exposures, token)
    found, missing, optional_missing = _resolve_calibs(pipeline, registry, items, exposures, collections, now_ns)
    notes: list[str] = [*getattr(pipeline, "notes", ()), *label_notes]
    ignored = getattr(submission, "ignored_keys", ())
    if ignored:
        notes.append(f"ignored by cpframe (no meaning for a Dask back end): {', '.join(ignored)}")
    if getattr(submission, "ignored_options", ()):
        notes.append(f"extraQgraphOptions ignored by cpframe: {' '.join(submission.ignored_options)}")
    if missing and not raws:
        # detector-level pipelines (defects, PTC verification) read only calibrations: as the butler's
        # graph builder, leave out the detectors that have none of them, and name them
        have = {int(did["detector"]) for t, did, _i, key, _p in items
                if "detector" in did and set(t.calibrations) & set(found.get(key, {}))}
        dropped = sorted({int(d["detector"]) for d in base} - have)
        if have and dropped:
            base = [d for d in base if int(d["detector"]) in have]
            items = _expand(pipeline, base, exposures, token)
            found, missing, optional_missing = _resolve_calibs(pipeline, registry, items, exposures, collections,
                                                               now_ns)
            notes.append(f"detector(s) {', '.join(map(str, dropped))} of the selection have none of "
                         f"{', '.join(pipeline.calibrations)} in the input collections: left out")
    if missing:
        raise PlanningError(MSG_MISSING_CALIBS.format(pipeline=pipeline.name, n=len(missing), lines="\n".join(missing)))
    task_settings = {}
    explicit = _explicit_options(pipeline)
    for t in pipeline.tasks:
        s, n = _task_settings(t, settings, explicit.get(t.label, set()))
        task_settings[t.label] = s
        notes.extend(n)
    if pipeline.verifies:
        under_test = sorted({r.extra.get("collection", r.run) for k in found for c, rs in found[k].items()
                             if c == pipeline.verifies for r in rs})
        notes.append(f"calibration under test ({pipeline.verifies}) found in: {', '.join(under_test) or '(none)'}")
    reg_types = set(registered_types(pipeline))
    quanta: dict[str, Quantum] = {}
    for t, did, inputs, key, partners in items:
        calibs = found.get(key, {})
        s = get_kind(t.kind).for_quantum(task_settings[t.label], calibs)
        outs = tuple((o, _project(did, [d for d in pipeline.dataset_types[o].dimensions if d != "instrument"]))
                     for o in t.outputs)
        raw = raws.get(did.key()) if get_kind(t.kind).reads_raw else None
        quanta[key] = Quantum(key=key, task=t.label, kind=t.kind, data_id=did, inputs=inputs, raw=raw,
                              calibs=calibs, outputs=outs, registered=tuple(o for o in t.outputs if o in reg_types),
                              settings=s)
    existing = frozenset(existing)
    skipped: tuple[str, ...] = ()
    if existing:
        clash = [(dt, did) for q in quanta.values() for dt, did in q.outputs
                 if dt in q.registered and (dt, did.key()) in existing]
        if clash and not skip_existing:
            shown = ", ".join(f"{dt} {did}" for dt, did in clash[:5])
            raise PlanningError(
                f"{len(clash)} planned output(s) already exist in RUN {submission.output_run}: {shown}"
                f"{', ...' if len(clash) > 5 else ''}. Pass --skip-existing to run only what is missing."
            )
        quanta, skipped = _prune(quanta, existing)
    return Plan(pipeline=pipeline, instrument=instrument, selection=submission.data_query, collections=collections,
                run=submission.output_run, output=submission.output, quanta=quanta, data_ids=tuple(base),
                exposures=exposures, existing=existing, skipped=skipped, optional_missing=optional_missing,
                notes=tuple(dict.fromkeys(notes)), token=token, plan_s=time.perf_counter() - t0)


def _check_collections(registry: Registry, collections: Sequence[str]) -> None:
    """Every input collection must exist; all missing ones are named at once."""
    from cpframe.core.errors import UnknownCollectionError

    missing = []
    for c in collections:
        try:
            registry.get_collection_type(c)
        except UnknownCollectionError:
            missing.append(c)
    if missing:
        raise PlanningError(MSG_NO_COLLECTION.format(names=", ".join(missing)))


def _prune(quanta: dict[str, Quantum], existing: frozenset) -> tuple[dict[str, Quantum], tuple[str, ...]]:
    """Keep the quanta that write a missing registered output, and everything they read."""
    def missing(q: Quantum) -> bool:
        return any(dt in q.registered and (dt, did.key()) not in existing for dt, did in q.outputs)

    needed: set[str] = set()
    stack = [k for k, q in quanta.items() if missing(q)]
    while stack:
        k = stack.pop()
        if k in needed:
            continue
        needed.add(k)
        stack.extend(quanta[k].upstream)
    kept = {k: q for k, q in quanta.items() if k in needed}
    return kept, tuple(k for k in quanta if k not in needed)


# ------------------------------------------------------------------------------------------
# the Dask graph
# ------------------------------------------------------------------------------------------
def _ordered_dims(dims: Iterable[str]) -> tuple[str, ...]:
    order = {k: i for i, k in enumerate(DIMENSION_ORDER)}
    return tuple(sorted(dims, key=lambda d: order.get(d, 99)))


def build_graph(plan: Plan, scratch_dir: str, path_of: Any,
                resources: Mapping[str, Mapping[str, float]] | None = None,
                limits: Mapping[str, Any] | None = None,
                clusters: Sequence[Any] = (), key_suffix: str = "") -> dict[str, Any]:
    """One ``dask.delayed`` object per quantum (nothing is computed).

    Parameters
    ----------
    plan : Plan
    scratch_dir : str
        Directory on a filesystem the workers and the driver share; outputs are written
        under ``<scratch_dir>/<task label>/``.
    path_of : callable
        ``DatasetRef -> absolute path`` (``Repository.get_path``), called here, in the driver.
    resources : mapping, optional
        Quantum key -> Dask worker resources it needs (``MEMORY`` bytes, ``CPU``), from the
        template's requestMemory / requestCpus (:mod:`cpframe.execution.resources`).
    limits : mapping, optional
        Quantum key -> :class:`cpframe.execution.isolate.QuantumLimits` (requestWalltime,
        retryUnlessExit, memoryMultiplier; :func:`cpframe.execution.resources.quantum_limits` of
        :func:`cpframe.execution.resources.quantum_requests`): those quanta run in a child process that
        enforces them, their memory limit being this attempt's ``MEMORY`` resource, and they are retried by
        that child's driver, not by Dask; their tasks are not grouped by ``clusters``.
    clusters : sequence, optional
        The template's ``cluster.<label>`` sections (:class:`cpframe.execution.submission.ClusterSpec`):
        the quanta of a cluster's tasks with the same values of its dimensions run as one Dask task
        (:func:`cpframe.execution.graph_clusters.cluster_groups`); every member key then maps to that task's Delayed, whose value is a
        :class:`cpframe.execution.graph_tasks.GroupResult`.
    key_suffix : str, optional
        Appended to every Dask key (the quantum keys in the specs stay as they are): a retry round's
        tasks must not share keys with the round before, whose erred tasks the scheduler may not have
        forgotten yet (it would hand back their old error instead of running them again).

    Returns
    -------
    dict
        Quantum key -> Delayed, in run order (grouped quanta share one).
    """
    import dask

    from cpframe.execution import graph_tasks
    types = plan.pipeline.dataset_types
    delayed: dict[str, Any] = {}
    lookup = ChainMap({}, delayed)  # what a reader gets: a fused measurement without its prepass, else the quantum
    fused_into = fusion(plan)
    fused: dict[str, list[str]] = {}
    mid_of: dict[str, str] = {}  # ISR key -> the fused darkCr / flatMeasure quantum that reads it
    for k, comb_key in fused_into.items():
        if plan.quanta[k].kind == "isr":
            fused.setdefault(comb_key, []).append(k)
        else:
            mid_of[plan.quanta[k].upstream[0]] = k
    verify_isr = verify_fusion(plan)  # ISR key -> the verifyStats quantum that runs its ISR in memory (n:1)
    isr_of_verify = verify_isr_keys(plan, verify_isr)  # that quantum -> its ISR keys, in its input order
    from cpframe.execution.graph_clusters import cluster_groups, group_delayed

    limits = limits or {}
    cards_of = _raw_cards_maker(plan, path_of)
    group_of = cluster_groups(plan, clusters, {**fused_into, **verify_isr, **isr_of_verify},
                              exclude={plan.quanta[k].task for k in limits if k in plan.quanta})
    members: dict[str, list[tuple[Any, list[str], dict]]] = defaultdict(list)  # group -> (spec, up keys, ann)
    last_of = {g: k for k, g in group_of.items()}  # plan order: the last member closes the group

    def add(key: str, spec: Any, ups: list, need: Mapping[str, float] | None) -> None:
        """The quantum's Delayed, with its Dask resources and, for a task with BPS limits, run in a child."""
        annotations: dict[str, Any] = {"resources": dict(need)} if need else {}
        lim = limits.get(key)
        if lim is not None:
            if lim.memory_bytes is not None and need and "MEMORY" in need:
                lim = replace(lim, memory_bytes=int(need["MEMORY"]))  # this attempt's memory
            spec = replace(spec, limits=lim)
            annotations["retries"] = 0  # the child's driver retries, honouring retryUnlessExit
        with dask.annotate(**annotations) if annotations else contextlib.nullcontext():
            delayed[key] = dask.delayed(graph_tasks.run_quantum, pure=False)(spec, ups, dask_key_name=key + key_suffix)

    for key, q in plan.quanta.items():
        if key in verify_isr:  # its verifyStats quantum runs the ISR: a placeholder, no file, no request
            delayed[key] = dask.delayed(graph_tasks.run_quantum, pure=False)(
                graph_tasks.QuantumSpec(key=key, kind="fusedAway", task=q.task, data_id=dict(q.data_id),
                                        raw_path=None, calib_paths={}, outputs=(), settings={}),
                [], dask_key_name=key + key_suffix)
            continue
        if key in fused_into:
            # the raw's prepass (serial/parallel overscan, header, per-amp numbers): the ISR quanta of a
            # detector run it in parallel and hand the small result to the fused combine, which streams;
            # with CpDark or CpFlatMeasure in between, its quantum runs the prepass and the raw's ISR in memory
            # for the cosmic rays or the measurement instead (the ISR quantum itself then does nothing)
            src = plan.quanta[q.upstream[0]] if q.kind in _FUSED_MIDDLE else q
            kind = "fusedAway" if key in mid_of else _FUSED_MIDDLE.get(q.kind, "isrPrepass")
            spec = graph_tasks.QuantumSpec(key=key, kind=kind, task=q.task, data_id=dict(q.data_id),
                                           raw_path=None, calib_paths={}, outputs=(),
                                           settings=dict(q.settings) if q.kind in _FUSED_MIDDLE else {},
                                           fused_raws=(str(path_of(src.raw)),),
                                           fused_calibs=(_fused_calibs(src, path_of),),
                                           fused_isr=src.settings["isr"], fused_keys=(src.key,),
                                           raw_cards=cards_of([src.raw]))
            # requests (quantum_requests): the ISR task's for a prepass; both tasks' for a CpDark / CpFlatMeasure
            # quantum that runs the ISR in memory; none for the placeholder
            add(key, spec, [], None if key in mid_of else (resources or {}).get(key))
            if q.kind == "flatMeasure":
                # the normalisation reads the measurement only: the prepass stays on the worker for the combine
                lookup.maps[0][key] = dask.delayed(graph_tasks.without_prepass, pure=True)(
                    delayed[key], dask_key_name=key + "-measurement" + key_suffix)
            continue
        outputs = []
        for dt, did in q.outputs:
            ext = _EXT.get(types[dt].storage_class, ".dat")
            name = "_".join([dt, *[str(v) for v in did.values()]]).replace("/", "_")
            outputs.append((f"{scratch_dir}/{q.task}/{name}{ext}", dt, dict(did), dt in q.registered))
        spec = graph_tasks.QuantumSpec(
            key=key, kind=q.kind, task=q.task, data_id=dict(q.data_id),
            raw_path=str(path_of(q.raw)) if q.raw is not None else None,
            calib_paths={c: [str(path_of(r)) for r in rs] for c, rs in q.calibs.items()},
            outputs=tuple(outputs), settings=q.settings,
            input_types=tuple(dt for dt, _ in q.inputs), input_counts=tuple(len(ks) for _, ks in q.inputs),
            raw_cards=cards_of([q.raw]),
        )
        # a group member's inputs are resolved when its group closes (_group_delayed)
        ups = [] if key in group_of else [lookup[k] for _, keys in q.inputs for k in keys]
        if key in fused:
            isr = sorted((plan.quanta[k] for k in fused[key]), key=lambda x: int(x.data_id["exposure"]))
            others = [k for k in q.upstream if k not in fused_into]  # a flat's normalisation
            spec = replace(spec, kind="isrCombine", input_types=("prepass", "scales")[:1 + bool(others)],
                           input_counts=(len(isr), len(others))[:1 + bool(others)],
                           fused_raws=tuple(str(path_of(x.raw)) for x in isr),
                           fused_calibs=tuple(_fused_calibs(x, path_of) for x in isr),
                           fused_isr=isr[0].settings["isr"], fused_keys=tuple(x.key for x in isr),
                           raw_cards=cards_of([x.raw for x in isr]))
            # their prepasses (from the ISR, CpDark or CpFlatMeasure quanta), by exposure, then the scales
            ups = [delayed[mid_of.get(x.key, x.key)] for x in isr] + [delayed[k] for k in others]
        if key in isr_of_verify:  # runs its raw's ISR(s) in memory, as the ISR quanta would (verify_fusion)
            srcs = [plan.quanta[k] for k in isr_of_verify[key]]
            from cpframe.execution.kinds.isr import isr_calibs

            spec = replace(spec, fused_raws=tuple(str(path_of(x.raw)) for x in srcs), fused_keys=isr_of_verify[key],
                           raw_cards=cards_of([x.raw for x in srcs]),
                           fused_isrs=tuple(x.settings["isr"] for x in srcs), fused_calibs=tuple(
                               isr_calibs({c: [path_of(r) for r in rs] for c, rs in x.calibs.items()}) for x in srcs))
        need = (resources or {}).get(key)
        up_keys = [] if key in fused else [k for _, keys in q.inputs for k in keys]
        if any(k in group_of for k in up_keys):
            spec = replace(spec, upstream_keys=tuple(up_keys))
        if key in group_of:
            members[group_of[key]].append((spec, up_keys, {"resources": dict(need)} if need else {}))
            if key == last_of[group_of[key]]:
                delayed.update(group_delayed(group_of[key] + key_suffix, members[group_of[key]], lookup))
            continue
        add(key, spec, ups, need)
    return delayed


def _raw_cards_maker(plan: Plan, path_of: Callable[[Any], Any]) -> Callable[[Sequence[Any]], tuple]:
    """``raws -> QuantumSpec.raw_cards`` of those raw refs: each raw's translated cards from its exposure record
    (:func:`cpframe.camera.raw_headers.registry_cards`) and its timespan, so that a worker reading it needs no
    translator; a raw whose exposure the plan has no record of (or whose camera cpframe does not model) is left
    out (its reader translates the header)."""
    from cpframe.camera.raw_headers import registry_cards
    from cpframe.core.errors import CpframeError

    made: dict[Any, tuple | None] = {}

    def one(ref: Any) -> tuple | None:
        key = (int(ref.data_id["exposure"]), int(ref.data_id["detector"]))
        if key not in made:
            rec = plan.exposures.get(key[0])
            try:
                cards = registry_cards(rec, key[1]) if rec is not None else None
            except (CpframeError, KeyError, TypeError, ValueError):
                cards = None
            span = rec.get("timespan") if rec is not None else None
            ok = cards is not None and span is not None and span.begin_ns is not None and span.end_ns is not None
            made[key] = (str(path_of(ref)), cards, int(span.begin_ns), int(span.end_ns)) if ok else None
        return made[key]

    def cards_of(raws: Sequence[Any]) -> tuple:
        found = (one(r) for r in raws if r is not None and "exposure" in r.data_id and "detector" in r.data_id)
        return tuple(c for c in found if c is not None)

    return cards_of


def dataset_type_defs(plan: Plan) -> list[Any]:
    """:class:`cpframe.core.model.DatasetType` of every type the plan registers (for ``register_dataset_type``)."""
    from cpframe.core.model import DatasetType

    out = []
    for dt in registered_types(plan.pipeline):
        spec = plan.pipeline.dataset_types[dt]
        out.append(DatasetType(dt, _ordered_dims(spec.dimensions), bool(spec.is_calibration), spec.storage_class))
    return out
