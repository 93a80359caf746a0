"""``SqlRegistry``: the registry on SQLAlchemy Core (SQLite or PostgreSQL).

This is the only module of the registry that talks SQL (selections are
compiled by ``cpframe.repository.query``).  Every public method is one
transaction; :meth:`SqlRegistry.transaction` groups several of them (the
``Repository`` uses it so that dataset rows, journal rows and links change
together).

SQLite
    WAL journal, a busy timeout (``busy_timeout_s``) so several processes can
    write, ``BEGIN IMMEDIATE`` for write transactions (a deferred transaction
    that later writes can fail at once with "database is locked" instead of
    waiting), foreign keys on.
PostgreSQL
    READ COMMITTED; ``certify`` takes a table lock so two certifiers cannot
    both pass the overlap check.

Batching: lookups over many data IDs are a handful of queries, whatever the
number of data IDs (:meth:`SqlRegistry.find_datasets`,
:meth:`SqlRegistry.find_calibrations`); inserts use executemany.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import threading
import time
import uuid
from pathlib import Path
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy import event

from cpframe.core.errors import (
    AmbiguousCalibrationError,
    ChainCycleError,
    CollectionTypeError,
    ConflictingDefinitionError,
    DatasetConflictError,
    DiskFullError,
    MissingDatasetError,
    RegistryError,
    RunLockedError,
    SchemaVersionError,
    ServiceError,
    UnknownCollectionError,
    UnknownDatasetTypeError,
    UserInputError,
    ValidityOverlapError,
)
from cpframe.core.model import (
    DIMENSION_ORDER,
    NS_MAX,
    NS_MIN,
    CollectionType,
    DataId,
    DatasetRef,
    DatasetType,
    Timespan,
    ns_to_iso,
)
from cpframe.repository import schema as s
from cpframe.repository.chains import edit_chain
from cpframe.repository.base import CHAIN_MODES, CollectionInfo, Registry
from cpframe.repository.names import validate_collection_name, validate_dataset_type_name

__all__ = ["SqlRegistry", "make_engine", "normalize_data_id", "describe_span", "DATASET_DIMENSIONS", "tai_now_ns"]

#: Dimensions a dataset type may use (each is a column of the ``dataset`` table).
DATASET_DIMENSIONS = ("instrument", "detector", "physical_filter", "exposure")
_DIM_KIND = {"instrument": str, "detector": int, "physical_filter": str, "exposure": int}
_CHUNK = 900  # bound parameters per IN (...) list
_WRITE = "cpframe_write"

MSG_FIRST_CHILD = "only its first child {child!r} is searched; pass --search-all-inputs to search the whole chain"
MSG_NO_INPUT = "no {dataset_type!r} datasets in {collection!r}"


def tai_now_ns() -> int:
    """Now as ns since 1970 TAI (37 leap seconds ahead of the system's UTC clock)."""
    return time.time_ns() + 37 * 1_000_000_000


def make_engine(url: str, busy_timeout_s: float = 60.0, read_only: bool = False) -> sa.Engine:
    """Engine for a registry URL with cpframe's connection settings.

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:////abs/path.sqlite3`` or ``postgresql+psycopg://...``).
    busy_timeout_s : float
        SQLite: seconds a writer waits for another process's lock.
    read_only : bool
        SQLite: open the file read-only (a repository on read-only media or without write
        permission can still be queried).  Without a pending WAL file it is opened
        ``immutable`` (no lock files needed); writes fail with a clear error.
    """
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite":
        return sa.create_engine(u, pool_pre_ping=True)
    if read_only and u.database:
        from urllib.parse import quote

        path = u.database
        wal = Path(f"{path}-wal")
        flags = "mode=ro" + ("" if wal.exists() and wal.stat().st_size else "&immutable=1")
        u = sa.make_url(f"sqlite:///file:{quote(path)}?{flags}&uri=true")
    engine = sa.create_engine(u, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through every test
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get(_WRITE) else "BEGIN")

    return engine


@contextlib.contextmanager
def _service_errors(url: str, engine: sa.Engine) -> Iterator[None]:
    """Connection failures (server down, bad URL) -> ServiceError naming the database."""
    try:
        yield
    except sa.exc.OperationalError as err:
        engine.dispose()
        shown = sa.make_url(url).render_as_string(hide_password=True)
        raise ServiceError(
            f"cannot reach the registry database {shown}: {str(err.orig).strip()}. Check that the server is "
            "running and the URL is right."
        ) from err


def translate_db_error(err: Exception, shown: str) -> Exception | None:
    """A database error -> the cpframe error a user can act on, or None (then it is a bug).

    Covers a damaged SQLite file, a full disk, a read-only repository, a busy lock and a lost
    server connection (PostgreSQL restarted or the network dropped).  In every case the
    transaction was rolled back, so "nothing was changed" holds.
    """
    text = str(getattr(err, "orig", err) or err).strip().splitlines()[0] if str(getattr(err, "orig", err)).strip() \
        else type(err).__name__
    low = text.lower()
    if "disk is full" in low or "no space left" in low or "disk full" in low:
        return DiskFullError(
            f"the registry database {shown} could not write: {text}. The disk is full: free space, then run the "
            "command again (nothing was changed)."
        )
    if "readonly database" in low or "read-only" in low or "read only" in low:
        return RegistryError(
            f"the registry {shown} is read-only ({text}): queries work, but this command writes. Use a writable "
            "copy of the repository (nothing was changed)."
        )
    if "not a database" in low or "malformed" in low or "file is encrypted" in low or "corrupt" in low:
        return RegistryError(
            f"the registry database {shown} is damaged ({text}). Restore it from a backup (for SQLite, "
            "`sqlite3 FILE .recover` may save its content); nothing was changed."
        )
    if "locked" in low or "busy" in low:
        return ServiceError(
            f"the registry {shown} stayed locked by another process for longer than the busy timeout "
            "(cpframe.registry.busy-timeout-s); retry, or raise the timeout "
            "(DASK_CPFRAME__REGISTRY__BUSY_TIMEOUT_S=300). Nothing was changed."
        )
    if isinstance(err, (sa.exc.OperationalError, sa.exc.InterfaceError)) or "connection" in low or "server" in low:
        return ServiceError(
            f"cannot reach the registry database {shown} ({text}); the transaction in progress was rolled "
            "back and nothing was changed. Check that the database server is running, then run the command again."
        )
    return None


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _span(begin: int, end: int) -> Timespan:
    return Timespan(None if begin <= NS_MIN else begin, None if end >= NS_MAX else end)


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class SqlRegistry(Registry):
    """Registry on SQLAlchemy; open with :meth:`create` or :meth:`open`.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        From :func:`make_engine`.
    """

    SCHEMA_VERSION = s.SCHEMA_VERSION

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self._shown = engine.url.render_as_string(hide_password=True)
        self._local = threading.local()
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._dtypes: dict[str, tuple[int, DatasetType]] = {}
        self._dtype_names: dict[int, str] = {}
        self._known_dims: dict[str, tuple[frozenset, frozenset]] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, busy_timeout_s: float = 60.0) -> "SqlRegistry":
        """Create the tables in an empty database and record the schema version.

        Raises
        ------
        RegistryError
            The database already holds a cpframe registry.
        """
        engine = make_engine(url, busy_timeout_s)
        reg = cls(engine)
        with _service_errors(url, engine), reg.transaction() as conn:
            if sa.inspect(conn).has_table(s.meta.name):
                engine.dispose()
                raise RegistryError(
                    f"the database {sa.make_url(url).render_as_string(hide_password=True)} already holds a "
                    "cpframe registry; open it instead, or give an empty database to --db."
                )
            s.metadata.create_all(conn)
            conn.execute(sa.insert(s.meta), [{"key": "schema_version", "value": cls.SCHEMA_VERSION}])
        return reg

    @classmethod
    def open(cls, url: str, busy_timeout_s: float = 60.0, read_only: bool = False) -> "SqlRegistry":
        """Connect to an existing registry.

        Parameters
        ----------
        read_only : bool
            SQLite: open the file read-only (see :func:`make_engine`).

        Raises
        ------
        SchemaVersionError
            The database's schema version is not :attr:`SCHEMA_VERSION`.
        RegistryError
            The database holds no cpframe registry, or is damaged.
        """
        engine = make_engine(url, busy_timeout_s, read_only=read_only)
        reg = cls(engine)
        shown = sa.make_url(url).render_as_string(hide_password=True)
        reg._shown = shown + (" (opened read-only)" if read_only else "")
        try:
            with reg._reading() as conn:
                if not sa.inspect(conn).has_table(s.meta.name):
                    raise RegistryError(f"{shown} holds no cpframe registry; create one with `cpframe create`.")
                version = conn.execute(
                    sa.select(s.meta.c.value).where(s.meta.c.key == "schema_version")
                ).scalar_one_or_none()
        except sa.exc.OperationalError as err:
            engine.dispose()
            better = translate_db_error(err, shown)
            if better is not None and not isinstance(better, ServiceError):
                raise better from err
            raise ServiceError(
                f"cannot open the registry database {shown}: {str(err.orig).strip()}. Check that the "
                "database server is running and the URL in cpframe-repo.yaml is right."
            ) from err
        except sa.exc.DBAPIError as err:  # a damaged file ("file is not a database", "malformed")
            engine.dispose()
            better = translate_db_error(err, shown)
            if better is None:
                raise
            raise better from err
        except RegistryError:
            engine.dispose()
            raise
        if version != cls.SCHEMA_VERSION:
            engine.dispose()
            raise SchemaVersionError(
                f"registry {shown} has schema version {version}, this cpframe understands "
                f"{cls.SCHEMA_VERSION}. Use the cpframe version that created it, or export the "
                "calibrations with that version (`cpframe export-calibs`) and import them into a new repository."
            )
        return reg

    def close(self) -> None:
        self._engine.dispose()

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (for the selection module and benchmarks)."""
        return self._engine

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """Group several registry calls into one write transaction (re-entrant).

        Everything done through this registry inside the ``with`` block commits
        together or not at all.
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self._engine.connect() as conn:
                conn.info[_WRITE] = True
                try:
                    with conn.begin():
                        self._local.conn = conn
                        try:
                            yield conn
                        finally:
                            self._local.conn = None
                finally:
                    conn.info.pop(_WRITE, None)
        except sa.exc.IntegrityError as err:
            # check-then-insert raced with another process (PostgreSQL READ COMMITTED)
            raise RegistryError(
                f"another process changed the registry at the same time ({str(err.orig).strip()[:300]}); "
                "nothing was changed, run the command again."
            ) from err
        except sa.exc.DBAPIError as err:
            # locked, disk full, read-only, damaged, server gone: one line that says what to do
            better = translate_db_error(err, self._shown)
            if better is None:
                raise
            if isinstance(better, ServiceError) and not self._is_sqlite:
                self._engine.dispose()  # drop connections to a restarted server
            raise better from err

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sa.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        try:
            with self._engine.connect() as conn:
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as err:
            better = translate_db_error(err, self._shown)
            if better is None:
                raise
            if isinstance(better, ServiceError) and not self._is_sqlite:
                self._engine.dispose()
            raise better from err

    # -- dimensions -----------------------------------------------------------------------------
    def register_instrument(self, camera: Any) -> bool:
        amp_names = ",".join(camera.amp_names)
        inst = {"name": camera.name, "detector_max": max(camera.detector_ids) + 1, "amp_names": amp_names,
                "doc": camera.doc or ""}
        dets = {
            d.id: {"instrument": camera.name, "id": d.id, "full_name": d.name, "raft": d.raft,
                   "name_in_raft": d.name_in_raft, "purpose": "SCIENCE", "vendor": d.vendor, "serial": d.serial}
            for d in camera.detectors
        }
        filters = {pf: {"instrument": camera.name, "name": pf, "band": band} for pf, band in camera.filters}
        with self.transaction() as conn:
            old = conn.execute(sa.select(s.instrument).where(s.instrument.c.name == camera.name)).mappings().first()
            if old is None:
                conn.execute(sa.insert(s.instrument), [inst])
                conn.execute(sa.insert(s.detector), list(dets.values()))
                if filters:
                    conn.execute(sa.insert(s.physical_filter), list(filters.values()))
                return True
            problems = []
            if old["amp_names"] != amp_names or old["detector_max"] != inst["detector_max"]:
                problems.append(f"amps/detector count differ ({old['detector_max']} vs {inst['detector_max']})")
            have_d = {r["id"]: dict(r) for r in conn.execute(
                sa.select(s.detector).where(s.detector.c.instrument == camera.name)).mappings()}
            for i, rec in dets.items():
                if i in have_d and have_d[i] != rec:
                    problems.append(f"detector {i} is {have_d[i]['full_name']} ({have_d[i]['serial']}), "
                                    f"new definition {rec['full_name']} ({rec['serial']})")
            if set(have_d) != set(dets):
                problems.append(f"detector ids differ ({len(have_d)} registered, {len(dets)} new)")
            have_f = {r["name"]: r["band"] for r in conn.execute(
                sa.select(s.physical_filter).where(s.physical_filter.c.instrument == camera.name)).mappings()}
            for pf, rec in filters.items():
                if pf in have_f and have_f[pf] != rec["band"]:
                    problems.append(f"filter {pf} has band {have_f[pf]}, new definition {rec['band']}")
            if problems:
                raise ConflictingDefinitionError(
                    f"instrument {camera.name} is already registered with a different definition: "
                    + "; ".join(problems[:10]) + ". Use a new repository for a changed camera model."
                )
            new_f = [rec for pf, rec in filters.items() if pf not in have_f]
            if new_f:  # filters may be added to an instrument (new filter installed)
                conn.execute(sa.insert(s.physical_filter), new_f)
                self._known_dims.pop(camera.name, None)
                return True
            return False

    def _instrument_dims(self, conn: sa.Connection, instrument: str) -> tuple[frozenset, frozenset] | None:
        if instrument not in self._known_dims:
            if conn.execute(sa.select(s.instrument.c.name).where(s.instrument.c.name == instrument)).first() is None:
                return None
            dets = frozenset(conn.execute(
                sa.select(s.detector.c.id).where(s.detector.c.instrument == instrument)).scalars())
            filts = frozenset(conn.execute(
                sa.select(s.physical_filter.c.name).where(s.physical_filter.c.instrument == instrument)).scalars())
            self._known_dims[instrument] = (dets, filts)
        return self._known_dims[instrument]

    def _require_instrument(self, conn: sa.Connection, instrument: str) -> tuple[frozenset, frozenset]:
        dims = self._instrument_dims(conn, instrument)
        if dims is None:
            known = sorted(conn.execute(sa.select(s.instrument.c.name)).scalars())
            raise RegistryError(
                f"unknown instrument {instrument!r} (registered: {', '.join(known) or 'none'}); "
                f"run `cpframe register-instrument REPO {instrument}` first."
            )
        return dims

    def insert_exposures(self, records: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
        rows = []
        for r in records:
            ts = r.get("timespan")
            begin, end = (ts.db_begin, ts.db_end) if isinstance(ts, Timespan) else (r["timespan_begin"], r["timespan_end"])
            day_obs, seq_num = int(r["day_obs"]), int(r["seq_num"])
            rows.append({
                "instrument": str(r["instrument"]), "id": int(r.get("id") or day_obs * 100000 + seq_num),
                "obs_id": str(r["obs_id"]), "day_obs": day_obs, "seq_num": seq_num,
                "physical_filter": str(r["physical_filter"]), "observation_type": str(r["observation_type"]),
                "observation_reason": r.get("observation_reason"), "science_program": r.get("science_program"),
                "exposure_time": float(r["exposure_time"]), "dark_time": float(r["dark_time"]),
                "timespan_begin": int(begin), "timespan_end": int(end),
            })
        if not rows:
            return (0, 0)
        inserted = skipped = 0
        with self.transaction() as conn:
            by_inst: dict[str, list[dict]] = defaultdict(list)
            for row in rows:
                by_inst[row["instrument"]].append(row)
            for inst, group in by_inst.items():
                _, filts = self._require_instrument(conn, inst)
                bad = sorted({r["physical_filter"] for r in group} - filts)
                if bad:
                    raise RegistryError(
                        f"unknown physical filter(s) {', '.join(bad)} for {inst} (known: {', '.join(sorted(filts))})."
                    )
                group.sort(key=lambda r: r["id"])
                new, conflicts, seen = [], [], {}
                cols = [s.exposure.c[k] for k in group[0]]
                for chunk in _chunks(group, 20000):
                    existing = {
                        row["id"]: dict(row) for row in conn.execute(
                            sa.select(*cols).where(s.exposure.c.instrument == inst,
                                                   s.exposure.c.id.between(chunk[0]["id"], chunk[-1]["id"]))
                        ).mappings()
                    }
                    for rec in chunk:
                        old = existing.get(rec["id"]) or seen.get(rec["id"])
                        if old is None:
                            new.append(rec)
                            seen[rec["id"]] = rec
                        elif old == rec:
                            skipped += 1
                        else:
                            diff = [k for k in rec if rec[k] != old.get(k)]
                            conflicts.append(f"{rec['id']} ({', '.join(diff)})")
                if conflicts:
                    raise ConflictingDefinitionError(
                        f"{len(conflicts)} {inst} exposure(s) already registered with different values: "
                        + "; ".join(conflicts[:10]) + ("; ..." if len(conflicts) > 10 else "")
                        + ". Exposure records cannot change; check the raw headers."
                    )
                for chunk in _chunks(new, 5000):
                    conn.execute(sa.insert(s.exposure), list(chunk))
                inserted += len(new)
        return inserted, skipped

    def exposure_timespans(self, instrument: str, ids: Sequence[int]) -> dict[int, Timespan]:
        """Timespans of exposures ``ids`` of ``instrument`` (missing ids are absent)."""
        out: dict[int, Timespan] = {}
        ids = sorted({int(i) for i in ids})
        with self._reading() as conn:
            for chunk in _chunks(ids):
                for row in conn.execute(
                    sa.select(s.exposure.c.id, s.exposure.c.timespan_begin, s.exposure.c.timespan_end)
                    .where(s.exposure.c.instrument == instrument, s.exposure.c.id.in_(chunk))
                ):
                    out[row.id] = _span(row.timespan_begin, row.timespan_end)
        return out

    def query_dimension_records(self, element, where="", bind=None, instrument=None):
        from cpframe.repository.query import select_dimension_records

        with self._reading() as conn:
            return select_dimension_records(conn, element, where, bind, instrument)

    def query_data_ids(self, dimensions, where="", bind=None, instrument=None):
        from cpframe.repository.query import select_data_ids

        with self._reading() as conn:
            return select_data_ids(conn, list(dimensions), where, bind, instrument)

    # -- dataset types --------------------------------------------------------------------------
    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        validate_dataset_type_name(dataset_type.name)
        dims = tuple(dataset_type.dimensions)
        bad = [d for d in dims if d not in DATASET_DIMENSIONS]
        if bad or "instrument" not in dims:
            raise UserInputError(
                f"dataset type {dataset_type.name!r} has dimensions {', '.join(dims)}; cpframe datasets use "
                f"instrument plus any of detector, physical_filter, exposure (not {', '.join(bad) or 'without instrument'})."
            )
        order = {k: i for i, k in enumerate(DIMENSION_ORDER)}
        dims = tuple(sorted(dict.fromkeys(dims), key=order.__getitem__))
        dt = DatasetType(dataset_type.name, dims, bool(dataset_type.is_calibration), dataset_type.storage_format)
        with self.transaction() as conn:
            try:
                old = self._dtype(conn, dt.name)[1]
            except UnknownDatasetTypeError:
                conn.execute(sa.insert(s.dataset_type), [{
                    "name": dt.name, "dimensions": ",".join(dims), "is_calibration": dt.is_calibration,
                    "storage_format": dt.storage_format}])
                return True
            if old != dt:
                raise ConflictingDefinitionError(
                    f"dataset type {dt.name!r} is registered as {old}; the new definition {dt} differs. "
                    "Choose another name."
                )
            return False

    def _load_dtypes(self, conn: sa.Connection) -> None:
        for row in conn.execute(sa.select(s.dataset_type)):
            dt = DatasetType(row.name, tuple(row.dimensions.split(",")), bool(row.is_calibration), row.storage_format)
            self._dtypes[row.name] = (row.id, dt)
            self._dtype_names[row.id] = row.name

    def _dtype(self, conn: sa.Connection, name: str) -> tuple[int, DatasetType]:
        if name not in self._dtypes:
            self._load_dtypes(conn)
        if name not in self._dtypes:
            known = ", ".join(sorted(self._dtypes)) or "none"
            raise UnknownDatasetTypeError(f"unknown dataset type {name!r}; registered: {known}.")
        return self._dtypes[name]

    def _dtype_by_id(self, conn: sa.Connection, type_id: int) -> DatasetType:
        if type_id not in self._dtype_names:
            self._load_dtypes(conn)
        return self._dtypes[self._dtype_names[type_id]][1]

    def get_dataset_type(self, name: str) -> DatasetType:
        with self._reading() as conn:
            return self._dtype(conn, name)[1]

    def query_dataset_types(self) -> list[DatasetType]:
        with self._reading() as conn:
            self._load_dtypes(conn)
        return [self._dtypes[n][1] for n in sorted(self._dtypes)]

    # -- collections ----------------------------------------------------------------------------
    def register_collection(self, name: str, type: CollectionType, doc: str = "") -> bool:
        validate_collection_name(name)
        type = CollectionType(type)
        with self.transaction() as conn:
            row = conn.execute(sa.select(s.collection.c.type).where(s.collection.c.name == name)).first()
            if row is not None:
                if row.type != type:
                    raise CollectionTypeError(
                        f"collection {name!r} exists as {CollectionType(row.type).name}; it cannot be registered "
                        f"again as {type.name}. Choose another name."
                    )
                return False
            conn.execute(sa.insert(s.collection), [{"name": name, "type": int(type), "doc": doc}])
            return True

    def _collection(self, conn: sa.Connection, name: str) -> tuple[int, CollectionType]:
        row = conn.execute(sa.select(s.collection.c.id, s.collection.c.type).where(s.collection.c.name == name)).first()
        if row is None:
            raise UnknownCollectionError(
                f"collection {name!r} does not exist; list collections with `cpframe query-collections REPO`."
            )
        return row.id, CollectionType(row.type)

    def _collections(self, conn: sa.Connection, names: Sequence[str]) -> dict[str, tuple[int, CollectionType]]:
        out = {}
        for chunk in _chunks(list(dict.fromkeys(names))):
            for row in conn.execute(
                sa.select(s.collection.c.name, s.collection.c.id, s.collection.c.type)
                .where(s.collection.c.name.in_(chunk))
            ):
                out[row.name] = (row.id, CollectionType(row.type))
        missing = [n for n in names if n not in out]
        if missing:
            raise UnknownCollectionError(
                f"collection(s) {', '.join(repr(m) for m in dict.fromkeys(missing))} do not exist; "
                "list collections with `cpframe query-collections REPO`."
            )
        return out

    def get_collection_type(self, name: str) -> CollectionType:
        with self._reading() as conn:
            return self._collection(conn, name)[1]

    def _children(self, conn: sa.Connection, parent_ids: Iterable[int]) -> dict[int, list[tuple[int, str, CollectionType]]]:
        child = s.collection.alias("child")
        out: dict[int, list] = defaultdict(list)
        ids = list(parent_ids)
        for chunk in _chunks(ids):
            rows = conn.execute(
                sa.select(s.collection_chain.c.parent_id, child.c.id, child.c.name, child.c.type)
                .join(child, child.c.id == s.collection_chain.c.child_id)
                .where(s.collection_chain.c.parent_id.in_(chunk))
                .order_by(s.collection_chain.c.parent_id, s.collection_chain.c.position)
            )
            for r in rows:
                out[r.parent_id].append((r.id, r.name, CollectionType(r.type)))
        return out

    def _flatten(self, conn: sa.Connection, names: Sequence[str]) -> list[tuple[int, str, CollectionType]]:
        """Depth-first search list of non-CHAINED collections (one query per nesting level)."""
        top = self._collections(conn, names)
        children: dict[int, list] = {}
        frontier = [cid for cid, t in top.values() if t == CollectionType.CHAINED]
        while frontier:
            got = self._children(conn, frontier)
            children.update({p: got.get(p, []) for p in frontier})
            frontier = [c[0] for kids in got.values() for c in kids
                        if c[2] == CollectionType.CHAINED and c[0] not in children]
        out: list[tuple[int, str, CollectionType]] = []
        seen: set[int] = set()

        def walk(item, stack):
            cid, name, ctype = item
            if ctype == CollectionType.CHAINED:
                if cid in stack:
                    return
                for kid in children.get(cid, []):
                    walk(kid, stack | {cid})
            elif cid not in seen:
                seen.add(cid)
                out.append(item)

        for n in dict.fromkeys(names):
            cid, ctype = top[n]
            walk((cid, n, ctype), frozenset())
        return out

    def flatten(self, collections: Sequence[str]) -> list[str]:
        with self._reading() as conn:
            return [name for _, name, _ in self._flatten(conn, list(collections))]

    def query_collections(self, pattern: str | Sequence[str] = "*", types=None, flatten_chains=False):
        patterns = [pattern] if isinstance(pattern, str) else list(pattern) or ["*"]
        wanted = {CollectionType(t) for t in types} if types else None
        with self._reading() as conn:
            rows = conn.execute(sa.select(s.collection).order_by(s.collection.c.name)).all()
            names = {r.id: r.name for r in rows}
            exact = [p for p in patterns if not _glob(p)]
            self._collections(conn, exact)  # unknown exact names are an error
            picked = [r for r in rows if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)
                      and (wanted is None or CollectionType(r.type) in wanted)]
            chained = [r.id for r in picked if r.type == CollectionType.CHAINED]
            kids = self._children(conn, chained)
            out = []
            for r in picked:
                children: tuple[str, ...] = ()
                if r.type == CollectionType.CHAINED:
                    children = (tuple(n for _, n, _ in self._flatten(conn, [r.name])) if flatten_chains
                                else tuple(names[k[0]] for k in kids.get(r.id, [])))
                out.append(CollectionInfo(r.name, CollectionType(r.type), children, r.doc))
            return out

    def get_chain(self, name: str) -> tuple[str, ...]:
        with self._reading() as conn:
            cid, ctype = self._collection(conn, name)
            if ctype != CollectionType.CHAINED:
                raise CollectionTypeError(f"collection {name!r} is a {ctype.name} collection, not CHAINED.")
            return tuple(n for _, n, _ in self._children(conn, [cid]).get(cid, []))

    def set_chain(self, parent, children=(), mode="redefine", flatten=False, pop_indices=(), doc="", allow_empty=False):
        if mode not in CHAIN_MODES:
            raise UserInputError(f"unknown chain mode {mode!r}; use one of {', '.join(CHAIN_MODES)}.")
        if mode == "redefine" and not list(children) and not allow_empty:
            # the butler refuses too: an emptied chain makes processing silently fall back to
            # older calibrations further down the search path (issue 11)
            raise UserInputError(
                f"--mode redefine of {parent!r} needs at least one child; an empty chain would make lookups "
                "silently fall through to older calibrations. Name the children, or remove the chain with "
                "`cpframe remove-collections`."
            )
        if flatten and mode in ("remove", "pop"):
            raise UserInputError(f"--flatten cannot be combined with --mode {mode}; it applies to redefine, prepend, extend.")
        validate_collection_name(parent)
        children = list(children)
        with self.transaction() as conn:
            row = conn.execute(sa.select(s.collection.c.id, s.collection.c.type)
                               .where(s.collection.c.name == parent)).first()
            if row is not None and row.type != CollectionType.CHAINED:
                raise CollectionTypeError(
                    f"{parent!r} is a {CollectionType(row.type).name} collection, not CHAINED; "
                    "choose another name for the chain."
                )
            if row is None and mode in ("remove", "pop"):
                raise UnknownCollectionError(f"chain {parent!r} does not exist; nothing to {mode}.")
            current = [] if row is None else [n for _, n, _ in self._children(conn, [row.id]).get(row.id, [])]
            if mode != "pop":
                kids = self._collections(conn, children)
                if parent in children:
                    raise ChainCycleError(f"chain {parent!r} cannot contain itself.")
                if flatten:
                    children = [n for _, n, _ in self._flatten(conn, children)]
                if mode != "remove":
                    for name in children:
                        cid, ctype = kids.get(name) or self._collection(conn, name)
                        if ctype == CollectionType.CHAINED and parent in self._descendants(conn, cid):
                            raise ChainCycleError(
                                f"adding {name!r} to {parent!r} would make a cycle: {name!r} already "
                                f"contains {parent!r} (directly or through nested chains)."
                            )
            new = edit_chain(current, children, mode, pop_indices)
            if row is None:
                pid = conn.execute(sa.insert(s.collection).values(name=parent, type=int(CollectionType.CHAINED), doc=doc)
                                   .returning(s.collection.c.id)).scalar_one()
            else:
                pid = row.id
            self._write_chain(conn, pid, new)
            return tuple(new)

    def _descendants(self, conn: sa.Connection, cid: int) -> set[str]:
        names: set[str] = set()
        frontier, seen = [cid], {cid}
        while frontier:
            got = self._children(conn, frontier)
            frontier = []
            for kids in got.values():
                for kid_id, kid_name, kid_type in kids:
                    names.add(kid_name)
                    if kid_type == CollectionType.CHAINED and kid_id not in seen:
                        seen.add(kid_id)
                        frontier.append(kid_id)
        return names

    def _write_chain(self, conn: sa.Connection, pid: int, children: Sequence[str]) -> None:
        conn.execute(sa.delete(s.collection_chain).where(s.collection_chain.c.parent_id == pid))
        if children:
            ids = self._collections(conn, children)
            conn.execute(sa.insert(s.collection_chain), [
                {"parent_id": pid, "position": i, "child_id": ids[n][0]} for i, n in enumerate(children)])

    def get_parent_chains(self, name: str) -> list[str]:
        with self._reading() as conn:
            cid, _ = self._collection(conn, name)
            return self._parents(conn, [cid]).get(cid, [])

    def _parents(self, conn: sa.Connection, ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for chunk in _chunks(list(ids)):
            for r in conn.execute(
                sa.select(s.collection_chain.c.child_id, s.collection.c.name)
                .join(s.collection, s.collection.c.id == s.collection_chain.c.parent_id)
                .where(s.collection_chain.c.child_id.in_(chunk)).order_by(s.collection.c.name)
            ):
                if r.name not in out[r.child_id]:
                    out[r.child_id].append(r.name)
        return out

    def _detach_from_parents(self, conn: sa.Connection, cid: int) -> None:
        parent_ids = conn.execute(
            sa.select(s.collection_chain.c.parent_id).where(s.collection_chain.c.child_id == cid).distinct()
        ).scalars().all()
        for pid in parent_ids:
            kids = [n for k, n, _ in self._children(conn, [pid]).get(pid, []) if k != cid]
            self._write_chain(conn, pid, kids)

    def remove_collection(self, name: str, remove_from_parents: bool = False) -> None:
        with self.transaction() as conn:
            cid, ctype = self._collection(conn, name)
            if ctype == CollectionType.RUN:
                raise CollectionTypeError(
                    f"{name!r} is a RUN; remove runs with `cpframe remove-runs` (it deletes their files too)."
                )
            self._remove_collection_row(conn, cid, name, remove_from_parents)

    def _remove_collection_row(self, conn: sa.Connection, cid: int, name: str, remove_from_parents: bool) -> None:
        parents = self._parents(conn, [cid]).get(cid, [])
        if parents and not remove_from_parents:
            raise RegistryError(
                f"collection {name!r} is a child of chain(s) {', '.join(parents)}; pass "
                "--remove-from-parents to take it out of them too."
            )
        self._detach_from_parents(conn, cid)
        for table in (s.collection_chain, ):
            conn.execute(sa.delete(table).where(table.c.parent_id == cid))
        conn.execute(sa.delete(s.calib_association).where(s.calib_association.c.collection_id == cid))
        conn.execute(sa.delete(s.tagged_association).where(s.tagged_association.c.collection_id == cid))
        conn.execute(sa.delete(s.run_info).where(s.run_info.c.collection_id == cid))
        conn.execute(sa.delete(s.collection).where(s.collection.c.id == cid))

    def remove_run(self, name: str, remove_from_parents: bool = False) -> list[DatasetRef]:
        """Delete a RUN, its dataset rows and their links; returns the removed refs.

        Files are the ``Repository``'s business (``Repository.remove_runs`` journals them
        in the same transaction).

        Raises
        ------
        UnknownCollectionError, CollectionTypeError
        RegistryError
            The RUN is a chain child and ``remove_from_parents`` is false.
        """
        with self.transaction() as conn:
            cid, ctype = self._collection(conn, name)
            if ctype != CollectionType.RUN:
                raise CollectionTypeError(f"{name!r} is a {ctype.name} collection, not a RUN.")
            refs = self._run_datasets(conn, cid)
            ids = [r.id for r in refs]
            self._delete_datasets(conn, ids)
            self._remove_collection_row(conn, cid, name, remove_from_parents)
            return refs

    # -- datasets -------------------------------------------------------------------------------
    def _ds_select(self, *extra: Any) -> sa.Select:
        d = s.dataset
        return (sa.select(d.c.id, d.c.dataset_type_id, s.collection.c.name.label("run"), d.c.instrument,
                          d.c.detector, d.c.physical_filter, d.c.exposure, d.c.path, d.c.checksum,
                          d.c.data_id_key, *extra)
                .join(s.collection, s.collection.c.id == d.c.run_id))

    def _ref(self, conn: sa.Connection, row: Any, extra: dict | None = None, data_id: DataId | None = None) -> DatasetRef:
        dt = self._dtype_by_id(conn, row.dataset_type_id)
        if data_id is None:
            data_id = DataId({k: getattr(row, k) for k in dt.dimensions})
        return DatasetRef(row.id, dt.name, data_id, row.run, row.path, row.checksum, extra or {})

    def _run_datasets(self, conn: sa.Connection, run_id: int) -> list[DatasetRef]:
        rows = conn.execute(self._ds_select().where(s.dataset.c.run_id == run_id))
        return [self._ref(conn, r) for r in rows]

    def normalize_data_id(self, dataset_type: str, data_id: Mapping[str, Any]) -> DataId:
        """The data ID restricted to the dataset type's dimensions, values typed.

        Raises
        ------
        UserInputError
            A dimension is missing or has a value of the wrong kind.
        UnknownDatasetTypeError
        """
        with self._reading() as conn:
            return self._norm(self._dtype(conn, dataset_type)[1], data_id)

    @staticmethod
    def _norm(dt: DatasetType, data_id: Mapping[str, Any]) -> DataId:
        return normalize_data_id(dt, data_id)


    def _check_dimension_values(self, conn: sa.Connection, data_ids: Iterable[DataId]) -> None:
        problems: list[str] = []
        exposures: dict[str, set[int]] = defaultdict(set)
        seen: set[DataId] = set()
        for did in data_ids:
            if did in seen:
                continue
            seen.add(did)
            inst = did["instrument"]
            dims = self._instrument_dims(conn, inst)
            if dims is None:
                problems.append(f"unknown instrument {inst!r}")
                continue
            if "detector" in did and did["detector"] not in dims[0]:
                problems.append(f"{inst} has no detector {did['detector']}")
            if "physical_filter" in did and did["physical_filter"] not in dims[1]:
                problems.append(f"{inst} has no physical filter {did['physical_filter']!r}")
            if "exposure" in did:
                exposures[inst].add(did["exposure"])
        for inst, ids in exposures.items():
            have: set[int] = set()
            for chunk in _chunks(sorted(ids)):
                have.update(conn.execute(sa.select(s.exposure.c.id).where(
                    s.exposure.c.instrument == inst, s.exposure.c.id.in_(chunk))).scalars())
            problems += [f"{inst} has no exposure {e}" for e in sorted(ids - have)]
        if problems:
            problems = list(dict.fromkeys(problems))
            raise RegistryError(
                "data IDs name dimension values that are not registered: " + "; ".join(problems[:10])
                + ("; ..." if len(problems) > 10 else "")
                + ". Register the instrument (`cpframe register-instrument`) and ingest the exposures first."
            )

    def insert_datasets(self, refs: Sequence[DatasetRef]) -> list[DatasetRef]:
        if not refs:
            return []
        with self.transaction() as conn:
            runs = self._collections(conn, sorted({r.run for r in refs}))
            not_runs = [n for n, (_, t) in runs.items() if t != CollectionType.RUN]
            if not_runs:
                raise CollectionTypeError(
                    f"datasets can only be put into RUN collections; {', '.join(not_runs)} "
                    f"{'is' if len(not_runs) == 1 else 'are'} not RUN."
                )
            out, rows = [], []
            now = tai_now_ns()
            for ref in refs:
                type_id, dt = self._dtype(conn, ref.dataset_type)
                did = self._norm(dt, ref.data_id)
                rid = str(uuid.UUID(str(ref.id))) if ref.id else str(uuid.uuid4())
                new = DatasetRef(rid, dt.name, did, ref.run, ref.path, ref.checksum, dict(ref.extra))
                out.append(new)
                rows.append({
                    "id": rid, "dataset_type_id": type_id, "run_id": runs[ref.run][0], "data_id_key": did.key(),
                    "instrument": did.get("instrument"), "detector": did.get("detector"),
                    "exposure": did.get("exposure"), "physical_filter": did.get("physical_filter"),
                    "path": ref.path, "checksum": ref.checksum, "size_bytes": ref.extra.get("size_bytes"),
                    "ingest_date": now,
                })
            self._check_dimension_values(conn, (r.data_id for r in out))
            conflicts = self._dataset_conflicts(conn, rows, out)
            if conflicts:
                raise DatasetConflictError(
                    f"{len(conflicts)} dataset(s) already exist: " + "; ".join(conflicts[:20])
                    + ("; ..." if len(conflicts) > 20 else "")
                    + ". A dataset type + data ID appears once per RUN; write to a new RUN "
                    "or remove the old one (`cpframe remove-runs`)."
                )
            try:
                for chunk in _chunks(rows, 5000):
                    conn.execute(sa.insert(s.dataset), list(chunk))
            except sa.exc.IntegrityError as err:
                raise DatasetConflictError(
                    f"datasets were inserted concurrently by another process into the same RUN: {err.orig}"
                ) from err
            return out

    def _dataset_conflicts(self, conn: sa.Connection, rows: list[dict], refs: list[DatasetRef]) -> list[str]:
        conflicts = []
        seen: dict[tuple, int] = {}
        ids_seen: set[str] = set()
        for i, row in enumerate(rows):
            k = (row["dataset_type_id"], row["run_id"], row["data_id_key"])
            if k in seen:
                conflicts.append(f"{refs[i].dataset_type} {refs[i].data_id} given twice for RUN {refs[i].run}")
            seen[k] = i
            if row["id"] in ids_seen:
                conflicts.append(f"dataset id {row['id']} given twice")
            ids_seen.add(row["id"])
        groups: dict[tuple[int, int], list[str]] = defaultdict(list)
        for row in rows:
            groups[(row["dataset_type_id"], row["run_id"])].append(row["data_id_key"])
        d = s.dataset
        for (tid, rid), keys in groups.items():
            for chunk in _chunks(keys):
                for r in conn.execute(sa.select(d.c.id, d.c.data_id_key).where(
                        d.c.dataset_type_id == tid, d.c.run_id == rid, d.c.data_id_key.in_(chunk))):
                    ref = refs[seen[(tid, rid, r.data_id_key)]]
                    conflicts.append(f"{ref.dataset_type} {ref.data_id} in RUN {ref.run} (existing id {r.id})")
        for chunk in _chunks(sorted(ids_seen)):
            for r in conn.execute(sa.select(d.c.id).where(d.c.id.in_(chunk))):
                conflicts.append(f"dataset id {r.id} already registered")
        return conflicts

    def get_dataset(self, id: str) -> DatasetRef:
        with self._reading() as conn:
            row = conn.execute(self._ds_select().where(s.dataset.c.id == str(id))).first()
            if row is None:
                raise MissingDatasetError(f"no dataset with id {id}.")
            return self._ref(conn, row)

    def get_datasets(self, ids: Sequence[str]) -> list[DatasetRef]:
        """Refs for ``ids`` in the same order.

        Raises
        ------
        MissingDatasetError
            Lists the ids that do not exist.
        """
        found: dict[str, DatasetRef] = {}
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(map(str, ids)))):
                for row in conn.execute(self._ds_select().where(s.dataset.c.id.in_(chunk))):
                    found[row.id] = self._ref(conn, row)
        missing = [i for i in ids if str(i) not in found]
        if missing:
            raise MissingDatasetError(f"no dataset with id(s) {', '.join(map(str, missing[:10]))}.")
        return [found[str(i)] for i in ids]

    def get_datasets_if_present(self, ids: Sequence[str]) -> list[DatasetRef]:
        """Refs of those ``ids`` that exist (import uses it to skip datasets already present)."""
        out: list[DatasetRef] = []
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(map(str, ids)))):
                out += [self._ref(conn, row) for row in conn.execute(self._ds_select().where(s.dataset.c.id.in_(chunk)))]
        return out

    def remove_datasets(self, ids: Sequence[str]) -> None:
        with self.transaction() as conn:
            self._delete_datasets(conn, list(ids))

    def _delete_datasets(self, conn: sa.Connection, ids: Sequence[str]) -> None:
        for chunk in _chunks(list(ids)):
            conn.execute(sa.delete(s.calib_association).where(s.calib_association.c.dataset_id.in_(chunk)))
            conn.execute(sa.delete(s.tagged_association).where(s.tagged_association.c.dataset_id.in_(chunk)))
            conn.execute(sa.delete(s.dataset).where(s.dataset.c.id.in_(chunk)))

    # -- find-first -----------------------------------------------------------------------------
    def find_dataset(self, dataset_type, data_id, collections, timespan=None):
        return self.find_datasets(dataset_type, [data_id], collections, [timespan])[0]

    def find_datasets(
        self, dataset_type: str, data_ids: Sequence[Mapping[str, Any]], collections: Sequence[str] | str,
        timespans: Sequence[Timespan | None] | Timespan | None = None,
    ) -> list[DatasetRef | None]:
        """Find-first (spec §4) for many data IDs at once; ``None`` where nothing matches.

        A handful of queries whatever the number of data IDs and collections: one to
        resolve the search path per chain nesting level, then one per kind of collection
        (RUN, TAGGED, CALIBRATION) per 900 distinct data IDs.

        Parameters
        ----------
        dataset_type : str
        data_ids : sequence of mapping
            Extra keys (e.g. ``exposure`` for a ``bias``) are ignored.
        collections : sequence of str or str
            Search path; CHAINED collections are expanded depth-first.
        timespans : Timespan, sequence of Timespan or None
            One for all data IDs or one per data ID; needed to match in CALIBRATION
            collections (``None`` matches nothing there).

        Raises
        ------
        AmbiguousCalibrationError
            A data ID's timespan overlaps two validity ranges in one CALIBRATION collection.
        UnknownCollectionError, UnknownDatasetTypeError, UserInputError
        """
        if isinstance(collections, str):
            collections = [collections]
        if timespans is None or isinstance(timespans, Timespan):
            timespans = [timespans] * len(data_ids)
        if len(timespans) != len(data_ids):
            raise UserInputError(f"{len(timespans)} timespans for {len(data_ids)} data IDs; give one per data ID.")
        with self._reading() as conn:
            type_id, dt = self._dtype(conn, dataset_type)
            keys = [self._norm(dt, d) for d in data_ids]
            path = self._flatten(conn, collections)
            by_type: dict[CollectionType, list[int]] = defaultdict(list)
            for cid, _, ctype in path:
                by_type[ctype].append(cid)
            distinct = sorted({k.key() for k in keys})
            runs: dict[tuple[int, str], Any] = {}
            links: dict[tuple[int, str], list] = defaultdict(list)
            d = s.dataset
            for chunk in _chunks(distinct):
                if by_type[CollectionType.RUN]:
                    for row in conn.execute(self._ds_select(d.c.run_id.label("coll")).where(
                            d.c.dataset_type_id == type_id, d.c.data_id_key.in_(chunk),
                            d.c.run_id.in_(by_type[CollectionType.RUN]))):
                        runs[(row.coll, row.data_id_key)] = row
                if by_type[CollectionType.TAGGED]:
                    t = s.tagged_association
                    for row in conn.execute(self._ds_select(t.c.collection_id.label("coll"))
                                            .join(t, t.c.dataset_id == d.c.id).where(
                            t.c.dataset_type_id == type_id, t.c.data_id_key.in_(chunk),
                            t.c.collection_id.in_(by_type[CollectionType.TAGGED]))):
                        runs[(row.coll, row.data_id_key)] = row
                spans = [t for t in timespans if t is not None]
                if by_type[CollectionType.CALIBRATION] and spans:
                    c = s.calib_association
                    lo = min(t.db_begin for t in spans)
                    hi = max(t.db_end for t in spans)
                    for row in conn.execute(self._ds_select(c.c.collection_id.label("coll"), c.c.begin_ns, c.c.end_ns)
                                            .join(c, c.c.dataset_id == d.c.id).where(
                            c.c.dataset_type_id == type_id, c.c.data_id_key.in_(chunk),
                            c.c.collection_id.in_(by_type[CollectionType.CALIBRATION]),
                            c.c.begin_ns < hi, c.c.end_ns > lo)):
                        links[(row.coll, row.data_id_key)].append(row)
            out: list[DatasetRef | None] = []
            for key, span in zip(keys, timespans):
                k = key.key()
                found = None
                for cid, cname, ctype in path:
                    if ctype == CollectionType.CALIBRATION:
                        if span is None:
                            continue
                        hits = [r for r in links.get((cid, k), ()) if r.begin_ns < span.db_end and span.db_begin < r.end_ns]
                        if len(hits) > 1:
                            ranges = ", ".join(str(_span(r.begin_ns, r.end_ns)) for r in hits)
                            raise AmbiguousCalibrationError(
                                f"{dataset_type} {key}: the time {span} overlaps {len(hits)} validity ranges in "
                                f"CALIBRATION collection {cname!r} ({ranges}); decertify or re-certify so that "
                                "ranges do not overlap the exposure."
                            )
                        if hits:
                            r = hits[0]
                            found = self._ref(conn, r, {"timespan": _span(r.begin_ns, r.end_ns), "collection": cname},
                                              key)
                            break
                    else:
                        r = runs.get((cid, k))
                        if r is not None:
                            found = self._ref(conn, r, {"collection": cname}, key)
                            break
                out.append(found)
            return out

    def find_calibration(self, dataset_type, data_id, collections, exposure):
        return self.find_calibrations(dataset_type, [data_id], collections, [exposure])[0]

    def find_calibrations(
        self, dataset_type: str, data_ids: Sequence[Mapping[str, Any]], collections: Sequence[str] | str,
        exposures: Sequence[int | Mapping[str, Any] | None] | None = None,
    ) -> list[DatasetRef | None]:
        """Find-first of a calibration for each data ID at the time of its exposure.

        Parameters
        ----------
        dataset_type : str
        data_ids : sequence of mapping
            Each with ``instrument`` (and the type's other dimensions).
        collections : sequence of str or str
        exposures : sequence, optional
            Per data ID an exposure id (of the data ID's instrument) or an exposure record
            (a mapping with ``timespan``); default: each data ID's ``exposure`` value.

        Raises
        ------
        MissingDatasetError
            An exposure id is not registered.
        AmbiguousCalibrationError, UnknownCollectionError, UnknownDatasetTypeError
        """
        if exposures is None:
            exposures = [d.get("exposure") for d in data_ids]
        if len(exposures) != len(data_ids):
            raise UserInputError(f"{len(exposures)} exposures for {len(data_ids)} data IDs; give one per data ID.")
        wanted: dict[str, set[int]] = defaultdict(set)
        for did, exp in zip(data_ids, exposures):
            if exp is None:
                raise UserInputError(f"data ID {dict(did)} has no exposure; give `exposure` to find a calibration.")
            if not isinstance(exp, Mapping):
                wanted[str(did["instrument"])].add(int(exp))
        known = {inst: self.exposure_timespans(inst, ids) for inst, ids in wanted.items()}
        missing = [f"{inst} {e}" for inst, ids in wanted.items() for e in sorted(ids - set(known[inst]))]
        if missing:
            raise MissingDatasetError(f"exposure(s) not registered: {', '.join(missing[:10])}.")
        spans = []
        for did, exp in zip(data_ids, exposures):
            if isinstance(exp, Mapping):
                ts = exp.get("timespan")
                spans.append(ts if isinstance(ts, Timespan) else _span(exp["timespan_begin"], exp["timespan_end"]))
            else:
                spans.append(known[str(did["instrument"])][int(exp)])
        return self.find_datasets(dataset_type, data_ids, collections, spans)

    def _resolve_types(self, conn: sa.Connection, dataset_type) -> list[tuple[int, DatasetType]]:
        self._load_dtypes(conn)
        if dataset_type is None:
            names = ["*"]
        elif isinstance(dataset_type, str):
            names = [dataset_type]
        else:
            names = list(dataset_type) or ["*"]
        out = {}
        for n in names:
            if _glob(n):
                out.update({m: self._dtypes[m] for m in self._dtypes if fnmatch.fnmatchcase(m, n)})
            else:
                out[n] = self._dtype(conn, n)
        return [out[n] for n in sorted(out)]

    def _resolve_collections(self, conn: sa.Connection, collections, find_first: bool) -> list[str]:
        names = [collections] if isinstance(collections, str) else list(collections)
        if not names:
            raise UserInputError("no collections given; name at least one collection (globs allowed without --find-first).")
        if find_first and any(_glob(n) for n in names):
            raise UserInputError(
                f"--find-first needs an ordered list of collections, not patterns ({', '.join(names)})."
            )
        out: list[str] = []
        known: list[str] | None = None  # every collection name, read once for all patterns
        for n in names:
            if _glob(n):
                if known is None:
                    known = sorted(conn.execute(sa.select(s.collection.c.name)).scalars().all())
                out += [m for m in known if fnmatch.fnmatchcase(m, n)]
            else:
                out.append(n)
        return list(dict.fromkeys(out))

    def query_datasets(self, dataset_type=None, collections="*", where="", bind=None, find_first=False):
        """Datasets of the given type(s) in the collections, each dataset once (see ``Registry``).

        A dataset reached through several collections is listed once, with
        ``extra['collection']`` the first of them in search order (and ``extra['timespan']``
        when that is a CALIBRATION collection); :meth:`query_certifications` lists every
        validity range.  Find-first through a CALIBRATION collection holding several ranges
        for one data ID raises ``AmbiguousCalibrationError`` (use :meth:`find_calibrations`).
        """
        with self._reading() as conn:
            types = self._resolve_types(conn, dataset_type)
            names = self._resolve_collections(conn, collections, find_first)
            path = self._flatten(conn, names) if names else []
            if not types or not path:
                return []
            type_ids = [t[0] for t in types]
            order = {cid: i for i, (cid, _, _) in enumerate(path)}
            cname = {cid: n for cid, n, _ in path}
            ids = defaultdict(list)
            for cid, _, ctype in path:
                ids[ctype].append(cid)
            d = s.dataset
            stmts = []
            if ids[CollectionType.RUN]:
                stmts.append(self._ds_select(d.c.run_id.label("coll"), sa.literal(None).label("begin_ns"),
                                             sa.literal(None).label("end_ns"))
                             .where(d.c.run_id.in_(ids[CollectionType.RUN]), d.c.dataset_type_id.in_(type_ids)))
            if ids[CollectionType.TAGGED]:
                t = s.tagged_association
                stmts.append(self._ds_select(t.c.collection_id.label("coll"), sa.literal(None).label("begin_ns"),
                                             sa.literal(None).label("end_ns"))
                             .join(t, t.c.dataset_id == d.c.id)
                             .where(t.c.collection_id.in_(ids[CollectionType.TAGGED]), d.c.dataset_type_id.in_(type_ids)))
            if ids[CollectionType.CALIBRATION]:
                c = s.calib_association
                stmts.append(self._ds_select(c.c.collection_id.label("coll"), c.c.begin_ns, c.c.end_ns)
                             .join(c, c.c.dataset_id == d.c.id)
                             .where(c.c.collection_id.in_(ids[CollectionType.CALIBRATION]),
                                    d.c.dataset_type_id.in_(type_ids)))
            rows = []
            for stmt in stmts:
                if where and where.strip():
                    from cpframe.repository.query import filter_datasets

                    stmt = filter_datasets(stmt, s.dataset, where, bind)
                rows += conn.execute(stmt).all()
            rows.sort(key=lambda r: order[r.coll])
            out: list[DatasetRef] = []
            if find_first:
                best: dict[tuple[int, str], list] = {}
                for r in rows:
                    k = (r.dataset_type_id, r.data_id_key)
                    if k not in best:
                        best[k] = [r]
                    elif best[k][0].coll == r.coll and r.begin_ns is not None:
                        best[k].append(r)
                for k, group in best.items():
                    if len(group) > 1:
                        r = group[0]
                        ranges = ", ".join(str(_span(g.begin_ns, g.end_ns)) for g in group)
                        raise AmbiguousCalibrationError(
                            f"{self._dtype_by_id(conn, r.dataset_type_id).name} {r.data_id_key}: CALIBRATION "
                            f"collection {cname[r.coll]!r} has {len(group)} validity ranges ({ranges}); "
                            "find-first without a time cannot choose. Use find_calibration with an exposure, "
                            "or query without --find-first."
                        )
                rows = [g[0] for g in best.values()]
            seen = set()
            for r in rows:  # one entry per dataset, from the first collection in search order
                k = r.id
                if k in seen:
                    continue
                seen.add(k)
                extra = {"collection": cname[r.coll]}
                if r.begin_ns is not None:
                    extra["timespan"] = _span(r.begin_ns, r.end_ns)
                out.append(self._ref(conn, r, extra))
            out.sort(key=lambda ref: (ref.dataset_type, ref.run, _sort_key(ref.data_id),
                                      (ref.extra.get("timespan") or Timespan()).db_begin))
            return out

    # -- certification ----------------------------------------------------------------------------
    def certify(self, collection: str, refs: Sequence[DatasetRef], timespan: Timespan) -> None:
        validate_collection_name(collection)
        timespan.require_not_empty()
        with self.transaction() as conn:
            if not self._is_sqlite:
                conn.exec_driver_sql("LOCK TABLE calib_association IN SHARE ROW EXCLUSIVE MODE")
            row = conn.execute(sa.select(s.collection.c.id, s.collection.c.type)
                               .where(s.collection.c.name == collection)).first()
            if row is not None and row.type != CollectionType.CALIBRATION:
                raise CollectionTypeError(
                    f"cannot certify into {collection!r}: it is a {CollectionType(row.type).name} collection, "
                    "not CALIBRATION. Choose another output collection name."
                )
            ids = list(dict.fromkeys(str(r.id) for r in refs))
            rows = {}
            for chunk in _chunks(ids):
                for r in conn.execute(sa.select(s.dataset.c.id, s.dataset.c.dataset_type_id, s.dataset.c.data_id_key)
                                      .where(s.dataset.c.id.in_(chunk))):
                    rows[r.id] = r
            missing = [i for i in ids if i not in rows]
            if missing:
                raise MissingDatasetError(f"cannot certify: no dataset with id(s) {', '.join(missing[:10])}.")
            not_cal = sorted({self._dtype_by_id(conn, r.dataset_type_id).name for r in rows.values()
                              if not self._dtype_by_id(conn, r.dataset_type_id).is_calibration})
            if not_cal:
                raise RegistryError(
                    f"dataset type(s) {', '.join(not_cal)} are not calibrations and cannot be certified; "
                    "only calibration types (bias, dark, flat, defects, ptc, ...) can."
                )
            if row is None:
                cid = conn.execute(sa.insert(s.collection).values(
                    name=collection, type=int(CollectionType.CALIBRATION), doc="")
                    .returning(s.collection.c.id)).scalar_one()
            else:
                cid = row.id
            problems = []
            first: dict[tuple[int, str], str] = {}
            for r in rows.values():
                k = (r.dataset_type_id, r.data_id_key)
                if k in first:
                    problems.append(f"{self._dtype_by_id(conn, k[0]).name} {k[1]}: datasets {first[k]} and {r.id} "
                                    "are both given")
                first[k] = r.id
            c = s.calib_association
            by_type: dict[int, list[str]] = defaultdict(list)
            for tid, key in first:
                by_type[tid].append(key)
            for tid, keys in by_type.items():
                for chunk in _chunks(keys):
                    for r in conn.execute(sa.select(c.c.dataset_id, c.c.data_id_key, c.c.begin_ns, c.c.end_ns).where(
                            c.c.collection_id == cid, c.c.dataset_type_id == tid, c.c.data_id_key.in_(chunk),
                            c.c.begin_ns < timespan.db_end, c.c.end_ns > timespan.db_begin)):
                        problems.append(
                            f"{self._dtype_by_id(conn, tid).name} {r.data_id_key}: {_span(r.begin_ns, r.end_ns)} "
                            f"(dataset {r.dataset_id})"
                        )
            if problems:
                raise ValidityOverlapError(
                    f"cannot certify into {collection!r} for {timespan}: {len(problems)} overlapping validity "
                    "range(s) already there: " + "; ".join(problems[:20]) + ("; ..." if len(problems) > 20 else "")
                    + ". Nothing was certified. Certify into a new CALIBRATION collection (and prepend it to the "
                    "chain), or decertify the old range first."
                )
            links = [{"collection_id": cid, "dataset_id": r.id, "dataset_type_id": r.dataset_type_id,
                      "data_id_key": r.data_id_key, "begin_ns": timespan.db_begin, "end_ns": timespan.db_end}
                     for r in rows.values()]
            for chunk in _chunks(links, 5000):
                conn.execute(sa.insert(c), list(chunk))

    def decertify(self, collection, dataset_type, timespan, data_ids=None):
        with self.transaction() as conn:
            cid, ctype = self._collection(conn, collection)
            if ctype != CollectionType.CALIBRATION:
                raise CollectionTypeError(f"{collection!r} is a {ctype.name} collection, not CALIBRATION.")
            tid, dt = self._dtype(conn, dataset_type)
            c = s.calib_association
            stmt = sa.select(c).where(c.c.collection_id == cid, c.c.dataset_type_id == tid,
                                      c.c.begin_ns < timespan.db_end, c.c.end_ns > timespan.db_begin)
            rows = []
            if data_ids is None:
                rows = conn.execute(stmt).all()
            else:
                keys = sorted({self._norm(dt, d).key() for d in data_ids})
                for chunk in _chunks(keys):
                    rows += conn.execute(stmt.where(c.c.data_id_key.in_(chunk))).all()
            b, e = timespan.db_begin, timespan.db_end
            for r in rows:
                keep = []
                if r.begin_ns < b:
                    keep.append((r.begin_ns, b))
                if r.end_ns > e:
                    keep.append((e, r.end_ns))
                conn.execute(sa.delete(c).where(c.c.id == r.id))
                if keep:
                    conn.execute(sa.insert(c), [{
                        "collection_id": cid, "dataset_id": r.dataset_id, "dataset_type_id": tid,
                        "data_id_key": r.data_id_key, "begin_ns": kb, "end_ns": ke} for kb, ke in keep])
            return len(rows)

    def query_certifications(self, collection: str, dataset_type: str | None = None) -> list[DatasetRef]:
        with self._reading() as conn:
            cid, ctype = self._collection(conn, collection)
            if ctype != CollectionType.CALIBRATION:
                raise CollectionTypeError(f"{collection!r} is a {ctype.name} collection, not CALIBRATION.")
            c = s.calib_association
            stmt = self._ds_select(c.c.begin_ns, c.c.end_ns).join(c, c.c.dataset_id == s.dataset.c.id).where(
                c.c.collection_id == cid)
            if dataset_type is not None:
                stmt = stmt.where(c.c.dataset_type_id == self._dtype(conn, dataset_type)[0])
            refs = [self._ref(conn, r, {"timespan": _span(r.begin_ns, r.end_ns), "collection": collection})
                    for r in conn.execute(stmt)]
        refs.sort(key=lambda r: (r.dataset_type, _sort_key(r.data_id), r.extra["timespan"].db_begin))
        return refs

    def certified_in(self, dataset_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        c = s.calib_association
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(map(str, dataset_ids)))):
                for r in conn.execute(sa.select(c.c.dataset_id, s.collection.c.name).distinct()
                                      .join(s.collection, s.collection.c.id == c.c.collection_id)
                                      .where(c.c.dataset_id.in_(chunk))):
                    out[r.dataset_id].append(r.name)
        return {k: sorted(v) for k, v in out.items()}

    # -- run info -------------------------------------------------------------------------------
    def set_run_info(self, run: str, info: Mapping[str, Any]) -> None:
        with self.transaction() as conn:
            cid, ctype = self._collection(conn, run)
            if ctype != CollectionType.RUN:
                raise CollectionTypeError(f"{run!r} is a {ctype.name} collection; provenance is kept for RUNs.")
            old = conn.execute(sa.select(s.run_info.c.info).where(s.run_info.c.collection_id == cid)).scalar()
            merged = {**(json.loads(old) if old else {}), **dict(info)}
            text = json.dumps(merged, sort_keys=True, default=str)
            if old is None:
                conn.execute(sa.insert(s.run_info), [{"collection_id": cid, "info": text}])
            else:
                conn.execute(sa.update(s.run_info).where(s.run_info.c.collection_id == cid).values(info=text))

    def get_run_info(self, run: str) -> dict[str, Any]:
        with self._reading() as conn:
            cid, _ = self._collection(conn, run)
            old = conn.execute(sa.select(s.run_info.c.info).where(s.run_info.c.collection_id == cid)).scalar()
            return json.loads(old) if old else {}

    # -- datastore journal (used by cpframe.repository.repo) -------------------------------------------------
    def add_pending_files(self, paths: Sequence[str], owner: str) -> None:
        """Journal ``paths`` as being written (committed before the files move into place).

        Raises
        ------
        DatasetConflictError
            Another writer is writing one of these paths right now.
        """
        if not paths:
            return
        now = tai_now_ns()
        p = s.pending_file
        with self.transaction() as conn:
            busy = []
            for chunk in _chunks(list(paths)):
                busy += conn.execute(sa.select(p.c.path, p.c.owner).where(p.c.path.in_(chunk))).all()
            if busy:
                raise DatasetConflictError(
                    "another writer is writing the same file(s): "
                    + "; ".join(f"{b.path} (by {b.owner})" for b in busy[:10])
                    + ". Wait for it to finish, or run `cpframe` again to repair if it crashed."
                )
            for chunk in _chunks([{"path": x, "created_ns": now, "owner": owner} for x in paths], 5000):
                conn.execute(sa.insert(p), list(chunk))

    def remove_pending_files(self, paths: Sequence[str]) -> None:
        """Drop journal rows (in the caller's transaction when inside :meth:`transaction`)."""
        with self.transaction() as conn:
            for chunk in _chunks(list(paths)):
                conn.execute(sa.delete(s.pending_file).where(s.pending_file.c.path.in_(chunk)))

    def pending_files(self) -> list[dict[str, Any]]:
        """Journal rows: ``path``, ``created_ns``, ``owner``."""
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(sa.select(s.pending_file).order_by(s.pending_file.c.path)).mappings()]

    def paths_in_use(self, paths: Sequence[str]) -> set[str]:
        """The subset of ``paths`` that dataset rows point at."""
        out: set[str] = set()
        with self._reading() as conn:
            for chunk in _chunks(list(paths)):
                out.update(conn.execute(sa.select(s.dataset.c.path).where(s.dataset.c.path.in_(chunk))).scalars())
        return out

    # -- RUN locks (one writer per RUN) ------------------------------------------------------------
    def _lock_table(self, conn: sa.Connection) -> sa.Table:
        s.run_lock.create(conn, checkfirst=True)  # repositories created before run locks existed
        return s.run_lock

    def get_run_lock(self, run: str) -> dict[str, Any] | None:
        """The lock row of ``run`` (``owner``, ``command``, ``started_ns``, ``heartbeat_ns``), or None."""
        with self._reading() as conn:
            if not sa.inspect(conn).has_table(s.run_lock.name):
                return None
            row = conn.execute(sa.select(s.run_lock).where(s.run_lock.c.run == run)).mappings().first()
            return dict(row) if row else None

    def acquire_run_lock(self, run: str, owner: str, command: str = "", *,
                         take_over: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """Take the lock of ``run`` for ``owner``; returns the previous (taken-over) row or None.

        Parameters
        ----------
        take_over : callable, optional
            Called with the current row when another owner holds the lock; returns True to
            take it over (the caller decides that the owner is gone).  Without it a held lock
            is never taken.

        Raises
        ------
        RunLockedError
            Another owner holds the lock (``err.lock`` is its row).
        """
        now = tai_now_ns()
        with self.transaction() as conn:
            t = self._lock_table(conn)
            if not self._is_sqlite:
                conn.exec_driver_sql("LOCK TABLE run_lock IN SHARE ROW EXCLUSIVE MODE")
            row = conn.execute(sa.select(t).where(t.c.run == run)).mappings().first()
            previous = dict(row) if row else None
            if previous is not None and previous["owner"] != owner:
                if take_over is None or not take_over(previous):
                    err = RunLockedError(f"RUN {run!r} is locked by {previous['owner']}")
                    err.lock = previous
                    raise err
                conn.execute(sa.delete(t).where(t.c.run == run))
            elif previous is not None:
                conn.execute(sa.update(t).where(t.c.run == run).values(heartbeat_ns=now))
                return None
            conn.execute(sa.insert(t), [{"run": run, "owner": owner, "command": command[:2000], "started_ns": now,
                                         "heartbeat_ns": now}])
            return previous

    def heartbeat_run_lock(self, run: str, owner: str) -> bool:
        """Refresh the heartbeat of a lock ``owner`` holds; False if it no longer holds it."""
        with self.transaction() as conn:
            t = self._lock_table(conn)
            n = conn.execute(sa.update(t).where(t.c.run == run, t.c.owner == owner)
                             .values(heartbeat_ns=tai_now_ns())).rowcount
        return bool(n)

    def release_run_lock(self, run: str, owner: str) -> None:
        """Drop the lock of ``run`` if ``owner`` holds it."""
        with self.transaction() as conn:
            t = self._lock_table(conn)
            conn.execute(sa.delete(t).where(t.c.run == run, t.c.owner == owner))

    def run_locks(self) -> list[dict[str, Any]]:
        """Every lock row (for ``Repository.open``'s report and ``remove-runs``)."""
        with self._reading() as conn:
            if not sa.inspect(conn).has_table(s.run_lock.name):
                return []
            return [dict(r) for r in conn.execute(sa.select(s.run_lock).order_by(s.run_lock.c.run)).mappings()]

    # -- export / import support ------------------------------------------------------------------
    def dimension_rows(self, element: str, instruments: Iterable[str], exposure_ids: Iterable[int] = ()) -> list[dict]:
        """Raw dimension rows for export (``instrument``, ``detector``, ``physical_filter``, ``exposure``)."""
        table = {"instrument": s.instrument, "detector": s.detector, "physical_filter": s.physical_filter,
                 "exposure": s.exposure}[element]
        insts = sorted(set(instruments))
        col = table.c.name if element == "instrument" else table.c.instrument
        with self._reading() as conn:
            if element == "exposure":
                ids = sorted(set(exposure_ids))
                rows = []
                for chunk in _chunks(ids):
                    rows += conn.execute(sa.select(table).where(col.in_(insts), table.c.id.in_(chunk))).mappings().all()
            else:
                rows = conn.execute(sa.select(table).where(col.in_(insts))).mappings().all()
        return [{str(k): v for k, v in r.items()} for r in rows]

    def insert_dimension_rows(self, element: str, rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
        """Insert raw dimension rows (import); identical existing rows are skipped.

        Raises
        ------
        ConflictingDefinitionError
            A row with the same key exists with other values.
        """
        table = {"instrument": s.instrument, "detector": s.detector, "physical_filter": s.physical_filter,
                 "exposure": s.exposure}[element]
        pk = [c.name for c in table.primary_key.columns]
        new, same, conflicts = [], 0, []
        with self.transaction() as conn:
            for r in rows:
                r = {c.name: r.get(c.name) for c in table.columns}
                old = conn.execute(sa.select(table).where(*[table.c[k] == r[k] for k in pk])).mappings().first()
                if old is None:
                    new.append(r)
                elif {k: old[k] for k in r} == r:
                    same += 1
                else:
                    conflicts.append(", ".join(f"{k}={r[k]}" for k in pk))
            if conflicts:
                raise ConflictingDefinitionError(
                    f"{element} record(s) already exist with different values: {'; '.join(conflicts[:10])}. "
                    f"Pass -s {element} to keep the existing records."
                )
            for chunk in _chunks(new, 5000):
                conn.execute(sa.insert(table), list(chunk))
            self._known_dims.clear()
        return len(new), same

    def insert_calib_links(self, collection: str, links: Sequence[tuple[str, Timespan]]) -> None:
        """Certify (dataset id, validity range) pairs with possibly different ranges (import)."""
        by_span: dict[Timespan, list[str]] = defaultdict(list)
        for ds_id, span in links:
            by_span[span].append(ds_id)
        with self.transaction():
            self.register_collection(collection, CollectionType.CALIBRATION)
            for span, ids in by_span.items():
                self.certify(collection, [DatasetRef(i, "", DataId(), "") for i in ids], span)


def _sort_key(data_id: Mapping[str, Any]) -> tuple:
    return tuple((k, str(v).zfill(20) if isinstance(v, int) else str(v)) for k, v in data_id.items())


def describe_span(span: Timespan) -> str:
    """Text of a validity range for tables: ``begin .. end`` with ``-inf``/``+inf``."""
    return f"{ns_to_iso(span.begin_ns) or '-inf'} .. {ns_to_iso(span.end_ns) or '+inf'}"


def normalize_data_id(dt: DatasetType, data_id: Mapping[str, Any]) -> DataId:
    """The data ID restricted to ``dt``'s dimensions with values typed (int or str).

    Raises
    ------
    UserInputError
        A dimension is missing or a value has the wrong kind.

    Examples
    --------
    >>> normalize_data_id(DatasetType("bias", ("instrument", "detector"), True), {"instrument": "X", "detector": "4", "exposure": 1})
    DataId({'instrument': 'X', 'detector': 4})
    """
    missing = [d for d in dt.dimensions if d not in data_id or data_id[d] is None]
    if missing:
        raise UserInputError(
            f"data ID {dict(data_id)} lacks {', '.join(missing)}; dataset type {dt.name!r} needs "
            f"{', '.join(dt.dimensions)}."
        )
    out = {}
    for d in dt.dimensions:
        v = data_id[d]
        if _DIM_KIND[d] is int:
            try:
                if isinstance(v, bool) or int(v) != float(v):
                    raise ValueError
                v = int(v)
            except (TypeError, ValueError):
                raise UserInputError(f"data ID value {d}={v!r} is not an integer.") from None
        else:
            v = str(v)
        out[d] = v
    return DataId(out)
