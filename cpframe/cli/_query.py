"""Selection commands: ``query-data-ids`` and ``query-dimension-records``.

Both follow ``butler query-data-ids`` / ``butler query-dimension-records``: a repository,
what to list, and ``--where`` in the butler selection language (docs/selections.md).
They print a table (or JSON with ``--format json``) and end with a summary; an empty
result says why it may be empty.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import click

from cpframe.core.model import Timespan, ns_to_iso
from cpframe.repository.chains import split_children as _split
from cpframe.cli import catch_errors, main
from cpframe.cli._registry import _open

MSG_NO_DATA_IDS = "No data IDs match."
MSG_NO_RECORDS = "No {element} records match."
MSG_UNKNOWN_INSTRUMENTS = "Instrument(s) {names} are not registered in this repository; registered: {known}."
MSG_NO_INSTRUMENTS = "No instrument is registered yet: run `cpframe register-instrument REPO NAME` first."

_EXPOSURE_COLUMNS = ("instrument", "id", "obs_id", "day_obs", "seq_num", "physical_filter", "band",
                     "observation_type", "observation_reason", "science_program", "exposure_time", "dark_time",
                     "timespan")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Timespan):
        return f"[{ns_to_iso(value.begin_ns) or '-inf'}, {ns_to_iso(value.end_ns) or '+inf'})"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Timespan):
        return {"begin": ns_to_iso(value.begin_ns), "end": ns_to_iso(value.end_ns), "scale": "tai"}
    return value


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table, never truncated: full width when the output is not a terminal."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    cells = [[_cell(v) for v in r] for r in rows]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, h in enumerate(headers):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows if r[i] is not None)
        table.add_column(h, justify="right" if numeric else "left", no_wrap=True)
    for r in cells:
        table.add_row(*r)
    width = sum(max([len(h)] + [len(r[i]) for r in cells]) + 3 for i, h in enumerate(headers)) + 2
    tty = sys.stdout.isatty()
    console = Console(file=sys.stdout, width=None if tty else max(width, 40), highlight=False,
                      color_system="auto" if tty else None)
    console.print(table)


def _explain_empty(registry, where: str) -> list[str]:
    """Hints for an empty result (unknown instruments named in the selection)."""
    from cpframe.repository.query import named_instruments, parse_selection

    known = [r["name"] for r in registry.query_dimension_records("instrument")]
    if not known:
        return [MSG_NO_INSTRUMENTS]
    unknown = [n for n in named_instruments(parse_selection(where)) if n not in known]
    if unknown:
        return [MSG_UNKNOWN_INSTRUMENTS.format(names=", ".join(map(repr, unknown)), known=", ".join(known))]
    return []


def _summary(lines: list[str], fmt: str) -> None:
    # with --format json the summary goes to stderr so stdout stays valid JSON
    for line in lines:
        click.echo(line, err=fmt == "json")


where_option = click.option(
    "--where", default="", metavar="EXPR",
    help="Selection in the butler where language, e.g. \"instrument='LSSTComCam' AND exposure.day_obs=20241110\" "
         "(docs/selections.md).")
limit_option = click.option("--limit", type=int, default=0, show_default=True, help="Show at most this many (0 = all).")
format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="Output format.")


@main.command("query-data-ids")
@click.argument("repo", type=click.Path(file_okay=False))
@click.argument("dimensions", nargs=-1, required=True)
@where_option
@limit_option
@format_option
@catch_errors
def query_data_ids_cmd(repo: str, dimensions: Sequence[str], where: str, limit: int, fmt: str) -> None:
    """List the data IDs over DIMENSIONS (exposure, detector, physical_filter, band) matching --where.

    \b
    Example:
      cpframe query-data-ids REPO exposure detector \\
        --where "instrument='LSSTComCam' AND exposure.observation_type='bias' AND exposure.day_obs=20241110"
    """
    dims = _split(dimensions)
    with _open(repo) as r:
        ids = r.registry.query_data_ids(dims, where=where)
        total = len(ids)
        shown = ids[:limit] if limit > 0 else ids
        if fmt == "json":
            click.echo(json.dumps([dict(d) for d in shown], indent=2))
        elif shown:
            headers = ["instrument"] + [d for d in dict.fromkeys(dims) if d != "instrument"]
            _print_table(headers, [[d[h] for h in headers] for d in shown])
        lines = []
        if total == 0:
            lines = [MSG_NO_DATA_IDS] + _explain_empty(r.registry, where)
    names = ", ".join(["instrument"] + [d for d in dims if d != "instrument"])
    more = f" (showing {len(shown)})" if len(shown) < total else ""
    _summary(lines + [f"{total} data ID(s) over {names}{more}."], fmt)


@main.command("query-dimension-records")
@click.argument("repo", type=click.Path(file_okay=False))
@click.argument("element")
@where_option
@limit_option
@format_option
@catch_errors
def query_dimension_records_cmd(repo: str, element: str, where: str, limit: int, fmt: str) -> None:
    """List the records of ELEMENT (instrument, detector, physical_filter, exposure) matching --where.

    \b
    Example:
      cpframe query-dimension-records REPO exposure \\
        --where "instrument='LSSTComCam' AND exposure.seq_num IN (40..65:5)"
    """
    with _open(repo) as r:
        records = r.registry.query_dimension_records(element, where=where)
        total = len(records)
        shown = records[:limit] if limit > 0 else records
        if fmt == "json":
            click.echo(json.dumps([{k: _json_value(v) for k, v in rec.items()} for rec in shown], indent=2))
        elif shown:
            headers = list(_EXPOSURE_COLUMNS) if element == "exposure" else list(shown[0])
            _print_table(headers, [[rec.get(h) for h in headers] for rec in shown])
        lines = []
        if total == 0:
            lines = [MSG_NO_RECORDS.format(element=element)] + _explain_empty(r.registry, where)
    more = f" (showing {len(shown)})" if len(shown) < total else ""
    _summary(lines + [f"{total} {element} record(s){more}."], fmt)
