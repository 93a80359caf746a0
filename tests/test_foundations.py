"""Tests of the shared foundations: model, camera, config, errors, CLI root."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cpframe.camera.models import list_instruments, load_camera
from cpframe.cli import main
from cpframe.core.config import load_settings, parse_bytes
from cpframe.core.errors import BadDateError, CameraError, ConfigError
from cpframe.core.model import DataId, Timespan, exposure_id, ns_to_iso, parse_tai


def test_parse_tai_round_trip_and_rejections():
    ns = parse_tai("2024-11-26T03:12:00")
    assert ns_to_iso(ns) == "2024-11-26T03:12:00.000"
    assert parse_tai("2024-11-26") == parse_tai("2024-11-26T00:00:00")
    assert parse_tai("2024-11-26 00:00:00.5") - parse_tai("2024-11-26") == 500_000_000
    for bad in ["2024-11-26T00:00:00Z", "2024-11-26T00:00:00+00:00", "20241126", "yesterday", "2024-13-01"]:
        with pytest.raises(BadDateError, match="2024|yesterday"):
            parse_tai(bad)


def test_timespan_semantics():
    a = Timespan.from_text("2024-01-01", "2024-02-01")
    b = Timespan.from_text("2024-02-01", None)
    assert not a.overlaps(b) and not b.overlaps(a)  # adjacent half-open ranges
    assert Timespan.from_text("1970-01-01T00:00:00").begin_ns is None  # "since forever"
    assert Timespan().overlaps(a)
    with pytest.raises(BadDateError, match="after it ends"):
        Timespan.from_text("2024-02-01", "2024-01-01")


def test_data_id_canonical_and_hashable():
    a = DataId(detector=4, instrument="LSSTComCam")
    b = DataId({"instrument": "LSSTComCam", "detector": 4})
    assert a == b and hash(a) == hash(b) and str(a) == "instrument=LSSTComCam,detector=4"
    assert exposure_id(20241110, 44) == 2024111000044


@pytest.mark.parametrize("name,ndet,nsci", [("LATISS", 1, 1), ("LSSTComCam", 9, 9), ("LSSTCam", 205, 189)])
def test_cameras(name, ndet, nsci):
    cam = load_camera(name)
    assert len(cam.detectors) == ndet and len(cam.science_detectors) == nsci and name in list_instruments()
    det = cam.detectors[0]
    assert len(det.amps) == 16
    # amps tile the detector exactly once
    import numpy as np

    cover = np.zeros(det.shape, int)
    for a in det.amps:
        cover[a.bbox] += 1
    assert (cover == 1).all()
    mini = load_camera(name, "mini").detectors[0]
    assert mini.amps[0].data_cols < det.amps[0].data_cols
    assert mini.amps[0].serial_overscan_cols == det.amps[0].serial_overscan_cols


def test_camera_errors():
    with pytest.raises(CameraError, match="unknown instrument 'HSC'"):
        load_camera("HSC")
    with pytest.raises(CameraError, match="no detector 99"):
        load_camera("LSSTComCam").detector(99)


def test_settings_env_override(monkeypatch):
    monkeypatch.setenv("DASK_CPFRAME__COMBINE__MEMORY_BUDGET", "2 GiB")
    assert load_settings().combine_memory_bytes == 2 * 2**30
    monkeypatch.setenv("DASK_CPFRAME__CLUSTER__KIND", "kubernetes")
    with pytest.raises(ConfigError, match="kubernetes"):
        load_settings()
    assert parse_bytes("1.5 KiB") == 1536


def test_cli_help_lists_exit_codes():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "Exit codes" in r.output
