"""Collections and chains of :class:`cpframe.repository.sql.SqlRegistry` (a mixin).

Register, look up, flatten and remove collections; edit chains (the list editing
itself is :func:`cpframe.repository.chains.edit_chain`, here the cycle checks and rows).
Uses the connection helpers of ``SqlRegistry`` (``_reading``, ``transaction``).
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from typing import Iterable, Sequence

import sqlalchemy as sa

from cpframe.core.errors import (
    ChainCycleError,
    CollectionTypeError,
    RegistryError,
    UnknownCollectionError,
    UserInputError,
)
from cpframe.core.model import (
    CollectionType,
    DatasetRef,
)
from cpframe.repository import schema as s
from cpframe.repository.base import CHAIN_MODES, CollectionInfo
from cpframe.repository.chains import edit_chain
from cpframe.repository.names import validate_collection_name
from cpframe.repository.sql_common import _chunks, _glob


class _SqlCollections:
    """Collections and chains (mixed into ``SqlRegistry``)."""

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

