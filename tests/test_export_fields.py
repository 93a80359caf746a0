"""An export file whose dimension records lack a field or carry an unknown one is refused with
the record and the field named (it used to surface as a concurrency message), nothing imported."""

from __future__ import annotations

import pytest
import yaml

from cpframe.core.errors import ExportError
from cpframe.core.model import CollectionType, Timespan
from cpframe.repository.repo import Repository
from cpframe.repository.transfer import export_calibs, import_export


def test_missing_and_extra_fields_are_named(tmp_path):
    with Repository.create(tmp_path / "a") as repo:
        repo.register_instrument("LSSTComCam")
        repo.registry.register_collection("run", CollectionType.RUN)
        (tmp_path / "b.fits").write_bytes(b"bias")
        refs = repo.put_files([(tmp_path / "b.fits", "bias", {"instrument": "LSSTComCam", "detector": 4})], "run")
        repo.registry.certify("LSSTComCam/calib/x", refs, Timespan(0, None))
        path = export_calibs(repo, tmp_path / "exp", ["LSSTComCam/calib/x"])
    doc = yaml.safe_load(path.read_text())
    dets = doc["dimensions"]["detector"]
    del dets[0]["full_name"]
    dets[1]["colour"] = "blue"
    path.write_text(yaml.safe_dump(doc))
    with Repository.create(tmp_path / "b") as repo:
        with pytest.raises(ExportError) as err:
            import_export(repo, tmp_path / "exp")
        msg = str(err.value)
        assert "detector record (instrument=LSSTComCam, id=0) has no full_name" in msg
        assert "detector record (instrument=LSSTComCam, id=1) has unknown field(s) colour" in msg
        assert "another process" not in msg
        assert repo.registry.query_dimension_records("detector", instrument="LSSTComCam") == []
        assert repo.registry.query_datasets("bias", ["*"]) == []
