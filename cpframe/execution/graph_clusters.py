"""``cluster.<label>`` groups: quanta of a cluster's tasks with equal values of its dimensions run as one
Dask task (BPS ``dimension_clustering``; issue 12).

:func:`cluster_groups` decides the groups of a plan, :func:`group_delayed` builds the one Delayed of a
group (:func:`cpframe.execution.graph_tasks.run_group` runs its members in order on one worker).
docs/submit.md "BPS keys that change what runs" says where cpframe differs from BPS.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["cluster_groups", "group_delayed"]


def group_delayed(group: str, members: list, delayed: Mapping[str, Any]) -> dict[str, Any]:
    """One Delayed running every member of ``group``; each member key maps to it.

    ``members``: (spec, upstream keys, annotations) per member, in plan order; ``delayed``: the
    Delayed of every quantum built so far (the group's external inputs among them).
    """
    import dask

    from cpframe.execution import graph_tasks

    index = {spec.key: i for i, (spec, _, _) in enumerate(members)}
    external: list[Any] = []
    ext_index: dict[str, int] = {}
    packed = []
    for spec, up_keys, _ in members:
        refs = []
        for k in up_keys:
            if k in index:
                refs.append(("member", index[k]))
            else:
                if k not in ext_index:
                    ext_index[k] = len(external)
                    external.append(delayed[k])
                refs.append(("external", ext_index[k]))
        packed.append((spec, refs))
    need: dict[str, float] = {}
    for _, _, ann in members:  # the group's job needs the largest request of its members (as BPS)
        for r, v in (ann.get("resources") or {}).items():
            need[r] = max(need.get(r, 0), v)
    with dask.annotate(resources=need) if need else contextlib.nullcontext():
        d = dask.delayed(graph_tasks.run_group, pure=False)(packed, external, dask_key_name=group)
    return {spec.key: d for spec, _, _ in members}


def cluster_groups(plan: Any, clusters: Sequence[Any], fused_into: Mapping[str, Any],
                   exclude: Iterable[str] = ()) -> dict[str, str]:
    """Quantum key -> Dask key of its ``cluster.<label>`` group, for groups of two or more quanta.

    A group is the quanta of a cluster's ``pipetasks`` with equal values of its ``dimensions``
    (BPS ``dimension_clustering``).  The quanta keying ``fused_into`` are not grouped: ISR quanta fused
    into their combine (:func:`cpframe.execution.graph.fusion`) or verifyStats quantum
    (:func:`cpframe.execution.graph_fusion.verify_fusion`, two ISR quanta to one for verifyDefects) and
    the verifyStats quanta running them (:func:`cpframe.execution.graph_fusion.verify_isr_keys`); only
    the keys count.  Tasks in ``exclude`` (those run in a child process for their limits) stay alone,
    and so does a group that would wait on itself (a member reading, through a quantum outside the
    group, another member).
    """
    if not clusters:
        return {}
    pos = {k: i for i, k in enumerate(plan.quanta)}
    out: dict[str, str] = {}
    for c in clusters:
        tasks = set(c.pipetasks) - set(exclude)
        groups: dict[tuple, list[str]] = defaultdict(list)
        for k, q in plan.quanta.items():
            if q.task in tasks and k not in fused_into and all(d in q.data_id for d in c.dimensions):
                groups[tuple(q.data_id[d] for d in c.dimensions)].append(k)
        for values, keys in groups.items():
            members = set(keys)
            last = max(pos[k] for k in keys)
            early_reader = any(pos[k] < last and k not in members and set(q.upstream) & members
                               for k, q in plan.quanta.items())
            if len(keys) < 2 or early_reader or _waits_on_itself(plan, members):
                continue
            gkey = f"{c.label}-{plan.token}-" + "-".join(str(v) for v in values)
            out.update({k: gkey for k in keys})
    return out


def _waits_on_itself(plan: Any, keys: set[str]) -> bool:
    """True when a member reads, through quanta outside ``keys``, another member."""
    for k in keys:
        stack = [u for u in plan.quanta[k].upstream if u not in keys]
        seen: set[str] = set()
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            for uu in plan.quanta[u].upstream:
                if uu in keys:
                    return True
                stack.append(uu)
    return False
