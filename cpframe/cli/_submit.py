"""Submission commands: ``render`` (the DMTN-222 "check with envsubst" step) and the ``cluster`` group.

``plan``, ``submit`` and ``provenance`` are added here by the planner/executor.
Names follow ``bps``: ``bps submit FILE`` -> ``cpframe submit FILE``; cpframe adds
``render`` because BPS has no way to show the filled-in template (docs/submit.md).
"""

from __future__ import annotations

import click

from cpframe.core.errors import UserInputError
from cpframe.cli import catch_errors, main

__all__ = ["parse_vars", "var_option", "allow_unset_option", "check_pipeline_exists"]

MSG_BAD_VAR = "--var {value!r} is not NAME=VALUE; write e.g. --var RERUN=20250207a."


def parse_vars(values: tuple[str, ...]) -> dict[str, str]:
    """``("A=1", "B=x=y")`` -> ``{"A": "1", "B": "x=y"}``; bad items raise UserInputError.

    >>> parse_vars(("RERUN=20250207a", "SELECTION_BIAS=a=b"))
    {'RERUN': '20250207a', 'SELECTION_BIAS': 'a=b'}
    """
    out: dict[str, str] = {}
    bad = []
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name.strip().isidentifier():
            bad.append(v)
        else:
            out[name.strip()] = value
    if bad:
        raise UserInputError("; ".join(MSG_BAD_VAR.format(value=b) for b in bad))
    return out


#: Shared options (also used by plan/submit).
var_option = click.option(
    "--var", "variables", multiple=True, metavar="NAME=VALUE",
    help="Set an environment variable for the template (repeatable); also overrides a template key "
         "of the same name.")
allow_unset_option = click.option(
    "--allow-unset", is_flag=True,
    help="Leave unset ${VARS} as they are and unknown {keys} empty, as BPS does (default: one error listing them).")


@main.command("render")
@click.argument("template")
@var_option
@allow_unset_option
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True,
              help="Output format of the rendered submission.")
@catch_errors
def render_cmd(template: str, variables: tuple[str, ...], allow_unset: bool, fmt: str) -> None:
    """Print TEMPLATE fully resolved (environment, {keys}, computed values) and check it.

    TEMPLATE is a file or the name of a shipped template (bps_bias, bps_flat_g, ...).
    Nothing runs and nothing is written. Without --allow-unset the result is also
    validated (required keys, types, collection names).
    """
    from cpframe.execution.submission import validate_submission
    from cpframe.execution.templates import dump_rendered, render

    r = render(template, parse_vars(variables), allow_unset=allow_unset)
    sub = None
    pipeline_note = None
    if not allow_unset:
        sub = validate_submission(r.config, r.path)
        pipeline_note = check_pipeline_exists(sub.pipeline_yaml, r.path)
    click.echo(dump_rendered(r.config, fmt), nl=False)
    for note in r.notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    if sub is not None and sub.ignored_keys:
        click.secho(f"note: ignored by cpframe (no meaning for a Dask back end): {', '.join(sub.ignored_keys)}",
                    fg="yellow", err=True)
    if pipeline_note:
        click.secho(f"warning: {pipeline_note}", fg="yellow", err=True)
    if r.unset:
        click.secho(f"left unresolved (--allow-unset): {', '.join(r.unset)}", fg="yellow", err=True)
    if sub is not None:
        click.secho(
            f"ok: {r.path} renders and validates; pipeline {sub.pipeline_yaml}; output RUN {sub.output_run} "
            f"(chain {sub.output}); {len(sub.in_collections)} input collection(s); "
            f"{len(r.environment)} environment variable(s) used.", fg="green", err=True)


def check_pipeline_exists(pipeline_yaml: str, template: str) -> str | None:
    """A missing pipeline file is an error; one for a calibration cpframe does not build yet is a warning.

    Returns
    -------
    str or None
        The warning text, if any.

    Raises
    ------
    SubmissionError
        ``pipelineYaml`` names no file.
    """
    from pathlib import Path

    from cpframe.core.errors import SubmissionError
    from cpframe.execution.lsst_pipeline import split_selection
    from cpframe.execution.pipeline import NOT_BUILT_PIPELINES

    path = Path(split_selection(pipeline_yaml)[0])
    if path.is_file():
        return None
    what = NOT_BUILT_PIPELINES.get(path.stem)
    if what:
        return (f"pipeline {path} does not exist: cpframe does not build {what} yet, so plan and submit will "
                "refuse this template.")
    raise SubmissionError(f"{template}: pipelineYaml {str(path)!r} does not exist. Check CP_PIPE_DIR / "
                          "CP_VERIFY_DIR / CPFRAME_PIPELINES and the file name.")


@main.group("cluster")
def cluster_group() -> None:
    """Dask clusters: print a Slurm job script, or start a cluster and check it works."""


@cluster_group.command("job-script")
@click.option("--site", "site", default=None, metavar="FILE",
              help="Slurm site file (default: cpframe.execution.cluster.site-file, looked up in cluster/).")
@catch_errors
def job_script_cmd(site: str | None) -> None:
    """Print the sbatch script a worker job would run (dry run: starts nothing)."""
    from cpframe.execution.cluster import job_script, load_site
    from cpframe.core.config import load_settings

    settings = load_settings()
    s = load_site(site or settings.site_file)
    click.echo(job_script(s, settings), nl=False)
    lim = s.adapt_limits(settings)
    click.secho(f"site {s.path}: partition {s.queue or '(default)'}, {s.cores} core(s), walltime {s.walltime}; "
                f"adaptive {lim[0]}..{lim[1]} job(s). Nothing was submitted.", fg="green", err=True)


@cluster_group.command("check")
@click.option("--kind", type=click.Choice(["local", "slurm"]), default=None,
              help="Cluster kind (default: cpframe.execution.cluster.kind).")
@click.option("--site", "site", default=None, metavar="FILE", help="Slurm site file.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Slurm jobs to wait for.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="Seconds to wait for the workers.")
@click.option("--dry-run", is_flag=True, help="Only print what would be started (Slurm: the job script).")
@catch_errors
def check_cmd(kind: str | None, site: str | None, jobs: int, timeout_s: float, dry_run: bool) -> None:
    """Start a cluster, run a small computation on it, close it, and report."""
    import os

    from cpframe.execution.cluster import job_script, load_site, open_cluster
    from cpframe.core.config import format_bytes, load_settings
    from cpframe.core.errors import ServiceError

    settings = load_settings()
    if dry_run:
        if (kind or settings.cluster_kind) == "slurm":
            click.echo(job_script(load_site(site or settings.site_file), settings), nl=False)
            click.secho(f"dry run: would submit {jobs} job(s) like this; nothing was submitted.", fg="green",
                        err=True)
        else:
            click.secho(f"dry run: would start a LocalCluster of {settings.n_workers} worker process(es) x "
                        f"{settings.threads_per_worker} thread(s), {format_bytes(settings.worker_memory_bytes)} "
                        "each; nothing was started.", fg="green", err=True)
        return
    with open_cluster(settings, site=site, kind=kind, jobs=jobs) as oc:
        n = settings.n_workers if oc.kind == "local" else jobs * (oc.site.processes if oc.site else 1)
        try:
            oc.client.wait_for_workers(n, timeout=timeout_s)
        except TimeoutError:
            raise ServiceError(f"{n} worker(s) did not connect within {timeout_s:.0f} s; "
                               f"see the job logs in {oc.site.log_directory if oc.site else '(local)'}.") from None
        total = oc.client.submit(sum, range(1001)).result()
        where = oc.client.run(lambda: os.environ.get("SLURM_JOB_ID") or "local")
        click.echo(oc.summary())
        click.echo(f"computed sum(0..1000) = {total} on workers in: {', '.join(sorted(set(where.values())))}")
    click.secho("ok: cluster started, computed and closed; no job left in the queue.", fg="green", err=True)
