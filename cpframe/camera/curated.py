"""Curated calibrations: calibrations that cannot be built from exposures.

They live as text files, reviewable in a diff, under
``cpframe/data/curated/<INSTRUMENT>/``:

* ``curated.yaml`` -- the index: from when the camera geometry (the camera YAML in
  ``cpframe/data/cameras``) is valid, and in which scale the defect files are written;
* ``manual_defects_<DETNAME>_<YYYYMMDDTHHMMSS>.ecsv`` -- known defects of one detector
  (``ecsv-defects`` format, docs/architecture.md), valid from that date until the next
  file of the same detector (the newest is open-ended).

:func:`write_curated_calibrations` writes them into a repository: one RUN per validity
start (``<collection>/<YYYYMMDDTHHMMSS>``), then certifies each into the CALIBRATION
``collection`` with its validity range.  Never into ``<INSTRUMENT>/calib``, which stays a
CHAINED collection (DMTN-222 §"Curated Calibrations").
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from cpframe.core.paths import package_dir
from cpframe.camera.models import Camera, Detector, load_camera
from cpframe.core.errors import (
    CollectionTypeError,
    UnknownCollectionError,
    UserInputError,
    ValidityOverlapError,
)
from cpframe.core.model import CollectionType, DataId, DatasetType, Timespan, ns_to_iso, parse_tai
from cpframe.core.schema import Schema, load_yaml

__all__ = [
    "CuratedCalib",
    "CuratedReport",
    "CAMERA_DATASET_TYPE",
    "MSG_CALIB_IS_CHAINED",
    "curated_dir",
    "list_curated",
    "read_defects",
    "write_defects",
    "scale_defects",
    "manual_defects_at",
    "write_curated_calibrations",
    "source_provenance",
]

#: Camera geometry as a calibration dataset (the camera YAML file itself).
CAMERA_DATASET_TYPE = DatasetType("camera", ("instrument",), True, "yaml")

MSG_CALIB_IS_CHAINED = (
    "refusing to write curated calibrations into {collection!r}: {instrument}/calib must stay a CHAINED "
    "collection of ticketed calibration collections (DMTN-222). Use --collection "
    "{instrument}/calib/<TICKET>/curated, then `cpframe collection-chain REPO --mode prepend "
    "{instrument}/calib {instrument}/calib/<TICKET>/curated`."
)
MSG_NOT_CALIBRATION = (
    "collection {collection!r} exists as a {kind} collection; curated calibrations are certified into a "
    "CALIBRATION collection. Choose another name, e.g. {instrument}/calib/<TICKET>/curated."
)
_FILE_RE = re.compile(r"^manual_defects_(?P<det>[A-Z0-9]+_S\d\d|RXX_S\d\d)_(?P<date>\d{8}T\d{6})\.ecsv$")
_DEFECT_COLUMNS = ("x0", "y0", "width", "height")


@dataclass(frozen=True)
class CuratedCalib:
    """One curated calibration file and its validity range."""

    dataset_type: str
    """``manual_defects`` or ``camera``."""
    instrument: str
    detector: int | None
    """Detector id (None for the camera)."""
    valid_from: str
    """ISO TAI start of validity."""
    valid_until: str | None
    """ISO TAI end of validity (exclusive), None = open-ended."""
    path: Path

    @property
    def timespan(self) -> Timespan:
        return Timespan(parse_tai(self.valid_from), parse_tai(self.valid_until) if self.valid_until else None)

    @property
    def stamp(self) -> str:
        """Validity start as ``YYYYMMDDTHHMMSS`` (RUN and file names)."""
        return re.sub(r"[-:]", "", self.valid_from.split(".")[0])


@dataclass
class CuratedReport:
    """What :func:`write_curated_calibrations` did."""

    collection: str
    runs: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    """``<dataset type> <data ID> valid [from, until)`` lines of new datasets."""
    skipped: list[str] = field(default_factory=list)
    """Same, already present and certified identically."""
    provenance: dict = field(default_factory=dict)
    """:func:`source_provenance` of the curated folder."""

    def summary(self) -> str:
        lines = [
            f"curated calibrations -> CALIBRATION collection {self.collection}",
            f"  written: {len(self.written)}, already there: {len(self.skipped)}",
            f"  RUNs: {', '.join(self.runs) if self.runs else '-'}",
        ]
        if self.provenance:
            p = self.provenance
            commit = p.get("git_commit") or "not a git repository"
            dirty = f", UNCOMMITTED: {', '.join(p['git_dirty'])}" if p.get("git_dirty") else ""
            lines.append(f"  source: {p.get('folder')} @ {commit}{dirty}")
        lines += [f"  + {w}" for w in self.written]
        lines += [f"  = {s}" for s in self.skipped]
        inst = self.collection.split("/")[0]
        lines.append(f"next: cpframe collection-chain REPO --mode prepend {inst}/calib {self.collection}")
        return "\n".join(lines)


def curated_dir(instrument: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of the curated files of ``instrument``: ``ROOT/<instrument>``.

    ``root`` is a folder meant to be a git repository (like ``obs_lsst_data``, docs/lifecycle.md);
    default: the copy inside the installed package.
    """
    load_camera(instrument)  # CameraError for an unknown instrument
    if root is not None:
        d = Path(root) / instrument
        if not d.is_dir():
            raise UserInputError(f"curated folder {d} does not exist; give the folder that holds "
                                 f"{instrument}/curated.yaml (--curated-dir).")
        return d
    return Path(str(package_dir() / "data" / "curated" / instrument))


class _CuratedCamera(Schema):
    valid_from: str
    """From when the camera geometry is valid (TAI)."""


class _CuratedDefects(Schema):
    scale: Literal["full", "mini"] = "full"
    """Scale the defect rectangles are written at."""


class CuratedIndex(Schema):
    """``cpframe/data/curated/<INSTRUMENT>/curated.yaml``."""

    camera: _CuratedCamera | None = None
    manual_defects: _CuratedDefects = _CuratedDefects()


def _index(instrument: str, root: str | os.PathLike | None = None) -> CuratedIndex:
    return _index_at(curated_dir(instrument, root))


def _index_at(folder: Path) -> CuratedIndex:
    p = folder / "curated.yaml"
    if not p.exists():
        return CuratedIndex()
    return load_yaml(p, CuratedIndex, error=UserInputError)


def _iso(text: Any, what: str) -> str:
    return ns_to_iso(parse_tai(str(text), what))


def list_curated(instrument: str, root: str | os.PathLike | None = None) -> list[CuratedCalib]:
    """Every curated calibration of ``instrument`` with its validity range, sorted.

    Raises
    ------
    CameraError
        Unknown instrument.
    UserInputError
        A curated file whose name or metadata is inconsistent (path and reason given).
    """
    camera = load_camera(instrument)
    idx = _index(instrument, root)
    root = curated_dir(instrument, root)
    out: list[CuratedCalib] = []
    cam = idx.camera
    if cam:
        src = Path(str(package_dir() / "data" / "cameras" / f"{instrument}.yaml"))
        out.append(
            CuratedCalib("camera", instrument, None, _iso(cam.valid_from, f"{root / 'curated.yaml'}: camera.valid_from"), None, src)
        )
    by_det: dict[int, list[tuple[str, Path]]] = {}
    problems = []
    for p in sorted(root.glob("manual_defects_*.ecsv")) if root.is_dir() else []:
        m = _FILE_RE.match(p.name)
        if not m:
            problems.append(f"{p}: name should be manual_defects_<DETNAME>_<YYYYMMDDTHHMMSS>.ecsv")
            continue
        try:
            det = camera.detector(m.group("det"))
        except UserInputError as err:
            problems.append(f"{p}: {err}")
            continue
        d = m.group("date")
        iso = f"{d[:4]}-{d[4:6]}-{d[6:8]}T{d[9:11]}:{d[11:13]}:{d[13:15]}"
        by_det.setdefault(det.id, []).append((_iso(iso, str(p)), p))
    if problems:
        raise UserInputError("curated calibration files are inconsistent:\n  - " + "\n  - ".join(problems))
    for det_id, versions in sorted(by_det.items()):
        versions.sort()
        for i, (start, p) in enumerate(versions):
            until = versions[i + 1][0] if i + 1 < len(versions) else None
            out.append(CuratedCalib("manual_defects", instrument, det_id, start, until, p))
    return out


# -- defect files ------------------------------------------------------------------------------


def read_defects(path: str | os.PathLike) -> tuple[list[tuple[int, int, int, int]], dict]:
    """Read an ``ecsv-defects`` file: rectangles ``(x0, y0, width, height)`` and the metadata.

    Raises
    ------
    UserInputError
        Unreadable file or missing columns.
    """
    from astropy.table import Table

    try:
        t = Table.read(str(path), format="ascii.ecsv")
    except Exception as err:  # astropy raises several types for bad ECSV
        raise UserInputError(f"{path}: not a readable ECSV defects file ({err}).") from None
    missing = [c for c in _DEFECT_COLUMNS if c not in t.colnames]
    if missing:
        raise UserInputError(
            f"{path}: defects table lacks column(s) {', '.join(missing)}; it needs "
            f"{', '.join(_DEFECT_COLUMNS)}."
        )
    rects = [(int(r["x0"]), int(r["y0"]), int(r["width"]), int(r["height"])) for r in t]
    return rects, dict(t.meta)


def _kind(rect: tuple[int, int, int, int]) -> str:
    return "bad_column" if rect[2] == 1 and rect[3] > 1 else "dead"


def write_defects(
    path: str | os.PathLike,
    rects: Iterable[tuple[int, int, int, int]],
    instrument: str,
    detector: int,
    calib_date: str,
    **meta: Any,
) -> Path:
    """Write an ``ecsv-defects`` file (columns x0, y0, width, height; meta instrument, detector,
    calib_date, counts, plus ``meta``)."""
    from astropy.table import Table

    rects = [tuple(int(v) for v in r[:4]) for r in rects]
    counts: dict[str, int] = {}
    for r in rects:
        counts[_kind(r)] = counts.get(_kind(r), 0) + 1
    t = Table(rows=rects or None, names=_DEFECT_COLUMNS, dtype=[int] * 4)
    t.meta.update(
        {
            "instrument": instrument,
            "detector": int(detector),
            "calib_date": calib_date,
            "counts": counts,
            **meta,
        }
    )
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    t.write(str(tmp), format="ascii.ecsv", overwrite=True)
    os.replace(tmp, out)
    return out


def _scale_axis(v0: int, n: int, size_from: int, size_to: int, n_blocks: int) -> tuple[int, int]:
    """Map [v0, v0+n) between amp sizes: position within the amp scaled; a small extent (under
    a tenth of the amp) keeps its size in pixels, a long one (a column) scales with the amp."""
    block, off = divmod(v0, size_from)
    a = block * size_to + (off * size_to) // size_from
    if n * 10 < size_from:
        length = n
    else:
        end_block, end_off = divmod(v0 + n - 1, size_from)
        length = end_block * size_to + (end_off * size_to) // size_from - a + 1
    a = min(a, n_blocks * size_to - 1)
    return a, max(1, min(length, n_blocks * size_to - a))


def scale_defects(
    rects: Iterable[tuple[int, int, int, int]], det_from: Detector, det_to: Detector
) -> list[tuple[int, int, int, int]]:
    """Map rectangles between scales (full <-> mini), keeping their place within each amp.

    Small defects keep their size in pixels; columns keep their fraction of the amp height.

    >>> full = load_camera("LSSTComCam").detectors[0]; mini = load_camera("LSSTComCam", "mini").detectors[0]
    >>> scale_defects([(1234, 0, 1, 2000), (2210, 3100, 4, 4)], full, mini)
    [(155, 0, 1, 250), (277, 387, 4, 4)]
    """
    a_f, a_t = det_from.amps[0], det_to.amps[0]
    ny = det_from.shape[0] // a_f.data_rows
    nx = det_from.shape[1] // a_f.data_cols
    out = []
    for x0, y0, w, h in rects:
        x, wx = _scale_axis(x0, w, a_f.data_cols, a_t.data_cols, nx)
        y, hy = _scale_axis(y0, h, a_f.data_rows, a_t.data_rows, ny)
        out.append((x, y, wx, hy))
    return out


def _defects_scale(instrument: str) -> str:
    return _index(instrument).manual_defects.scale


def _defects_for(c: CuratedCalib, camera: Camera) -> list[tuple[int, int, int, int]]:
    rects, meta = read_defects(c.path)
    src_scale = str(meta.get("scale") or _index_at(c.path.parent).manual_defects.scale)
    src = load_camera(c.instrument, src_scale).detector(c.detector)
    return scale_defects(rects, src, camera.detector(c.detector))


def manual_defects_at(
    camera: Camera, date: str | None = None
) -> dict[int, list[tuple[int, int, int, int, str]]]:
    """Curated manual defects valid at ``date`` (ISO TAI; None = newest), at ``camera``'s scale.

    Returns detector id -> ``[(x0, y0, width, height, kind)]`` (kind ``bad_column`` or ``dead``).
    """
    t = parse_tai(date, "date") if date else None
    out: dict[int, list] = {}
    for c in list_curated(camera.name):
        if c.dataset_type != "manual_defects":
            continue
        span = c.timespan
        if t is None:
            if span.end_ns is not None:
                continue
        elif not (span.db_begin <= t < span.db_end):
            continue
        out[c.detector] = [(*r, _kind(r)) for r in _defects_for(c, camera)]
    return out


# -- into a repository ------------------------------------------------------------------------


def _repo_scale(repo: Any, instrument: str) -> str:
    """Scale of the raws already in the repository (CAMSCALE header), default ``full``."""
    try:
        refs = repo.registry.query_datasets("raw", collections="*", where=f"instrument='{instrument}'")
    except Exception:  # no raws, or no selection support: fall back to full
        return "full"
    for ref in refs[:1]:
        from astropy.io import fits

        try:
            return str(fits.getheader(repo.get_path(ref), 0).get("CAMSCALE", "full"))
        except OSError:
            return "full"
    return "full"


def source_provenance(folder: str | os.PathLike, files: Iterable[str | os.PathLike]) -> dict:
    """Where curated files come from: the git commit of their folder and each file's SHA-256.

    ``{"folder", "git_commit" (None outside git), "git_dirty": [files changed since the commit],
    "files": {name: sha256}}``; a file edited but not committed is listed in ``git_dirty``, so
    a certified product traces to a commit or says that it does not.
    """
    import hashlib
    import subprocess

    folder = Path(folder).resolve()
    files = [Path(f).resolve() for f in files]
    out: dict[str, Any] = {"folder": str(folder), "git_commit": None, "git_dirty": [],
                           "files": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}}

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        out["git_commit"] = commit.strip()
        status = git("status", "--porcelain", "--untracked-files=all", "--", *[str(f) for f in files]) or ""
        out["git_dirty"] = sorted(Path(line[3:].strip()).name for line in status.splitlines() if line.strip())
    return out


def write_curated_calibrations(
    repo: Any, instrument: str, collection: str, scale: str | None = None, transfer: str = "copy",
    root: str | os.PathLike | None = None,
) -> CuratedReport:
    """Write the curated calibrations of ``instrument`` into ``repo`` and certify them.

    Parameters
    ----------
    repo : cpframe.repository.repo.Repository
    instrument : str
    collection : str
        CALIBRATION collection to certify into, e.g. ``LSSTComCam/calib/DM-48520/curated``.
        Not ``<INSTRUMENT>/calib``.
    scale : str, optional
        ``full`` or ``mini``: geometry the defect rectangles are mapped to; default the
        ``CAMSCALE`` of the repository's raws (``full`` when there are none).
    root : path, optional
        Folder holding ``<instrument>/curated.yaml`` and the files (a git repository, like
        ``obs_lsst_data``); default the copy inside the package.  Each RUN's provenance
        (``Registry.get_run_info``) records the folder's git commit and every file's SHA-256.

    Returns
    -------
    CuratedReport
        Re-running is safe: datasets already written and certified identically are reported
        as skipped.

    Raises
    ------
    UserInputError
        ``collection`` is ``<INSTRUMENT>/calib``.
    CollectionTypeError
        ``collection`` exists and is not CALIBRATION.
    ValidityOverlapError
        A different calibration of the same data ID is certified over an overlapping range.
    """
    if collection.rstrip("/") == f"{instrument}/calib":
        raise UserInputError(MSG_CALIB_IS_CHAINED.format(collection=collection, instrument=instrument))
    camera = load_camera(instrument, scale or _repo_scale(repo, instrument))
    reg = repo.registry
    try:
        ctype = reg.get_collection_type(collection)
    except UnknownCollectionError:
        ctype = None
    if ctype is not None and ctype != CollectionType.CALIBRATION:
        raise CollectionTypeError(
            MSG_NOT_CALIBRATION.format(collection=collection, kind=ctype.name, instrument=instrument)
        )
    calibs = list_curated(instrument, root)
    if not calibs:
        raise UserInputError(f"{instrument} has no curated calibrations in {curated_dir(instrument, root)}.")
    source = curated_dir(instrument, root)
    prov = source_provenance(source, [c.path for c in calibs if c.dataset_type != "camera"])
    report = CuratedReport(collection, provenance=prov)
    reg.register_instrument(camera)
    reg.register_dataset_type(CAMERA_DATASET_TYPE)
    reg.register_collection(
        collection,
        CollectionType.CALIBRATION,
        doc=f"curated calibrations of {instrument} (cpframe write-curated-calibrations)",
    )
    certified = {
        (r.dataset_type, DataId(r.data_id).key(), r.extra.get("timespan")): r
        for r in reg.query_certifications(collection)
    }
    with tempfile.TemporaryDirectory(prefix="cpframe-curated-") as tmp:
        by_run: dict[str, list[tuple[CuratedCalib, DataId]]] = {}
        for c in calibs:
            data_id = (
                DataId(instrument=instrument)
                if c.detector is None
                else DataId(instrument=instrument, detector=c.detector)
            )
            by_run.setdefault(f"{collection}/{c.stamp}", []).append((c, data_id))
        for run, group in sorted(by_run.items()):
            reg.register_collection(
                run, CollectionType.RUN, doc=f"curated calibrations valid from {group[0][0].valid_from}"
            )
            report.runs.append(run)
            existing = {
                (r.dataset_type, DataId(r.data_id).key()): r
                for r in reg.query_datasets(["camera", "manual_defects"], collections=[run])
            }
            items, todo = [], []
            for c, data_id in group:
                ref = existing.get((c.dataset_type, data_id.key()))
                if ref is None:
                    src = c.path
                    if c.dataset_type == "manual_defects":
                        src = write_defects(
                            Path(tmp) / f"{c.detector}_{c.stamp}.ecsv",
                            _defects_for(c, camera),
                            instrument,
                            c.detector,
                            c.valid_from,
                            detector_name=camera.detector(c.detector).name,
                            scale=camera.scale,
                            source=c.path.name,
                            source_sha256=prov["files"].get(c.path.name, ""),
                            source_commit=prov["git_commit"] or "not in git",
                        )
                    items.append((src, c.dataset_type, data_id))
                    todo.append(c)
                else:
                    todo.append((c, ref))
            new_refs = iter(repo.put_files(items, run, transfer=transfer) if items else [])
            if items:
                names = {c.path.name for c, _ in group if c.dataset_type != "camera"}
                reg.set_run_info(run, {"curated": {**prov, "files": {k: v for k, v in prov["files"].items()
                                                                      if k in names}}})
            for entry in todo:
                c, ref = (entry, next(new_refs)) if isinstance(entry, CuratedCalib) else entry
                span = c.timespan
                line = f"{c.dataset_type} {ref.data_id} valid {span}"
                if (c.dataset_type, DataId(ref.data_id).key(), span) in certified:
                    report.skipped.append(line)
                    continue
                try:
                    reg.certify(collection, [ref], span)
                except ValidityOverlapError as err:
                    raise ValidityOverlapError(
                        f"{line}: {err} Curated calibrations already certified differently in {collection}; "
                        "write into a new collection (new ticket)."
                    ) from err
                report.written.append(line)
    return report
