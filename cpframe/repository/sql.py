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
import json
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa

from cpframe.core.errors import (
    CollectionTypeError,
    ConflictingDefinitionError,
    DatasetConflictError,
    ExportError,
    RegistryError,
    RunLockedError,
    SchemaVersionError,
    ServiceError,
    UnknownDatasetTypeError,
    UserInputError,
)
from cpframe.core.model import (
    DIMENSION_ORDER,
    CollectionType,
    DataId,
    DatasetRef,
    DatasetType,
    Timespan,
    tai_now_ns,
)
from cpframe.repository import schema as s
from cpframe.repository.base import DimensionRecord, Registry
from cpframe.repository.names import validate_dataset_type_name
from cpframe.repository.sql_collections import _SqlCollections
from cpframe.repository.sql_common import (  # noqa: F401  (re-exported: callers import them from here)
    _WRITE,
    DATASET_DIMENSIONS,
    MSG_FIRST_CHILD,
    MSG_NO_INPUT,
    _chunks,
    _service_errors,
    _span,
    describe_span,
    make_engine,
    normalize_data_id,
    translate_db_error,
)
from cpframe.repository.sql_datasets import _SqlDatasets

if TYPE_CHECKING:
    from cpframe.camera.models import Camera

__all__ = ["SqlRegistry", "make_engine", "normalize_data_id", "describe_span", "DATASET_DIMENSIONS"]


class SqlRegistry(_SqlCollections, _SqlDatasets, Registry):
    """Registry on SQLAlchemy; open with :meth:`create` or :meth:`open`.

    Collections/chains live in :mod:`cpframe.repository.sql_collections`, datasets,
    find-first and certification in :mod:`cpframe.repository.sql_datasets` (mixins);
    this class holds the connection, dimensions, dataset types, run info and journal.

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
    def register_instrument(self, camera: "Camera") -> bool:
        amp_names = ",".join(camera.amp_names)
        inst = {"name": camera.name, "detector_max": max(camera.detector_ids) + 1, "amp_names": amp_names,
                "doc": camera.doc or ""}
        dets = {
            d.id: {"instrument": camera.name, "id": d.id, "full_name": d.name, "raft": d.raft,
                   "name_in_raft": d.name_in_raft, "purpose": getattr(d, "purpose", "SCIENCE"), "vendor": d.vendor,
                   "serial": d.serial}
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

    def insert_exposures(self, records: Iterable[DimensionRecord]) -> tuple[int, int]:
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
                    known = sorted(filts)
                    shown = ", ".join(known[:15]) + (f", ... ({len(known)} in all)" if len(known) > 15 else "")
                    raise RegistryError(f"unknown physical filter(s) {', '.join(bad)} for {inst} (known: {shown}).")
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

    def insert_dimension_rows(self, element: str, rows: Sequence[DimensionRecord]) -> tuple[int, int]:
        """Insert raw dimension rows (import); identical existing rows are skipped.

        Raises
        ------
        ConflictingDefinitionError
            A row with the same key exists with other values.
        """
        table = {"instrument": s.instrument, "detector": s.detector, "physical_filter": s.physical_filter,
                 "exposure": s.exposure}[element]
        pk = [c.name for c in table.primary_key.columns]
        cols = {c.name for c in table.columns}
        needed = {c.name for c in table.columns if not c.nullable and c.server_default is None}
        problems = []
        for r in rows:
            key = ", ".join(f"{k}={r.get(k)}" for k in pk)
            missing = sorted(k for k in needed if r.get(k) is None)
            extra = sorted(set(r) - cols)
            if missing:
                problems.append(f"{element} record ({key}) has no {', '.join(missing)}")
            if extra:
                problems.append(f"{element} record ({key}) has unknown field(s) {', '.join(extra)}")
        if problems:
            raise ExportError(
                "; ".join(problems[:10]) + f". cpframe's {element} records have the fields "
                + ", ".join(c.name for c in table.columns) + "; nothing was imported."
            )
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


