"""Deployment: prepend a ticket chain to ``INSTRUMENT/calib`` and self-check it (DMTN-222 §3.5).

:func:`deploy` edits the instrument's chains (``INSTRUMENT/calib``, ``INSTRUMENT/defaults``)
and :func:`self_check` confirms that, for one exposure inside the validity ranges, a lookup
through ``INSTRUMENT/defaults`` finds every calibration the ticket chain certified.  Only the
registry is used.  ``cpframe deploy`` and a campaign's ``deploy`` step call these;
:mod:`cpframe.campaign.runner` re-exports them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cpframe.core.errors import CampaignError, UnknownCollectionError
from cpframe.repository.base import Registry

__all__ = ["CheckRow", "DeployResult", "deploy", "format_deploy_plan", "self_check"]


def _exists(registry: Registry, name: str):
    """The collection's type, or None when it does not exist (also used by :mod:`cpframe.campaign.runner`)."""
    try:
        return registry.get_collection_type(name)
    except UnknownCollectionError:
        return None


@dataclass(frozen=True)
class CheckRow:
    """Self-check result for one calibration type (and filter)."""

    dataset_type: str
    physical_filter: str | None
    n_checked: int
    """Data IDs (detectors) checked."""
    n_ok: int
    """Data IDs where the deployed chain finds the dataset the ticket chain holds."""
    found_in: tuple[str, ...]
    """Collections of the ticket chain the datasets came from."""
    problems: tuple[str, ...] = ()


@dataclass
class DeployResult:
    """What :func:`deploy` changed and what its self-check found."""

    instrument: str
    ticket_chain: str
    calib_chain: tuple[str, ...]
    defaults_chain: tuple[str, ...]
    changes: list[str]
    """Human-readable list of the chain edits (the plan, when ``dry_run``)."""
    exposure: dict | None = None
    """The exposure record used by the self-check."""
    checks: list[CheckRow] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.n_ok == c.n_checked for c in self.checks)

    def headline(self) -> str:
        if self.dry_run:
            return f"dry run: {len(self.changes)} change(s) planned"
        n = sum(c.n_checked for c in self.checks)
        good = sum(c.n_ok for c in self.checks)
        verdict = "PASS" if self.ok else "FAIL"
        exp = self.exposure["id"] if self.exposure else "none"
        return f"self-check {verdict}: exposure {exp} picks the new calibration for {good}/{n} lookups"

    def format(self) -> str:
        lines = [("Planned" if self.dry_run else "Deployed") + f" {self.ticket_chain} for {self.instrument}:"]
        lines += [f"  {c}" for c in self.changes] or ["  (nothing to change)"]
        if not self.dry_run:
            lines.append(f"  {self.instrument}/calib    = {', '.join(self.calib_chain)}")
            lines.append(f"  {self.instrument}/defaults = {', '.join(self.defaults_chain)}")
        if self.checks:
            e = self.exposure or {}
            lines.append(f"Self-check with exposure {e.get('id')} "
                         f"({e.get('obs_id', '')}, {e.get('timespan', '')}) "
                         f"through {self.instrument}/defaults:")
            for c in self.checks:
                name = c.dataset_type + (f" {c.physical_filter}" if c.physical_filter else "")
                verdict = "ok  " if c.n_ok == c.n_checked else "FAIL"
                lines.append(f"  {verdict} {name:<16} {c.n_ok}/{c.n_checked} detectors from "
                             f"{', '.join(c.found_in) or '-'}")
                lines += [f"       {p}" for p in c.problems[:5]]
        if not self.dry_run:
            lines.append(self.headline())
        return "\n".join(lines)


def format_deploy_plan(instrument: str, ticket_chain: str, raw_collection: str) -> str:
    """What ``deploy`` will do, in words (printed before asking)."""
    return (
        f"Deploy will:\n"
        f"  1. prepend {ticket_chain} to {instrument}/calib (CHAINED; created if missing)\n"
        f"  2. make sure {instrument}/defaults (CHAINED) holds {raw_collection} and {instrument}/calib\n"
        f"  3. check that one exposure in the validity range finds every calibration of {ticket_chain}\n"
        "Everyone reading the instrument's defaults sees the new calibrations afterwards."
    )


def deploy(registry: Registry, instrument: str, ticket_chain: str, *, raw_collection: str,
           calib_collections: Sequence[str] = (), exposure: int | None = None,
           dry_run: bool = False) -> DeployResult:
    """Prepend the ticket chain to ``INSTRUMENT/calib`` and keep ``INSTRUMENT/defaults`` on it.

    Then self-check (DMTN-222 §3.5): for one exposure inside the validity ranges, every
    calibration certified in the ticket chain must be what a lookup through
    ``INSTRUMENT/defaults`` finds.

    Parameters
    ----------
    registry : Registry
    instrument : str
    ticket_chain : str
        The ticket-level CHAINED collection ``P``.
    raw_collection : str
        Raw collection ``INSTRUMENT/defaults`` must hold.
    calib_collections : sequence of str
        Earlier calibrations the campaign used (``CALIB_COLLECTIONS``); appended to
        ``INSTRUMENT/calib`` when it does not reach them yet, so lookups fall through to them.
    exposure : int, optional
        Exposure id for the self-check (default: the latest inside every validity range).
    dry_run : bool
        Only say what would change.

    Raises
    ------
    CampaignError
        The ticket chain does not exist or holds no certified calibration.
    RegistryError
        From the chain edits (cycle, wrong collection types...).
    """
    from cpframe.core.model import CollectionType

    calib, defaults = f"{instrument}/calib", f"{instrument}/defaults"
    if _exists(registry, ticket_chain) != CollectionType.CHAINED:
        raise CampaignError(
            f"nothing to deploy: {ticket_chain!r} is not a CHAINED collection in this repository. "
            "Run the campaign's certify steps first (`cpframe campaign FILE --resume`)."
        )
    if _exists(registry, raw_collection) is None:
        raise CampaignError(f"raw collection {raw_collection!r} does not exist; check RAW_COLLECTION.")
    changes: list[str] = []
    current_calib = registry.get_chain(calib) if _exists(registry, calib) == CollectionType.CHAINED else ()
    if current_calib[:1] != (ticket_chain,):
        changes.append(f"collection-chain --mode prepend {calib} {ticket_chain}")
    reach = set(registry.flatten([calib])) if current_calib else set()
    reach |= set(registry.flatten([ticket_chain]))
    extra = [c for c in calib_collections if c not in reach and c not in current_calib
             and _exists(registry, c) is not None]
    for c in extra:
        changes.append(f"collection-chain --mode extend {calib} {c}")
    cur_def = registry.get_chain(defaults) if _exists(registry, defaults) == CollectionType.CHAINED else None
    if cur_def is None:
        changes.append(f"collection-chain --mode redefine {defaults} {raw_collection},{calib}")
    else:
        for c in (raw_collection, calib):
            if c not in cur_def:
                changes.append(f"collection-chain --mode extend {defaults} {c}")
    if dry_run:
        return DeployResult(instrument, ticket_chain, tuple(current_calib), tuple(cur_def or ()), changes,
                            dry_run=True)
    if current_calib[:1] != (ticket_chain,):
        registry.set_chain(calib, [ticket_chain], mode="prepend")
    for c in extra:
        registry.set_chain(calib, [c], mode="extend")
    if cur_def is None:
        registry.set_chain(defaults, [raw_collection, calib], mode="redefine")
    else:
        missing = [c for c in (raw_collection, calib) if c not in cur_def]
        if missing:
            registry.set_chain(defaults, missing, mode="extend")
    exp, checks = self_check(registry, instrument, ticket_chain, [defaults], exposure)
    return DeployResult(instrument, ticket_chain, tuple(registry.get_chain(calib)),
                        tuple(registry.get_chain(defaults)), changes, exp, checks)


def _certified_links(registry: Registry, ticket_chain: str) -> dict[str, list]:
    """CALIBRATION collection -> its links, for every collection the ticket chain reaches."""
    from cpframe.core.model import CollectionType

    out = {}
    for c in registry.flatten([ticket_chain]):
        if registry.get_collection_type(c) == CollectionType.CALIBRATION:
            out[c] = registry.query_certifications(c)
    return out


def _pick_exposure(registry: Registry, instrument: str, links: Mapping[str, list], exposure: int | None) -> dict:
    from cpframe.core.model import NS_MAX, NS_MIN

    records = registry.query_dimension_records("exposure", instrument=instrument)
    if exposure is not None:
        for r in records:
            if int(r["id"]) == int(exposure):
                return r
        raise CampaignError(f"exposure {exposure} is not an exposure of {instrument}; "
                            "`cpframe query-dimension-records REPO exposure` lists them.")
    if not records:
        raise CampaignError(f"{instrument} has no exposures to run the self-check with; ingest raws first.")
    spans = [r.extra.get("timespan") for refs in links.values() for r in refs if r.extra.get("timespan")]
    lo = max((s.db_begin for s in spans), default=NS_MIN)
    hi = min((s.db_end for s in spans), default=NS_MAX)
    inside = [r for r in records if r["timespan"].db_begin < hi and lo < r["timespan"].db_end]
    pool = inside or records
    return max(pool, key=lambda r: (r["timespan"].db_begin, int(r["id"])))


def self_check(registry: Registry, instrument: str, ticket_chain: str, collections: Sequence[str],
               exposure: int | None = None) -> tuple[dict, list[CheckRow]]:
    """For one exposure, does a lookup through ``collections`` find the ticket chain's calibrations?

    For every (dataset type, data ID) certified in a collection the ticket chain reaches,
    the dataset found through ``collections`` must be the one found through the ticket
    chain alone.

    Returns
    -------
    exposure : dict
        The exposure record used.
    checks : list of CheckRow
        One row per dataset type (and physical filter for flats).
    """
    links = _certified_links(registry, ticket_chain)
    if not any(links.values()):
        raise CampaignError(f"{ticket_chain!r} reaches no certified calibration; nothing to check.")
    exp = _pick_exposure(registry, instrument, links, exposure)
    where_of = {r.id: c for c, refs in links.items() for r in refs}
    keys = {}
    for refs in links.values():
        for r in refs:
            keys.setdefault((r.dataset_type, r.data_id.get("physical_filter")), set()).add(r.data_id)
    rows = []
    for (dtype, pf), data_ids in sorted(keys.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        n_ok, found, problems = 0, set(), []
        for did in sorted(data_ids, key=str):
            want = registry.find_calibration(dtype, did, [ticket_chain], exp)
            got = registry.find_calibration(dtype, did, list(collections), exp)
            if want is None:
                problems.append(f"{did}: not valid at this exposure in {ticket_chain}")
            elif got is None:
                problems.append(f"{did}: nothing found through {', '.join(collections)}")
            elif got.id != want.id:
                problems.append(f"{did}: found {got.id[:8]} from RUN {got.run}, expected {want.id[:8]}")
            else:
                n_ok += 1
                found.add(where_of.get(got.id, got.run))
        rows.append(CheckRow(dtype, pf, len(data_ids), n_ok, tuple(sorted(found)), tuple(problems)))
    return exp, rows
