"""Calibrations cross between cpframe and the real Rubin butler (lsst-daf-butler), both ways.

(a) a cpframe chain -> ``cpframe export-calibs --format butler`` -> ``butler import`` into a real
    butler repository; (b) calibrations built in a real butler repository with its Python API ->
    ``butler export-calibs`` -> ``cpframe import``.  After each, find-first answers for every
    calibration type, detector and a grid of dates must name the same dataset on both sides.

The butler imports every formatter class named in an export before writing anything.  Those
classes live in obs_base, which is not on the package registry, so the tests put a minimal
stand-in module on PYTHONPATH that keeps the real class names
(``lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter``, ``...fitsGeneric.FitsGenericFormatter``);
it is only imported, never used to read a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cpframe.camera.models import load_camera
from cpframe.core.errors import ExportError
from cpframe.core.model import CollectionType, Timespan, parse_tai
from cpframe.repository.repo import Repository
from cpframe.repository.transfer import export_calibs, import_export
from cpframe.science.imageio import read_defects, write_defects
from tests.conftest import need_service

try:
    from lsst.daf.butler import Butler, DatasetRef, DatasetType, FileDataset
    from lsst.daf.butler import CollectionType as BCT
    from lsst.daf.butler import Timespan as BTimespan

    HAVE_BUTLER = True
except ImportError:  # the test extra is not installed
    HAVE_BUTLER = False


@pytest.fixture(autouse=True)
def _need_butler():
    need_service(HAVE_BUTLER, "lsst-daf-butler is not installed (pip install -e '.[test]')")

INST = "LSSTComCam"
DETECTORS = (0, 4, 8)
FILTERS = ("g_01", "r_03")
TYPES = ("bias", "dark", "flat", "defects", "ptc")
#: find-first is asked at these dates (TAI), around and inside every validity range used below
DATES = [f"2024-{m:02d}-{d:02d}T{h:02d}:00:00" for m in (9, 10, 11, 12) for d in (1, 10, 15, 20, 28) for h in (0, 12)]
DATES += ["2024-10-14T23:59:59", "2024-10-31T23:59:59.5", "2024-11-19T23:59:59"]  # just before range ends
assert {"2024-10-15T00:00:00", "2024-11-01T00:00:00", "2024-11-20T00:00:00"} <= set(DATES)  # exactly at them

_STUB = {
    "lsst/__init__.py": "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n",
    "lsst/obs/__init__.py": "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n",
    "lsst/obs/base/__init__.py": "",
    "lsst/obs/base/formatters/__init__.py": "",
    "lsst/obs/base/formatters/fitsExposure.py": textwrap.dedent('''\
        """Stand-in for obs_base's formatter (cpframe tests): the real class name, never used to read."""
        from lsst.daf.butler import FormatterV2


        class FitsExposureFormatter(FormatterV2):
            default_extension = ".fits"
            can_read_from_local_file = True
        '''),
    "lsst/obs/base/formatters/fitsGeneric.py": textwrap.dedent('''\
        """Stand-in for obs_base's formatter (cpframe tests): the real class name, never used to read."""
        from lsst.daf.butler import FormatterV2


        class FitsGenericFormatter(FormatterV2):
            default_extension = ".fits"
            can_read_from_local_file = True
        '''),
}


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("obs_base_stub")
    for rel, text in _STUB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sys.path.insert(0, str(root))
    import lsst  # noqa: F401  extend the namespace now that the stub is on the path

    lsst.__path__.append(str(root / "lsst")) if str(root / "lsst") not in lsst.__path__ else None
    yield root
    sys.path.remove(str(root))


def _butler_cli(stub: Path, *args: str) -> str:
    exe = Path(sys.executable).with_name("butler")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lsst.daf.butler.cli.butler"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"butler {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _span(ranges: dict[str, tuple[str | None, str | None]], name: str) -> Timespan:
    b, e = ranges[name]
    return Timespan(None if b is None else parse_tai(b), None if e is None else parse_tai(e))


#: CALIBRATION collections (newest first in the chain) and their ranges: the newer one starts
#: mid-October, the older one is open-ended before; detector 8 has no newer bias (falls through).
RANGES = {"new": ("2024-10-15", None), "old": (None, "2024-11-01"), "mid": ("2024-11-01", "2024-11-20")}


def _data_ids(dtype: str) -> list[dict]:
    base = [{"instrument": INST, "detector": d} for d in DETECTORS]
    if dtype == "flat":
        return [{**b, "physical_filter": f} for b in base for f in FILTERS]
    return base


def _cpframe_answers(repo: Repository, chain: str) -> dict:
    reg = repo.registry
    out = {}
    for dtype in TYPES:
        ids = _data_ids(dtype)
        for date in DATES:
            t = parse_tai(date)
            refs = reg.find_datasets(dtype, ids, [chain], Timespan(t, t + 10**9))
            for did, ref in zip(ids, refs):
                out[(dtype, tuple(sorted(did.items())), date)] = None if ref is None else str(ref.id)
    return out


def _butler_answers(butler: Butler, chain: str) -> dict:
    import astropy.time

    out = {}
    for dtype in TYPES:
        for did in _data_ids(dtype):
            for date in DATES:
                t = astropy.time.Time(date, scale="tai")
                span = BTimespan(t, t + astropy.time.TimeDelta(1, format="sec"))
                ref = butler.find_dataset(dtype, did, collections=[chain], timespan=span)
                out[(dtype, tuple(sorted(did.items())), date)] = None if ref is None else str(ref.id)
    return out


def _fill_cpframe(repo: Repository, tmp: Path) -> int:
    """Three CALIBRATION collections of every type under one chain; returns datasets made."""
    repo.register_instrument(INST)
    reg = repo.registry
    n = 0
    for label in RANGES:
        run = f"{INST}/calib/{label}/run"
        reg.register_collection(run, CollectionType.RUN)
        items = []
        for dtype in TYPES:
            for did in _data_ids(dtype):
                if label == "new" and dtype == "bias" and did["detector"] == 8:
                    continue  # detector 8 falls through to the older bias
                ext = ".ecsv" if dtype == "defects" else ".fits"
                p = tmp / f"{label}_{dtype}_{did['detector']}_{did.get('physical_filter', '')}{ext}"
                if dtype == "defects":
                    write_defects(p, [(did["detector"], len(label), 2, 3)], {"instrument": INST, "detector": did["detector"]})
                else:
                    p.write_bytes(f"{label} {dtype} {did}".encode())
                items.append((p, dtype, did))
        refs = repo.put_files(items, run)
        n += len(refs)
        for dtype in TYPES:
            reg.certify(f"{INST}/calib/{label}", [r for r in refs if r.dataset_type == dtype], _span(RANGES, label))
    reg.set_chain(f"{INST}/calib", [f"{INST}/calib/new", f"{INST}/calib/mid", f"{INST}/calib/old"])
    return n


def test_cpframe_chain_into_a_real_butler(tmp_path, stub_path):
    with Repository.create(tmp_path / "cp") as repo:
        made = _fill_cpframe(repo, tmp_path)
        export = export_calibs(repo, tmp_path / "exp", [f"{INST}/calib"], format="butler")
        mine = _cpframe_answers(repo, f"{INST}/calib")
    from click.testing import CliRunner

    from cpframe.cli import main

    out = CliRunner().invoke(main, ["export-calibs", str(tmp_path / "cp"), str(tmp_path / "exp2"), f"{INST}/calib",
                                    "--format", "butler"])
    assert out.exit_code == 0, out.output
    n = 3 * (4 * len(DETECTORS) + len(DETECTORS) * len(FILTERS)) - 1
    assert f"Exported {n} dataset(s)" in out.output and "(butler format)" in out.output
    assert "Next: butler import BUTLER_REPO" in out.output
    assert (tmp_path / "exp2" / "export.yaml").read_text().count("!uuid") == export.read_text().count("!uuid")
    text = export.read_text()
    assert "\nversion: 1.0.2\n" in text and "!uuid '" in text and "!lsst.daf.butler.Timespan" in text
    Butler.makeRepo(str(tmp_path / "butler"))
    _butler_cli(stub_path, "import", str(tmp_path / "butler"), str(tmp_path / "exp"),
                "--export-file", str(export), "--transfer", "copy")
    butler = Butler.from_config(str(tmp_path / "butler"))
    try:
        theirs = _butler_answers(butler, f"{INST}/calib")
        assert len(butler.query_datasets("bias", collections="*", find_first=False)) == 3 * len(DETECTORS) - 1
        # defects cross as FITS tables in the stack's layout (the Defects formatter reads FITS only)
        d0 = butler.find_dataset("defects", {"instrument": INST, "detector": 4}, collections=[f"{INST}/calib/new"],
                                 timespan=BTimespan(None, None))
        path = butler.getURI(d0).ospath
        assert path.endswith(".fits") and read_defects(path)[0] == [(4, 3, 2, 3)]
        assert list(butler.collections.get_info(f"{INST}/calib").children) == [
            f"{INST}/calib/new", f"{INST}/calib/mid", f"{INST}/calib/old"]
    finally:
        butler.close()
    assert made == 3 * (4 * len(DETECTORS) + len(DETECTORS) * len(FILTERS)) - 1
    assert len(mine) == len(theirs) == (4 * len(DETECTORS) + len(DETECTORS) * len(FILTERS)) * len(DATES)
    found = sum(v is not None for v in mine.values())
    assert 0 < found < len(mine)  # both hits and misses were asked
    assert mine == theirs


def _fill_butler(butler: Butler, tmp: Path) -> None:
    """The same calibrations as _fill_cpframe, made with the butler's own API."""
    import astropy.time

    cam = load_camera(INST)
    reg = butler.registry
    reg.insertDimensionData("instrument", {"name": INST, "visit_max": 7050123199999, "visit_system": 2,
                                           "exposure_max": 7050123199999, "detector_max": 1000,
                                           "class_name": "lsst.obs.lsst.LsstComCam"})
    reg.insertDimensionData("detector", *[{"instrument": INST, "id": d.id, "full_name": d.name,
                                           "name_in_raft": d.name_in_raft, "raft": d.raft, "purpose": d.purpose}
                                          for d in cam.detectors])
    reg.insertDimensionData("physical_filter", *[{"instrument": INST, "name": f, "band": cam.band_of(f)}
                                                 for f in FILTERS])
    formatter = {"ExposureF": "lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter",
                 "Defects": "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter",
                 "PhotonTransferCurveDataset": "lsst.obs.base.formatters.fitsGeneric.FitsGenericFormatter"}
    storage = {"bias": "ExposureF", "dark": "ExposureF", "flat": "ExposureF", "defects": "Defects",
               "ptc": "PhotonTransferCurveDataset"}
    dtypes = {}
    for name, sc in storage.items():
        dims = ("instrument", "detector", "physical_filter") if name == "flat" else ("instrument", "detector")
        dtypes[name] = DatasetType(name, dims, sc, universe=butler.dimensions, isCalibration=True)
        reg.registerDatasetType(dtypes[name])
    for label, (b, e) in RANGES.items():
        run = f"{INST}/calib/{label}/run"
        reg.registerRun(run)
        files, refs = [], []
        for name in storage:
            for did in _data_ids(name):
                if label == "new" and name == "bias" and did["detector"] == 8:
                    continue
                ref = DatasetRef(dtypes[name], did, run=run)
                p = tmp / f"b_{label}_{name}_{did['detector']}_{did.get('physical_filter', '')}.fits"
                p.write_bytes(f"{label} {name} {did}".encode())
                files.append(FileDataset(str(p), [ref], formatter=formatter[storage[name]]))
                refs.append(ref)
        butler.ingest(*files, transfer="copy")
        coll = f"{INST}/calib/{label}"
        reg.registerCollection(coll, BCT.CALIBRATION)
        span = BTimespan(None if b is None else astropy.time.Time(b, scale="tai"),
                         None if e is None else astropy.time.Time(e, scale="tai"))
        reg.certify(coll, refs, span)
    # an afw-only product cpframe does not read: skipped on import, named in the CLI summary
    cam_type = DatasetType("camera", ("instrument",), "Camera", universe=butler.dimensions, isCalibration=True)
    reg.registerDatasetType(cam_type)
    reg.registerRun(f"{INST}/calib/camera/run")
    cam_ref = DatasetRef(cam_type, {"instrument": INST}, run=f"{INST}/calib/camera/run")
    (tmp / "camera.fits").write_bytes(b"camera")
    butler.ingest(FileDataset(str(tmp / "camera.fits"), [cam_ref], formatter=formatter["Defects"]), transfer="copy")
    reg.registerCollection(f"{INST}/calib/camera", BCT.CALIBRATION)
    reg.certify(f"{INST}/calib/camera", [cam_ref], BTimespan(None, None))
    reg.registerCollection(f"{INST}/calib", BCT.CHAINED)
    reg.setCollectionChain(f"{INST}/calib", [f"{INST}/calib/new", f"{INST}/calib/mid", f"{INST}/calib/old",
                                             f"{INST}/calib/camera"])


def test_butler_export_calibs_into_cpframe(tmp_path, stub_path):
    Butler.makeRepo(str(tmp_path / "butler"))
    butler = Butler.from_config(str(tmp_path / "butler"), writeable=True)
    try:
        _fill_butler(butler, tmp_path)
        theirs = _butler_answers(butler, f"{INST}/calib")
    finally:
        butler.close()
    _butler_cli(stub_path, "export-calibs", str(tmp_path / "butler"), str(tmp_path / "exp"), f"{INST}/calib")
    text = (tmp_path / "exp" / "export.yaml").read_text()
    assert "!butler_time/tai/iso" in text and "!uuid" in text  # the real tags, read as they are
    Repository.create(tmp_path / "cp").close()
    from click.testing import CliRunner

    from cpframe.cli import main

    out = CliRunner().invoke(main, ["import", str(tmp_path / "cp"), str(tmp_path / "exp")])
    assert out.exit_code == 0, out.output
    assert f"Imported {3 * (4 * len(DETECTORS) + len(DETECTORS) * len(FILTERS)) - 1} dataset(s)" in out.output
    assert "Not imported (storage classes cpframe does not read; docs/butler.md): camera (Camera)." in out.output
    with Repository.open(tmp_path / "cp") as repo:
        assert list(repo.registry.get_chain(f"{INST}/calib")) == [f"{INST}/calib/new", f"{INST}/calib/mid",
                                                                  f"{INST}/calib/old", f"{INST}/calib/camera"]
        mine = _cpframe_answers(repo, f"{INST}/calib")
        # the imported instrument is the whole camera (all detectors, cpframe's serials)
        dets = repo.registry.query_dimension_records("detector", instrument=INST)
        assert len(dets) == len(load_camera(INST).detectors)
    assert len(mine) == len(theirs) and 0 < sum(v is not None for v in mine.values()) < len(mine)
    assert mine == theirs


def test_butler_export_with_exposures_day_obs_and_group(tmp_path, stub_path):
    """An export carrying exposure, day_obs and group records (``butler export`` of raws) imports;
    a record missing a field is refused with the field named."""
    import astropy.time

    Butler.makeRepo(str(tmp_path / "butler"))
    butler = Butler.from_config(str(tmp_path / "butler"), writeable=True)
    try:
        reg = butler.registry
        cam = load_camera(INST)
        reg.insertDimensionData("instrument", {"name": INST, "visit_max": 7050123199999, "visit_system": 2,
                                               "exposure_max": 7050123199999, "detector_max": 1000,
                                               "class_name": "lsst.obs.lsst.LsstComCam"})
        reg.insertDimensionData("detector", {"instrument": INST, "id": 4, "full_name": "R22_S11",
                                             "name_in_raft": "S11", "raft": "R22", "purpose": "SCIENCE"})
        reg.insertDimensionData("physical_filter", {"instrument": INST, "name": "r_03", "band": "r"})
        t0 = astropy.time.Time("2024-11-11T01:00:00", scale="tai")
        reg.insertDimensionData("day_obs", {"instrument": INST, "id": 20241110, "timespan": BTimespan(
            astropy.time.Time("2024-11-10T12:00:00", scale="tai"), astropy.time.Time("2024-11-11T12:00:00", scale="tai"))})
        reg.insertDimensionData("group", {"instrument": INST, "name": "2024-11-11T01:00:00.000"})
        reg.insertDimensionData("exposure", dict(
            instrument=INST, id=2024111000001, day_obs=20241110, group="2024-11-11T01:00:00.000",
            physical_filter="r_03", obs_id="CC_O_20241110_000001", exposure_time=30.0, dark_time=30.5,
            observation_type="science", observation_reason="science", seq_num=1, seq_start=1, seq_end=1,
            target_name="field", science_program="BLOCK-1", tracking_ra=None, tracking_dec=None, sky_angle=None,
            azimuth=None, zenith_angle=None, has_simulated=False, can_see_sky=True,
            timespan=BTimespan(t0, t0 + astropy.time.TimeDelta(30.5, format="sec"))))
        raw = DatasetType("raw", ("instrument", "detector", "exposure"), "Exposure", universe=butler.dimensions)
        reg.registerDatasetType(raw)
        reg.registerRun(f"{INST}/raw/all")
        ref = DatasetRef(raw, {"instrument": INST, "detector": 4, "exposure": 2024111000001}, run=f"{INST}/raw/all")
        (tmp_path / "r.fits").write_bytes(b"raw")
        butler.ingest(FileDataset(str(tmp_path / "r.fits"), [ref],
                                  formatter="lsst.obs.base.formatters.fitsExposure.FitsExposureFormatter"),
                      transfer="copy")
        (tmp_path / "exp").mkdir()
        with butler.export(filename=str(tmp_path / "exp" / "export.yaml"), directory=str(tmp_path / "exp"),
                           transfer="copy") as e:
            e.saveDatasets(butler.query_datasets("raw", collections=f"{INST}/raw/all"))
    finally:
        butler.close()
    text = (tmp_path / "exp" / "export.yaml").read_text()
    assert "element: day_obs" in text and "element: group" in text and "element: exposure" in text
    with Repository.create(tmp_path / "cp") as repo:
        import_export(repo, tmp_path / "exp")
        (rec,) = repo.registry.query_dimension_records("exposure", instrument=INST)
        assert (rec["id"], rec["day_obs"], rec["seq_num"], rec["obs_id"]) == (
            2024111000001, 20241110, 1, "CC_O_20241110_000001")
        assert rec["timespan"] == Timespan(parse_tai("2024-11-11T01:00:00"), parse_tai("2024-11-11T01:00:30.5"))
        (got,) = repo.registry.query_datasets("raw", [f"{INST}/raw/all"])
        assert got.id == str(ref.id)
    # a record without a field the butler requires: named, nothing imported
    doc = text.replace("    obs_id: CC_O_20241110_000001\n", "")
    (tmp_path / "exp" / "broken.yaml").write_text(doc)
    with Repository.create(tmp_path / "cp2") as repo:
        with pytest.raises(ExportError, match=r"exposure record 2024111000001 is missing field\(s\) obs_id"):
            import_export(repo, tmp_path / "exp", tmp_path / "exp" / "broken.yaml")
        assert repo.registry.query_dimension_records("exposure", instrument=INST) == []
