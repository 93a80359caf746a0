"""cpframe/core/schema.py (YAML -> pydantic models, one line per problem), the settings schema,
memory sizes (dask.utils) and TAI (erfa), all through the real files and libraries."""

from __future__ import annotations

import time
from typing import Literal

import dask.utils
import erfa
import pytest
from astropy.time import Time
from pydantic import Field

from cpframe.camera.models import CameraFile, _camera_yaml
from cpframe.core.config import format_bytes, load_settings, parse_bytes
from cpframe.core.errors import CameraError, ConfigError, UserInputError
from cpframe.core.model import tai_minus_utc_ns, tai_now_ns, tai_ns
from cpframe.core.schema import Schema, Text, check, load_yaml, validate


class Step(Schema):
    name: str
    kind: Literal["submit", "certify"]
    needs: list[str] = []


class Doc(Schema):
    steps: list[Step]
    start: Text = ""
    timeout: float = Field(60.0, alias="busy-timeout-s", gt=0)


def test_every_problem_is_one_line_naming_file_key_path_and_allowed_values(tmp_path):
    p = tmp_path / "doc.yaml"
    p.write_text("steps:\n  - {name: a, kind: sumbit, colour: red}\n  - {kind: certify}\nbusy-timeout-s: -1\nx: 1\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(p, Doc)
    lines = str(err.value).splitlines()
    assert f"{p}: steps[0].kind: 'sumbit' is not allowed; use one of 'submit' or 'certify'" in lines
    assert f"{p}: steps[0].colour: unknown key; allowed keys: kind, name, needs" in lines
    assert f"{p}: steps[1].name: is required but missing" in lines
    assert any(line.startswith(f"{p}: busy-timeout-s: -1: input should be greater than 0") for line in lines)
    assert f"{p}: x: unknown key; allowed keys: busy-timeout-s, start, steps" in lines
    assert len(lines) == 5 and all(line.startswith(f"{p}: ") for line in lines)


def test_yaml_errors_and_the_error_class(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("steps: [1,\n")
    with pytest.raises(UserInputError, match=r"bad.yaml: not valid YAML \(line 2, column 1\)"):
        load_yaml(p, Doc, error=UserInputError)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml", Doc)
    with pytest.raises(ConfigError, match="expected a mapping of keys, got list"):
        validate([1, 2], Doc, "list.yaml")


def test_text_keeps_unquoted_dates_and_check_collects():
    assert validate({"steps": [], "start": __import__("datetime").date(2024, 11, 10)}, Doc, "s").start == "2024-11-10"
    problems: list[str] = []
    # unknown keys only: reported, and the part is still returned without them
    got = check({"name": "a", "kind": "submit", "colour": 1}, Step, problems, source="f.yaml", prefix="steps[3]")
    assert got == Step(name="a", kind="submit") and problems == [
        "f.yaml: steps[3].colour: unknown key; allowed keys: kind, name, needs"]
    assert check({"kind": "x"}, Step, problems) is None and len(problems) == 3


def test_settings_are_validated_with_their_key_paths(monkeypatch):
    monkeypatch.setenv("DASK_CPFRAME__CLUSTER__N_WORKERS", "0")
    monkeypatch.setenv("DASK_CPFRAME__CLUSTER__WORKRE_MEMORY", "4 GiB")
    with pytest.raises(ConfigError) as err:
        load_settings()
    msg = str(err.value)
    assert "cpframe.cluster.n-workers: 0: input should be greater than or equal to 1" in msg
    assert "cpframe.cluster.workre-memory: unknown key; allowed keys: kind, maximum-jobs" in msg


def test_camera_files_are_validated():
    data = dict(_camera_yaml("LATISS"))
    data["detectors"] = [dict(data["detectors"][0], id="zero")]
    with pytest.raises(CameraError, match=r"LATISS.yaml: detectors\[0\].id: 'zero': input should be a valid integer"):
        validate(data, CameraFile, "LATISS.yaml", error=CameraError)


def test_memory_sizes_are_read_as_dask_reads_them():
    # "4G" is 4e9 bytes for dask and dask-jobqueue (it was read as 4 GiB here)
    assert parse_bytes("4G") == dask.utils.parse_bytes("4G") == 4 * 10**9 == parse_bytes("4 GB")
    assert parse_bytes("4 GiB") == parse_bytes("4Gi") == 4 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes(123) == 123
    with pytest.raises(ConfigError, match="'lots' is not a size"):
        parse_bytes("lots", "cpframe.cluster.worker-memory")
    assert format_bytes(3 * 2**30) == dask.utils.format_bytes(3 * 2**30) == "3.00 GiB"


def test_tai_comes_from_the_leap_second_table():
    # TAI - UTC changed over the years; no constant can be right for every date
    assert tai_minus_utc_ns(2024, 11, 10) == 37 * 10**9 and tai_minus_utc_ns(2012, 1, 1) == 34 * 10**9
    assert tai_minus_utc_ns(2016, 6, 1) == int(erfa.dat(2016, 6, 1, 0.0)) * 10**9 == 36 * 10**9
    before = tai_ns(Time.now())
    now = tai_now_ns()
    after = tai_ns(Time.now())
    assert before - 10**7 <= now <= after + 10**7  # astropy's own UTC -> TAI, within 10 ms
    assert abs(now - time.time_ns() - tai_minus_utc_ns(*time.gmtime()[:3])) < 10**9
