"""Helpers shared by the parts of :class:`cpframe.repository.sql.SqlRegistry`: the engine
(SQLite pragmas, PostgreSQL errors as ``ServiceError``), chunking of ``IN`` lists, data ID
normalisation, and the constants and messages the registry parts share.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy import event

from cpframe.core.errors import (
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

#: Dimensions a dataset type may use (each is a column of the ``dataset`` table).
DATASET_DIMENSIONS = ("instrument", "detector", "physical_filter", "exposure")
_DIM_KIND = {"instrument": str, "detector": int, "physical_filter": str, "exposure": int}
_CHUNK = 900  # bound parameters per IN (...) list
_WRITE = "cpframe_write"

MSG_FIRST_CHILD = "only its first child {child!r} is searched; pass --search-all-inputs to search the whole chain"
MSG_NO_INPUT = "no {dataset_type!r} datasets in {collection!r}"


def make_engine(url: str, busy_timeout_s: float = 60.0) -> sa.Engine:
    """Engine for a registry URL with cpframe's connection settings.

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:////abs/path.sqlite3`` or ``postgresql+psycopg://...``).
    busy_timeout_s : float
        SQLite: seconds a writer waits for another process's lock.
    """
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite":
        return sa.create_engine(u, pool_pre_ping=True)
    engine = sa.create_engine(u, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through every test
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
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


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _span(begin: int, end: int) -> Timespan:
    return Timespan(None if begin <= NS_MIN else begin, None if end >= NS_MAX else end)


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")

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
