"""Curated calibrations as text (cpframe.campaign.curated_text) and their provenance in the registry.

The shipped curated folder is copied into a real git repository; files are edited, checked,
compared, written into a real SQLite repository, and a built defects product is extracted.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from cpframe.camera.curated import read_defects, write_defects
from cpframe.campaign.curated_text import _overlaps, diff, extract, validate
from cpframe.camera.models import load_camera
from cpframe.cli import main
from cpframe.core.errors import UserInputError

SHIPPED = Path(str(resources.files("cpframe") / "data" / "curated"))
R22_S11 = "manual_defects_R22_S11_20241001T000000.ecsv"


def _git(folder, *args):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(folder), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True,
                           env=env).stdout.strip()


@pytest.fixture
def curated(tmp_path):
    """The shipped curated folder as a git repository with one commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    d = tmp_path / "obs_data"
    shutil.copytree(SHIPPED, d)
    _git(d, "init", "-q")
    _git(d, "add", "-A")
    _git(d, "commit", "-qm", "curated calibrations")
    return d


def test_shipped_curated_files_are_valid():
    report = validate(SHIPPED)
    assert report.ok, report.problems
    assert report.by_kind["defects"] == len(list(SHIPPED.rglob("manual_defects_*.ecsv")))


def test_defect_outside_the_detector_is_one_line_and_nothing_is_written(curated, tmp_path):
    from cpframe.repository.repo import Repository

    path = curated / "LSSTComCam" / R22_S11
    rects, meta = read_defects(path)
    width = load_camera("LSSTComCam").detector("R22_S11").shape[1]
    write_defects(path, rects + [(width - 2, 10, 5, 5)], "LSSTComCam", 4, meta["calib_date"], scale="full")
    res = CliRunner().invoke(main, ["curated", "validate", str(curated)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"{R22_S11} row 3: rectangle x {width - 2}..{width + 2}" in res.output and "outside detector R22_S11" in res.output
    repo = Repository.create(tmp_path / "repo")
    repo.close()
    res = CliRunner().invoke(main, ["write-curated-calibrations", str(tmp_path / "repo"), "LSSTComCam",
                                    "--collection", "LSSTComCam/calib/DM-9/curated", "--curated-dir", str(curated)])
    assert res.exit_code == 2 and "outside detector R22_S11" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    repo = Repository.open(tmp_path / "repo")
    try:
        assert [c.name for c in repo.registry.query_collections("LSSTComCam/*")] == []
    finally:
        repo.close()


def test_schema_amps_and_overlaps_are_checked(curated):
    inst = curated / "LSSTComCam"
    rects, meta = read_defects(inst / R22_S11)
    write_defects(inst / R22_S11, rects + [(rects[0][0], rects[0][1] + 1, 3, 3)], "LSSTComCam", 4, meta["calib_date"])
    amps = load_camera("LSSTComCam").detector("R22_S11").amp_names
    rows = "\n".join(f"{a} 1.6 7.0" for a in amps[1:]) + "\nC99 1.7 7.0\nC10 -1.0 7.0\n"
    (inst / "gain_R22_S11_20241001T000000.ecsv").write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: amp, datatype: string}\n# - {name: gain, datatype: float64}\n"
        "# - {name: noise, datatype: float64}\n# schema: astropy-2.0\namp gain noise\n" + rows)
    (inst / "crosstalk_R22_S11_20241001T000000.yaml").write_text(
        "detector: R22_S11\ncoefficients:\n  C10: {C11: 1.0e-4, C10: 2.0e-4, C77: 1.0e-5}\n  C11: {C10: 0.5}\n")
    (inst / "notes.txt").write_text("x")
    report = validate(curated, "LSSTComCam")
    text = "\n".join(report.problems)
    assert "rows 1 and 3" in text and "overlap" in text
    assert "amp(s) C99 are not amplifiers of R22_S11" in text and "gain -1.0 is not a positive" in text
    assert "C10 -> C10: an amplifier has no crosstalk onto itself" in text and "C77 is not an amplifier" in text
    assert "C11 -> C10: coefficient 0.5" in text and "notes.txt: not a curated file name" in text
    res = CliRunner().invoke(main, ["curated", "validate", str(curated)])
    assert res.exit_code == 2 and f"{len(report.problems)} problem(s)" in res.output


def test_overlap_sweep_matches_a_pixel_mask():
    import numpy as np

    rng = np.random.default_rng(3)
    rects = [tuple(int(v) for v in (rng.integers(0, 40), rng.integers(0, 40), rng.integers(1, 6), rng.integers(1, 6)))
             for _ in range(40)]
    masks = []
    for x0, y0, w, h in rects:
        m = np.zeros((50, 50), bool)
        m[y0:y0 + h, x0:x0 + w] = True
        masks.append(m)
    truth = sorted((i, j) for i in range(40) for j in range(i + 1, 40) if (masks[i] & masks[j]).any())
    assert _overlaps(rects) == truth and truth


def test_diff_by_content(curated, tmp_path):
    before = tmp_path / "before"
    shutil.copytree(curated, before, ignore=shutil.ignore_patterns(".git"))
    path = curated / "LSSTComCam" / R22_S11
    rects, meta = read_defects(path)
    write_defects(path, rects[1:] + [(10, 20, 1, 100)], "LSSTComCam", 4, meta["calib_date"], scale="full")
    lines = diff(before / "LSSTComCam" / R22_S11, path)
    r = rects[0]
    assert lines == [f"- rectangle x0={r[0]} y0={r[1]} width={r[2]} height={r[3]}",
                     "+ rectangle x0=10 y0=20 width=1 height=100"]
    (curated / "LSSTComCam" / "manual_defects_R22_S00_20241001T000000.ecsv").unlink()
    res = CliRunner().invoke(main, ["curated", "diff", str(before), str(curated)])
    assert res.exit_code == 0
    assert "- LSSTComCam/manual_defects_R22_S00_20241001T000000.ecsv" in res.output
    assert f"~ LSSTComCam/{R22_S11}:" in res.output and "LATISS" not in res.output
    assert diff(before / "LATISS", curated / "LATISS") == []
    with pytest.raises(UserInputError, match="no such file"):
        diff(before / "nope", curated)


def test_write_curated_records_git_commit_and_file_hashes(curated, tmp_path):
    import hashlib

    from cpframe.repository.repo import Repository

    commit = _git(curated, "rev-parse", "HEAD")
    root = tmp_path / "repo"
    Repository.create(root).close()
    res = CliRunner().invoke(main, ["write-curated-calibrations", str(root), "LSSTComCam", "--collection",
                                    "LSSTComCam/calib/DM-9/curated", "--curated-dir", str(curated)])
    assert res.exit_code == 0, res.output
    assert f"@ {commit}" in res.output
    repo = Repository.open(root)
    try:
        info = repo.registry.get_run_info("LSSTComCam/calib/DM-9/curated/20241001T000000")["curated"]
        assert info["git_commit"] == commit and info["git_dirty"] == []
        src = curated / "LSSTComCam" / R22_S11
        assert info["files"][R22_S11] == hashlib.sha256(src.read_bytes()).hexdigest()
        ref = next(r for r in repo.registry.query_datasets("manual_defects", ["LSSTComCam/calib/DM-9/curated"])
                   if r.data_id["detector"] == 4 and r.run.endswith("20241001T000000"))
        _, meta = read_defects(repo.get_path(ref))
        assert meta["source_commit"] == commit and meta["source_sha256"] == info["files"][R22_S11]
    finally:
        repo.close()
    # an uncommitted edit is named in the provenance of what it produces
    rects, meta = read_defects(src)
    new = curated / "LSSTComCam" / "manual_defects_R22_S11_20260101T000000.ecsv"
    write_defects(new, rects[:1], "LSSTComCam", 4, "2026-01-01T00:00:00", scale="full")
    res = CliRunner().invoke(main, ["write-curated-calibrations", str(root), "LSSTComCam", "--collection",
                                    "LSSTComCam/calib/DM-10/curated", "--curated-dir", str(curated)])
    assert res.exit_code == 0 and f"UNCOMMITTED: {new.name}" in res.output, res.output


def test_extract_built_defects_roundtrip(sqlite_repo, tmp_path, curated):
    from cpframe.core.model import CollectionType

    sqlite_repo.register_instrument("LSSTComCam", scale="mini")
    run = "LSSTComCam/calib/DM-1/t/defectGen.20250101a/run"
    sqlite_repo.registry.register_collection(run, CollectionType.RUN)
    rects = [(0, 0, 500, 3), (40, 7, 1, 1), (100, 50, 1, 200)]
    f = write_defects(tmp_path / "d.ecsv", rects, "LSSTComCam", 4, "2025-01-01T00:00:00", scale="mini")
    sqlite_repo.put_files([(f, "defects", {"instrument": "LSSTComCam", "detector": 4})], run)
    out = tmp_path / "work"
    shutil.copytree(curated, out)
    res = CliRunner().invoke(main, ["curated", "extract", "defects", "--repo", str(sqlite_repo.root), "--out", str(out),
                                    "--from", run, "--valid-from", "2025-02-01T00:00:00"])
    assert res.exit_code == 0, res.output
    written = out / "LSSTComCam" / "manual_defects_R22_S11_20250201T000000.ecsv"
    got, meta = read_defects(written)
    assert got == rects and meta["scale"] == "mini" and run in meta["source"]
    assert validate(out).ok
    # extracting again would overwrite: refused, file unchanged
    before = written.read_bytes()
    res = CliRunner().invoke(main, ["curated", "extract", "defects", "--repo", str(sqlite_repo.root), "--out", str(out),
                                    "--from", run, "--valid-from", "2025-02-01T00:00:00"])
    assert res.exit_code == 2 and "already exist, not overwritten" in res.output and written.read_bytes() == before
    with pytest.raises(UserInputError, match="no ptc dataset"):
        extract(sqlite_repo, "gain", run, out)
