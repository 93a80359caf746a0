"""Selections, step 1: the text -> a syntax tree (lark LALR grammar; cached per text).

The messages of every selection error live here too (module constants: tests pin their
words).  Nothing here knows the dimension schema or SQL: see :mod:`.typed` and
:mod:`.compiler`.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from cpframe.core.errors import SelectionError
from cpframe.core.model import NS_MAX, NS_MIN, tai_ns

__all__: list[str] = []  # the grammar and messages serve .typed and .compiler; the package exports



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


#: Deepest nesting of NOT / AND / OR a selection may have (``NOT NOT ... x`` or alternating
#: parenthesised AND/OR); far beyond any real selection, and low enough that typing and
#: compiling never exhaust Python's stack (issue 11: 500 NOTs were a RecursionError).
MAX_NESTING = 64
#: Most comparisons and IN lists in one selection (1,000 ORs are fine; a runaway generated
#: selection is refused at once instead of taking the database down).
MAX_PREDICATES = 10_000
MSG_TOO_DEEP = ("the selection nests NOT/AND/OR {depth} levels deep here (at most {limit}); simplify it, e.g. "
                "drop double NOTs or use IN (...) lists")
MSG_TOO_MANY = ("the selection has {n} comparisons (at most {limit}); use IN (...) lists or ranges "
                "(a..b) instead of long OR chains")


def _check_size(tree: Any, expression: str) -> None:
    """Refuse trees deeper than MAX_NESTING or with more than MAX_PREDICATES leaves (iteratively)."""
    stack = [(tree, 1)]
    leaves = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (Negation, Logical)):
            if depth > MAX_NESTING:
                raise _error(MSG_TOO_DEEP.format(depth=depth, limit=MAX_NESTING), expression, _pos(node))
            kids = (node.operand,) if isinstance(node, Negation) else node.operands
            stack.extend((k, depth + 1) for k in kids)
        else:
            leaves += 1
            if leaves > MAX_PREDICATES:
                raise _error(MSG_TOO_MANY.format(n=f"more than {MAX_PREDICATES}", limit=MAX_PREDICATES),
                             expression, None)


@functools.lru_cache(maxsize=4096)
def _parse_tree(expression: str):
    """Text -> syntax tree (None for an empty expression).  Cached; raises SelectionError."""
    if not expression.strip():
        return None
    try:
        tree = _parser().parse(expression)
        _check_size(tree, expression)
        return tree
    except UnexpectedInput as err:
        raise _syntax_error(err, expression) from None
    except SelectionError as err:  # from a callback: add the expression for the caret
        raise _error(err.reason, expression, err.position) from None
    except VisitError as err:  # a callback error wrapped by lark
        if isinstance(err.orig_exc, SelectionError):
            raise _error(err.orig_exc.reason, expression, err.orig_exc.position) from None
        raise


