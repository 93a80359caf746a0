"""Tests of curated calibrations: files, validity ranges, writing + certifying into a repository,
the refusal of INSTRUMENT/calib, and their use as simulator truth."""

from __future__ import annotations

import doctest

import pytest
from click.testing import CliRunner

import cpframe.camera.curated
from cpframe.camera.models import load_camera
from cpframe.cli import main
from cpframe.camera.curated import (
    list_curated,
    manual_defects_at,
    read_defects,
    scale_defects,
    write_curated_calibrations,
    write_defects,
)
from cpframe.core.errors import CollectionTypeError, UserInputError
from cpframe.core.model import CollectionType, DataId, Timespan, parse_tai
from cpframe.camera.simulate import make_truth

COLL = "LSSTComCam/calib/DM-TEST/curated"


def test_doctests():
    assert doctest.testmod(cpframe.camera.curated).failed == 0


def test_curated_files_and_validity_ranges():
    calibs = list_curated("LSSTComCam")
    camera = [c for c in calibs if c.dataset_type == "camera"]
    assert (
        len(camera) == 1
        and camera[0].valid_from == "2024-10-01T00:00:00.000"
        and camera[0].valid_until is None
    )
    s11 = [c for c in calibs if c.detector == 4]
    assert [(c.valid_from, c.valid_until) for c in s11] == [
        ("2024-10-01T00:00:00.000", "2025-06-01T00:00:00.000"),
        ("2025-06-01T00:00:00.000", None),
    ]
    assert s11[0].timespan.end_ns == s11[1].timespan.begin_ns  # adjacent, not overlapping
    for name in ("LATISS", "LSSTCam"):
        assert any(c.dataset_type == "manual_defects" for c in list_curated(name))
    rects, meta = read_defects(s11[1].path)
    assert (meta["instrument"], meta["detector"], meta["scale"]) == ("LSSTComCam", 4, "full")
    assert (3050, 0, 1, 2000) in rects and len(rects) == 3
    full = load_camera("LSSTComCam").detector(4)
    assert all(
        0 <= x and x + w <= full.shape[1] and 0 <= y and y + h <= full.shape[0] for x, y, w, h in rects
    )


def test_scaled_defects_stay_inside_the_mini_detector():
    full = load_camera("LSSTComCam").detector(0)
    mini = load_camera("LSSTComCam", "mini").detector(0)
    corners = [(0, 0, 1, 1), (4071, 3999, 1, 1), (508, 1999, 2, 2), (0, 0, 4072, 4000), (1234, 0, 1, 2000)]
    out = scale_defects(corners, full, mini)
    rows, cols = mini.shape
    for x, y, w, h in out:
        assert 0 <= x < cols and 0 <= y < rows and w >= 1 and h >= 1 and x + w <= cols and y + h <= rows
    assert out[0] == (0, 0, 1, 1) and out[1] == (cols - 1, rows - 1, 1, 1) and out[3] == (0, 0, cols, rows)
    assert out[4][2:] == (1, 250)  # a full-height column stays a full-height column
    assert scale_defects(corners, full, full) == corners


def test_manual_defects_at_a_date_are_in_the_truth():
    mini = load_camera("LSSTComCam", "mini")
    early = manual_defects_at(mini, "2024-11-10T20:00:00")
    late = manual_defects_at(mini, "2025-07-01T00:00:00")
    assert set(early) == {0, 4, 7} and len(late[4]) == len(early[4]) + 1
    assert manual_defects_at(mini, "2024-01-01T00:00:00") == {}
    truth = make_truth(mini, 3, date="2024-11-10T20:00:00")
    assert set(early[4]) <= set(truth.detectors[4].defects)
    no_manual = make_truth(mini, 3, manual_defects=False, date="2024-11-10T20:00:00")
    assert not set(early[4]) & set(no_manual.detectors[4].defects)


def test_write_and_certify(sqlite_repo):
    report = write_curated_calibrations(sqlite_repo, "LSSTComCam", COLL, scale="mini")
    reg = sqlite_repo.registry
    assert len(report.written) == 5 and not report.skipped
    assert reg.get_collection_type(COLL) == CollectionType.CALIBRATION
    assert report.runs == [f"{COLL}/20241001T000000", f"{COLL}/20250601T000000"]
    links = reg.query_certifications(COLL)
    spans = {(r.dataset_type, r.data_id.get("detector")): [] for r in links}
    for r in links:
        spans[(r.dataset_type, r.data_id.get("detector"))].append(r.extra["timespan"])
    assert sorted(spans[("manual_defects", 4)], key=lambda t: t.begin_ns) == [
        Timespan.from_text("2024-10-01", "2025-06-01"),
        Timespan.from_text("2025-06-01"),
    ]
    assert spans[("camera", None)] == [Timespan.from_text("2024-10-01")]
    # lookups at two dates find the two versions
    nov = Timespan(parse_tai("2024-11-10T20:00:00"), parse_tai("2024-11-10T20:00:30"))
    jul = Timespan(parse_tai("2025-07-01T20:00:00"), parse_tai("2025-07-01T20:00:30"))
    a = reg.find_dataset("manual_defects", DataId(instrument="LSSTComCam", detector=4), [COLL], timespan=nov)
    b = reg.find_dataset("manual_defects", DataId(instrument="LSSTComCam", detector=4), [COLL], timespan=jul)
    ra, _ = read_defects(sqlite_repo.get_path(a))
    rb, meta = read_defects(sqlite_repo.get_path(b))
    mini = load_camera("LSSTComCam", "mini")
    assert ra == [r[:4] for r in manual_defects_at(mini, "2024-11-10T20:00:00")[4]]
    assert len(rb) == len(ra) + 1 and meta["scale"] == "mini" and meta["detector"] == 4
    cam = reg.find_dataset("camera", DataId(instrument="LSSTComCam"), [COLL], timespan=nov)
    assert "name: LSSTComCam" in sqlite_repo.get_path(cam).read_text()
    # re-running changes nothing
    again = write_curated_calibrations(sqlite_repo, "LSSTComCam", COLL, scale="mini")
    assert not again.written and len(again.skipped) == 5
    assert len(reg.query_certifications(COLL)) == len(links)


def test_refuses_the_instrument_calib_chain(sqlite_repo):
    before = [c.name for c in sqlite_repo.registry.query_collections()]
    with pytest.raises(UserInputError, match="LSSTComCam/calib must stay a CHAINED collection.*DMTN-222"):
        write_curated_calibrations(sqlite_repo, "LSSTComCam", "LSSTComCam/calib")
    assert [c.name for c in sqlite_repo.registry.query_collections()] == before
    sqlite_repo.registry.register_collection("LSSTComCam/calib/DM-9/curated", CollectionType.RUN)
    with pytest.raises(CollectionTypeError, match="exists as a RUN collection"):
        write_curated_calibrations(sqlite_repo, "LSSTComCam", "LSSTComCam/calib/DM-9/curated")


def test_cli(tmp_path, sqlite_repo):
    root = str(sqlite_repo.root)
    r = CliRunner().invoke(
        main, ["write-curated-calibrations", root, "LATISS", "--collection", "LATISS/calib"]
    )
    assert r.exit_code == 2 and "refusing to write curated calibrations into 'LATISS/calib'" in r.output
    r = CliRunner().invoke(
        main, ["write-curated-calibrations", root, "LATISS", "--collection", "LATISS/calib/DM-1/curated"]
    )
    assert r.exit_code == 0, r.output
    assert (
        "written: 2" in r.output
        and f"cpframe collection-chain {root} --mode prepend LATISS/calib" in r.output
    )


def test_write_defects_round_trip(tmp_path):
    p = write_defects(
        tmp_path / "d.ecsv", [(1, 2, 3, 4), (5, 6, 1, 40)], "LATISS", 0, "2024-01-01T00:00:00", comment="x"
    )
    rects, meta = read_defects(p)
    assert rects == [(1, 2, 3, 4), (5, 6, 1, 40)]
    assert meta["counts"] == {"dead": 1, "bad_column": 1} and meta["calib_date"] == "2024-01-01T00:00:00"
    (tmp_path / "bad.ecsv").write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: x0, datatype: int64}\nx0\n1\n"
    )
    with pytest.raises(UserInputError, match="lacks column.*y0, width, height"):
        read_defects(tmp_path / "bad.ecsv")
