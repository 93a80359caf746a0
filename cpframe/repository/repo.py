"""A data repository: the registry plus the datastore (files under a root directory).

The datastore keeps one file per dataset at
``ROOT/<run>/<datasetType>/<datasetType>_<instrument>_<dataId values>.<ext>``.

How a file and its registry row appear together (or not at all)
-------------------------------------------------------------------
1. A ``pending_file`` journal row naming the final path (and the writer,
   ``host:pid``) is **committed** first.
2. The file is written to ``.<name>.tmp`` beside its final place and renamed.
3. One transaction inserts the dataset rows **and** deletes the journal rows.

Removal runs the other way: one transaction deletes the rows and journals the
paths, then the files are deleted, then the journal rows.  So a journal row
always means "this path is not trustworthy unless a dataset row points at it".
:meth:`Repository.open` repairs the leftovers of writers that are gone (same
host, process no longer alive; or older than a day): the file and its ``.tmp``
sibling are deleted unless a dataset row uses the path.  Leftovers of live
writers are only reported.

The files themselves are :class:`cpframe.repository.datastore.FileDatastore`'s; the
registry is any :class:`cpframe.repository.base.Registry` (``SqlRegistry`` is created or
opened here).  Export/import (``export_calibs``, ``import_export``) live in
``cpframe.repository.transfer``, which takes a ``Repository``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from cpframe.core import yamlsafe
from cpframe.core.errors import (
    CollectionTypeError,
    DatasetConflictError,
    DatastoreError,
    MissingDatasetError,
    RegistryError,
    RunLockedError,
    SchemaVersionError,
    UnknownCollectionError,
    UnknownDatasetTypeError,
    UserInputError,
)
from cpframe.core.model import CollectionType, DatasetRef, DatasetType, Timespan, tai_now_ns
from cpframe.repository.base import BindValues, DataIdLike, Registry
from cpframe.repository.datastore import (  # noqa: F401  (TRANSFER_MODES, sha256_file, dataset_file_name: re-exported)
    TRANSFER_MODES,
    FileDatastore,
    _tmp_of,
    _unlink,
    dataset_file_name,
    sha256_file,
)
from cpframe.repository.locks import pid_alive
from cpframe.repository.names import validate_collection_name, validate_dataset_type_name
from cpframe.repository.sql import SqlRegistry, normalize_data_id
from cpframe.repository.sql_common import datasets_exist_message

__all__ = [
    "Repository",
    "RemovalPlan",
    "DEFAULT_DATASET_TYPES",
    "TRANSFER_MODES",
    "CONFIG_NAME",
    "SQLITE_NAME",
    "sha256_file",
    "dataset_file_name",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "cpframe-repo.yaml"
SQLITE_NAME = "registry.sqlite3"
_STALE_NS = 24 * 3600 * 10**9  # journal rows of other hosts older than this are repaired

_CAL = ("instrument", "detector")
#: Dataset types every repository has (docs/architecture.md "Dataset types").
DEFAULT_DATASET_TYPES = (
    DatasetType("raw", ("instrument", "detector", "exposure"), False, "fits-raw"),
    DatasetType("biasBootstrap", _CAL, True, "fits-masked"),
    DatasetType("darkBootstrap", _CAL, True, "fits-masked"),
    DatasetType("bias", _CAL, True, "fits-masked"),
    DatasetType("dark", _CAL, True, "fits-masked"),
    DatasetType("flatBootstrap", ("instrument", "detector", "physical_filter"), True, "fits-masked"),
    DatasetType("flat", ("instrument", "detector", "physical_filter"), True, "fits-masked"),
    DatasetType("defects", _CAL, True, "ecsv-defects"),
    DatasetType("manual_defects", _CAL, True, "ecsv-defects"),
    DatasetType("ptc", _CAL, True, "fits-ptc"),
)

MSG_NOT_A_REPO = "{root} is not a cpframe repository (no {name}); create one with `cpframe create {root}`."
MSG_REPO_EXISTS = "{root} already holds a cpframe repository ({name}); open it, or choose another directory."
MSG_CERTIFIED = (
    "RUN {run} has {n} dataset(s) certified in CALIBRATION collection(s) {collections}; removing it would make "
    "lookups fall through to older calibrations. Decertify first, or pass --force."
)
MSG_CHAIN_CHILD = "RUN {run} is a child of chain(s) {parents}; pass --force to remove it from them too."


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Entry:
    """A file on its way into the datastore."""

    src: Path
    ref: DatasetRef
    rel: str | None
    """Path relative to the datastore root; None for ``direct`` (absolute source path)."""


@dataclass
class RemovalPlan:
    """What ``remove_runs`` will do; printed by the CLI before asking."""

    runs: list[str]
    datasets: dict[str, int]
    """Number of datasets per RUN."""
    certified: dict[str, list[str]] = field(default_factory=dict)
    """RUN -> CALIBRATION collections linking its datasets."""
    parents: dict[str, list[str]] = field(default_factory=dict)
    """RUN -> chains listing it."""

    def describe(self) -> str:
        lines = []
        for run in self.runs:
            line = f"  RUN {run}: {self.datasets[run]} dataset(s) and their files"
            if self.certified.get(run):
                line += f"; drops links in {', '.join(self.certified[run])}"
            if self.parents.get(run):
                line += f"; removed from chain(s) {', '.join(self.parents[run])}"
            lines.append(line)
        return "\n".join(lines)


class Repository:
    """Registry + datastore.  Create with :meth:`create`, open with :meth:`open`.

    Attributes
    ----------
    root : pathlib.Path
        The repository directory (holds ``cpframe-repo.yaml``).
    datastore : FileDatastore
        The files (:attr:`datastore_root`: ``root`` unless configured otherwise).
    registry : Registry
    repairs : list of str
        What :meth:`open` repaired or found in progress (empty when clean).
    """

    def __init__(self, root: Path, registry: Registry, datastore: FileDatastore, db_url: str):
        self.root = root
        self.registry = registry
        self.datastore = datastore
        self.db_url = db_url
        self.repairs: list[str] = []
        self.read_only = False
        """True when the registry file could only be opened read-only (queries work, writes fail)."""

    @property
    def datastore_root(self) -> Path:
        """Where dataset files live."""
        return self.datastore.root

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls, root: str | os.PathLike, db_url: str | None = None, *, datastore_root: str | os.PathLike | None = None,
        busy_timeout_s: float = 60.0,
    ) -> "Repository":
        """Create a repository in ``root`` (made if missing) and register the default dataset types.

        Parameters
        ----------
        root : path
        db_url : str, optional
            SQLAlchemy URL of an empty database; default SQLite ``root/registry.sqlite3``.
        datastore_root : path, optional
            Where files go (default ``root``); relative paths are relative to ``root``.

        Raises
        ------
        RegistryError
            ``root`` already holds a repository or the database a registry.
        """
        root = Path(root).absolute()
        cfg_path = root / CONFIG_NAME
        if cfg_path.exists():
            raise RegistryError(MSG_REPO_EXISTS.format(root=root, name=CONFIG_NAME))
        made_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{root / SQLITE_NAME}"
        try:
            registry = SqlRegistry.create(url, busy_timeout_s)
        except BaseException:
            if made_root:  # leave nothing behind
                shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            for dt in DEFAULT_DATASET_TYPES:
                registry.register_dataset_type(dt)
            config = {
                "schema_version": SqlRegistry.SCHEMA_VERSION,
                "db": db_url or f"sqlite:///{SQLITE_NAME}",
                "datastore_root": str(datastore_root) if datastore_root else ".",
            }
            tmp = cfg_path.with_name(f".{CONFIG_NAME}.tmp")
            tmp.write_text(
                "# cpframe repository: registry database URL (sqlite paths relative to this file), schema version\n"
                + yaml.safe_dump(config, sort_keys=False)
            )
            os.replace(tmp, cfg_path)
        except BaseException:
            registry.close()
            raise
        return cls(root, registry, FileDatastore(cls._store_root(root, config["datastore_root"])), url)

    @staticmethod
    def _store_root(root: Path, text: str) -> Path:
        p = Path(text)
        return (p if p.is_absolute() else root / p).resolve()

    @classmethod
    def open(cls, root: str | os.PathLike, *, repair: bool = True, busy_timeout_s: float = 60.0) -> "Repository":
        """Open the repository in ``root`` and repair leftovers of crashed writers.

        Raises
        ------
        RegistryError
            ``root`` is not a repository.
        SchemaVersionError
            Written by a cpframe with another schema version.
        """
        root = Path(root).absolute()
        cfg_path = root / CONFIG_NAME
        if not cfg_path.is_file():
            raise RegistryError(MSG_NOT_A_REPO.format(root=root, name=CONFIG_NAME))
        try:
            config = yamlsafe.load(cfg_path.read_text(), str(cfg_path), max_nodes=10_000) or {}
            version, db = str(config["schema_version"]), str(config["db"])
        except (yaml.YAMLError, KeyError, TypeError) as err:
            raise RegistryError(f"{cfg_path} is damaged ({err}); it needs keys schema_version and db.") from None
        if version != SqlRegistry.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{root} was created with registry schema version {version}; this cpframe uses "
                f"{SqlRegistry.SCHEMA_VERSION}. Use the matching cpframe version, or export the calibrations "
                "with it (`cpframe export-calibs`) and import them into a new repository."
            )
        url = db
        if db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
            url = f"sqlite:///{root / db[len('sqlite:///'):]}"
        read_only = False
        if url.startswith("sqlite:///"):
            # a repository on read-only media (or without write permission) can still be queried
            path = Path(url[len("sqlite:///"):])
            read_only = path.is_file() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
        registry = SqlRegistry.open(url, busy_timeout_s, read_only=read_only)
        repo = cls(root, registry, FileDatastore(cls._store_root(root, str(config.get("datastore_root", ".")))), url)
        repo.read_only = read_only
        if repair and not read_only:
            repo.repairs = repo.repair()
        return repo

    def close(self) -> None:
        """Release database connections."""
        self.registry.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r})"

    def repair(self, *, force: bool = False) -> list[str]:
        """Clean up journal leftovers of writers that are gone; returns what was done or found.

        Parameters
        ----------
        force : bool
            Repair every leftover, even of writers that look alive (use only when no
            other process writes to this repository).
        """
        report = self._repair_scratch(force)
        try:
            from cpframe.repository.locks import describe_lock, owner_is_gone

            for lock in self.registry.run_locks():
                if owner_is_gone(lock):
                    report.append(f"RUN {lock['run']} is locked by {describe_lock(lock)}, which is no longer "
                                  "running; resume with `cpframe submit ... --extend-run --skip-existing "
                                  "--take-over-lock`")
        except Exception:  # noqa: BLE001 - a report only; never fail open() for it
            pass
        rows = self.registry.pending_files()
        if not rows:
            for line in report:
                log.warning("repository %s: %s", self.root, line)
            return report
        host = socket.gethostname()
        now = tai_now_ns()
        doomed = []
        for row in rows:
            owner = row.get("owner") or ""
            o_host, _, o_pid = owner.rpartition(":")
            alive = (o_host == host and o_pid.isdigit() and pid_alive(int(o_pid))) or (
                o_host != host and now - row["created_ns"] < _STALE_NS)
            if alive and not force:
                report.append(f"{row['path']}: being written by {owner} (left alone)")
            else:
                doomed.append(row["path"])
        in_use = self.registry.paths_in_use(doomed)
        unsafe: set[str] = set()
        for rel in doomed:
            try:
                self.datastore.inside(rel)
            except DatastoreError as err:  # never delete outside the datastore, whatever the journal says
                report.append(f"{rel}: journal entry left alone: {err}")
                unsafe.add(rel)
                continue
            if rel in in_use:
                report.append(f"{rel}: journal entry of a completed write removed")
                continue
            removed = self.datastore.discard([rel])
            report.append(f"{rel}: interrupted write or removal repaired"
                          + (f" ({len(removed)} file(s) deleted)" if removed else ""))
        doomed = [r for r in doomed if r not in unsafe]
        self.registry.remove_pending_files(doomed)
        self.datastore.prune({(self.datastore_root / p).parent for p in doomed})
        for line in report:
            log.warning("repository %s: %s", self.root, line)
        return report

    def _repair_scratch(self, force: bool = False) -> list[str]:
        """Remove scratch folders of submissions that are gone (kill -9); report staged outputs."""
        report = []
        scratch = self.datastore_root / ".cpframe-scratch"
        host = socket.gethostname()
        if scratch.is_dir():
            for d in sorted(p for p in scratch.iterdir() if p.is_dir()):
                try:
                    owner = (d / ".owner").read_text().strip()
                except OSError:
                    continue  # being created right now, or not ours
                o_host, _, o_pid = owner.rpartition(":")
                if force or (o_host == host and o_pid.isdigit() and not pid_alive(int(o_pid))):
                    shutil.rmtree(d, ignore_errors=True)
                    report.append(f"scratch folder {d.name} of a submission that is gone ({owner}) removed")
            with contextlib.suppress(OSError):
                scratch.rmdir()
        staged = self.datastore_root / ".cpframe-staged"
        if staged.is_dir():
            for d in sorted(p for p in staged.iterdir() if p.is_dir()):
                n = sum(1 for p in d.iterdir() if p.name != "manifest.jsonl")
                if n:
                    report.append(f"{n} computed output(s) staged in {d} wait for registration: "
                                  "`cpframe submit TEMPLATE --extend-run --skip-existing`")
        return report

    # -- dimensions -----------------------------------------------------------------------------
    def register_instrument(self, name: str, scale: str = "full") -> bool:
        """Register instrument ``name`` from ``cpframe.camera.models``; True if new.

        Raises
        ------
        CameraError
            Unknown instrument or scale.
        ConflictingDefinitionError
        """
        from cpframe.camera.models import load_camera

        return self.registry.register_instrument(load_camera(name, scale))

    # -- datastore ------------------------------------------------------------------------------
    def get_path(self, ref: DatasetRef) -> Path:
        """Absolute path of a dataset's file.

        Raises
        ------
        DatastoreError
            The ref has no file.
        """
        return self.datastore.path_of(ref)

    def put_file(self, src_path: str | os.PathLike, dataset_type: str, data_id: DataIdLike, run: str,
                 transfer: str = "move") -> DatasetRef:
        """Store one file as a dataset of ``run`` (see :meth:`put_files`)."""
        return self.put_files([(src_path, dataset_type, data_id)], run, transfer=transfer)[0]

    def put_files(self, items: Iterable[tuple[str | os.PathLike, str, DataIdLike]], run: str,
                  transfer: str = "move", checksums: Mapping[str, str] | None = None) -> list[DatasetRef]:
        """Store files as datasets of ``run`` in one transaction: all or nothing.

        Parameters
        ----------
        items : iterable of (path, dataset type, data ID)
        run : str
            An existing RUN collection (runs are not created implicitly).
        transfer : str
            ``move`` (default: rename/hard-link, source removed after commit), ``copy``, ``link``,
            ``symlink``.
        checksums : mapping, optional
            Source path -> sha256 already computed by whoever wrote the file (``cpframe submit``'s
            workers hash their outputs while they are in the page cache, so the one driver does
            not read every product again: benchmarks/bench_scaleout.py); missing ones are computed.

        Raises
        ------
        DatasetConflictError
            A (type, data ID) already in ``run``; lists every conflict.  Nothing is moved.
        UnknownCollectionError, CollectionTypeError, UnknownDatasetTypeError, DatastoreError, UserInputError
        """
        if transfer == "direct":
            raise UserInputError("put_files does not take transfer='direct'; use ingest_files for files kept in place.")
        return self.ingest_files(items, run, transfer=transfer, checksum=True, checksums=checksums)

    def ingest_files(self, items: Iterable[tuple[str | os.PathLike, str, DataIdLike]], run: str,
                     transfer: str = "copy", checksum: bool = False,
                     checksums: Mapping[str, str] | None = None) -> list[DatasetRef]:
        """Like :meth:`put_files`, with every transfer mode, ``direct`` included (file kept in place).

        ``checksum=False`` (the default for ingest, as in the butler's datastore) records no
        sha256: hashing reads every byte of every file and was ~95 % of raw-ingest time
        (benchmarks/RESULTS.md).  Products written by cpframe (:meth:`put_files`) always get one;
        ``export-calibs`` computes any missing checksum so ``import`` can verify every file.

        Raises
        ------
        DatasetConflictError, UnknownCollectionError, CollectionTypeError, DatastoreError, UserInputError
        """
        if transfer not in TRANSFER_MODES:
            raise UserInputError(f"unknown transfer mode {transfer!r}; use one of {', '.join(TRANSFER_MODES)}.")
        items = list(items)
        ctype = self.registry.get_collection_type(run)
        if ctype != CollectionType.RUN:
            raise CollectionTypeError(f"datasets go into RUN collections; {run!r} is {ctype.name}.")
        entries = self._prepare([(Path(p), t, d, run, None) for p, t, d in items], transfer,
                                {t: self.registry.get_dataset_type(t) for t in {t for _, t, _ in items}},
                                checksums={str(Path(k)): v for k, v in (checksums or {}).items()},
                                compute_checksums=checksum)
        self._precheck_conflicts(entries)
        return self._commit(entries, transfer, lambda: self.registry.insert_datasets([e.ref for e in entries]))

    def _prepare(self, items: Sequence[tuple[Path, str, DataIdLike, str, str | None]], transfer: str,
                 types: Mapping[str, DatasetType], checksums: Mapping[str, str] | None = None,
                 compute_checksums: bool = True) -> list[_Entry]:
        """Paths, data IDs and checksums of files to store; nothing is written."""
        missing = [str(p) for p, *_ in items if not p.is_file()]
        if missing:
            raise DatastoreError(
                f"{len(missing)} file(s) to store do not exist: {', '.join(missing[:10])}"
                + (", ..." if len(missing) > 10 else "") + ". Nothing was stored."
            )
        entries, seen = [], {}
        for src, type_name, data_id, run, ds_id in items:
            validate_collection_name(run)
            validate_dataset_type_name(type_name)
            dt = types[type_name]
            did = normalize_data_id(dt, data_id)
            rel = None
            if transfer != "direct":
                rel = self.datastore.relative_path(run, dt, did, src)
                if rel in seen:
                    raise DatasetConflictError(
                        f"{dt.name} {did} is given twice for RUN {run} ({seen[rel]} and {src}); give each data ID once."
                    )
                seen[rel] = src
            checksum = (checksums or {}).get(str(src)) or (sha256_file(src) if compute_checksums else None)
            path = rel if rel is not None else str(src.resolve())
            ref = DatasetRef(ds_id or str(uuid.uuid4()), dt.name, did, run, path, checksum,
                             {"size_bytes": src.stat().st_size})
            entries.append(_Entry(src, ref, rel))
        return entries

    def _precheck_conflicts(self, entries: Sequence[_Entry]) -> None:
        """Fail before touching any file when a dataset already exists (checked again on insert)."""
        by: dict[tuple[str, str], list[_Entry]] = {}
        for e in entries:
            by.setdefault((e.ref.dataset_type, e.ref.run), []).append(e)
        conflicts = []
        for (t, run), group in by.items():
            try:
                found = self.registry.find_datasets(t, [e.ref.data_id for e in group], [run])
            except (UnknownCollectionError, UnknownDatasetTypeError):  # a RUN or type still to be created
                continue
            conflicts += [f"{t} {e.ref.data_id} in RUN {run} (existing id {f.id})" for e, f in zip(group, found) if f]
        if conflicts:
            raise DatasetConflictError(datasets_exist_message(conflicts) + " Nothing was stored.")

    def _commit(self, entries: Sequence[_Entry], transfer: str, body: Callable[[], Any]) -> Any:
        """Journal, place the files, then run ``body`` and drop the journal in one transaction.

        Files are placed without ever replacing an existing file (a file already at a target
        path is an error), so a rollback deletes only the files this call created (issue 11).
        """
        rels = [e.rel for e in entries if e.rel is not None]
        for rel in rels:  # every path proven inside the datastore before anything is written
            self.datastore.inside(rel)
        self.registry.add_pending_files(rels, _owner())
        placed: list[Path] = []
        try:
            for e in entries:
                if e.rel is not None:
                    placed.append(self.datastore.place(e.src, self.datastore_root / e.rel, transfer, clobber=False))
            with self.registry.transaction():
                result = body()
                self.registry.remove_pending_files(rels)
        except BaseException:
            for p in placed:
                _unlink(p)
            for e in entries:
                if e.rel is not None:
                    _unlink(_tmp_of(self.datastore_root / e.rel))
            with contextlib.suppress(Exception):
                self.registry.remove_pending_files(rels)
            with contextlib.suppress(Exception):
                self.datastore.prune({p.parent for p in placed})
            raise
        if transfer == "move":
            for e in entries:
                _unlink(e.src)
        return result

    def verify_checksums(self, refs: Iterable[DatasetRef]) -> list[str]:
        """Problems found re-hashing the files of ``refs`` (empty list when all match)."""
        return self.datastore.verify_checksums(refs)

    # -- certification --------------------------------------------------------------------------
    def certify_calibrations(
        self, input_collection: str, output_collection: str, dataset_type: str,
        timespan: Timespan | None = None, *, begin_date: str | None = None, end_date: str | None = None,
        search_all_inputs: bool = False,
    ) -> list[DatasetRef]:
        """``certify-calibrations`` (spec §3): link the input's datasets into a CALIBRATION collection.

        Parameters
        ----------
        input_collection : str
            A RUN (or CHAINED: only its first child unless ``search_all_inputs``).
        output_collection : str
            CALIBRATION collection, created if absent.
        dataset_type : str
        timespan : Timespan, optional
            Validity range; or give ``begin_date``/``end_date`` texts (TAI; 1970 or earlier = unbounded).
        search_all_inputs : bool
            Find-first over the whole INPUT chain instead of its first child.

        Returns
        -------
        list of DatasetRef
            The datasets certified.

        Raises
        ------
        BadDateError
            Date with a time-zone suffix, unknown form, or begin after end.
        MissingDatasetError
            No datasets of that type in the input (nothing is created).
        CollectionTypeError
            The output exists as RUN or CHAINED.
        ValidityOverlapError, RegistryError, UnknownCollectionError, UnknownDatasetTypeError
        """
        from cpframe.repository.sql import MSG_FIRST_CHILD, MSG_NO_INPUT

        if timespan is None:
            timespan = Timespan.from_text(begin_date, end_date)
        reg = self.registry
        dt = reg.get_dataset_type(dataset_type)
        if not dt.is_calibration:
            raise RegistryError(
                f"dataset type {dataset_type!r} is not a calibration and cannot be certified; "
                "certify bias, dark, flat, defects, ptc, ... instead."
            )
        with contextlib.suppress(UnknownCollectionError):
            otype = reg.get_collection_type(output_collection)
            if otype != CollectionType.CALIBRATION:
                raise CollectionTypeError(
                    f"output collection {output_collection!r} is a {otype.name} collection; certify into a "
                    "CALIBRATION collection (a new name is created as one)."
                )
        itype = reg.get_collection_type(input_collection)
        search, note = [input_collection], ""
        if itype == CollectionType.CHAINED and not search_all_inputs:
            children = reg.get_chain(input_collection)
            if not children:
                raise MissingDatasetError(f"input chain {input_collection!r} is empty; nothing to certify.")
            search = [children[0]]
            note = " (" + MSG_FIRST_CHILD.format(child=children[0]) + ")"
        refs = reg.query_datasets(dataset_type, search, find_first=True)
        if not refs:
            raise MissingDatasetError(
                MSG_NO_INPUT.format(dataset_type=dataset_type, collection=input_collection) + note
                + f"; nothing was certified and {output_collection!r} was not created. Check the input with "
                f"`cpframe query-datasets REPO {dataset_type} --collections {input_collection}`."
            )
        reg.certify(output_collection, refs, timespan)
        return refs

    # -- removal --------------------------------------------------------------------------------
    def plan_remove_runs(self, names: Sequence[str], force: bool = False, lock_owner: str | None = None) -> RemovalPlan:
        """Check and describe what :meth:`remove_runs` would do.

        Parameters
        ----------
        lock_owner : str, optional
            The lock owner calling (a submission removing the empty RUN it created).

        Raises
        ------
        UnknownCollectionError, CollectionTypeError
        RunLockedError
            A RUN is being written by a live process (even with ``force``).
        RegistryError
            A RUN is certified somewhere or a chain child, and not ``force``.
        """
        from cpframe.repository.locks import describe_lock, owner_is_gone

        for run in dict.fromkeys(names):
            lock = self.registry.get_run_lock(run)
            if lock and lock["owner"] != lock_owner and not owner_is_gone(lock):
                err = RunLockedError(
                    f"RUN {run!r} is being written by {describe_lock(lock)}; it cannot be removed while a "
                    "submission writes into it. Wait for it to finish (or stop it). Nothing was removed."
                )
                err.lock = lock
                raise err
        reg = self.registry
        runs = list(dict.fromkeys(names))
        if not runs:
            raise UserInputError("no RUN collections given to remove.")
        problems = []
        plan = RemovalPlan(runs, {})
        for run in runs:
            ctype = reg.get_collection_type(run)
            if ctype != CollectionType.RUN:
                raise CollectionTypeError(
                    f"{run!r} is a {ctype.name} collection, not a RUN; remove it with `cpframe remove-collections`."
                )
            refs = reg.query_datasets(None, [run])
            plan.datasets[run] = len(refs)
            cert = reg.certified_in([r.id for r in refs])
            colls = sorted({c for cs in cert.values() for c in cs})
            if colls:
                plan.certified[run] = colls
                if not force:
                    problems.append(MSG_CERTIFIED.format(run=run, n=len(cert), collections=", ".join(colls)))
            parents = reg.get_parent_chains(run)
            if parents:
                plan.parents[run] = parents
                if not force:
                    problems.append(MSG_CHAIN_CHILD.format(run=run, parents=", ".join(parents)))
        if problems:
            raise RegistryError("refusing to remove: " + " ".join(problems) + " Nothing was removed.")
        return plan

    def remove_runs(self, names: Sequence[str], force: bool = False, lock_owner: str | None = None) -> RemovalPlan:
        """Remove RUN collections, their dataset rows and files together (spec §6).

        Raises
        ------
        UnknownCollectionError, CollectionTypeError, RunLockedError, RegistryError
            See :meth:`plan_remove_runs`; nothing is removed then.
        """
        plan = self.plan_remove_runs(names, force, lock_owner)
        removed: list[DatasetRef] = []
        with self.registry.transaction():
            for run in plan.runs:
                removed += self.registry.remove_run(run, remove_from_parents=force)
            rels = [r.path for r in removed if r.path and not Path(r.path).is_absolute()]
            for rel in rels:  # proven inside before anything is deleted (else nothing is removed)
                self.datastore.inside(rel)
            self.registry.add_pending_files(rels, _owner())
        self.datastore.discard(rels, with_tmp=False)
        self.datastore.prune({(self.datastore_root / rel).parent for rel in rels})
        self.registry.remove_pending_files(rels)
        for run in plan.runs:  # a stale lock (or the caller's own) goes with its RUN
            lock = self.registry.get_run_lock(run)
            if lock:
                self.registry.release_run_lock(run, lock["owner"])
        return plan

    def expand_collection_globs(self, names: Sequence[str], ctype: CollectionType | None) -> list[str]:
        """Expand glob patterns among ``names`` as the butler's remove commands do.

        A plain name is kept as given (checked later, so an unknown name is an error).  A glob
        (``*?[``; collection names never contain these) matches RUNs only when ``ctype`` is RUN,
        and every other type otherwise: a glob of ``remove-collections`` never selects a RUN.
        A glob matching nothing adds nothing.
        """
        from cpframe.repository.sql_common import _glob

        out: list[str] = []
        for name in names:
            if not _glob(name):
                out.append(name)
                continue
            kinds = [ctype] if ctype is not None else [t for t in CollectionType if t != CollectionType.RUN]
            out += [c.name for c in self.registry.query_collections(name, kinds)]
        return list(dict.fromkeys(out))

    def remove_collections(self, names: Sequence[str], remove_from_parents: bool = False) -> list[str]:
        """Remove CALIBRATION/CHAINED/TAGGED collections (links only; datasets stay in their RUNs).

        All or nothing.

        Raises
        ------
        UnknownCollectionError, CollectionTypeError
        RegistryError
            A collection is a chain child and not ``remove_from_parents``.
        """
        names = list(dict.fromkeys(names))
        with self.registry.transaction():
            for n in names:
                self.registry.remove_collection(n, remove_from_parents=remove_from_parents)
        return names

    # -- artifacts ------------------------------------------------------------------------------
    def retrieve_artifacts(
        self, destination: str | os.PathLike, dataset_types: Sequence[str] | None = None,
        collections: Sequence[str] | str = "*", where: str = "", bind: BindValues | None = None,
        find_first: bool = False, transfer: str = "copy", preserve_path: bool = True, clobber: bool = False,
    ) -> list[Path]:
        """Copy the files of matching datasets to ``destination``; returns the written paths.

        Raises
        ------
        DatastoreError
            A target file exists and not ``clobber`` (nothing is copied), or a source is missing.
        SelectionError, UnknownCollectionError, UserInputError
        """
        if transfer not in ("copy", "link", "symlink"):
            raise UserInputError(f"retrieve-artifacts transfer {transfer!r}: use copy, link or symlink.")
        refs = self.registry.query_datasets(dataset_types or None, collections, where, bind, find_first)
        dest = Path(destination).absolute()
        plan: dict[Path, Path] = {}
        for ref in refs:
            src = self.get_path(ref)
            name = src.name
            rel = Path(ref.path) if ref.path and not Path(ref.path).is_absolute() else Path(ref.run) / ref.dataset_type / name
            target = dest / (rel if preserve_path else name)
            if target in plan and plan[target] != src:
                raise DatastoreError(
                    f"two datasets would both be written to {target}; use --preserve-path to keep run folders."
                )
            plan[target] = src
        clash = [str(t) for t in plan if t.exists() or t.is_symlink()]
        if clash and not clobber:
            raise DatastoreError(
                f"{len(clash)} file(s) already exist in {dest}: {', '.join(clash[:5])}"
                + (", ..." if len(clash) > 5 else "") + ". Pass --clobber to overwrite. Nothing was copied."
            )
        missing = [str(sp) for sp in plan.values() if not sp.is_file()]
        if missing:
            raise DatastoreError(f"dataset file(s) missing from the datastore: {', '.join(missing[:5])}.")
        written = []
        for target, src in plan.items():
            written.append(self.datastore.place(src, target, transfer))
        return written
