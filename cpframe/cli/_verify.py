"""``cpframe report`` and ``cpframe verify-daily`` (verification area)."""

from __future__ import annotations

import click

from . import catch_errors, main


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
    from ..repo import Repository
    from ..report import write_report

    with Repository.open(repo) as r:
        result = write_report(r, list(collections), output, do_overwrite=do_overwrite)
    click.echo(f"report: {result.index}")
    click.echo(f"  {result.n_datasets} datasets, {result.n_images} images "
               f"({result.n_rendered} rendered, {result.n_images - result.n_rendered} reused)")
    for key, verdict in result.verdicts.items():
        word = "PASS" if verdict else ("FAIL" if verdict is False else "no summary")
        line = f"  {key:<8} {word}"
        fails = result.failures.get(key, [])
        if fails:
            line += f"  ({len(fails)} failing: {', '.join(fails[:5])}{', ...' if len(fails) > 5 else ''})"
        click.secho(line, fg="red" if verdict is False else None)
    click.echo(f"open it with: xdg-open {result.index}")
