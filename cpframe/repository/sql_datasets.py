"""Datasets, find-first lookups and certification of :class:`cpframe.repository.sql.SqlRegistry` (a mixin).

Insert, get and remove dataset rows; batched find-first over RUN, TAGGED and
CALIBRATION collections (spec §4); certify / decertify with validity ranges.
Uses the connection, dataset-type and collection helpers of ``SqlRegistry``.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa

from cpframe.core.errors import (
    AmbiguousCalibrationError,
    CollectionTypeError,
    DatasetConflictError,
    MissingDatasetError,
    RegistryError,
    UserInputError,
    ValidityOverlapError,
)
from cpframe.core.model import (
    CollectionType,
    DataId,
    DatasetRef,
    DatasetType,
    Timespan,
    tai_now_ns,
)
from cpframe.repository import schema as s
from cpframe.repository.base import DataIdLike, DimensionRecord
from cpframe.repository.names import validate_collection_name
from cpframe.repository.sql_common import (
    _chunks,
    _glob,
    _sort_key,
    _span,
    datasets_exist_message,
    normalize_data_id,
)


class _SqlDatasets:
    """Datasets, find-first and certification (mixed into ``SqlRegistry``)."""

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

    def normalize_data_id(self, dataset_type: str, data_id: DataIdLike) -> DataId:
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
    def _norm(dt: DatasetType, data_id: DataIdLike) -> DataId:
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
                raise DatasetConflictError(datasets_exist_message(conflicts))
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
        self, dataset_type: str, data_ids: Sequence[DataIdLike], collections: Sequence[str] | str,
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
        self, dataset_type: str, data_ids: Sequence[DataIdLike], collections: Sequence[str] | str,
        exposures: Sequence[int | DimensionRecord | None] | None = None,
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
        if where:  # a bad selection is an error even when there is nothing to search
            from cpframe.repository.query import parse_selection

            parse_selection(where, bind)
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

