"""``cpframe report`` and ``cpframe verify-daily`` (verification area)."""

from __future__ import annotations

import click

from cpframe.cli import catch_errors, main
from cpframe.cli._lifecycle import monitor_options, run_monitor


@main.command("report")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("-c", "--collections", "collections", multiple=True, required=True, metavar="COLLECTION",
              help="Collection to search (repeatable, in order): verification collections first, then "
                   "generation collections.")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Directory to write the report into (created if missing).")
@click.option("--do-overwrite", is_flag=True, help="Re-render every image instead of reusing existing ones.")
@catch_errors
def report_command(repo, collections, output, do_overwrite):
    """Write a static HTML report of calibration products and their verification.

    Finds, find-first in the collections given, the products (bias, dark, flat, defects,
    ptc) and the verification datasets (verify<Type>Results/Summary/Stats/IsrExp), and
    writes OUTPUT/index.html: pass/fail per calibration type and test (failures in red),
    focal-plane mosaics of products and residuals, metric plots, provenance, manifest.

    \b
    Example:
      cpframe report REPO -c LSSTComCam/calib/DM-1/demo/verifyBias.20241127a \\
          -c LSSTComCam/calib/DM-1/demo/biasGen.20241111a -o report/
    """
    from cpframe.repository.repo import Repository
    from cpframe.report.html import write_report

    with Repository.open(repo) as r:
        result = write_report(r, list(collections), output, do_overwrite=do_overwrite)
    click.echo(f"report: {result.index}")
    click.echo(f"  {result.n_datasets} datasets, {result.n_images} images "
               f"({result.n_rendered} rendered, {result.n_images - result.n_rendered} reused)")
    for key, verdict in result.verdicts.items():
        word = "PASS" if verdict else ("FAIL" if verdict is False else "NOT VERIFIED")
        line = f"  {key:<8} {word}"
        fails = result.failures.get(key, [])
        if fails:
            line += f"  ({len(fails)} failing: {', '.join(fails[:5])}{', ...' if len(fails) > 5 else ''})"
        if verdict is None:
            line += f"  (verify it: {result.missing[key]}, then add its collection with -c)"
        click.secho(line, fg="red" if verdict is False else ("yellow" if verdict is None else None))
    click.secho(f"overall: {result.overall}", fg={"PASS": "green", "FAIL": "red"}.get(result.overall, "yellow"))
    click.echo(f"open it with: xdg-open {result.index}")


#: Message of the exit-7 error (tests check it).
DAILY_FAILED_MESSAGE = "verification failed on day_obs {day_obs}: {n} failing test(s)"


@main.command("verify-daily")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--instrument", required=True, help="Instrument, e.g. LSSTComCam.")
@click.option("--day-obs", "day_obs", required=True, type=int, help="Night to check, YYYYMMDD.")
@click.option("--collections", "collections", required=True, multiple=True, metavar="CALIB_CHAIN",
              help="Collection(s) holding the current calibrations, in search order (e.g. LSSTComCam/calib); "
                   "repeatable or comma-separated.")
@click.option("--raw-collection", "raw_collections", multiple=True, metavar="COLLECTION",
              help="Where the raws are (default: INSTRUMENT/raw/all).")
@click.option("--history", type=click.Path(dir_okay=False),
              help="ECSV or CSV file the per-amp metrics are appended to (created if missing).")
@monitor_options
@catch_errors
def verify_daily_command(repo, instrument, day_obs, collections, raw_collections, history, trend_dir, metrics_file,
                         notify_command, notify_url, drift_sigma, min_nights):
    """Verify a night's new bias, dark and flat exposures against the current calibrations.

    For each exposure x detector: ISR with the calibrations valid at that time (found in
    CALIB_CHAIN), then the verification tests of its type. Runs serially in this process
    (no cluster). Appends the metrics to --history, prints a summary and exits with 7
    when a test fails (the message names the failing tests), 0 when all pass.

    \b
    Example:
      cpframe verify-daily REPO --instrument LSSTComCam --day-obs 20241126 \\
          --collections LSSTComCam/calib --history daily.ecsv
    """
    from cpframe.core.errors import VerificationFailed
    from cpframe.repository.repo import Repository
    from cpframe.verify.daily import format_daily, verify_daily

    colls = [c for item in collections for c in item.split(",") if c]
    with Repository.open(repo) as r:
        result = verify_daily(r, instrument, day_obs, colls, raw_collections=list(raw_collections) or None,
                              history=history, progress=None)
    if not result.stages:
        click.echo(f"day_obs {day_obs}: no bias, dark or flat exposures with raws for {instrument}; nothing to verify.")
        return
    for line in format_daily(result):
        click.echo(line)
    monitoring = trend_dir or metrics_file or notify_command or notify_url
    if monitoring and not history:
        click.echo("(--trend/--metrics/--notify-* need --history: nothing to compare the night with)")
    elif monitoring:  # drift alarms, trends, metrics, notification (docs/lifecycle.md)
        run_monitor(history, instrument=instrument, day_obs=day_obs, trend_dir=trend_dir, metrics_file=metrics_file,
                    notify_command=notify_command, notify_url=notify_url, drift_sigma=drift_sigma,
                    min_nights=min_nights)
    if result.failures:
        shown = ", ".join(result.failures[:10]) + (", ..." if len(result.failures) > 10 else "")
        where = f"; every metric is in {history}" if history else ""
        raise VerificationFailed(DAILY_FAILED_MESSAGE.format(day_obs=day_obs, n=len(result.failures)) + f": {shown}{where}.")
    click.echo("all tests pass.")
