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

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

# deployment lives in cpframe.campaign.deploy; its names stay importable from here
from cpframe.campaign.deploy import DeployResult, _exists, deploy, format_deploy_plan, self_check  # noqa: F401

# the campaign's vocabulary, its file and its state/record have their own modules
# (model, spec, state); the runner imports what it uses (and the CLI and demo the names they call)
from cpframe.campaign.model import (  # noqa: F401
    _DEPLOY_VARIABLES,
    PRODUCT_NEEDS,
    REQUIRED_VARIABLES,
    STEP_KINDS,
    Campaign,
    Step,
)
from cpframe.campaign.spec import (  # noqa: F401
    _split_collections,
    load_campaign,
    order_steps,
    parse_campaign,
    parse_var_options,
)
from cpframe.campaign.state import CampaignState, CommandRecord, _now, campaign_dir  # noqa: F401
from cpframe.core.errors import CampaignError, CpframeError
from cpframe.repository.base import Registry

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
               str(step.registry_type)]
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


def _run_complete(registry: Registry, run: str, dataset_type: str | None) -> tuple[bool, str]:
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


def step_done(campaign: Campaign, step: Step, registry: Registry, state: CampaignState) -> tuple[bool, str]:
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
        dtype = step.registry_type
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
        links = registry.query_certifications(str(step.output), step.registry_type)
        if step.band:
            pf = _band_filter(campaign, step.band)
            links = [r for r in links if r.data_id.get("physical_filter") == pf]
        if not links:
            return False, f"no {step.registry_type} certified in {step.output}"
        if step.chain and (_exists(registry, step.chain) != CollectionType.CHAINED
                           or str(step.output) not in registry.get_chain(step.chain)):
            return False, f"{len(links)} certified, not yet chained into {step.chain}"
        return True, f"{len(links)} {step.registry_type} certified in {step.output}"
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
        text = f"{step.registry_type} from {step.input} into {step.output} [{step.begin_date}, {end})"
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


def _restart_collisions(campaign: Campaign, registry: Registry) -> list[str]:
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
            if registry.query_certifications(str(s.output), s.registry_type):
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
    from cpframe.core.progress import progress

    # one bar over the steps on a terminal (issue 16), the step lines above it; silent in logs
    with progress(f"campaign {campaign.name}", total=len(campaign.steps)) as bar:
        try:
            _run_steps(campaign, state, record, result, runner, registry, echo, bar, until=until,
                       deploy_step=deploy_step, resume_hint=resume_hint)
        finally:
            runner.close()
            repo.close()
    return result


def _run_steps(campaign, state, record, result, runner, registry, echo, bar, *, until, deploy_step,
               resume_hint) -> None:
    """The steps of :func:`run_campaign`, in order, each recorded; ``bar`` advances per step."""
    stop = False
    for i, step in enumerate(campaign.steps, 1):
        bar.update(completed=i - 1, description=f"campaign: {step.name}")
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
    bar.update(completed=len(campaign.steps))


def _ensure_ticket_chain(campaign: Campaign, registry: Registry, record: "CommandRecord") -> None:
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
            from cpframe.core.config import load_settings
            from cpframe.execution.cluster import open_cluster

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
            f"certify {step.registry_type}: input collection {step.input!r} does not exist; "
            "did the step that builds it run? (`cpframe campaign FILE --dry-run` shows the plan)"
        )
    search = [str(step.input)]
    if ctype == CollectionType.CHAINED and not step.search_all_inputs:
        search = list(registry.get_chain(str(step.input))[:1])
    timespan = Timespan.from_text(step.begin_date, step.end_date)
    wanted = {r.id for r in registry.query_datasets(step.registry_type, collections=search, find_first=True)} \
        if search else set()
    linked: set[str] = set()
    if _exists(registry, str(step.output)) == CollectionType.CALIBRATION:
        linked = {r.id for r in registry.query_certifications(str(step.output), step.registry_type)}
    if wanted and wanted <= linked:
        n, detail = 0, f"already certified in {step.output}"
    else:
        refs = repo.certify_calibrations(str(step.input), str(step.output), step.registry_type, timespan,
                                         search_all_inputs=step.search_all_inputs)
        n, detail = len(refs), f"{len(refs)} {step.registry_type} certified into {step.output} {timespan}"
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


def _partial_run(campaign: Campaign, step: Step, registry: Registry, state: CampaignState) -> str | None:
    """A RUN of this step that exists but did not complete (to be finished with --extend-run)."""
    from cpframe.core.model import CollectionType

    exp = expected_outputs(campaign, step)
    out = exp.get("output")
    in_chain = registry.get_chain(out) if out and _exists(registry, out) == CollectionType.CHAINED else ()
    for run in (exp.get("run"), in_chain[0] if in_chain else None):
        if (run and _exists(registry, run) == CollectionType.RUN
                and not _run_complete(registry, run, step.registry_type)[0]):
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

    from cpframe.campaign.preflight import check_before_submit

    v = _submit_variables(campaign, step)
    makers: dict[str, list[str]] = {}
    for s in campaign.steps:
        if s.product and s.kind in ("submit", "certify") and (s.band == step.band or not (s.band and step.band)):
            makers.setdefault(s.product, []).append(s.name)
    # e.g. the FULLCOVARIANCE ptc an electrostatic build reads, LSSTCam's flat_gradient_reference of a flat's band
    check_before_submit(step, {**os.environ, **v}, repo, makers)
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
              + (f" (not verified: {', '.join(res.missing)})" if res.missing else "")
              + f"; overall {res.overall}"
              + f"; {res.index}")
    return {"index": str(res.index), "verdicts": verdicts, "detail": detail}
