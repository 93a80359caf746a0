"""Registry + datastore contract tests, written once against the public API.

``tests/test_registry_sqlite.py`` and ``tests/test_registry_postgres.py`` import every
test from here and provide the ``backend`` fixture ("sqlite" or "postgres").  The
``repo`` fixture builds a fresh Repository on that backend with LSSTComCam (mini)
registered.  Expected answers come from the spec's rules evaluated by small
reference functions in plain Python (``reference_find``) or from hashlib, never
from the code under test.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import yaml

from cpframe.core.errors import (
    AmbiguousCalibrationError,
    BadDateError,
    ChainCycleError,
    ChecksumError,
    CollectionNameError,
    CollectionTypeError,
    ConflictingDefinitionError,
    DatasetConflictError,
    ExportError,
    MissingDatasetError,
    RegistryError,
    SelectionError,
    UnknownCollectionError,
    UnknownDatasetTypeError,
    UserInputError,
    ValidityOverlapError,
)
from cpframe.camera.models import load_camera
from cpframe.core.model import CollectionType, DataId, DatasetType, Timespan, exposure_id, parse_tai
from cpframe.repository.transfer import export_calibs, import_export

INST = "LSSTComCam"
RUN, CAL, CHAIN = CollectionType.RUN, CollectionType.CALIBRATION, CollectionType.CHAINED


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def repo(backend, repo_factory):
    r = repo_factory(backend)
    r.register_instrument(INST, "mini")
    return r


def files(tmp: Path, n: int, tag: str) -> list[Path]:
    """``n`` small files with distinct contents."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = tmp / f"{tag}_{i}.fits"
        p.write_bytes(f"{tag} file {i}\n".encode() * (i + 1))
        out.append(p)
    return out


def put_bias(repo, run: str, detectors, tmp: Path, dataset_type: str = "bias"):
    repo.registry.register_collection(run, RUN)
    srcs = files(tmp / run.replace("/", "_"), len(detectors), dataset_type)
    return repo.put_files([(p, dataset_type, {"instrument": INST, "detector": d})
                           for p, d in zip(srcs, detectors)], run, transfer="copy")


def span(begin: str | None, end: str | None) -> Timespan:
    return Timespan(parse_tai(begin) if begin else None, parse_tai(end) if end else None)


def add_exposure(repo, day_obs: int, seq: int, begin: str, end: str, obs_type: str = "bias") -> int:
    eid = exposure_id(day_obs, seq)
    repo.registry.insert_exposures([{
        "instrument": INST, "id": eid, "obs_id": f"CC_O_{day_obs}_{seq:06d}", "day_obs": day_obs, "seq_num": seq,
        "physical_filter": load_camera(INST).filters[0][0], "observation_type": obs_type,
        "observation_reason": obs_type, "science_program": "BLOCK-1", "exposure_time": 0.0, "dark_time": 0.0,
        "timespan": span(begin, end)}])
    return eid


def reference_find(repo, dataset_type, data_id, collections, ts):
    """Spec §4 evaluated naively, one data ID at a time, from listing calls only."""
    want = DataId({k: data_id[k] for k in repo.registry.get_dataset_type(dataset_type).dimensions})
    for coll in repo.registry.flatten(collections):
        ctype = repo.registry.get_collection_type(coll)
        if ctype == CAL:
            if ts is None:
                continue
            hits = []
            for ref in repo.registry.query_certifications(coll, dataset_type):
                v = ref.extra["timespan"]
                b1 = v.begin_ns if v.begin_ns is not None else -(2**63)
                e1 = v.end_ns if v.end_ns is not None else 2**63
                b2 = ts.begin_ns if ts.begin_ns is not None else -(2**63)
                e2 = ts.end_ns if ts.end_ns is not None else 2**63
                if ref.data_id == want and b1 < e2 and b2 < e1:
                    hits.append(ref)
            if len(hits) > 1:
                return "ambiguous"
            if hits:
                return hits[0].id
        else:
            for ref in repo.registry.query_datasets(dataset_type, [coll]):
                if ref.data_id == want:
                    return ref.id
    return None


def sha(p: Path) -> str:
    return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()


# -- repository, dimensions, dataset types -----------------------------------------------------------
def test_create_registers_default_types_and_reopens(repo):
    names = {t.name for t in repo.registry.query_dataset_types()}
    assert {"raw", "bias", "dark", "flat", "defects", "ptc", "biasBootstrap", "flatBootstrap"} <= names
    flat = repo.registry.get_dataset_type("flat")
    assert flat.dimensions == ("instrument", "detector", "physical_filter") and flat.is_calibration
    assert not repo.registry.get_dataset_type("raw").is_calibration
    cfg = yaml.safe_load((repo.root / "cpframe-repo.yaml").read_text())
    assert cfg["schema_version"] == repo.registry.SCHEMA_VERSION
    from cpframe.repository.repo import Repository

    with Repository.open(repo.root) as again:
        assert {t.name for t in again.registry.query_dataset_types()} == names
    with pytest.raises(RegistryError, match="already holds a cpframe repository"):
        Repository.create(repo.root)


def test_dataset_type_conflict_and_unknown(repo):
    assert repo.registry.register_dataset_type(DatasetType("bias", ("instrument", "detector"), True, "fits-masked")) is False
    with pytest.raises(ConflictingDefinitionError, match="bias"):
        repo.registry.register_dataset_type(DatasetType("bias", ("instrument", "detector", "exposure"), True, "fits-masked"))
    with pytest.raises(UnknownDatasetTypeError, match="nosuch"):
        repo.registry.get_dataset_type("nosuch")
    with pytest.raises(UserInputError, match="band"):
        repo.registry.register_dataset_type(DatasetType("odd", ("instrument", "band"), False, "json"))


def test_register_instrument_identical_and_conflicting(repo):
    cam = load_camera(INST, "mini")
    assert repo.registry.register_instrument(cam) is False
    recs = repo.registry.query_dimension_records("detector", instrument=INST)
    assert sorted(r["id"] for r in recs) == list(cam.detector_ids)
    assert {r["full_name"] for r in recs} == {d.name for d in cam.detectors}
    from dataclasses import replace

    bad = replace(cam, detectors=(replace(cam.detectors[0], serial="OTHER-1"),) + cam.detectors[1:])
    with pytest.raises(ConflictingDefinitionError, match="detector 0"):
        repo.registry.register_instrument(bad)


def test_insert_exposures_skip_identical_and_conflict(repo):
    eid = add_exposure(repo, 20241110, 44, "2024-11-10T12:00:00", "2024-11-10T12:00:30")
    assert eid == 2024111000044
    rec = repo.registry.query_dimension_records("exposure", f"instrument='{INST}' and exposure={eid}")[0]
    assert rec["timespan"] == span("2024-11-10T12:00:00", "2024-11-10T12:00:30") and rec["seq_num"] == 44
    rec2 = {k: rec[k] for k in ("instrument", "id", "obs_id", "day_obs", "seq_num", "physical_filter",
                                "observation_type", "observation_reason", "science_program", "exposure_time",
                                "dark_time", "timespan")}
    assert repo.registry.insert_exposures([rec2]) == (0, 1)
    with pytest.raises(ConflictingDefinitionError, match="2024111000044"):
        repo.registry.insert_exposures([{**rec2, "exposure_time": 5.0}])
    with pytest.raises(RegistryError, match="unknown physical filter.*nofilter"):
        repo.registry.insert_exposures([{**rec2, "id": eid + 1, "seq_num": 45, "physical_filter": "nofilter"}])


# -- collections -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,word", [
    ("a,b", "','"), ("calib/*", "'\\*'"), ("cal ib", "whitespace"), ("a/../b", "'..'"), ("/abs", "starts with '/'"),
    ("", "empty"), ("x?y", "'\\?'"),
])
def test_collection_name_rules(repo, bad, word):
    with pytest.raises(CollectionNameError, match=word):
        repo.registry.register_collection(bad, RUN)
    assert repo.registry.query_collections() == []


def test_collection_reregister_other_type_is_error(repo):
    assert repo.registry.register_collection("LSSTComCam/calib/DM-1/biasGen.20250207a", RUN) is True
    assert repo.registry.register_collection("LSSTComCam/calib/DM-1/biasGen.20250207a", RUN) is False
    with pytest.raises(CollectionTypeError, match="exists as RUN"):
        repo.registry.register_collection("LSSTComCam/calib/DM-1/biasGen.20250207a", CAL)
    with pytest.raises(UnknownCollectionError, match="nosuch"):
        repo.registry.get_collection_type("nosuch")


# -- datastore ---------------------------------------------------------------------------------------
def test_put_files_layout_checksum_and_get_path(repo, tmp_path):
    repo.registry.register_collection("r1", RUN)
    srcs = files(tmp_path / "in", 3, "b")
    digests = [sha(p) for p in srcs]
    refs = repo.put_files([(p, "bias", {"instrument": INST, "detector": d, "exposure": 99})
                           for d, p in enumerate(srcs)], "r1")
    for d, (ref, digest) in enumerate(zip(refs, digests)):
        assert ref.path == f"r1/bias/bias_{INST}_{d}.fits"
        assert ref.data_id == DataId(instrument=INST, detector=d)  # extra keys dropped
        p = repo.get_path(ref)
        assert p.is_absolute() and p.is_file() and ref.checksum == digest == sha(p)
    assert not any(p.exists() for p in srcs)  # default transfer is move
    assert not list((repo.datastore_root / "r1").rglob(".*.tmp"))
    assert repo.registry.pending_files() == []
    got = repo.registry.get_dataset(refs[1].id)
    assert got.path == refs[1].path and got.checksum == refs[1].checksum and got.run == "r1"


def test_put_into_missing_or_non_run_collection(repo, tmp_path):
    src = files(tmp_path, 1, "x")[0]
    with pytest.raises(UnknownCollectionError, match="norun"):
        repo.put_file(src, "bias", {"instrument": INST, "detector": 0}, "norun")
    repo.registry.register_collection("cal", CAL)
    with pytest.raises(CollectionTypeError, match="RUN"):
        repo.put_file(src, "bias", {"instrument": INST, "detector": 0}, "cal")
    assert src.exists()


def test_duplicate_dataset_lists_each_conflict_and_puts_nothing(repo, tmp_path):
    put_bias(repo, "r1", [0, 1, 2], tmp_path)
    srcs = files(tmp_path / "again", 4, "b")
    with pytest.raises(DatasetConflictError, match=r"detector=1 in RUN r1.*detector=2 in RUN r1"):
        repo.put_files([(p, "bias", {"instrument": INST, "detector": d}) for p, d in zip(srcs, [1, 2, 3, 4])], "r1")
    assert all(p.exists() for p in srcs)  # nothing moved
    assert sorted(r.data_id["detector"] for r in repo.registry.query_datasets("bias", ["r1"])) == [0, 1, 2]
    assert not (repo.datastore_root / "r1/bias/bias_LSSTComCam_3.fits").exists()


def test_unknown_dimension_values_rejected(repo, tmp_path):
    repo.registry.register_collection("r1", RUN)
    src = files(tmp_path, 1, "x")[0]
    with pytest.raises(RegistryError, match="no detector 42"):
        repo.put_file(src, "bias", {"instrument": INST, "detector": 42}, "r1", transfer="copy")
    with pytest.raises(UserInputError, match="lacks detector"):
        repo.put_file(src, "bias", {"instrument": INST}, "r1", transfer="copy")
    assert repo.registry.query_datasets("bias", ["r1"]) == [] and repo.registry.pending_files() == []
    assert not list(repo.datastore_root.glob("r1/**/*.fits"))


@pytest.mark.parametrize("transfer", ["copy", "move", "link", "symlink", "direct"])
def test_ingest_transfer_modes(repo, tmp_path, transfer):
    repo.registry.register_collection("r1", RUN)
    src = files(tmp_path / "in", 1, "raw")[0]
    digest = sha(src)
    ref = repo.ingest_files([(src, "bias", {"instrument": INST, "detector": 0})], "r1", transfer=transfer,
                            checksum=True)[0]
    p = repo.get_path(ref)
    assert ref.checksum == digest and sha(p) == digest
    # without checksum (the raw-ingest default) nothing is hashed, the file is the same
    src2 = files(tmp_path / "in2", 1, "raw")[0]
    digest2 = sha(src2)
    ref2 = repo.ingest_files([(src2, "bias", {"instrument": INST, "detector": 1})], "r1", transfer=transfer)[0]
    assert ref2.checksum is None and sha(repo.get_path(ref2)) == digest2
    if transfer == "direct":
        assert Path(ref.path) == src.resolve()
    else:
        assert ref.path == f"r1/bias/bias_{INST}_0.fits"
    assert src.exists() == (transfer != "move")
    assert p.is_symlink() == (transfer == "symlink")
    if transfer == "link":
        assert p.stat().st_ino == src.stat().st_ino
    repo.remove_runs(["r1"])
    assert src.exists() == (transfer != "move")  # direct/symlinked sources are never deleted


# -- certification -----------------------------------------------------------------------------------
def test_certify_unbounded_since_1970_and_lookup(repo, tmp_path):
    refs = put_bias(repo, "r1", range(9), tmp_path)
    got = repo.certify_calibrations("r1", "cal", "bias", begin_date="1970-01-01T00:00:00")
    assert sorted(r.id for r in got) == sorted(r.id for r in refs)
    links = repo.registry.query_certifications("cal", "bias")
    assert len(links) == 9 and all(x.extra["timespan"] == Timespan(None, None) for x in links)
    eid = add_exposure(repo, 19000101, 1, "1900-01-01T00:00:00", "1900-01-01T00:00:01")
    found = repo.registry.find_calibration("bias", {"instrument": INST, "detector": 4}, ["cal"], eid)
    assert found.id == refs[4].id and found.extra["timespan"] == Timespan()


@pytest.mark.parametrize("begin,end,word", [
    ("2024-01-01T00:00:00Z", None, "time-zone suffix"), ("2024-01-01T00:00:00+00:00", None, "time-zone suffix"),
    ("20240101", None, "not a date"), ("2024-02-01", "2024-01-01", "after it ends"),
])
def test_certify_bad_dates_create_nothing(repo, tmp_path, begin, end, word):
    put_bias(repo, "r1", [0], tmp_path)
    with pytest.raises(BadDateError, match=word):
        repo.certify_calibrations("r1", "cal", "bias", begin_date=begin, end_date=end)
    assert [c.name for c in repo.registry.query_collections()] == ["r1"]


def test_certify_overlap_is_atomic_even_identical_range(repo, tmp_path):
    put_bias(repo, "r1", [4], tmp_path)
    repo.certify_calibrations("r1", "cal", "bias", begin_date="2024-01-01", end_date="2024-06-01")
    put_bias(repo, "r2", range(9), tmp_path)
    with pytest.raises(ValidityOverlapError, match=r"detector=4.*2024-01-01"):
        repo.certify_calibrations("r2", "cal", "bias", begin_date="2024-03-01")
    with pytest.raises(ValidityOverlapError, match="overlapping"):
        repo.certify_calibrations("r1", "cal", "bias", begin_date="2024-01-01", end_date="2024-06-01")
    assert len(repo.registry.query_certifications("cal")) == 1  # one conflicting detector blocked all nine
    repo.certify_calibrations("r2", "cal", "bias", begin_date="2024-06-01")  # adjacent [a,b) [b,c) is fine
    assert len(repo.registry.query_certifications("cal")) == 10


def test_certify_chained_input_uses_first_child(repo, tmp_path):
    put_bias(repo, "new", [0], tmp_path)
    old = put_bias(repo, "old", [0, 1], tmp_path)
    repo.registry.set_chain("in", ["new", "old"])
    got = repo.certify_calibrations("in", "cal1", "bias")
    assert [r.run for r in got] == ["new"]
    got = repo.certify_calibrations("in", "cal2", "bias", search_all_inputs=True)
    assert sorted((r.run, r.data_id["detector"]) for r in got) == [("new", 0), ("old", 1)]
    assert old[1].id in {r.id for r in got}
    repo.registry.register_collection("empty", RUN)
    repo.registry.set_chain("in2", ["empty", "old"])
    with pytest.raises(MissingDatasetError, match="first child 'empty'.*--search-all-inputs"):
        repo.certify_calibrations("in2", "cal3", "bias")
    assert "cal3" not in [c.name for c in repo.registry.query_collections()]


def test_certify_rejections_create_nothing(repo, tmp_path):
    put_bias(repo, "r1", [0], tmp_path)
    repo.registry.register_collection("r1raw", RUN)
    with pytest.raises(MissingDatasetError, match="no 'dark' datasets in 'r1'"):
        repo.certify_calibrations("r1", "cal", "dark")
    with pytest.raises(CollectionTypeError, match="RUN"):
        repo.certify_calibrations("r1", "r1raw", "bias")
    repo.registry.set_chain("ch", ["r1"])
    with pytest.raises(CollectionTypeError, match="CHAINED"):
        repo.certify_calibrations("r1", "ch", "bias")
    with pytest.raises(RegistryError, match="not a calibration"):
        repo.certify_calibrations("r1", "cal", "raw")
    with pytest.raises(UnknownCollectionError, match="nosuch"):
        repo.certify_calibrations("nosuch", "cal", "bias")
    assert "cal" not in [c.name for c in repo.registry.query_collections()]


def test_decertify_trims_splits_and_removes(repo, tmp_path):
    put_bias(repo, "r1", [0, 1], tmp_path)
    repo.certify_calibrations("r1", "cal", "bias", begin_date="2024-01-01", end_date="2024-12-01")
    n = repo.registry.decertify("cal", "bias", span("2024-03-01", "2024-04-01"), [{"instrument": INST, "detector": 0}])
    assert n == 1
    spans = sorted((x.data_id["detector"], x.extra["timespan"].begin_ns) for x in repo.registry.query_certifications("cal"))
    assert spans == [(0, parse_tai("2024-01-01")), (0, parse_tai("2024-04-01")), (1, parse_tai("2024-01-01"))]
    assert repo.registry.decertify("cal", "bias", Timespan()) == 3
    assert repo.registry.query_certifications("cal") == []


# -- find-first --------------------------------------------------------------------------------------
def test_find_first_spec_rules(repo, tmp_path):
    old = put_bias(repo, "old", range(3), tmp_path)
    new = put_bias(repo, "new", [0, 1], tmp_path)  # no detector 2
    reg = repo.registry
    reg.certify("cal_old", old, span("2024-01-01", None))
    reg.certify("cal_new", new, span("2024-06-01", None))
    reg.set_chain("calib", ["cal_new", "cal_old"])
    e_june = add_exposure(repo, 20240610, 1, "2024-06-10T00:00:00", "2024-06-10T00:00:30")
    e_may = add_exposure(repo, 20240510, 1, "2024-05-10T00:00:00", "2024-05-10T00:00:30")
    e_edge_end = add_exposure(repo, 20240531, 1, "2024-05-31T23:59:30", "2024-06-01T00:00:00")
    e_edge_begin = add_exposure(repo, 20240601, 1, "2024-06-01T00:00:00", "2024-06-01T00:00:30")
    did = {"instrument": INST}
    f = lambda d, e: reg.find_calibration("bias", {**did, "detector": d}, ["calib"], e)  # noqa: E731
    assert f(0, e_june).id == new[0].id and f(0, e_june).extra["collection"] == "cal_new"
    assert f(2, e_june).id == old[2].id  # per data ID fall-through
    assert f(0, e_may).id == old[0].id
    assert f(0, e_edge_end).id == old[0].id  # ends exactly at begin: no match in cal_new
    assert f(0, e_edge_begin).id == new[0].id  # starts exactly at begin: match
    # first child wins even though the later one is newer
    reg.set_chain("calib", ["cal_old", "cal_new"])
    assert f(0, e_june).id == old[0].id
    # ambiguity inside one CALIBRATION collection
    extra = put_bias(repo, "extra", [1], tmp_path)
    reg.certify("cal_amb", extra, span("2024-06-10T00:00:10", "2024-07-01"))
    reg.certify("cal_amb", [new[1]], span("2024-01-01", "2024-06-10T00:00:10"))
    with pytest.raises(AmbiguousCalibrationError, match="overlaps 2 validity ranges.*cal_amb"):
        reg.find_calibration("bias", {**did, "detector": 1}, ["cal_amb", "cal_old"], e_june)
    with pytest.raises(UnknownCollectionError, match="nosuch"):
        reg.find_calibration("bias", {**did, "detector": 1}, ["nosuch"], e_june)
    with pytest.raises(MissingDatasetError, match="not registered"):
        reg.find_calibration("bias", {**did, "detector": 1}, ["calib"], 123)


def test_find_datasets_batch_matches_reference(repo, tmp_path):
    """Random repositories: the batched lookup equals the naive per-data-ID reference."""
    rnd = random.Random(20241110)
    reg = repo.registry
    exposures = []
    for day in range(1, 7):
        b = f"2024-0{day}-15T00:00:00"
        exposures.append(add_exposure(repo, 20240015 + day * 100, 1, b, f"2024-0{day}-15T00:00:30"))
    calibs = []
    for i in range(4):
        dets = sorted(rnd.sample(range(9), rnd.randint(3, 9)))
        refs = put_bias(repo, f"run{i}", dets, tmp_path)
        name = f"cal{i}"
        month = rnd.randint(1, 6)
        end = rnd.choice([None, f"2024-0{min(month + rnd.randint(1, 3), 9)}-01"])
        reg.certify(name, refs, span(f"2024-0{month}-01", end))
        if rnd.random() < 0.5:  # a second, later range for some detectors
            later = [r for r in refs if rnd.random() < 0.5]
            if later and end is not None:
                reg.certify(name, later, span(end, None))
        calibs.append(name)
    put_bias(repo, "fallback", range(9), tmp_path)
    reg.set_chain("inner", [calibs[2], calibs[3]])
    reg.set_chain("outer", [calibs[0], "inner", calibs[1], "fallback"])
    data_ids = [{"instrument": INST, "detector": d, "exposure": e} for e in exposures for d in range(9)]
    got = reg.find_calibrations("bias", data_ids, ["outer"])
    spans = reg.exposure_timespans(INST, exposures)
    for did, ref in zip(data_ids, got):
        want = reference_find(repo, "bias", did, ["outer"], spans[did["exposure"]])
        assert (ref.id if ref else None) == want, did


def test_query_datasets_find_first_and_where(repo, tmp_path):
    put_bias(repo, "a", [0, 1], tmp_path)
    b = put_bias(repo, "b", [1, 2], tmp_path)
    reg = repo.registry
    all_refs = reg.query_datasets("bias", ["a", "b"])
    assert sorted((r.run, r.data_id["detector"]) for r in all_refs) == [("a", 0), ("a", 1), ("b", 1), ("b", 2)]
    ff = reg.query_datasets("bias", ["b", "a"], find_first=True)
    assert sorted((r.run, r.data_id["detector"]) for r in ff) == [("a", 0), ("b", 1), ("b", 2)]
    sel = reg.query_datasets("bias", "*", where=f"instrument='{INST}' and detector in (2..8)")
    assert [r.id for r in sel] == [b[1].id]
    assert {r.run for r in reg.query_datasets(["bi*"], "?")} == {"a", "b"}
    assert {r.run for r in reg.query_datasets("bias", ["a*", "b*"])} == {"a", "b"}  # each pattern keeps its matches
    reg.certify("cal", b, span("2024-01-01", None))
    through_cal = reg.query_datasets("bias", ["cal"], where=f"instrument='{INST}' and detector.full_name='R22_S02'")
    assert [(r.id, r.extra["timespan"]) for r in through_cal] == [(b[1].id, span("2024-01-01", None))]
    with pytest.raises(SelectionError, match="instrument"):
        reg.query_datasets("bias", "*", where="detector = 2")
    with pytest.raises(UserInputError, match="find-first"):
        reg.query_datasets("bias", "*", find_first=True)


# -- chains --------------------------------------------------------------------------------------------
def test_collection_chain_modes(repo):
    reg = repo.registry
    for c in ["c1", "c2", "c3", "c4", "c5"]:
        reg.register_collection(c, RUN)
    assert reg.set_chain("p", ["c1", "c2", "c1", "c3"]) == ("c1", "c2", "c3")  # creates, drops duplicates
    assert reg.set_chain("p", ["c5", "c1"], mode="prepend") == ("c5", "c1", "c2", "c3")
    assert reg.set_chain("p", ["c5"], mode="extend") == ("c1", "c2", "c3", "c5")
    assert reg.set_chain("p", ["c4"], mode="remove") == ("c1", "c2", "c3", "c5")  # non-child: no-op
    assert reg.set_chain("p", mode="pop") == ("c2", "c3", "c5")
    assert reg.set_chain("p", mode="pop", pop_indices=[-1, 0]) == ("c3",)
    with pytest.raises(UserInputError, match="out of range"):
        reg.set_chain("p", mode="pop", pop_indices=[3])
    with pytest.raises(UnknownCollectionError, match="nosuch"):
        reg.set_chain("p", ["nosuch"], mode="remove")
    with pytest.raises(UnknownCollectionError, match="nochain"):
        reg.set_chain("nochain", mode="pop")
    assert reg.set_chain("q", ["c4", "p"], mode="extend") == ("c4", "p")
    assert reg.set_chain("flat", ["q", "c1"], flatten=True) == ("c4", "c3", "c1")
    with pytest.raises(UserInputError, match="--flatten"):
        reg.set_chain("flat", ["c1"], mode="remove", flatten=True)
    assert reg.get_chain("p") == ("c3",)


def test_collection_chain_errors_leave_chain_unchanged(repo):
    reg = repo.registry
    for c in ["c1", "c2"]:
        reg.register_collection(c, RUN)
    reg.set_chain("inner", ["c1"])
    reg.set_chain("outer", ["inner", "c2"])
    with pytest.raises(ChainCycleError, match="cycle"):
        reg.set_chain("inner", ["outer"], mode="extend")
    with pytest.raises(ChainCycleError, match="itself"):
        reg.set_chain("inner", ["inner"])
    with pytest.raises(UnknownCollectionError, match="ghost"):
        reg.set_chain("inner", ["c2", "ghost"])
    with pytest.raises(CollectionTypeError, match="not CHAINED"):
        reg.set_chain("c1", ["c2"])
    assert reg.get_chain("inner") == ("c1",) and reg.get_chain("outer") == ("inner", "c2")
    assert reg.flatten(["outer", "c1"]) == ["c1", "c2"]
    infos = {i.name: i for i in reg.query_collections(types=[CHAIN])}
    assert set(infos) == {"inner", "outer"} and infos["outer"].children == ("inner", "c2")
    assert reg.query_collections("outer", flatten_chains=True)[0].children == ("c1", "c2")
    assert reg.get_parent_chains("inner") == ["outer"]


# -- removal -------------------------------------------------------------------------------------------
def test_remove_runs_refuses_certified_and_chained_unless_force(repo, tmp_path):
    refs = put_bias(repo, "r1", [0, 1], tmp_path)
    put_bias(repo, "r2", [0], tmp_path)
    repo.registry.certify("cal", refs, Timespan())
    repo.registry.set_chain("ch", ["r1", "r2"])
    with pytest.raises(RegistryError, match=r"certified in CALIBRATION collection\(s\) cal.*chain\(s\) ch"):
        repo.remove_runs(["r1"])
    with pytest.raises(RegistryError, match="child of chain"):
        repo.remove_runs(["r2"])
    assert len(repo.registry.query_datasets("bias", "*")) == 3
    paths = [repo.get_path(r) for r in refs]
    plan = repo.remove_runs(["r1"], force=True)
    assert plan.datasets == {"r1": 2} and plan.certified == {"r1": ["cal"]}
    assert not any(p.exists() for p in paths) and not (repo.datastore_root / "r1").exists()
    assert repo.registry.get_chain("ch") == ("r2",)
    assert repo.registry.query_certifications("cal") == []
    with pytest.raises(MissingDatasetError):
        repo.registry.get_dataset(refs[0].id)
    assert repo.registry.pending_files() == []
    with pytest.raises(CollectionTypeError, match="remove-collections"):
        repo.remove_runs(["cal"])


def test_remove_collections_chain_child_needs_flag(repo, tmp_path):
    refs = put_bias(repo, "r1", [0], tmp_path)
    repo.registry.certify("cal", refs, Timespan())
    repo.registry.set_chain("ch", ["cal", "r1"])
    with pytest.raises(RegistryError, match="--remove-from-parents"):
        repo.remove_collections(["cal"])
    with pytest.raises(CollectionTypeError, match="remove-runs"):
        repo.remove_collections(["r1"])
    repo.remove_collections(["cal"], remove_from_parents=True)
    assert repo.registry.get_chain("ch") == ("r1",)
    assert repo.registry.get_dataset(refs[0].id).id == refs[0].id  # datasets stay


# -- artifacts, export, import -------------------------------------------------------------------------
def test_retrieve_artifacts(repo, tmp_path):
    put_bias(repo, "a", [0, 1], tmp_path)
    b = put_bias(repo, "b", [1], tmp_path)
    dest = tmp_path / "out"
    got = repo.retrieve_artifacts(dest, ["bias"], ["b", "a"], find_first=True)
    assert sorted(p.relative_to(dest).as_posix() for p in got) == [
        f"a/bias/bias_{INST}_0.fits", f"b/bias/bias_{INST}_1.fits"]
    assert sha(dest / f"b/bias/bias_{INST}_1.fits") == b[0].checksum
    from cpframe.core.errors import DatastoreError

    with pytest.raises(DatastoreError, match="--clobber"):
        repo.retrieve_artifacts(dest, ["bias"], ["a"])
    flat = repo.retrieve_artifacts(tmp_path / "flat", None, "*", where=f"instrument='{INST}' and detector=0",
                                   preserve_path=False)
    assert [p.name for p in flat] == [f"bias_{INST}_0.fits"]


def _calib_repo(repo, tmp_path):
    reg = repo.registry
    old = put_bias(repo, "T/bias/old", range(9), tmp_path)
    new = put_bias(repo, "T/bias/new", range(4), tmp_path)
    dfx = put_bias(repo, "T/defects", range(9), tmp_path, "defects")
    reg.certify("T/calib/old", old + dfx, span("2024-01-01", None))
    reg.certify("T/calib/new", new, span("2024-06-01", None))
    reg.certify("T/calib/new", [old[5]], span("2023-01-01", "2024-01-01"))
    reg.set_chain("T/calib/ticket", ["T/calib/new", "T/calib/old"])
    reg.set_chain("T/calib", ["T/calib/ticket", "T/defects"])
    return old, new


def test_export_import_round_trip_identical_lookups(repo, repo_factory, backend, tmp_path):
    _calib_repo(repo, tmp_path)
    exps = [add_exposure(repo, d, 1, b, e) for d, b, e in [
        (20230601, "2023-06-01T00:00:00", "2023-06-01T00:00:30"),
        (20240301, "2024-03-01T00:00:00", "2024-03-01T00:00:30"),
        (20240701, "2024-07-01T00:00:00", "2024-07-01T00:00:30")]]
    out = tmp_path / "export"
    path = export_calibs(repo, out, ["T/calib"])
    doc = yaml.safe_load(path.read_text())
    assert {c["name"] for c in doc["collections"]} >= {"T/calib", "T/calib/ticket", "T/calib/new", "T/bias/old"}
    with pytest.raises(ExportError, match="already exists"):
        export_calibs(repo, out, ["T/calib"])
    target = repo_factory(backend, "target")
    counts = import_export(target, out, skip_dimensions=())
    assert counts["datasets"] == 9 + 4 + 9 and counts["links"] == 9 + 9 + 4 + 1
    # records come from the export; exposures registered separately for the lookups
    for eid in exps:
        rec = repo.registry.query_dimension_records("exposure", f"instrument='{INST}' and exposure={eid}")[0]
        target.registry.insert_exposures([{k: rec[k] for k in (
            "instrument", "id", "obs_id", "day_obs", "seq_num", "physical_filter", "observation_type",
            "observation_reason", "science_program", "exposure_time", "dark_time", "timespan")}])
    assert target.registry.get_chain("T/calib") == ("T/calib/ticket", "T/defects")
    for t in ("bias", "defects"):
        ids = [{"instrument": INST, "detector": d, "exposure": e} for e in exps for d in range(9)]
        a = [r.id if r else None for r in repo.registry.find_calibrations(t, ids, ["T/calib"])]
        b = [r.id if r else None for r in target.registry.find_calibrations(t, ids, ["T/calib"])]
        assert a == b and any(a)
    for ref in target.registry.query_datasets(None, "*"):
        assert sha(target.get_path(ref)) == ref.checksum


def test_import_rejects_escaping_paths_and_bad_checksums(repo, repo_factory, backend, tmp_path):
    _calib_repo(repo, tmp_path)
    out = tmp_path / "export"
    path = export_calibs(repo, out, ["T/calib"])
    target = repo_factory(backend, "target")
    doc = yaml.safe_load(path.read_text())
    rec = doc["datasets"][0]["records"][0]
    good = rec["path"]
    for bad, word in [("../outside.fits", "'..'"), ("/etc/passwd", "absolute")]:
        rec["path"] = bad
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(ExportError, match=word):
            import_export(target, out)
    rec["path"] = good
    path.write_text(yaml.safe_dump(doc))
    (out / good).write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="do not match"):
        import_export(target, out)
    assert target.registry.query_collections() == []
    assert target.registry.query_dimension_records("instrument") == []
    assert not [p for p in target.datastore_root.rglob("*.fits")]


def test_export_adds_checksums_missing_since_ingest(repo, tmp_path):
    # ingest records no checksum by default; export computes it so import can verify the file
    repo.registry.register_collection("r1", RUN)
    src = files(tmp_path / "in", 1, "raw")[0]
    digest = sha(src)
    ref = repo.ingest_files([(src, "bias", {"instrument": INST, "detector": 0})], "r1", transfer="copy")[0]
    assert ref.checksum is None
    repo.registry.certify("cal", [ref], Timespan())
    doc = yaml.safe_load(export_calibs(repo, tmp_path / "export", ["cal"]).read_text())
    recs = [r for d in doc["datasets"] for r in d["records"]]
    assert [r["checksum"] for r in recs] == [digest]
