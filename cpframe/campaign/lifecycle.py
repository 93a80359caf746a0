"""The approval lifecycle of a calibration set, recorded in the ledger (DMTN-222 §3.4-§5).

A *calibration set* is a construction ticket's chain ``P`` (``INSTRUMENT/calib/TICKET``).
It moves through::

    generated -> verified -> certified -> under_review -> approved -> deployed -> distributed
                                                       \\-> rejected -> under_review (resubmitted)

Every move is one row of the append-only, hash-chained ledger
(:mod:`cpframe.repository.ledger`): who, when, why, the report judged on (path + SHA-256),
the approval or deployment ticket (DMTN-222's three tickets: construction = the set's
ticket, approval, deployment), the waivers accepted for failing tests.

* ``generated``, ``verified`` and ``certified`` are *observed*: cpframe appends them, with the
  registry's evidence, the first time a lifecycle command finds the set's generation RUNs,
  its verification summaries and its certified collections (:func:`observe`).
* ``review submit`` (anyone, usually the constructor) -> ``under_review``; the failing tests of
  the verification summaries are recorded with it.
* ``review approve`` / ``reject``: by someone other than the submitter (four eyes).  Approval
  needs an approval ticket and one waiver per failing test; the report must be the one
  submitted (same SHA-256).
* ``deploy``: only an approved set, unless an explicit override (who and why are recorded;
  a campaign's ``--deploy`` step and ``cpframe demo`` are such explicit requests).  A set
  deployed by override can still be reviewed, approved and deployed again.
* ``distributed``: when every site of a sites file has imported and checked the set
  (:mod:`cpframe.campaign.distribute`); per-site progress rows carry the site name.

docs/lifecycle.md is the user's page.
"""

from __future__ import annotations

import getpass
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpframe.core.errors import LifecycleError, UnknownCollectionError
from cpframe.core.model import CollectionType

__all__ = [
    "STATES",
    "TRANSITIONS",
    "SetStatus",
    "approve",
    "check_deployable",
    "current_user",
    "known_sets",
    "ledger",
    "observe",
    "record_deployment",
    "reject",
    "set_status",
    "submit",
]

STATES = ("generated", "verified", "certified", "under_review", "approved", "rejected", "deployed",
          "distributed")
#: state -> states a set may move to (``""`` = not in the ledger yet).  Deployment by override
#: is the one move outside this table (from any state, recorded as such).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "": ("generated",),
    "generated": ("verified",),
    "verified": ("certified",),
    "certified": ("under_review",),
    "under_review": ("approved", "rejected"),
    "rejected": ("under_review",),
    "approved": ("deployed",),
    "deployed": ("distributed", "under_review"),
    "distributed": ("deployed",),
}

MSG_UNKNOWN_SET = ("unknown calibration set {name!r}: no CHAINED ticket collection of that name in {repo} and no "
                   "ledger rows. `cpframe ledger {repo}` lists the sets.")
MSG_WRONG_STATE = ("cannot {action} {name!r}: it is {state!r}; {action} needs {need}. "
                   "`cpframe ledger {repo} {name}` shows its history.")
MSG_FOUR_EYES = ("{who!r} submitted {name!r} for review and cannot also {action} it: a second person reviews "
                 "(docs/lifecycle.md). Run it as the reviewer (--who NAME or their login).")
MSG_NEEDS_WAIVER = ("cannot approve {name!r}: {n} failing test(s) without a waiver: {tests}. Add "
                    "--waive 'TEST=reason' for each (one waiver per failing test), or reject the set.")
MSG_NOT_APPROVED = ("refusing to deploy {name!r}: it is {state!r}, not 'approved'. Submit it for review "
                    "(cpframe review submit {repo} {name}) and have it approved, or pass --override-approval "
                    "REASON (recorded in the ledger with your name).")


def current_user() -> str:
    """Who runs the command: ``CPFRAME_USER``, else the login name."""
    return os.environ.get("CPFRAME_USER") or getpass.getuser()


def ledger(repo: Any):
    """The repository's :class:`~cpframe.repository.ledger.Ledger`."""
    from cpframe.repository.ledger import Ledger

    return Ledger(repo.registry)


# -- what the registry says about a set --------------------------------------------------------------


@dataclass
class Facts:
    """What the registry holds for a set (evidence for the observed states)."""

    generated: str = ""
    """Evidence text, ``""`` when not (yet) true."""
    verified: str = ""
    certified: str = ""
    failing_tests: list[str] = field(default_factory=list)
    """``<product>:<TEST>`` of every failing verification test (sorted, unique)."""
    verdicts: dict[str, bool] = field(default_factory=dict)
    """Verified product (``bias``, ``flat-r``...) -> passed."""


def _type(registry: Any, name: str) -> CollectionType | None:
    try:
        return registry.get_collection_type(name)
    except UnknownCollectionError:
        return None


def _product(verify_collection: str) -> str:
    """``.../verifyFlat-r.20241127a`` -> ``flat-r``.

    >>> _product("LSSTComCam/calib/DEMO-1/demo/verifyFlat-r.20241127a"), _product("P/T/verifyPtc.x")
    ('flat-r', 'ptc')
    """
    leaf = verify_collection.rsplit("/", 1)[-1].split(".", 1)[0][len("verify"):]
    return leaf[:1].lower() + leaf[1:]


def _failure_tests(failures: Any) -> set[str]:
    """Test names of a summary's FAILURES (the last word of each ``"<detector> <amp> <test>"``).

    >>> sorted(_failure_tests({"2024": ["R22_S11 C10 NOISE", "SCATTER"], "x": []}))
    ['NOISE', 'SCATTER']
    """
    items = failures.values() if isinstance(failures, Mapping) else [failures or []]
    out = set()
    for v in items:
        for f in v if isinstance(v, (list, tuple)) else [v]:
            if str(f).strip():
                out.add(str(f).split()[-1])
    return out


def observe(repo: Any, name: str) -> Facts:
    """Read the set's generation RUNs, verification summaries and certifications from the registry."""
    from cpframe.verify.results import read_summary

    reg = repo.registry
    facts = Facts()
    below = {c.name: c.type for c in reg.query_collections(f"{name}/*")}
    runs = [c for c, t in below.items() if t == CollectionType.RUN and "Gen" in c[len(name):]]
    if runs:
        facts.generated = f"{len(runs)} generation RUN(s), e.g. {sorted(runs)[0]}"
    summary_types = [t.name for t in reg.query_dataset_types()
                     if t.name.startswith("verify") and t.name.endswith("Summary")]
    verify_chains = [c for c, t in below.items() if c.rsplit("/", 1)[-1].startswith("verify")
                     and t == CollectionType.CHAINED]
    failing: set[str] = set()
    for chain in sorted(verify_chains):
        refs = reg.query_datasets(summary_types, collections=[chain], find_first=True) if summary_types else []
        if not refs:
            continue
        product = _product(chain)
        ok = True
        for ref in refs:
            summary = read_summary(repo.get_path(ref))
            ok = ok and bool(summary.get("SUCCESS"))
            failing |= {f"{product}:{t}" for t in _failure_tests(summary.get("FAILURES"))}
        facts.verdicts[product] = ok
    if facts.verdicts:
        bad = sorted(p for p, ok in facts.verdicts.items() if not ok)
        facts.verified = (f"{len(facts.verdicts)} verification summaries: "
                          + ("all pass" if not bad else f"FAIL in {', '.join(bad)}"))
    facts.failing_tests = sorted(failing)
    if _type(reg, name) == CollectionType.CHAINED:
        calibs = [c for c in reg.flatten([name]) if _type(reg, c) == CollectionType.CALIBRATION]
        n = sum(len(reg.query_certifications(c)) for c in calibs)
        if n:
            facts.certified = f"{n} calibration(s) certified in {len(calibs)} CALIBRATION collection(s)"
    return facts


def known_sets(repo: Any) -> list[str]:
    """Every set: those in the ledger, plus ticket chains ``[u/<user>/]INSTRUMENT/calib/TICKET``."""
    reg = repo.registry
    names = {r.set_name for r in ledger(repo).rows()}
    for info in reg.query_collections("*", types=[CollectionType.CHAINED]):
        parts = info.name.split("/")
        if parts[:1] == ["u"]:
            parts = parts[2:]
        if len(parts) == 3 and parts[1] == "calib":
            names.add(info.name)
    return sorted(names)


# -- status -----------------------------------------------------------------------------------------


@dataclass
class SetStatus:
    """A set's ledger state."""

    name: str
    state: str
    """Last transition (``""`` when the ledger has none)."""
    rows: list = field(default_factory=list)
    """Its ledger rows (transitions and per-site rows), oldest first."""

    @property
    def transitions(self) -> list:
        return [r for r in self.rows if not r.site]

    @property
    def last(self):
        t = self.transitions
        return t[-1] if t else None

    @property
    def report(self) -> str:
        for r in reversed(self.transitions):
            if r.report:
                return r.report
        return ""

    @property
    def override(self) -> bool:
        """Deployed without approval (an override)."""
        last = self.last
        return bool(last and last.state == "deployed" and last.detail.get("override"))

    @property
    def sites(self) -> dict[str, str]:
        """Site -> its last distribution step (``checked`` = done)."""
        out: dict[str, str] = {}
        for r in self.rows:
            if r.site:
                out[r.site] = r.state
        return out

    def next_step(self, repo_root: str = "REPO") -> str:
        """The command for the next step, as a person would type it."""
        n = self.name
        return {
            "": f"cpframe campaign CAMPAIGN.yaml   (nothing built yet for {n})",
            "generated": f"run the verification steps, then: cpframe review submit {repo_root} {n}",
            "verified": f"certify, then: cpframe review submit {repo_root} {n}",
            "certified": f"cpframe review submit {repo_root} {n}",
            "under_review": f"cpframe review approve {repo_root} {n} --ticket APPROVAL-TICKET   (or reject)",
            "rejected": f"build a new set, or resubmit: cpframe review submit {repo_root} {n} --why ...",
            "approved": f"cpframe deploy --repo {repo_root} --chain {n} ... --ticket DEPLOY-TICKET",
            "deployed": (f"cpframe review submit {repo_root} {n}   (deployed without review: have it reviewed)"
                         if self.override else f"cpframe distribute {repo_root} {n} --sites SITES.yaml"),
            "distributed": f"cpframe ledger {repo_root} {n}   (done; every site has it)",
        }[self.state]


def set_status(repo: Any, name: str) -> SetStatus:
    """The set's state and rows (chain checked).  Raises LifecycleError for an unknown set."""
    rows = ledger(repo).rows(name)
    if not rows and _type(repo.registry, name) != CollectionType.CHAINED:
        raise LifecycleError(MSG_UNKNOWN_SET.format(name=name, repo=repo.root))
    trans = [r for r in rows if not r.site]
    return SetStatus(name, trans[-1].state if trans else "", rows)


def _observed_entries(name: str, state: str, facts: Facts, who: str) -> list[dict]:
    """Rows for observed states not in the ledger yet (in order, stopping at the first missing)."""
    order = ("generated", "verified", "certified")
    if state and state not in order:
        return []
    out, prev = [], state
    start = order.index(state) + 1 if state else 0
    for st in order[start:]:
        evidence = getattr(facts, st)
        if not evidence:
            break
        out.append({"set_name": name, "state": st, "previous": prev, "who": who,
                    "why": f"observed by cpframe: {evidence}",
                    "detail": {"observed": True, **({"failing_tests": facts.failing_tests,
                                                     "verdicts": facts.verdicts} if st == "verified" else {})}})
        prev = st
    return out


def _state_of(rows: Sequence[Any], name: str) -> str:
    trans = [r for r in rows if r.set_name == name and not r.site]
    return trans[-1].state if trans else ""


def record_observed(repo: Any, name: str, who: str | None = None) -> SetStatus:
    """Append the observed states (generated, verified, certified) the ledger lacks; return the status."""
    st = set_status(repo, name)
    entries = _observed_entries(name, st.state, observe(repo, name), who or current_user())
    if entries:
        def check(rows):
            if _state_of(rows, name) != st.state:
                raise LifecycleError(f"{name!r} changed while cpframe was looking at it; run the command again.")

        ledger(repo).append(entries, check=check)
        st = set_status(repo, name)
    return st


# -- report -----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_report(repo: Any, name: str) -> Path | None:
    """Newest ``REPO/reports/<TICKET>/*/index.html`` of the set (what a campaign's report step writes)."""
    ticket = name.rstrip("/").rsplit("/", 1)[-1]
    found = sorted((Path(repo.root) / "reports" / ticket).glob("*/index.html"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _report_ref(repo: Any, report: str | os.PathLike) -> tuple[str, Path]:
    p = Path(report)
    if not p.is_absolute():
        p = (Path(repo.root) / p) if (Path(repo.root) / p).exists() else p.absolute()
    if p.is_dir():
        p = p / "index.html"
    if not p.is_file():
        raise LifecycleError(f"report {report}: no such file; give the report's index.html (cpframe report ...).")
    try:
        shown = str(p.resolve().relative_to(Path(repo.root).resolve()))
    except ValueError:
        shown = str(p.resolve())
    return shown, p


def report_path(repo: Any, shown: str) -> Path:
    """Absolute path of a report recorded in the ledger (relative ones are inside the repository)."""
    p = Path(shown)
    return p if p.is_absolute() else Path(repo.root) / p


# -- transitions -------------------------------------------------------------------------------------


def _append_transition(repo: Any, name: str, allowed_from: Sequence[str], entry: Mapping[str, Any],
                       action: str, need: str) -> SetStatus:
    def check(rows):
        state = _state_of(rows, name)
        if state not in allowed_from:
            raise LifecycleError(MSG_WRONG_STATE.format(action=action, name=name, state=state or "not built",
                                                        need=need, repo=repo.root))

    prev = set_status(repo, name).state
    ledger(repo).append([{**entry, "set_name": name, "previous": prev}], check=check)
    return set_status(repo, name)


def submit(repo: Any, name: str, *, who: str | None = None, why: str = "", report: str | None = None) -> SetStatus:
    """Submit a certified set for review (-> ``under_review``), with the report judged on.

    Raises
    ------
    LifecycleError
        Unknown set, not certified (or already under review / approved / deployed), no report.
    """
    who = who or current_user()
    st = record_observed(repo, name, who)
    if report is None:
        found = default_report(repo, name)
        if found is None:
            raise LifecycleError(f"no report found for {name!r} under {Path(repo.root) / 'reports'}; write one "
                                 "(cpframe report ...) and pass --report PATH.")
        report = str(found)
    shown, path = _report_ref(repo, report)
    facts = observe(repo, name)
    allowed = ["certified", "rejected"] + (["deployed"] if st.override else [])
    need = "'certified' (or 'rejected', or deployed by override)"
    if st.state in ("", "generated", "verified"):
        need = "'certified': every product built, verified and certified (cpframe campaign ... --resume)"
    return _append_transition(repo, name, allowed, {
        "state": "under_review", "who": who, "why": why or "submitted for review", "report": shown,
        "report_sha256": _sha256(path),
        "detail": {"failing_tests": facts.failing_tests, "verdicts": facts.verdicts},
    }, "submit", need)


def _submission(st: SetStatus):
    for r in reversed(st.transitions):
        if r.state == "under_review":
            return r
    return None


def _shown_state(repo: Any, st: SetStatus) -> str:
    """The ledger state, or (for a set the ledger has not seen yet) the observed one, for messages."""
    if st.state:
        return st.state
    entries = _observed_entries(st.name, "", observe(repo, st.name), "")
    return entries[-1]["state"] if entries else "not built"


def _reviewable(repo: Any, name: str, who: str, action: str) -> tuple[SetStatus, Any]:
    st = set_status(repo, name)
    if st.state != "under_review":
        raise LifecycleError(MSG_WRONG_STATE.format(action=action, name=name, state=_shown_state(repo, st),
                                                    need="'under_review' (cpframe review submit first)",
                                                    repo=repo.root))
    sub = _submission(st)
    if sub.who == who:
        raise LifecycleError(MSG_FOUR_EYES.format(who=who, name=name, action=action))
    return st, sub


def parse_waivers(items: Sequence[str]) -> dict[str, str]:
    """``["flat-r:NOISE=known hot amp"]`` -> ``{"flat-r:NOISE": "known hot amp"}`` (reason required).

    >>> parse_waivers(["bias:MEAN=amp C10 offset understood"])
    {'bias:MEAN': 'amp C10 offset understood'}
    """
    out, bad = {}, []
    for item in items:
        test, _, reason = item.partition("=")
        if not test.strip() or not reason.strip() or ":" not in test:
            bad.append(item)
            continue
        out[test.strip()] = reason.strip()
    if bad:
        raise LifecycleError(f"--waive {', '.join(repr(b) for b in bad)}: write PRODUCT:TEST=reason, e.g. "
                             "--waive 'flat-r:NOISE=amp C10 is known to be noisy (DM-12345)'.")
    return out


def approve(repo: Any, name: str, *, ticket: str, who: str | None = None, why: str = "",
            waivers: Mapping[str, str] | None = None) -> SetStatus:
    """Approve a set under review (-> ``approved``): approval ticket, a waiver per failing test.

    Raises
    ------
    LifecycleError
        Not under review, the submitter approving, no ticket, a failing test without a waiver
        (or a waiver for a test that does not fail), the report changed since submission.
    """
    who = who or current_user()
    if not ticket or not ticket.strip():
        raise LifecycleError("approval needs the approval ticket (DMTN-222's second ticket): --ticket DM-NNNNN.")
    st, sub = _reviewable(repo, name, who, "approve")
    waivers = dict(waivers or {})
    failing = list(sub.detail.get("failing_tests", []))
    missing = [t for t in failing if t not in waivers]
    if missing:
        raise LifecycleError(MSG_NEEDS_WAIVER.format(name=name, n=len(missing), tests=", ".join(missing)))
    extra = sorted(set(waivers) - set(failing))
    if extra:
        raise LifecycleError(f"--waive {', '.join(extra)}: not a failing test of {name!r} (failing: "
                             f"{', '.join(failing) or 'none'}); remove it.")
    _check_report(repo, name, sub)
    return _append_transition(repo, name, ["under_review"], {
        "state": "approved", "who": who, "why": why or "approved", "ticket": ticket.strip(),
        "report": sub.report, "report_sha256": sub.report_sha256,
        "detail": {"waivers": waivers, "submitted_by": sub.who, "submission_row": sub.id},
    }, "approve", "'under_review'")


def _check_report(repo: Any, name: str, sub: Any) -> None:
    p = report_path(repo, sub.report)
    if not p.is_file() or _sha256(p) != sub.report_sha256:
        raise LifecycleError(f"the report {name!r} was submitted with ({sub.report}) is missing or changed since "
                             "the submission; resubmit it (cpframe review submit) so the review judges what is there.")


def reject(repo: Any, name: str, *, why: str, who: str | None = None) -> SetStatus:
    """Reject a set under review (-> ``rejected``); the reason is required."""
    who = who or current_user()
    if not why or not why.strip():
        raise LifecycleError("a rejection needs a reason: --why 'what is wrong and what to do'.")
    st, sub = _reviewable(repo, name, who, "reject")
    return _append_transition(repo, name, ["under_review"], {
        "state": "rejected", "who": who, "why": why.strip(), "report": sub.report,
        "report_sha256": sub.report_sha256, "detail": {"submitted_by": sub.who, "submission_row": sub.id},
    }, "reject", "'under_review'")


# -- deployment --------------------------------------------------------------------------------------


def check_deployable(repo: Any, name: str, override: str | None = None) -> SetStatus:
    """Refuse (LifecycleError) unless the set is approved (or deployed/distributed) or ``override`` says why."""
    st = record_observed(repo, name)
    if st.state in ("approved", "deployed", "distributed") and not st.override:
        return st
    if override is not None and override.strip():
        return st
    raise LifecycleError(MSG_NOT_APPROVED.format(name=name, state=st.state or "not built", repo=repo.root))


def record_deployment(repo: Any, name: str, result: Any, *, who: str | None = None, ticket: str = "",
                      override: str | None = None) -> SetStatus:
    """Append the ``deployed`` row after :func:`cpframe.campaign.deploy.deploy` ran.

    A set that is not approved is recorded as deployed by override (``override`` is the reason).
    """
    who = who or current_user()
    st = record_observed(repo, name, who)
    detail: dict[str, Any] = {"self_check": result.headline() if result is not None else "",
                              "calib_chain": list(getattr(result, "calib_chain", ()))}
    approved = st.state in ("approved", "deployed", "distributed") and not st.override
    if not approved:
        if not override or not override.strip():
            raise LifecycleError(MSG_NOT_APPROVED.format(name=name, state=st.state or "not built", repo=repo.root))
        detail["override"] = {"who": who, "why": override.strip()}
    entry = {"state": "deployed", "who": who, "ticket": ticket or "",
             "why": ("deployed" if approved else f"deployed WITHOUT approval (override): {override.strip()}"),
             "detail": detail}

    def check(rows):
        state = _state_of(rows, name)
        if approved and state not in ("approved", "deployed", "distributed"):
            raise LifecycleError(f"{name!r} changed while deploying (now {state!r}); run the command again.")

    ledger(repo).append([{**entry, "set_name": name, "previous": st.state}], check=check)
    return set_status(repo, name)


def record_site(repo: Any, name: str, site: str, step: str, *, who: str | None = None, why: str = "",
                detail: Mapping[str, Any] | None = None) -> None:
    """Append a per-site distribution row (``step``: exported, transferred, imported, checked, failed)."""
    ledger(repo).append([{"set_name": name, "state": step, "previous": set_status(repo, name).state,
                          "site": site, "who": who or current_user(), "why": why, "detail": dict(detail or {})}])


def record_distributed(repo: Any, name: str, sites: Sequence[str], *, who: str | None = None) -> SetStatus:
    """Move a deployed set to ``distributed`` (every site imported and checked it)."""
    return _append_transition(repo, name, ["deployed", "distributed"], {
        "state": "distributed", "who": who or current_user(),
        "why": f"imported and checked at {len(sites)} site(s): {', '.join(sites)}",
        "detail": {"sites": list(sites)},
    }, "mark distributed", "'deployed'")


def summary_rows(repo: Any) -> list[SetStatus]:
    """Status of every known set (observed states recorded first), for ``cpframe ledger``."""
    out = []
    for name in known_sets(repo):
        try:
            out.append(record_observed(repo, name))
        except LifecycleError:
            out.append(set_status(repo, name))
    return out


def dumps_detail(detail: Mapping[str, Any]) -> str:
    """Short text of a row's detail for tables.

    >>> dumps_detail({"waivers": {"bias:MEAN": "understood"}, "submitted_by": "a"})
    'waivers: bias:MEAN (understood)'
    """
    parts = []
    if detail.get("override"):
        parts.append(f"OVERRIDE by {detail['override']['who']}: {detail['override']['why']}")
    if "waivers" in detail:
        parts.append("waivers: " + ("; ".join(f"{k} ({v})" for k, v in detail["waivers"].items()) or "none needed"))
    if "failing_tests" in detail and not detail.get("observed"):
        parts.append("failing: " + (", ".join(detail["failing_tests"]) or "none"))
    if detail.get("self_check"):
        parts.append(str(detail["self_check"]))
    if detail.get("manifest"):
        parts.append(f"manifest {str(detail['manifest'])[:12]}")
    if detail.get("error"):
        parts.append(f"error: {detail['error']}")
    return " | ".join(parts)
