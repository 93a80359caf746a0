"""Repository commands: create, register-instrument, certify/decertify, chains, queries, removal,
retrieve-artifacts, export-calibs and import.

Names and options follow the butler CLI (``butler certify-calibrations`` ...), so
DMTN-222 scripts translate word for word; docs/registry.md lists the differences.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click

from cpframe.core.model import CollectionType, Timespan, ns_to_iso
from cpframe.repository.chains import split_children as _split
from cpframe.cli import catch_errors, main

__all__ = ["format_table"]

MSG_ABORTED = "Aborted: nothing was changed."
MSG_NOTHING_REMOVED = "No RUN collections were removed."
MSG_NOTHING_REMOVED_COLLECTIONS = "No collections were removed."


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Plain aligned text table with a dashed rule under the headers.

    >>> print(format_table(["a", "bb"], [[1, "x"], [22, "yyy"]]))
    a  bb
    -- ---
    1  x
    22 yyy
    """
    rows = [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [" ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             " ".join("-" * w for w in widths)]
    lines += [" ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _settings():
    from cpframe.core.config import load_settings

    return load_settings()


def _open(repo: str):
    from cpframe.repository.repo import Repository

    r = Repository.open(repo, busy_timeout_s=_settings().busy_timeout_s)
    for line in r.repairs:
        click.secho(f"repaired: {line}", fg="yellow", err=True)
    return r


def _span_text(span: Timespan | None) -> tuple[str, str]:
    if span is None:
        return "", ""
    return ns_to_iso(span.begin_ns) or "-inf", ns_to_iso(span.end_ns) or "+inf"


repo_argument = click.argument("repo", type=click.Path(file_okay=False))
confirm_option = click.option(
    "--confirm/--no-confirm", "--ask/--yes", "confirm", default=True,
    help="Print the plan and ask before changing anything (default); --no-confirm or --yes skips the question.",
)
collections_option = click.option(
    "--collections", multiple=True, metavar="COLLECTION",
    help="Collections to search, in order (repeat or comma-separate; globs allowed without --find-first).",
)
where_option = click.option("--where", default="", help="Selection in the butler where language, e.g. \"instrument='LATISS' and detector=0\".")


@main.command("create")
@repo_argument
@click.option("--db", "db_url", default=None, metavar="URL",
              help="SQLAlchemy URL of an empty database (e.g. postgresql+psycopg://user@host/db); default the setting "
                   "cpframe.repository.db-url, else SQLite in REPO.")
@catch_errors
def create_cmd(repo: str, db_url: str | None) -> None:
    """Create an empty repository in REPO (registry, datastore, default dataset types)."""
    from cpframe.repository.repo import Repository

    settings = _settings()  # --db wins over cpframe.repository.db-url
    with Repository.create(repo, db_url=db_url or settings.db_url or None,
                           busy_timeout_s=settings.busy_timeout_s) as r:
        kind = "PostgreSQL" if r.registry.engine.dialect.name == "postgresql" else "SQLite (WAL)"
        n = len(r.registry.query_dataset_types())
    click.echo(f"Created repository {r.root} ({kind} registry, {n} dataset types).")
    click.echo(f"Next: cpframe register-instrument {repo} INSTRUMENT")


@main.command("register-instrument")
@repo_argument
@click.argument("instruments", nargs=-1, required=True)
@click.option("--scale", type=click.Choice(["full", "mini"]), default="full", show_default=True,
              help="Camera model scale (mini shrinks the data region of each amplifier).")
@catch_errors
def register_instrument_cmd(repo: str, instruments: tuple[str, ...], scale: str) -> None:
    """Load the detectors and filters of INSTRUMENTS (LATISS, LSSTComCam, LSSTCam) into REPO."""
    from cpframe.camera.models import load_camera

    with _open(repo) as r:
        for name in instruments:
            cam = load_camera(name, scale)
            new = r.registry.register_instrument(cam)
            state = "registered" if new else "already registered (identical)"
            click.echo(f"{name}: {state}: {len(cam.detectors)} detectors, {len(cam.filters)} physical filters.")


@main.command("certify-calibrations")
@repo_argument
@click.argument("input_collection")
@click.argument("output_collection")
@click.argument("dataset_type_name")
@click.option("--begin-date", default=None, metavar="DATE",
              help="Start of validity (TAI, YYYY-MM-DD[THH:MM:SS]); at or before 1970-01-01 means unbounded.")
@click.option("--end-date", default=None, metavar="DATE", help="End of validity (TAI, exclusive); default unbounded.")
@click.option("--search-all-inputs", is_flag=True,
              help="If INPUT_COLLECTION is a chain, search all of it (find-first) instead of its first child.")
@catch_errors
def certify_calibrations_cmd(repo, input_collection, output_collection, dataset_type_name, begin_date, end_date,
                             search_all_inputs) -> None:
    """Certify DATASET_TYPE_NAME datasets of INPUT_COLLECTION into CALIBRATION collection OUTPUT_COLLECTION."""
    span = Timespan.from_text(begin_date, end_date)
    with _open(repo) as r:
        refs = r.certify_calibrations(input_collection, output_collection, dataset_type_name, span,
                                      search_all_inputs=search_all_inputs)
    b, e = _span_text(span)
    click.echo(f"Certified {len(refs)} {dataset_type_name} dataset(s) from {input_collection} into "
               f"{output_collection}, valid [{b}, {e}) TAI.")
    ticket = ticket_chain_of(output_collection)
    if ticket:
        click.echo(f"Next: chain it into the ticket collection (templates read it first): "
                   f"cpframe collection-chain {repo} --mode prepend {ticket} {output_collection}")
        click.echo(f"After verification and review, deploy the ticket: "
                   f"cpframe collection-chain {repo} --mode prepend {'/'.join(ticket.split('/')[-3:-1])} {ticket}")
    else:
        click.echo(f"Next: chain it into your ticket collection (DMTN-222: <prefix><instrument>/calib/<ticket>): "
                   f"cpframe collection-chain {repo} --mode prepend <ticket collection> {output_collection}")


def ticket_chain_of(collection: str) -> str | None:
    """The DMTN-222 ticket collection ``[prefix]<instrument>/calib/<TICKET>`` above a collection, if named so.

    >>> ticket_chain_of("LSSTComCam/calib/DM-1/newCalibs/bias.20250207a")
    'LSSTComCam/calib/DM-1'
    >>> ticket_chain_of("u/me/LSSTComCam/calib/DM-1/bias.20250207a"), ticket_chain_of("bias")
    ('u/me/LSSTComCam/calib/DM-1', None)
    """
    parts = collection.split("/")
    if "calib" not in parts:
        return None
    i = parts.index("calib")
    return "/".join(parts[: i + 2]) if 0 < i and len(parts) > i + 2 else None


@main.command("decertify")
@repo_argument
@click.argument("collection")
@click.argument("dataset_type_name")
@click.option("--begin-date", default=None, metavar="DATE", help="Start of the range to remove (TAI); default unbounded.")
@click.option("--end-date", default=None, metavar="DATE", help="End of the range to remove (TAI); default unbounded.")
@click.option("--detector", "detectors", multiple=True, type=int, help="Only these detectors (repeat); default all.")
@click.option("--instrument", default=None, help="Instrument of --detector (needed with --detector).")
@confirm_option
@catch_errors
def decertify_cmd(repo, collection, dataset_type_name, begin_date, end_date, detectors, instrument, confirm) -> None:
    """Remove validity of DATASET_TYPE_NAME in CALIBRATION COLLECTION within a date range.

    Ranges inside the date range are removed, ranges crossing it are trimmed (or split).
    """
    from cpframe.core.errors import UserInputError

    span = Timespan.from_text(begin_date, end_date)
    if detectors and not instrument:
        raise UserInputError("--detector needs --instrument (e.g. --instrument LSSTComCam --detector 4).")
    with _open(repo) as r:
        links = [x for x in r.registry.query_certifications(collection, dataset_type_name)
                 if x.extra["timespan"].overlaps(span)
                 and (not detectors or x.data_id.get("detector") in detectors)]
        b, e = _span_text(span)
        click.echo(f"Decertify {dataset_type_name} in {collection} within [{b}, {e}): {len(links)} validity range(s)")
        for x in links[:50]:
            click.echo(f"  {x.data_id}  [{', '.join(_span_text(x.extra['timespan']))})")
        if not links:
            click.echo("Nothing to decertify.")
            return
        if confirm and not click.confirm("Continue?", default=False):
            click.echo(MSG_ABORTED)
            return
        data_ids = [{"instrument": instrument, "detector": d} for d in detectors] if detectors else None
        n = r.registry.decertify(collection, dataset_type_name, span, data_ids)
    click.echo(f"Changed {n} validity range(s) in {collection}.")


@main.command("collection-chain", context_settings={"ignore_unknown_options": True})  # negative pop indices
@repo_argument
@click.argument("parent")
@click.argument("children", nargs=-1)
@click.option("--mode", type=click.Choice(["redefine", "prepend", "extend", "remove", "pop"]), default="redefine",
              show_default=True, help="How CHILDREN change the chain (pop: CHILDREN are indices, default 0).")
@click.option("--flatten", is_flag=True, help="Replace nested chains among CHILDREN by their leaf collections.")
@click.option("--doc", default="", help="Documentation string for a new chain.")
@catch_errors
def collection_chain_cmd(repo, parent, children, mode, flatten, doc) -> None:
    """Create or edit the CHAINED collection PARENT (CHILDREN may be comma-separated)."""
    from cpframe.core.errors import UserInputError

    kids = _split(children)
    if mode == "redefine" and not kids:
        from cpframe.core.errors import UserInputError

        raise UserInputError(
            f"collection-chain --mode redefine {parent} needs at least one child; an empty chain would make "
            "lookups silently fall through to older calibrations. To delete the chain use "
            f"`cpframe remove-collections {repo} {parent}`."
        )
    indices: list[int] = []
    if mode == "pop":
        try:
            indices = [int(k) for k in kids]
        except ValueError:
            raise UserInputError(f"--mode pop takes indices (e.g. 0 or -1), not {' '.join(kids)}.") from None
        kids = []
    with _open(repo) as r:
        new = r.registry.set_chain(parent, kids, mode=mode, flatten=flatten, pop_indices=indices, doc=doc)
    click.echo(f"{parent} [{mode}] now searches {len(new)} collection(s) in order:")
    for i, c in enumerate(new):
        click.echo(f"  {i}: {c}")


@main.command("query-collections")
@repo_argument
@click.argument("glob", nargs=-1)
@click.option("--collection-type", "types", multiple=True,
              type=click.Choice([t.name for t in CollectionType], case_sensitive=False),
              help="Only collections of this type (repeat).")
@click.option("--chains", type=click.Choice(["table", "tree", "flatten", "no-children"], case_sensitive=False),
              default="table", show_default=True, help="How to show chain children.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@catch_errors
def query_collections_cmd(repo, glob, types, chains, fmt) -> None:
    """List collections matching GLOB (default all), with chain children in search order."""
    chains = chains.lower()
    with _open(repo) as r:
        reg = r.registry
        infos = reg.query_collections(_split(glob) or "*", [CollectionType[t.upper()] for t in types] or None,
                                      flatten_chains=chains == "flatten")
        if fmt == "json":
            click.echo(json.dumps([{"name": i.name, "type": i.type.name, "children": list(i.children), "doc": i.doc}
                                   for i in infos], indent=2))
            return
        rows = []
        for info in infos:
            kids = list(info.children) if chains != "no-children" else []
            if chains == "tree":
                rows.append([info.name, info.type.name])
                _tree(reg, info, rows, "  ", {info.name})
                continue
            rows.append([info.name, info.type.name, kids[0] if kids else ""])
            rows += [["", "", k] for k in kids[1:]]
        headers = ["Name", "Type"] if chains == "tree" else ["Name", "Type", "Children"]
        click.echo(format_table(headers, rows))
    click.echo(f"\n{len(infos)} collection(s).")


def _tree(reg, info, rows, indent, seen) -> None:
    for child in info.children:
        ctype = reg.get_collection_type(child)
        rows.append([indent + child, ctype.name])
        if ctype == CollectionType.CHAINED and child not in seen:
            kid = reg.query_collections(child)[0]
            _tree(reg, kid, rows, indent + "  ", seen | {child})


@main.command("query-dataset-types")
@repo_argument
@catch_errors
def query_dataset_types_cmd(repo) -> None:
    """List the registered dataset types."""
    with _open(repo) as r:
        types = r.registry.query_dataset_types()
    click.echo(format_table(["Name", "Dimensions", "Calibration", "Format"],
                            [[t.name, ",".join(t.dimensions), "yes" if t.is_calibration else "no", t.storage_format]
                             for t in types]))


@main.command("query-datasets")
@repo_argument
@click.argument("dataset_types", nargs=-1, metavar="[DATASET_TYPE]...")
@collections_option
@where_option
@click.option("--find-first", is_flag=True, help="Only the first dataset per data ID in --collections order.")
@click.option("--show-uri", is_flag=True, help="Show the path of each dataset's file.")
@click.option("--limit", type=int, default=0, help="Show at most this many datasets (0 = all).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@catch_errors
def query_datasets_cmd(repo, dataset_types, collections, where, find_first, show_uri, limit, fmt) -> None:
    """List datasets of DATASET_TYPE (default all types; globs allowed) in --collections."""
    with _open(repo) as r:
        refs = r.registry.query_datasets(_split(dataset_types) or None, _split(collections) or "*", where,
                                         find_first=find_first)
        total = len(refs)
        if limit > 0:
            refs = refs[:limit]
        if fmt == "json":
            out = []
            for ref in refs:
                b, e = _span_text(ref.extra.get("timespan"))
                d = {"id": ref.id, "dataset_type": ref.dataset_type, "run": ref.run, "data_id": dict(ref.data_id),
                     "collection": ref.extra.get("collection"), "path": str(r.get_path(ref)) if ref.path else None,
                     "checksum": ref.checksum}
                if b or e:
                    d["valid_from"], d["valid_until"] = b, e
                out.append(d)
            click.echo(json.dumps(out, indent=2))
            return
        by_type: dict[str, list] = {}
        for ref in refs:
            by_type.setdefault(ref.dataset_type, []).append(ref)
        for t, group in by_type.items():
            dims = list(group[0].data_id)
            timed = any("timespan" in x.extra for x in group)
            headers = ["type", "run", "id", *dims] + (["valid_from", "valid_until"] if timed else []) + (
                ["URI"] if show_uri else [])
            rows = [[t, x.run, x.id, *[x.data_id[d] for d in dims]]
                    + (list(_span_text(x.extra.get("timespan"))) if timed else [])
                    + ([str(r.get_path(x))] if show_uri else []) for x in group]
            click.echo(format_table(headers, rows) + "\n")
    shown = f" (showing {len(refs)})" if len(refs) < total else ""
    click.echo(f"{total} dataset(s){shown}.")


@main.command("remove-runs")
@repo_argument
@click.argument("collections", nargs=-1, required=True)
@click.option("--force", is_flag=True,
              help="Also remove RUNs whose datasets are certified (drops the links) or that are chain children.")
@confirm_option
@catch_errors
def remove_runs_cmd(repo, collections, force, confirm) -> None:
    """Remove RUN COLLECTIONS with their datasets and files.

    COLLECTIONS may be globs (quote them: 'LSSTComCam/calib/DM-1/*'), matching RUNs only.
    """
    with _open(repo) as r:
        names = r.expand_collection_globs(_split(collections), CollectionType.RUN)
        if not names:
            click.echo(MSG_NOTHING_REMOVED)
            return
        plan = r.plan_remove_runs(names, force=force)
        click.echo("Will remove:")
        click.echo(plan.describe())
        if confirm and not click.confirm("Continue?", default=False):
            click.echo(MSG_ABORTED)
            return
        r.remove_runs(plan.runs, force=force)
    click.echo(f"Removed {len(plan.runs)} RUN(s) and {sum(plan.datasets.values())} dataset(s).")


@main.command("remove-collections")
@repo_argument
@click.argument("collections", nargs=-1, required=True)
@click.option("--remove-from-parents", is_flag=True, help="Also take the collections out of chains that list them.")
@confirm_option
@catch_errors
def remove_collections_cmd(repo, collections, remove_from_parents, confirm) -> None:
    """Remove CALIBRATION/CHAINED/TAGGED COLLECTIONS (datasets stay in their RUNs).

    COLLECTIONS may be globs (quote them); a glob never selects RUNs (use remove-runs).
    """
    with _open(repo) as r:
        names = r.expand_collection_globs(_split(collections), None)
        if not names:
            click.echo(MSG_NOTHING_REMOVED_COLLECTIONS)
            return
        reg = r.registry
        rows = [[n, reg.get_collection_type(n).name, ", ".join(reg.get_parent_chains(n))] for n in names]
        click.echo("Will remove:\n" + format_table(["Name", "Type", "In chains"], rows))
        if confirm and not click.confirm("Continue?", default=False):
            click.echo(MSG_ABORTED)
            return
        r.remove_collections(names, remove_from_parents=remove_from_parents)
    click.echo(f"Removed {len(names)} collection(s).")


@main.command("retrieve-artifacts")
@repo_argument
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--dataset-type", "dataset_types", multiple=True, help="Dataset types to retrieve (repeat; default all).")
@collections_option
@where_option
@click.option("--find-first", is_flag=True, help="Only the first dataset per data ID in --collections order.")
@click.option("--transfer", type=click.Choice(["copy", "link", "symlink"]), default="copy", show_default=True)
@click.option("--preserve-path/--no-preserve-path", default=True, show_default=True,
              help="Keep the <run>/<datasetType>/ folders under DESTINATION.")
@click.option("--clobber/--no-clobber", default=False, show_default=True, help="Overwrite existing files.")
@catch_errors
def retrieve_artifacts_cmd(repo, destination, dataset_types, collections, where, find_first, transfer,
                           preserve_path, clobber) -> None:
    """Copy the files of matching datasets out of the repository into DESTINATION."""
    with _open(repo) as r:
        paths = r.retrieve_artifacts(destination, _split(dataset_types) or None, _split(collections) or "*", where,
                                     find_first=find_first, transfer=transfer, preserve_path=preserve_path,
                                     clobber=clobber)
    for p in paths[:20]:
        click.echo(f"  {p}")
    if len(paths) > 20:
        click.echo(f"  ... and {len(paths) - 20} more")
    click.echo(f"Retrieved {len(paths)} file(s) into {destination}.")


@main.command("export-calibs")
@repo_argument
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("collections", nargs=-1, required=True)
@click.option("--dataset-type", "dataset_types", multiple=True,
              help="Export only these dataset types (repeat; default every calibration type).")
@click.option("--transfer", type=click.Choice(["copy", "link", "symlink"]), default="copy", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["cpframe", "butler"]), default="cpframe", show_default=True,
              help="cpframe: checksummed, for cpframe repositories; butler: what `butler import` reads "
                   "(docs/butler.md). `cpframe import` reads both.")
@catch_errors
def export_calibs_cmd(repo, directory, collections, dataset_types, transfer, fmt) -> None:
    """Export calibration COLLECTIONS (chains walked to their leaves) into the new DIRECTORY."""
    from cpframe.repository.transfer import _load_export, export_calibs

    with _open(repo) as r:
        path = export_calibs(r, directory, _split(collections), _split(dataset_types) or None, transfer, format=fmt)
    doc = _load_export(path)
    n = sum(len(d["records"]) for d in doc["datasets"])
    click.echo(f"Exported {n} dataset(s) in {len(doc['collections'])} collection(s) to {path} ({fmt} format).")
    if fmt == "butler":
        click.echo(f"Next: butler import BUTLER_REPO {directory} --export-file {path} (or cpframe import NEW_REPO {directory})")
    else:
        click.echo(f"Next: cpframe import NEW_REPO {directory}")


@main.command("import")
@repo_argument
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--export-file", default=None, type=click.Path(dir_okay=False),
              help="Export file (default DIRECTORY/export.yaml).")
@click.option("--transfer", type=click.Choice(["copy", "link", "symlink", "direct", "move"]), default="copy",
              show_default=True)
@click.option("-s", "--skip-dimension", "skip_dimensions", multiple=True,
              type=click.Choice(["instrument", "detector", "physical_filter", "exposure"]),
              help="Do not import records of this dimension element (they must exist already). Repeat.")
@click.option("--allow-missing-checksums", is_flag=True,
              help="Import datasets whose checksum is missing from the export file, unverified "
                   "(default: a missing checksum is an error).")
@catch_errors
def import_cmd(repo, directory, export_file, transfer, skip_dimensions, allow_missing_checksums) -> None:
    """Import an export DIRECTORY into REPO: from `cpframe export-calibs` (either format) or from
    `butler export-calibs` / `butler export` (recognised by its `version:` and `data:` keys).

    Importing again is harmless: datasets already present (same id, same file) are skipped.
    """
    from pathlib import Path

    from cpframe.repository.transfer import _load_export, import_export

    with _open(repo) as r:
        counts = import_export(r, directory, export_file, transfer, skip_dimensions,
                               allow_missing_checksums=allow_missing_checksums)
    present = f" ({counts['skipped']} already present, skipped)" if counts.get("skipped") else ""
    click.echo(f"Imported {counts['datasets']} dataset(s){present}, {counts['collections']} collection(s), "
               f"{counts['links']} validity range(s), {counts['dimension_records']} new dimension record(s).")
    skipped = _load_export(Path(export_file or Path(directory) / "export.yaml")).get("skipped_dataset_types")
    if skipped:
        click.echo("Not imported (storage classes cpframe does not read; docs/butler.md): "
                   + ", ".join(f"{n} ({sc})" for n, sc in sorted(skipped.items())) + ".")
