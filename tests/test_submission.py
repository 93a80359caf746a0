"""Submission validation (plain dict -> Submission) and the collection-name rule."""

from __future__ import annotations

import dataclasses

import pytest

from cpframe.core.errors import CollectionNameError, SubmissionError
from cpframe.execution.pipeline import load_pipeline
from cpframe.repository.names import collection_name_problem, validate_collection_name
from cpframe.execution.submission import ClusterSpec, check_against_pipeline, validate_submission


def good(**over) -> dict:
    cfg = {
        "pipelineYaml": "/p/cpBias.yaml",
        "project": "DM-1",
        "operator": "op",
        "timestamp": "20250207T181512Z",
        "payload": {
            "payloadName": "LSSTComCam_DM-1_bias",
            "butlerConfig": "/repo",
            "inCollection": "LSSTComCam/calib/DM-1,LSSTComCam/raw/all,",
            "dataQuery": "instrument='LSSTComCam'",
            "output": "LSSTComCam/calib/DM-1/t/biasGen.20250207a",
            "outputRun": "LSSTComCam/calib/DM-1/t/biasGen.20250207a/20250207T181512Z",
        },
        "cluster": {"byExp": {"pipetasks": "cpBiasIsr", "dimensions": "exposure"}},
    }
    for k, v in over.items():
        if k.startswith("payload_"):
            cfg["payload"][k[8:]] = v
        else:
            cfg[k] = v
    return cfg


def test_valid_submission_and_defaults():
    s = validate_submission(good())
    assert s.in_collections == ("LSSTComCam/calib/DM-1", "LSSTComCam/raw/all")  # empty item dropped
    assert s.output_run.endswith("/20250207T181512Z")
    assert s.request_memory_mib == 2048 and s.request_cpus == 1
    assert s.number_of_retries is None and s.compute_site is None
    assert s.clusters == (ClusterSpec("byExp", ("cpBiasIsr",), ("exposure",)),)
    assert s.cluster_for("cpBiasIsr").label == "byExp" and s.cluster_for("cpBiasCombine") is None
    assert dataclasses.is_dataclass(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.output = "x"  # type: ignore[misc]


def test_types_and_units():
    s = validate_submission(good(requestMemory="4 GiB", requestCpus=2, numberOfRetries=0, computeSite="slurm",
                                 site={"slurm": {"siteFile": "cluster/mysite.yaml"}},
                                 pipetask={"cpBiasIsr": {"requestMemory": 1024}}))
    assert s.request_memory_mib == 4096 and s.request_cpus == 2 and s.number_of_retries == 0
    assert s.compute_site == "slurm" and s.site_file == "cluster/mysite.yaml"
    assert s.pipetasks[0].request_memory_mib == 1024
    assert validate_submission(good(requestMemory="3000")).request_memory_mib == 3000
    s = validate_submission(good(payload_inCollection=["a/b", "c"]))
    assert s.in_collections == ("a/b", "c")


def test_every_problem_reported_at_once():
    cfg = good(requestMemory="lots", requestCpus=0, numberOfRetries=-1, computeSite="aws",
               cluster={"c": {"pipetasks": "", "dimensions": "exposure,galaxy"}})
    del cfg["pipelineYaml"]
    del cfg["payload"]["dataQuery"]
    cfg["payload"]["butlerConfig"] = ""
    with pytest.raises(SubmissionError) as ei:
        validate_submission(cfg, "templates/x.yaml")
    msg = str(ei.value)
    assert msg.startswith("templates/x.yaml: the submission has 9 problems:")
    for words in ("pipelineYaml is missing", "payload.dataQuery is missing", "payload.butlerConfig is missing",
                  "requestMemory must be MiB", "requestCpus must be >= 1, got 0", "numberOfRetries must be >= 0",
                  "computeSite 'aws' is not a known site; known sites: ", "cluster.c.pipetasks must list",
                  "cluster.c.dimensions has unknown 'galaxy'"):
        assert words in msg, words


@pytest.mark.parametrize("name, reason", [
    ("a b/c", "whitespace"),
    ("u/*/x", "glob character '\\*'"),
    ("/abs/path", "starts with '/'"),
    ("a/../b", "'..' path segment"),
    ("${USER_CALIB_PREFIX}LSSTComCam/calib", "glob character '\\{'"),
])
def test_invalid_collection_names(name, reason):
    with pytest.raises(SubmissionError, match=f"payload.output '.*' is not a valid collection name: it .*{reason}"):
        validate_submission(good(payload_output=name))
    with pytest.raises(CollectionNameError, match=reason):
        validate_collection_name(name)


def test_collection_name_rule():
    assert validate_collection_name("LSSTComCam/calib/DM-48520/newCalibs/biasGen.20250207a").endswith("20250207a")
    assert collection_name_problem("") == "is empty"
    assert "','" in collection_name_problem("a,b")
    assert collection_name_problem(5) == "is a int, not text"


def test_unresolved_placeholders_and_input_problems():
    with pytest.raises(SubmissionError, match=r"payload.dataQuery still holds an unresolved placeholder: '\$\{SEL\}'"):
        validate_submission(good(payload_dataQuery="${SEL}"))
    with pytest.raises(SubmissionError, match="lists a/b more than once"):
        validate_submission(good(payload_inCollection="a/b,c,a/b"))
    with pytest.raises(SubmissionError, match="is also an input collection"):
        validate_submission(good(payload_inCollection="LSSTComCam/calib/DM-1/t/biasGen.20250207a,x"))
    with pytest.raises(SubmissionError, match="task 'cpBiasIsr' is in two clusters"):
        validate_submission(good(cluster={"a": {"pipetasks": "cpBiasIsr", "dimensions": "exposure"},
                                          "b": {"pipetasks": "cpBiasIsr", "dimensions": "detector"}}))
    with pytest.raises(SubmissionError, match="qgraphFile .* is not supported"):
        validate_submission(good(qgraphFile="x.qgraph"))


def test_check_against_pipeline():
    """Labels a pipeline does not have are passed over, as BPS does (one template serves several instruments:
    LATISS's cpFlat.yaml has no cpFlatMeasure that bps_flat_g clusters), each named in a note."""
    pipe = load_pipeline("cpBias")
    s = validate_submission(good())
    assert check_against_pipeline(s, pipe) == []
    bad = validate_submission(good(cluster={"c": {"pipetasks": "cpBiasIsr,cpFlatIsr", "dimensions": "exposure"}},
                                   pipetask={"cpBiasCombne": {"requestCpus": 2}}))
    assert check_against_pipeline(bad, pipe) == [
        "cluster.c.pipetasks names 'cpFlatIsr' (did you mean 'cpBiasIsr'?), not a task of pipeline cpBias (its tasks: "
        "cpBiasIsr, cpBiasCombine): ignored, as BPS ignores labels its quantum graph does not have",
        "pipetask.cpBiasCombne names 'cpBiasCombne' (did you mean 'cpBiasCombine'?), not a task of pipeline cpBias "
        "(its tasks: cpBiasIsr, cpBiasCombine): ignored, as BPS ignores labels its quantum graph does not have"]
