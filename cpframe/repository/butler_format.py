"""The Rubin butler's export format (``butler export-calibs`` / ``butler import``, format 1.0.2).

cpframe writes it with ``cpframe export-calibs --format butler`` and reads it with
``cpframe import`` (recognised automatically).  docs/butler.md says what maps to what and
what does not cross; the tests run the real ``lsst-daf-butler`` both ways.

File layout (what ``butler export-calibs`` writes)::

    description: ...
    version: 1.0.2
    universe_version: 8
    universe_namespace: daf_butler
    data:
    - {type: dimension, element: instrument|detector|physical_filter|day_obs|group|exposure, records: [...]}
    - {type: collection, collection_type: RUN, name, host, timespan_begin, timespan_end}
    - {type: collection, collection_type: CALIBRATION, name}
    - {type: collection, collection_type: CHAINED, name, children: [...]}      # children first
    - {type: dataset_type, name, dimensions, storage_class, is_calibration}
    - {type: dataset, dataset_type, run, records: [{dataset_id: [!uuid], data_id: [{...}], path, formatter}]}
    - {type: associations, collection, collection_type: CALIBRATION,
       validity_ranges: [{timespan: !lsst.daf.butler.Timespan {begin, end}, dataset_ids: [...]}]}

Times are ``!butler_time/tai/iso 'YYYY-MM-DD HH:MM:SS.nnnnnnnnn'`` (TAI), ``null`` unbounded;
the butler and cpframe both count ns since 1970-01-01 TAI, so the numbers are the same.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from cpframe.core.errors import ExportError
from cpframe.core.model import DatasetRef, Timespan, ns_to_iso, parse_tai

if TYPE_CHECKING:
    from cpframe.repository.repo import Repository

__all__ = [
    "BUTLER_EXPORT_VERSION",
    "STORAGE_CLASSES",
    "FORMATTERS",
    "INSTRUMENT_CLASSES",
    "is_butler_export",
    "load_butler_export",
    "butler_to_cpframe",
    "export_butler",
]

#: The export file's name, as the butler writes it (the same as cpframe.repository.transfer.EXPORT_NAME).
EXPORT_NAME = "export.yaml"

BUTLER_EXPORT_VERSION = "1.0.2"
UNIVERSE_VERSION = 8
UNIVERSE_NAMESPACE = "daf_butler"

#: cpframe storage format -> the butler's storage class.
STORAGE_CLASSES = {
    "fits-masked": "ExposureF",
    "ecsv-defects": "Defects",
    "fits-ptc": "PhotonTransferCurveDataset",
    "fits-raw": "Exposure",
}
_FORMAT_OF = {v: k for k, v in STORAGE_CLASSES.items()}
#: Storage class -> formatter class the Rubin stack (obs_base) uses for it.
FORMATTERS = {
    "ExposureF": "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
    "Exposure": "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
    "Defects": "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter",
    "PhotonTransferCurveDataset": "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter",
}
#: Raw formatters per instrument (obs_lsst).
RAW_FORMATTERS = {
    "LSSTCam": "lsst.obs.lsst.rawFormatter.LsstCamRawFormatter",
    "LSSTComCam": "lsst.obs.lsst.rawFormatter.LsstComCamRawFormatter",
    "LATISS": "lsst.obs.lsst.rawFormatter.LatissRawFormatter",
}
#: Instrument class names (obs_lsst) and their visit systems.
INSTRUMENT_CLASSES = {
    "LSSTCam": "lsst.obs.lsst.LsstCam",
    "LSSTComCam": "lsst.obs.lsst.LsstComCam",
    "LATISS": "lsst.obs.lsst.Latiss",
}
_MAX_EXPOSURE_ID = 7050123199999  # obs_lsst: day_obs up to 2050-12-31, 6 controllers
_VISIT_SYSTEM = 2  # by seq_start/seq_end

#: The butler's dimension record fields (universe 8) that cpframe reads or writes.
BUTLER_FIELDS = {
    "instrument": ("name", "visit_max", "visit_system", "exposure_max", "detector_max", "class_name"),
    "detector": ("instrument", "id", "full_name", "name_in_raft", "raft", "purpose"),
    "physical_filter": ("instrument", "name", "band"),
    "day_obs": ("instrument", "id", "datetime_begin", "datetime_end"),
    "group": ("instrument", "name"),
    "exposure": ("instrument", "id", "day_obs", "group", "physical_filter", "obs_id", "exposure_time",
                 "dark_time", "observation_type", "observation_reason", "seq_num", "seq_start", "seq_end",
                 "target_name", "science_program", "tracking_ra", "tracking_dec", "sky_angle", "azimuth",
                 "zenith_angle", "has_simulated", "can_see_sky", "datetime_begin", "datetime_end"),
}
#: Fields a record of each element must have for cpframe (the others may be absent or null).
_REQUIRED = {
    "instrument": ("name",),
    "detector": ("instrument", "id", "full_name"),
    "physical_filter": ("instrument", "name", "band"),
    "day_obs": ("instrument", "id"),
    "group": ("instrument", "name"),
    "exposure": ("instrument", "id", "day_obs", "physical_filter", "obs_id", "exposure_time", "dark_time",
                 "observation_type", "seq_num", "datetime_begin", "datetime_end"),
}


# -- YAML with the butler's tags --------------------------------------------------------------

class _Tai:
    """A ``!butler_time/tai/iso`` value: ns since 1970 TAI."""

    __slots__ = ("ns",)

    def __init__(self, ns: int | None):
        self.ns = ns


class _ButlerLoader(yaml.SafeLoader):
    """SafeLoader that reads the butler's tags into plain values (no butler import needed)."""


def _construct_uuid(loader: yaml.SafeLoader, node: yaml.Node) -> str | None:
    value = loader.construct_scalar(node)
    return None if value in (None, "") else str(uuid.UUID(str(value)))


def _construct_time(loader: yaml.SafeLoader, node: yaml.Node) -> _Tai:
    value = loader.construct_scalar(node)
    if value in (None, ""):
        return _Tai(None)
    return _Tai(parse_tai(str(value).strip().replace(" ", "T")))


def _construct_timespan(loader: yaml.SafeLoader, node: yaml.Node) -> Timespan | str:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if value == "EMPTY":
            return "EMPTY"
        raise yaml.constructor.ConstructorError(None, None, f"unexpected Timespan value {value!r}", node.start_mark)
    d = loader.construct_mapping(node, deep=True)
    return Timespan(_ns(d.get("begin")), _ns(d.get("end")))


_ButlerLoader.add_constructor("!uuid", _construct_uuid)
_ButlerLoader.add_constructor("!butler_time/tai/iso", _construct_time)
_ButlerLoader.add_constructor("!lsst.daf.butler.Timespan", _construct_timespan)


def _ns(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, _Tai):
        return value.ns
    if isinstance(value, int):
        return value
    return parse_tai(str(value).replace(" ", "T"))


class _ButlerDumper(yaml.SafeDumper):
    """Writes the butler's tags."""


class _Uuid(str):
    pass


class _TimeValue(str):
    pass


class _TimespanValue:
    def __init__(self, span: Timespan):
        self.span = span


_ButlerDumper.add_representer(_Uuid, lambda d, v: d.represent_scalar("!uuid", str(v)))
_ButlerDumper.add_representer(_TimeValue, lambda d, v: d.represent_scalar("!butler_time/tai/iso", str(v)))
_ButlerDumper.add_representer(_TimespanValue, lambda d, v: d.represent_mapping(
    "!lsst.daf.butler.Timespan", {"begin": _time(v.span.begin_ns), "end": _time(v.span.end_ns)}))


def _time(ns: int | None) -> _TimeValue | None:
    """ns TAI -> the butler's ``'YYYY-MM-DD HH:MM:SS.nnnnnnnnn'`` text (None unbounded)."""
    text = ns_to_iso(ns)
    if text is None:
        return None
    date, _, clock = text.partition("T")
    whole, _, frac = clock.partition(".")
    return _TimeValue(f"{date} {whole}.{(frac or '0').ljust(9, '0')[:9]}")


# -- reading -----------------------------------------------------------------------------------

def is_butler_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a butler export file (``version:`` and ``data:``, no cpframe key)."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    lines = {ln.split(":", 1)[0].strip() for ln in head.splitlines() if ln and not ln.startswith((" ", "-", "#"))}
    return "data" in lines and "version" in lines and "cpframe_export" not in lines


def load_butler_export(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a butler export file (tags included).

    Raises
    ------
    ExportError
        Not YAML, an unknown tag, or a version cpframe does not read.
    """
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_ButlerLoader)  # noqa: S506 (a SafeLoader subclass)
    except FileNotFoundError:
        raise ExportError(f"export file {path} does not exist; give it with --export-file.") from None
    except yaml.YAMLError as err:
        raise ExportError(f"export file {path} is not a butler export cpframe can read: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ExportError(f"{path} is not a butler export file (no 'data:' list).")
    version = str(doc.get("version", ""))
    major = version.split(".")[0]
    if major != "1":
        raise ExportError(f"{path}: butler export format version {version!r}; cpframe reads 1.x (1.0.2).")
    return doc


def _check_fields(path: Path, element: str, records: list[dict]) -> None:
    known = set(BUTLER_FIELDS[element]) | {"timespan", "timespan_begin", "timespan_end"}
    problems = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            problems.append(f"{element} record {i} is not a mapping")
            continue
        missing = [k for k in _REQUIRED[element] if rec.get(k) is None
                   and not (k.startswith("datetime_") and rec.get("timespan") is not None)]
        extra = sorted(set(rec) - known)
        key = rec.get("name", rec.get("id", i))
        if missing:
            problems.append(f"{element} record {key!r} is missing field(s) {', '.join(missing)}")
        if extra:
            problems.append(f"{element} record {key!r} has unknown field(s) {', '.join(extra)}")
    if problems:
        raise ExportError(f"export file {path}: " + "; ".join(problems[:10])
                          + ". Fix the file or export it again; nothing was imported.")


def _camera(path: Path, name: str):
    from cpframe.camera.models import load_camera
    from cpframe.core.errors import CameraError

    try:
        return load_camera(name)
    except CameraError:
        raise ExportError(
            f"export file {path}: instrument {name!r} has no cpframe camera model (cpframe knows "
            "LATISS, LSSTComCam, LSSTCam); its detectors' amplifiers and vendors cannot be filled in."
        ) from None


def butler_to_cpframe(doc: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A butler export (parsed) as cpframe's own export document (``cpframe.repository.transfer``).

    What cpframe keeps: instrument/detector/physical_filter/exposure records (``day_obs`` and
    ``group`` records are checked and dropped: cpframe keeps day_obs as an exposure column and
    has no groups), dataset types (``band`` dropped from dimensions: it follows from the
    physical filter), RUN/CALIBRATION/CHAINED collections, datasets and validity ranges.
    Dataset types of storage classes cpframe does not read (``Camera``, crosstalk, linearity,
    brighter-fatter, ...) are left out with their datasets and validity ranges, and listed
    under ``skipped_dataset_types`` (name -> storage class).

    Raises
    ------
    ExportError
        A record missing a field cpframe needs, or with a field the butler does not define
        (each named); an unknown storage class or block type; TAGGED collections.
    """
    path = Path(path)
    dims: dict[str, list[dict]] = {"instrument": [], "detector": [], "physical_filter": [], "exposure": []}
    types: dict[str, dict] = {}
    collections: list[dict] = []
    chains: list[dict] = []
    runs: dict[str, list[dict]] = {}
    associations: list[dict] = []
    problems: list[str] = []
    skipped: dict[str, str] = {}
    skipped_ids: set[str] = set()
    for block in doc["data"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "dimension":
            element = block.get("element")
            records = block.get("records") or []
            if element not in BUTLER_FIELDS:
                problems.append(f"dimension element {element!r} is not one cpframe imports "
                                f"({', '.join(BUTLER_FIELDS)})")
                continue
            _check_fields(path, element, records)
            if element == "instrument":
                for r in records:
                    cam = _camera(path, r["name"])
                    dims["instrument"].append({"name": cam.name, "detector_max": max(cam.detector_ids) + 1,
                                               "amp_names": ",".join(cam.amp_names), "doc": cam.doc or ""})
            elif element == "detector":
                for r in records:
                    cam = _camera(path, r["instrument"])
                    try:
                        det = cam.detector(int(r["id"]))
                    except Exception:
                        problems.append(f"detector {r['instrument']} {r['id']} is not in cpframe's camera model")
                        continue
                    if det.name != r["full_name"]:
                        problems.append(f"detector {r['instrument']} {r['id']} is {r['full_name']!r} in the "
                                        f"export but {det.name!r} in cpframe's camera model")
                    dims["detector"].append({
                        "instrument": r["instrument"], "id": int(r["id"]), "full_name": r["full_name"],
                        "raft": r.get("raft") or det.raft, "name_in_raft": r.get("name_in_raft") or det.name_in_raft,
                        "purpose": r.get("purpose") or det.purpose, "vendor": det.vendor, "serial": det.serial})
            elif element == "physical_filter":
                dims["physical_filter"] += [{"instrument": r["instrument"], "name": r["name"], "band": r["band"]}
                                            for r in records]
            elif element == "exposure":
                for r in records:
                    span = r.get("timespan")
                    begin = _ns(r.get("datetime_begin", r.get("timespan_begin")))
                    end = _ns(r.get("datetime_end", r.get("timespan_end")))
                    if isinstance(span, Timespan):
                        begin, end = span.begin_ns, span.end_ns
                    dims["exposure"].append({
                        "instrument": r["instrument"], "id": int(r["id"]), "obs_id": r["obs_id"],
                        "day_obs": int(r["day_obs"]), "seq_num": int(r["seq_num"]),
                        "physical_filter": r["physical_filter"], "observation_type": r["observation_type"],
                        "observation_reason": r.get("observation_reason"),
                        "science_program": r.get("science_program"),
                        "exposure_time": float(r["exposure_time"]), "dark_time": float(r["dark_time"]),
                        "timespan_begin": begin, "timespan_end": end})
            # day_obs and group: checked above, nothing to keep
        elif kind == "collection":
            ctype = block.get("collection_type")
            name = block.get("name")
            if ctype == "RUN":
                collections.append({"name": name, "type": "RUN"})
            elif ctype == "CALIBRATION":
                collections.append({"name": name, "type": "CALIBRATION"})
            elif ctype == "CHAINED":
                kids = [k if isinstance(k, str) else k[0] for k in block.get("children") or []]
                chains.append({"name": name, "type": "CHAINED", "children": kids})
            else:
                problems.append(f"collection {name!r} of type {ctype!r} (cpframe imports RUN, CALIBRATION, CHAINED)")
        elif kind == "run":  # old form
            collections.append({"name": block.get("name"), "type": "RUN"})
        elif kind == "dataset_type":
            sc = block.get("storage_class")
            if sc not in _FORMAT_OF:
                # afw-only products (Camera, crosstalk, linearizer, BFK, ...): not imported, reported
                skipped[block.get("name")] = sc
                continue
            # cpframe's dimensions; band, day_obs and group are implied (by physical_filter or
            # exposure), and so is physical_filter when exposure is there
            listed = set(block.get("dimensions") or [])
            d = [x for x in ("instrument", "detector", "physical_filter", "exposure") if x in listed]
            if "exposure" in d and "physical_filter" in d:
                d.remove("physical_filter")
            unknown = sorted(listed - {"instrument", "detector", "physical_filter", "exposure", "band",
                                       "day_obs", "group"})
            if unknown:
                problems.append(f"dataset type {block.get('name')!r} has dimension(s) {', '.join(unknown)} "
                                "cpframe does not have")
                continue
            types[block["name"]] = {"name": block["name"], "dimensions": d,
                                    "is_calibration": bool(block.get("is_calibration", False)),
                                    "storage_format": _FORMAT_OF[sc]}
        elif kind == "dataset":
            recs = runs.setdefault(block["run"], [])
            if block.get("dataset_type") in skipped:
                for r in block.get("records") or []:
                    ids = r.get("dataset_id")
                    skipped_ids.update(str(i) for i in (ids if isinstance(ids, list) else [ids]))
                continue
            for r in block.get("records") or []:
                ids = r.get("dataset_id")
                ids = ids if isinstance(ids, list) else [ids]
                data_ids = r.get("data_id")
                data_ids = data_ids if isinstance(data_ids, list) else [data_ids]
                if len(ids) != len(data_ids):
                    problems.append(f"dataset record at {r.get('path')!r}: {len(ids)} ids for {len(data_ids)} data IDs")
                    continue
                for did, data_id in zip(ids, data_ids):
                    if isinstance(did, int):
                        problems.append(f"dataset {did} has an integer id (a pre-UUID export); cpframe needs UUIDs")
                        continue
                    recs.append({"id": str(did), "dataset_type": block["dataset_type"],
                                 "data_id": {k: v for k, v in dict(data_id).items() if k != "band"},
                                 "path": r.get("path"), "format": None})
        elif kind == "associations":
            ctype = block.get("collection_type")
            if ctype != "CALIBRATION":
                problems.append(f"associations of {ctype} collection {block.get('collection')!r} "
                                "(cpframe imports CALIBRATION validity ranges)")
                continue
            links = []
            for vr in block.get("validity_ranges") or []:
                span = vr.get("timespan")
                if span == "EMPTY":
                    continue  # the butler's empty range matches nothing
                if not isinstance(span, Timespan):
                    span = Timespan(_ns(vr.get("begin")), _ns(vr.get("end")))
                for did in vr.get("dataset_ids") or []:
                    if str(did) in skipped_ids:
                        continue
                    links.append({"dataset_id": str(did), "begin_ns": span.begin_ns, "end_ns": span.end_ns})
            associations.append({"collection": block["collection"], "links": links})
        else:
            problems.append(f"block of type {kind!r}")
    # cpframe keeps whole cameras: every detector and filter of the camera model, with the
    # export's records checked against it (and extra filters of the export added)
    full_dets, full_filters = [], []
    given = {(d["instrument"], d["id"]): d for d in dims["detector"]}
    for inst in dims["instrument"]:
        cam = _camera(path, inst["name"])
        full_dets += [given.get((cam.name, d.id)) or {
            "instrument": cam.name, "id": d.id, "full_name": d.name, "raft": d.raft, "name_in_raft": d.name_in_raft,
            "purpose": d.purpose, "vendor": d.vendor, "serial": d.serial} for d in cam.detectors]
        bands = dict(cam.filters)
        theirs = {f["name"]: f["band"] for f in dims["physical_filter"] if f["instrument"] == cam.name}
        for name, band in theirs.items():
            if name in bands and bands[name] != band:
                problems.append(f"physical filter {cam.name} {name} has band {band!r} in the export, "
                                f"{bands[name]!r} in cpframe's camera model")
        full_filters += [{"instrument": cam.name, "name": n, "band": b} for n, b in {**bands, **theirs}.items()]
    if dims["instrument"]:
        dims["detector"], dims["physical_filter"] = full_dets, full_filters
    if problems:
        raise ExportError(f"export file {path}: cannot import " + "; ".join(problems[:10]) + ". Nothing was imported.")
    for recs in runs.values():
        for r in recs:
            t = types.get(r["dataset_type"])
            r["format"] = t["storage_format"] if t else None
    return {
        "cpframe_export": 1,
        "description": str(doc.get("description", "")),
        "dimensions": dims,
        "dataset_types": list(types.values()),
        "collections": collections + chains,
        "datasets": [{"run": run, "records": recs} for run, recs in runs.items() if recs],
        "associations": associations,
        "skipped_dataset_types": skipped,
    }


# -- writing -----------------------------------------------------------------------------------

def _instrument_record(row: dict) -> dict:
    name = row["name"]
    return {"name": name, "visit_max": _MAX_EXPOSURE_ID, "visit_system": _VISIT_SYSTEM,
            "exposure_max": _MAX_EXPOSURE_ID, "detector_max": max(int(row["detector_max"]), 1000 if name != "LATISS" else 1),
            "class_name": INSTRUMENT_CLASSES.get(name, f"cpframe.instruments.{name}")}


def _exposure_records(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(day_obs, group, exposure) records for the butler from cpframe exposure rows."""
    day_obs, groups, exposures = {}, {}, []
    for r in rows:
        inst, day = r["instrument"], int(r["day_obs"])
        # cpframe does not keep GROUPID: the butler's default group is the exposure id
        group = str(r["id"])
        start = parse_tai(f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T12:00:00")
        day_obs[(inst, day)] = {"instrument": inst, "id": day, "datetime_begin": _time(start),
                                "datetime_end": _time(start + 86400 * 10**9)}
        groups[(inst, group)] = {"instrument": inst, "name": group}
        exposures.append({
            "instrument": inst, "id": int(r["id"]), "day_obs": day, "group": group,
            "physical_filter": r["physical_filter"], "obs_id": r["obs_id"],
            "exposure_time": float(r["exposure_time"]), "dark_time": float(r["dark_time"]),
            "observation_type": r["observation_type"], "observation_reason": r.get("observation_reason") or "unknown",
            "seq_num": int(r["seq_num"]), "seq_start": int(r["seq_num"]), "seq_end": int(r["seq_num"]),
            "target_name": "UNKNOWN", "science_program": r.get("science_program") or "unknown",
            "tracking_ra": None, "tracking_dec": None, "sky_angle": None, "azimuth": None, "zenith_angle": None,
            "has_simulated": None, "can_see_sky": None,
            "datetime_begin": _time(int(r["timespan_begin"])), "datetime_end": _time(int(r["timespan_end"])),
        })
    return list(day_obs.values()), list(groups.values()), exposures


def _defects_to_fits(src: Path, target: Path) -> None:
    """cpframe's ECSV defects as a FITS table in the Rubin stack's ``Defects`` layout
    (columns ``x0 y0 width height``, ``OBSTYPE='defects'``)."""
    import numpy as np
    from astropy.table import Table

    try:
        ecsv = Table.read(str(src), format="ascii.ecsv")
        cols = [np.asarray(ecsv[c], dtype=np.int32) for c in ("x0", "y0", "width", "height")]
    except Exception as err:  # astropy raises many types for malformed files
        raise ExportError(f"{src}: not an ecsv-defects table ({err}); cannot write it for the butler.") from None
    table = Table(cols, names=("x0", "y0", "width", "height"))
    for key, card in (("instrument", "INSTRUME"), ("detector", "DETECTOR"), ("detector_name", "DETNAME")):
        if ecsv.meta.get(key) is not None:
            table.meta[card] = ecsv.meta[key]
    table.meta.update({"OBSTYPE": "defects", "CALIBCLS": "lsst.ip.isr.defects.Defects"})
    table.write(target, format="fits")


def export_butler(repo: "Repository", directory: str | os.PathLike, collections: Sequence[str],
                  dataset_types: Sequence[str] | None = None, transfer: str = "copy") -> Path:
    """Write ``DIR/export.yaml`` in the butler's format plus the files (``butler import`` reads it).

    Same walk and checks as ``cpframe.repository.transfer.export_calibs``; the differences are
    documented in docs/butler.md (no checksums in the file; defects stay ECSV files, which the
    Rubin stack's ``Defects`` formatter does not read).

    Raises
    ------
    ExportError
        ``directory`` exists, or nothing to export.
    UnknownCollectionError
    """
    from cpframe.repository.chains import export_target, select_export

    reg = repo.registry
    dest = export_target(directory, transfer)
    sel = select_export(reg, collections, dataset_types)
    chains, types, wanted, refs, runs, calibs = (sel.chains, sel.types, sel.wanted, sel.refs, sel.runs,
                                                 sel.certifications)
    if not refs:
        raise ExportError(
            f"nothing to export from {', '.join(collections)}: no {', '.join(sorted(wanted))} datasets found.")
    bad = sorted({types[r.dataset_type].storage_format for r in refs.values()} - set(STORAGE_CLASSES))
    if bad:
        raise ExportError(f"storage format(s) {', '.join(bad)} have no butler storage class; "
                          "export those dataset types in cpframe's format (--format cpframe).")
    instruments = sorted({str(r.data_id["instrument"]) for r in refs.values()})
    exposures = sorted({int(r.data_id["exposure"]) for r in refs.values() if "exposure" in r.data_id})
    filters_used = {(str(r.data_id["instrument"]), str(r.data_id["physical_filter"]))
                    for r in refs.values() if r.data_id.get("physical_filter")}
    exp_rows = reg.dimension_rows("exposure", instruments, exposures) if exposures else []
    filters_used |= {(r["instrument"], r["physical_filter"]) for r in exp_rows}
    data: list[dict[str, Any]] = []
    data.append({"type": "dimension", "element": "instrument",
                 "records": [_instrument_record(r) for r in reg.dimension_rows("instrument", instruments)]})
    data.append({"type": "dimension", "element": "detector", "records": [
        {k: r[k] for k in BUTLER_FIELDS["detector"]} for r in reg.dimension_rows("detector", instruments)]})
    pf = [{k: r[k] for k in BUTLER_FIELDS["physical_filter"]}
          for r in reg.dimension_rows("physical_filter", instruments) if (r["instrument"], r["name"]) in filters_used]
    if pf:
        data.append({"type": "dimension", "element": "physical_filter", "records": pf})
    if exp_rows:
        day_obs, groups, exps = _exposure_records(exp_rows)
        data += [{"type": "dimension", "element": "day_obs", "records": day_obs},
                 {"type": "dimension", "element": "group", "records": groups},
                 {"type": "dimension", "element": "exposure", "records": exps}]
    for run in runs:
        data.append({"type": "collection", "collection_type": "RUN", "name": run, "host": None,
                     "timespan_begin": None, "timespan_end": None})
    for name, _ in calibs:
        data.append({"type": "collection", "collection_type": "CALIBRATION", "name": name})
    for name, kids in chains:  # _walk returns children before parents
        data.append({"type": "collection", "collection_type": "CHAINED", "name": name, "children": list(kids)})
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        by_key: dict[tuple[str, str], list[DatasetRef]] = {}
        for ref in sorted(refs.values(), key=lambda r: (r.dataset_type, r.run, str(r.data_id))):
            by_key.setdefault((ref.dataset_type, ref.run), []).append(ref)
        declared: set[str] = set()
        for (tname, run), group in by_key.items():
            t = types[tname]
            sc = STORAGE_CLASSES[t.storage_format]
            if tname not in declared:
                dims = list(t.dimensions)
                if "physical_filter" in dims:
                    dims = ["band"] + dims  # the butler lists the implied band
                data.append({"type": "dataset_type", "name": tname, "dimensions": dims,
                             "storage_class": sc, "is_calibration": bool(t.is_calibration)})
                declared.add(tname)
            records = []
            for ref in group:
                src = repo.get_path(ref)
                rel = (PurePosixPath(ref.path) if ref.path and not Path(ref.path).is_absolute()
                       else PurePosixPath(ref.run, ref.dataset_type, src.name))
                if sc == "Defects":
                    rel = rel.with_suffix(".fits")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if sc == "Defects":
                    _defects_to_fits(src, target)  # the stack's Defects formatter reads FITS only
                elif transfer == "copy":
                    shutil.copyfile(src, target)
                elif transfer == "link":
                    os.link(src, target)
                else:
                    os.symlink(src.resolve(), target)
                formatter = (RAW_FORMATTERS.get(str(ref.data_id["instrument"]), FORMATTERS[sc])
                             if sc == "Exposure" else FORMATTERS[sc])
                records.append({"dataset_id": [_Uuid(ref.id)],
                                "data_id": [{k: (int(v) if k in ("detector", "exposure") else v)
                                             for k, v in ref.data_id.items()}],
                                "path": str(rel), "formatter": formatter})
            data.append({"type": "dataset", "dataset_type": tname, "run": run, "records": records})
        for name, links in calibs:
            grouped: dict[tuple, list[str]] = {}
            for span, did in links:
                grouped.setdefault((span.begin_ns, span.end_ns), []).append(did)
            data.append({"type": "associations", "collection": name, "collection_type": "CALIBRATION",
                         "validity_ranges": [
                             {"timespan": _TimespanValue(Timespan(b, e)), "dataset_ids": [_Uuid(i) for i in ids]}
                             for (b, e), ids in grouped.items()]})
        doc = {"description": f"Butler Data Repository Export (cpframe, from {repo.root}: {', '.join(collections)})",
               "version": BUTLER_EXPORT_VERSION, "universe_version": UNIVERSE_VERSION,
               "universe_namespace": UNIVERSE_NAMESPACE, "data": data}
        (tmp / EXPORT_NAME).write_text(yaml.dump(doc, Dumper=_ButlerDumper, sort_keys=False, width=1000))
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest / EXPORT_NAME
