"""Selections: the butler ``where`` language, parsed, type-checked and compiled to SQL.

A selection goes through three steps, each a pure function of the previous result:

1. **parse** -- the text is read by a lark LALR parser (grammar below) into a small
   syntax tree of frozen dataclasses; the tree depends only on the text and is cached.
2. **type** -- names are resolved against the dimension schema
   (``cpframe.repository.schema``: instrument, detector, physical_filter with its band,
   exposure) or the ``bind`` mapping, literals are checked against the field they are
   compared with, and the result is a :class:`Selection`.
3. **compile** -- the typed tree becomes a SQLAlchemy Core expression in which every
   user value is a bound parameter; no SQL text is ever built from user input.

Every problem is a :class:`cpframe.core.errors.SelectionError` carrying the expression and
the 0-based position of the offending token, so its message shows a caret under it.

The language (spec ``registry.md`` section 1, docs/selections.md)::

    instrument = 'LSSTComCam' AND exposure.observation_type = 'bias'
        AND exposure.day_obs = 20241110 AND exposure.seq_num IN (10..20, 44, 50..60:2)
    exposure.timespan OVERLAPS (T'2024-11-10 12:00:00', T'2024-11-10 13:00:00/tai')
    instrument = inst AND exposure IN (ids)          # bind={"inst": ..., "ids": [...]}

Public functions (the registry calls them with an open SQLAlchemy connection):
:func:`parse_selection`, :func:`select_dimension_records`, :func:`select_data_ids`,
:func:`filter_datasets`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import operator
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, Union

import sqlalchemy as sa
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from cpframe.core.errors import SelectionError, UserInputError
from cpframe.core.model import NS_MAX, NS_MIN, DataId, Timespan, tai_ns
from cpframe.repository import schema
__all__ = [
    "Selection",
    "Field",
    "FIELDS",
    "parse_selection",
    "compile_selection",
    "named_instruments",
    "select_dimension_records",
    "select_data_ids",
    "filter_datasets",
    "DIMENSION_ELEMENTS",
    "DATA_ID_DIMENSIONS",
]

# --------------------------------------------------------------------------------------------
# Messages (module constants: tests pin their useful words)
# --------------------------------------------------------------------------------------------

MSG_DOUBLE_QUOTE = "double quotes are not allowed: strings take single quotes, e.g. instrument = 'LSSTComCam'"
MSG_UNTERMINATED = "this string has no closing single quote"
MSG_ARITHMETIC = "arithmetic ({char}) is not supported in cpframe selections; compare fields with values"
MSG_BAD_CHAR = "unexpected character {char!r}"
MSG_DOUBLE_EQUAL = "unexpected '=': equality is a single '=' (as in SQL), not '=='"
MSG_UNEXPECTED = "syntax error: unexpected {what}; expected {expected}"
MSG_ENDS_EARLY = "syntax error: the selection ends too early; expected {expected}"
MSG_UNKNOWN_NAME = "unknown name {name!r}"
MSG_QUOTE_HINT = "If {name!r} is a value, quote it: '{name}' (strings take single quotes)."
MSG_DID_YOU_MEAN = "Did you mean {options}?"
MSG_KNOWN_NAMES = "Known names: {names}."
MSG_KEYWORD = "syntax error: {name!r} is a keyword and cannot stand here; a name or a value was expected"
MSG_AMBIGUOUS = "name {name!r} is ambiguous: write one of {options}"
MSG_BIND_MISSING = "bind parameter {name!r} is not given; pass bind={{{name!r}: ...}}"
MSG_BIND_TYPE = "bind parameter {name!r} has a value of type {type} that selections cannot use"
MSG_BIND_EMPTY = "bind parameter {name!r} is an empty sequence; IN needs at least one value"
MSG_BIND_SHADOWS = (
    "{name!r} is both a field and a bind parameter: write :{name} for the bound value (the bare name "
    "is then the field), or rename the bind parameter"
)
MSG_BIND_PAIR = "bind parameter {name!r} after OVERLAPS must be a (begin, end) pair, not {n} values"
MSG_BIND_LIST_OUTSIDE_IN = "bind parameter {name!r} is a sequence; use it inside IN ({name})"
MSG_NOT_CONDITION = "expected a condition (true or false) but found {what}; compare it with something, e.g. {example}"
MSG_TYPE_MISMATCH = "cannot compare {left} ({ltype}) with {right} ({rtype})"
MSG_QUOTED_NUMBER = "{field} is an integer: write it unquoted, e.g. {field} = {digits}"
MSG_TIME_HINT = "write a time literal, e.g. T'2024-11-10 12:44:00' (UTC) or T'2024-11-10 12:44:37/tai'"
MSG_TIMESPAN_COMPARE = (
    "{field} is a time span: use {field} OVERLAPS (T'begin', T'end'), or compare "
    "{field}.begin / {field}.end with a time"
)
MSG_RANGE_OUTSIDE_IN = "a range ({text}) is only allowed inside IN (...), e.g. exposure.seq_num IN ({text})"
MSG_RANGE_REVERSED = "range {text} is reversed (start {start} > stop {stop}); write {stop}..{start}"
MSG_RANGE_STRIDE = "range {text} has stride {stride}; the stride must be a positive integer"
MSG_RANGE_HALF = "range {text} is incomplete: a range needs a start and a stop, e.g. 40..65 or 40..65:5"
MSG_RANGE_TYPE = "range {text} is a set of integers but {field} is {ftype}"
MSG_IN_EMPTY = "IN () is empty: list at least one value, e.g. detector IN (0, 1, 2)"
MSG_IN_MIXED = "IN list mixes {first} and {other} values; use one type"
MSG_IN_COLUMN = "IN lists hold values (literals, ranges, bind names), not fields like {name}"
MSG_INT_RANGE = "integer {text} is out of range (|value| must be below 2**63)"
MSG_NEGATIVE = "a sign (+ or -) can only precede a number, not {what}"
MSG_BAD_STRING = "string {text} contains a character a database cannot store (NUL or an unpaired surrogate)"
MSG_BAD_TIME = "time literal {text} is not understood: {reason}"
MSG_TIME_RANGE = "time {text} is outside the years 1824..2115 that cpframe can store"
MSG_OVERLAPS_TYPES = (
    "OVERLAPS needs a time span on one side (exposure.timespan) and a time, a pair of times "
    "(T'begin', T'end') or a bound Timespan on the other; found {left} and {right}"
)
MSG_SPAN_REVERSED = "time span {text} begins after it ends; swap the two times"
MSG_PAIR_OUTSIDE_OVERLAPS = "a pair of values (a, b) is only allowed after OVERLAPS"
MSG_NEEDS_INSTRUMENT = (
    "{name} values are only unique within one instrument: constrain the instrument in the "
    "same expression, e.g. instrument='LSSTComCam' AND {example}"
)
MSG_FIELD_CONTEXT = "{name} is only available when selecting datasets (query-datasets), not {context}"
MSG_UNKNOWN_ELEMENT = "unknown dimension element {name!r}; choose one of {options}"
MSG_UNKNOWN_DIMENSION = "unknown dimension {name!r}; choose among {options}"

# --------------------------------------------------------------------------------------------
# Grammar (lark, LALR with the contextual lexer)
# --------------------------------------------------------------------------------------------

_GRAMMAR = r"""
?start: or_test

?or_test: and_test (OR and_test)*
?and_test: not_test (AND not_test)*
?not_test: NOT not_test                         -> negation
         | predicate
?predicate: operand COMPOP operand              -> compare
          | operand IN LPAR [items] RPAR        -> in_list
          | operand NOT IN LPAR [items] RPAR    -> not_in_list
          | operand OVERLAPS operand            -> overlaps
          | operand
items: operand (COMMA operand)*
?operand: atom
        | SIGN atom                             -> signed
?atom: INT                                      -> int_lit
     | FLOAT                                    -> float_lit
     | STRING                                   -> str_lit
     | TIME                                     -> time_lit
     | RANGE                                    -> range_lit
     | IDENT                                    -> ident
     | BIND                                     -> bind
     | LPAR or_test RPAR                        -> group
     | LPAR or_test COMMA or_test RPAR          -> pair

// keywords are case-insensitive and win over names (\b keeps "android" a name)
OR.4: /or\b/i
AND.4: /and\b/i
NOT.4: /not\b/i
IN.4: /in\b/i
OVERLAPS.4: /overlaps\b/i
TIME.4: /T'[^']*'/
// a whole range is one token, half ranges included so that they get a clear message
RANGE.3: /(-?\d+)?[ \t]*\.\.[ \t]*-?\d*([ \t]*:[ \t]*-?\d*)?/
FLOAT.2: /(\d+\.(?!\.)\d*|\.\d+)([eE][+-]?\d+)?|\d+[eE][+-]?\d+/
INT.1: /\d+/
STRING: /'[^']*'/
IDENT: /[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*/
BIND: /:[A-Za-z_][A-Za-z_0-9]*/
COMPOP: /!=|<=|>=|=|<|>/
SIGN: /[+-]/
LPAR: "("
RPAR: ")"
COMMA: ","
%ignore /\s+/
"""

_KEYWORDS = ("and", "or", "not", "in", "overlaps")

#: How terminals are named in syntax-error messages.
_TERMINAL_WORDS = {
    "OR": "OR", "AND": "AND", "NOT": "NOT", "IN": "IN", "OVERLAPS": "OVERLAPS",
    "TIME": "a time T'...'", "RANGE": "a range a..b", "FLOAT": "a number", "INT": "a number",
    "STRING": "a 'string'", "IDENT": "a name", "BIND": "a :bind name", "SIGN": "a sign",
    "COMPOP": "a comparison (= != < <= > >=)", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
    "$END": "the end",
}

# --------------------------------------------------------------------------------------------
# Syntax tree (bind-independent; cached per expression text)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    """An identifier as written (``exposure.day_obs``, ``seq_num``, a bind name)."""

    name: str
    pos: int
    explicit_bind: bool = False
    """True for the ``:name`` form, which can only be a bind parameter."""


@dataclass(frozen=True)
class Literal:
    """A literal value; ``kind`` is ``int``, ``float``, ``str`` or ``time`` (ns TAI)."""

    value: Any
    kind: str
    pos: int
    text: str


@dataclass(frozen=True)
class RangeLiteral:
    """``start..stop[:stride]``: the integers ``start, start+stride, ... <= stop``."""

    start: int
    stop: int
    stride: int
    pos: int
    text: str


@dataclass(frozen=True)
class Pair:
    """``(a, b)``: the two ends of a time span."""

    first: Any
    second: Any
    pos: int


@dataclass(frozen=True)
class Signed:
    """A sign in front of something that is not a number literal (always an error)."""

    operand: Any
    pos: int


@dataclass(frozen=True)
class Comparison:
    op: str
    left: Any
    right: Any
    pos: int


@dataclass(frozen=True)
class Membership:
    operand: Any
    items: tuple
    negated: bool
    pos: int


@dataclass(frozen=True)
class Overlap:
    left: Any
    right: Any
    pos: int


@dataclass(frozen=True)
class Negation:
    operand: Any
    pos: int


@dataclass(frozen=True)
class Logical:
    op: str
    """``and`` or ``or``."""
    operands: tuple
    pos: int


def _error(message: str, expression: str, pos: int | None) -> SelectionError:
    """A SelectionError whose caret lines up: tabs and newlines are shown as spaces."""
    return SelectionError(message, expression.translate(_ONE_LINE), pos)


_ONE_LINE = {ord(c): " " for c in "\t\n\r\v\f"}


def _pos(node: Any) -> int:
    return getattr(node, "pos", 0)


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
    for col, typ in (("obs_id", "str"), ("seq_num", "int"), ("observation_type", "str"),
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
# Step 1: parse
# --------------------------------------------------------------------------------------------


def _int(text: str, pos: int) -> int:
    value = int(text)
    if abs(value) >= 2**63:
        raise SelectionError(MSG_INT_RANGE.format(text=text), "", pos)
    return value


_SCALE_DEFAULTS = {"iso": "utc", "isot": "utc", "fits": "utc", "yday": "utc", "unix": "utc", "cxcsec": "tt"}
_TIME_FORMATS = ("mjd", "jd", "iso", "isot", "fits", "yday", "unix", "unix_tai", "cxcsec", "gps", "decimalyear")
# ut1 needs IERS tables that may have to be downloaded; "local" is not a real scale.
_TIME_SCALES = ("tai", "utc", "tt", "tcg", "tcb", "tdb")


def _parse_time(content: str, text: str, pos: int) -> int:
    """``T'...'`` content -> ns TAI (format and scale guessed as the butler does)."""
    parts = content.strip().split("/")
    fmt = scale = None
    if len(parts) > 1 and parts[0].strip().lower() in _TIME_FORMATS:
        fmt = parts.pop(0).strip().lower()
    if len(parts) > 1 and parts[-1].strip().lower() in _TIME_SCALES + ("ut1", "local"):
        scale = parts.pop().strip().lower()
    if len(parts) != 1 or not parts[0].strip():
        raise SelectionError(MSG_BAD_TIME.format(text=text, reason="write T'[format/]time[/scale]'"),
                             "", pos)
    value = parts[0].strip()
    if scale in ("ut1", "local"):
        raise SelectionError(MSG_BAD_TIME.format(
            text=text, reason=f"scale {scale!r} is not supported; use one of {', '.join(_TIME_SCALES)}"),
            "", pos)
    number = None
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value):
        number = float(value)
        fmt = fmt or "mjd"
    elif fmt is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T.*", value):
            fmt = "isot"
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}( .*)?", value):
            fmt = "iso"
        elif value.startswith("+"):
            fmt = "fits"
        elif re.fullmatch(r"\d{4}:\d{3}(:.*)?", value):
            fmt = "yday"
        else:
            raise SelectionError(MSG_BAD_TIME.format(
                text=text, reason="use ISO (2024-11-10 12:44:00) or an MJD number"), "", pos)
    scale = scale or _SCALE_DEFAULTS.get(fmt, "tai")
    from astropy.time import Time

    try:
        with warnings.catch_warnings():
            # "dubious year" from ERFA: UTC leap seconds are unknown far from today.
            warnings.simplefilter("ignore")
            if number is not None and not math.isfinite(number):
                raise ValueError("not a finite number")
            t = Time(number if number is not None else value, format=fmt, scale=scale)
            if not t.isscalar:
                raise ValueError("not a single time")
            ns = tai_ns(t)
    except SelectionError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SelectionError(MSG_BAD_TIME.format(text=text, reason=reason), "", pos) from None
    except Exception as err:  # astropy/erfa raise a variety of classes for absurd inputs
        raise SelectionError(MSG_BAD_TIME.format(text=text, reason=type(err).__name__), "", pos) from None
    if not NS_MIN < ns < NS_MAX:
        raise SelectionError(MSG_TIME_RANGE.format(text=text), "", pos)
    return ns


def _mjd_tai_ns(number: float, text: str, pos: int) -> int:
    """A bare number used as a time: MJD in TAI."""
    return _parse_time(f"mjd/{number!r}/tai", text, pos)


_RANGE_RE = re.compile(r"(?P<start>-?\d+)?\s*\.\.\s*(?P<stop>-?\d*)(\s*:\s*(?P<stride>-?\d*))?")


def _range(text: str, pos: int) -> RangeLiteral:
    m = _RANGE_RE.fullmatch(text)
    start, stop, stride = m.group("start"), m.group("stop"), m.group("stride")
    if not start or not stop or (m.group(3) is not None and not stride):
        raise SelectionError(MSG_RANGE_HALF.format(text=text), "", pos)
    a, b = _int(start, pos), _int(stop, pos)
    c = _int(stride, pos) if stride else 1
    if c <= 0:
        raise SelectionError(MSG_RANGE_STRIDE.format(text=text, stride=c), "", pos)
    if a > b:
        raise SelectionError(MSG_RANGE_REVERSED.format(text=text, start=a, stop=b), "", pos)
    return RangeLiteral(a, b, c, pos, text)


def _string(s: str, text: str, pos: int) -> str:
    if "\x00" in s or re.search("[\ud800-\udfff]", s):
        raise SelectionError(MSG_BAD_STRING.format(text=text), "", pos)
    return s


class _Builder(Transformer):
    """lark callbacks, run during the LALR parse, that build the syntax tree.

    Errors raised here carry a position but no expression; :func:`_parse_tree` adds it.
    """

    # -- leaves -----------------------------------------------------------------------------
    def int_lit(self, c):
        t = c[0]
        return Literal(_int(str(t), t.start_pos), "int", t.start_pos, str(t))

    def float_lit(self, c):
        t = c[0]
        return Literal(float(str(t)), "float", t.start_pos, str(t))

    def str_lit(self, c):
        t = c[0]
        return Literal(_string(str(t)[1:-1], str(t), t.start_pos), "str", t.start_pos, str(t))

    def time_lit(self, c):
        t = c[0]
        return Literal(_parse_time(str(t)[2:-1], str(t), t.start_pos), "time", t.start_pos, str(t))

    def range_lit(self, c):
        t = c[0]
        return _range(str(t), t.start_pos)

    def ident(self, c):
        return Name(str(c[0]), c[0].start_pos)

    def bind(self, c):
        return Name(str(c[0])[1:], c[0].start_pos, explicit_bind=True)

    def signed(self, c):
        sign, operand = c
        if isinstance(operand, Literal) and operand.kind in ("int", "float"):
            value = -operand.value if str(sign) == "-" else operand.value
            if operand.kind == "int":
                value = _int(str(value), sign.start_pos)
            return Literal(value, operand.kind, sign.start_pos, f"{sign}{operand.text}")
        return Signed(operand, sign.start_pos)

    # -- structure --------------------------------------------------------------------------
    def group(self, c):
        return c[1]

    def pair(self, c):
        return Pair(c[1], c[3], c[0].start_pos)

    def items(self, c):
        return tuple(x for x in c if not isinstance(x, Token))

    def compare(self, c):
        left, op, right = c
        return Comparison(str(op), left, right, op.start_pos)

    def in_list(self, c):
        operand, kw, lpar, items, _ = c
        return _membership(operand, kw, lpar, items, False)

    def not_in_list(self, c):
        operand, kw, _in, lpar, items, _ = c
        return _membership(operand, kw, lpar, items, True)

    def overlaps(self, c):
        left, kw, right = c
        return Overlap(left, right, kw.start_pos)

    def negation(self, c):
        return Negation(c[1], c[0].start_pos)

    def or_test(self, c):
        return Logical("or", tuple(c[0::2]), c[1].start_pos)

    def and_test(self, c):
        return Logical("and", tuple(c[0::2]), c[1].start_pos)


def _membership(operand, kw, lpar, items, negated) -> Membership:
    if not items:
        raise SelectionError(MSG_IN_EMPTY, "", lpar.start_pos)
    return Membership(operand, tuple(items), negated, kw.start_pos)


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual", transformer=_Builder(), maybe_placeholders=True)


def _syntax_error(err: Exception, expression: str) -> SelectionError:
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        char = expression[pos] if pos < len(expression) else ""
        if char == '"':
            return _error(MSG_DOUBLE_QUOTE, expression, pos)
        if char == "'":
            return _error(MSG_UNTERMINATED, expression, pos)
        if char in "*/%":
            return _error(MSG_ARITHMETIC.format(char=char), expression, pos)
        return _error(MSG_BAD_CHAR.format(char=char), expression, pos)
    expected = sorted({_TERMINAL_WORDS.get(t, t) for t in getattr(err, "expected", ()) or ()})
    expected_text = ", ".join(expected) if expected else "more"
    token = getattr(err, "token", None)
    if isinstance(err, UnexpectedEOF) or token is None or token.type == "$END":
        return _error(MSG_ENDS_EARLY.format(expected=expected_text), expression, len(expression))
    pos = token.start_pos if token.start_pos is not None else len(expression)
    if token.type == "COMPOP" and str(token) == "=" and expression[:pos].rstrip().endswith(("=", "!", "<", ">")):
        return _error(MSG_DOUBLE_EQUAL, expression, pos)
    what = f"{_TERMINAL_WORDS.get(token.type, token.type)} {str(token)!r}"
    return _error(MSG_UNEXPECTED.format(what=what, expected=expected_text), expression, pos)


@functools.lru_cache(maxsize=4096)
def _parse_tree(expression: str):
    """Text -> syntax tree (None for an empty expression).  Cached; raises SelectionError."""
    if not expression.strip():
        return None
    try:
        return _parser().parse(expression)
    except UnexpectedInput as err:
        raise _syntax_error(err, expression) from None
    except SelectionError as err:  # from a callback: add the expression for the caret
        raise _error(err.reason, expression, err.position) from None
    except VisitError as err:  # a callback error wrapped by lark
        if isinstance(err.orig_exc, SelectionError):
            raise _error(err.orig_exc.reason, expression, err.orig_exc.position) from None
        raise


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


def _sql(node: Any, scope: _Scope) -> sa.ColumnElement:
    if isinstance(node, BoolOp):
        parts = [_sql(x, scope) for x in node.operands]
        return sa.and_(*parts) if node.op == "and" else sa.or_(*parts)
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
