"""Selections, step 2: the syntax tree -> a typed :class:`Selection`.

Names are resolved against the dimension schema (:data:`FIELDS`) or the ``bind``
mapping, literals are checked against the field they are compared with, and the
instrument rule is applied.  No SQL here (:mod:`.compiler`).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from cpframe.core.errors import SelectionError, UserInputError
from cpframe.core.model import NS_MAX, NS_MIN, Timespan, tai_ns
from cpframe.repository.query.parser import (
    _KEYWORDS,
    _ONE_LINE,
    MSG_AMBIGUOUS,
    MSG_BIND_EMPTY,
    MSG_BIND_LIST_OUTSIDE_IN,
    MSG_BIND_MISSING,
    MSG_BIND_PAIR,
    MSG_BIND_SHADOWS,
    MSG_BIND_TYPE,
    MSG_DID_YOU_MEAN,
    MSG_IN_COLUMN,
    MSG_IN_MIXED,
    MSG_INT_RANGE,
    MSG_KEYWORD,
    MSG_KNOWN_NAMES,
    MSG_NEEDS_INSTRUMENT,
    MSG_NEGATIVE,
    MSG_NOT_CONDITION,
    MSG_OVERLAPS_TYPES,
    MSG_PAIR_OUTSIDE_OVERLAPS,
    MSG_QUOTE_HINT,
    MSG_QUOTED_NUMBER,
    MSG_RANGE_OUTSIDE_IN,
    MSG_RANGE_TYPE,
    MSG_SPAN_REVERSED,
    MSG_TIME_HINT,
    MSG_TIME_RANGE,
    MSG_TIMESPAN_COMPARE,
    MSG_TYPE_MISMATCH,
    MSG_UNKNOWN_NAME,
    Comparison,
    Literal,
    Logical,
    Membership,
    Name,
    Negation,
    Overlap,
    Pair,
    RangeLiteral,
    Signed,
    _error,
    _mjd_tai_ns,
    _parse_tree,
    _pos,
    _string,
)

__all__ = ["Selection", "Field", "FIELDS", "parse_selection", "named_instruments", "DIMENSION_ELEMENTS", "DATA_ID_DIMENSIONS"]



# --------------------------------------------------------------------------------------------
# The dimension schema as selections see it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A name a selection may use, mapped onto a registry column."""

    name: str
    """Canonical dotted name, e.g. ``exposure.day_obs``."""
    element: str
    """Table it lives in: instrument, detector, physical_filter, exposure or dataset."""
    column: str
    """Column of that table (``timespan`` stands for the begin/end column pair)."""
    type: str
    """``int``, ``float``, ``str``, ``time`` (ns TAI) or ``timespan``."""
    needs_instrument: bool = False
    """Values are only unique within an instrument (exposure and detector ids, day_obs)."""


def _fields() -> dict[str, Field]:
    f: dict[str, Field] = {}

    def add(names: Iterable[str], field: Field) -> None:
        for n in names:
            f[n] = field

    add(["instrument", "instrument.name"], Field("instrument", "instrument", "name", "str"))
    add(["instrument.detector_max"], Field("instrument.detector_max", "instrument", "detector_max", "int"))
    add(["detector", "detector.id"], Field("detector", "detector", "id", "int", True))
    for col in ("full_name", "raft", "name_in_raft", "purpose", "vendor", "serial"):
        add([f"detector.{col}"], Field(f"detector.{col}", "detector", col, "str"))
    pf = Field("physical_filter", "physical_filter", "name", "str")
    add(["physical_filter", "physical_filter.name", "exposure.physical_filter"], pf)
    add(["band", "band.name", "physical_filter.band"], Field("band", "physical_filter", "band", "str"))
    add(["exposure", "exposure.id"], Field("exposure", "exposure", "id", "int", True))
    add(["day_obs", "exposure.day_obs"], Field("exposure.day_obs", "exposure", "day_obs", "int", True))
    # obs_id is unique only within an instrument: the butler requires the instrument with it
    add(["exposure.obs_id"], Field("exposure.obs_id", "exposure", "obs_id", "str", True))
    for col, typ in (("seq_num", "int"), ("observation_type", "str"),
                     ("observation_reason", "str"), ("science_program", "str"),
                     ("exposure_time", "float"), ("dark_time", "float"), ("timespan", "timespan")):
        add([f"exposure.{col}"], Field(f"exposure.{col}", "exposure", col, typ))
    add(["exposure.timespan.begin"], Field("exposure.timespan.begin", "exposure", "timespan_begin", "time"))
    add(["exposure.timespan.end"], Field("exposure.timespan.end", "exposure", "timespan_end", "time"))
    add(["ingest_date", "dataset.ingest_date"], Field("ingest_date", "dataset", "ingest_date", "time"))
    return f


#: Every name a selection may use -> its field (dotted names plus dimension shorthands).
FIELDS: dict[str, Field] = _fields()


def _unqualified() -> tuple[dict[str, Field], dict[str, list[str]]]:
    """Short names (``seq_num``) that are unambiguous, and the ambiguous ones with their options."""
    options: dict[str, dict[Field, str]] = {}
    for name, field in FIELDS.items():
        if "." in name:
            short = name.split(".", 1)[1]
            if short in FIELDS:  # a dimension shorthand, e.g. "physical_filter"
                continue
            options.setdefault(short, {}).setdefault(field, name)
    unique = {s: next(iter(o)) for s, o in options.items() if len(o) == 1}
    ambiguous = {s: sorted(o.values()) for s, o in options.items() if len(o) > 1}
    return unique, ambiguous


_SHORT_FIELDS, _AMBIGUOUS = _unqualified()

#: Elements whose records ``select_dimension_records`` returns.
DIMENSION_ELEMENTS = ("instrument", "detector", "physical_filter", "exposure")
#: Dimensions ``select_data_ids`` accepts.
DATA_ID_DIMENSIONS = ("instrument", "detector", "physical_filter", "band", "exposure")

_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "time": "a time",
               "timespan": "a time span", "bool": "a condition"}


def _kind(t: str) -> str:
    """Comparison family of a type: numbers mix, the rest stand alone."""
    return "number" if t in ("int", "float") else t


# --------------------------------------------------------------------------------------------
# Typed tree (after name resolution and binding)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    field: Field
    pos: int
    text: str


@dataclass(frozen=True)
class Value:
    """A literal or bound value; ``time`` values are ns TAI, ``timespan`` a (begin, end) pair."""

    value: Any
    type: str
    pos: int
    text: str


@dataclass(frozen=True)
class Compare:
    op: str
    left: Union[Column, Value]
    right: Union[Column, Value]
    pos: int


@dataclass(frozen=True)
class InSet:
    operand: Union[Column, Value]
    values: tuple
    ranges: tuple
    negated: bool
    pos: int


@dataclass(frozen=True)
class Overlaps:
    column: Column
    begin_ns: int
    end_ns: int
    point: bool
    """True when the other side is a single time (then ``begin_ns == end_ns``)."""
    pos: int


@dataclass(frozen=True)
class Not:
    operand: Any
    pos: int


@dataclass(frozen=True)
class BoolOp:
    op: str
    operands: tuple
    pos: int


@dataclass(frozen=True)
class Selection:
    """A parsed, type-checked selection, ready to compile.

    ``root`` is None for an empty expression (selects everything).
    """

    expression: str
    root: Any
    fields: frozenset
    """The :class:`Field` objects the expression names."""

    @property
    def elements(self) -> frozenset:
        """Tables the expression needs (instrument, detector, physical_filter, exposure, dataset)."""
        return frozenset(f.element for f in self.fields)

    def check_instrument(self, instrument_given: bool = False) -> None:
        """Raise if an exposure/detector id or day_obs is used without the instrument constrained.

        Parameters
        ----------
        instrument_given : bool
            The caller constrains the instrument itself (an ``instrument`` argument).

        Raises
        ------
        SelectionError
        """
        if self.root is not None:
            _check_instrument(self.root, instrument_given, self.expression)


# --------------------------------------------------------------------------------------------
# Step 2: type (resolve names and bind values)
# --------------------------------------------------------------------------------------------


class _Typer:
    def __init__(self, expression: str, bind: Mapping[str, Any], tree: Any = None):
        self.expression = expression
        self.bind = bind
        self.fields: set[Field] = set()
        self.explicit = _explicit_bind_names(tree)
        """Names used in the ``:name`` form somewhere in the expression."""

    def error(self, message: str, pos: int) -> SelectionError:
        return _error(message, self.expression, pos)

    def located(self, func, *args):
        """Call a literal helper, adding the expression to its error."""
        try:
            return func(*args)
        except SelectionError as err:
            raise self.error(err.reason, err.position) from None

    # -- names and values -------------------------------------------------------------------
    def name(self, node: Name) -> Union[Column, Value, tuple]:
        if node.explicit_bind or ("." not in node.name and node.name in self.bind):
            if node.name not in self.bind:
                raise self.error(MSG_BIND_MISSING.format(name=node.name), node.pos)
            if not node.explicit_bind and (node.name in FIELDS or node.name in _SHORT_FIELDS):
                if node.name not in self.explicit:
                    raise self.error(MSG_BIND_SHADOWS.format(name=node.name), node.pos)
                return self.field(node)  # ":name" is used for the value, so the bare name is the field
            written = f":{node.name}" if node.explicit_bind else node.name
            return self.bound(node.name, self.bind[node.name], node.pos, written)
        return self.field(node)

    def field(self, node: Name) -> Column:
        field = FIELDS.get(node.name) or _SHORT_FIELDS.get(node.name)
        if field is not None:
            self.fields.add(field)
            return Column(field, node.pos, node.name)
        if node.name.lower() in _KEYWORDS:
            raise self.error(MSG_KEYWORD.format(name=node.name), node.pos)
        if node.name in _AMBIGUOUS:
            raise self.error(MSG_AMBIGUOUS.format(name=node.name, options=", ".join(_AMBIGUOUS[node.name])),
                             node.pos)
        parts = [MSG_UNKNOWN_NAME.format(name=node.name) + "."]
        known = sorted(set(FIELDS) | set(_SHORT_FIELDS))
        close = difflib.get_close_matches(node.name, known, n=3, cutoff=0.75)
        if not close:
            close = [k for k in known if k.lower() == node.name.lower()]
        if close:
            parts.append(MSG_DID_YOU_MEAN.format(options=" or ".join(close)))
        if "." not in node.name:
            parts.append(MSG_QUOTE_HINT.format(name=node.name))
        if not close:
            parts.append(MSG_KNOWN_NAMES.format(names=", ".join(k for k in known if k in _DOC_NAMES)))
        message = " ".join(parts)
        raise self.error(message, node.pos)

    def bound(self, name: str, value: Any, pos: int, text: str) -> Union[Value, tuple]:
        if isinstance(value, (list, tuple, set, frozenset, range)):
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
            if not items:
                raise self.error(MSG_BIND_EMPTY.format(name=name), pos)
            return tuple(self.bound_scalar(name, v, pos, text) for v in items)
        return self.bound_scalar(name, value, pos, text)

    def bound_scalar(self, name: str, value: Any, pos: int, text: str) -> Value:
        if isinstance(value, bool) or value is None:
            raise self.error(MSG_BIND_TYPE.format(name=name, type=type(value).__name__), pos)
        if isinstance(value, numbers.Integral):
            value = int(value)
            if abs(value) >= 2**63:
                raise self.error(MSG_INT_RANGE.format(text=str(value)), pos)
            return Value(value, "int", pos, text)
        if isinstance(value, numbers.Real):
            return Value(float(value), "float", pos, text)
        if isinstance(value, str):
            self.located(_string, value, text, pos)
            return Value(value, "str", pos, text)
        if isinstance(value, Timespan):
            return Value((value.db_begin, value.db_end), "timespan", pos, text)
        try:
            from astropy.time import Time
        except ImportError:  # pragma: no cover - astropy is a dependency
            Time = None
        if Time is not None and isinstance(value, Time) and value.isscalar:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ns = tai_ns(value)
            if not NS_MIN < ns < NS_MAX:
                raise self.error(MSG_TIME_RANGE.format(text=text), pos)
            return Value(ns, "time", pos, text)
        raise self.error(MSG_BIND_TYPE.format(name=name, type=type(value).__name__), pos)

    def operand(self, node: Any, context: str) -> Union[Column, Value]:
        """A scalar operand of a comparison (``context`` names the operator for messages)."""
        if isinstance(node, Name):
            result = self.name(node)
            if isinstance(result, tuple):
                raise self.error(MSG_BIND_LIST_OUTSIDE_IN.format(name=node.name), node.pos)
            return result
        if isinstance(node, Literal):
            return Value(node.value, node.kind, node.pos, node.text)
        if isinstance(node, RangeLiteral):
            raise self.error(MSG_RANGE_OUTSIDE_IN.format(text=node.text), node.pos)
        if isinstance(node, Pair):
            raise self.error(MSG_PAIR_OUTSIDE_OVERLAPS, node.pos)
        if isinstance(node, Signed):
            raise self.error(MSG_NEGATIVE.format(what=self.describe(node.operand)), node.pos)
        raise self.error(f"expected a value or a field in {context}, found a condition", _pos(node))

    def describe(self, node: Any) -> str:
        if isinstance(node, Name):
            return node.name
        if isinstance(node, (Literal, RangeLiteral)):
            return node.text
        return "an expression"

    # -- conditions -------------------------------------------------------------------------
    def condition(self, node: Any) -> Any:
        if isinstance(node, Logical):
            return BoolOp(node.op, tuple(self.condition(x) for x in node.operands), node.pos)
        if isinstance(node, Negation):
            return Not(self.condition(node.operand), node.pos)
        if isinstance(node, Comparison):
            return self.comparison(node)
        if isinstance(node, Membership):
            return self.membership(node)
        if isinstance(node, Overlap):
            return self.overlap(node)
        # anything else is a value standing where a condition belongs
        if isinstance(node, Literal):
            what = f"{_TYPE_WORDS[node.kind]} ({node.text})"
            example = "detector = 4" if node.kind == "int" else "instrument = 'LSSTComCam'"
        elif isinstance(node, Name):
            resolved = self.operand(node, "a condition")
            what = f"{resolved.text} ({_TYPE_WORDS[resolved.field.type if isinstance(resolved, Column) else resolved.type]})"
            example = f"{node.name} = ..."
        else:
            what, example = self.describe(node), "detector = 4"
            if isinstance(node, (RangeLiteral, Pair, Signed)):
                self.operand(node, "a condition")
        raise self.error(MSG_NOT_CONDITION.format(what=what, example=example), _pos(node))

    def comparison(self, node: Comparison) -> Compare:
        left = self.operand(node.left, node.op)
        right = self.operand(node.right, node.op)
        left, right = self.unify(left, right, node)
        return Compare(node.op, left, right, node.pos)

    def type_of(self, x: Union[Column, Value]) -> str:
        return x.field.type if isinstance(x, Column) else x.type

    def unify(self, left, right, node) -> tuple:
        lt, rt = self.type_of(left), self.type_of(right)
        for side, t in ((left, lt), (right, rt)):
            if t == "timespan":
                name = side.text if isinstance(side, Column) else "a time span"
                raise self.error(MSG_TIMESPAN_COMPARE.format(field=name), side.pos)
        if _kind(lt) == _kind(rt):
            return left, right
        # a number where a time is expected is an MJD (TAI)
        if lt == "time" and _kind(rt) == "number" and isinstance(right, Value):
            return left, self.as_time(right)
        if rt == "time" and _kind(lt) == "number" and isinstance(left, Value):
            return self.as_time(left), right
        raise self.mismatch(left, right)

    def as_time(self, v: Value) -> Value:
        return Value(self.located(_mjd_tai_ns, v.value, v.text, v.pos), "time", v.pos, v.text)

    def mismatch(self, left, right) -> SelectionError:
        """A type error, pointing at the value (or the right side) with a hint when one helps."""
        lt, rt = self.type_of(left), self.type_of(right)
        column, value = (left, right) if isinstance(right, Value) else (right, left)
        bad = value if isinstance(value, Value) else right
        message = MSG_TYPE_MISMATCH.format(left=left.text, ltype=_TYPE_WORDS[lt], right=right.text,
                                           rtype=_TYPE_WORDS[rt])
        if isinstance(column, Column) and isinstance(value, Value):
            ct = column.field.type
            if ct == "int" and value.type == "str" and re.fullmatch(r"-?\d+", value.value):
                message += ". " + MSG_QUOTED_NUMBER.format(field=column.text, digits=value.value)
            elif ct == "time" and value.type == "str":
                message += ". " + MSG_TIME_HINT
            elif ct == "str" and value.type in ("int", "float"):
                message += f". Strings take single quotes, e.g. {column.text} = '{value.text}'"
        return self.error(message, bad.pos)

    def membership(self, node: Membership) -> InSet:
        operand = self.operand(node.operand, "IN")
        ot = self.type_of(operand)
        if ot == "timespan":
            raise self.error(MSG_TIMESPAN_COMPARE.format(field=operand.text), operand.pos)
        values: list[Value] = []
        ranges: list[RangeLiteral] = []
        first_kind = None
        for item in node.items:
            if isinstance(item, RangeLiteral):
                entries = [item]
            elif isinstance(item, Name):
                resolved = self.name(item)
                if isinstance(resolved, Column):
                    raise self.error(MSG_IN_COLUMN.format(name=item.name), item.pos)
                entries = list(resolved) if isinstance(resolved, tuple) else [resolved]
            else:
                entries = [self.operand(item, "IN")]
            for entry in entries:
                kind = "number" if isinstance(entry, RangeLiteral) else _kind(entry.type)
                if entry.__class__ is Value and entry.type == "timespan":
                    raise self.error(MSG_TIMESPAN_COMPARE.format(field=entry.text), entry.pos)
                if first_kind is None:
                    first_kind = kind
                elif kind != first_kind and {kind, first_kind} != {"number", "time"}:
                    raise self.error(MSG_IN_MIXED.format(first=_KIND_WORDS[first_kind], other=_KIND_WORDS[kind]),
                                     entry.pos)
                if isinstance(entry, RangeLiteral):
                    if ot != "int":
                        raise self.error(MSG_RANGE_TYPE.format(text=entry.text, field=operand.text,
                                                               ftype=_TYPE_WORDS[ot]), entry.pos)
                    ranges.append(entry)
                else:
                    _, entry = self.unify(operand, entry, node)
                    values.append(entry)
        return InSet(operand, tuple(values), tuple(ranges), node.negated, node.pos)

    def overlap(self, node: Overlap) -> Overlaps:
        sides = [node.left, node.right]
        spans = [self.span_side(s) for s in sides]
        columns = [s for s in spans if isinstance(s, Column)]
        others = [s for s in spans if not isinstance(s, Column)]
        if len(columns) != 1 or len(others) != 1:
            raise self.error(MSG_OVERLAPS_TYPES.format(left=self.side_word(spans[0]), right=self.side_word(spans[1])),
                             node.pos)
        column, other = columns[0], others[0]
        if column.field.type != "timespan":
            raise self.error(MSG_OVERLAPS_TYPES.format(left=self.side_word(spans[0]), right=self.side_word(spans[1])),
                             column.pos)
        if isinstance(other, Value) and other.type == "time":
            return Overlaps(column, other.value, other.value, True, node.pos)
        if isinstance(other, Value) and other.type == "timespan":
            begin, end = other.value
            return Overlaps(column, begin, end, False, node.pos)
        if isinstance(other, tuple):  # a pair of times
            (begin, end), pos = other
            if begin > end:
                raise self.error(MSG_SPAN_REVERSED.format(text=self.expression[pos:self.end_of(pos)]), pos)
            return Overlaps(column, begin, end, False, node.pos)
        raise self.error(MSG_OVERLAPS_TYPES.format(left=self.side_word(spans[0]), right=self.side_word(spans[1])),
                         _pos(other))

    def end_of(self, pos: int) -> int:
        depth = 0
        for i in range(pos, len(self.expression)):
            depth += {"(": 1, ")": -1}.get(self.expression[i], 0)
            if depth == 0:
                return i + 1
        return len(self.expression)

    def span_side(self, node: Any) -> Any:
        """One side of OVERLAPS: a Column, a time/timespan Value, or ((begin, end), pos)."""
        if isinstance(node, Name):
            resolved = self.name(node)
            if isinstance(resolved, tuple):  # a bound (begin, end) pair
                if len(resolved) != 2:
                    raise self.error(MSG_BIND_PAIR.format(name=node.name, n=len(resolved)), node.pos)
                node = Pair(*resolved, node.pos)
        if isinstance(node, Pair):
            ends = []
            for item in (node.first, node.second):
                v = item if isinstance(item, Value) else self.operand(item, "OVERLAPS")
                if isinstance(v, Column) or (v.type != "time" and _kind(v.type) != "number"):
                    what = v.text
                    hint = MSG_TIME_HINT if isinstance(v, Value) and v.type == "str" else "use two times"
                    raise self.error(f"time span ends must be times, found {what}; {hint}", v.pos)
                ends.append(v.value if v.type == "time" else self.as_time(v).value)
            return (tuple(ends), node.pos)
        v = self.operand(node, "OVERLAPS")
        if isinstance(v, Value) and _kind(v.type) == "number":
            return self.as_time(v)
        return v

    def side_word(self, s: Any) -> str:
        if isinstance(s, Column):
            return f"{s.text} ({_TYPE_WORDS[s.field.type]})"
        if isinstance(s, Value):
            return f"{s.text} ({_TYPE_WORDS[s.type]})"
        return "a pair of times"


_KIND_WORDS = {"number": "number", "str": "string", "time": "time", "timespan": "time span"}
#: Names listed in "known names" hints (the documented ones, not every alias).
_DOC_NAMES = (
    "instrument", "detector", "physical_filter", "band", "exposure", "day_obs", "seq_num",
    "exposure.obs_id", "exposure.observation_type", "exposure.observation_reason",
    "exposure.science_program", "exposure.exposure_time", "exposure.dark_time", "exposure.timespan",
    "detector.full_name",
)


def _explicit_bind_names(node: Any) -> frozenset:
    if isinstance(node, Name):
        return frozenset([node.name]) if node.explicit_bind else frozenset()
    if isinstance(node, tuple):
        return frozenset().union(*(_explicit_bind_names(x) for x in node))
    if dataclasses.is_dataclass(node):
        return frozenset().union(*(_explicit_bind_names(getattr(node, f.name)) for f in dataclasses.fields(node)))
    return frozenset()


def _bind_key(bind: Mapping[str, Any] | None):
    if not bind:
        return ()
    try:
        key = tuple(sorted((k, _freeze(v)) for k, v in bind.items()))
        hash(key)
        return key
    except TypeError:
        return None


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ("seq", type(v).__name__, tuple(_freeze(x) for x in v))
    if isinstance(v, (set, frozenset)):
        return ("set", frozenset(_freeze(x) for x in v))
    if not isinstance(v, (str, int, float, Timespan)):
        raise TypeError("not cached")  # e.g. astropy Time: just not cached
    return (type(v).__name__, v)


_TYPED_CACHE: "OrderedDict[tuple, Selection]" = OrderedDict()
_TYPED_CACHE_SIZE = 4096
_TYPED_CACHE_LOCK = threading.Lock()


def _type_tree(expression: str, bind: Mapping[str, Any]) -> Selection:
    tree = _parse_tree(expression)
    if tree is None:
        return Selection(expression, None, frozenset())
    typer = _Typer(expression, bind, tree)
    root = typer.condition(tree)
    return Selection(expression, root, frozenset(typer.fields))


def parse_selection(expression: str, bind: Mapping[str, Any] | None = None) -> Selection:
    """Parse and type-check a selection (pure; cached per expression and bind values).

    Parameters
    ----------
    expression : str
        A butler-style ``where`` expression; empty selects everything.
    bind : mapping, optional
        Values for names used in the expression (``name`` or ``:name``); a list, tuple
        or set expands inside ``IN (name)``.

    Returns
    -------
    Selection

    Raises
    ------
    SelectionError
        Syntax, unknown name, type mismatch, bad range/time literal.  The message shows
        the expression with a caret under the offending token.

    Examples
    --------
    >>> sel = parse_selection("instrument = 'LATISS' AND exposure.seq_num IN (1..5)")
    >>> sorted(f.name for f in sel.fields)
    ['exposure.seq_num', 'instrument']
    """
    if expression is None:
        expression = ""
    if not isinstance(expression, str):
        raise UserInputError(f"a selection must be text, got {type(expression).__name__}: {expression!r}")
    key = _bind_key(bind)
    if key is None:  # unhashable bind values (e.g. astropy Time): not cached
        return _type_tree(expression, dict(bind or {}))
    key = (expression, key)
    with _TYPED_CACHE_LOCK:
        hit = _TYPED_CACHE.get(key)
        if hit is not None:
            _TYPED_CACHE.move_to_end(key)
            return hit
    selection = _type_tree(expression, dict(bind or {}))
    with _TYPED_CACHE_LOCK:
        _TYPED_CACHE[key] = selection
        if len(_TYPED_CACHE) > _TYPED_CACHE_SIZE:
            _TYPED_CACHE.popitem(last=False)
    return selection


# --------------------------------------------------------------------------------------------
# Instrument rule
# --------------------------------------------------------------------------------------------


def _is_instrument(x: Any) -> bool:
    return isinstance(x, Column) and x.field.element == "instrument" and x.field.column == "name"


def _constrains_instrument(node: Any) -> bool:
    if isinstance(node, Compare) and node.op == "=":
        return (_is_instrument(node.left) and isinstance(node.right, Value)) or (
            _is_instrument(node.right) and isinstance(node.left, Value))
    if isinstance(node, InSet):
        return _is_instrument(node.operand) and not node.negated and not node.ranges
    if isinstance(node, BoolOp):
        test = any if node.op == "and" else all
        return test(_constrains_instrument(x) for x in node.operands)
    return False


def named_instruments(selection: Selection) -> list[str]:
    """Instrument names a selection compares ``instrument`` with (to explain empty results).

    >>> named_instruments(parse_selection("instrument IN ('A', 'B') OR instrument = 'C'"))
    ['A', 'B', 'C']
    """
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, (BoolOp,)):
            for x in node.operands:
                walk(x)
        elif isinstance(node, Not):
            walk(node.operand)
        elif isinstance(node, Compare):
            for a, b in ((node.left, node.right), (node.right, node.left)):
                if _is_instrument(a) and isinstance(b, Value) and b.type == "str":
                    names.append(b.value)
        elif isinstance(node, InSet) and _is_instrument(node.operand):
            names.extend(v.value for v in node.values if v.type == "str")

    walk(selection.root)
    return list(dict.fromkeys(names))


def _check_instrument(node: Any, covered: bool, expression: str) -> None:
    if isinstance(node, BoolOp):
        if node.op == "and":
            covered = covered or any(_constrains_instrument(x) for x in node.operands)
        for x in node.operands:
            _check_instrument(x, covered, expression)
        return
    if isinstance(node, Not):
        _check_instrument(node.operand, covered, expression)
        return
    if covered:
        return
    if isinstance(node, Compare):
        columns = [node.left, node.right]
    elif isinstance(node, InSet):
        columns = [node.operand]
    else:
        return
    for c in columns:
        if isinstance(c, Column) and c.field.needs_instrument:
            end = _end_of_predicate(node, expression)
            example = expression[min(_pos(columns[0]), node.pos):end].translate(_ONE_LINE).strip() or c.text
            raise _error(MSG_NEEDS_INSTRUMENT.format(name=c.text, example=example), expression, c.pos)


def _end_of_predicate(node: Any, expression: str) -> int:
    if isinstance(node, InSet):
        i = expression.find(")", node.pos)
        return len(expression) if i < 0 else i + 1
    right = node.right
    return _pos(right) + len(getattr(right, "text", ""))


