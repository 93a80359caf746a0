"""Selections (``cpframe.repository.query``) on a real SQLite registry.

A small realistic exposure set (two instruments, a few nights, several observation
types, NULL metadata) is written with plain SQLAlchemy inserts; every selection's result
is checked against a plain-Python filter of the same rows, and every error against its
message and the position of its caret.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest
import sqlalchemy as sa
from astropy.time import Time
from sqlalchemy.dialects import postgresql, sqlite

from cpframe.camera.models import load_camera
from cpframe.core.errors import SelectionError, UserInputError
from cpframe.core.model import DataId, Timespan, ns_to_iso, parse_tai
from cpframe.repository import schema
from cpframe.repository.query import (
    filter_datasets,
    parse_selection,
    select_data_ids,
    select_dimension_records,
)

COMCAM, LATISS = "LSSTComCam", "LATISS"


# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------


def _night(instrument, day_obs, plan):
    """Exposure rows for one night; plan = [(seq range, type, filter, exptime, reason, program)]."""
    y, m, d = day_obs // 10000, day_obs // 100 % 100, day_obs % 100
    evening = parse_tai(f"{y:04d}-{m:02d}-{d:02d}T22:00:00")
    prefix = {COMCAM: "CC_O", LATISS: "AT_O"}[instrument]
    rows = []
    for seqs, otype, pf, exptime, reason, program in plan:
        for seq in seqs:
            begin = evening + seq * 90 * 10**9
            rows.append(dict(
                instrument=instrument, id=day_obs * 100000 + seq, obs_id=f"{prefix}_{day_obs}_{seq:06d}",
                day_obs=day_obs, seq_num=seq, physical_filter=pf, observation_type=otype,
                observation_reason=reason, science_program=program, exposure_time=float(exptime),
                dark_time=float(exptime) + 0.5, timespan_begin=begin,
                timespan_end=begin + int((exptime + 2.5) * 1e9),
            ))
    return rows


def exposure_rows():
    """The exposures of the test registry (also used by the hypothesis tests)."""
    rows = []
    rows += _night(COMCAM, 20241110, [
        (range(1, 11), "bias", "r_03", 0, "bias", None),
        (range(11, 16), "dark", "r_03", 30, "dark", "BLOCK-T17"),
        (range(40, 61), "flat", "g_01", 5, "flat", "BLOCK-T17"),
        (range(61, 65), "science", "i_06", 30, "science", "BLOCK-T250"),
        (range(65, 67), "engtest", "i_06", 1, None, None),
    ])
    rows += _night(COMCAM, 20241111, [
        (range(1, 6), "bias", "r_03", 0, "bias", None),
        (range(6, 9), "dark", "y_04", 30, "dark", "BLOCK-T17"),
        (range(20, 26), "flat", "y_04", 5, "flat", "BLOCK-T18"),
        (range(30, 31), "dark", "y_04", 3600, "dark", "BLOCK-T18"),  # one long exposure
    ])
    rows += _night(LATISS, 20241110, [
        (range(1, 6), "bias", "r_03", 0, "bias", None),
        (range(40, 51), "flat", "r_03", 2, "flat", "BLOCK-T5"),
    ])
    rows += _night(LATISS, 20241112, [
        (range(10, 15), "science", "g_01", 15, "science", "BLOCK-T250"),
    ])
    return rows


#: This synthetic registry gives LATISS two ComCam-style filter names (the real LATISS names are
#: FILTER~GRATING, e.g. 'SDSSr_65mm~empty'), so the cases below read alike for both instruments.
SYNTHETIC_FILTERS = {LATISS: {"r_03": "r", "g_01": "g"}}


def fill_registry(conn) -> None:
    """Write instruments, detectors, filters and exposures into an empty registry."""
    for name in (COMCAM, LATISS):
        cam = load_camera(name)
        conn.execute(schema.instrument.insert().values(
            name=name, detector_max=max(cam.detector_ids) + 1, amp_names=",".join(cam.amp_names), doc=cam.doc))
        conn.execute(schema.detector.insert(), [
            dict(instrument=name, id=d.id, full_name=d.name, raft=d.raft, name_in_raft=d.name_in_raft,
                 vendor=d.vendor, serial=d.serial) for d in cam.detectors])
        conn.execute(schema.physical_filter.insert(), [
            dict(instrument=name, name=pf, band=band)
            for pf, band in cam.filters + tuple(SYNTHETIC_FILTERS.get(name, {}).items())])
    conn.execute(schema.exposure.insert(), exposure_rows())


def make_engine(path):
    engine = sa.create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        fill_registry(conn)
    return engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = make_engine(tmp_path_factory.mktemp("selection") / "registry.sqlite3")
    yield eng
    eng.dispose()


@pytest.fixture()
def conn(engine):
    with engine.connect() as c:
        yield c


BANDS = {(name, pf): band for name in (COMCAM, LATISS)
         for pf, band in load_camera(name).filters + tuple(SYNTHETIC_FILTERS.get(name, {}).items())}
DETECTORS = {name: load_camera(name).detectors for name in (COMCAM, LATISS)}
ROWS = [dict(r, band=BANDS[(r["instrument"], r["physical_filter"])]) for r in exposure_rows()]


def expected_exposures(pred):
    return sorted((r["instrument"], r["id"]) for r in ROWS if pred(r))


def got_exposures(conn, where, bind=None, instrument=None):
    return [(r["instrument"], r["id"]) for r in select_dimension_records(conn, "exposure", where, bind, instrument)]


def utc_ns(text):
    """Reference UTC -> TAI conversion (astropy directly)."""
    t = Time(text, scale="utc").tai
    return round((t - Time("1970-01-01T00:00:00", scale="tai")).to_value("s") * 1e9)


def mjd_tai_ns(mjd):
    return round((Time(mjd, format="mjd", scale="tai") - Time("1970-01-01T00:00:00", scale="tai")).to_value("s") * 1e9)


def overlaps(r, begin, end):
    return r["timespan_begin"] < end and begin < r["timespan_end"]


# ---------------------------------------------------------------------------------------------
# Selections that select: compared with a plain-Python filter of the same rows
# ---------------------------------------------------------------------------------------------

T_UTC = "2024-11-10 22:30:30"
T_TAI_NS = utc_ns(T_UTC)

CASES = [
    ("", lambda r: True),
    ("instrument = 'LSSTComCam'", lambda r: r["instrument"] == COMCAM),
    ("instrument='LSSTComCam' AND exposure.day_obs=20241110 AND exposure.observation_type='bias'",
     lambda r: r["instrument"] == COMCAM and r["day_obs"] == 20241110 and r["observation_type"] == "bias"),
    # DMTN-222 style: ids, ranges, strides, lists mixing both
    ("instrument='LSSTComCam' AND exposure IN (2024111000043, 2024111000050..2024111000055, 2024111000064)",
     lambda r: r["instrument"] == COMCAM and (r["id"] in (2024111000043, 2024111000064)
                                             or 2024111000050 <= r["id"] <= 2024111000055)),
    ("instrument='LSSTComCam' AND exposure.day_obs = 20241110 AND exposure.seq_num IN (40..65:5)",
     lambda r: r["instrument"] == COMCAM and r["day_obs"] == 20241110 and r["seq_num"] in range(40, 66, 5)),
    ("instrument='LSSTComCam' AND exposure.day_obs = 20241110 AND exposure.seq_num NOT IN (1..50)",
     lambda r: r["instrument"] == COMCAM and r["day_obs"] == 20241110 and not 1 <= r["seq_num"] <= 50),
    ("instrument='LSSTComCam' AND exposure = 2024111000044",
     lambda r: r["instrument"] == COMCAM and r["id"] == 2024111000044),
    ("instrument='LATISS' AND exposure.id = 2024111000044",
     lambda r: r["instrument"] == LATISS and r["id"] == 2024111000044),
    # ids that do not exist are ignored
    ("instrument='LATISS' AND exposure IN (2024111000044, 1999010100001)",
     lambda r: r["instrument"] == LATISS and r["id"] == 2024111000044),
    # unqualified, unambiguous names; metadata alone matches every instrument
    ("seq_num = 44", lambda r: r["seq_num"] == 44),
    ("exposure.seq_num in (44..45)", lambda r: r["seq_num"] in (44, 45)),
    ("observation_type = 'flat' AND exposure_time >= 5", lambda r: r["observation_type"] == "flat"
     and r["exposure_time"] >= 5),
    ("day_obs = 20241111 AND instrument = 'LSSTComCam'", lambda r: r["day_obs"] == 20241111
     and r["instrument"] == COMCAM),
    # keywords in any case; AND binds tighter than OR; NOT covers one comparison
    ("instrument='LATISS' oR observation_type='dark' AnD day_obs = 20241111 and instrument='LSSTComCam'",
     lambda r: r["instrument"] == LATISS or (r["observation_type"] == "dark" and r["day_obs"] == 20241111
                                             and r["instrument"] == COMCAM)),
    ("(instrument='LATISS' or observation_type='dark') and exposure_time > 10",
     lambda r: (r["instrument"] == LATISS or r["observation_type"] == "dark") and r["exposure_time"] > 10),
    ("NOT observation_type = 'bias' AND instrument = 'LATISS'",
     lambda r: r["observation_type"] != "bias" and r["instrument"] == LATISS),
    ("not (observation_type = 'bias' or observation_type = 'flat')",
     lambda r: r["observation_type"] not in ("bias", "flat")),
    # strings are case-sensitive; < on strings is lexicographic
    ("observation_type = 'BIAS'", lambda r: False),
    ("exposure.obs_id < 'CC_O_20241110_000040' AND instrument = 'LSSTComCam'",
     lambda r: r["obs_id"] < "CC_O_20241110_000040" and r["instrument"] == COMCAM),
    # obs_id is the exposure's alternate key (unique within an instrument): it needs the instrument
    ("instrument IN ('LATISS', 'LSSTComCam') AND exposure.obs_id >= 'AT_O_20241112'",
     lambda r: r["obs_id"] >= "AT_O_20241112"),
    # SQL NULL semantics: NULL is neither equal nor different
    ("science_program != 'BLOCK-T17'", lambda r: r["science_program"] is not None
     and r["science_program"] != "BLOCK-T17"),
    ("NOT science_program = 'BLOCK-T17'", lambda r: r["science_program"] is not None
     and r["science_program"] != "BLOCK-T17"),
    ("exposure.observation_reason NOT IN ('bias', 'flat')", lambda r: r["observation_reason"] is not None
     and r["observation_reason"] not in ("bias", "flat")),
    ("exposure.science_program IN ('BLOCK-T250')", lambda r: r["science_program"] == "BLOCK-T250"),
    # band comes from the physical filter; physical_filter directly
    ("band = 'g'", lambda r: r["band"] == "g"),
    ("physical_filter = 'r_03' AND instrument = 'LATISS'", lambda r: r["physical_filter"] == "r_03"
     and r["instrument"] == LATISS),
    ("exposure.physical_filter IN ('y_04', 'i_06')", lambda r: r["physical_filter"] in ("y_04", "i_06")),
    ("band IN ('y', 'i') AND NOT physical_filter = 'i_06'", lambda r: r["band"] in ("y", "i")
     and r["physical_filter"] != "i_06"),
    # floats, negative numbers
    ("exposure.dark_time > 29.9 AND exposure.dark_time < 30.6", lambda r: 29.9 < r["dark_time"] < 30.6),
    ("exposure.exposure_time = 0", lambda r: r["exposure_time"] == 0),
    ("exposure.seq_num > -1 AND exposure.seq_num < +3", lambda r: -1 < r["seq_num"] < 3),
    ("instrument='LSSTComCam' AND exposure.seq_num IN (-5..2)", lambda r: r["instrument"] == COMCAM
     and -5 <= r["seq_num"] <= 2),
    # time literals: UTC by default, /tai, MJD TAI numbers, OVERLAPS with pairs and points
    (f"exposure.timespan OVERLAPS T'{T_UTC}'", lambda r: r["timespan_begin"] <= T_TAI_NS < r["timespan_end"]),
    (f"exposure.timespan OVERLAPS T'{T_UTC}/tai'", lambda r: r["timespan_begin"] <= parse_tai(T_UTC)
     < r["timespan_end"]),
    ("exposure.timespan OVERLAPS (T'2024-11-10 22:00:00', T'2024-11-10T22:15:00')",
     lambda r: overlaps(r, utc_ns("2024-11-10 22:00:00"), utc_ns("2024-11-10 22:15:00"))),
    ("exposure.timespan OVERLAPS (60624.95, 60625.0)",
     lambda r: overlaps(r, mjd_tai_ns(60624.95), mjd_tai_ns(60625.0))),
    ("exposure.timespan OVERLAPS (T'60624.95', T'mjd/60625.0/tai')",
     lambda r: overlaps(r, mjd_tai_ns(60624.95), mjd_tai_ns(60625.0))),
    # only the hour-long dark covers this instant: OVERLAPS must not miss long exposures
    ("exposure.timespan OVERLAPS T'2024-11-11 23:30:00/tai'",
     lambda r: r["timespan_begin"] <= parse_tai("2024-11-11 23:30:00") < r["timespan_end"]),
    ("(T'2024-11-11 22:00:00/tai', T'2024-11-11 22:30:00/tai') OVERLAPS exposure.timespan",
     lambda r: overlaps(r, parse_tai("2024-11-11 22:00:00"), parse_tai("2024-11-11 22:30:00"))),
    ("exposure.timespan.begin >= T'2024-11-12' AND exposure.timespan.end < 60627.0",
     lambda r: r["timespan_begin"] >= utc_ns("2024-11-12") and r["timespan_end"] < mjd_tai_ns(60627.0)),
    # detector fields in an exposure query join the detector table
    ("detector.full_name = 'R22_S11'", lambda r: r["instrument"] == COMCAM),
    ("instrument = 'LSSTComCam' AND detector IN (0, 4) AND observation_type = 'dark'",
     lambda r: r["instrument"] == COMCAM and r["observation_type"] == "dark"),
    # an unknown instrument is an empty result, not an error
    ("instrument = 'NoSuchCam'", lambda r: False),
    ("instrument='NoSuchCam' AND exposure IN (2024111000044)", lambda r: False),
    ("instrument IN ('LATISS', 'NoSuchCam') AND exposure = 2024111000044",
     lambda r: r["instrument"] == LATISS and r["id"] == 2024111000044),
    ("(instrument='LATISS' AND exposure=2024111000044) OR (instrument='LSSTComCam' AND exposure=2024111000001)",
     lambda r: (r["instrument"], r["id"]) in ((LATISS, 2024111000044), (COMCAM, 2024111000001))),
]


@pytest.mark.parametrize("where,pred", CASES, ids=[c[0][:60] or "<empty>" for c in CASES])
def test_exposure_selection_matches_reference(conn, where, pred):
    expected = expected_exposures(pred)
    assert got_exposures(conn, where) == expected
    ids = select_data_ids(conn, ["exposure"], where, None, None)
    assert [(d["instrument"], d["exposure"]) for d in ids] == expected
    assert all(set(d) == {"instrument", "exposure"} for d in ids)


def test_exposure_records_carry_every_field(conn):
    recs = select_dimension_records(conn, "exposure", "instrument='LSSTComCam' AND exposure=2024111000061",
                                    None, None)
    assert len(recs) == 1
    rec = recs[0]
    row = next(r for r in ROWS if r["instrument"] == COMCAM and r["id"] == 2024111000061)
    assert set(rec) == {"id", "instrument", "obs_id", "day_obs", "seq_num", "physical_filter", "band",
                        "observation_type", "observation_reason", "science_program", "exposure_time",
                        "dark_time", "timespan"}
    for k in rec:
        if k != "timespan":
            assert rec[k] == row[k], k
    assert rec["timespan"] == Timespan(row["timespan_begin"], row["timespan_end"])
    assert rec["band"] == "i"


def test_instrument_argument_counts_as_constraint(conn):
    got = got_exposures(conn, "exposure IN (2024111000044..2024111000046)", instrument=LATISS)
    assert got == expected_exposures(lambda r: r["instrument"] == LATISS and r["seq_num"] in (44, 45, 46)
                                     and r["day_obs"] == 20241110)
    assert got_exposures(conn, "", instrument="NoSuchCam") == []


# ---------------------------------------------------------------------------------------------
# Other elements and data IDs
# ---------------------------------------------------------------------------------------------


def test_detector_and_filter_records(conn):
    recs = select_dimension_records(conn, "detector", "instrument='LSSTComCam' AND detector IN (1, 3..4)",
                                    None, None)
    assert [(r["instrument"], r["id"], r["full_name"]) for r in recs] == [
        (COMCAM, d.id, d.name) for d in DETECTORS[COMCAM] if d.id in (1, 3, 4)]
    recs = select_dimension_records(conn, "detector", "detector.full_name = 'RXX_S00'", None, None)
    assert [(r["instrument"], r["id"], r["vendor"]) for r in recs] == [(LATISS, 0, DETECTORS[LATISS][0].vendor)]
    recs = select_dimension_records(conn, "physical_filter", "band = 'r'", None, None)
    assert [(r["instrument"], r["name"]) for r in recs] == sorted(
        (i, pf) for (i, pf), b in BANDS.items() if b == "r")
    recs = select_dimension_records(conn, "instrument", "", None, None)
    assert [r["name"] for r in recs] == sorted([COMCAM, LATISS])
    assert recs[1]["amp_names"] == list(load_camera(COMCAM).amp_names)


def test_data_ids_exposure_by_detector(conn):
    where = "instrument='LSSTComCam' AND exposure.day_obs=20241111 AND observation_type='bias' AND detector IN (0..8:4)"
    ids = select_data_ids(conn, ["exposure", "detector"], where, None, None)
    expected = sorted(
        (COMCAM, r["id"], d.id) for r in ROWS for d in DETECTORS[COMCAM]
        if r["instrument"] == COMCAM and r["day_obs"] == 20241111 and r["observation_type"] == "bias"
        and d.id in (0, 4, 8))
    assert [(d["instrument"], d["exposure"], d["detector"]) for d in ids] == expected
    assert all(isinstance(d, DataId) and list(d) == ["instrument", "detector", "exposure"] for d in ids)


def test_data_ids_pair_each_exposure_with_its_own_instrument_detectors(conn):
    ids = select_data_ids(conn, ["exposure", "detector"], "seq_num = 44", None, None)
    expected = sorted((r["instrument"], r["id"], d.id) for r in ROWS if r["seq_num"] == 44
                      for d in DETECTORS[r["instrument"]])
    assert [(d["instrument"], d["exposure"], d["detector"]) for d in ids] == expected


def test_data_ids_filters_and_bands(conn):
    ids = select_data_ids(conn, ["exposure", "physical_filter"], "instrument='LATISS'", None, None)
    assert [(d["exposure"], d["physical_filter"]) for d in ids] == sorted(
        (r["id"], r["physical_filter"]) for r in ROWS if r["instrument"] == LATISS)
    ids = select_data_ids(conn, ["physical_filter"], "band IN ('g', 'r')", None, COMCAM)
    assert [d["physical_filter"] for d in ids] == sorted(
        pf for (i, pf), b in BANDS.items() if i == COMCAM and b in "gr")
    ids = select_data_ids(conn, ["band"], "observation_type = 'flat'", None, None)
    assert [(d["instrument"], d["band"]) for d in ids] == sorted(
        {(r["instrument"], r["band"]) for r in ROWS if r["observation_type"] == "flat"})
    ids = select_data_ids(conn, ["detector"], "detector.raft = 'R22' AND detector.name_in_raft < 'S10'",
                          None, None)
    assert [(d["instrument"], d["detector"]) for d in ids] == sorted(
        (COMCAM, d.id) for d in DETECTORS[COMCAM] if d.name_in_raft < "S10")


def test_unknown_dimension_or_element(conn):
    with pytest.raises(UserInputError, match="unknown dimension 'visit'.*exposure"):
        select_data_ids(conn, ["visit"], "", None, None)
    with pytest.raises(UserInputError, match="unknown dimension element 'visit'"):
        select_dimension_records(conn, "visit", "", None, None)


# ---------------------------------------------------------------------------------------------
# Bind parameters
# ---------------------------------------------------------------------------------------------


def test_bind_parameters(conn):
    bind = {"inst": COMCAM, "ids": [2024111000044, 2024111000046], "kind": "flat", "when": Time(T_UTC)}
    got = got_exposures(conn, "instrument = inst AND exposure IN (ids) AND observation_type = :kind", bind)
    assert got == [(COMCAM, 2024111000044), (COMCAM, 2024111000046)]
    got = got_exposures(conn, "exposure.timespan OVERLAPS when", bind)
    assert got == expected_exposures(lambda r: r["timespan_begin"] <= T_TAI_NS < r["timespan_end"])
    span = Timespan(parse_tai("2024-11-11 22:00:00"), parse_tai("2024-11-11 22:30:00"))
    got = got_exposures(conn, "exposure.timespan OVERLAPS :span", {"span": span})
    assert got == expected_exposures(lambda r: overlaps(r, span.begin_ns, span.end_ns))
    got = got_exposures(conn, "instrument = 'LATISS' AND exposure.seq_num IN (low, more)",
                        {"low": 1, "more": {48, 50}})
    assert got == expected_exposures(lambda r: r["instrument"] == LATISS and r["seq_num"] in (1, 48, 50))
    # a bound (begin, end) pair after OVERLAPS; :name reaches a bind value named like a field
    pair = (Time("2024-11-11 22:00:00", scale="tai"), Time("2024-11-11 22:30:00", scale="tai"))
    got = got_exposures(conn, "exposure.timespan OVERLAPS window AND instrument = :instrument",
                        {"window": pair, "instrument": COMCAM})
    assert got == expected_exposures(lambda r: overlaps(r, span.begin_ns, span.end_ns) and r["instrument"] == COMCAM)


@pytest.mark.parametrize("where,bind,match,token", [
    ("instrument = :inst", {}, "bind parameter 'inst' is not given", ":inst"),
    ("seq_num = ids", {"ids": [1, 2]}, r"'ids' is a sequence; use it inside IN \(ids\)", "ids"),
    ("seq_num IN (ids)", {"ids": []}, "'ids' is an empty sequence", "ids"),
    ("seq_num IN (ids)", {"ids": [1, "a"]}, "mixes number and string", "ids"),
    ("seq_num = flag", {"flag": True}, "'flag' has a value of type bool", "flag"),
    ("seq_num = thing", {"thing": object()}, "'thing' has a value of type object", "thing"),
    ("instrument = instrument", {"instrument": "LATISS"}, "'instrument' is both a field and a bind parameter",
     "instrument"),
    ("exposure.timespan OVERLAPS w", {"w": [1, 2, 3]}, "must be a \\(begin, end\\) pair, not 3 values", "w"),
    ("day_obs = night AND instrument='LATISS'", {"night": "20241110"},
     r"cannot compare day_obs \(an integer\) with night \(a string\).*day_obs = 20241110", "night"),
])
def test_bind_errors(conn, where, bind, match, token):
    with pytest.raises(SelectionError, match=match) as err:
        select_dimension_records(conn, "exposure", where, bind, None)
    assert err.value.position == where.index(token)


# ---------------------------------------------------------------------------------------------
# Errors: message and caret
# ---------------------------------------------------------------------------------------------

ERRORS = [
    # syntax
    ('instrument = "LSSTComCam"', "double quotes are not allowed: strings take single quotes", '"'),
    ("instrument = 'LSSTComCam", "no closing single quote", "'"),
    ("seq_num == 44", r"equality is a single '='", "= 44"),
    ("seq_num = 44 AND", "ends too early", None),
    ("seq_num = 44 seq_num = 45", r"unexpected a name 'seq_num'", "seq_num = 45"),
    ("exposure % 2 = 1", r"arithmetic \(%\) is not supported", "%"),
    ("(seq_num = 44", r"ends too early; expected .*'\)'", None),
    ("seq_num = 44)", r"unexpected '\)' '\)'", ")"),
    # names
    ("instrument = LSSTComCam", r"unknown name 'LSSTComCam'.*quote it: 'LSSTComCam'", "LSSTComCam"),
    ("Instrument = 'LATISS'", "unknown name 'Instrument'. Did you mean instrument", "Instrument"),
    ("exposure.dayobs = 20241110", "Did you mean exposure.day_obs", "exposure.dayobs"),
    ("AND = 4", "'AND' is a keyword and cannot stand here", "AND"),
    ("id = 4", "'id' is ambiguous: write one of detector.id, exposure.id", "id"),
    ("ingest_date > T'2024-11-10'", "only available when selecting datasets", "ingest_date"),
    # types
    ("instrument='LSSTComCam' AND exposure.day_obs = '20241110'",
     "exposure.day_obs is an integer: write it unquoted, e.g. exposure.day_obs = 20241110", "'20241110'"),
    ("seq_num = 'abc'", r"cannot compare seq_num \(an integer\) with 'abc' \(a string\)", "'abc'"),
    ("instrument = 4", r"Strings take single quotes, e.g. instrument = '4'", "4"),
    ("instrument='LATISS' AND detector IN (1, 'a')", "IN list mixes number and string values", "'a'"),
    ("instrument IN ('LATISS', 3)", "IN list mixes string and number values", "3"),
    ("1", r"expected a condition .* found an integer \(1\)", "1"),
    ("instrument='LATISS' AND 1", r"expected a condition .* an integer \(1\)", "1"),
    ("seq_num", r"expected a condition .* seq_num \(an integer\)", "seq_num"),
    ("NOT 'x'", r"expected a condition .* a string", "'x'"),
    ("exposure.timespan.begin > '2024-11-10'", "write a time literal, e.g. T'", "'2024-11-10'"),
    ("exposure.timespan = T'2024-11-10'", "is a time span: use exposure.timespan OVERLAPS", "exposure.timespan"),
    ("seq_num = -exposure", r"a sign \(\+ or -\) can only precede a number", "-"),
    ("seq_num = (1, 2)", r"a pair of values \(a, b\) is only allowed after OVERLAPS", "("),
    ("seq_num IN (detector)", "IN lists hold values", "detector)"),
    ("seq_num = 99999999999999999999", "out of range", "9"),
    # ranges
    ("instrument='LSSTComCam' AND exposure.seq_num IN (63..44)", r"range 63..44 is reversed .* write 44..63", "63"),
    ("seq_num IN (40..65:0)", "has stride 0; the stride must be a positive integer", "40"),
    ("seq_num IN (40..65:-5)", "stride -5", "40"),
    ("seq_num IN (1..)", r"range 1.. is incomplete", "1.."),
    ("seq_num IN (..5)", r"range ..5 is incomplete", ".."),
    ("seq_num = 40..65", r"a range \(40..65\) is only allowed inside IN", "40"),
    ("seq_num IN ()", r"IN \(\) is empty", "()"),
    ("observation_type IN (1..3)", "range 1..3 is a set of integers but observation_type is a string", "1..3"),
    # times
    ("exposure.timespan OVERLAPS (T'2024-11-11', T'2024-11-10')", "begins after it ends", "(T'"),
    ("exposure.timespan OVERLAPS T'yesterday'", "time literal T'yesterday' is not understood", "T'"),
    ("exposure.timespan OVERLAPS T'2024-13-45'", "T'2024-13-45' is not understood", "T'"),
    ("exposure.timespan OVERLAPS T'2024-11-10/ut1'", "scale 'ut1' is not supported", "T'"),
    ("exposure.timespan.begin > T'2500-01-01'", "outside the years", "T'"),
    ("exposure.timespan OVERLAPS 'x'", "OVERLAPS needs a time span on one side", "'x'"),
    ("exposure.timespan OVERLAPS (T'2024-11-10', 'x')", "time span ends must be times", "'x'"),
    ("seq_num OVERLAPS (1, 2)", "OVERLAPS needs a time span", "seq_num"),
    # the instrument rule
    ("exposure IN (2024111000044)", "exposure values are only unique within one instrument.*instrument='",
     "exposure"),
    ("exposure = 2024111000044", "constrain the instrument in the same expression", "exposure"),
    ("detector IN (0, 1)", r"e.g. instrument='LSSTComCam' AND detector IN \(0, 1\)", "detector"),
    ("exposure.obs_id = 'AT_O_20241110_000044'", "exposure.obs_id values are only unique within one instrument",
     "exposure.obs_id"),
    ("exposure.day_obs = 20241110", "exposure.day_obs values are only unique within one instrument",
     "exposure.day_obs"),
    ("day_obs = 20241110 AND seq_num = 44", "day_obs values are only unique", "day_obs"),
    ("instrument != 'LATISS' AND detector = 0", "constrain the instrument", "detector"),
    ("instrument = 'LATISS' OR detector = 0", "constrain the instrument", "detector"),
    ("instrument NOT IN ('LATISS') AND detector = 0", "constrain the instrument", "detector"),
    ("NOT instrument = 'LATISS' AND detector = 0", "constrain the instrument", "detector"),
]


@pytest.mark.parametrize("where,match,token", ERRORS, ids=[e[0][:50] for e in ERRORS])
def test_errors_name_the_problem_and_point_at_it(conn, where, match, token):
    with pytest.raises(SelectionError, match=match) as err:
        select_dimension_records(conn, "exposure", where, None, None)
    e = err.value
    assert e.expression == where
    expected_pos = len(where) if token is None else where.index(token)
    assert e.position == expected_pos
    lines = str(e).splitlines()
    assert lines[-2] == f"  {where}" and lines[-1] == "  " + " " * expected_pos + "^"


def test_multi_line_selection_caret_lines_up(conn):
    where = "instrument = 'LATISS'\n\tAND exposure.day_obs = '20241110'"
    with pytest.raises(SelectionError, match="write it unquoted") as err:
        select_dimension_records(conn, "exposure", where, None, None)
    lines = str(err.value).splitlines()
    assert lines[-2] == "  instrument = 'LATISS'  AND exposure.day_obs = '20241110'"
    assert lines[-1].index("^") == lines[-2].index("'2024")


def test_instrument_rule_is_satisfied_by_any_constraining_branch(conn):
    ok = [
        "instrument IN ('LATISS', 'LSSTComCam') AND detector = 0",
        "(instrument = 'LATISS' OR instrument = 'LSSTComCam') AND NOT detector = 0",
        "instrument = 'LATISS' AND (detector = 0 OR exposure = 2024111000044)",
        "'LATISS' = instrument AND exposure.day_obs = 20241110",
    ]
    for where in ok:
        parse_selection(where).check_instrument()
        select_data_ids(conn, ["exposure", "detector"], where, None, None)


def test_parse_is_cached_and_pure():
    a = parse_selection("instrument='LATISS' AND seq_num IN (1..3)")
    b = parse_selection("instrument='LATISS' AND seq_num IN (1..3)")
    assert a is b
    c = parse_selection("seq_num IN (x)", {"x": [1, 2]})
    d = parse_selection("seq_num IN (x)", {"x": [1, 3]})
    assert c is not d and c.root != d.root
    assert dataclasses.is_dataclass(a) and a.root is not None


# ---------------------------------------------------------------------------------------------
# Compiled SQL carries only bound parameters
# ---------------------------------------------------------------------------------------------


def test_compiled_sql_has_no_user_literals():
    where = ("instrument = 'Zq_inst' AND exposure.obs_id IN ('Zq_a', 'Zq_b') AND "
             "exposure IN (7771234..7771299:3, 8881234) AND exposure.exposure_time > 123.456 "
             "AND exposure.timespan OVERLAPS (T'2024-11-10 22:00:00', 60625.25)")
    stmt = filter_datasets(sa.select(schema.dataset.c.id), schema.dataset, where, None)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(stmt.compile(dialect=dialect))
        for literal in ("Zq_", "7771234", "7771299", "8881234", "123.456", "2024", "60625"):
            assert literal not in sql
        assert "%(" in sql or ":" in sql or "?" in sql


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(engine):
    return fill_datasets(engine)


def fill_datasets(engine):
    """raw (instrument, exposure, detector), bias (instrument, detector), flat (+ physical_filter)."""
    rows = []
    with engine.begin() as c:
        c.execute(schema.collection.insert().values(id=1, name="run/selection", type=1))
        for i, name in enumerate(("raw", "bias", "flat"), start=1):
            c.execute(schema.dataset_type.insert().values(id=i, name=name, dimensions="", is_calibration=i > 1,
                                                           storage_format="fits"))
        for r in ROWS:
            if r["day_obs"] == 20241110 and r["observation_type"] in ("bias", "flat"):
                for d in DETECTORS[r["instrument"]][:3]:
                    rows.append(dict(type="raw", instrument=r["instrument"], exposure=r["id"], detector=d.id,
                                     physical_filter=None))
        for inst in (COMCAM, LATISS):
            for d in DETECTORS[inst][:3]:
                rows.append(dict(type="bias", instrument=inst, exposure=None, detector=d.id, physical_filter=None))
                for pf in ("g_01", "r_03"):
                    rows.append(dict(type="flat", instrument=inst, exposure=None, detector=d.id, physical_filter=pf))
        type_ids = {"raw": 1, "bias": 2, "flat": 3}
        for row in rows:
            row["id"] = str(uuid.uuid4())
        c.execute(schema.dataset.insert(), [
            dict(id=row["id"], dataset_type_id=type_ids[row["type"]], run_id=1, data_id_key=row["id"],
                 instrument=row["instrument"], detector=row["detector"], exposure=row["exposure"],
                 physical_filter=row["physical_filter"]) for row in rows])
    by_exposure = {(r["instrument"], r["id"]): r for r in ROWS}
    for row in rows:
        exp = by_exposure.get((row["instrument"], row["exposure"]))
        row["exp"] = exp
        row["filter"] = row["physical_filter"] or (exp["physical_filter"] if exp else None)
        row["band"] = BANDS[(row["instrument"], row["filter"])] if row["filter"] else None
        row["full_name"] = DETECTORS[row["instrument"]][row["detector"]].name
    return rows


DATASET_CASES = [
    ("instrument = 'LATISS'", lambda d: d["instrument"] == LATISS),
    ("instrument = 'LSSTComCam' AND detector IN (1, 2)", lambda d: d["instrument"] == COMCAM
     and d["detector"] in (1, 2)),
    ("instrument = 'LSSTComCam' AND exposure.observation_type = 'flat' AND exposure.seq_num IN (40..44)",
     lambda d: d["exp"] is not None and d["instrument"] == COMCAM and d["exp"]["observation_type"] == "flat"
     and 40 <= d["exp"]["seq_num"] <= 44),
    # a raw's filter comes through its exposure; a flat's from its own data ID
    ("physical_filter = 'g_01'", lambda d: d["filter"] == "g_01"),
    ("band = 'r' AND instrument = 'LATISS'", lambda d: d["band"] == "r" and d["instrument"] == LATISS),
    ("detector.full_name = 'R22_S01'", lambda d: d["full_name"] == "R22_S01"),
    # OR across a dimension some datasets lack keeps those matching the other branch
    ("instrument='LATISS' AND (exposure.day_obs = 20241110 OR physical_filter = 'g_01')",
     lambda d: d["instrument"] == LATISS and ((d["exp"] is not None and d["exp"]["day_obs"] == 20241110)
                                              or d["filter"] == "g_01")),
    ("NOT exposure.observation_type = 'bias'", lambda d: d["exp"] is not None
     and d["exp"]["observation_type"] != "bias"),
    ("instrument = 'NoSuchCam'", lambda d: False),
]


@pytest.mark.parametrize("where,pred", DATASET_CASES, ids=[c[0][:60] for c in DATASET_CASES])
def test_filter_datasets_matches_reference(engine, datasets, where, pred):
    ds = schema.dataset
    stmt = filter_datasets(sa.select(ds.c.id), ds, where, None)
    with engine.connect() as c:
        got = sorted(c.execute(stmt).scalars())
    assert got == sorted(d["id"] for d in datasets if pred(d))
    assert len(set(got)) == len(got)  # joins never duplicate a dataset


def test_filter_datasets_with_an_alias_and_instrument_argument(engine, datasets):
    ds = schema.dataset.alias("d")
    stmt = sa.select(ds.c.id).select_from(ds.join(schema.collection, schema.collection.c.id == ds.c.run_id))
    stmt = filter_datasets(stmt, ds, "detector = 0 AND exposure.seq_num < 3", None, LATISS)
    with engine.connect() as c:
        got = sorted(c.execute(stmt).scalars())
    assert got == sorted(d["id"] for d in datasets if d["instrument"] == LATISS and d["detector"] == 0
                         and d["exp"] is not None and d["exp"]["seq_num"] < 3)
    with pytest.raises(SelectionError, match="detector values are only unique"):
        filter_datasets(sa.select(ds.c.id), ds, "detector = 0", None)


# ---------------------------------------------------------------------------------------------
# CLI: query-data-ids, query-dimension-records (through a real Repository)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    from cpframe.repository.repo import Repository

    root = tmp_path_factory.mktemp("selection_cli") / "repo"
    with Repository.create(root) as repo:
        repo.register_instrument(COMCAM)
        repo.register_instrument(LATISS)
        repo.registry.insert_dimension_rows("physical_filter", [
            {"instrument": LATISS, "name": pf, "band": b} for pf, b in SYNTHETIC_FILTERS[LATISS].items()])
        repo.registry.insert_exposures(exposure_rows())
    return str(root)


def _cli(*args):
    from click.testing import CliRunner

    from cpframe.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_query_data_ids_table_and_json(repo_dir):
    where = "instrument='LSSTComCam' AND exposure.observation_type='bias' AND exposure.day_obs=20241111"
    res = _cli("query-data-ids", repo_dir, "exposure", "detector", "--where", where)
    assert res.exit_code == 0, res.output
    expected = [(r["id"], d.id) for r in ROWS if r["instrument"] == COMCAM and r["observation_type"] == "bias"
                and r["day_obs"] == 20241111 for d in DETECTORS[COMCAM]]
    lines = [ln.split() for ln in res.output.splitlines() if ln.strip().startswith(COMCAM)]
    assert [(int(x[1]), int(x[2])) for x in lines] == sorted(expected)
    assert "instrument" in res.output.splitlines()[0] and "exposure" in res.output.splitlines()[0]
    assert f"{len(expected)} data ID(s) over instrument, exposure, detector." in res.output
    res = _cli("query-data-ids", repo_dir, "exposure,detector", "--where", where, "--format", "json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert [(d["exposure"], d["detector"]) for d in data] == sorted(expected)
    assert all(d["instrument"] == COMCAM for d in data)


def test_cli_query_dimension_records(repo_dir):
    where = "instrument='LATISS' AND exposure.seq_num IN (40..50:5)"
    res = _cli("query-dimension-records", repo_dir, "exposure", "--where", where, "--format", "json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    rows = [r for r in ROWS if r["instrument"] == LATISS and r["seq_num"] in (40, 45, 50)]
    assert [d["id"] for d in data] == sorted(r["id"] for r in rows)
    first = min(rows, key=lambda r: r["id"])
    assert data[0]["obs_id"] == first["obs_id"] and data[0]["band"] == first["band"]
    assert data[0]["timespan"]["begin"] == ns_to_iso(first["timespan_begin"])
    res = _cli("query-dimension-records", repo_dir, "exposure", "--where", where, "--limit", "2")
    assert res.exit_code == 0
    assert first["obs_id"] in res.output and "(showing 2)" in res.output
    assert res.output.rstrip().endswith("3 exposure record(s) (showing 2).")
    res = _cli("query-dimension-records", repo_dir, "detector", "--where", "detector.full_name = 'R22_S11'")
    assert res.exit_code == 0 and "R22_S11" in res.output and "1 detector record(s)." in res.output


def test_cli_empty_result_explains_itself(repo_dir):
    res = _cli("query-data-ids", repo_dir, "exposure", "--where", "instrument='NoSuchCam' AND exposure=1")
    assert res.exit_code == 0
    assert "No data IDs match." in res.output
    assert "'NoSuchCam' are not registered in this repository; registered: LATISS, LSSTComCam" in res.output
    assert "0 data ID(s)" in res.output


def test_cli_bad_selection_is_a_clear_error_without_traceback(repo_dir):
    res = _cli("query-data-ids", repo_dir, "exposure", "--where", "instrument = LSSTComCam")
    assert res.exit_code == 2
    assert "quote it: 'LSSTComCam'" in res.output and "Traceback" not in res.output
    assert "               ^" in res.output
    res = _cli("query-dimension-records", repo_dir, "visit")
    assert res.exit_code == 2 and "unknown dimension element 'visit'" in res.output


# ---------------------------------------------------------------------------------------------
# The same selections on a real PostgreSQL server (started by the test suite)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine(postgres_server):
    eng = sa.create_engine(postgres_server.new_schema())
    schema.metadata.create_all(eng)
    with eng.begin() as c:
        fill_registry(c)
    yield eng
    eng.dispose()


@pytest.mark.postgres
def test_selections_on_postgresql_match_reference(pg_engine):
    extra = [
        ("1 = 1 AND 'LATISS' = instrument", lambda r: r["instrument"] == LATISS),
        ("'a' < 'b' AND 4.5 > seq_num", lambda r: r["seq_num"] < 4.5),
        ("T'2024-11-10' < exposure.timespan.begin AND exposure.timespan.begin < 60626.0",
         lambda r: utc_ns("2024-11-10") < r["timespan_begin"] < mjd_tai_ns(60626.0)),
    ]
    with pg_engine.connect() as c:
        for where, pred in CASES + extra:
            assert got_exposures(c, where) == expected_exposures(pred), where
        ids = select_data_ids(c, ["exposure", "detector"], "seq_num = 44", None, None)
        assert len(ids) == sum(len(DETECTORS[r["instrument"]]) for r in ROWS if r["seq_num"] == 44)
        with pytest.raises(SelectionError, match="constrain the instrument"):
            select_data_ids(c, ["detector"], "detector = 1", None, None)
    datasets = fill_datasets(pg_engine)
    with pg_engine.connect() as c:
        for where, pred in DATASET_CASES:
            stmt = filter_datasets(sa.select(schema.dataset.c.id), schema.dataset, where, None)
            assert sorted(c.execute(stmt).scalars()) == sorted(d["id"] for d in datasets if pred(d)), where
