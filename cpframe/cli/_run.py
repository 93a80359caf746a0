"""Commands ``plan``, ``submit`` and ``provenance`` (names as in ``bps``/``pipetask``; docs/running.md).

``cpframe plan`` stops after the plan stage (like ``bps submit`` up to the quantum graph);
``cpframe submit`` runs every stage; ``cpframe provenance`` prints what a RUN was made from.
"""

from __future__ import annotations

import sys

import click

from cpframe.cli import catch_errors, main
from cpframe.cli._submit import allow_unset_option, parse_vars, var_option

__all__ = ["cancel_cmd", "plan_cmd", "provenance_cmd", "status_cmd", "submit_cmd"]

extend_run_option = click.option(
    "--extend-run", is_flag=True,
    help="Write into the existing RUN (the explicit outputRun, or the first child of the output chain).")
skip_existing_option = click.option(
    "--skip-existing", is_flag=True,
    help="With --extend-run: run only the quanta whose outputs are not in the RUN yet.")


@main.command("plan")
@click.argument("template")
@var_option
@allow_unset_option
@extend_run_option
@skip_existing_option
@click.option("--dot", "dot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the quantum graph as Graphviz DOT (render with `dot -Tsvg FILE`).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the plan as a static HTML page (summary + table of quanta).")
@catch_errors
def plan_cmd(template: str, variables: tuple[str, ...], allow_unset: bool, extend_run: bool, skip_existing: bool,
             dot_path: str | None, html_path: str | None) -> None:
    """Resolve TEMPLATE's selection and calibrations and print the work it would do.

    Renders and validates the template, finds the raws of the selection (dataQuery) in the
    input collections, expands the pipeline into quanta (ISR per exposure x detector, combine
    per detector, ...) and looks up every calibration each quantum needs, find-first at the
    time of its exposure. Anything missing is listed at once. Nothing runs and nothing is
    written (except the --dot / --html files).
    """
    from pathlib import Path

    from cpframe.execution.submit import plan_template

    out = plan_template(template, parse_vars(variables), allow_unset=allow_unset, extend_run=extend_run,
                        skip_existing=skip_existing)
    try:
        plan = out.plan
        click.echo(plan.summary())
        if dot_path:
            Path(dot_path).write_text(plan.to_dot())
            click.echo(f"graph written to {dot_path} (DOT; `dot -Tsvg {dot_path} -o plan.svg`)")
        if html_path:
            Path(html_path).write_text(plan.to_html())
            click.echo(f"plan written to {html_path}")
        n = len(plan.quanta)
        click.secho(f"ok: {n} quanta planned in {plan.plan_s:.1f} s; nothing was run. "
                    f"Run it with: cpframe submit {template}" + "".join(f" --var {v}" for v in variables),
                    fg="green", err=True)
    finally:
        out.repo.close()


@main.command("submit")
@click.argument("template")
@var_option
@allow_unset_option
@extend_run_option
@skip_existing_option
@click.option("--quiet", is_flag=True, help="No progress bar (for scripts); the summary is still printed.")
@click.option("--compute-site", default=None, metavar="SITE",
              help="Where to run: local, slurm, or a site profile (cluster/<SITE>.yaml or "
                   "~/.config/cpframe/sites/<SITE>.yaml); overrides computeSite and cpframe.execution.cluster.kind.")
@click.option("--site", "site", default=None, metavar="FILE",
              help="Slurm site file (queue, walltime, cores, memory...); default from the template or settings.")
@click.option("--take-over-lock", is_flag=True,
              help="Take over the RUN's lock when the submission holding it is gone (killed); a running one's "
                   "lock is never taken.")
@click.option("--detach", is_flag=True,
              help="Start the submission in the background and print its run id at once "
                   "(cpframe status / cpframe cancel); it survives this shell.")
@click.option("--run-id", "run_id", default=None, hidden=True, help="Internal: the detached run to track.")
@catch_errors
def submit_cmd(template: str, variables: tuple[str, ...], allow_unset: bool, extend_run: bool, skip_existing: bool,
               quiet: bool, compute_site: str | None, site: str | None, take_over_lock: bool, detach: bool,
               run_id: str | None) -> None:
    """Plan TEMPLATE, run it on a Dask cluster and register the outputs into a new RUN.

    The RUN is outputRun (default {output}/{timestamp}) under the CHAINED output collection,
    which lists the new RUN first, then the input collections (as pipetask -o). computeSite
    local starts a LocalCluster; slurm starts workers as Slurm jobs from the site file.
    Failed tasks are retried numberOfRetries times; if some still fail, the RUN keeps the
    complete outputs and the message says how to finish with --extend-run --skip-existing.
    One submission writes into a RUN at a time (a second one is refused, naming the first);
    SIGTERM/Ctrl-C finish or roll back the registration in progress, record what completed and
    exit 143/130 with the command that resumes.
    """
    from cpframe.execution.submit import start_fork_server_if_local, submit_template

    if not detach:
        start_fork_server_if_local(template, compute_site)  # before anything else: the start's longest path

    from cpframe.core.config import load_settings
    from cpframe.core.errors import ExecutionError

    if detach:
        from cpframe.execution.runs import start_detached

        parse_vars(variables)  # a bad --var is reported here, not in the background
        argv = ["submit", template, *(f"--var={v}" for v in variables), "--quiet"]
        argv += [flag for flag, on in (("--allow-unset", allow_unset), ("--extend-run", extend_run),
                                       ("--skip-existing", skip_existing), ("--take-over-lock", take_over_lock))
                 if on]
        argv += [*(["--compute-site", compute_site] if compute_site else []), *(["--site", site] if site else [])]
        rid = start_detached(argv, template=template)
        click.echo(rid)
        click.secho(f"ok: run {rid} started in the background; follow it with `cpframe status {rid}`, "
                    f"stop it with `cpframe cancel {rid}`.", fg="green", err=True)
        return
    tracker = None
    if run_id:
        from cpframe.execution.runs import RunTracker

        tracker = RunTracker(run_id)
        tracker.install_sigterm()
    settings = load_settings()
    try:
        res = submit_template(template, parse_vars(variables), allow_unset=allow_unset, extend_run=extend_run,
                              skip_existing=skip_existing, quiet=quiet or not settings.progress,
                              compute_site=compute_site, site=site, argv=["cpframe", *sys.argv[1:]],
                              settings=settings, echo=lambda line: click.echo(line, err=True),
                              take_over_lock=take_over_lock,
                              on_progress=tracker.progress if tracker else None)
    except ExecutionError as err:
        result = getattr(err, "result", None)
        if result is not None:
            click.echo(result.summary())
        if tracker:
            interrupted = bool(result is not None and result.execution.interrupted)
            tracker.update(state="cancelled" if interrupted else "failed", error=str(err).splitlines()[0])
        raise
    except KeyboardInterrupt:
        if tracker:
            tracker.update(state="cancelled", error="cancelled before any quantum ran; nothing was written")
        raise
    except Exception as err:
        if tracker:
            tracker.update(state="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise
    if tracker:
        tracker.update(state="done", run=res.run)
    click.echo(res.summary())
    click.secho(f"ok: {sum(res.counts.values())} dataset(s) registered in {res.run}.", fg="green", err=True)


@main.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the stored states as JSON.")
@catch_errors
def status_cmd(run_id: str | None, as_json: bool) -> None:
    """Show every detached run (or RUN_ID) with its state and quanta per state, like `bps report`.

    States: starting, running, done, failed, cancelled; lost when the process is gone without
    saying how it ended.
    """
    import json

    from cpframe.execution.runs import effective_state, format_status, list_runs, read_state, runs_dir

    states = [read_state(run_id)] if run_id else list_runs()
    if as_json:
        click.echo(json.dumps([{**s, "state": effective_state(s)} for s in states], indent=1))
        return
    if not states:
        click.echo(f"no runs in {runs_dir()} (start one with cpframe submit --detach).")
        return
    click.echo(format_status(states))
    if run_id:
        s = states[0]
        for key in ("template", "submit_dir", "log", "error"):
            if s.get(key):
                click.echo(f"{key}: {s[key]}")


@main.command("cancel")
@click.argument("run_id")
@click.option("--wait", "wait_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the run to stop.")
@catch_errors
def cancel_cmd(run_id: str, wait_s: float) -> None:
    """Stop detached run RUN_ID cleanly: outputs registered so far stay in its RUN, running quanta are
    cancelled and their scratch files removed (nothing registered at all: the new RUN is removed)."""
    from cpframe.execution.runs import ACTIVE, cancel_run, effective_state, format_status

    state = cancel_run(run_id, wait_s=wait_s)
    click.echo(format_status([state]))
    if effective_state(state) in ACTIVE:
        raise click.ClickException(f"run {run_id} has not stopped after {wait_s:.0f} s; see {state.get('log')}.")
    if effective_state(state) in ("done", "failed"):  # the cancel arrived after the last quantum had finished
        click.secho(f"run {run_id} had finished every quantum before the cancel arrived: it is "
                    f"{effective_state(state)}, as it would have been (nothing was stopped).", fg="yellow", err=True)
        return
    click.secho(f"ok: run {run_id} is {effective_state(state)}.", fg="green", err=True)


@main.command("provenance")
@click.argument("run")
@click.option("--repo", "repo_root", envvar="REPO", required=True, metavar="REPO",
              help="Repository (default: $REPO).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored records as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List every data ID and output (default: the first 20).")
@catch_errors
def provenance_cmd(run: str, repo_root: str, as_json: bool, show_all: bool) -> None:
    """Show how RUN was made: template, rendered submission, environment, selection and data IDs,
    inputs of each output, software versions, host, timings and command line.

    RUN may also be a submission's output chain: its newest RUN (first child) is shown.
    """
    import json

    from cpframe.execution.provenance import format_provenance, load_provenance, resolve_run
    from cpframe.repository.repo import Repository

    with Repository.open(repo_root, repair=False) as repo:
        name = run
        run = resolve_run(repo.registry, name)
        if run != name:
            click.secho(f"{name} is an output chain; showing its newest RUN {run}", fg="yellow", err=True)
        records = load_provenance(repo.registry, run)
    if as_json:
        click.echo(json.dumps(records, indent=1))
    else:
        click.echo(format_provenance(run, records, max_ids=0 if show_all else 20))
    click.secho(f"ok: {len(records)} record(s) for RUN {run}.", fg="green", err=True)
