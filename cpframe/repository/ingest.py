"""Raw ingest: read raw headers (in parallel), record exposures, register ``raw`` datasets.

Steps of :func:`ingest_raws`:

1. find the files (directories are searched for ``*.fits``);
2. read **only the primary header** of each file (a process pool for large batches),
   repair and translate it with ``cpframe.camera.translators`` (astro_metadata_translator's
   ``ObservationInfo``; the real obs_lsst translators when importable): instrument, detector
   from ``RAFTBAY``/``CCDSLOT``, exposure id from ``DAYOBS``/``SEQNUM``/``CONTRLLR``, type,
   reason, program, physical filter, exposure/dark time, TAI timespan; check the instrument,
   detector and filter against cpframe's camera model, and the file size against every
   amplifier segment (a truncated file is caught without reading its data);
3. build one exposure record per exposure (files of one exposure must agree);
4. register the instrument, insert the exposure records, create the RUN
   (default ``<INSTRUMENT>/raw/all``);
5. skip files whose data ID is already in the RUN (re-ingest is reported, not duplicated),
   and register the rest with ``Repository.ingest_files`` (``copy``, ``link``, ``symlink``,
   ``direct`` or ``move``).

A bad file never stops the batch: it is reported with its path and the reason.
"""

from __future__ import annotations

import filecmp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cpframe.camera.models import SCALES, Detector, load_camera
from cpframe.camera.simulate import fast_tai_ns
from cpframe.core.errors import ConflictingDefinitionError, CpframeError, IngestError, UserInputError
from cpframe.core.model import CollectionType, DataId, Timespan
from cpframe.repository.base import Registry

__all__ = [
    "RawInfo",
    "IngestReport",
    "REQUIRED_KEYS",
    "find_raw_files",
    "read_raw_header",
    "exposure_record",
    "read_raw_headers",
    "exposure_records",
    "ingest_raws",
    "fast_tai_ns",
]

#: ObservationInfo properties a raw must yield (``cpframe.camera.translators``); kept under
#: this name for readers of the old fixed-key list.
REQUIRED_KEYS = ("instrument", "detector_num", "exposure_id", "observation_id", "observing_day",
                 "observation_counter", "observation_type", "physical_filter", "exposure_time",
                 "dark_time", "datetime_begin", "datetime_end")
_BATCH = 2000  # datasets registered per ingest_files call
_PARALLEL_FROM = 256  # below this many files, headers are read in this process

MSG_ALREADY = "already ingested: {data_id} is in RUN {run}"
MSG_OTHER_FILE = (
    "a different file with data ID {data_id} is already in RUN {run} ({existing}); "
    "remove that RUN's dataset first (cpframe remove-runs) or ingest into another --run"
)


@dataclass(frozen=True)
class RawInfo:
    """What ingest needs from one raw file."""

    path: str
    instrument: str
    detector: int
    exposure: int
    scale: str
    """``CAMSCALE`` (``full`` or ``mini``)."""
    record: dict
    """Exposure record for ``Registry.insert_exposures``."""
    size: int
    """File size, bytes."""

    @property
    def data_id(self) -> DataId:
        return DataId(instrument=self.instrument, detector=self.detector, exposure=self.exposure)


@dataclass
class IngestReport:
    """What :func:`ingest_raws` did, file by file."""

    runs: list[str] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason), e.g. already ingested."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason): unreadable, truncated, header incomplete, conflicting."""
    exposures_new: int = 0
    exposures_known: int = 0

    def summary(self, max_lines: int = 50) -> str:
        """Text a person can act on (what went where, what to fix)."""
        lines = [
            f"ingested {len(self.ingested)} raw file(s) into RUN {', '.join(self.runs) or '-'}; "
            f"exposures: {self.exposures_new} new, {self.exposures_known} already known",
            f"skipped {len(self.skipped)} (already ingested), failed {len(self.failed)}",
        ]
        for title, rows in (("failed", self.failed), ("skipped", self.skipped)):
            limit = max_lines if title == "failed" else min(max_lines, 5)
            for path, reason in rows[:limit]:
                lines.append(f"  {title}: {path}: {reason}")
            if len(rows) > limit:
                lines.append(f"  ... and {len(rows) - limit} more {title}")
        if self.failed:
            lines.append(
                "fix or remove the failed files and run the same command again "
                "(files already ingested are skipped)."
            )
        return "\n".join(lines)


# -- headers -----------------------------------------------------------------------------------


def find_raw_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named plus ``*.fits`` under directories (sorted), and (path, reason) of missing paths."""
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.fits") if not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            missing.append((str(p), "no such file or directory"))
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique, missing


def _expected_min_size(header_bytes: int, det: Detector) -> int:
    total = header_bytes
    for a in det.amps:
        nrow, ncol = a.raw_shape
        data = nrow * ncol * 4
        total += 2880 + data + (-data % 2880)
    return total


def exposure_record(info: Any, camera_name: str) -> dict:
    """Exposure record (``Registry.insert_exposures``) from an ``ObservationInfo``.

    Besides cpframe's columns it has the exposure's ``group`` (``GROUPID``), which the registry
    does not keep.
    """
    from cpframe.camera.translators import time_to_ns

    begin, end = time_to_ns(info.datetime_begin), time_to_ns(info.datetime_end)
    return {
        "instrument": camera_name,
        "id": int(info.exposure_id),
        "obs_id": str(info.observation_id),
        "day_obs": int(info.observing_day),
        "seq_num": int(info.observation_counter),
        "physical_filter": str(info.physical_filter),
        "observation_type": str(info.observation_type),
        "observation_reason": None if info.observation_reason is None else str(info.observation_reason),
        "science_program": None if info.science_program is None else str(info.science_program),
        "exposure_time": float(info.exposure_time.to_value("s")),
        "dark_time": float(info.dark_time.to_value("s")),
        "timespan": Timespan(begin, max(begin, end)),
        "group": None if info.exposure_group is None else str(info.exposure_group),
    }


def read_raw_header(path: str | os.PathLike) -> RawInfo:
    """Read the primary header of one raw file and translate it (``cpframe.camera.translators``).

    Raises
    ------
    IngestError
        Unreadable / not FITS, truncated, no translator for the header, a property that
        cannot be translated (named, with the header keys involved), unknown instrument,
        detector or filter, negative exposure time.  The message starts with the path.
    """
    from astropy.io import fits

    from cpframe.camera.translators import translate_header

    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            hdr = fits.Header.fromfile(f)
            header_bytes = f.tell()
    except Exception as err:  # astropy raises OSError, ValueError, EOFError... on garbage
        raise IngestError(f"{p}: not a readable FITS file ({type(err).__name__}: {err})") from None
    if size < 2880:
        raise IngestError(f"{p}: truncated ({size} bytes, not even one FITS block)")
    scale = str(hdr.get("CAMSCALE", "full")).strip()
    if scale not in SCALES:
        raise IngestError(f"{p}: CAMSCALE={scale!r}; expected one of {', '.join(SCALES)}")
    try:
        # the astropy Header itself: cards are parsed only when the translator reads them
        info = translate_header(hdr, filename=str(p))
    except ValueError as err:
        raise IngestError(f"{p}: {err}") from None
    try:
        camera = load_camera(info.instrument, scale)
        det = camera.detector(int(info.detector_num))
        camera.band_of(info.physical_filter)
    except CpframeError as err:
        raise IngestError(f"{p}: {err}") from None
    problems = []
    if info.datetime_end < info.datetime_begin:
        problems.append(f"end {info.datetime_end.tai.isot} TAI is before begin {info.datetime_begin.tai.isot} TAI")
    if problems:
        raise IngestError(f"{p}: {'; '.join(problems)}")
    need = _expected_min_size(header_bytes, det)
    if size < need:
        raise IngestError(
            f"{p}: truncated: {size} bytes, but its {len(det.amps)} amplifier segments need at least {need}"
        )
    record = exposure_record(info, camera.name)
    return RawInfo(str(p), camera.name, det.id, record["id"], scale, record, size)


def _read_many(paths: Sequence[str]) -> list[tuple[str, RawInfo | str]]:
    out = []
    for p in paths:
        try:
            out.append((p, read_raw_header(p)))
        except IngestError as err:
            out.append((p, str(err)))
    return out


def read_raw_headers(
    paths: Sequence[str | os.PathLike],
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[RawInfo], list[tuple[str, str]]]:
    """Read many raw headers, in parallel for large batches.

    Parameters
    ----------
    paths
        Raw files.
    processes
        Worker processes; default: one per CPU when there are at least 256 files, else 1
        (this process).

    Returns
    -------
    (infos, failures)
        ``infos`` in input order; ``failures`` as (path, reason).
    """
    paths = [str(p) for p in paths]
    n = len(paths)
    if processes is None:
        processes = (os.cpu_count() or 1) if n >= _PARALLEL_FROM else 1
    processes = max(1, min(processes, n or 1))
    if processes == 1:
        results = _read_many(paths)
    else:
        from cpframe.camera.simulate import process_context

        size = max(16, min(512, n // (processes * 8) or 16))
        chunks = [paths[i : i + size] for i in range(0, n, size)]
        ctx = process_context(["cpframe.repository.ingest"])
        results = []
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            for part in pool.map(_read_many, chunks):
                results += part
                if progress:
                    progress(len(results), n)
    infos = [r for _, r in results if isinstance(r, RawInfo)]
    failures = [(p, r) for p, r in results if isinstance(r, str)]
    return infos, failures


def exposure_records(infos: Iterable[RawInfo]) -> tuple[dict[int, dict], list[tuple[str, str]]]:
    """One record per (instrument, exposure); files that disagree with the first file of their
    exposure are returned as failures."""
    records: dict[tuple[str, int], dict] = {}
    first: dict[tuple[str, int], str] = {}
    failures = []
    for info in infos:
        key = (info.instrument, info.exposure)
        rec = records.get(key)
        if rec is None:
            records[key] = info.record
            first[key] = info.path
            continue
        diff = [k for k in rec if rec[k] != info.record[k]]
        if diff:
            failures.append(
                (
                    info.path,
                    "header disagrees with "
                    + first[key]
                    + " (same exposure) on "
                    + ", ".join(f"{k}: {info.record[k]!r} vs {rec[k]!r}" for k in diff),
                )
            )
    return {e: r for (_, e), r in records.items()}, failures


# -- into a repository -------------------------------------------------------------------------


def _insert_exposures(registry: Registry, records: list[dict]) -> tuple[int, int, dict[int, str]]:
    """Insert records; on a conflict, find the culprits one by one.  Returns (new, known, bad)."""
    try:
        new, known = registry.insert_exposures(records)
        return new, known, {}
    except ConflictingDefinitionError:
        pass
    new = known = 0
    bad: dict[int, str] = {}
    for rec in records:
        try:
            a, b = registry.insert_exposures([rec])
            new += a
            known += b
        except ConflictingDefinitionError as err:
            bad[rec["id"]] = f"exposure {rec['id']} is already registered with other values: {err}"
    return new, known, bad


def _same_file(a: str | os.PathLike, b: Path, checksum: str | None = None) -> bool:
    """Whether ``a`` is the file already stored at ``b`` (same inode, same checksum, or same bytes)."""
    try:
        if os.path.samefile(a, b):
            return True
        if checksum:
            from cpframe.repository.repo import sha256_file

            return sha256_file(a) == checksum
        return filecmp.cmp(a, b, shallow=False)  # ingested without a checksum: compare the bytes
    except OSError:
        return False


def ingest_raws(
    repo: Any,
    paths: Iterable[str | os.PathLike],
    run: str | None = None,
    transfer: str = "copy",
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    checksum: bool = False,
) -> IngestReport:
    """Ingest raw files into ``repo`` (a ``cpframe.repository.repo.Repository``).

    Parameters
    ----------
    paths
        Files and/or directories (searched for ``*.fits``).
    run
        RUN collection; default ``<INSTRUMENT>/raw/all`` per instrument.
    transfer
        ``copy`` (default), ``link``, ``symlink``, ``direct`` (keep in place) or ``move``.
    processes
        Header-reading processes (see :func:`read_raw_headers`).
    checksum
        Record a sha256 of each file (reads every byte; off by default, as in the butler,
        so ingest runs at header-read speed).

    Returns
    -------
    IngestReport
        Ingested, skipped (already there) and failed files with reasons.  Failures do not stop
        the batch; the caller decides what to do with them.

    Raises
    ------
    UserInputError
        Unknown transfer mode.
    RegistryError
        The RUN name is invalid or exists with another type.
    """
    from cpframe.repository.repo import TRANSFER_MODES

    if transfer not in TRANSFER_MODES:
        raise UserInputError(f"unknown transfer mode {transfer!r}; use one of {', '.join(TRANSFER_MODES)}.")
    report = IngestReport()
    files, missing = find_raw_files(paths)
    report.failed += missing
    infos, failures = read_raw_headers(files, processes, progress)
    report.failed += failures
    records, disagree = exposure_records(infos)
    report.failed += disagree
    bad_paths = {p for p, _ in disagree}
    infos = [i for i in infos if i.path not in bad_paths]
    reg = repo.registry
    by_instrument: dict[str, list[RawInfo]] = {}
    for info in infos:
        by_instrument.setdefault(info.instrument, []).append(info)
    for instrument, group in sorted(by_instrument.items()):
        run_name = run or f"{instrument}/raw/all"
        repo.register_instrument(instrument, group[0].scale)
        exp_ids = sorted({i.exposure for i in group})
        new, known, bad = _insert_exposures(reg, [records[e] for e in exp_ids])
        report.exposures_new += new
        report.exposures_known += known
        reg.register_collection(
            run_name, CollectionType.RUN, doc=f"raw {instrument} exposures (cpframe ingest-raws)"
        )
        if run_name not in report.runs:
            report.runs.append(run_name)
        existing = {
            DataId(r.data_id).key(): r
            for r in reg.query_datasets("raw", collections=[run_name])
            if r.data_id.get("instrument") == instrument
        }
        todo: list[RawInfo] = []
        seen: dict[str, str] = {}
        for info in group:
            did = info.data_id
            if info.exposure in bad:
                report.failed.append((info.path, bad[info.exposure]))
            elif did.key() in seen:
                report.skipped.append((info.path, f"same data ID as {seen[did.key()]} in this batch"))
            elif did.key() in existing:
                ref = existing[did.key()]
                there = repo.get_path(ref)
                if _same_file(info.path, there, ref.checksum):
                    report.skipped.append((info.path, MSG_ALREADY.format(data_id=did, run=run_name)))
                else:
                    report.failed.append(
                        (info.path, MSG_OTHER_FILE.format(data_id=did, run=run_name, existing=there))
                    )
            else:
                seen[did.key()] = info.path
                todo.append(info)
        for i in range(0, len(todo), _BATCH):
            _register(repo, todo[i : i + _BATCH], run_name, transfer, report, checksum)
    return report


def _register(repo: Any, batch: list[RawInfo], run: str, transfer: str, report: IngestReport,
              checksum: bool = False) -> None:
    items = [(i.path, "raw", i.data_id) for i in batch]
    try:
        repo.ingest_files(items, run, transfer=transfer, checksum=checksum)
        report.ingested += [i.path for i in batch]
        return
    except CpframeError as err:
        if len(batch) == 1:
            report.failed.append((batch[0].path, str(err)))
            return
    # one bad file must not sink the batch: register one by one to name the culprit(s)
    for info, item in zip(batch, items):
        try:
            repo.ingest_files([item], run, transfer=transfer, checksum=checksum)
            report.ingested.append(info.path)
        except CpframeError as err:
            report.failed.append((info.path, str(err)))
