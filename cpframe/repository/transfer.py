"""``export-calibs`` and ``import``: move calibration collections between repositories (spec §7).

Export directory layout::

    DIR/export.yaml
    DIR/<run>/<datasetType>/<file>       one per exported dataset

``export.yaml`` (format version 1) holds, in order: ``dimensions`` (instrument,
detector, physical_filter and any exposure the datasets name), ``dataset_types``,
``collections`` (RUN, CALIBRATION, then CHAINED with their children in order,
children before parents), ``datasets`` per RUN (id, data ID, path relative to
DIR, format, ``sha256:`` checksum) and ``associations`` (per CALIBRATION
collection, dataset ids with validity ranges as integer ns TAI plus ISO text
for people).

cpframe deliberately differs from the butler: paths in an export file must stay
inside DIR (no absolute paths, no ``..``), and every file's checksum is verified
before anything is imported.  An export is written to a temporary sibling
directory and renamed at the end; an import is one transaction plus journaled
files, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from cpframe.core import yamlsafe
from cpframe.core.errors import (
    ChecksumError,
    ConflictingDefinitionError,
    ExportError,
    UnknownCollectionError,
    UserInputError,
)
from cpframe.repository.names import collection_name_problem, dataset_type_name_problem
from cpframe.core.model import CollectionType, DatasetType, Timespan, ns_to_iso
from cpframe.repository.chains import export_target, select_export
from cpframe.repository.datastore import sha256_file

if TYPE_CHECKING:
    from cpframe.repository.repo import Repository

__all__ = ["export_calibs", "import_export", "EXPORT_NAME", "EXPORT_VERSION", "DIMENSION_ELEMENTS"]

EXPORT_NAME = "export.yaml"
EXPORT_VERSION = 1
#: Dimension elements in an export, in insertion order (``-s`` takes these names).
DIMENSION_ELEMENTS = ("instrument", "detector", "physical_filter", "exposure")


def _sha256(path: Path) -> str:
    return sha256_file(path)


def export_calibs(repo: "Repository", directory: str | os.PathLike, collections: Sequence[str],
                  dataset_types: Sequence[str] | None = None, transfer: str = "copy",
                  format: str = "cpframe") -> Path:
    """Write ``DIR/export.yaml`` and the files of the calibrations reachable from ``collections``.

    Parameters
    ----------
    repo : Repository
    directory : path
        Must not exist.
    collections : sequence of str
        CHAINED/CALIBRATION/RUN collections; chains are walked to their leaves.
    dataset_types : sequence of str, optional
        Restrict to these types (default: every calibration type found).
    transfer : str
        ``copy``, ``link`` or ``symlink`` for the files.
    format : str
        ``cpframe`` (this module's format) or ``butler`` (``butler import`` reads it:
        ``cpframe.repository.butler_format``).

    Returns
    -------
    pathlib.Path
        The export file.

    Raises
    ------
    ExportError
        ``directory`` exists, or nothing to export.
    UnknownCollectionError
    """
    if format == "butler":
        from cpframe.repository.butler_format import export_butler

        return export_butler(repo, directory, collections, dataset_types, transfer)
    if format != "cpframe":
        raise UserInputError(f"export format {format!r}: use cpframe or butler.")
    reg = repo.registry
    dest = export_target(directory, transfer)
    sel = select_export(reg, collections, dataset_types)
    chains, types, wanted, refs, runs = sel.chains, sel.types, sel.wanted, sel.refs, sel.runs
    associations: list[dict[str, Any]] = [
        {"collection": name, "links": [
            {"dataset_id": ref_id, "begin_ns": span.begin_ns, "end_ns": span.end_ns,
             "begin_tai": ns_to_iso(span.begin_ns), "end_tai": ns_to_iso(span.end_ns)} for span, ref_id in links]}
        for name, links in sel.certifications]
    if not refs and not associations:
        raise ExportError(
            f"nothing to export from {', '.join(collections)}: no {', '.join(sorted(wanted))} datasets found."
        )
    instruments = sorted({str(r.data_id["instrument"]) for r in refs.values()})
    exposures = sorted({int(r.data_id["exposure"]) for r in refs.values() if "exposure" in r.data_id})
    dims = {el: reg.dimension_rows(el, instruments, exposures) for el in DIMENSION_ELEMENTS}
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        by_run: dict[str, list[dict[str, Any]]] = {r: [] for r in runs}
        for ref in sorted(refs.values(), key=lambda r: (r.run, r.dataset_type, str(r.data_id))):
            src = repo.get_path(ref)
            rel = (PurePosixPath(ref.path) if ref.path and not Path(ref.path).is_absolute()
                   else PurePosixPath(ref.run, ref.dataset_type, src.name))
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if transfer == "copy":
                shutil.copyfile(src, target)
            elif transfer == "link":
                os.link(src, target)
            else:
                os.symlink(src.resolve(), target)
            by_run[ref.run].append({
                "id": ref.id, "dataset_type": ref.dataset_type, "data_id": dict(ref.data_id), "path": str(rel),
                "format": types[ref.dataset_type].storage_format,
                # a file ingested without a checksum gets one now, so import can verify it
                "checksum": ref.checksum or _sha256(src),
            })
        doc = {
            "cpframe_export": EXPORT_VERSION,
            "description": f"calibrations exported from {repo.root} ({', '.join(collections)})",
            "dimensions": dims,
            "dataset_types": [
                {"name": t.name, "dimensions": list(t.dimensions), "is_calibration": t.is_calibration,
                 "storage_format": t.storage_format}
                for t in sorted({types[r.dataset_type] for r in refs.values()}, key=lambda t: t.name)
            ],
            "collections": (
                [{"name": r, "type": "RUN"} for r in runs]
                + [{"name": a["collection"], "type": "CALIBRATION"} for a in associations]
                + [{"name": n, "type": "CHAINED", "children": kids} for n, kids in chains]
            ),
            "datasets": [{"run": r, "records": recs} for r, recs in by_run.items() if recs],
            "associations": associations,
        }
        (tmp / EXPORT_NAME).write_text(yaml.safe_dump(doc, sort_keys=False))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest / EXPORT_NAME


def _load_export(path: Path) -> dict[str, Any]:
    from cpframe.repository.butler_format import butler_to_cpframe, is_butler_export, load_butler_export

    if is_butler_export(path):  # `butler export-calibs` output (or cpframe's --format butler)
        doc = butler_to_cpframe(load_butler_export(path), path)
        doc["source_format"] = "butler"  # the butler's format has no checksums at all
        return doc
    try:
        doc = yamlsafe.load(path.read_text(), str(path))  # bounded alias expansion (issue 11)
    except yamlsafe.YamlBombError as err:
        raise ExportError(str(err)) from None
    except FileNotFoundError:
        raise ExportError(f"export file {path} does not exist; give it with --export-file.") from None
    except yaml.YAMLError as err:
        raise ExportError(f"export file {path} is not valid YAML: {err}") from None
    if not isinstance(doc, dict) or doc.get("cpframe_export") != EXPORT_VERSION:
        raise ExportError(
            f"{path} is not a cpframe export file (format version {EXPORT_VERSION}); "
            "write one with `cpframe export-calibs`."
        )
    return doc


def _safe_rel(directory: Path, text: Any) -> tuple[Path | None, str | None]:
    """Resolve a path of the export file inside ``directory``; (None, reason) when it escapes."""
    if not isinstance(text, str) or not text:
        return None, "is not a path"
    p = PurePosixPath(text)
    if p.is_absolute() or text.startswith("\\") or (len(text) > 1 and text[1] == ":"):
        return None, "is absolute"
    if ".." in p.parts:
        return None, "contains '..'"
    full = (directory / p).resolve()
    if directory.resolve() not in full.parents:
        return None, "resolves outside the export directory (through a symbolic link)"
    return directory / p, None


def _check_names(path: Path, types: Mapping[str, DatasetType], collections: Sequence[tuple[str, CollectionType, list[str]]],
                 records: Sequence[tuple[str, Mapping[str, Any]]], associations: Sequence[Mapping[str, Any]]) -> None:
    """Every name of the export file against the registry's rules, all problems at once (nothing written yet)."""
    bad: list[str] = []
    for name in types:
        problem = dataset_type_name_problem(name)
        if problem:
            bad.append(f"dataset type {name!r} {problem}")
    names = [n for n, _, _ in collections] + [k for _, _, kids in collections for k in kids]
    names += [run for run, _ in records] + [a.get("collection") for a in associations]
    for name in dict.fromkeys(names):
        problem = collection_name_problem(name)
        if problem:
            bad.append(f"collection {name!r} {problem}")
    for _, rec in records:
        problem = dataset_type_name_problem(rec.get("dataset_type"))
        if problem:
            bad.append(f"dataset {rec.get('id')} has dataset type {rec.get('dataset_type')!r} which {problem}")
    if bad:
        bad = list(dict.fromkeys(bad))
        raise ExportError(
            f"export file {path} has {len(bad)} invalid name(s): " + "; ".join(bad[:10])
            + ("; ..." if len(bad) > 10 else "") + ". Nothing was imported."
        )


def import_export(repo: "Repository", directory: str | os.PathLike, export_file: str | os.PathLike | None = None,
                  transfer: str = "copy", skip_dimensions: Sequence[str] = (),
                  allow_missing_checksums: bool = False) -> dict[str, int]:
    """Import an export directory into ``repo``: dimensions, types, collections, files, links, chains.

    Everything is checked first (names, paths inside ``directory``, files present, checksums);
    then the files are journaled and placed and the registry changes commit in one transaction.

    Importing is idempotent: a dataset whose id is already in ``repo`` with the same type, RUN,
    data ID and checksum is skipped (its file is left alone), as are identical validity ranges,
    dimension records and collections; importing an export twice, or into the repository it
    came from, changes nothing.  Existing files are never replaced, so a failed import deletes
    only the files it created.

    Parameters
    ----------
    repo : Repository
    directory : path
    export_file : path, optional
        Default ``directory/export.yaml``.
    transfer : str
        ``copy``, ``link``, ``symlink``, ``direct`` (files stay in ``directory``) or ``move``.
    skip_dimensions : sequence of str
        Dimension elements whose records are not imported (``-s instrument``): they must already exist.
    allow_missing_checksums : bool
        Accept datasets whose ``checksum`` is missing from the export file (their files cannot
        be verified).  Off by default: a missing checksum is an error.

    Returns
    -------
    dict
        Counts: ``datasets`` (new), ``skipped`` (already present), ``collections``, ``links``
        (new), ``dimension_records``.

    Raises
    ------
    ExportError
        Malformed export file, an invalid name, or a path escaping ``directory`` (lists each).
    ChecksumError
        A file's checksum differs from the export file's, or is missing (lists each).
    ConflictingDefinitionError
        A dataset id already exists with another type, RUN, data ID or checksum.
    DatasetConflictError, CollectionTypeError
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise ExportError(f"export directory {directory} does not exist.")
    bad_skip = sorted(set(skip_dimensions) - set(DIMENSION_ELEMENTS))
    if bad_skip:
        raise UserInputError(
            f"-s/--skip-dimension {', '.join(bad_skip)}: not a dimension element; use {', '.join(DIMENSION_ELEMENTS)}."
        )
    path = Path(export_file) if export_file else directory / EXPORT_NAME
    doc = _load_export(path)
    reg = repo.registry
    try:
        types = {t["name"]: DatasetType(t["name"], tuple(t["dimensions"]), bool(t["is_calibration"]),
                                        t["storage_format"]) for t in doc.get("dataset_types") or []}
        collections = [(c["name"], CollectionType[c["type"]], list(c.get("children") or []))
                       for c in doc.get("collections") or []]
        records = [(d["run"], r) for d in doc.get("datasets") or [] for r in d["records"]]
        associations = doc.get("associations") or []
        dims = doc.get("dimensions") or {}
        if not all(isinstance(r, dict) for _, r in records) or not all(isinstance(a, dict) for a in associations):
            raise TypeError("records")
    except (KeyError, TypeError, AttributeError) as err:
        raise ExportError(f"export file {path} is malformed (missing or bad key {err}).") from None
    _check_names(path, types, collections, records, associations)
    escapes, missing, mismatched, unchecked, items, checksums = [], [], [], [], [], {}
    for run, rec in records:
        src, why = _safe_rel(directory, rec.get("path"))
        if src is None:
            escapes.append(f"{rec.get('path')!r} {why}")
            continue
        if not src.is_file():
            missing.append(str(src))
            continue
        if rec.get("dataset_type") not in types:
            raise ExportError(f"export file {path}: dataset {rec.get('id')} has an undeclared type {rec.get('dataset_type')!r}.")
        actual = _sha256(src)
        recorded = rec.get("checksum")
        if not recorded:
            # a cpframe export always carries checksums, so a missing one means the file was edited;
            # the butler's format has none (docs/butler.md): those files are imported as the butler does
            if not allow_missing_checksums and doc.get("source_format") != "butler":
                unchecked.append(str(rec.get("path")))
        elif actual != recorded:
            mismatched.append(f"{rec['path']} (recorded {str(recorded)[:20]}..., file {actual[:20]}...)")
        checksums[str(src)] = actual
        items.append((src, rec["dataset_type"], rec["data_id"], run, rec["id"]))
    if escapes:
        raise ExportError(
            f"export file {path} names {len(escapes)} path(s) outside {directory}: " + "; ".join(escapes[:10])
            + ". Paths must be relative and stay inside the export directory; nothing was imported."
        )
    if missing:
        raise ExportError(f"{len(missing)} exported file(s) are missing: {', '.join(missing[:10])}; nothing was imported.")
    if mismatched:
        raise ChecksumError(
            f"{len(mismatched)} file(s) do not match the checksums in {path.name}: " + "; ".join(mismatched[:10])
            + ". The export was changed or damaged; export again. Nothing was imported."
        )
    if unchecked:
        raise ChecksumError(
            f"{len(unchecked)} dataset(s) in {path.name} have no checksum: " + ", ".join(unchecked[:10])
            + (", ..." if len(unchecked) > 10 else "")
            + ". Their files cannot be verified; export again with `cpframe export-calibs`, or pass "
            "--allow-missing-checksums to import them unverified. Nothing was imported."
        )
    # idempotence: datasets already in this repository (same id) are skipped when identical
    existing = {r.id: r for r in reg.get_datasets_if_present([str(i[4]) for i in items])}
    fresh, skipped, differ = [], 0, []
    for item in items:
        src, type_name, data_id, run, ds_id = item
        old = existing.get(str(ds_id))
        if old is None:
            fresh.append(item)
            continue
        try:
            same = (old.dataset_type == type_name and old.run == run
                    and dict(old.data_id) == dict(reg.normalize_data_id(type_name, data_id))
                    and (old.checksum in (None, checksums[str(src)])))
        except Exception:  # noqa: BLE001 - any difference in the data ID is a conflict, reported below
            same = False
        if same:
            skipped += 1
        else:
            differ.append(f"{ds_id} ({old.dataset_type} {dict(old.data_id)} in RUN {old.run})")
    if differ:
        raise ConflictingDefinitionError(
            f"{len(differ)} dataset id(s) of the export already exist here with another type, data ID, RUN or "
            f"file: {'; '.join(differ[:10])}. Nothing was imported."
        )
    entries = repo._prepare(fresh, transfer, types, checksums)  # normalises (checks) every data ID
    counts = {"datasets": len(entries), "skipped": skipped, "collections": len(collections), "links": 0,
              "dimension_records": 0}

    def body() -> None:
        for el in DIMENSION_ELEMENTS:
            if el not in skip_dimensions and dims.get(el):
                counts["dimension_records"] += reg.insert_dimension_rows(el, dims[el])[0]
        for t in types.values():
            reg.register_dataset_type(t)
        for name, ctype, _ in collections:
            if ctype != CollectionType.CHAINED:
                reg.register_collection(name, ctype)
        reg.insert_datasets([e.ref for e in entries])
        for a in associations:
            links = [(str(link["dataset_id"]), Timespan(link.get("begin_ns"), link.get("end_ns")))
                     for link in a.get("links") or []]
            with contextlib.suppress(UnknownCollectionError):
                have = {(r.id, r.extra["timespan"]) for r in reg.query_certifications(a["collection"])}
                links = [x for x in links if x not in have]  # identical ranges already there: skipped
            counts["links"] += len(links)
            reg.insert_calib_links(a["collection"], links)
        for name, ctype, kids in collections:
            if ctype == CollectionType.CHAINED:
                reg.set_chain(name, kids, mode="redefine", allow_empty=True)

    repo._precheck_conflicts(entries)
    repo._commit(entries, transfer, body)
    return counts
