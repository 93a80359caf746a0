"""Pipeline definitions: every shipped one validates and reads the calibrations of the spec."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cpframe.core.errors import PipelineError
from cpframe.execution.kinds import get_kind
from cpframe.execution.pipeline import calibrations_for_isr, list_pipelines, load_pipeline, parse_pipeline
from cpframe.execution.templates import default_pipelines_dir

# spec dependencies.md §7 (minimal closed set) and §5 (verification): required calibrations
EXPECTED_REQUIRED = {
    "cpBiasBootstrap": set(),
    "cpDarkBootstrap": {"biasBootstrap"},
    "cpFlatBootstrap": {"biasBootstrap", "darkBootstrap"},
    "cpDefects": {"biasBootstrap", "darkBootstrap", "flatBootstrap"},
    "cpPtc": {"defects"},
    "cpBias": {"ptc"},
    "cpDark": {"ptc", "bias", "defects"},
    "cpFlat": {"ptc", "bias", "dark"},
    "verifyBias": {"ptc", "bias", "defects"},
    "verifyDark": {"ptc", "bias", "dark", "defects"},
    "verifyFlat": {"ptc", "bias", "dark", "defects", "flat"},
    "verifyDefects": {"ptc", "bias", "dark", "defects", "flat"},
    "verifyPtc": {"ptc"},
    "verifyScience": {"ptc", "bias", "dark", "defects", "flat"},
}
PRODUCTS = {"cpBiasBootstrap": "biasBootstrap", "cpDarkBootstrap": "darkBootstrap", "cpFlatBootstrap": "flatBootstrap",
            "cpDefects": "defects", "cpPtc": "ptc", "cpBias": "bias", "cpDark": "dark", "cpFlat": "flat"}
OPTIONAL_ONLY = {"linearizer", "crosstalk", "cti", "bfk", "manual_defects"}


def test_all_pipelines_shipped():
    assert set(list_pipelines()) >= set(EXPECTED_REQUIRED)


@pytest.mark.parametrize("name", sorted(EXPECTED_REQUIRED))
def test_pipeline_loads_with_spec_calibrations(name):
    p = load_pipeline(name)
    assert p.name == name
    assert set(p.calibrations) == EXPECTED_REQUIRED[name]
    assert set(p.optional_calibrations) <= OPTIONAL_ONLY
    if name in PRODUCTS:
        assert p.products == (PRODUCTS[name],)
        assert p.dataset_types[PRODUCTS[name]].is_calibration
    else:
        stem = name[len("verify"):]
        # exposure stages also keep the binned residual the report draws (docs/verification.md)
        previews = {f"verify{stem}Preview"} if stem in ("Bias", "Dark", "Flat", "Defects", "Science") else set()
        assert set(p.products) == {f"verify{stem}Results", f"verify{stem}Summary"} | previews
        assert p.verifies in (None, stem.lower())
    # every task's inputs come before it
    seen = {"raw"}
    for t in p.tasks:
        assert set(t.inputs) <= seen, t.label
        seen.update(t.outputs)
        assert t.dimensions[0] == "instrument"


def test_quantum_dimensions_follow_the_spec():
    flat = load_pipeline("cpFlat")
    dims = {t.kind: t.dimensions for t in flat.tasks}
    assert dims == {"isr": ("instrument", "exposure", "detector"),
                    "flatMeasure": ("instrument", "exposure", "detector"),
                    "flatNormalize": ("instrument", "physical_filter"),
                    "combine": ("instrument", "detector", "physical_filter")}
    assert load_pipeline("cpBias").task("cpBiasCombine").dimensions == ("instrument", "detector")
    assert load_pipeline("cpPtc").task("cpPtcSolve").dimensions == ("instrument", "detector")


def test_bootstrap_pipelines_configuration():
    b = load_pipeline("cpDarkBootstrap").task("cpDarkBootstrapIsr")
    assert b.config["doBootstrap"] is True and b.config["doBias"] is True
    assert b.calibrations == ("biasBootstrap",)      # intended behaviour (algorithms.md §3 note)
    c = load_pipeline("cpDark").task("cpDarkCombine").config
    assert c["exposureScaling"] == "DarkTime" and "CR" in c["mask"] and c["clip"] == 3.0 and c["nIter"] == 3
    assert load_pipeline("cpFlat").task("cpFlatCombine").config["exposureScaling"] == "InputList"
    assert load_pipeline("cpBias").task("cpBiasCombine").config["mask"] == ("DETECTED", "INTRP")
    d = load_pipeline("cpDefects").task("cpDefects")
    assert d.optional_calibrations == ("manual_defects",)


def _reference_isr_calibs(c: dict) -> tuple[set, set]:
    """dependencies.md §1 table, with §7's optional inputs, written out independently."""
    req, opt = set(), set()
    lin_gains = c["doApplyGains"] and c["useGainsFrom"] == "LINEARIZER"
    if not c["doBootstrap"] and not lin_gains:
        req.add("ptc")
    if lin_gains:
        req.add("linearizer")
    elif c["doLinearize"]:
        opt.add("linearizer")
    suffix = "Bootstrap" if c["doBootstrap"] else ""
    req |= {n + suffix for f, n in (("doBias", "bias"), ("doDark", "dark"), ("doFlat", "flat")) if c[f]}
    if c["doDefect"]:
        req.add("defects")
    opt |= {n for f, n in (("doCrosstalk", "crosstalk"), ("doDeferredCharge", "cti"),
                           ("doBrighterFatter", "bfk")) if c[f]}
    return req, opt


SWITCHES = ["doBootstrap", "doApplyGains", "doLinearize", "doBias", "doDark", "doFlat", "doDefect", "doCrosstalk",
            "doDeferredCharge", "doBrighterFatter"]


@settings(max_examples=200, deadline=None)
@given(flags=st.fixed_dictionaries({k: st.booleans() for k in SWITCHES}),
       gains_from=st.sampled_from(["PTC", "LINEARIZER"]))
def test_isr_calibrations_match_reference(flags, gains_from):
    cfg = get_kind("isr").defaults() | flags | {"useGainsFrom": gains_from}
    req, opt = calibrations_for_isr(cfg)
    assert (set(req), set(opt)) == _reference_isr_calibs(cfg)
    assert len(req) == len(set(req)) and not set(req) & set(opt)


def _bias() -> dict:
    return yaml.safe_load((default_pipelines_dir() / "cpBias.yaml").read_text())


def _err(data) -> str:
    with pytest.raises(PipelineError) as ei:
        parse_pipeline(data, "bad.yaml")
    return str(ei.value)


def test_bad_pipelines_give_clear_errors():
    d = _bias()
    d["tasks"]["cpBiasIsr"]["kind"] = "isrr"
    assert "unknown task kind 'isrr' (did you mean 'isr'?)" in _err(d)

    d = _bias()
    d["tasks"]["cpBiasIsr"]["config"]["doBais"] = True
    d["tasks"]["cpBiasCombine"]["config"]["combine"] = "MEDIANCLIP"
    d["tasks"]["cpBiasCombine"]["config"]["clip"] = "three"
    d["tasks"]["cpBiasCombine"]["config"]["mask"] = ["DETECTED", "COSMIC"]
    msg = _err(d)
    assert msg.startswith("bad.yaml: pipeline cpBias has 4 problems:")
    assert "unknown key 'doBais' for a isr task (did you mean 'doBias'?)" in msg
    assert "combine must be one of MEAN, MEDIAN, MEANCLIP, got 'MEDIANCLIP'" in msg
    assert "clip must be a number, got 'three'" in msg
    assert "unknown mask plane 'COSMIC'" in msg

    d = _bias()
    d["tasks"]["cpBiasIsr"]["output"] = "cpBiasPostIsr"
    msg = _err(d)
    assert "output 'cpBiasPostIsr' is not declared; add it under datasetTypes" in msg
    assert "inputs: 'cpBiasIsrExp' is not written by any task" in msg

    d = _bias()
    d["tasks"]["cpBiasCombine"]["dimensions"] = ["exposure", "detector"]
    assert "a combine task runs per [detector] or [detector, physical_filter], not" in _err(d)

    d = _bias()
    d["tasks"]["cpBiasIsr"]["calibrations"] = ["bias"]
    assert "calibrations follow from its do* switches" in _err(d)

    d = _bias()
    del d["tasks"]["cpBiasCombine"]["config"]["calibrationType"]
    assert "config.calibrationType is required for a combine task" in _err(d)


def test_cycles_duplicates_and_dimension_mismatch():
    d = _bias()
    d["datasetTypes"]["loopA"] = {"dimensions": ["detector"], "storageClass": "json"}
    d["tasks"]["a"] = {"kind": "ptcSolve", "dimensions": ["detector"], "inputs": ["loopB"], "output": "loopA"}
    d["datasetTypes"]["loopB"] = {"dimensions": ["detector"], "storageClass": "json"}
    d["tasks"]["b"] = {"kind": "ptcSolve", "dimensions": ["detector"], "inputs": ["loopA"], "output": "loopB"}
    assert "tasks form a cycle through their inputs: a, b" in _err(d)

    d = _bias()
    d["tasks"]["again"] = copy.deepcopy(d["tasks"]["cpBiasCombine"])
    assert "output 'bias' is also written by cpBiasCombine" in _err(d)

    d = _bias()
    d["datasetTypes"]["cpBiasIsrExp"]["dimensions"] = ["detector"]
    assert "has dimensions ['instrument', 'detector'] but the task runs per" in _err(d)


def test_missing_pipeline_lists_available(tmp_path):
    with pytest.raises(PipelineError, match="pipeline file 'cpNothing' not found. Available pipelines: .*cpBias"):
        load_pipeline("cpNothing")
    f = tmp_path / "x.yaml"
    f.write_text("tasks: [1, 2\n")
    with pytest.raises(PipelineError, match="x.yaml: not valid YAML"):
        load_pipeline(f)
    with pytest.raises(PipelineError, match="has no task 'nope'; its tasks are cpBiasIsr, cpBiasCombine"):
        load_pipeline("cpBias").task("nope")


def test_cpframe_pipelines_folder_is_searched_and_listed(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text((default_pipelines_dir() / "cpBias.yaml").read_text())
    monkeypatch.setenv("CPFRAME_PIPELINES", str(tmp_path))
    assert load_pipeline("mine").path == str(tmp_path / "mine.yaml")
    with pytest.raises(PipelineError, match=f"Available pipelines: mine \\(in {tmp_path}\\)"):
        load_pipeline("cpNothing")


def test_shipped_configs_are_accepted_by_the_science_code():
    """Config names map onto cpframe's IsrConfig / CombineConfig / DefectsConfig / PtcConfig."""
    from cpframe.science.combine import CombineConfig
    from cpframe.science.defects import DefectsConfig
    from cpframe.science.isr import IsrConfig
    from cpframe.science.ptc import PtcConfig

    parse = {"isr": IsrConfig.from_dict, "combine": CombineConfig.from_dict, "defects": DefectsConfig.from_dict,
             "ptcExtract": PtcConfig.from_dict, "ptcSolve": PtcConfig.from_dict}
    checked = set()
    for name in list_pipelines():
        for t in load_pipeline(name).tasks:
            if t.kind in parse:
                checked.add(t.kind)
                parse[t.kind](dict(t.config))  # every shipped option is one the science code honours
    assert checked == set(parse)  # every science config was exercised by some shipped pipeline
