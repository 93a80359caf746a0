"""``cpframe submit``: the stage drivers render -> validate -> plan -> run -> record.

Each stage maps the previous result to a value that can be looked at or saved, so a
person can stop after any of them (``cpframe render``, ``cpframe plan``):

=========  ======================================================  ==========================
stage      does                                                    fails with
=========  ======================================================  ==========================
render     template + environment -> plain dict                    TemplateError
validate   dict -> Submission; pipelineYaml -> PipelineSpec        SubmissionError
target     which RUN, is it allowed (exists? ``--extend-run``)     SubmissionError
plan       selection, quanta, calibration lookups                  SelectionError, PlanningError
run        open the cluster, create the RUN, execute, register     ExecutionError (after record)
record     provenance into the RUN; submit directory               --
=========  ======================================================  ==========================

Nothing is written anywhere before the plan stage has passed: a missing variable, a bad
selection, a missing calibration or an existing RUN leave the repository and the disk as
they were.

Output collections follow ``pipetask -o``: the RUN is ``outputRun`` (default
``{output}/{timestamp}``) and the CHAINED ``output`` becomes ``[RUN, *inCollection]``; a
later submission with the same ``output`` puts its new RUN at the front.
``--extend-run`` writes into an existing RUN instead: the explicit ``outputRun``, or the
first child of the ``output`` chain (as ``pipetask --extend-run``).

One writer per RUN: the run stage takes the RUN's lock (:mod:`cpframe.repository.locks`)
before it creates or extends the RUN, and a second submission into it is refused with the
owner's name; ``take_over_lock`` (``--take-over-lock``) takes the lock of a writer that is gone.
SIGTERM (Slurm at walltime) and SIGINT finish or roll back the registration in progress,
record what completed in the provenance, and raise :class:`~cpframe.core.errors.InterruptedRunError`
(exit ``128 + signal``) saying how to resume.  Outputs that could not be registered (registry
busy or down, disk full) are staged and registered by the next ``--extend-run``.

When quanta fail after their retries, the RUN keeps only the complete, registered
outputs; the provenance record says what is missing, and the error says how to finish
(``--extend-run --skip-existing``).  If nothing at all was registered, the new RUN (and
the chain, if this submission created it) is removed again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from cpframe.core.errors import (
    CollectionTypeError,
    ExecutionError,
    InterruptedRunError,
    SubmissionError,
    UnknownCollectionError,
)
from cpframe.core.model import CollectionType
from cpframe.core.timeline import mark
from cpframe.repository.base import Registry

__all__ = [
    "RunTarget",
    "PlanOutcome",
    "SubmitResult",
    "start_fork_server_if_local",
    "render_stage",
    "validate_stage",
    "target_stage",
    "plan_stage",
    "plan_template",
    "submit_template",
    "MSG_RUN_EXISTS",
    "MSG_NOTHING_TO_EXTEND",
    "MSG_FAILED",
]

log = logging.getLogger("cpframe.execution.submit")

MSG_RUN_EXISTS = (
    "output RUN {run!r} already exists ({n} dataset(s)); cpframe does not write into an existing RUN. "
    "Pass --extend-run to add to it (with --skip-existing to run only what is missing), or choose a new RUN: "
    "bump BOOTSTRAP_RUN_NUMBER (bootstrap templates) or RERUN."
)
MSG_NOTHING_TO_EXTEND = (
    "--extend-run: the output chain {output!r} does not exist, so there is no RUN to extend. "
    "Submit without --extend-run first."
)
MSG_OUTPUT_NOT_CHAIN = (
    "payload.output {output!r} exists as a {type} collection; the output must be a CHAINED collection "
    "(pipetask -o). Choose another output name (TAG / RERUN)."
)
MSG_FAILED = (
    "{what}\nRUN {run} holds only the {n} complete output(s) registered; nothing half-written.\n"
    "Fix the cause (the submit log has every traceback: {log}), then finish with:\n"
    "  cpframe submit {template} --extend-run --skip-existing"
)


# ------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------
def render_stage(template: str | os.PathLike, variables: Mapping[str, str] | None = None, *,
                 allow_unset: bool = False, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None, now: datetime | None = None) -> Any:
    """Render a template (:func:`cpframe.execution.templates.render`); returns the ``Rendering``."""
    from cpframe.execution.templates import render

    return render(template, dict(variables or {}), allow_unset=allow_unset, environ=environ, overrides=overrides,
                  now=now)


def validate_stage(rendering: Any) -> tuple[Any, Any]:
    """-> (Submission, PipelineSpec); SubmissionError / PipelineError list every problem."""
    from cpframe.execution.pipeline import load_pipeline
    from cpframe.execution.submission import check_against_pipeline, validate_submission

    sub = validate_submission(rendering.config, rendering.path)
    stack = getattr(rendering, "stack_env", None)
    pipe = load_pipeline(sub.pipeline_yaml, overrides=sub.config_overrides,
                         environ=stack if stack is not None else None)
    check_against_pipeline(sub, pipe)
    return sub, pipe


@dataclass(frozen=True)
class RunTarget:
    """Where a submission writes."""

    run: str
    """The RUN collection."""
    output: str
    """The CHAINED output collection."""
    run_exists: bool
    """The RUN is there already (``--extend-run``)."""
    chain_exists: bool
    """The output chain is there already."""
    existing: frozenset = frozenset()
    """(dataset type, data ID key) already in the RUN."""


def _type_or_none(registry: Registry, name: str) -> CollectionType | None:
    try:
        return registry.get_collection_type(name)
    except UnknownCollectionError:
        return None


def default_output_run(rendering: Any, submission: Any) -> bool:
    """True when ``outputRun`` is the BPS default ``{output}/{timestamp}`` (not set by the template)."""
    return submission.output_run == f"{submission.output}/{rendering.timestamp}"


def target_stage(submission: Any, registry: Registry, *, extend_run: bool = False, default_run: bool = True) -> RunTarget:
    """Decide the RUN and check that writing there is allowed.

    Raises
    ------
    SubmissionError
        The RUN exists and ``extend_run`` is off; ``extend_run`` with no chain to extend;
        the output exists but is not CHAINED; the RUN name exists but is not a RUN.
    """
    output, run = submission.output, submission.output_run
    otype = _type_or_none(registry, output)
    if otype is not None and otype != CollectionType.CHAINED:
        raise SubmissionError(MSG_OUTPUT_NOT_CHAIN.format(output=output, type=otype.name))
    if extend_run and default_run:
        if otype is None or not registry.get_chain(output):
            raise SubmissionError(MSG_NOTHING_TO_EXTEND.format(output=output))
        run = registry.get_chain(output)[0]
    rtype = _type_or_none(registry, run)
    if rtype is not None and rtype != CollectionType.RUN:
        raise CollectionTypeError(f"output RUN {run!r} exists as a {rtype.name} collection; choose another outputRun.")
    existing: frozenset = frozenset()
    if rtype is not None:
        refs = registry.query_datasets(None, collections=[run])
        if not extend_run:
            raise SubmissionError(MSG_RUN_EXISTS.format(run=run, n=len(refs)))
        from cpframe.core.model import DataId

        existing = frozenset((r.dataset_type, DataId(r.data_id).key()) for r in refs)
    return RunTarget(run=run, output=output, run_exists=rtype is not None, chain_exists=otype is not None,
                     existing=existing)


def plan_stage(submission: Any, pipeline: Any, repo: Any, target: RunTarget, *, skip_existing: bool = False,
               settings: Any = None) -> Any:
    """Plan into ``target.run`` (:func:`cpframe.execution.graph.make_plan`)."""
    from cpframe.execution.graph import make_plan

    sub = dataclasses.replace(submission, output_run=target.run)
    return make_plan(sub, pipeline, repo, settings=settings, existing=target.existing, skip_existing=skip_existing)


def _open_repo(submission: Any, settings: Any = None) -> Any:
    from cpframe.repository.repo import Repository

    busy = getattr(settings, "busy_timeout_s", None)
    return Repository.open(submission.butler_config, **({"busy_timeout_s": busy} if busy else {}))


@dataclass
class PlanOutcome:
    """Everything up to and including the plan stage."""

    rendering: Any
    submission: Any
    pipeline: Any
    repo: Any
    target: RunTarget
    plan: Any
    render_s: float = 0.0


def plan_template(template: str | os.PathLike, variables: Mapping[str, str] | None = None, *,
                  allow_unset: bool = False, extend_run: bool = False, skip_existing: bool = False,
                  environ: Mapping[str, str] | None = None, settings: Any = None,
                  repo: Any = None, on_rendered: Callable[[Any], None] | None = None) -> PlanOutcome:
    """Render, validate, choose the RUN and plan (what ``cpframe plan`` does; nothing is written).

    ``on_rendered`` is called with the first rendering, before the rest (``cpframe submit`` starts a
    local cluster there, :mod:`cpframe.execution.cluster_early`).

    Raises
    ------
    TemplateError, SubmissionError, PipelineError, RegistryError, SelectionError, PlanningError
    """
    from cpframe.core.progress import progress

    t0 = time.perf_counter()
    # a bar on a terminal (issue 16: planning a large selection takes tens of seconds), silent otherwise
    with progress("plan: render and validate the template", total=4) as bar:
        r = render_stage(template, variables, allow_unset=allow_unset, environ=environ)
        if on_rendered is not None:
            on_rendered(r)
        sub, pipe = validate_stage(r)
        render_s = time.perf_counter() - t0
        bar.update(completed=1, description="plan: open the repository")
        own_repo = repo is None
        repo = repo if repo is not None else _open_repo(sub, settings)
        try:
            bar.update(completed=2, description="plan: choose the output RUN")
            default_run = default_output_run(r, sub)
            target = target_stage(sub, repo.registry, extend_run=extend_run, default_run=default_run)
            if target.run != sub.output_run:
                # --extend-run of a timestamped RUN: render again so submitPath etc. name that RUN
                r = render_stage(template, variables, allow_unset=allow_unset, environ=environ,
                                 overrides={"outputRun": target.run})
                sub, pipe = validate_stage(r)
            bar.update(completed=3, description=f"plan: find raws and calibrations for {len(pipe.tasks)} task(s)")
            plan = plan_stage(sub, pipe, repo, target, skip_existing=skip_existing, settings=settings)
            bar.update(completed=4)
        except BaseException:
            if own_repo:
                repo.close()
            raise
    return PlanOutcome(r, sub, pipe, repo, target, plan, render_s)


# ------------------------------------------------------------------------------------------
# submit
# ------------------------------------------------------------------------------------------
@dataclass
class SubmitResult:
    """What ``cpframe submit`` reports."""

    run: str
    """The RUN written."""
    output: str
    """The CHAINED output."""
    counts: dict[str, int]
    """Registered datasets per dataset type (this submission)."""
    submit_dir: Path
    """Template, rendered submission, settings, versions, plan, logs."""
    log_path: Path
    """The driver's log."""
    timings: dict[str, float]
    """Seconds per stage and in total."""
    plan: Any = None
    """The :class:`cpframe.execution.graph.Plan`."""
    execution: Any = None
    """The :class:`cpframe.execution.execute.ExecutionResult`."""
    dashboard: str = ""
    """Dask dashboard address used."""
    worker_logs: str = ""
    """Where the workers' logs are."""
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        """The lines a person acts on."""
        outs = ", ".join(f"{n} {dt}" for dt, n in self.counts.items()) or "nothing new"
        t = self.timings
        return "\n".join([
            f"RUN {self.run}  (chain {self.output})",
            f"registered: {outs}",
            f"time: {t.get('total_s', 0):.1f} s (plan {t.get('plan_s', 0):.1f} s, cluster start "
            f"{t.get('cluster_start_s', 0):.1f} s, compute {t.get('compute_s', 0):.1f} s)",
            f"submit directory: {self.submit_dir}",
            f"log: {self.log_path}" + (f"; worker logs: {self.worker_logs}" if self.worker_logs else ""),
            f"provenance: cpframe provenance {self.run} --repo {self.extra.get('repo', '')}",
        ] + ([self.extra["verification"]] if self.extra.get("verification") else []))


def _verification_verdict(repo: Any, registered: Any) -> str:
    """``verification: PASS|FAIL ...`` when the run registered a verification summary (issue 16)."""
    import json

    lines = []
    for ref in registered:
        if not ref.dataset_type.startswith("verify"):
            continue
        # cpframe's pipelines name the run summary verify<Type>Summary; the real cp_verify files name it
        # in the run merge's outputStats (verifyLinearizerStats): a json with no dimension but instrument
        summary = ref.dataset_type.endswith("Summary")
        if not summary and not (set(dict(ref.data_id)) <= {"instrument"}
                                and str(repo.get_path(ref)).endswith(".json")):
            continue
        try:
            data = json.loads(Path(repo.get_path(ref)).read_text())
        except (OSError, ValueError) as err:
            lines.append(f"verification: unreadable {ref.dataset_type} ({err})")
            continue
        if not summary and "SUCCESS" not in data:
            continue
        fails = data.get("FAILURES") or {}
        flat = [f"{k} {f}" for k, v in fails.items() for f in v] if isinstance(fails, dict) else list(fails)
        if data.get("SUCCESS"):
            lines.append(f"verification: PASS ({ref.dataset_type})")
        else:
            shown = ", ".join(flat[:5]) + (", ..." if len(flat) > 5 else "")
            lines.append(f"verification: FAIL ({ref.dataset_type}): {len(flat)} failing test(s): {shown}")
    return "\n".join(lines)


def _submit_dir(submission: Any, rendering: Any) -> Path:
    base = Path(submission.submit_path or Path.cwd() / "submit" / submission.output_run)
    if base.exists() and any(base.iterdir()):
        base = base / f"resume-{rendering.timestamp}"
    (base / "logs").mkdir(parents=True, exist_ok=True)
    return base


def _write_submit_dir(d: Path, out: PlanOutcome, settings: Any, site: Any, kind: str) -> None:
    from cpframe.execution.provenance import host_info, software_versions
    from cpframe.execution.templates import dump_rendered

    r = out.rendering
    (d / Path(r.path).name).write_text(r.source)
    (d / "submission.yaml").write_text(dump_rendered(r.config))
    resolved = {"settings": dataclasses.asdict(settings), "cluster_kind": kind,
                "site": dataclasses.asdict(site) if site is not None and dataclasses.is_dataclass(site) else site}
    (d / "settings.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (d / "versions.yaml").write_text(yaml.safe_dump({"versions": software_versions(), "host": host_info()},
                                                    sort_keys=False))
    (d / "plan.txt").write_text(out.plan.summary() + "\n")
    (d / "graph.dot").write_text(out.plan.to_dot())


def _prepare_run(repo: Any, out: PlanOutcome) -> tuple[bool, bool]:
    """Register dataset types, the RUN and the chain; returns (run created, chain created)."""
    from cpframe.execution.graph import dataset_type_defs

    reg = repo.registry
    for dt in dataset_type_defs(out.plan):
        reg.register_dataset_type(dt)
    t = out.target
    created_run = reg.register_collection(t.run, CollectionType.RUN,
                                          doc=f"cpframe submit {Path(out.rendering.path).name}")
    if not t.chain_exists:
        reg.set_chain(t.output, [t.run, *out.submission.in_collections], mode="redefine")
    elif t.run not in reg.get_chain(t.output):
        reg.set_chain(t.output, [t.run], mode="prepend")
    return created_run, not t.chain_exists


def _undo_run(repo: Any, out: PlanOutcome, created_chain: bool, lock_owner: str | None = None) -> None:
    """Remove an empty RUN this submission created (and its chain, if created here too)."""
    repo.remove_runs([out.target.run], force=True, lock_owner=lock_owner)
    if created_chain:
        try:
            repo.registry.remove_collection(out.target.output, remove_from_parents=True)
        except UnknownCollectionError:
            pass


def _record(out: PlanOutcome, res: Any, argv: Sequence[str], timings: dict, submit_dir: Path, status: str,
            repo: Any) -> dict:
    from cpframe.execution.provenance import add_record, host_info, software_versions

    plan = out.plan
    outputs = []
    if res is not None:
        for ref in res.registered:
            outputs.append({"dataset_type": ref.dataset_type, "data_id": str(ref.data_id), "id": ref.id,
                            "inputs": [f"{r.dataset_type} {r.data_id} {r.id} ({r.extra.get('collection', r.run)})"
                                       for r in res.inputs_of.get(ref.id, [])]})
    record = {
        "status": status,
        "token": plan.token,
        "command_line": list(argv),
        "template": {"path": out.rendering.path, "text": out.rendering.source},
        "submission": _jsonable(out.rendering.config),
        "environment": dict(out.rendering.environment),
        "selection": plan.selection,
        "data_ids": [str(d) for d in plan.data_ids],
        "collections": {"inputs": list(plan.collections), "output": plan.output, "run": plan.run,
                        "output_chain": list(repo.registry.get_chain(plan.output))},
        "quanta": plan.counts(),
        "outputs": outputs,
        "missing": [f"{dt} {did}" for dt, did in (res.missing if res is not None else plan.planned_outputs())],
        "failures": {k: v.strip().splitlines()[-1] for k, v in (res.failures.items() if res is not None else [])},
        "where": dict(res.where) if res is not None else {},
        "notes": list(plan.notes),
        "versions": software_versions(),
        "host": host_info(),
        "timings": timings,
        "submit_dir": str(submit_dir),
    }
    add_record(repo.registry, plan.run, record)
    return record


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def _log_to(path: Path) -> logging.Handler:
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.INFO)
    root = logging.getLogger("cpframe")
    root.addHandler(h)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return h


def submit_template(
    template: str | os.PathLike, variables: Mapping[str, str] | None = None, *, allow_unset: bool = False,
    extend_run: bool = False, skip_existing: bool = False, quiet: bool = True, compute_site: str | None = None,
    site: str | os.PathLike | None = None, argv: Sequence[str] | None = None, client: Any = None,
    settings: Any = None, environ: Mapping[str, str] | None = None,
    echo: Callable[[str], None] | None = None, take_over_lock: bool = False,
    on_progress: Callable[[dict], None] | None = None,
) -> SubmitResult:
    """Run a submission end to end (what ``cpframe submit`` does).

    Parameters
    ----------
    template : path or name
        Submission template (``templates/bps_bias.yaml`` or ``bps_bias``).
    variables : mapping, optional
        ``--var NAME=VALUE`` pairs.
    allow_unset : bool
        BPS's leave-as-is substitution.
    extend_run, skip_existing : bool
        Write into an existing RUN; run only the quanta whose outputs are missing.
    quiet : bool
        No progress bar.
    compute_site : {"local", "slurm"}, optional
        Overrides the template's ``computeSite`` and the settings.
    site : path, optional
        Slurm site file (overrides the template's and the settings').
    argv : sequence of str, optional
        Command line recorded in the provenance (default ``sys.argv``).
    client : distributed.Client, optional
        Use this client instead of opening a cluster (it is not closed).
    settings : cpframe.core.config.Settings, optional
    environ : mapping, optional
        Environment for rendering (default ``os.environ``).
    echo : callable, optional
        Receives progress lines (dashboard address, stage results).
    take_over_lock : bool
        Take over the RUN's lock when its owner is gone (killed); a live owner's lock is never taken.

    Returns
    -------
    SubmitResult

    Raises
    ------
    TemplateError, SubmissionError, PipelineError, RegistryError, SelectionError, PlanningError
        Before anything is written.
    RunLockedError
        Another submission writes into the RUN (nothing written).
    ExecutionError
        Quanta failed after their retries, or outputs are staged; raised after the outputs that
        succeeded were registered and the provenance recorded.  ``err.result`` is the SubmitResult.
    InterruptedRunError
        SIGINT/SIGTERM; raised after the registration in progress finished or rolled back and
        the provenance was recorded.
    """
    from cpframe.execution.execute import Interrupted, signals_interrupt

    with signals_interrupt():
        try:
            return _submit(template, variables, allow_unset=allow_unset, extend_run=extend_run,
                           skip_existing=skip_existing, quiet=quiet, compute_site=compute_site, site=site,
                           argv=argv, client=client, settings=settings, environ=environ, echo=echo,
                           take_over_lock=take_over_lock, on_progress=on_progress)
        except Interrupted as exc:  # before the run stage (planning, cluster start): nothing was written
            raise InterruptedRunError(
                f"stopped by {exc.args[0]} before anything was registered; nothing was written. "
                f"Submit again when ready: cpframe submit {template}", exc.signum) from None


def template_compute_site(template: Any) -> str | None:
    """The ``computeSite`` a template file sets at its top level, as written, read before rendering (a peek: None
    when its text has no such line, ``"?"`` when the file cannot be found or read or sets several; a value made by
    a variable comes back unexpanded, so it is not ``"local"``; the rendering decides in the end)."""
    import re

    from cpframe.execution.template_files import find_template  # no jinja2 yet

    try:
        text = find_template(template).read_text()
    except Exception:  # noqa: BLE001 - plan_template reports a missing or unreadable template
        return "?"
    found = {v.strip().strip("'\"") for v in re.findall(r"(?m)^computeSite\s*:([^#\n]*)", text)}
    return None if not found else (found.pop() if len(found) == 1 else "?")


def start_fork_server_if_local(template: Any, compute_site: str | None = None, settings: Any = None) -> None:
    """Start the local workers' fork server now if the run will be local: the flag, else the template's own
    ``computeSite`` line (:func:`template_compute_site`), else the settings' cluster kind (``settings``, or when
    not validated yet a peek at Dask's config: :func:`cpframe.execution.worker_start.settings_cluster_kind_peek`).
    Its imports are the local start's longest path: started first of all (``cpframe submit`` calls this before it
    validates its settings), they overlap all of the driver's own work (issue 14); the early cluster takes the
    server over.  Does nothing more when it is running; never raises."""
    from cpframe.execution.worker_start import settings_cluster_kind_peek, start_fork_server_early

    try:
        kind = compute_site or template_compute_site(template) or (
            settings.cluster_kind if settings is not None else settings_cluster_kind_peek())
    except Exception:  # noqa: BLE001 - the settings' own validation reports a bad value
        return
    if kind == "local" and start_fork_server_early():
        mark("fork server launched")


def _submit(template, variables, *, allow_unset, extend_run, skip_existing, quiet, compute_site, site, argv, client,
            settings, environ, echo, take_over_lock, on_progress=None) -> SubmitResult:
    echo = echo or (lambda _line: None)
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if client is None:
        start_fork_server_if_local(template, compute_site, settings)
    if settings is None:
        from cpframe.core.config import load_settings

        settings = load_settings()
    early: list = []  # a local cluster started while planning (cpframe.execution.cluster_early)

    def on_rendered(r: Any) -> None:
        mark("rendered")
        config = getattr(r, "config", None)
        rendered_site = config.get("computeSite") if isinstance(config, Mapping) else None
        if client is None and not early and (compute_site or rendered_site or settings.cluster_kind) == "local":
            from cpframe.execution.cluster_early import EarlyCluster

            early.append(EarlyCluster(settings))

    try:
        out = plan_template(template, variables, allow_unset=allow_unset, extend_run=extend_run,
                            skip_existing=skip_existing, environ=environ, settings=settings, on_rendered=on_rendered)
        return _submit_planned(template, out, variables, allow_unset=allow_unset, extend_run=extend_run,
                               skip_existing=skip_existing, environ=environ, settings=settings, started=started,
                               t_start=t_start, compute_site=compute_site, site=site, client=client, quiet=quiet,
                               argv=argv, echo=echo, take_over_lock=take_over_lock, on_progress=on_progress,
                               early=early[0] if early else None)
    finally:
        if early:
            early[0].close()  # unless the run took it (then the run closed it)


def _submit_planned(template, out, variables, *, allow_unset, extend_run, skip_existing, environ, settings, started,
                    t_start, compute_site, site, client, quiet, argv, echo, take_over_lock, on_progress, early
                    ) -> SubmitResult:
    from cpframe.execution.execute import register_staged, staged_outputs
    from cpframe.repository.locks import lock_run

    repo = out.repo
    lock = None
    try:
        # one writer per RUN, taken before anything is written (the plan only read)
        command = " ".join(argv if argv is not None else sys.argv)
        lock = lock_run(repo.registry, out.target.run, command, take_over=take_over_lock)
        if not out.target.run_exists and _type_or_none(repo.registry, out.target.run) is not None:
            raise SubmissionError(MSG_RUN_EXISTS.format(  # created by another writer since the plan
                run=out.target.run, n=len(repo.registry.query_datasets(None, collections=[out.target.run]))))
        if out.target.run_exists and staged_outputs(repo, out.target.run):
            refs = register_staged(repo, out.target.run)  # computed earlier, registered now: never recomputed
            echo(f"registered {len(refs)} staged output(s) of an earlier submission into {out.target.run}")
            out.repo = None
            repo.close()
            out = plan_template(template, variables, allow_unset=allow_unset, extend_run=extend_run,
                                skip_existing=skip_existing, environ=environ, settings=settings)
            repo = out.repo
        return _submit_locked(template, out, started, t_start, settings, compute_site, site, client, quiet, argv,
                              echo, lock, on_progress, early)
    finally:
        if lock is not None:
            lock.release()
        if repo is not None:
            repo.close()


def _submit_locked(template, out: PlanOutcome, started, t_start, settings, compute_site, site, client, quiet, argv,
                   echo, lock, on_progress=None, early=None) -> SubmitResult:
    plan, sub = out.plan, out.submission
    timings: dict[str, Any] = {"started": started, "render_s": out.render_s, "plan_s": plan.plan_s}
    kind = compute_site or sub.compute_site or settings.cluster_kind
    site_file = site or sub.site_file or None
    submit_dir = _submit_dir(sub, out.rendering)
    log_path = submit_dir / "logs" / "submit.log"
    handler = _log_to(log_path)
    try:
        return _run_and_record(template, out, settings, kind, site_file, submit_dir, log_path, timings,
                               t_start, client=client, quiet=quiet, argv=argv, echo=echo,
                               lock_owner=lock.owner if lock is not None else None, on_progress=on_progress,
                               early=early)
    finally:
        logging.getLogger("cpframe").removeHandler(handler)
        handler.close()


def _run_and_record(template, out: PlanOutcome, settings, kind, site_file, submit_dir: Path, log_path: Path,
                    timings: dict, t_start: float, *, client, quiet, argv, echo,
                    lock_owner: str | None = None, on_progress=None, early=None) -> SubmitResult:
    from cpframe.execution.execute import execute_plan

    repo, plan, sub = out.repo, out.plan, out.submission
    log.info("plan:\n%s", plan.summary())
    oc = None
    site_obj = None
    t0 = time.perf_counter()
    from cpframe.execution.resources import capacity_requests, check_capacity, quantum_resources, task_requests

    requests = task_requests(sub, out.pipeline)
    mark("planned")
    if client is None and early is not None and kind == early.kind:
        oc = early.take()  # started while planning
    elif client is None:
        from cpframe.execution.cluster import open_cluster

        if early is not None:
            early.close()
        oc = open_cluster(settings, site=site_file, kind=kind, requests=requests)
    mark("workers ready")
    if oc is not None:
        client, site_obj = oc.client, oc.site
    timings["cluster_start_s"] = time.perf_counter() - t0
    _write_submit_dir(submit_dir, out, settings, site_obj, kind)
    dashboard = getattr(client, "dashboard_link", "") or ""
    echo(f"{kind} cluster: dashboard {dashboard}")
    worker_logs = str(site_obj.log_directory) if site_obj is not None and site_obj.log_directory else ""
    retries = sub.number_of_retries if sub.number_of_retries is not None else settings.retries
    res = None
    env_plugin = None
    created_run = created_chain = False
    try:
        # a request no worker (nor a job the site can start) can meet would wait for ever: refuse it now,
        # before the RUN exists
        check_capacity(client, capacity_requests(plan, requests), scalable=oc.job_resources() if oc is not None else None)
        if sub.environment:
            from cpframe.execution.resources import EnvironmentPlugin

            env_plugin = EnvironmentPlugin(dict(sub.environment))
            client.register_plugin(env_plugin, name=env_plugin.name)
        from cpframe.execution.execute import ExecutionResult, registering

        try:
            with registering():  # RUN + chain created whole, even under SIGTERM
                created_run, created_chain = _prepare_run(repo, out)
                # provenance from the start: a kill -9 leaves a "running" record with what was registered
                _record(out, None, argv if argv is not None else sys.argv, timings, submit_dir, "running", repo)
            if on_progress is not None:
                on_progress({"run": plan.run, "output": plan.output, "submit_dir": str(submit_dir),
                             "counts": {"total": len(plan.quanta), "pending": len(plan.quanta), "done": 0,
                                        "failed": 0, "retried": 0}})
            last = [time.monotonic()]

            def progress_record(partial: Any) -> None:  # at most every 10 s, inside the registration guard
                if time.monotonic() - last[0] >= 10.0:
                    last[0] = time.monotonic()
                    _record(out, partial, argv if argv is not None else sys.argv, timings, submit_dir, "running",
                            repo)

            from cpframe.core.progress import progress_enabled

            # a bar only on a terminal, and not with --quiet (issue 16: silent in logs)
            mark("execute")
            res = execute_plan(plan, repo, client, retries=retries, progress=not quiet and progress_enabled(),
                               resources=quantum_resources(plan, requests), requests=requests,
                               clusters=sub.clusters,
                               on_progress=on_progress, on_registered=progress_record)
            if not res.interrupted:  # a cancel from now on comes too late: the run ends with its real outcome
                from cpframe.execution.execute import mark_finished, raise_if_signalled

                raise_if_signalled()  # a signal that landed in a finalizer during the run still stops it
                mark_finished()
        except KeyboardInterrupt as exc:  # a signal outside execute_plan's own handling
            from cpframe.execution.execute import scratch_dir_for

            # interrupted outside execute_plan's own handling: its scratch folder (if made) is removed below
            res = ExecutionResult(run=plan.run, n_quanta=len(plan.quanta), interrupted=True,
                                  signum=getattr(exc, "signum", 2), scratch_dir=str(scratch_dir_for(repo, plan)))
            res.missing = list(plan.planned_outputs())
        timings["compute_s"] = res.compute_s
        timings["register_s"] = res.register_s
        if oc is None or oc.kind == "local":
            _save_worker_logs(client, submit_dir / "logs" / "workers.log")
            worker_logs = worker_logs or str(submit_dir / "logs" / "workers.log")
    finally:
        if env_plugin is not None and oc is None:
            try:  # a shared client (tests, campaigns): put the workers' environment back
                client.unregister_worker_plugin(env_plugin.name)
            except Exception as err:  # noqa: BLE001 - best effort; the run's result matters more
                log.warning("could not remove the environment plugin: %s", err)
        if oc is not None:
            oc.close()
        from cpframe.execution.execute import restore_dask_logs

        restore_dask_logs()  # muted if the run was interrupted (its cluster's errors about cancelled quanta)
        if res is not None and res.scratch_dir:  # tasks cancelled mid-write are stopped now: nothing leaks
            from cpframe.execution.execute import remove_scratch

            remove_scratch(res.scratch_dir)
    empty_failure = (not res.ok and not res.registered and not res.staged
                     and (created_run or not out.target.run_exists)
                     and _type_or_none(repo.registry, plan.run) is not None
                     and not repo.registry.query_datasets(None, collections=[plan.run]))
    timings["total_s"] = time.perf_counter() - t_start
    from cpframe.execution.execute import registering

    with registering():  # the clean-up and the provenance record are not cut by a second signal
        if empty_failure:
            _undo_run(repo, out, created_chain, lock_owner)
            log.error("nothing was registered; RUN %s removed", plan.run)
        else:
            _record(out, res, argv if argv is not None else sys.argv, timings, submit_dir,
                    "complete" if res.ok else ("interrupted" if res.interrupted else "failed"), repo)
    counts = res.counts()
    result = SubmitResult(run=plan.run, output=plan.output, counts=counts, submit_dir=submit_dir, log_path=log_path,
                          timings=timings, plan=plan, execution=res, dashboard=dashboard, worker_logs=worker_logs,
                          extra={"repo": sub.butler_config})
    result.extra["verification"] = _verification_verdict(repo, res.registered)
    (submit_dir / "result.txt").write_text(result.summary() + ("\n" if res.ok else "\n" + res.failure_report() + "\n"))
    if res.interrupted:
        resume = (f"cpframe submit {template} --extend-run --skip-existing" if not empty_failure
                  else f"cpframe submit {template}")
        kept = (f"RUN {plan.run} holds the {len(res.registered)} complete output(s) registered (recorded in its "
                "provenance); nothing half-written" if not empty_failure
                else f"nothing was registered and RUN {plan.run} was not kept")
        err = InterruptedRunError(
            f"stopped by {signal_name(res.signum)}: {kept}. Resume with: {resume}", res.signum or 2)
        err.result = result
        raise err
    if not res.ok:
        if empty_failure:
            what = res.failure_report() + f"\nNothing was registered; RUN {plan.run} was not kept."
            err = ExecutionError(f"{what}\nFix the cause (traceback in {log_path}) and submit again.")
        else:
            err = ExecutionError(MSG_FAILED.format(what=res.failure_report(), run=plan.run, n=len(res.registered),
                                                   log=log_path, template=template))
        err.result = result
        raise err
    log.info("done:\n%s", result.summary())
    return result


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (``signal`` for an unknown number)."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal"


def _save_worker_logs(client: Any, path: Path) -> None:
    try:
        logs = client.get_worker_logs()
    except Exception as err:  # a closed or remote cluster: keep going, logs are a convenience
        path.write_text(f"worker logs not available: {err}\n")
        return
    with path.open("w") as fh:
        for worker, lines in logs.items():
            fh.write(f"== {worker}\n")
            for level, msg in lines:
                fh.write(f"{level} {msg}\n")
