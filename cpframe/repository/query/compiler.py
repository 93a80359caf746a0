"""Selections, step 3: a typed :class:`Selection` -> a SQLAlchemy Core expression.

Every user value becomes a bound parameter; no SQL text is built from user input.
:func:`select_dimension_records`, :func:`select_data_ids` and :func:`filter_datasets`
are what :class:`cpframe.repository.sql.SqlRegistry` calls with an open connection.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Mapping, Sequence, Union

import sqlalchemy as sa
from sqlalchemy.sql.elements import Grouping

from cpframe.core.errors import UserInputError
from cpframe.core.model import NS_MAX, NS_MIN, DataId, Timespan
from cpframe.repository import schema
from cpframe.repository.query.parser import (
    MSG_FIELD_CONTEXT,
    MSG_UNKNOWN_DIMENSION,
    MSG_UNKNOWN_ELEMENT,
    _error,
)
from cpframe.repository.query.typed import (
    DATA_ID_DIMENSIONS,
    DIMENSION_ELEMENTS,
    FIELDS,
    BoolOp,
    Column,
    Compare,
    Field,
    InSet,
    Not,
    Overlaps,
    Selection,
    Value,
    parse_selection,
)

__all__ = ["compile_selection", "select_dimension_records", "select_data_ids", "filter_datasets"]



# --------------------------------------------------------------------------------------------
# Step 3: compile to SQLAlchemy
# --------------------------------------------------------------------------------------------

_SQL_TYPES = {"int": sa.BigInteger(), "float": sa.Float(), "str": sa.String(), "time": sa.BigInteger()}
_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}


class _Scope:
    """Maps fields onto SQL columns for one query; subclasses build the FROM clause."""

    context = "dimension records"

    def column(self, field: Field) -> sa.ColumnElement:  # pragma: no cover - abstract
        raise NotImplementedError

    def timespan(self, field: Field) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin_floor(self, t_ns: int) -> int | None:
        """Optional index hint for OVERLAPS (see :class:`_DimensionScope`)."""
        return None


def compile_selection(selection: Selection, scope: _Scope) -> sa.ColumnElement | None:
    """The SQLAlchemy condition of a typed selection in ``scope`` (None when it is empty).

    User values only ever appear as bound parameters.
    """
    if selection.root is None:
        return None
    for f in selection.fields:
        if f.element == "dataset" and scope.context != "datasets":
            pos = _first_pos(selection.root, f)
            raise _error(MSG_FIELD_CONTEXT.format(name=f.name, context=scope.context),
                                 selection.expression, pos)
    return _sql(selection.root, scope)


def _first_pos(node: Any, field: Field) -> int | None:
    if isinstance(node, Column):
        return node.pos if node.field == field else None
    for attr in ("operands",):
        for x in getattr(node, attr, ()):
            p = _first_pos(x, field)
            if p is not None:
                return p
    for attr in ("operand", "left", "right", "column"):
        x = getattr(node, attr, None)
        if x is not None:
            p = _first_pos(x, field)
            if p is not None:
                return p
    return None


def _operand_sql(x: Union[Column, Value], scope: _Scope) -> sa.ColumnElement:
    if isinstance(x, Column):
        return scope.column(x.field)
    return sa.literal(x.value, _SQL_TYPES[x.type])


class _Parens(Grouping):
    """Parentheses SQLAlchemy keeps: a plain Grouping is flattened into an enclosing AND/OR of the
    same operator (it forwards ``operator`` to its element)."""

    operator = None
    inherit_cache = True


def _balanced(combine: Any, parts: list, width: int = 32) -> sa.ColumnElement:
    """``a OR b OR ...`` as parenthesised groups of ``width``: SQLite parses a flat chain as a
    tree as deep as it is long and refuses one over 1,000 (issue 11), groups keep it shallow."""
    while len(parts) > width:
        parts = [_Parens(combine(*parts[i:i + width])) for i in range(0, len(parts), width)]
    return combine(*parts)


def _sql(node: Any, scope: _Scope) -> sa.ColumnElement:
    if isinstance(node, BoolOp):
        parts = [_sql(x, scope) for x in node.operands]
        return _balanced(sa.and_ if node.op == "and" else sa.or_, parts)
    if isinstance(node, Not):
        return sa.not_(_sql(node.operand, scope))
    if isinstance(node, Compare):
        return _OPS[node.op](_operand_sql(node.left, scope), _operand_sql(node.right, scope))
    if isinstance(node, InSet):
        target = _operand_sql(node.operand, scope)
        parts = []
        if node.values:
            t = _SQL_TYPES[node.values[0].type]
            parts.append(target.in_([sa.literal(v.value, t) for v in node.values]))
        for r in node.ranges:
            cond = target.between(sa.literal(r.start, sa.BigInteger()), sa.literal(r.stop, sa.BigInteger()))
            if r.stride > 1:
                cond = sa.and_(cond, (target - sa.literal(r.start, sa.BigInteger()))
                               % sa.literal(r.stride, sa.BigInteger()) == 0)
            parts.append(cond)
        cond = parts[0] if len(parts) == 1 else sa.or_(*parts)
        return sa.not_(cond) if node.negated else cond
    if isinstance(node, Overlaps):
        begin, end = scope.timespan(node.column.field)
        b = sa.literal(node.begin_ns, sa.BigInteger())
        if node.point:  # [begin, end) contains t
            cond = sa.and_(begin <= b, b < end)
        else:
            cond = sa.and_(begin < sa.literal(node.end_ns, sa.BigInteger()), b < end)
        floor = scope.begin_floor(node.begin_ns)
        if floor is not None:
            cond = sa.and_(cond, begin > sa.literal(floor, sa.BigInteger()))
        return cond
    raise TypeError(f"cannot compile {node!r}")  # pragma: no cover - the typer guarantees this


# --------------------------------------------------------------------------------------------
# Queries over dimension tables
# --------------------------------------------------------------------------------------------


class _DimensionScope(_Scope):
    """instrument / detector / physical_filter / exposure joined on the instrument."""

    def __init__(self, elements: Iterable[str], context: str = "dimension records", conn: Any = None):
        need = set(elements) - {"dataset"}
        self.context = context
        self.conn = conn
        self._half_duration: Any = ()
        self.tables: dict[str, sa.Table] = {}
        order = [e for e in ("exposure", "detector", "physical_filter", "instrument") if e in need]
        if not order:
            order = ["instrument"]
        base = getattr(schema, order[0])
        self.tables[order[0]] = base
        self.instrument_col = base.c.name if order[0] == "instrument" else base.c.instrument
        from_ = base
        for e in order[1:]:
            t = getattr(schema, e)
            if e == "instrument":
                on = t.c.name == self.instrument_col
            elif e == "physical_filter" and "exposure" in self.tables:
                ex = self.tables["exposure"]
                on = sa.and_(t.c.instrument == ex.c.instrument, t.c.name == ex.c.physical_filter)
            else:
                on = t.c.instrument == self.instrument_col
            from_ = from_.join(t, on)
            self.tables[e] = t
        self.from_clause = from_

    def column(self, field: Field) -> sa.ColumnElement:
        if field.element == "instrument" and field.column == "name":
            return self.instrument_col
        if field.element == "physical_filter" and field.column == "name" and "exposure" in self.tables:
            return self.tables["exposure"].c.physical_filter
        return self.tables[field.element].c[field.column]

    def timespan(self, field: Field) -> tuple:
        t = self.tables[field.element]
        return t.c.timespan_begin, t.c.timespan_end

    def begin_floor(self, t_ns: int) -> int | None:
        """A value every exposure ending after ``t_ns`` begins after (None: no useful bound).

        ``begin < b AND end > a`` alone is a range over half the ``timespan_begin`` index;
        adding ``begin > a - max(duration)``, implied by the data, makes it a short one.
        The maximum comes from ``ix_exposure_half_duration`` in the same transaction.
        """
        if self.conn is None or t_ns <= NS_MIN:
            return None
        if self._half_duration == ():
            ex, two = schema.exposure, sa.literal_column("2", sa.BigInteger())
            self._half_duration = self.conn.execute(
                sa.select(sa.func.max(ex.c.timespan_end // two - ex.c.timespan_begin // two))).scalar()
        if self._half_duration is None:
            return None
        # each halved term is off by less than 1, so duration <= 2 * max + 2
        floor = t_ns - 2 * int(self._half_duration) - 2
        return floor if floor > NS_MIN else None


def _elements_of_fields(fields: Iterable[Field]) -> set[str]:
    out = set()
    for f in fields:
        if f.element == "instrument" and f.column == "name":
            continue  # every table carries the instrument
        if f.element == "physical_filter" and f.column == "name":
            out.add("physical_filter_name")
            continue
        out.add(f.element)
    return out


def _scope_elements(target: set[str], fields: Iterable[Field]) -> tuple[set[str], bool]:
    """Tables to join for ``target`` elements plus those the selection names; and whether extra."""
    named = _elements_of_fields(fields)
    if "physical_filter_name" in named:
        named.discard("physical_filter_name")
        if "exposure" not in target | named:
            named.add("physical_filter")
    need = set(target) | named
    extra = bool(named - set(target))
    return need, extra


def _timespan(begin: int, end: int) -> Timespan:
    return Timespan(None if begin is None or begin <= NS_MIN else int(begin),
                    None if end is None or end >= NS_MAX else int(end))


def _prepare(where: str | None, bind: Mapping[str, Any] | None, instrument: str | None) -> Selection:
    sel = parse_selection(where or "", bind)
    sel.check_instrument(instrument is not None)
    return sel


def _check_instrument_arg(instrument: Any) -> None:
    if instrument is not None and not isinstance(instrument, str):
        raise UserInputError(f"instrument must be a name (text), got {instrument!r}")


def select_dimension_records(
    conn: sa.Connection, element: str, where: str = "", bind: Mapping[str, Any] | None = None,
    instrument: str | None = None,
) -> list[dict[str, Any]]:
    """Records of ``element`` matching ``where``, sorted by their primary key.

    Parameters
    ----------
    conn : sqlalchemy.Connection
    element : str
        ``instrument``, ``detector``, ``physical_filter`` or ``exposure``.
    where : str
        Selection; names of other elements join them (``detector.full_name='R22_S11'``
        keeps exposures of instruments that have that detector).
    bind : mapping, optional
    instrument : str, optional
        Constrain to this instrument (counts as constraining it for the instrument rule).

    Returns
    -------
    list of dict
        Exposure dicts have ``id, instrument, obs_id, day_obs, seq_num, physical_filter,
        band, observation_type, observation_reason, science_program, exposure_time,
        dark_time, timespan`` (a :class:`cpframe.core.model.Timespan`).

    Raises
    ------
    SelectionError
        The expression does not parse or type-check, or needs the instrument.
    UserInputError
        Unknown element.
    """
    if element not in DIMENSION_ELEMENTS:
        raise UserInputError(MSG_UNKNOWN_ELEMENT.format(name=element, options=", ".join(DIMENSION_ELEMENTS)))
    _check_instrument_arg(instrument)
    sel = _prepare(where, bind, instrument)
    target = {element} | ({"physical_filter"} if element == "exposure" else set())
    need, extra = _scope_elements(target, sel.fields)
    scope = _DimensionScope(need, context=f"{element} records", conn=conn)
    t = scope.tables[element]
    if element == "exposure":
        pf = scope.tables["physical_filter"]
        cols = [t.c.id, t.c.instrument, t.c.obs_id, t.c.day_obs, t.c.seq_num, t.c.physical_filter,
                pf.c.band, t.c.observation_type, t.c.observation_reason, t.c.science_program,
                t.c.exposure_time, t.c.dark_time, t.c.timespan_begin, t.c.timespan_end]
        key = ("instrument", "id")
    elif element == "instrument":
        cols = [t.c.name, t.c.detector_max, t.c.amp_names, t.c.doc]
        key = ("name",)
    elif element == "detector":
        cols = [t.c.instrument, t.c.id, t.c.full_name, t.c.raft, t.c.name_in_raft, t.c.purpose,
                t.c.vendor, t.c.serial]
        key = ("instrument", "id")
    else:
        cols = [t.c.instrument, t.c.name, t.c.band]
        key = ("instrument", "name")
    stmt = sa.select(*cols).select_from(scope.from_clause)
    cond = compile_selection(sel, scope)
    if cond is not None:
        stmt = stmt.where(cond)
    if instrument is not None:
        stmt = stmt.where(scope.instrument_col == sa.literal(instrument, sa.String()))
    if extra:
        stmt = stmt.distinct()
    records = []
    for row in conn.execute(stmt).mappings():
        rec = dict(row)
        if element == "exposure":
            rec["timespan"] = _timespan(rec.pop("timespan_begin"), rec.pop("timespan_end"))
        elif element == "instrument":
            rec["amp_names"] = [a for a in (rec["amp_names"] or "").split(",") if a]
        records.append(rec)
    records.sort(key=lambda r: tuple(r[k] for k in key))
    return records


def select_data_ids(
    conn: sa.Connection, dimensions: Sequence[str], where: str = "", bind: Mapping[str, Any] | None = None,
    instrument: str | None = None,
) -> list[DataId]:
    """Distinct data IDs over ``dimensions`` matching ``where``, sorted.

    Parameters
    ----------
    conn : sqlalchemy.Connection
    dimensions : sequence of str
        Some of ``exposure``, ``detector``, ``physical_filter``, ``band``, ``instrument``;
        ``["exposure", "detector"]`` is every detector of every selected exposure (same
        instrument).  With ``exposure``, ``physical_filter``/``band`` are the exposure's.
    where, bind, instrument
        As for :func:`select_dimension_records`.

    Returns
    -------
    list of DataId
        Each with ``instrument`` plus exactly the requested dimensions, sorted by
        instrument and then by the dimensions in the order requested (``["exposure",
        "detector"]`` lists each exposure's detectors together).

    Raises
    ------
    SelectionError, UserInputError
    """
    if isinstance(dimensions, str):
        dimensions = [dimensions]
    dims: list[str] = []
    for d in dimensions:
        for part in str(d).split(","):
            part = part.strip()
            if not part:
                continue
            if part not in DATA_ID_DIMENSIONS:
                raise UserInputError(MSG_UNKNOWN_DIMENSION.format(name=part, options=", ".join(DATA_ID_DIMENSIONS)))
            if part not in dims and part != "instrument":
                dims.append(part)
    _check_instrument_arg(instrument)
    sel = _prepare(where, bind, instrument)
    target = set()
    for d in dims:
        if d == "exposure":
            target.add("exposure")
        elif d == "detector":
            target.add("detector")
        elif d == "band" or (d == "physical_filter" and "exposure" not in dims):
            target.add("physical_filter")
    if not target:
        target = {"instrument"}
    need, _ = _scope_elements(target, sel.fields)
    scope = _DimensionScope(need, context="data IDs", conn=conn)
    out = {"instrument": scope.instrument_col}
    for d in dims:
        if d == "exposure":
            out[d] = scope.tables["exposure"].c.id
        elif d == "detector":
            out[d] = scope.tables["detector"].c.id
        elif d == "physical_filter":
            out[d] = scope.column(FIELDS["physical_filter"])
        else:
            out[d] = scope.tables["physical_filter"].c.band
    stmt = sa.select(*[c.label(k) for k, c in out.items()]).select_from(scope.from_clause).distinct()
    cond = compile_selection(sel, scope)
    if cond is not None:
        stmt = stmt.where(cond)
    if instrument is not None:
        stmt = stmt.where(scope.instrument_col == sa.literal(instrument, sa.String()))
    rows = sorted(tuple(row) for row in conn.execute(stmt))  # instrument, then dims as requested
    return [DataId(zip(out, row)) for row in rows]


# --------------------------------------------------------------------------------------------
# Selections over the dataset table
# --------------------------------------------------------------------------------------------


class _DatasetScope(_Scope):
    """Data-ID columns of the dataset table, joining dimension tables (outer) as needed."""

    context = "datasets"

    def __init__(self, dataset_table: sa.Table, fields: Iterable[Field]):
        self.ds = dataset_table
        fields = set(fields)
        elements = {f.element for f in fields if not _on_dataset_row(f)}
        if any(f.element == "physical_filter" for f in fields):
            elements.add("exposure")  # raws carry their filter through the exposure
        self.aliases: dict[str, Any] = {}
        self.joins: list[tuple[Any, Any]] = []
        ds = dataset_table
        if "exposure" in elements:
            ex = schema.exposure.alias("sel_exposure")
            self.aliases["exposure"] = ex
            self.joins.append((ex, sa.and_(ex.c.instrument == ds.c.instrument, ex.c.id == ds.c.exposure)))
        if "detector" in elements:
            det = schema.detector.alias("sel_detector")
            self.aliases["detector"] = det
            self.joins.append((det, sa.and_(det.c.instrument == ds.c.instrument, det.c.id == ds.c.detector)))
        if any(f.element == "physical_filter" and f.column != "name" for f in fields):
            pf = schema.physical_filter.alias("sel_physical_filter")
            self.aliases["physical_filter"] = pf
            self.joins.append((pf, sa.and_(pf.c.instrument == ds.c.instrument, pf.c.name == self.filter_name())))
        if "instrument" in elements:
            inst = schema.instrument.alias("sel_instrument")
            self.aliases["instrument"] = inst
            self.joins.append((inst, inst.c.name == ds.c.instrument))

    def filter_name(self) -> sa.ColumnElement:
        if "exposure" in self.aliases:
            return sa.func.coalesce(self.ds.c.physical_filter, self.aliases["exposure"].c.physical_filter)
        return self.ds.c.physical_filter

    def column(self, field: Field) -> sa.ColumnElement:
        if field.element == "physical_filter" and field.column == "name":
            return self.filter_name()
        if _on_dataset_row(field):
            return self.ds.c[_DATASET_COLUMNS[(field.element, field.column)]]
        return self.aliases[field.element].c[field.column]

    def timespan(self, field: Field) -> tuple:
        ex = self.aliases["exposure"]
        return ex.c.timespan_begin, ex.c.timespan_end

    def apply(self, stmt: sa.Select) -> sa.Select:
        for table, on in self.joins:
            stmt = stmt.join_from(self.ds, table, on, isouter=True)
        return stmt


_DATASET_COLUMNS = {
    ("instrument", "name"): "instrument",
    ("detector", "id"): "detector",
    ("exposure", "id"): "exposure",
    ("dataset", "ingest_date"): "ingest_date",
}


def _on_dataset_row(field: Field) -> bool:
    return (field.element, field.column) in _DATASET_COLUMNS


def filter_datasets(
    stmt: sa.Select, dataset_table: sa.Table, where: str = "", bind: Mapping[str, Any] | None = None,
    instrument: str | None = None,
) -> sa.Select:
    """Add a selection to a SELECT over the ``dataset`` table.

    The dataset row's data-ID columns (instrument, detector, exposure, physical_filter)
    answer directly; other fields (``exposure.day_obs``, ``band``, ``detector.full_name``)
    outer-join the dimension tables under ``sel_*`` aliases.  A dataset without the named
    dimension (a bias has no exposure) does not match a condition on it (SQL NULL rules).

    Parameters
    ----------
    stmt : sqlalchemy.Select
        A SELECT whose FROM includes ``dataset_table``.
    dataset_table : sqlalchemy.Table
        ``schema.dataset`` or an alias of it.
    where, bind
        As for :func:`parse_selection`.
    instrument : str, optional
        Also keep only this instrument (counts as constraining it).

    Returns
    -------
    sqlalchemy.Select

    Raises
    ------
    SelectionError
    """
    _check_instrument_arg(instrument)
    sel = _prepare(where, bind, instrument)
    if sel.root is not None:
        scope = _DatasetScope(dataset_table, sel.fields)
        stmt = scope.apply(stmt).where(compile_selection(sel, scope))
    if instrument is not None:
        stmt = stmt.where(dataset_table.c.instrument == sa.literal(instrument, sa.String()))
    return stmt
