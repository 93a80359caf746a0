"""The real cp_pipe / cp_verify BPS templates and LSST pipeline files (tests/data/lsst, see its README).

Every one of the 47 templates renders, strictly, with the stack variables (CP_PIPE_DIR,
CP_VERIFY_DIR, ANALYSIS_TOOLS_DIR) set and unset; the same templates plan in both cases (plus, with the
stack unset, the types cpframe builds with its own pipelines only: OWN_PIPELINE_ONLY);
the others name the calibration cpframe does not build yet.  The LSST pipeline reader is
checked on the real files: class -> kind mapping, python config blocks, overrides,
contracts, selections and its errors.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.core.errors import PipelineError, SubmissionError
from cpframe.execution.pipeline import NOT_BUILT_PIPELINES, load_pipeline
from cpframe.execution.submission import validate_submission
from cpframe.execution.submit import validate_stage
from cpframe.execution.templates import render

from tests.fixtures.submit import DMTN222_VARIABLES

DATA = Path(__file__).parent / "data" / "lsst"
CP_PIPE = DATA / "cp_pipe"
CP_VERIFY = DATA / "cp_verify"
TEMPLATES = sorted([*(CP_PIPE / "bps" / "templates").glob("bps_*.yaml"),
                    *(CP_VERIFY / "bps" / "templates").glob("bps_*.yaml")])
STACK = {"CP_PIPE_DIR": str(CP_PIPE), "CP_VERIFY_DIR": str(CP_VERIFY),
         "ANALYSIS_TOOLS_DIR": str(DATA / "analysis_tools")}
# variables of the less common templates (spec templates.md §3)
EXTRA = {k: "instrument='LSSTComCam'" for k in (
    "SELECTION_CROSSTALK", "SELECTION_PTC_BF", "SELECTION_SKY", "SELECTION_ILLUMINATION_CORRECTION",
    "SELECTION_GAIN_CORRECTION_FLAT", "SELECTION_FLAT_white", "SELECTION_PTC_LINEARIZER", "SELECTION_PTC_BFK",
    "SELECTION_PTC_CTI", "SELECTION_PTC_LINEARIZER_V", "SELECTION_PTC_BFK_V", "SELECTION_ILLUMINATION_CORRECTION_V")}
EXTRA["LED_NAME"] = "m455l4"
#: Templates whose calibration types cpframe builds (bias, dark, flat, defects, PTC, bootstraps; verification).
BUILT = {
    "bps_bias", "bps_biasBootstrap", "bps_dark", "bps_darkBootstrap", "bps_defects", "bps_flatBootstrap",
    *(f"bps_flat_{b}" for b in "ugriyz"), "bps_flat_singleled_white", "bps_ptc",
    "bps_verify_bias", "bps_verify_dark", "bps_verify_defects", *(f"bps_verify_flat_{b}" for b in "ugriyz"),
    "bps_verify_ptc", "bps_verify_science",
    # issue 13: CalibrateImage -> starMeasure, FGCM fit cycle -> illuminationSolve, source tables/association/
    # FGCM build/output folded into the solve (cpframe/execution/kinds/illumination.py)
    "bps_illuminationCorrection", "bps_verify_illuminationCorrection",
    # issue 13: CpSkyImage/ScaleMeasure/SubtractBackground/Combine -> the sky kinds (cpframe/execution/kinds/sky.py)
    "bps_sky",
}


#: Templates whose types cpframe builds (issue 13) and whose real LSST pipeline files it reads too (issue 12:
#: CrosstalkExtract/Solve, the filter folded into the solve, CpCtiSolve are in the kinds' task_classes).
LSST_READ_TOO = {"bps_cti", "bps_bfk", "bps_verify_linearizer",
                 # CharacterizeImageTask -> starMeasure, CpVerifyBfkTask -> verifyStats BFK_STARS (tests/test_bfk_stars.py)
                 "bps_verify_bfk",
                 # ElectrostaticBrighterFatterSolveTask -> electrostaticBfSolve (tests/test_electrostatic.py)
                 "bps_electrostaticBFDistortionMatrix"}
#: Templates whose types cpframe builds with its own pipelines only: with the stack unset the real template
#: reads cpframe's pipeline and plans; with it set they are refused, each for the reason given.
OWN_PIPELINE_ONLY = {
    # cp_pipe ships cpCrosstalk.yaml for LSSTCam only: with INSTRUMENT=LSSTComCam the file does not exist
    # (bps submit fails the same way); with INSTRUMENT=LSSTCam it plans (test_crosstalk_and_cti_real_files_plan)
    "bps_crosstalk": "not found",
    # cpGainCorrection.yaml is LSSTCam-only too; with INSTRUMENT=LSSTCam it plans (test_flat_gradient_reference_real_
    # file_plans) and runs (tests/test_flat_gradient_apply.py::test_lsstcam_real_gain_correction_template_runs_unchanged)
    "bps_gain_correction": "not found",
    # cpFlatGradientReference.yaml is LSSTCam-only too; with INSTRUMENT=LSSTCam the real file plans
    # (test_flat_gradient_reference_real_file_plans)
    **{f"bps_flat_gradient_reference_{b}": "not found" for b in "ugrizy"},
    # LSSTComCam's cpLinearizer.yaml redeclares three solve labels with LinearitySolveTask over the ingredient's
    # LinearityDoubleSplineSolveTask: as in pipetask the class replaces the task (defaults: all three write
    # 'linearity', the normalisations read nothing), so it cannot run; LSSTCam's file plans and runs
    # (test_linearizer_real_files_map and tests/test_linearity.py::test_real_linearizer_templates_run_unchanged...)
    "bps_linearizer": "replaces the imported LinearityDoubleSplineSolveTask",
    # cpFlatAnaglyph.yaml is LSSTCam-only too; with INSTRUMENT=LSSTCam the real file plans
    # (test_anaglyph_real_file_plans) and runs (tests/test_anaglyph.py)
    **{f"bps_flat_anaglyph_{b}": "not found" for b in "girzy"},
}


def _env(stack: bool) -> dict[str, str]:
    env = {**DMTN222_VARIABLES, **EXTRA, "PATH": "/usr/bin:/bin"}
    if stack:
        env.update(STACK)
    return env


@pytest.fixture
def stack_env(monkeypatch, request):
    """os.environ as the shell: stack variables set (param True) or unset."""
    env = _env(request.param)
    for k in list(os.environ):
        if k in STACK or k.startswith("SELECTION_") or k in DMTN222_VARIABLES:
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_the_47_real_templates_are_there():
    pipe = [t for t in TEMPLATES if t.is_relative_to(CP_PIPE)]
    assert (len(pipe), len(TEMPLATES) - len(pipe)) == (33, 14)
    assert BUILT <= {t.stem for t in TEMPLATES}


@pytest.mark.parametrize("stack_env", [True, False], ids=["stack-set", "stack-unset"], indirect=True)
def test_every_real_template_renders_and_the_same_ones_plan(stack_env):
    planned, refused = set(), {}
    for t in TEMPLATES:
        r = render(t, environ=stack_env)  # strict: raises on any unset variable
        sub = validate_submission(r.config, str(t))
        assert sub.output_run.startswith(sub.output + "/") or "Bootstrap" in t.stem
        try:
            validate_stage(r)
            planned.add(t.stem)
        except PipelineError as err:
            refused[t.stem] = str(err)
    assert planned == (BUILT | LSST_READ_TOO if "CP_PIPE_DIR" in stack_env
                       else BUILT | LSST_READ_TOO | set(OWN_PIPELINE_ONLY))
    for name, msg in refused.items():
        # a type cpframe does not build names it; a pipeline the real cp_pipe does not ship for the
        # instrument (LSSTComCam has no cpCrosstalk.yaml) is simply not found, as BPS would say
        assert OWN_PIPELINE_ONLY.get(name, "cpframe does not build") in msg and (
            "yet" in msg or name in OWN_PIPELINE_ONLY), (name, msg)


@pytest.mark.parametrize("stack_env", [True], indirect=True)
def test_crosstalk_and_cti_real_files_plan(stack_env):
    """The real cpCrosstalk / cpCti files (stack set) map onto cpframe's kinds (issue 12)."""
    xt = render(CP_PIPE / "bps/templates/bps_crosstalk.yaml", environ={**stack_env, "INSTRUMENT": "LSSTCam"})
    _, pipe = validate_stage(xt)
    assert [(t.label, t.kind, t.output) for t in pipe.tasks] == [
        ("cpCrosstalkIsr", "isr", "cpCrosstalkIsrExp"), ("cpCrosstalkExtract", "crosstalkExtract", "cpCrosstalkRatio"),
        ("cpCrosstalkSolve", "crosstalkSolve", "crosstalk")]
    solve = pipe.task("cpCrosstalkSolve")
    # the filter task is folded into the solve; LSSTCam's fluxOrder: 1 overrides the ingredient
    assert solve.config["doFiltering"] is True and solve.config["fluxOrder"] == 1
    assert any("CrosstalkFilterTask" in n for n in pipe.notes)
    cti = render(CP_PIPE / "bps/templates/bps_cti.yaml", environ=stack_env)
    _, pipe = validate_stage(cti)
    assert [(t.label, t.kind, t.inputs, t.output) for t in pipe.tasks] == [
        ("cpCtiIsr", "isr", ("raw",), "cpCtiIsrExp"), ("cpCtiSolve", "ctiSolve", ("cpCtiIsrExp",), "cti")]
    isr = pipe.task("cpCtiIsr").config
    assert (isr["doCtiStatistics"], isr["useGainsFrom"], isr["doLinearize"]) == (True, "LINEARIZER", True)


@pytest.mark.parametrize("stack_env", [True], indirect=True)
def test_linearizer_real_files_map(stack_env):
    """The real cpLinearizer (LSSTCam) and verifyLinearizer files map onto linearitySolve / linearityNormalize."""
    lin = render(CP_PIPE / "bps/templates/bps_linearizer.yaml", environ={**stack_env, "INSTRUMENT": "LSSTCam"})
    _, pipe = validate_stage(lin)
    assert [(t.label, t.kind, t.inputs, t.output) for t in pipe.tasks[3:]] == [
        ("cpLinearizerUnnormalizedSolve1", "linearitySolve", ("cpLinearizerPtcPartial",), "linearizerUnnormalized1"),
        ("cpLinearizerNormalize1", "linearityNormalize", ("linearizerUnnormalized1",), "cpLinearizerNormalization1"),
        ("cpLinearizerUnnormalizedSolve2", "linearitySolve", ("cpLinearizerPtcPartial", "cpLinearizerNormalization1"),
         "linearizerUnnormalized2"),
        ("cpLinearizerNormalize2", "linearityNormalize", ("linearizerUnnormalized2",), "cpLinearizerNormalization2"),
        ("cpLinearizerSolve", "linearitySolve", ("cpLinearizerPtcPartial", "cpLinearizerNormalization2"), "linearizer")]
    s1, solve = pipe.task("cpLinearizerUnnormalizedSolve1").config, pipe.task("cpLinearizerSolve").config
    # the ingredient's node size for the first solve, cp_pipe's default (3000 adu) for the last; LSSTCam's clip
    assert (s1["splineNodeSize"], s1["nSigmaClipLinear"], s1["useFocalPlaneNormalization"]) == (10000.0, 20.0, False)
    assert (solve["splineNodeSize"], solve["useFocalPlaneNormalization"], solve["linearityType"]) == (3000.0, True,
                                                                                                   "Spline")
    assert pipe.task("cpLinearizerNormalize1").dimensions == ("instrument",)
    assert pipe.task("cpLinearizerNormalize1").config["referenceDetector"] == 94
    assert any("doAbsoluteSplineFitTemporal=True" in n for n in pipe.notes)
    ver = render(CP_VERIFY / "bps/templates/bps_verify_linearizer.yaml", environ=stack_env)
    _, vp = validate_stage(ver)
    assert vp.verifies == "linearizer"
    second = vp.task("verifyLinearizerSecondLinearizer")
    assert (second.kind, second.inputs, second.config["linearityType"]) == (
        "linearitySolve", ("verifyLinearizerPtc",), "Spline")
    assert vp.task("verifyLinearizerCalib").inputs == ("verifyLinearizerSecondLinearizer",)
    # LSSTComCam's own file replaces the double-spline solves by LinearitySolveTask: refused as pipetask would
    with pytest.raises(PipelineError, match=r"output 'linearity' is also written by .*\n(.|\n)*because: "
                                            r"cpLinearizer.yaml: tasks.cpLinearizerSolve: class LinearitySolveTask "
                                            r"replaces the imported LinearityDoubleSplineSolveTask"):
        validate_stage(render(CP_PIPE / "bps/templates/bps_linearizer.yaml", environ=stack_env))


@pytest.mark.parametrize("stack_env", [True], indirect=True)
def test_flat_gradient_reference_real_file_plans(stack_env):
    """The real LSSTCam cpFlatGradientReference.yaml (stack set) maps CpFlatFitGradientsTask onto flatGradientFit
    (issue 13); the real cpGainCorrection.yaml and cpFlat.yaml fit the new flat's gradient (flat_gradient) and
    correct it against the certified reference (CpFlatApplyGradientsTask -> flatGradientApply)."""
    env = {**stack_env, "INSTRUMENT": "LSSTCam"}
    r = render(CP_PIPE / "bps/templates/bps_flat_gradient_reference_r.yaml", environ=env)
    _, pipe = validate_stage(r)
    fit = pipe.task("cpFlatFitGradientsReference")
    assert (fit.kind, fit.inputs, fit.output) == ("flatGradientFit", ("flat",), "flat_gradient_reference")
    assert fit.config["doReferenceGradient"] is True and fit.config["doFitGradient"] is True
    assert [t.kind for t in pipe.tasks] == ["isr", "flatMeasure", "flatNormalize", "combine", "flatGradientFit"]
    assert fit.calibrations == ("defects",)  # cp_pipe's input_defects prerequisite
    gc = render(CP_PIPE / "bps/templates/bps_gain_correction.yaml", environ=env)
    _, pipe = validate_stage(gc)
    assert [(t.label, t.kind, t.inputs, t.output, t.calibrations) for t in pipe.tasks[3:]] == [
        ("cpFlatCombine", "combine", ("cpFlatIsrExp", "cpFlatNormalizeScales"), "flat_uncorrected", ()),
        ("cpFlatFitGradients", "flatGradientFit", ("flat_uncorrected",), "flat_gradient", ("defects",)),
        ("cpFlatApplyGradients", "flatGradientApply", ("flat_uncorrected", "flat_gradient"), "flat_gain_correction",
         ("flat_gradient_reference",)),
        ("cpMeasureGainCorrection", "gainCorrection", ("flat_gain_correction",), "gain_correction", ("flat", "ptc"))]
    assert pipe.task("cpFlatFitGradients").config["doFitCentroid"] is True
    flat = render(CP_PIPE / "bps/templates/bps_flat_r.yaml", environ=env)
    _, pipe = validate_stage(flat)
    assert [(t.kind, t.output) for t in pipe.tasks][-2:] == [("flatGradientFit", "flat_gradient"),
                                                            ("flatGradientApply", "flat")]


@pytest.mark.parametrize("stack_env", [True], indirect=True)
def test_anaglyph_real_file_plans(stack_env):
    """The real LSSTCam cpFlatAnaglyph.yaml (issue 13): the two LEDs' flats down-selected by observation reason,
    each fitted and gradient-corrected, then mixed with the template's weightOne."""
    r = render(CP_PIPE / "bps/templates/bps_flat_anaglyph_z.yaml", environ={**stack_env, "INSTRUMENT": "LSSTCam"})
    _, pipe = validate_stage(r)
    assert [t.kind for t in pipe.tasks] == [
        "isr", "flatMeasure", "flatNormalize", "flatNormalize", "combine", "combine", "flatGradientFit",
        "flatGradientFit", "flatGradientApply", "flatGradientApply", "combineTwoFlats"]
    blue, red = pipe.task("cpFlatBlueNormalize").config, pipe.task("cpFlatRedNormalize").config
    assert (blue["doDownSelection"], blue["downSelectionField"], blue["downSelectionValue"]) == (
        True, "observation_reason", "single_led_flat_m850l3")
    assert red["downSelectionValue"] == "single_led_flat_m940l3"
    mix = pipe.task("cpFlatRedBlueCombine")
    assert (mix.inputs, mix.output, mix.config["weightOne"]) == (("flat_blue", "flat_red"), "flat", 0.65)
    assert pipe.task("cpFlatBlueApplyGradients").calibrations == ("flat_gradient_reference",)
    # cp_pipe's contract: the two down-selections differ
    bad = {**stack_env, "INSTRUMENT": "LSSTCam"}
    r = render(CP_PIPE / "bps/templates/bps_flat_anaglyph_z.yaml", environ=bad)
    r.config["extraQgraphOptions"] = r.config["extraQgraphOptions"].replace("m940l3", "m850l3")
    with pytest.raises(PipelineError, match="contract .*downSelectionValue.* does not hold"):
        validate_stage(r)


@pytest.mark.parametrize("stack_env", [True], indirect=True)
def test_real_pipeline_files_are_read_with_the_stack(stack_env):
    r = render(CP_PIPE / "bps/templates/bps_bias.yaml", environ=stack_env)
    _, pipe = validate_stage(r)
    assert pipe.path == f"{CP_PIPE}/pipelines/LSSTComCam/cpBias.yaml"
    assert [(t.label, t.kind, t.output) for t in pipe.tasks] == [
        ("cpBiasIsr", "isr", "cpBiasIsrExp"), ("cpBiasCombine", "combine", "bias")]
    isr = pipe.task("cpBiasIsr")
    assert isr.lsst_class == "lsst.ip.isr.IsrTaskLSST"
    # configureIsrTaskLSSTForCalibrations, then the ingredient's python lines, then LSSTComCam's own file
    assert (isr.config["doApplyGains"], isr.config["doCrosstalk"], isr.config["doQuadraticCrosstalkCorrection"],
            isr.config["doLinearize"], isr.config["doBias"], isr.config["doDeferredCharge"]) == (
        True, True, True, True, False, True)
    assert pipe.task("cpBiasCombine").config["mask"] == ("DETECTED", "INTRP")
    assert any("cpBiasMosaic8" in n and "not run" in n for n in pipe.notes)


def test_python_append_and_local_name_lines():
    pipe = load_pipeline(CP_PIPE / "pipelines/LSSTCam/cpDark.yaml", environ=STACK)
    assert pipe.task("cpDarkCombine").config["mask"] == ("SAT", "DETECTED", "INTRP", "CR")  # default + append
    boot = load_pipeline(CP_PIPE / "pipelines/LSSTCam/cpDarkBootstrap.yaml", environ=STACK)
    # cp_pipe's 'doBias = True' binds a local name: no effect, as in pipetask, and said so
    assert boot.task("cpDarkBootstrapIsr").config["doBias"] is False
    assert any("doBias = True" in n and "no effect" in n for n in boot.notes)


def test_defect_and_ptc_tasks_fold_onto_cpframe_kinds():
    d = load_pipeline(CP_PIPE / "pipelines/LSSTComCam/cpDefects.yaml", environ=STACK)
    (t,) = d.tasks
    assert (t.kind, t.output, t.calibrations) == ("defects", "defects",
                                                  ("biasBootstrap", "darkBootstrap", "flatBootstrap"))
    assert (t.config["darkCurrentThreshold"], t.config["fracThresholdFlat"], t.config["edgesAsDefects"]) == (
        3.0, 0.9, True)
    assert t.optional_calibrations == ("manual_defects",)  # doManualDefects: true
    p = load_pipeline(CP_PIPE / "pipelines/LSSTComCam/cpPtc.yaml", environ=STACK)
    assert [(t.kind, t.output) for t in p.tasks] == [("isr", "cpPtcIsrExp"), ("ptcExtract", "cpPtcPartial"),
                                                    ("ptcSolve", "ptc")]
    # the real file's FULLCOVARIANCE fit (to lag 10) is cpframe's too, covariances measured in extraction
    assert (p.task("cpPtcSolve").config["ptcFitType"], p.task("cpPtcSolve").config["maximumRangeCovariancesAstier"],
            p.task("cpPtcExtractPair").config["maximumRangeCovariancesAstier"]) == ("FULLCOVARIANCE", 10, 10)
    assert not any("FULLCOVARIANCE" in n for n in p.notes)


def test_verification_pipelines_map_onto_verify_stages():
    v = load_pipeline(CP_VERIFY / "pipelines/LSSTComCam/verifyDefects.yaml", environ=STACK)
    assert v.verifies == "defects"
    assert [t.config.get("stage") for t in v.tasks if t.kind.startswith("verify")] == ["DEFECTS"] * 3
    assert v.task("verifyDefectsDet").inputs == ("verifyDefectsIsrExp", "verifyUncorrectedDefectsIsrExp")
    assert v.task("verifyDefects").outputs == ("verifyDefectsResults", "verifyDefectsStats")
    # without analysis_tools the import of its plots is skipped, with a note
    env = {k: v for k, v in STACK.items() if k != "ANALYSIS_TOOLS_DIR"}
    v2 = load_pipeline(CP_VERIFY / "pipelines/LSSTComCam/verifyBias.yaml", environ=env)
    assert v2.labels == load_pipeline(CP_VERIFY / "pipelines/LSSTComCam/verifyBias.yaml", environ=STACK).labels
    assert any("cpCore.yaml skipped" in n for n in v2.notes)


def test_label_and_subset_selection():
    p = load_pipeline(f"{CP_PIPE}/pipelines/LSSTComCam/cpBias.yaml#cpBiasIsr,cpBiasCombine", environ=STACK)
    assert p.labels == ("cpBiasIsr", "cpBiasCombine") and not any("Mosaic" in n for n in p.notes)
    s = load_pipeline(f"{CP_PIPE}/pipelines/LSSTComCam/cpPtc.yaml#cpPtcGainFromFlatPairs", environ=STACK)
    assert s.labels == ("cpPtcIsr", "cpPtcExtractPair")
    with pytest.raises(PipelineError, match="'cpBiasIsx' is neither a task label nor a subset.*did you mean 'cpBiasIsr'"):
        load_pipeline(f"{CP_PIPE}/pipelines/LSSTComCam/cpBias.yaml#cpBiasIsx", environ=STACK)


def test_config_overrides_rename_and_contracts():
    f = CP_PIPE / "pipelines/LSSTComCam/cpBias.yaml"
    rename = [("cpBiasCombine", "clip", 4.5), ("cpBiasCombine", "connections.outputData", "biasTry")]
    # the display tasks' contracts tie their input to the combine's output (as pipetask checks them)
    with pytest.raises(PipelineError, match="contract 'cpBiasBin8.connections.inputExp == "
                                            "cpBiasCombine.connections.outputData' does not hold"):
        load_pipeline(f, environ=STACK, overrides=rename)
    p = load_pipeline(f"{f}#cpBiasIsr,cpBiasCombine", environ=STACK, overrides=rename)
    assert p.task("cpBiasCombine").config["clip"] == 4.5 and "clip" in p.task("cpBiasCombine").explicit
    assert p.task("cpBiasCombine").output == "biasTry" and "biasTry" in p.dataset_types
    with pytest.raises(PipelineError, match=r"contract 'cpBiasCombine.calibrationType == \"bias\"' does not hold"):
        load_pipeline(f, environ=STACK, overrides=[("cpBiasCombine", "calibrationType", "dark")])
    with pytest.raises(PipelineError, match="no task 'cpBiasCombin'.*did you mean 'cpBiasCombine'"):
        load_pipeline(f, environ=STACK, overrides=[("cpBiasCombin", "clip", 4.5)])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_class_field_and_python_line_name_file_label_field(tmp_path):
    bad_field = _write(tmp_path / "f.yaml", "tasks:\n  isr:\n    class: lsst.ip.isr.IsrTaskLSST\n"
                                            "    config:\n      doBais: true\n")
    with pytest.raises(PipelineError, match=r"f.yaml: tasks.isr: unknown config field 'doBais' for IsrTaskLSST "
                                            r"\(did you mean 'doBias'\?\)"):
        load_pipeline(bad_field)
    bad_class = _write(tmp_path / "c.yaml", "tasks:\n  x:\n    class: lsst.cp.pipe.CalibCombineTsk\n")
    with pytest.raises(PipelineError, match=r"c.yaml: tasks.x: unknown task class 'lsst.cp.pipe.CalibCombineTsk' "
                                            r"\(did you mean 'lsst.cp.pipe.CalibCombineTask'\?\)"):
        load_pipeline(bad_class)
    bad_py = _write(tmp_path / "p.yaml", "tasks:\n  isr:\n    class: lsst.ip.isr.IsrTaskLSST\n    config:\n"
                                         "      python: |\n        config.doBias = True\n        import os; os.remove('x')\n")
    with pytest.raises(PipelineError, match=r"p.yaml: tasks.isr: python config line 2 is not understood"):
        load_pipeline(bad_py)


def test_not_built_names_the_calibration():
    with pytest.raises(PipelineError, match=r"cpframe does not build filter scan yet .*CpFilterScanTask"):
        load_pipeline(CP_PIPE / "pipelines/_ingredients/cpFilterScanLSST.yaml", environ=STACK)
    for stem, what in NOT_BUILT_PIPELINES.items():  # a missing file of a type cpframe does not build names it
        with pytest.raises(PipelineError, match=rf"not found: cpframe does not build {re.escape(what)} yet"):
            load_pipeline(f"/nonexistent/pipelines/{stem}.yaml")
    with pytest.raises(PipelineError, match=r"cpSky.yaml.* not found") as err:  # sky is built: plain not found
        load_pipeline("/nonexistent/pipelines/cpSky.yaml")
    assert "does not build" not in str(err.value)


def test_bps_substitutions_that_stopped_strict_render(tmp_path):
    env = _env(False)
    r = render(CP_PIPE / "bps/templates/bps_crosstalk.yaml", environ=env)  # ${outputRun}
    assert r.config["submitPath"] == "/scratch/calib/submit/${outputRun}"  # as BPS: left as written
    assert any("${outputRun} names a template key" in n for n in r.notes)
    r = render(CP_PIPE / "bps/templates/bps_sky.yaml", environ=env)  # ${CP_PIPE_DIR}/bps include, stack unset
    assert any("cp_caching.yaml" in n and "skipped" in n for n in r.notes)
    r = render(CP_PIPE / "bps/templates/bps_sky.yaml", environ={**env, **STACK})
    # with the stack: included; DAF_BUTLER_CONFIG_PATH is unset here, so its use is deferred to the workers
    assert r.config["environment"]["DAF_BUTLER_CONFIG_PATH"] == \
        f"{CP_PIPE}/bps/caching/config:${{DAF_BUTLER_CONFIG_PATH}}"
    assert any("DAF_BUTLER_CONFIG_PATH" in n and "workers" in n for n in r.notes)


def test_ignored_keys_never_fail_and_are_listed(tmp_path):
    t = tmp_path / "bps_bias.yaml"
    shutil.copy(CP_PIPE / "bps/templates/bps_bias.yaml", t)
    with open(t, "a") as fh:
        fh.write("wmsServiceClass: no.such.Service\nrunQuantumCommand: whatever\n"
                 "extraQgraphOptions: '--config cpBiasCombine:clip=4.0 --dataset-query-constraint off'\n")
    r = render(t, environ=_env(True))
    sub = validate_submission(r.config, str(t))
    assert sub.ignored_keys == ("clusterAlgorithm", "runQuantumCommand", "wmsServiceClass")
    assert sub.config_overrides == (("cpBiasCombine", "clip", 4.0),)
    assert sub.ignored_options == ("--dataset-query-constraint", "off")
    _, pipe = validate_stage(r)
    assert pipe.task("cpBiasCombine").config["clip"] == 4.0
    out = CliRunner().invoke(main, ["render", str(t)], env=_env(True))
    assert out.exit_code == 0, out.output
    assert "ignored by cpframe (no meaning for a Dask back end): clusterAlgorithm, runQuantumCommand, " \
           "wmsServiceClass" in out.output


def test_render_reports_a_missing_pipeline(tmp_path):
    t = _write(tmp_path / "t.yaml", yaml.safe_dump({
        "pipelineYaml": str(tmp_path / "nope.yaml"), "payload": {
            "payloadName": "x", "butlerConfig": "/repo", "inCollection": "a/b", "dataQuery": "instrument='X'"}}))
    out = CliRunner().invoke(main, ["render", str(t)], env={"USER": "me"})
    assert out.exit_code != 0
    assert "pipelineYaml" in out.output and "nope.yaml" in out.output and "does not exist" in out.output
    with pytest.raises(SubmissionError, match="does not exist"):
        from cpframe.cli._submit import check_pipeline_exists

        check_pipeline_exists(str(tmp_path / "nope.yaml"), str(t))


# ------------------------------------------------------------------------------------------
# the real bias template and real LSST pipeline, run on a simulated repository
# ------------------------------------------------------------------------------------------
def test_real_bias_template_runs_unchanged(tmp_path, mini_dataset, local_dask, monkeypatch):
    from cpframe.execution.submit import submit_template
    from tests._run_helpers import INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables

    repo = make_repo(tmp_path / "repo", mini_dataset)
    try:
        certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / "calibs")
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = {**variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS=""), **STACK}
        for k, v in STACK.items():
            monkeypatch.setenv(k, v)
        template = CP_PIPE / "bps/templates/bps_bias.yaml"
        res = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"bias": len(mini_dataset.detectors)}
        truth = mini_dataset.truth
        from cpframe.science.imageio import read_masked

        for ref in repo.registry.query_datasets("bias", collections=[res.run]):
            d = int(ref.data_id["detector"])
            img = read_masked(repo.get_path(ref)).image
            det = mini_dataset.camera.detector(d)
            for amp in det.amps:
                expected = truth.bias_pattern(d)[amp.bbox] * truth.amp(d, amp.name).gain
                assert abs(float(np.nanmedian(img[amp.bbox] - expected))) < 2.0, (d, amp.name)
    finally:
        repo.close()
