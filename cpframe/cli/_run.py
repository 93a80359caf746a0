"""Commands ``plan``, ``submit`` and ``provenance`` (names as in ``bps``/``pipetask``; docs/running.md).

``cpframe plan`` stops after the plan stage (like ``bps submit`` up to the quantum graph);
``cpframe submit`` runs every stage; ``cpframe provenance`` prints what a RUN was made from.
"""

from __future__ import annotations

import sys

import click

from cpframe.cli import catch_errors, main
from cpframe.cli._submit import allow_unset_option, parse_vars, var_option

__all__ = ["plan_cmd", "submit_cmd", "provenance_cmd"]

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
@click.option("--compute-site", type=click.Choice(["local", "slurm"]), default=None,
              help="Where to run (overrides computeSite in the template and cpframe.execution.cluster.kind).")
@click.option("--site", "site", default=None, metavar="FILE",
              help="Slurm site file (queue, walltime, cores, memory...); default from the template or settings.")
@click.option("--take-over-lock", is_flag=True,
              help="Take over the RUN's lock when the submission holding it is gone (killed); a running one's "
                   "lock is never taken.")
@catch_errors
def submit_cmd(template: str, variables: tuple[str, ...], allow_unset: bool, extend_run: bool, skip_existing: bool,
               quiet: bool, compute_site: str | None, site: str | None, take_over_lock: bool) -> None:
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
    from cpframe.core.config import load_settings
    from cpframe.core.errors import ExecutionError
    from cpframe.execution.submit import submit_template

    settings = load_settings()
    try:
        res = submit_template(template, parse_vars(variables), allow_unset=allow_unset, extend_run=extend_run,
                              skip_existing=skip_existing, quiet=quiet or not settings.progress,
                              compute_site=compute_site, site=site, argv=["cpframe", *sys.argv[1:]],
                              settings=settings, echo=lambda line: click.echo(line, err=True),
                              take_over_lock=take_over_lock)
    except ExecutionError as err:
        result = getattr(err, "result", None)
        if result is not None:
            click.echo(result.summary())
        raise
    click.echo(res.summary())
    click.secho(f"ok: {sum(res.counts.values())} dataset(s) registered in {res.run}.", fg="green", err=True)


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
