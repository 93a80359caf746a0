"""Property tests of selections on a real SQLite registry.

1. Random token soup (valid tokens, near misses and garbage) either parses and runs, or
   raises :class:`SelectionError` -- never another exception -- and the SQL sent to the
   database never contains a literal the user wrote (bound parameters only).
2. Random *well-formed* selections over exposure fields return exactly the rows that a
   plain-Python evaluator with SQL's three-valued logic selects.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpframe.core.errors import SelectionError
from cpframe.repository import schema
from cpframe.repository.query import filter_datasets, select_data_ids, select_dimension_records

from .test_selection import ROWS, make_engine

SETTINGS = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def engine_and_log(tmp_path_factory):
    engine = make_engine(tmp_path_factory.mktemp("selection_prop") / "registry.sqlite3")
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    yield engine, statements
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# 1. Token soup
# ---------------------------------------------------------------------------------------------

# user literals are distinctive so that finding them in SQL text cannot be a coincidence
_STRINGS = st.from_regex(r"Zq[a-z0-9_ %;\-]{0,6}", fullmatch=True)
_BIG_INTS = st.integers(min_value=70000, max_value=79999999)

_NAMES = ["instrument", "detector", "exposure", "physical_filter", "band", "day_obs", "seq_num",
          "exposure.day_obs", "exposure.seq_num", "exposure.obs_id", "exposure.observation_type",
          "exposure.observation_reason", "exposure.science_program", "exposure.exposure_time",
          "exposure.dark_time", "exposure.timespan", "exposure.timespan.begin", "exposure.timespan.end",
          "detector.full_name", "detector.id", "exposure.id", "id", "name", "Instrument", "LSSTComCam",
          "visit", "ingest_date", "instrument.detector_max", "x", "ids", ":x", ":ids", ":nope", "T"]
_FIXED = ["AND", "and", "Or", "OR", "NOT", "not", "IN", "in", "OVERLAPS", "overlaps", "(", ")", ",",
          "=", "!=", "<", "<=", ">", ">=", "==", "<>", "-", "+", "..", ":", "'LSSTComCam'", "'LATISS'",
          "'bias'", "'r_03'", "'g'", "0", "1", "44", "20241110", "2024111000044", "4.5", "1e3", "-3",
          "T'2024-11-10 22:30:00'", "T'2024-11-10 22:30:00/tai'", "T'60624.9'", "T'mjd/60625/tai'",
          "T'garbage'", "T'2500-01-01'", "T'1/2/3/4'", '"LATISS"', "'open", "%", "*", "$", "\\", "é",
          "\x00", "\t", "1..", "..5", "5..1", "1..5:0", "1..9:2", "40..65:5", "99999999999999999999",
          "1.5..3", "(1, 2)", "IN ()", ".5", "5.", "1e999"]


@st.composite
def token_soup(draw):
    literals: list[str] = []
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=14))):
        kind = draw(st.sampled_from(["fixed", "fixed", "name", "string", "int", "range", "time"]))
        if kind == "fixed":
            parts.append(draw(st.sampled_from(_FIXED)))
        elif kind == "name":
            parts.append(draw(st.sampled_from(_NAMES)))
        elif kind == "string":
            s = draw(_STRINGS)
            literals.append(s)
            parts.append(f"'{s}'")
        elif kind == "int":
            n = draw(_BIG_INTS)
            literals.append(str(n))
            parts.append(str(n))
        elif kind == "range":
            a, b = draw(_BIG_INTS), draw(_BIG_INTS)
            literals += [str(a), str(b)]
            parts.append(f"{a}..{b}" + draw(st.sampled_from(["", ":3", ":0", ":"])))
        else:
            parts.append(draw(st.sampled_from(["T'2024-11-10'", "T'60625.5'", "T'2024-11-10T01:02:03.5/tai'"])))
    seps = draw(st.lists(st.sampled_from([" ", " ", "", "  ", "\n"]), min_size=len(parts), max_size=len(parts)))
    text = "".join(p + s for p, s in zip(parts, seps))
    return text, literals


_OPERANDS = _NAMES + ["'LSSTComCam'", "'LATISS'", "'bias'", "'20241110'", "0", "44", "20241110", "4.5", "-3",
                      "T'2024-11-10 22:30:00'", "T'60624.9'", "(T'2024-11-10', T'2024-11-11')", "(1, 2)"]
_ITEMS = ["1", "44", "'bias'", "'Zq'", "1..5", "40..65:5", "1..5", "40..65:5", "63..44", "1..5:0", "x", "ids",
          ":ids", "ids", "seq_num", "T'2024-11-10'", "4.5", "44", "'flat'"]


_GOOD_LEFT = ["seq_num", "exposure.observation_type", "exposure.exposure_time", "band", "physical_filter",
              "exposure.science_program", "detector.full_name", "exposure.timespan", "exposure.timespan.begin",
              "instrument"]
_GOOD_RIGHT = ["'LSSTComCam'", "'bias'", "'r_03'", "'g'", "44", "4.5", "T'2024-11-10 22:30:00'",
               "(T'2024-11-10', T'2024-11-11')", "x", ":x", "60624.9"]


@st.composite
def operand(draw, literals, side="any"):
    kind = draw(st.sampled_from(["pool", "pool", "string", "int", "good", "good", "good"]))
    if kind == "good":
        return draw(st.sampled_from(_GOOD_LEFT if side == "left" else _GOOD_RIGHT))
    if kind == "string":
        s = draw(_STRINGS)
        literals.append(s)
        return f"'{s}'"
    if kind == "int":
        n = draw(_BIG_INTS)
        literals.append(str(n))
        return str(n)
    return draw(st.sampled_from(_OPERANDS))


@st.composite
def structured(draw):
    """Clauses shaped like the grammar, with operands of any type, sometimes mutated."""
    literals: list[str] = []
    clauses = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        left = draw(operand(literals, "left"))
        shape = draw(st.sampled_from(["cmp", "cmp", "in", "overlaps"]))
        if shape == "cmp":
            clause = f"{left} {draw(st.sampled_from(['=', '!=', '<', '<=', '>', '>=']))} {draw(operand(literals))}"
        elif shape == "in":
            items = draw(st.lists(st.one_of(st.sampled_from(_ITEMS), operand(literals)),
                                  min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=4))
            clause = f"{left} {draw(st.sampled_from(['IN', 'not in']))} ({', '.join(items)})"
        else:
            clause = f"{left} OVERLAPS {draw(operand(literals))}"
        if draw(st.booleans()):
            clause = f"NOT ({clause})" if draw(st.booleans()) else f"({clause})"
        clauses.append(clause)
    seps = draw(st.lists(st.sampled_from([" AND ", " or "]), min_size=len(clauses) - 1, max_size=len(clauses) - 1))
    text = clauses[0] + "".join(s + c for s, c in zip(seps, clauses[1:]))
    if draw(st.integers(0, 4)) == 0:  # mutate: overwrite a slice with a random token
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 4)))
        text = text[:i] + draw(st.sampled_from(_FIXED)) + text[j:]
    return text, literals


BIND = {"x": 7123456, "ids": [7123457, 7123458], "nope_not_used": 1}


def _no_literals(statements: list[str], literals: list[str]) -> None:
    for sql in statements:
        for lit in literals:
            assert lit not in sql, (lit, sql)
        assert "Zq" not in sql
        assert not re.search(r"\b7123\d{3}\b", sql)  # bind values


@SETTINGS
@given(st.one_of(token_soup(), structured(), structured()))
def test_random_selections_run_or_raise_selection_error(engine_and_log, soup):
    engine, statements = engine_and_log
    where, literals = soup
    statements.clear()
    with engine.connect() as conn:
        for call in (
            lambda: select_dimension_records(conn, "exposure", where, BIND, None),
            lambda: select_data_ids(conn, ["exposure", "detector"], where, BIND, "LATISS"),
            lambda: conn.execute(filter_datasets(sa.select(schema.dataset.c.id), schema.dataset, where, BIND)).all(),
        ):
            try:
                result = call()
            except SelectionError as err:
                # shown on one line (tabs/newlines as spaces) so that the caret lines up
                assert err.expression == re.sub(r"[\t\n\r\v\f]", " ", where)
                assert err.position is None or 0 <= err.position <= len(where)
                assert "^" in str(err) or err.position is None
            else:
                assert isinstance(result, list)
    _no_literals(statements, literals)


# ---------------------------------------------------------------------------------------------
# 2. Well-formed selections against a three-valued Python evaluator
# ---------------------------------------------------------------------------------------------

_FIELD_KEYS = {
    "seq_num": "seq_num", "exposure.seq_num": "seq_num", "day_obs": "day_obs",
    "exposure.exposure_time": "exposure_time", "exposure.dark_time": "dark_time",
    "exposure.observation_type": "observation_type", "exposure.science_program": "science_program",
    "exposure.observation_reason": "observation_reason", "physical_filter": "physical_filter",
    "band": "band", "exposure.obs_id": "obs_id", "instrument": "instrument", "exposure": "id",
}
_INT_FIELDS = ["seq_num", "exposure.seq_num", "day_obs", "exposure"]
_NUM_FIELDS = _INT_FIELDS + ["exposure.exposure_time", "exposure.dark_time"]
_STR_FIELDS = [f for f in _FIELD_KEYS if f not in _NUM_FIELDS]


def _values(key):
    vals = sorted({r[key] for r in ROWS if r[key] is not None})
    return vals


_OPS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _lit(v):
    return f"'{v}'" if isinstance(v, str) else repr(v)


@st.composite
def comparison(draw):
    field = draw(st.sampled_from(list(_FIELD_KEYS)))
    key = _FIELD_KEYS[field]
    known = _values(key)
    if field in _NUM_FIELDS:
        value = draw(st.one_of(st.sampled_from(known), st.integers(-5, 100)))
    else:
        value = draw(st.one_of(st.sampled_from(known), st.sampled_from(["", "a", "BLOCK", "zz", "r_03"])))
    op = draw(st.sampled_from(list(_OPS)))
    swap = draw(st.booleans())
    text = f"{_lit(value)} {op} {field}" if swap else f"{field} {op} {_lit(value)}"

    def ev(r):
        x = r[key]
        if x is None:
            return None
        return _OPS[op](value, x) if swap else _OPS[op](x, value)

    return text, ev


@st.composite
def membership(draw):
    field = draw(st.sampled_from(_INT_FIELDS + _STR_FIELDS))
    key = _FIELD_KEYS[field]
    known = _values(key)
    negated = draw(st.booleans())
    items, texts = [], []
    for _ in range(draw(st.integers(1, 4))):
        if field in _INT_FIELDS and draw(st.booleans()):
            a = draw(st.sampled_from(known))
            b = a + draw(st.integers(0, 30))
            c = draw(st.integers(1, 6))
            items.append(("range", a, b, c))
            texts.append(f"{a}..{b}" + (f":{c}" if c != 1 or draw(st.booleans()) else ""))
        else:
            v = draw(st.sampled_from(known))
            items.append(("value", v))
            texts.append(_lit(v))
    text = f"{field} {'NOT IN' if negated else 'IN'} ({', '.join(texts)})"

    def ev(r):
        x = r[key]
        if x is None:
            return None
        hit = any(x == it[1] if it[0] == "value" else (it[1] <= x <= it[2] and (x - it[1]) % it[3] == 0)
                  for it in items)
        return not hit if negated else hit

    return text, ev


def _and(values):
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(values):
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _combine(children):
    return st.one_of(
        st.tuples(st.sampled_from(["AND", "and", "OR", "or"]), st.lists(children, min_size=2, max_size=3)).map(
            lambda t: (f" {t[0]} ".join(f"({c[0]})" for c in t[1]),
                       (lambda r, op=t[0].lower(), cs=t[1]: (_and if op == "and" else _or)([c[1](r) for c in cs])))),
        children.map(lambda c: (f"NOT ({c[0]})", lambda r, c=c: None if c[1](r) is None else not c[1](r))),
    )


selections = st.recursive(st.one_of(comparison(), membership()), _combine, max_leaves=6)


@SETTINGS
@given(selections, st.sampled_from([None, "LATISS", "LSSTComCam"]))
def test_well_formed_selections_match_three_valued_reference(engine_and_log, sel, instrument):
    engine, _ = engine_and_log
    text, ev = sel
    # day_obs and exposure ids need the instrument: constrain it at the top
    where = f"instrument IN ('LATISS', 'LSSTComCam') AND ({text})"
    expected = sorted((r["instrument"], r["id"]) for r in ROWS
                      if ev(r) is True and (instrument is None or r["instrument"] == instrument))
    with engine.connect() as conn:
        got = [(r["instrument"], r["id"]) for r in select_dimension_records(conn, "exposure", where, None, instrument)]
    assert got == expected, where
