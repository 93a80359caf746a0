"""Tests of raw ingest: header reading, exposure records, bad files, idempotence, transfer modes,
and the DMTN-222 worked-example selections on an ingested repository."""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cpframe.camera.models import load_camera
from cpframe.cli import main
from cpframe.repository.ingest import fast_tai_ns, ingest_raws, read_raw_header, read_raw_headers
from cpframe.core.model import CollectionType, parse_tai
from cpframe.repository.repo import Repository
from cpframe.camera.simulate import ExposureSpec, raw_path, read_plan, write_raw

RUN = "LSSTComCam/raw/all"


def _specs(day=20241203, n=3):
    return [
        ExposureSpec(day, 10 + i, "flat", "g_01", 5.0, 5.3, f"2024-12-03T20:0{i}:00", "flat", "P", 1000.0)
        for i in range(n)
    ]


def _datasets(repo, run=RUN):
    return repo.registry.query_datasets("raw", collections=[run])


@pytest.fixture
def good_files(simulate_tiny, tmp_path):
    return simulate_tiny(_specs(), tmp_path / "good")


def _rewrite_header(src, dst, **changes):
    with fits.open(src) as h:
        for k, v in changes.items():
            if v is None:
                del h[0].header[k]
            else:
                h[0].header[k] = v
        h.writeto(dst)
    return dst


def test_read_header_builds_the_exposure_record(good_files):
    info = read_raw_header(good_files[0])
    spec = _specs()[0]
    assert (info.instrument, info.detector, info.exposure, info.scale) == (
        "LSSTComCam",
        4,
        spec.exposure_id,
        "mini",
    )
    rec = info.record
    assert rec["obs_id"] == "CC_O_20241203_000010" and rec["physical_filter"] == "g_01"
    assert (rec["day_obs"], rec["seq_num"], rec["observation_type"]) == (20241203, 10, "flat")
    assert (rec["exposure_time"], rec["dark_time"]) == (5.0, 5.3)
    assert rec["timespan"].begin_ns == parse_tai("2024-12-03T20:00:00")
    assert rec["timespan"].end_ns - rec["timespan"].begin_ns == 5_300_000_000
    assert str(info.data_id) == f"instrument=LSSTComCam,detector=4,exposure={spec.exposure_id}"


def test_bad_files_reported_and_the_rest_ingested(good_files, tmp_path, sqlite_repo):
    bad = tmp_path / "bad"
    bad.mkdir()
    src = good_files[0]
    rng = np.random.default_rng(0)
    (bad / "garbage.fits").write_bytes(rng.integers(0, 256, 6000, dtype=np.uint8).tobytes())
    (bad / "empty.fits").write_bytes(b"")
    data = src.read_bytes()
    (bad / "truncated.fits").write_bytes(data[: len(data) // 2])
    _rewrite_header(src, bad / "nodayobs.fits", DAYOBS=None, SEQNUM=None)
    _rewrite_header(src, bad / "badexpid.fits", CONTRLLR="X")
    _rewrite_header(src, bad / "utc.fits", **{"DATE-END": "2024-12-03T19:00:00.000"})
    _rewrite_header(src, bad / "filter.fits", FILTER="q_99")
    _rewrite_header(src, bad / "notint.fits", RAFTBAY="R99")
    report = ingest_raws(sqlite_repo, [tmp_path / "good", bad, tmp_path / "nowhere.fits"], transfer="copy")
    assert sorted(report.ingested) == sorted(str(p) for p in good_files)
    reasons = {os.path.basename(p): r for p, r in report.failed}
    assert set(reasons) == {
        "garbage.fits",
        "empty.fits",
        "truncated.fits",
        "nodayobs.fits",
        "badexpid.fits",
        "utc.fits",
        "filter.fits",
        "notint.fits",
        "nowhere.fits",
    }
    assert "not a readable FITS file" in reasons["garbage.fits"]
    assert "truncated" in reasons["truncated.fits"] and "need at least" in reasons["truncated.fits"]
    assert "DAYOBS is missing" in reasons["nodayobs.fits"] or "SEQNUM is missing" in reasons["nodayobs.fits"]
    assert "CONTRLLR='X' is not one of O, C, H, P, Q, S" in reasons["badexpid.fits"]
    assert "end 2024-12-03T19:00:00.000 TAI is before begin 2024-12-03T20:00:00.000 TAI" in reasons["utc.fits"]
    assert "no physical filter 'q_99'" in reasons["filter.fits"]
    assert "detector R99_S11 is not a LSSTComCam detector" in reasons["notint.fits"]
    assert "no such file" in reasons["nowhere.fits"]
    for p, r in report.failed:  # every reason names its file
        assert p in r or os.path.basename(p) == "nowhere.fits"
    assert len(_datasets(sqlite_repo)) == 3
    summary = report.summary()
    assert "ingested 3 raw file(s) into RUN LSSTComCam/raw/all" in summary and "failed 9" in summary
    assert "fix or remove the failed files" in summary


def test_reingest_is_skipped_and_a_different_file_is_refused(
    good_files, simulate_tiny, tmp_path, sqlite_repo
):
    first = ingest_raws(sqlite_repo, [tmp_path / "good"], transfer="symlink")
    assert len(first.ingested) == 3 and first.exposures_new == 3
    again = ingest_raws(sqlite_repo, [tmp_path / "good"], transfer="symlink")
    assert again.ingested == [] and len(again.skipped) == 3 and again.exposures_known == 3
    assert all("already ingested" in r for _, r in again.skipped)
    assert len(_datasets(sqlite_repo)) == 3
    other = simulate_tiny(_specs(), tmp_path / "other", seed=99)  # same data IDs, other pixels
    third = ingest_raws(sqlite_repo, other, transfer="copy")
    assert third.ingested == [] and len(third.failed) == 3
    assert all("a different file with data ID" in r for _, r in third.failed)
    # and the repository still points at the first files
    for ref in _datasets(sqlite_repo):
        assert sqlite_repo.get_path(ref).resolve().parent.parent.parent == (tmp_path / "good").resolve()


def test_files_of_one_exposure_must_agree(good_files, tmp_path, sqlite_repo):
    det0 = tmp_path / "more" / "LSSTComCam_det0.fits"
    det0.parent.mkdir()
    _rewrite_header(good_files[0], det0, CCDSLOT="S00", SHUTTIME=99.0)
    report = ingest_raws(sqlite_repo, [tmp_path / "good", det0])
    assert len(report.ingested) == 3
    ((path, reason),) = report.failed
    assert path == str(det0) and "disagrees" in reason and "exposure_time: 99.0 vs 5.0" in reason


@pytest.mark.parametrize("transfer", ["copy", "symlink", "direct", "move"])
def test_transfer_modes(good_files, tmp_path, transfer):
    repo = Repository.create(tmp_path / f"repo_{transfer}")
    try:
        report = ingest_raws(repo, good_files[:1], transfer=transfer, run="LSSTComCam/raw/test")
        assert len(report.ingested) == 1
        (ref,) = _datasets(repo, "LSSTComCam/raw/test")
        path = repo.get_path(ref)
        assert path.is_file() and fits.getheader(path)["OBSID"] == _specs()[0].obs_id("LSSTComCam")
        assert repo.registry.get_collection_type("LSSTComCam/raw/test") == CollectionType.RUN
        if transfer == "direct":
            assert path == good_files[0].resolve()
        else:
            assert (tmp_path / f"repo_{transfer}") in path.parents
        assert path.is_symlink() == (transfer == "symlink")
        assert good_files[0].exists() == (transfer != "move")
    finally:
        repo.close()


def test_parallel_header_reading_matches(mini_dataset):
    paths = mini_dataset.paths[:40]
    serial, f1 = read_raw_headers(paths, processes=1)
    parallel, f2 = read_raw_headers(paths, processes=2)
    assert not f1 and not f2 and serial == parallel and len(serial) == 40


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)), st.integers(0, 999_999_999)
)
def test_fast_tai_parse_equals_parse_tai(dt, ns):
    text = dt.replace(microsecond=0).isoformat() + f".{ns:09d}"
    assert fast_tai_ns(text) == parse_tai(text)
    plain = dt.replace(microsecond=0).isoformat()
    assert fast_tai_ns(plain) == parse_tai(plain)


def test_registry_records_and_demo_selections(mini_raw_repo, mini_dataset):
    reg = mini_raw_repo.registry
    specs = {s.exposure_id: s for s in mini_dataset.specs}
    records = reg.query_dimension_records("exposure", instrument="LSSTComCam")
    assert len(records) == len(specs) == 74
    for rec in records:
        s = specs[rec["id"]]
        assert (rec["day_obs"], rec["seq_num"], rec["observation_type"], rec["physical_filter"]) == (
            s.day_obs,
            s.seq_num,
            s.observation_type,
            s.physical_filter,
        )
        assert (
            rec["observation_reason"] == s.observation_reason and rec["science_program"] == s.science_program
        )
        assert rec["exposure_time"] == s.exposure_time and rec["dark_time"] == s.dark_time
        assert rec["timespan"].begin_ns == s.begin_ns and rec["timespan"].end_ns == s.end_ns
    assert len(_datasets(mini_raw_repo)) == 2 * len(specs)  # detectors 0 and 4
    _check_selections(reg, mini_dataset.plan)


def _band_clause(name: str) -> str:
    m = re.fullmatch(r"SELECTION_FLAT_([ugrizy])(_V)?", name)
    return f" and band='{m.group(1)}'" if m else ""


def _check_selections(reg, plan):
    """Each SELECTION_* (plus the band clause the flat templates append) returns exactly the
    exposures the plan's blocks mark as intended for it."""
    assert set(plan.intended) == set(plan.selections)
    for name, where in plan.selections.items():
        got = {d["exposure"] for d in reg.query_data_ids(["exposure"], where=where + _band_clause(name))}
        assert got == set(plan.intended[name]), name


def test_dmtn222_worked_example_selections(tmp_path):
    """Raw files of the whole dmtn222 plan (one detector; pixels left 0 in sparse files to keep it
    fast), ingested with the CLI: the worked example's selections return the planned exposures."""
    plan = read_plan("dmtn222")
    cam = load_camera("LSSTComCam", "mini")
    det = cam.detector(4)
    for s in plan.specs:
        write_raw(raw_path(tmp_path / "raw", cam.name, s, det), cam, det.id, s, None, 0)
    with fits.open(raw_path(tmp_path / "raw", cam.name, plan.specs[7], det)) as h:
        h.verify("exception")
        assert len(h) == 17 and not h[5].data.any() and h[0].header["SEQNUM"] == plan.specs[7].seq_num
    Repository.create(tmp_path / "repo").close()
    r = CliRunner().invoke(
        main, ["ingest-raws", str(tmp_path / "repo"), str(tmp_path / "raw"), "--transfer", "direct"]
    )
    assert r.exit_code == 0, r.output
    assert "ingested 300 raw file(s) into RUN LSSTComCam/raw/all; exposures: 300 new" in r.output
    repo = Repository.open(tmp_path / "repo")
    try:
        _check_selections(repo.registry, plan)
        # the spec's example selection (templates.md §3) is the verification biases
        example = "instrument='LSSTComCam' and exposure.day_obs=20241126 and exposure.seq_num in (21..40)"
        got = repo.registry.query_dimension_records("exposure", where=example)
        assert len(got) == 20 and {g["observation_type"] for g in got} == {"bias"}
    finally:
        repo.close()


def test_cli_ingest_raws_reports_failures_with_exit_code(good_files, tmp_path):
    Repository.create(tmp_path / "repo").close()
    broken = tmp_path / "good" / "zz_broken.fits"
    shutil.copy(good_files[1], broken)
    with open(broken, "r+b") as f:
        f.truncate(10000)
    r = CliRunner().invoke(main, ["ingest-raws", str(tmp_path / "repo"), str(tmp_path / "good")])
    assert r.exit_code == 3, r.output
    assert "ingested 3 raw file(s)" in r.output and "zz_broken.fits: truncated" in r.output
    assert "1 file(s) could not be ingested" in r.output
    r = CliRunner().invoke(main, ["ingest-raws", str(tmp_path / "repo"), str(good_files[0])])
    assert r.exit_code == 0 and "skipped 1 (already ingested)" in r.output


def test_timespan_of_an_exposure_is_tai(good_files):
    info = read_raw_header(good_files[2])
    begin = datetime(1970, 1, 1) + timedelta(microseconds=info.record["timespan"].begin_ns // 1000)
    assert begin == datetime(2024, 12, 3, 20, 2, 0)
