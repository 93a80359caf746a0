"""Calibration lookups of the planner (:mod:`cpframe.execution.graph`): which certified (or plain) dataset each
quantum reads for each calibration its task names, found first in the input collections at the quantum's time,
batched per dataset type; what is missing, as the lines of the planning error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from cpframe.core.model import DataId, DatasetRef, Timespan, ns_to_iso
from cpframe.repository.base import Registry

__all__ = ["resolve_calibs"]


def _project(did: DataId, dims: Iterable[str]) -> DataId:
    return did.subset(["instrument", *dims])


def _lookup_span(exposures: Mapping[int, Mapping[str, Any]], now_ns: int) -> Timespan:
    """Time at which detector-level quanta look calibrations up: the latest selected exposure, else now."""
    if exposures:
        latest = max(exposures.values(), key=lambda e: e["timespan"].db_begin)
        return latest["timespan"]
    return Timespan(now_ns, now_ns + 1)


def _find(registry: Registry, dataset_type: str, ids: Sequence[DataId], collections: Sequence[str],
          spans: Sequence[Timespan]) -> list[DatasetRef | None]:
    """Batched find-first (:meth:`Registry.find_datasets`)."""
    return registry.find_datasets(dataset_type, list(ids), list(collections), list(spans))


def _gather(registry: Registry, dataset_type: str, did: DataId, collections: Sequence[str]) -> tuple[DatasetRef, ...]:
    """Every find-first match of a type with more dimensions than the quantum (e.g. flatBootstrap per filter)."""
    where = " and ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in did.items())
    refs = registry.query_datasets(dataset_type, collections=list(collections), where=where, find_first=True)
    return tuple(sorted(refs, key=lambda r: str(r.data_id)))


def resolve_calibs(pipeline, registry, items, exposures, collections, now_ns):
    """-> (calibs per quantum key, missing lines, optional-missing counts).

    ``items`` are the planner's (task, data ID, inputs, quantum key, ...) tuples; each quantum looks its
    calibrations up at its exposure's time (detector-level quanta: the latest selected exposure, else now).
    """
    types = pipeline.dataset_types
    fallback = _lookup_span(exposures, now_ns)
    requests: dict[str, dict[tuple[str, Timespan], list[str]]] = defaultdict(lambda: defaultdict(list))
    required_of: dict[str, set[str]] = {}
    gathered: dict[str, dict[str, tuple]] = defaultdict(dict)
    ids_of: dict[tuple[str, str], DataId] = {}
    known = {dt.name for dt in registry.query_dataset_types()}
    for t, did, _inputs, key, _p in items:
        req, opt = set(t.calibrations), set(t.optional_calibrations) - set(t.calibrations)
        required_of[key] = req
        span = exposures[int(did["exposure"])]["timespan"] if "exposure" in did else fallback
        for c in sorted(req | opt):
            cdims = [d for d in types[c].dimensions if d != "instrument"]
            if not set(cdims) <= set(did):
                gathered[key][c] = _gather(registry, c, _project(did, [d for d in cdims if d in did]), collections) \
                    if c in known else ()
                continue
            cid = _project(did, cdims)
            ids_of[(c, cid.key())] = cid
            requests[c][(cid.key(), span)].append(key)
    found: dict[str, dict[str, tuple]] = defaultdict(dict)
    missing: dict[tuple[str, str], list[Timespan]] = defaultdict(list)
    optional_missing: dict[str, int] = defaultdict(int)
    for c, reqs in requests.items():
        order = list(reqs)
        if c in known:  # a type the repository never registered has no datasets
            refs = _find(registry, c, [ids_of[(c, k)] for k, _ in order], collections, [s for _, s in order])
        else:
            refs = [None] * len(order)
        for (k, span), ref in zip(order, refs):
            for key in reqs[(k, span)]:
                if ref is not None:
                    found[key][c] = (ref,)
                elif c in required_of[key]:
                    missing[(c, k)].append(span)
                else:
                    optional_missing[c] += 1
    for key, cs in gathered.items():
        for c, refs in cs.items():
            if refs:
                found[key][c] = refs
            elif c in required_of[key]:
                missing[(c, "")].append(fallback)
            else:
                optional_missing[c] += 1
    lines = []
    for (c, k), spans in sorted(missing.items()):
        what = "certified " if types[c].is_calibration else ""
        did = ids_of.get((c, k))
        where = ", ".join(f"{n} {v}" for n, v in did.items() if n != "instrument") if did else "any detector"
        spans = sorted(set(spans), key=lambda s: s.db_begin)
        at = ns_to_iso(spans[0].begin_ns) or "any time"
        more = f" (and {len(spans) - 1} more exposure(s) up to {ns_to_iso(spans[-1].begin_ns)} TAI)" \
            if len(spans) > 1 else ""
        lines.append(f"  - no {c} {what}for {where} at {at} TAI{more} in: {', '.join(collections)}")
    return found, lines, dict(optional_missing)
