"""A calibration campaign in one command: DMTN-222 §7 as a resumable, recorded plan.

A *campaign file* (YAML) lists the variables of DMTN-222 (``INSTRUMENT``, ``TICKET``,
``RERUN``, ``SELECTION_*``...) and the steps of a calibration construction:

``submit``
    a submission template (generation or verification), run with ``cpframe submit``;
``certify``
    certify one dataset type from a generation collection into a CALIBRATION
    collection ``T/<type>.<CERT_RERUN>`` (flats ``T/flat-<band>.<CERT_RERUN>``) and
    chain it into the ticket-level CHAINED collection ``P`` (the first chaining step
    redefines ``P``, later ones prepend);
``report``
    the static HTML report over the verification and generation collections;
``deploy``
    prepend ``P`` to ``INSTRUMENT/calib``; runs only when asked explicitly.

:func:`load_campaign` validates the whole file at once and derives the order from the
calibration dependencies (spec dependencies.md §6/§7; :data:`PRODUCT_NEEDS`).
:func:`run_campaign` runs the steps, skipping those whose outputs the registry already
holds, and records every command (:class:`CommandRecord`) in the campaign directory
``REPO/campaigns/<TICKET>/<name>/`` next to the state file.

Names: ``P = ${USER_CALIB_PREFIX}${INSTRUMENT}/calib/${TICKET}`` is available to the
file as ``${TICKET_CHAIN}`` and ``T = P/${TAG}`` as ``${TAG_PREFIX}``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import heapq
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

# deployment lives in cpframe.campaign.deploy; its names stay importable from here
from cpframe.campaign.deploy import CheckRow, DeployResult, _exists, deploy, format_deploy_plan, self_check  # noqa: F401
from cpframe.core.errors import CampaignError, CpframeError
from cpframe.repository.names import collection_name_problem

__all__ = [
    "Step",
    "Campaign",
    "StepOutcome",
    "CampaignResult",
    "DeployResult",
    "CampaignState",
    "CommandRecord",
    "PRODUCT_NEEDS",
    "STEP_KINDS",
    "REQUIRED_VARIABLES",
    "load_campaign",
    "parse_campaign",
    "order_steps",
    "format_plan",
    "plan_status",
    "run_campaign",
    "deploy",
    "format_deploy_plan",
    "self_check",
    "parse_var_options",
    "campaign_dir",
]

# -- vocabulary -------------------------------------------------------------------------------

#: Step kinds a campaign file may use.
STEP_KINDS = ("submit", "certify", "report", "deploy")

#: Calibration products cpframe builds and what each needs built (and certified) first
#: (spec dependencies.md §7, the minimal closed set, with defects before PTC as in §6).
PRODUCT_NEEDS: dict[str, tuple[str, ...]] = {
    "biasBootstrap": (),
    "darkBootstrap": ("biasBootstrap",),
    "flatBootstrap": ("biasBootstrap", "darkBootstrap"),
    "defects": ("biasBootstrap", "darkBootstrap", "flatBootstrap"),
    "ptc": ("defects",),
    "bias": ("ptc", "defects"),
    "dark": ("ptc", "bias", "defects"),
    "flat": ("ptc", "bias", "dark", "defects"),
}

#: Products that are certified (bootstraps are read straight from their RUNs).
CERTIFIABLE = ("defects", "ptc", "bias", "dark", "flat")

#: What a verification submission may test.
VERIFY_TARGETS = ("bias", "dark", "flat", "defects", "ptc", "science")

#: Variables every campaign needs (DMTN-222 §7 exports them all).
REQUIRED_VARIABLES = (
    "USER_CALIB_PREFIX", "INSTRUMENT", "TICKET", "REPO", "RAW_COLLECTION", "CALIB_COLLECTIONS",
    "TAG", "RERUN", "CERT_RERUN", "VERIFY_RERUN", "START_DATE",
)

#: Variables ``cpframe deploy CAMPAIGN`` needs (passed on with --var in the record).
_DEPLOY_VARIABLES = (
    "REPO", "INSTRUMENT", "TICKET", "USER_CALIB_PREFIX", "RAW_COLLECTION", "CALIB_COLLECTIONS",
)

#: Names cpframe computes from the others; a campaign file may not set them.
DERIVED_VARIABLES = ("TICKET_CHAIN", "TAG_PREFIX")

#: The generation-collection stem of each product (templates.md §4/§5).
GEN_STEM = {
    "biasBootstrap": "biasBootstrapGen", "darkBootstrap": "darkBootstrapGen",
    "flatBootstrap": "flatBootstrapGen", "defects": "defectGen", "ptc": "ptcGen",
    "bias": "biasGen", "dark": "darkGen", "flat": "flatGen",
}

#: Selection variable each product / verification reads (``{band}`` for flats).
SELECTION_OF_BUILD = {
    "biasBootstrap": "SELECTION_BIAS_BOOTSTRAP", "darkBootstrap": "SELECTION_DARK_BOOTSTRAP",
    "flatBootstrap": "SELECTION_FLAT_BOOTSTRAP", "defects": None, "ptc": "SELECTION_PTC",
    "bias": "SELECTION_BIAS", "dark": "SELECTION_DARK", "flat": "SELECTION_FLAT_{band}",
}
SELECTION_OF_VERIFY = {
    "bias": "SELECTION_BIAS_V", "dark": "SELECTION_DARK_V", "flat": "SELECTION_FLAT_{band}_V",
    "defects": "SELECTION_DEFECTS_V", "ptc": "SELECTION_PTC_V", "science": "SELECTION_SCIENCE_V",
}

_RERUN_RE = re.compile(r"^\d{8}[a-z]$")
_STEP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

_STEP_KEYS = {
    "submit": {"name", "kind", "needs", "doc", "template", "builds", "verifies", "band", "vars"},
    "certify": {"name", "kind", "needs", "doc", "dataset_type", "band", "input", "output",
                "begin_date", "end_date", "chain", "search_all_inputs"},
    "report": {"name", "kind", "needs", "doc", "output", "collections"},
    "deploy": {"name", "kind", "needs", "doc", "exposure"},
}

# Messages tests check.
MSG_STARTED = (
    "campaign {name!r} was already started in {where} ({done} of {total} steps done{failed}). "
    "Run again with --resume to finish only what is left, or --restart to start over "
    "(with new RERUN/CERT_RERUN values)."
)
MSG_RESTART_COLLISION = (
    "--restart would redo steps whose outputs already exist in the registry:\n{lines}\n"
    "Give new reruns (e.g. --var RERUN={next_rerun} --var CERT_RERUN={next_cert} "
    "--var VERIFY_RERUN={next_verify}), or use --resume to keep them."
)
MSG_STEP_FAILED = (
    "step {index} {name!r} ({kind}) failed: {error}\n"
    "Finished steps are kept. Fix the cause, then run: {again}"
)


# -- the file, parsed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a campaign, with its variables already substituted."""

    name: str
    """Unique name in the campaign (used by ``needs`` and ``--until``)."""
    kind: str
    """One of :data:`STEP_KINDS`."""
    index: int
    """Position in the campaign file (0-based)."""
    needs: tuple[str, ...] = ()
    """Names of steps that must run first (besides the derived dependencies)."""
    doc: str = ""
    template: str | None = None
    """submit: absolute path of the submission template."""
    builds: str | None = None
    """submit: product built (key of :data:`PRODUCT_NEEDS`)."""
    verifies: str | None = None
    """submit: calibration verified (one of :data:`VERIFY_TARGETS`)."""
    band: str | None = None
    """Flat band (submit builds/verifies flat, certify flat)."""
    vars: tuple[tuple[str, str], ...] = ()
    """submit: variables set for this step only."""
    dataset_type: str | None = None
    """certify: dataset type certified."""
    input: str | None = None
    """certify: generation collection holding the datasets (CHAINED: first child only)."""
    output: str | None = None
    """certify: CALIBRATION collection; report: output directory."""
    begin_date: str | None = None
    """certify: TAI start of the validity range (at or before 1970 = unbounded)."""
    end_date: str | None = None
    """certify: TAI end of the validity range (None = open, DMTN-222 policy)."""
    chain: str | None = None
    """certify: CHAINED collection to put ``output`` in (None = do not chain)."""
    search_all_inputs: bool = False
    collections: tuple[str, ...] = ()
    """report: collections to report on (verification first, then generation)."""
    exposure: int | None = None
    """deploy: exposure used by the self-check (default: chosen from the validity ranges)."""
    gen_output: str | None = None
    """submit: CHAINED output collection of the submission (``payload.output``)."""
    gen_run: str | None = None
    """submit: RUN name when it is fixed in advance (bootstraps), else None (timestamped)."""

    @property
    def product(self) -> str | None:
        """Calibration product this step builds or certifies (None for others)."""
        if self.kind == "submit":
            return self.builds
        if self.kind == "certify":
            return self.dataset_type
        return None

    @property
    def label(self) -> str:
        """Short description for the plan."""
        band = f" ({self.band})" if self.band else ""
        if self.kind == "submit" and self.builds:
            return f"build {self.builds}{band}"
        if self.kind == "submit":
            return f"verify {self.verifies}{band}"
        if self.kind == "certify":
            return f"certify {self.dataset_type}{band}"
        return self.kind


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: variables and steps in execution order."""

    name: str
    path: Path
    """Absolute path of the campaign file."""
    variables: Mapping[str, str]
    """All variables, overrides applied, derived names (``TICKET_CHAIN``, ``TAG_PREFIX``) added."""
    steps: tuple[Step, ...]
    """Steps in the order they run."""
    after: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """For each step, ``(earlier step, reason)`` pairs that forced its place."""
    sha256: str = ""
    """Checksum of the campaign file as read."""
    overrides: Mapping[str, str] = field(default_factory=dict)
    """The ``--var`` values given (they are part of how to run it again)."""

    def command(self, *extra: str) -> str:
        """The ``cpframe campaign`` command line for this campaign (with its ``--var``)."""
        argv = ["cpframe", "campaign", str(self.path)]
        for k, x in self.overrides.items():
            argv += ["--var", f"{k}={x}"]
        return sh_join(argv + list(extra))

    @property
    def repo(self) -> str:
        return self.variables["REPO"]

    @property
    def ticket_chain(self) -> str:
        return self.variables["TICKET_CHAIN"]

    @property
    def instrument(self) -> str:
        return self.variables["INSTRUMENT"]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise CampaignError(
            f"{self.path.name}: no step named {name!r}; steps are {', '.join(s.name for s in self.steps)}."
        )

    def chain_mode(self, step: Step) -> str:
        """``redefine`` for the first chaining certify step in run order, ``prepend`` after."""
        for s in self.steps:
            if s.kind == "certify" and s.chain == step.chain:
                return "redefine" if s.name == step.name else "prepend"
        return "prepend"


def parse_var_options(items: Iterable[str]) -> dict[str, str]:
    """Parse ``--var NAME=VALUE`` options.

    >>> parse_var_options(["RERUN=20250207b", "USER_CALIB_PREFIX="])
    {'RERUN': '20250207b', 'USER_CALIB_PREFIX': ''}
    """
    out: dict[str, str] = {}
    bad = []
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            bad.append(item)
            continue
        out[name] = value
    if bad:
        raise CampaignError(
            f"--var expects NAME=VALUE; got {', '.join(repr(b) for b in bad)}. "
            "Example: --var RERUN=20250207b"
        )
    return out


def _substitute(text: str, variables: Mapping[str, str], missing: set[str]) -> str:
    """Replace ``${NAME}`` / ``$NAME``; unknown names are collected in ``missing``.

    >>> _substitute("${A}/x/$B", {"A": "1", "B": "2"}, set())
    '1/x/2'
    """

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in variables:
            return variables[name]
        missing.add(name)
        return m.group(0)

    return _VAR_RE.sub(repl, text)


def _resolve_variables(raw: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """Expand references between variables (``SELECTION_PTC_BFK: ${SELECTION_PTC}``)."""
    resolved: dict[str, str] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> str:
        if name in resolved:
            return resolved[name]
        if name in stack:
            problems.append(f"variables refer to each other in a loop: {' -> '.join(stack + (name,))}")
            resolved[name] = raw[name]
            return raw[name]

        def repl(m: re.Match) -> str:
            ref = m.group(1) or m.group(2)
            if ref in raw:
                return resolve(ref, stack + (name,))
            return m.group(0)  # left for the step-level check (may be an env-style literal)

        value = _VAR_RE.sub(repl, raw[name])
        resolved[name] = value
        return value

    for n in raw:
        resolve(n, ())
    return resolved


def _check_variables(v: Mapping[str, str], steps_raw: list, problems: list[str]) -> None:
    """Value checks of the DMTN-222 variables (each problem appended, none raised)."""
    for name in ("RERUN", "CERT_RERUN", "VERIFY_RERUN"):
        if name in v and not _RERUN_RE.match(v[name]):
            problems.append(
                f"{name}={v[name]!r} is not a rerun; use YYYYMMDD plus one letter, e.g. 20250207a"
            )
    prefix = v.get("USER_CALIB_PREFIX")
    if prefix and not prefix.endswith("/"):
        problems.append(
            f"USER_CALIB_PREFIX={prefix!r} must end with '/' (e.g. 'u/{prefix.strip('/')}/'), "
            "or be empty for official calibrations"
        )
    if "START_DATE" in v:
        from cpframe.core.model import parse_tai

        try:
            parse_tai(v["START_DATE"], "START_DATE")
        except CpframeError as err:
            problems.append(str(err))
    if "BOOTSTRAP_RUN_NUMBER" in v and not re.fullmatch(r"[1-9][0-9]*", v["BOOTSTRAP_RUN_NUMBER"]):
        problems.append(
            f"BOOTSTRAP_RUN_NUMBER={v['BOOTSTRAP_RUN_NUMBER']!r} must be a positive integer, e.g. 1"
        )
    if "INSTRUMENT" in v:
        from cpframe.camera.models import list_instruments

        if v["INSTRUMENT"] not in list_instruments():
            problems.append(
                f"INSTRUMENT={v['INSTRUMENT']!r} is not a camera cpframe knows; "
                f"use one of {', '.join(list_instruments())}"
            )
    for name in ("RAW_COLLECTION", "TICKET_CHAIN", "TAG_PREFIX"):
        if name in v:
            bad = collection_name_problem(v[name])
            if bad:
                problems.append(f"{name} gives the collection name {v[name]!r}, which {bad}")
    for c in _split_collections(v.get("CALIB_COLLECTIONS", "")):
        bad = collection_name_problem(c)
        if bad:
            problems.append(f"CALIB_COLLECTIONS entry {c!r} {bad}")


def _split_collections(text: str) -> list[str]:
    """Split a comma-separated collection list, dropping empty entries.

    >>> _split_collections("a, b,,c")
    ['a', 'b', 'c']
    """
    return [c.strip() for c in str(text).split(",") if c.strip()]


_TEMPLATE_NAME_RE = re.compile(r"^bps_(verify_)?([A-Za-z]+?)(?:_([a-z]+))?\.ya?ml$")


def _infer_from_template(path: str) -> tuple[str | None, str | None, str | None]:
    """Guess (builds, verifies, band) from a DMTN-222 template file name.

    >>> _infer_from_template("templates/bps_flat_g.yaml")
    ('flat', None, 'g')
    >>> _infer_from_template("bps_verify_bias.yaml")
    (None, 'bias', None)
    """
    m = _TEMPLATE_NAME_RE.match(Path(path).name)
    if not m:
        return None, None, None
    verify, what, band = m.groups()
    if verify:
        return None, what, band
    return what, None, band


def _find_template(name: str, base: Path) -> Path | None:
    """Resolve a template: absolute, relative to the campaign file, then the project's templates/."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for root in (base, base / "templates", Path(__file__).resolve().parents[2] / "templates", Path.cwd()):
        if (root / p).exists():
            return (root / p).resolve()
    return None


def _gen_names(builds: str, band: str | None, v: Mapping[str, str]) -> tuple[str, str | None]:
    """Conventional generation chain and fixed RUN (bootstraps) of a product (templates.md §4)."""
    stem = GEN_STEM[builds] + (f"-{band}" if band else "")
    out = f"{v['TAG_PREFIX']}/{stem}.{v['RERUN']}"
    run = f"{out}/run{v.get('BOOTSTRAP_RUN_NUMBER', '1')}" if builds.endswith("Bootstrap") else None
    return out, run


def _verify_output(target: str, band: str | None, v: Mapping[str, str]) -> str:
    stem = f"verify{target[0].upper()}{target[1:]}" + (f"-{band}" if band else "")
    return f"{v['TAG_PREFIX']}/{stem}.{v['VERIFY_RERUN']}"


def _calibration_name_problem(step_name: str, output: str, dataset_type: str, band: str | None,
                              v: Mapping[str, str]) -> str | None:
    """Is ``output`` a plausible CALIBRATION collection name for this certification?"""
    last = output.rsplit("/", 1)[-1]
    expect = dataset_type + (f"-{band}" if band else "")
    example = f"{v.get('TAG_PREFIX', 'T')}/{expect}.{v.get('CERT_RERUN', 'YYYYMMDDa')}"
    calib = _split_collections(v.get("CALIB_COLLECTIONS", ""))
    taken = {v.get("TICKET_CHAIN"), v.get("RAW_COLLECTION"), *calib}
    why = None
    if output in taken:
        why = "is the ticket chain, the raw collection or an input calibration collection"
    elif "Gen" in last or re.search(r"/run\d+$", output) or re.search(r"/\d{8}T\d{6}Z$", output):
        why = "names a generation (RUN or CHAINED) collection"
    elif last.startswith("verify"):
        why = "names a verification collection"
    elif not re.fullmatch(re.escape(expect) + r"\.\d{8}[a-z]", last):
        why = f"does not end with {expect}.<CERT_RERUN>"
    if why is None:
        return None
    return (
        f"step {step_name!r}: certify output {output!r} is not a CALIBRATION collection name: it {why}. "
        f"Certified collections are named T/<type>.<CERT_RERUN>, flats T/flat-<band>.<CERT_RERUN>; "
        f"here: {example}"
    )


def parse_campaign(text: str, path: Path, overrides: Mapping[str, str] | None = None) -> Campaign:
    """Validate a campaign file's text and order its steps.

    Parameters
    ----------
    text : str
        The YAML text.
    path : pathlib.Path
        Where it was read from (names in messages; base for relative template paths).
    overrides : mapping, optional
        ``--var`` values; they win over the file's ``variables``.

    Returns
    -------
    Campaign

    Raises
    ------
    CampaignError
        Every problem found, listed in one message: bad YAML, unknown step kind or key,
        missing or invalid variable, unknown ``needs``, dependency cycle, certify into a
        name that is not a CALIBRATION collection, missing template...
    """
    path = Path(path).resolve()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CampaignError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise CampaignError(f"{path}: a campaign file is a mapping with 'variables' and 'steps'.")
    problems: list[str] = []
    unknown_top = set(doc) - {"name", "description", "variables", "steps"}
    if unknown_top:
        problems.append(
            f"unknown top-level key(s) {', '.join(sorted(map(str, unknown_top)))}; "
            "allowed: name, description, variables, steps"
        )
    raw_vars = doc.get("variables") or {}
    if not isinstance(raw_vars, dict):
        problems.append("'variables' must be a mapping NAME: value")
        raw_vars = {}
    raw_vars = {str(k): "" if val is None else str(val) for k, val in raw_vars.items()}
    raw_vars.update({k: str(val) for k, val in (overrides or {}).items()})
    for d in DERIVED_VARIABLES:
        if d in raw_vars:
            problems.append(
                f"variable {d} is computed by cpframe "
                "(from USER_CALIB_PREFIX, INSTRUMENT, TICKET, TAG); remove it"
            )
            del raw_vars[d]
    v = _resolve_variables(raw_vars, problems)
    missing_required = [n for n in REQUIRED_VARIABLES if n not in v]
    if missing_required:
        problems.append(
            f"missing variable(s) {', '.join(missing_required)}: set them under 'variables:' "
            "or pass --var NAME=VALUE (docs/campaign.md lists them)"
        )
    if v.get("REPO"):
        # relative repository paths are relative to where cpframe runs; recorded absolute
        v["REPO"] = os.path.abspath(os.path.expanduser(v["REPO"]))
    if all(n in v for n in ("USER_CALIB_PREFIX", "INSTRUMENT", "TICKET")):
        v["TICKET_CHAIN"] = f"{v['USER_CALIB_PREFIX']}{v['INSTRUMENT']}/calib/{v['TICKET']}"
        if "TAG" in v:
            v["TAG_PREFIX"] = f"{v['TICKET_CHAIN']}/{v['TAG']}"
    _check_variables(v, doc.get("steps") or [], problems)

    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append("'steps' must be a non-empty list of steps (each with name and kind)")
        raw_steps = []
    steps: list[Step] = []
    seen: set[str] = set()
    for i, rs in enumerate(raw_steps):
        step = _parse_step(i, rs, v, path, problems)
        if step is None:
            continue
        if step.name in seen:
            problems.append(f"step name {step.name!r} is used twice; names must be unique")
            continue
        seen.add(step.name)
        steps.append(step)

    if not problems:
        steps = _fill_certify_inputs(steps, v)
        steps = _fill_report_collections(steps)
        for s in steps:
            for n in s.needs:
                if n not in seen:
                    problems.append(f"step {s.name!r} needs {n!r}, which is not a step of this campaign")
    ordered: list[Step] = []
    after: dict[str, tuple[tuple[str, str], ...]] = {}
    if not problems:
        try:
            ordered, after = order_steps(steps)
        except CampaignError as err:
            problems.append(str(err))
    if problems:
        raise CampaignError(
            f"{path}: {len(problems)} problem(s) in the campaign file:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    name = str(doc.get("name") or path.stem)
    return Campaign(
        name=name, path=path, variables=v, steps=tuple(ordered), after=after,
        sha256=hashlib.sha256(text.encode()).hexdigest(), overrides=dict(overrides or {}),
    )


def load_campaign(path: str | os.PathLike, overrides: Mapping[str, str] | None = None) -> Campaign:
    """Read and validate a campaign file (see :func:`parse_campaign`).

    Raises
    ------
    CampaignError
        The file is missing or invalid (every problem listed).
    """
    p = Path(path)
    if not p.is_file():
        raise CampaignError(
            f"campaign file {str(path)!r} does not exist. Start from templates/campaign_demo.yaml "
            "or templates/campaign_dp1_example.yaml."
        )
    return parse_campaign(p.read_text(), p, overrides)


def _parse_step(i: int, rs: Any, v: Mapping[str, str], path: Path, problems: list[str]) -> Step | None:
    where = f"step {i + 1}"
    if not isinstance(rs, dict):
        problems.append(f"{where}: a step is a mapping with at least 'name' and 'kind'; got {rs!r}")
        return None
    name = rs.get("name")
    if not isinstance(name, str) or not _STEP_NAME_RE.match(name):
        problems.append(f"{where}: 'name' {name!r} must be text of letters, digits and '_.-'")
        return None
    where = f"step {name!r}"
    kind = rs.get("kind")
    if kind not in STEP_KINDS:
        problems.append(f"{where}: unknown step kind {kind!r}; use one of {', '.join(STEP_KINDS)}")
        return None
    extra = set(rs) - _STEP_KEYS[kind]
    if extra:
        problems.append(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))} for a {kind} step; "
            f"allowed: {', '.join(sorted(_STEP_KEYS[kind]))}"
        )
    missing: set[str] = set()

    def sub(key: str, default: str | None = None) -> str | None:
        val = rs.get(key, default)
        if val is None:
            return None
        return _substitute(str(val), v, missing)

    needs = rs.get("needs") or []
    if isinstance(needs, str):
        needs = [needs]
    step = Step(name=name, kind=kind, index=i, needs=tuple(map(str, needs)), doc=str(rs.get("doc") or ""))
    if kind == "submit":
        step = _parse_submit(step, rs, v, path, sub, problems)
    elif kind == "certify":
        step = _parse_certify(step, rs, v, sub, problems)
    elif kind == "report":
        cols = rs.get("collections") or []
        if isinstance(cols, str):
            cols = _split_collections(cols)
        out = sub("output", "${REPO}/reports/${TICKET}/${TAG}.${VERIFY_RERUN}")
        step = replace(step, output=out, collections=tuple(_substitute(str(c), v, missing) for c in cols))
    elif kind == "deploy":
        exp = rs.get("exposure")
        if exp is not None and not re.fullmatch(r"\d+", str(exp)):
            problems.append(f"{where}: exposure {exp!r} must be an exposure id (integer)")
            exp = None
        step = replace(step, exposure=int(exp) if exp is not None else None)
    if missing:
        problems.append(
            f"{where}: missing variable(s) {', '.join(sorted(missing))}; set them under 'variables:' "
            "or pass --var NAME=VALUE"
        )
    return step


def _parse_submit(step: Step, rs: dict, v: Mapping[str, str], path: Path, sub, problems: list[str]) -> Step:
    where = f"step {step.name!r}"
    tname = sub("template")
    if not tname:
        problems.append(f"{where}: a submit step needs 'template' (a submission template file)")
        return step
    tpath = _find_template(tname, path.parent)
    if tpath is None:
        problems.append(
            f"{where}: template {tname!r} not found (looked next to {path.name}, in its templates/ "
            "and in the project's templates/)"
        )
    builds, verifies, band = _infer_from_template(tname)
    builds = rs.get("builds", builds if "verifies" not in rs else None)
    verifies = rs.get("verifies", verifies if "builds" not in rs else None)
    band = rs.get("band", band)
    if builds is not None and builds not in PRODUCT_NEEDS:
        problems.append(
            f"{where}: builds {builds!r} is not a product cpframe makes; "
            f"use one of {', '.join(PRODUCT_NEEDS)}"
        )
        builds = None
    if verifies is not None and verifies not in VERIFY_TARGETS:
        problems.append(f"{where}: verifies {verifies!r} is unknown; use one of {', '.join(VERIFY_TARGETS)}")
        verifies = None
    if builds and verifies:
        problems.append(f"{where}: give either 'builds' or 'verifies', not both")
    if not builds and not verifies:
        problems.append(
            f"{where}: say what template {tname!r} makes: 'builds: <product>' "
            f"({', '.join(PRODUCT_NEEDS)}) or 'verifies: <type>' ({', '.join(VERIFY_TARGETS)})"
        )
        return step
    what = builds or verifies
    if what == "flat" and not band:
        problems.append(f"{where}: a flat step needs 'band' (u, g, r, i, z or y)")
    if what != "flat" and band:
        problems.append(f"{where}: 'band' applies only to flats, not {what}")
        band = None
    if band and "INSTRUMENT" in v:
        from cpframe.camera.models import load_camera

        try:
            load_camera(v["INSTRUMENT"]).filter_for_band(band)
        except CpframeError as err:
            problems.append(f"{where}: {err}")
    step_vars = rs.get("vars") or {}
    if not isinstance(step_vars, dict):
        problems.append(f"{where}: 'vars' must be a mapping NAME: value")
        step_vars = {}
    allv = {**v, **{str(k): str(x) for k, x in step_vars.items()}}
    sel = (SELECTION_OF_BUILD.get(builds) if builds else SELECTION_OF_VERIFY.get(verifies))
    if sel:
        sel = sel.format(band=band or "")
        if sel not in allv:
            problems.append(
                f"{where}: missing variable {sel} (the selection this {what} step reads); "
                f"add it under 'variables:', e.g. {sel}: \"instrument='{v.get('INSTRUMENT', 'X')}' and ...\""
            )
    if builds and builds.endswith("Bootstrap") and "BOOTSTRAP_RUN_NUMBER" not in allv:
        problems.append(
            f"{where}: missing variable BOOTSTRAP_RUN_NUMBER (bootstrap RUNs are named .../run<N>)"
        )
    gen_out = gen_run = None
    if all(k in allv for k in ("TAG_PREFIX", "RERUN", "VERIFY_RERUN")):
        if builds:
            gen_out, gen_run = _gen_names(builds, band, allv)
        else:
            gen_out = _verify_output(verifies, band, allv)
    return replace(
        step, template=str(tpath) if tpath else tname, builds=builds, verifies=verifies, band=band,
        vars=tuple(sorted((str(k), str(x)) for k, x in step_vars.items())),
        gen_output=gen_out, gen_run=gen_run,
    )


def _parse_certify(step: Step, rs: dict, v: Mapping[str, str], sub, problems: list[str]) -> Step:
    where = f"step {step.name!r}"
    dt = rs.get("dataset_type")
    if dt not in CERTIFIABLE:
        problems.append(
            f"{where}: dataset_type {dt!r} cannot be certified by a campaign; "
            f"use one of {', '.join(CERTIFIABLE)}"
            + (" (bootstrap products are read from their RUNs, never certified)"
               if str(dt).endswith("Bootstrap") else "")
        )
        return step
    band = rs.get("band")
    if dt == "flat" and not band:
        problems.append(f"{where}: certifying flats needs 'band' (one CALIBRATION collection per band)")
    if dt != "flat" and band:
        problems.append(f"{where}: 'band' applies only to flats, not {dt}")
        band = None
    stem = dt + (f"-{band}" if band else "")
    output = sub("output", f"${{TAG_PREFIX}}/{stem}.${{CERT_RERUN}}")
    chain = rs.get("chain", "${TICKET_CHAIN}")
    chain = None if chain in (False, None, "") else _substitute(str(chain), v, set())
    begin = sub("begin_date", "${START_DATE}")
    end = sub("end_date")
    from cpframe.core.model import parse_tai

    for label, d in (("begin_date", begin), ("end_date", end)):
        if d and "$" not in d:
            try:
                parse_tai(d, f"{where} {label}")
            except CpframeError as err:
                problems.append(str(err))
    if output and "$" not in output:
        bad = collection_name_problem(output) or _calibration_name_problem(step.name, output, dt, band, v)
        if bad:
            problems.append(bad if bad.startswith("step") else f"{where}: output {output!r} {bad}")
    if chain and chain in (output,):
        problems.append(f"{where}: chain {chain!r} is the certified collection itself")
    return replace(
        step, dataset_type=dt, band=band, input=sub("input"), output=output, begin_date=begin,
        end_date=end, chain=chain, search_all_inputs=bool(rs.get("search_all_inputs", False)),
    )


def _fill_certify_inputs(steps: list[Step], v: Mapping[str, str]) -> list[Step]:
    """A certify step without ``input`` reads the generation chain of the step building that product."""
    out = []
    for s in steps:
        if s.kind == "certify" and not s.input:
            builders = [b for b in steps
                        if b.kind == "submit" and b.builds == s.dataset_type and b.band == s.band]
            if builders:
                s = replace(s, input=builders[-1].gen_output)
            else:
                s = replace(s, input=_gen_names(s.dataset_type, s.band, v)[0])
        out.append(s)
    return out


def _fill_report_collections(steps: list[Step]) -> list[Step]:
    """A report without ``collections`` covers every verification output, then every generation output."""
    verify = [s.gen_output for s in steps if s.kind == "submit" and s.verifies and s.gen_output]
    gen = [s.gen_output for s in steps if s.kind == "submit" and s.builds and s.gen_output]
    return [replace(s, collections=tuple(verify + gen)) if s.kind == "report" and not s.collections else s
            for s in steps]


# -- order --------------------------------------------------------------------------------------


def _derived_edges(steps: Sequence[Step]) -> list[tuple[str, str, str]]:
    """(before, after, reason) edges from the calibration dependencies."""
    edges: list[tuple[str, str, str]] = []
    makers: dict[str, list[Step]] = {}
    for s in steps:
        if s.product and s.kind in ("submit", "certify"):
            makers.setdefault(s.product, []).append(s)
    certifies = [s for s in steps if s.kind == "certify"]
    builds = [s for s in steps if s.kind == "submit" and s.builds]
    for s in steps:
        if s.kind == "submit" and s.builds:
            for need in PRODUCT_NEEDS[s.builds]:
                for m in makers.get(need, []):
                    edges.append((m.name, s.name, f"{s.builds} needs {need}"))
        elif s.kind == "certify":
            for m in makers.get(s.dataset_type, []):
                if m.kind == "submit" and m.band == s.band:
                    edges.append((m.name, s.name, f"certifies what {m.name} builds"))
        elif s.kind == "submit" and s.verifies:
            for c in certifies + builds:
                edges.append((c.name, s.name, "verification runs after certification"))
        if s.kind == "report":
            for o in steps:
                if o.kind in ("submit", "certify"):
                    edges.append((o.name, s.name, "the report comes last"))
        if s.kind == "deploy":
            for o in steps:
                if o.kind != "deploy":
                    edges.append((o.name, s.name, "deployment comes after everything"))
    for s in steps:
        for n in s.needs:
            edges.append((n, s.name, "declared in needs"))
    return edges


def order_steps(steps: Sequence[Step]) -> tuple[list[Step], dict[str, tuple[tuple[str, str], ...]]]:
    """Order steps so that every dependency runs first; ties keep the file order.

    Returns
    -------
    ordered : list of Step
    after : dict
        step name -> ((earlier step, reason), ...), the constraints that placed it.

    Raises
    ------
    CampaignError
        The dependencies form a cycle (the message shows it, with each edge's reason).
    """
    by_name = {s.name: s for s in steps}
    edges = _derived_edges(steps)
    succ: dict[str, dict[str, str]] = {s.name: {} for s in steps}
    indeg = {s.name: 0 for s in steps}
    for a, b, why in edges:
        if a == b:
            raise CampaignError(f"dependency cycle: step {a!r} needs itself")
        if b not in succ[a]:
            succ[a][b] = why
            indeg[b] += 1
    heap = [(by_name[n].index, n) for n, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    ordered: list[Step] = []
    while heap:
        _, n = heapq.heappop(heap)
        ordered.append(by_name[n])
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                heapq.heappush(heap, (by_name[m].index, m))
    if len(ordered) < len(steps):
        left = {n for n, d in indeg.items() if d > 0}
        raise CampaignError("dependency cycle: " + _describe_cycle(left, succ))
    after: dict[str, list[tuple[str, str]]] = {s.name: [] for s in steps}
    for a, targets in succ.items():
        for b, why in targets.items():
            after[b].append((a, why))
    return ordered, {k: tuple(x) for k, x in after.items()}


def _describe_cycle(left: set[str], succ: Mapping[str, Mapping[str, str]]) -> str:
    """Walk from any unfinished node until a node repeats; show that loop with reasons."""
    start = sorted(left)[0]
    path = [start]
    while True:
        nxt = sorted(m for m in succ[path[-1]] if m in left)[0]
        if nxt in path:
            loop = path[path.index(nxt):] + [nxt]
            parts = [f"{a} -> {b} ({succ[a][b]})" for a, b in zip(loop, loop[1:])]
            return "; ".join(parts) + ". Remove one of these 'needs' (or fix the step kinds)."
        path.append(nxt)


# -- state and record ---------------------------------------------------------------------------


def campaign_dir(campaign: Campaign) -> Path:
    """Where the state file and the construction record live: ``REPO/campaigns/<TICKET>/<name>``."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", campaign.name)
    return Path(campaign.repo) / "campaigns" / campaign.variables["TICKET"] / safe


def sh_quote(text: str) -> str:
    """Quote for a POSIX shell, preferring double quotes around selections.

    >>> print(sh_quote("instrument='LSSTComCam' and detector=4"))
    "instrument='LSSTComCam' and detector=4"
    >>> sh_quote("plain")
    'plain'
    """
    q = shlex.quote(text)
    if q.startswith("'") and "'" in text and not re.search(r'[$`"\\!]', text):
        return f'"{text}"'
    return q


def sh_join(argv: Sequence[str]) -> str:
    """A command line as shell text (see :func:`sh_quote`)."""
    return " ".join(sh_quote(a) for a in argv)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CampaignState:
    """Per-step status, saved atomically after every change (``state.json``).

    The file is a cache: a step counts as done only when the registry confirms its
    outputs (:func:`run_campaign` checks).
    """

    def __init__(self, path: Path, data: dict | None = None):
        self.path = Path(path)
        self.data = data or {"steps": {}}

    @classmethod
    def load(cls, directory: Path) -> "CampaignState":
        p = Path(directory) / "state.json"
        if p.exists():
            try:
                return cls(p, json.loads(p.read_text()))
            except json.JSONDecodeError as err:
                raise CampaignError(
                    f"{p} is not valid JSON ({err}); move it away and run with --resume: "
                    "finished steps are found from the registry."
                ) from None
        return cls(p)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def get(self, step: str) -> dict:
        return self.data["steps"].get(step, {})

    def set(self, step: str, **info: Any) -> None:
        self.data["steps"].setdefault(step, {}).update(info)
        self.save()

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def archive(self) -> Path | None:
        if not self.path.exists():
            return None
        dest = self.path.with_name(f"state.{_now().replace(':', '')}.json")
        os.replace(self.path, dest)
        self.data = {"steps": {}}
        return dest


class CommandRecord:
    """The construction record DMTN-222 asks for: ``commands.sh`` (shell-like) and ``record.json``.

    Each entry is the equivalent cpframe command line of what the campaign ran, with
    its start time, duration and outcome; sessions (first run, resumes) are appended.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.sh = self.dir / "commands.sh"
        self.json = self.dir / "record.json"
        self.entries: list[dict] = json.loads(self.json.read_text()) if self.json.exists() else []

    def start_session(self, campaign: Campaign, mode: str, argv: Sequence[str] | None = None) -> None:
        """Write the session header: how cpframe was called and the exported variables."""
        lines = [
            "",
            f"# ==== {_now()}  cpframe campaign {campaign.path} ({mode})",
            f"# campaign {campaign.name!r}, file sha256 {campaign.sha256[:16]}",
        ]
        if argv:
            lines.append(f"# invoked as: {sh_join(argv)}")
        for k in sorted(campaign.variables):
            if k not in DERIVED_VARIABLES:
                lines.append(f"export {k}={sh_quote(campaign.variables[k])}")
        if "SCRATCH" not in campaign.variables:
            scratch = os.environ.get("SCRATCH") or str(campaign_dir(campaign))
            lines.append(f"export SCRATCH={sh_quote(scratch)}  # where submissions keep their files")
        self._append_sh(lines)
        self.entries.append({"session": _now(), "mode": mode, "campaign": str(campaign.path),
                             "sha256": campaign.sha256, "variables": dict(campaign.variables)})
        self._save_json()

    def note(self, text: str) -> None:
        """A comment line in the record (something cpframe did that has no command of its own)."""
        self._append_sh([f"# [{_now()}] {text}"])
        self.entries.append({"note": text, "time": _now()})
        self._save_json()

    def add(self, step: Step, commands: Sequence[Sequence[str]], started: str, duration_s: float,
            outcome: str, message: str = "", outputs: Mapping[str, Any] | None = None) -> None:
        """Record one step: its equivalent command lines, times and outcome."""
        lines = [f"# [{started}] step {step.name} ({step.label})"]
        prefix = "" if outcome == "ok" else "# "
        lines += [prefix + sh_join(c) for c in commands]
        tail = f"# -> {outcome} in {duration_s:.1f} s"
        if message:
            tail += f": {message.splitlines()[0][:300]}"
        lines.append(tail)
        self._append_sh(lines)
        self.entries.append({
            "step": step.name, "kind": step.kind, "commands": [list(c) for c in commands],
            "shell": [sh_join(c) for c in commands], "started": started, "duration_s": round(duration_s, 3),
            "outcome": outcome, "message": message, "outputs": dict(outputs or {}),
        })
        self._save_json()

    def _append_sh(self, lines: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        new = not self.sh.exists()
        with open(self.sh, "a") as f:
            if new:
                f.write("#!/bin/sh\n"
                        "# cpframe construction record (DMTN-222): the commands of this campaign.\n")
            f.write("\n".join(lines) + "\n")

    def _save_json(self) -> None:
        _atomic_write(self.json, json.dumps(self.entries, indent=2))


# -- equivalent command lines -------------------------------------------------------------------


def step_commands(campaign: Campaign, step: Step) -> list[list[str]]:
    """The cpframe command lines equivalent to a step (what the construction record shows)."""
    repo = campaign.repo
    if step.kind == "submit":
        cmd = ["cpframe", "submit", str(step.template)]
        for k, x in step.vars:
            cmd += ["--var", f"{k}={x}"]
        return [cmd]
    if step.kind == "certify":
        cmd = ["cpframe", "certify-calibrations", repo, str(step.input), str(step.output),
               str(step.dataset_type)]
        if step.begin_date:
            cmd += ["--begin-date", step.begin_date]
        if step.end_date:
            cmd += ["--end-date", step.end_date]
        if step.search_all_inputs:
            cmd.append("--search-all-inputs")
        cmds = [cmd]
        if step.chain:
            cmds.append(["cpframe", "collection-chain", repo, "--mode", campaign.chain_mode(step),
                         step.chain, str(step.output)])
        return cmds
    if step.kind == "report":
        cmd = ["cpframe", "report", repo]
        for c in step.collections:
            cmd += ["-c", c]
        return [cmd + ["-o", str(step.output)]]
    if step.kind == "deploy":
        cmd = ["cpframe", "deploy", str(campaign.path), "--yes"]
        for k, x in campaign.overrides.items():
            if k in _DEPLOY_VARIABLES:
                cmd += ["--var", f"{k}={x}"]
        if step.exposure is not None:
            cmd += ["--exposure", str(step.exposure)]
        return [cmd]
    return []


# -- outputs, status ------------------------------------------------------------------------------


def _submit_variables(campaign: Campaign, step: Step) -> dict[str, str]:
    """Variables a submission sees: the campaign's, then the step's own."""
    v = dict(campaign.variables)
    v.update(dict(step.vars))
    # templates write submit-side files under ${SCRATCH}; default: next to the construction record
    if "SCRATCH" not in v and not os.environ.get("SCRATCH"):
        v["SCRATCH"] = str(campaign_dir(campaign))
    return v


def expected_outputs(campaign: Campaign, step: Step) -> dict[str, Any]:
    """What a step will write, as far as it is known before running.

    submit: ``output`` (CHAINED) and ``run`` (fixed name, or None when timestamped), from the
    rendered template (names by convention when it cannot be rendered yet); certify:
    ``collection``; report: ``index``.
    """
    if step.kind == "submit":
        out, run = step.gen_output, step.gen_run
        try:
            from cpframe.execution.templates import render

            sv = _submit_variables(campaign, step)
            r = render(step.template, sv, environ={**os.environ, **sv})
            payload = r.config.get("payload", {})
            out = payload.get("output", out)
            orun = payload.get("outputRun")
            run = None if (not orun or r.timestamp in str(orun)) else orun
        except (ImportError, CpframeError):
            pass
        return {"output": out, "run": run}
    if step.kind == "certify":
        return {"collection": step.output, "chain": step.chain}
    if step.kind == "report":
        return {"index": str(Path(str(step.output)) / "index.html")}
    return {}


def _run_complete(registry: Any, run: str, dataset_type: str | None) -> tuple[bool, str]:
    """A submission RUN counts as finished when it holds outputs and its last record says complete."""
    from cpframe.core.model import CollectionType

    if _exists(registry, run) != CollectionType.RUN:
        return False, f"RUN {run} does not exist"
    records = (registry.get_run_info(run) or {}).get("records") or []
    if not records:
        return False, f"RUN {run} has no submission record (interrupted)"
    if records[-1].get("status") != "complete":
        return False, f"RUN {run} is marked {records[-1].get('status')}"
    refs = registry.query_datasets(dataset_type or None, collections=[run])
    if not refs:
        return False, f"RUN {run} holds no {dataset_type or ''} datasets".replace("  ", " ")
    return True, f"RUN {run}: {len(refs)} {dataset_type or 'datasets'}"


def step_done(campaign: Campaign, step: Step, registry: Any, state: CampaignState) -> tuple[bool, str]:
    """Whether a step's outputs are in the registry (the state file alone is not enough).

    Returns
    -------
    done : bool
    detail : str
        What was found (or missing), for the plan and the log.
    """
    from cpframe.core.model import CollectionType

    info = state.get(step.name)
    if step.kind == "submit":
        exp = expected_outputs(campaign, step)
        dtype = step.builds
        out = exp.get("output")
        in_chain = registry.get_chain(out) if out and _exists(registry, out) == CollectionType.CHAINED else ()
        candidates = [r for r in (info.get("run"), exp.get("run"), in_chain[0] if in_chain else None) if r]
        last = "not run yet"
        for run in dict.fromkeys(candidates):
            # a recorded RUN counts only while it belongs to this step's outputs (RERUN may have changed)
            if run != exp.get("run") and run not in in_chain:
                last = f"RUN {run} is not in {out}"
                continue
            ok, last = _run_complete(registry, run, dtype)
            if ok:
                return True, last
        return False, last
    if step.kind == "certify":
        if _exists(registry, str(step.output)) != CollectionType.CALIBRATION:
            return False, f"{step.output} not created yet"
        links = registry.query_certifications(str(step.output), step.dataset_type)
        if step.band:
            pf = _band_filter(campaign, step.band)
            links = [r for r in links if r.data_id.get("physical_filter") == pf]
        if not links:
            return False, f"no {step.dataset_type} certified in {step.output}"
        if step.chain and (_exists(registry, step.chain) != CollectionType.CHAINED
                           or str(step.output) not in registry.get_chain(step.chain)):
            return False, f"{len(links)} certified, not yet chained into {step.chain}"
        return True, f"{len(links)} {step.dataset_type} certified in {step.output}"
    if step.kind == "report":
        index = Path(str(step.output)) / "index.html"
        if info.get("status") == "done" and index.exists():
            return True, f"report at {index}"
        return False, "report not written yet"
    if step.kind == "deploy":
        calib = f"{campaign.instrument}/calib"
        if (_exists(registry, calib) == CollectionType.CHAINED
                and registry.get_chain(calib)[:1] == (campaign.ticket_chain,)):
            return True, f"{campaign.ticket_chain} is first in {calib}"
        return False, "not deployed"
    return False, ""


def _band_filter(campaign: Campaign, band: str) -> str:
    from cpframe.camera.models import load_camera

    return load_camera(campaign.instrument).filter_for_band(band)


def _open_repo(root: str):
    """Open the campaign's repository (adapter over ``cpframe.repository.repo.Repository``)."""
    from cpframe.repository.repo import Repository

    return Repository.open(root)


def plan_status(campaign: Campaign, repo: Any | None = None) -> dict[str, tuple[str, str]]:
    """Status of every step: ``done`` / ``failed`` / ``pending`` with the registry's detail.

    Without a repository (it does not exist yet) every step is pending.
    """
    out: dict[str, tuple[str, str]] = {}
    if repo is None:
        return {s.name: ("pending", "") for s in campaign.steps}
    state = CampaignState.load(campaign_dir(campaign))
    for s in campaign.steps:
        done, detail = step_done(campaign, s, repo.registry, state)
        st = "done" if done else ("failed" if state.get(s.name).get("status") == "failed" else "pending")
        if st == "failed":
            detail = state.get(s.name).get("message", detail).splitlines()[0][:120]
        out[s.name] = (st, detail)
    return out


def _describe(campaign: Campaign, step: Step) -> str:
    if step.kind == "submit":
        exp = expected_outputs(campaign, step)
        where = exp.get("run") or f"{exp.get('output')}/<timestamp>"
        return f"{Path(str(step.template)).name} -> {where}"
    if step.kind == "certify":
        end = step.end_date or "+inf"
        text = f"{step.dataset_type} from {step.input} into {step.output} [{step.begin_date}, {end})"
        if step.chain:
            text += f"; {campaign.chain_mode(step)} {step.chain}"
        return text
    if step.kind == "report":
        return f"{len(step.collections)} collections -> {step.output}/index.html"
    if step.kind == "deploy":
        return f"prepend {campaign.ticket_chain} to {campaign.instrument}/calib (only with --deploy)"
    return ""


def format_plan(campaign: Campaign, status: Mapping[str, tuple[str, str]] | None = None,
                until: str | None = None) -> str:
    """The plan as text: one line per step in run order, with why it sits there.

    >>> # see tests/test_campaign.py::test_dry_run_plan_text
    """
    v = campaign.variables
    lines = [
        f"Campaign {campaign.name!r} ({campaign.path})",
        f"  instrument {v['INSTRUMENT']}, ticket {v['TICKET']}, repo {v['REPO']}",
        f"  ticket chain P = {v['TICKET_CHAIN']}; T = {v['TAG_PREFIX']}",
        f"  reruns: RERUN={v['RERUN']} CERT_RERUN={v['CERT_RERUN']} VERIFY_RERUN={v['VERIFY_RERUN']}",
        "",
    ]
    width = max(len(s.name) for s in campaign.steps)
    moved = [s.name for i, s in enumerate(campaign.steps) if s.index != i]
    stop = False
    for i, s in enumerate(campaign.steps, 1):
        st, detail = (status or {}).get(s.name, ("pending", ""))
        mark = {"done": "[done]  ", "failed": "[FAILED]", "pending": "[todo]  "}.get(st, "[todo]  ")
        if stop:
            mark = "[later] "
        lines.append(f"{i:3d}. {mark}{s.name:<{width}}  {s.label}: {_describe(campaign, s)}")
        if detail and st != "pending":
            lines.append(f"{'':{14}}{detail}")
        if s.name == until:
            stop = True
    if moved:
        lines += ["", "Order derived from the calibration dependencies (file order kept where possible):"]
        pos = {s.name: i for i, s in enumerate(campaign.steps)}
        for s in campaign.steps:
            before = campaign.after.get(s.name, ())
            if s.name in moved and before:
                # the constraint that placed it: its latest predecessor
                a, why = max(before, key=lambda aw: pos[aw[0]])
                lines.append(f"  {s.name} after {a} ({why})")
    n_done = sum(1 for x in (status or {}).values() if x[0] == "done")
    lines += ["", f"{len(campaign.steps)} steps, {n_done} done, {len(campaign.steps) - n_done} to run."]
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    """What happened to one step in one invocation."""

    name: str
    status: str
    """``ran``, ``skipped`` (already done), ``not-run`` (after --until, or explicit-only), ``failed``."""
    detail: str = ""
    duration_s: float = 0.0
    """Wall time of the step, seconds."""
    outputs: dict = field(default_factory=dict)


@dataclass
class CampaignResult:
    """Summary of one :func:`run_campaign` call."""

    campaign: Campaign
    outcomes: list[StepOutcome]
    directory: Path
    """The campaign directory (state.json, commands.sh, record.json)."""
    report_index: Path | None = None
    """index.html of the report step, when there is one and it ran or was done."""
    deploy: "DeployResult | None" = None

    def summary(self) -> str:
        """A few lines a person can act on."""
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        parts = [f"{n} {k}" for k, n in sorted(counts.items())]
        lines = [f"campaign {self.campaign.name!r}: {', '.join(parts)}"]
        for o in self.outcomes:
            if o.status in ("ran", "failed"):
                lines.append(f"  {o.status:7s} {o.name}: {o.detail}")
        lines.append(f"construction record: {self.directory / 'commands.sh'} (and record.json)")
        if self.report_index:
            lines.append(f"report: {self.report_index}")
        return "\n".join(lines)


def _restart_collisions(campaign: Campaign, registry: Any) -> list[str]:
    """Deterministic outputs of the campaign that already exist (a restart would collide)."""
    from cpframe.core.model import CollectionType

    found = []
    for s in campaign.steps:
        if s.kind == "submit":
            exp = expected_outputs(campaign, s)
            for name in (exp.get("run"), exp.get("output")):
                if name and _exists(registry, name) is not None:
                    found.append(f"  {s.name}: {name}")
                    break
        elif s.kind == "certify" and _exists(registry, str(s.output)) == CollectionType.CALIBRATION:
            if registry.query_certifications(str(s.output), s.dataset_type):
                found.append(f"  {s.name}: {s.output}")
    return found


def _bump(rerun: str) -> str:
    """Next rerun letter.

    >>> _bump("20250207a")
    '20250207b'
    """
    return rerun[:-1] + (chr(ord(rerun[-1]) + 1) if rerun[-1] < "z" else "z")


def run_campaign(
    campaign: Campaign,
    *,
    resume: bool = False,
    restart: bool = False,
    until: str | None = None,
    deploy_step: bool = False,
    client: Any = None,
    settings: Any = None,
    echo: Callable[[str], None] | None = None,
    argv: Sequence[str] | None = None,
    resume_hint: str | None = None,
) -> CampaignResult:
    """Run a campaign's steps in order, skipping those the registry shows as done.

    Parameters
    ----------
    campaign : Campaign
        From :func:`load_campaign`.
    resume : bool
        Continue a campaign started before (finished steps are skipped, checked in the registry).
    restart : bool
        Forget the previous state (archived) and run every step; refused if the outputs of
        the current reruns already exist.
    until : str, optional
        Stop after this step (it runs); ``--resume`` later continues.
    deploy_step : bool
        Also run ``deploy`` steps (never run otherwise).
    client : distributed.Client, optional
        One Dask client for every submission; when None, the submit engine opens its own.
    settings : cpframe.core.config.Settings, optional
    echo : callable, optional
        Where progress lines go (default: nothing).
    argv : sequence of str, optional
        The command line, written into the construction record.
    resume_hint : str, optional
        The command a person runs to resume after a failure (default: this campaign with
        ``--resume``).

    Returns
    -------
    CampaignResult

    Raises
    ------
    CampaignError
        Started before without --resume/--restart; restart collisions; a step failed (the
        message names it and says how to resume); unknown ``until``.
    """
    echo = echo or (lambda _msg: None)
    if resume and restart:
        raise CampaignError("--resume and --restart exclude each other; choose one.")
    if until is not None:
        campaign.step(until)  # raises with the list of names
    repo = _open_repo(campaign.repo)
    registry = repo.registry
    directory = campaign_dir(campaign)
    state = CampaignState.load(directory)
    started_steps = [n for n, x in state.data["steps"].items() if x.get("status")]
    if state.exists and started_steps and not (resume or restart):
        done = sum(1 for s in campaign.steps if step_done(campaign, s, registry, state)[0])
        failed = [n for n, x in state.data["steps"].items() if x.get("status") == "failed"]
        raise CampaignError(MSG_STARTED.format(
            name=campaign.name, where=directory, done=done, total=len(campaign.steps),
            failed=f"; {failed[0]} failed" if failed else ""))
    if restart:
        collisions = _restart_collisions(campaign, registry)
        if collisions:
            v = campaign.variables
            raise CampaignError(MSG_RESTART_COLLISION.format(
                lines="\n".join(collisions), next_rerun=_bump(v["RERUN"]),
                next_cert=_bump(v["CERT_RERUN"]), next_verify=_bump(v["VERIFY_RERUN"])))
        old = state.archive()
        if old:
            echo(f"previous state archived as {old}")
    mode = "restart" if restart else ("resume" if resume else "start")
    state.data.update({"campaign": campaign.name, "file": str(campaign.path), "sha256": campaign.sha256})
    state.save()
    record = CommandRecord(directory)
    record.start_session(campaign, mode, argv)
    _ensure_ticket_chain(campaign, registry, record)
    result = CampaignResult(campaign, [], directory)
    runner = _StepRunner(campaign, repo, client, settings, echo, state)
    try:
        stop = False
        for i, step in enumerate(campaign.steps, 1):
            if stop:
                result.outcomes.append(StepOutcome(step.name, "not-run", "after --until"))
                continue
            if step.kind == "deploy" and not deploy_step:
                result.outcomes.append(StepOutcome(step.name, "not-run", "deploy runs only with --deploy"))
                echo(f"[{i}/{len(campaign.steps)}] {step.name}: not run (deployment is explicit: --deploy)")
                continue
            done, detail = step_done(campaign, step, registry, state)
            if done:
                echo(f"[{i}/{len(campaign.steps)}] {step.name}: already done ({detail}), skipped")
                if state.get(step.name).get("status") != "done":
                    state.set(step.name, status="done", finished=_now(), detail=detail, recovered=True)
                result.outcomes.append(StepOutcome(step.name, "skipped", detail))
                record.add(step, step_commands(campaign, step), _now(), 0.0, "skipped",
                           f"already done: {detail}")
                if step.kind == "report":
                    result.report_index = Path(str(step.output)) / "index.html"
                stop = step.name == until
                continue
            echo(f"[{i}/{len(campaign.steps)}] {step.name}: {step.label} ...")
            t0, started = time.monotonic(), _now()
            state.set(step.name, status="running", started=started)
            try:
                outputs = runner.run(step)
            except (CpframeError, OSError) as err:
                dt = time.monotonic() - t0
                state.set(step.name, status="failed", finished=_now(), message=str(err),
                          **getattr(err, "campaign_outputs", {}))
                record.add(step, step_commands(campaign, step), started, dt, "failed", str(err))
                result.outcomes.append(StepOutcome(step.name, "failed", str(err).splitlines()[0], dt))
                raise CampaignError(MSG_STEP_FAILED.format(
                    index=i, name=step.name, kind=step.kind, error=err,
                    again=resume_hint or campaign.command("--resume"))) from err
            except BaseException as err:  # interrupted (Ctrl-C) or a bug: keep the record honest
                dt = time.monotonic() - t0
                state.set(step.name, status="interrupted", finished=_now(), message=repr(err))
                record.add(step, step_commands(campaign, step), started, dt, "interrupted", repr(err))
                raise
            dt = time.monotonic() - t0
            detail = outputs.pop("detail", "")
            commands = outputs.pop("_commands", None) or step_commands(campaign, step)
            state.set(step.name, status="done", finished=_now(), duration_s=round(dt, 3), detail=detail,
                      **{k: x for k, x in outputs.items() if not k.startswith("_")})
            record.add(step, commands, started, dt, "ok", detail,
                       {k: x for k, x in outputs.items() if not k.startswith("_")})
            result.outcomes.append(StepOutcome(step.name, "ran", detail, dt, outputs))
            echo(f"    done in {dt:.1f} s: {detail}")
            if step.kind == "report":
                result.report_index = Path(str(step.output)) / "index.html"
            if step.kind == "deploy":
                result.deploy = outputs.get("_deploy")
            stop = step.name == until
    finally:
        runner.close()
        repo.close()
    return result


def _ensure_ticket_chain(campaign: Campaign, registry: Any, record: "CommandRecord") -> None:
    """Create the ticket chain P empty when missing: the generation templates search it first.

    (DMTN-222's first certification then redefines it.)
    """
    from cpframe.core.model import CollectionType

    if _exists(registry, campaign.ticket_chain) is None:
        registry.register_collection(campaign.ticket_chain, CollectionType.CHAINED,
                                     doc=f"ticket chain of campaign {campaign.name} "
                                         f"({campaign.variables['TICKET']})")
        record.note(f"created the empty CHAINED collection {campaign.ticket_chain} "
                    "(templates read it first; the first certification redefines it)")


class _StepRunner:
    """Runs one step of each kind by calling the other areas' library functions."""

    def __init__(self, campaign: Campaign, repo: Any, client: Any, settings: Any, echo: Callable[[str], None],
                 state: CampaignState):
        self.campaign = campaign
        self.repo = repo
        self.client = client
        self.settings = settings
        self.echo = echo
        self.state = state
        self._cluster = None

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def _client(self) -> Any:
        """One cluster for every submission of the campaign (started at the first one)."""
        if self.client is None:
            from cpframe.execution.cluster import open_cluster
            from cpframe.core.config import load_settings

            self.settings = self.settings or load_settings()
            self._cluster = open_cluster(self.settings)
            self.client = self._cluster.client
            self.echo(f"    {self._cluster.summary()}")
        return self.client

    def run(self, step: Step) -> dict[str, Any]:
        return getattr(self, f"_run_{step.kind}")(step)

    # submit ---------------------------------------------------------------------------
    def _run_submit(self, step: Step) -> dict[str, Any]:
        return _run_submission(self.campaign, step, self.repo, self._client(), self.settings, self.state,
                               self.echo)

    # certify --------------------------------------------------------------------------
    def _run_certify(self, step: Step) -> dict[str, Any]:
        return certify_step(self.campaign, step, self.repo)

    # report ---------------------------------------------------------------------------
    def _run_report(self, step: Step) -> dict[str, Any]:
        return _run_report(self.campaign, step, self.repo)

    # deploy ---------------------------------------------------------------------------
    def _run_deploy(self, step: Step) -> dict[str, Any]:
        res = deploy(self.repo.registry, self.campaign.instrument, self.campaign.ticket_chain,
                     raw_collection=self.campaign.variables["RAW_COLLECTION"],
                     calib_collections=_split_collections(self.campaign.variables["CALIB_COLLECTIONS"]),
                     exposure=step.exposure)
        if not res.ok:
            raise CampaignError(f"deployment self-check failed:\n{res.format()}")
        from cpframe.campaign.lifecycle import record_deployment

        # --deploy is an explicit request: recorded as an override when the set is not approved
        record_deployment(self.repo, self.campaign.ticket_chain, res,
                          override="cpframe campaign --deploy (deploy step run without an approved review)")
        return {"detail": res.headline(), "_deploy": res}


def certify_step(campaign: Campaign, step: Step, repo: Any) -> dict[str, Any]:
    """Certify a step's dataset type from its generation collection and chain it (idempotent).

    Certification is ``Repository.certify_calibrations`` (``certify-calibrations``: a CHAINED
    input is searched in its first child only, unless ``search_all_inputs``).  When an
    earlier, interrupted attempt already linked the input's datasets, only the chaining is
    done.

    Raises
    ------
    CampaignError
        The input collection does not exist.
    RegistryError
        From the registry (no datasets, validity overlap, wrong collection type...).
    """
    from cpframe.core.model import CollectionType, Timespan

    registry = repo.registry
    ctype = _exists(registry, str(step.input))
    if ctype is None:
        raise CampaignError(
            f"certify {step.dataset_type}: input collection {step.input!r} does not exist; "
            "did the step that builds it run? (`cpframe campaign FILE --dry-run` shows the plan)"
        )
    search = [str(step.input)]
    if ctype == CollectionType.CHAINED and not step.search_all_inputs:
        search = list(registry.get_chain(str(step.input))[:1])
    timespan = Timespan.from_text(step.begin_date, step.end_date)
    wanted = {r.id for r in registry.query_datasets(step.dataset_type, collections=search, find_first=True)} \
        if search else set()
    linked: set[str] = set()
    if _exists(registry, str(step.output)) == CollectionType.CALIBRATION:
        linked = {r.id for r in registry.query_certifications(str(step.output), step.dataset_type)}
    if wanted and wanted <= linked:
        n, detail = 0, f"already certified in {step.output}"
    else:
        refs = repo.certify_calibrations(str(step.input), str(step.output), step.dataset_type, timespan,
                                         search_all_inputs=step.search_all_inputs)
        n, detail = len(refs), f"{len(refs)} {step.dataset_type} certified into {step.output} {timespan}"
    out: dict[str, Any] = {"collection": step.output, "certified": n,
                           "input_run": search[0] if search else None}
    if step.chain:
        mode = campaign.chain_mode(step)
        is_chain = _exists(registry, step.chain) == CollectionType.CHAINED
        current = registry.get_chain(step.chain) if is_chain else ()
        if str(step.output) not in current:
            registry.set_chain(step.chain, [str(step.output)], mode=mode)
        out["chain"] = list(registry.get_chain(step.chain))
        detail += f"; {mode} {step.chain}"
    out["detail"] = detail
    return out


# -- adapters to the other areas -----------------------------------------------------------------


def _partial_run(campaign: Campaign, step: Step, registry: Any, state: CampaignState) -> str | None:
    """A RUN of this step that exists but did not complete (to be finished with --extend-run)."""
    from cpframe.core.model import CollectionType

    exp = expected_outputs(campaign, step)
    out = exp.get("output")
    in_chain = registry.get_chain(out) if out and _exists(registry, out) == CollectionType.CHAINED else ()
    for run in (exp.get("run"), in_chain[0] if in_chain else None):
        if (run and _exists(registry, run) == CollectionType.RUN
                and not _run_complete(registry, run, step.builds)[0]):
            return run
    return None


def _run_submission(campaign: Campaign, step: Step, repo: Any, client: Any, settings: Any,
                    state: CampaignState, echo: Callable[[str], None]) -> dict[str, Any]:
    """Run one submission with ``cpframe.execution.submit.submit_template`` (as ``cpframe submit TEMPLATE``).

    A RUN of this step left incomplete by an earlier attempt is finished in place
    (``--extend-run --skip-existing``): only its missing outputs are computed.
    """
    from cpframe.core.errors import ExecutionError
    from cpframe.execution.submit import submit_template

    v = _submit_variables(campaign, step)
    partial = _partial_run(campaign, step, repo.registry, state)
    if partial:
        echo(f"    finishing the incomplete RUN {partial} (--extend-run --skip-existing)")
    argv = step_commands(campaign, step)[0] + (["--extend-run", "--skip-existing"] if partial else [])
    scratch = Path(v.get("SCRATCH") or os.environ.get("SCRATCH") or campaign_dir(campaign))
    scratch.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    try:
        # templates without submitPath default to <cwd>/submit/{outputRun} (as BPS): keep those
        # next to the others, not in whatever directory cpframe was started from
        os.chdir(scratch)
        res = submit_template(step.template, v, client=client, settings=settings, environ={**os.environ, **v},
                              extend_run=bool(partial), skip_existing=bool(partial), argv=argv, quiet=True,
                              echo=lambda line: None)
    except ExecutionError as err:
        r = getattr(err, "result", None)
        if r is not None:
            err.campaign_outputs = {"run": r.run, "output": r.output, "submit_dir": str(r.submit_dir)}
        raise
    finally:
        os.chdir(here)
    counts = dict(res.counts)
    what = ", ".join(f"{n} {dt}" for dt, n in counts.items()) or "nothing new"
    return {"run": res.run, "output": res.output, "counts": counts, "submit_dir": str(res.submit_dir),
            "_commands": [argv],
            "compute_s": round(float(res.timings.get("compute_s", 0.0)), 3),
            "detail": f"RUN {res.run}: {what}"}


def _run_report(campaign: Campaign, step: Step, repo: Any) -> dict[str, Any]:
    """Write the HTML report with ``cpframe.report.html.write_report`` (same as ``cpframe report``)."""
    from cpframe.report.html import write_report

    res = write_report(repo, list(step.collections), str(step.output), do_overwrite=True)
    verdicts = {k: v for k, v in sorted(res.verdicts.items())}
    failing = [k for k, v in verdicts.items() if v is False]
    detail = (f"{res.n_datasets} datasets, {res.n_images} images; "
              + (f"FAILING: {', '.join(failing)}" if failing else "every verified type passes")
              + f"; {res.index}")
    return {"index": str(res.index), "verdicts": verdicts, "detail": detail}
