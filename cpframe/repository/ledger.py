"""The approval ledger: append-only, hash-chained rows in the registry database.

Every state transition of a calibration set (``cpframe.campaign.lifecycle``) is one row of
the ``lifecycle_event`` table (``cpframe.repository.schema``): who, when, why, the report it
was judged on (path and SHA-256), the ticket, and a JSON ``detail`` (waivers, override,
evidence, site).  Rows are never updated or deleted:

* each row stores the hash of the row before it (``prev_hash``) and its own ``hash`` =
  SHA-256 of the previous hash and its canonical JSON content, so editing, deleting or
  re-ordering a row breaks the chain, and :meth:`Ledger.verify` names the first broken row;
* ``prev_hash`` is UNIQUE, so two writers appending at once cannot fork the chain: the second
  one's insert fails and is retried on top of the first;
* the database itself refuses UPDATE and DELETE on the table (triggers, SQLite and
  PostgreSQL), so an accident through SQL is stopped before the hash check has to catch it.

Cutting rows off the *end* leaves a valid shorter chain; :meth:`Ledger.head` gives the hash
of the last row, to quote in the approval ticket (an outside anchor, docs/lifecycle.md).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cpframe.core.errors import LedgerError, LedgerTamperedError, RegistryError
from cpframe.repository import schema as s

__all__ = ["GENESIS", "Ledger", "LedgerRow", "MSG_TAMPERED", "row_hash"]

#: ``prev_hash`` of the first row.
GENESIS = "0" * 64
#: One-line message of a broken chain (tests check its words).
MSG_TAMPERED = (
    "ledger row {id} (set {set_name!r}, state {state!r}) does not match its hash chain ({why}): the ledger "
    "was changed outside cpframe. Nothing was written; restore the registry from a backup and compare "
    "with `cpframe ledger REPO --verify`."
)
_FIELDS = ("set_name", "state", "previous", "site", "who", "at", "why", "report", "report_sha256", "ticket",
           "detail")


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row (a transition of a set, or a per-site distribution step)."""

    id: int
    set_name: str
    state: str
    previous: str
    site: str
    """Distribution site, ``""`` for a transition of the set itself."""
    who: str
    at: str
    """ISO 8601 UTC time, seconds."""
    why: str
    report: str
    report_sha256: str
    ticket: str
    detail: dict = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""


def row_hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the previous hash and a row's content in canonical JSON.

    >>> row_hash(GENESIS, {k: "" for k in _FIELDS})[:12]
    '8f9c11e45f46'
    """
    content = {k: values[k] for k in _FIELDS}
    text = prev_hash + json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS lifecycle_event_no_update BEFORE UPDATE ON lifecycle_event "
    "BEGIN SELECT RAISE(ABORT, 'the cpframe ledger is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS lifecycle_event_no_delete BEFORE DELETE ON lifecycle_event "
    "BEGIN SELECT RAISE(ABORT, 'the cpframe ledger is append-only'); END",
]
_SQLITE_COUNT = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'lifecycle_event'"
_PG_COUNT = ("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('lifecycle_event') "
             "AND tgname = 'lifecycle_event_append_only'")
_PG_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION cpframe_ledger_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'the cpframe ledger is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS lifecycle_event_append_only ON lifecycle_event",
    "CREATE TRIGGER lifecycle_event_append_only BEFORE UPDATE OR DELETE ON lifecycle_event "
    "FOR EACH ROW EXECUTE FUNCTION cpframe_ledger_append_only()",
]


class Ledger:
    """The ledger of one registry (an :class:`~cpframe.repository.sql.SqlRegistry`).

    Parameters
    ----------
    registry : SqlRegistry
        Its engine and transactions are used; the table is created on first use.
    """

    def __init__(self, registry: Any):
        self._registry = registry
        self._ready = False

    @property
    def _table(self) -> sa.Table:
        return s.lifecycle_event

    def _ensure(self) -> None:
        if self._ready:
            return
        engine = self._registry.engine
        sqlite = engine.dialect.name == "sqlite"
        count = (_SQLITE_COUNT if sqlite else _PG_COUNT)
        with engine.connect() as conn:
            exists = sa.inspect(conn).has_table(self._table.name)
            n_triggers = conn.exec_driver_sql(count).scalar() if exists else 0
        if not exists or n_triggers < (2 if sqlite else 1):
            with self._registry.transaction() as conn:
                self._table.create(conn, checkfirst=True)
                for stmt in _SQLITE_TRIGGERS if sqlite else _PG_TRIGGERS:
                    conn.exec_driver_sql(stmt)
        self._ready = True

    # -- reading ------------------------------------------------------------------------------------
    def rows(self, set_name: str | None = None) -> list[LedgerRow]:
        """Every row (of ``set_name``), oldest first.  The whole chain is checked first.

        Raises
        ------
        LedgerTamperedError
            A row does not match its hash chain.
        """
        everything = self._read_all()
        self._check(everything)
        return [r for r in everything if set_name is None or r.set_name == set_name]

    def _read_all(self) -> list[LedgerRow]:
        self._ensure()
        t = self._table
        with self._registry.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id)).mappings().all()
        out = []
        for r in rows:
            try:
                detail = json.loads(r["detail"]) if r["detail"] else {}
            except json.JSONDecodeError:
                detail = {"_unreadable": r["detail"]}
            out.append(LedgerRow(r["id"], r["set_name"], r["state"], r["previous"], r["site"], r["who"], r["at"],
                                 r["why"], r["report"], r["report_sha256"], r["ticket"], detail, r["prev_hash"],
                                 r["hash"]))
        return out

    @staticmethod
    def _values(r: LedgerRow) -> dict:
        return {k: getattr(r, k) if k != "detail" else _dump(r.detail) for k in _FIELDS}

    def _check(self, rows: Sequence[LedgerRow]) -> None:
        prev = GENESIS
        for r in rows:
            if "_unreadable" in r.detail:
                why = "its detail is not JSON"
            elif r.prev_hash != prev:
                why = "it does not follow the row before it (a row was removed or inserted)"
            elif row_hash(prev, self._values(r)) != r.hash:
                why = "its content was edited"
            else:
                prev = r.hash
                continue
            raise LedgerTamperedError(MSG_TAMPERED.format(id=r.id, set_name=r.set_name, state=r.state, why=why))

    def verify(self) -> int:
        """Check the whole chain; return the number of rows.  Raises :class:`LedgerTamperedError`."""
        rows = self._read_all()
        self._check(rows)
        return len(rows)

    def head(self) -> str:
        """Hash of the last row (:data:`GENESIS` when empty), after checking the chain."""
        rows = self.rows()
        return rows[-1].hash if rows else GENESIS

    # -- writing ------------------------------------------------------------------------------------
    def append(self, entries: Sequence[Mapping[str, Any]], *, check=None) -> list[LedgerRow]:
        """Append rows in one transaction, after checking the chain.

        Parameters
        ----------
        entries : sequence of mapping
            Keys of :class:`LedgerRow` (``set_name``, ``state``, ``previous``, ``who``, ``why``...;
            ``at`` defaults to now, strings to ``""``, ``detail`` to ``{}``).
        check : callable, optional
            Called with the current rows (chain checked) before writing, inside the retry loop:
            the caller's state rules run against exactly what the new rows are chained onto.

        Raises
        ------
        LedgerTamperedError
        LedgerError
            Another process kept appending at the same time (after retries).
        """
        self._ensure()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for _attempt in range(5):
            current = self._read_all()
            self._check(current)
            if check is not None:
                check(current)
            prev = current[-1].hash if current else GENESIS
            made, values = [], []
            for e in entries:
                v = {k: e.get(k, "") for k in _FIELDS}
                v["at"] = e.get("at") or now
                v["detail"] = _dump(e.get("detail") or {})
                h = row_hash(prev, v)
                values.append({**v, "prev_hash": prev, "hash": h})
                made.append(v | {"prev_hash": prev, "hash": h})
                prev = h
            try:
                with self._registry.transaction() as conn:
                    conn.execute(sa.insert(self._table), values)
            except RegistryError as err:
                if isinstance(err.__cause__, sa.exc.IntegrityError):
                    continue  # someone appended on the same head: read again and chain onto theirs
                raise
            return [r for r in self._read_all() if r.hash in {m["hash"] for m in made}]
        raise LedgerError("could not append to the ledger: other processes kept appending at the same time; "
                          "run the command again.")


def _dump(detail: Mapping[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
