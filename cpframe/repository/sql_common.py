"""Helpers shared by the parts of :class:`cpframe.repository.sql.SqlRegistry`: the engine
(SQLite pragmas, PostgreSQL errors as ``ServiceError``), chunking of ``IN`` lists, data ID
normalisation, and the constants and messages the registry parts share.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy import event

from cpframe.core.errors import (
    DiskFullError,
    RegistryError,
    SelectionError,
    ServiceError,
    UserInputError,
)
from cpframe.core.model import (
    NS_MAX,
    NS_MIN,
    DataId,
    DatasetType,
    Timespan,
    ns_to_iso,
)
from cpframe.repository.base import DataIdLike

#: Dimensions a dataset type may use (each is a column of the ``dataset`` table).
DATASET_DIMENSIONS = ("instrument", "detector", "physical_filter", "exposure")
_DIM_KIND = {"instrument": str, "detector": int, "physical_filter": str, "exposure": int}
_CHUNK = 900  # bound parameters per IN (...) list
_WRITE = "cpframe_write"

MSG_FIRST_CHILD = "only its first child {child!r} is searched; pass --search-all-inputs to search the whole chain"
MSG_NO_INPUT = "no {dataset_type!r} datasets in {collection!r}"


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
        try:
            return sa.create_engine(u, pool_pre_ping=True)
        except ModuleNotFoundError as err:  # the driver is an extra: pip install 'cpframe[postgres]'
            raise ServiceError(
                f"registry {u.render_as_string(hide_password=True)} needs the Python package {err.name!r}, "
                "which is not installed. Install it with: python3 -m pip install -e '.[postgres]'"
            ) from None
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
    raw = str(getattr(err, "orig", None) or err).strip()
    text = raw.splitlines()[0] if raw else type(err).__name__
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
    if "too large" in low or "too many terms" in low or "too complex" in low or "stack depth" in low:
        return SelectionError(
            f"the selection is too large for the registry database ({text}); use IN (...) lists or ranges "
            "(a..b) instead of long OR chains. Nothing was changed."
        )
    if "locked" in low or "busy" in low:
        return ServiceError(
            f"the registry {shown} stayed locked by another process for longer than the busy timeout "
            "(cpframe.registry.busy-timeout-s); retry, or raise the timeout "
            "(DASK_CPFRAME__REGISTRY__BUSY_TIMEOUT_S=300). Nothing was changed."
        )
    from_sqlite = type(getattr(err, "orig", None)).__module__.startswith("sqlite3")
    if from_sqlite and not ("unable to open" in low or "disk i/o" in low):
        return None  # another SQLite error (no such table...) is a bug: keep its traceback
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

def _sort_key(data_id: DataIdLike) -> tuple:
    return tuple((k, str(v).zfill(20) if isinstance(v, int) else str(v)) for k, v in data_id.items())


def describe_span(span: Timespan) -> str:
    """Text of a validity range for tables: ``begin .. end`` with ``-inf``/``+inf``."""
    return f"{ns_to_iso(span.begin_ns) or '-inf'} .. {ns_to_iso(span.end_ns) or '+inf'}"


def normalize_data_id(dt: DatasetType, data_id: DataIdLike) -> DataId:
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


def datasets_exist_message(conflicts: Sequence[str]) -> str:
    """The message of a :class:`DatasetConflictError` listing (the first 20) existing datasets."""
    return (f"{len(conflicts)} dataset(s) already exist: " + "; ".join(conflicts[:20])
            + ("; ..." if len(conflicts) > 20 else "")
            + ". A dataset type + data ID appears once per RUN; write to a new RUN or remove the old one "
            "(`cpframe remove-runs`).")
