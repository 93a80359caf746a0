"""Which quanta of a plan run fused (:mod:`cpframe.science.fused`): an ISR -> combine chain streamed without
per-exposure files, with CpDark or CpFlatMeasure in between run on each raw's ISR in memory, and a verifyStats
quantum that measures its raw's ISR image(s) made in memory (:func:`verify_fusion`).  Split out of
:mod:`cpframe.execution.graph`, which builds the fused quanta (``build_graph``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping

__all__ = ["fusion", "isr_run_in_memory", "verify_fusion", "verify_isr_keys"]


#: Kinds between ISR and a fused combine, and the graph kind their quanta run as instead.
_FUSED_MIDDLE = {"darkCr": "isrCrPrepass", "flatMeasure": "isrMeasurePrepass"}


def _fused_calibs(q: Any, path_of: Callable[[Any], Any]) -> dict[str, str]:
    """The ISR calibrations of a fused ISR quantum: type (``bias``, not ``biasBootstrap``) -> path."""
    return {c.removesuffix("Bootstrap"): str(path_of(rs[0])) for c, rs in q.calibs.items()
            if rs and c != "manual_defects"}


def fusion(plan: Any) -> dict[str, str]:
    """Quanta that :func:`build_graph` fuses into their combine: ISR (CpDark, CpFlatMeasure) key -> combine key.

    A combine is fused with the ISR quanta it reads (for a dark, the ``darkCr`` quanta it reads
    and the ISR quantum each of those reads; for a flat, the ISR quanta it reads and the
    ``flatMeasure`` quantum that reads each of them for the normalisation) when nothing else reads them, their
    outputs are not registered, they all have the same ISR settings, the combine's
    ``fuseIsr`` option is on (default) and :func:`cpframe.science.fused.fused_unsupported`
    has no objection.  The fused quantum streams the raws through ISR and the combine
    without writing the per-exposure images (docs/algorithms.md "Fused ISR -> combine").
    """
    from cpframe.science.configs.fused import fused_unsupported

    readers = _readers(plan)

    def fusable_isr(u: Any, reader: str) -> bool:
        return u is not None and u.kind == "isr" and u.raw is not None and not u.registered and readers[u.key] == {reader}

    out: dict[str, str] = {}
    for key, q in plan.quanta.items():
        if q.kind != "combine" or not q.settings["combine"].fuse_isr:
            continue
        ups = [plan.quanta.get(u) for u in q.upstream]
        if not ups:
            continue
        if all(fusable_isr(u, key) for u in ups):
            isr = ups
        elif (flat := _fusable_flat(plan, key, ups, readers)) is not None:
            # CpFlatMeasure between ISR and the normalisation: each raw's measurement is taken on its ISR in
            # memory (cpframe.science.fused_tasks.prepass_flat_measure_task); the combine streams with the scales
            isr, measures = flat
            if any(u.settings["isr"] != isr[0].settings["isr"] or u.settings.get("renamed") for u in isr) \
                    or fused_unsupported(isr[0].settings["isr"], q.settings["combine"]):
                continue
            out.update({u.key: key for u in isr})
            out.update({m.key: key for m in measures})
            continue
        elif all(u is not None and u.kind == "darkCr" and not u.registered and readers[u.key] == {key}
                 and len(u.upstream) == 1 and fusable_isr(plan.quanta.get(u.upstream[0]), u.key)
                 and u.settings["cr"] == ups[0].settings["cr"] for u in ups):
            # CpDark between ISR and the combine: each raw's cosmic rays are found on its ISR in memory
            # (cpframe.science.fused.prepass_cosmic_rays) and set while streaming
            isr = [plan.quanta[u.upstream[0]] for u in ups]
        else:
            continue
        first = isr[0].settings["isr"]
        # an ISR reading a renamed flat/bias/dark (connections.flat=flat_<LED>) stays an ISR task: the fused
        # path reads the calibrations by their own names
        if any(u.settings["isr"] != first or u.settings.get("renamed") for u in isr) \
                or fused_unsupported(first, q.settings["combine"]):
            continue
        out.update({u.key: key for u in isr})
        out.update({u.key: key for u in ups})
    return out


def _fusable_flat(plan: Any, key: str, ups: list, readers: Mapping[str, set[str]]) -> tuple[list, list] | None:
    """(ISR quanta, their CpFlatMeasure quanta) of a flat combine ``key`` that can be fused, else None.

    The combine reads N ISR quanta and the normalisation; each ISR quantum is read by the combine
    and by one ``flatMeasure`` quantum, which only the normalisation reads; none is registered.
    """
    isr = [u for u in ups if u is not None and u.kind == "isr"]
    rest = [u for u in ups if u is None or u.kind != "isr"]
    if not isr or len(rest) != 1 or rest[0] is None or rest[0].kind != "flatNormalize":
        return None
    measures = []
    for u in isr:
        if u.raw is None or u.registered or len(readers[u.key]) != 2 or key not in readers[u.key]:
            return None
        (m_key,) = readers[u.key] - {key}
        m = plan.quanta[m_key]
        if m.kind != "flatMeasure" or m.registered or list(m.upstream) != [u.key] or any(
                plan.quanta[r].kind != "flatNormalize" for r in readers[m_key]):
            return None
        measures.append(m)
    if len({repr(m.settings["config"]) for m in measures}) != 1:
        return None
    return isr, measures


def _readers(plan: Any) -> dict[str, set[str]]:
    readers: dict[str, set[str]] = defaultdict(set)
    for k, q in plan.quanta.items():
        for u in q.upstream:
            readers[u].add(k)
    return readers


def verify_fusion(plan: Any) -> dict[str, str]:
    """ISR quanta that :func:`build_graph` fuses into the verifyStats quantum reading them: ISR key -> its key.

    A verifyStats quantum whose inputs are all ISR quanta of one raw (one for most stages; two for
    verifyDefects, the raw with and without the defects) runs their ISR in memory
    (:func:`cpframe.science.tasks.isr_image`, each ISR quantum's settings and calibrations) and measures the
    images; the ISR quanta become placeholders (``fusedAway``) and no ISR file is written.  Not when an ISR
    output is registered, read by another quantum too, reads a renamed calibration
    (``connections.flat=flat_<LED>``), the ISR quanta read different raws (or are more than two), or the
    verifyStats task sets ``fuseIsr: false`` (docs/verification.md "Fused ISR").  Several ISR keys may map to
    one verifyStats key (:func:`verify_isr_keys` inverts the map).
    """
    readers = _readers(plan)
    out: dict[str, str] = {}
    for key, q in plan.quanta.items():
        # at most two: verifyStats reads the image under test and, for verifyDefects, the uncorrected one
        if q.kind != "verifyStats" or not q.settings.get("fuse_isr", True) or not 1 <= len(q.upstream) <= 2:
            continue
        ups = [plan.quanta.get(u) for u in q.upstream]
        if any(u is None or u.kind != "isr" or u.raw is None or u.registered or readers[u.key] != {key}
               or u.settings.get("renamed") for u in ups) or len({u.raw.id for u in ups}) != 1:
            continue
        out.update({u.key: key for u in ups})
    return out


def isr_run_in_memory(plan: Any) -> dict[str, tuple[str, ...]]:
    """Fused quanta that run ISR quanta's ISR in memory -> the keys of those ISR quanta: the CpDark and
    CpFlatMeasure quanta of a fused dark or flat (:func:`fusion`; one ISR quantum each) and the fused verifyStats
    quanta (:func:`verify_fusion`; one, or two for verifyDefects, in the quantum's input order).  Their BPS
    requests cover the ISR tasks' too (:func:`cpframe.execution.resources.quantum_requests`)."""
    out = {k: (plan.quanta[k].upstream[0],) for k in fusion(plan) if plan.quanta[k].kind in _FUSED_MIDDLE}
    out.update(verify_isr_keys(plan))
    return out


def verify_isr_keys(plan: Any, fused: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """Fused verifyStats key -> the keys of the ISR quanta it runs in memory, in its input order (the image under
    test first; verifyDefects' uncorrected image second): :func:`verify_fusion` (or ``fused``) inverted."""
    fused = verify_fusion(plan) if fused is None else fused
    out: dict[str, tuple[str, ...]] = {}
    for v in dict.fromkeys(fused.values()):
        out[v] = tuple(u for u in plan.quanta[v].upstream if fused.get(u) == v)
    return out
