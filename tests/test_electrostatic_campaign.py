"""The electrostatic brighter-fatter distortion matrix as a campaign product: its place in a campaign, its
verification (stage ELECTROSTATIC_BF, cpframe/verify/electrostatic.py) and a campaign on the mini data set of
tests/test_bfk.py (LSSTComCam mini detector 4, brighter_fatter on, 28 flat pairs up to 95 000 e-) that builds a
FULLCOVARIANCE PTC, certifies it, builds, certifies and verifies the matrix and reports it.

Truth checks: the certified model's a00 and nearest lags within 10 % of the simulator's a matrix (detector mean;
tests/test_electrostatic.py states why 10 % on 16 000-pixel amps); the verification's PTC of corrected flats
linear to < 1 % up to 50 000 e- while the uncorrected one is not (> 1 %); a matrix scaled by 0 (no correction)
or by 3 (over-correction) fails it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cpframe.camera.bf import bf_a_matrix
from cpframe.core.errors import CampaignError
from tests.test_bfk import DET, LEVELS, bf_flats, bfk  # noqa: F401  (module fixtures: the BF flat ramp and its PTC)

#: Pairs up to 50 000 e- (the verification's range), as seq_num 1..N of the ramp.
N_LOW = 2 * sum(1 for lv in LEVELS if lv <= 50000)


# -- the campaign file ---------------------------------------------------------------------------
def test_campaign_builds_it_after_the_certified_ptc(tmp_path):
    """cp_pipe's template name (and cpframe's copy) build electroBfDistortionMatrix into
    electroBFDistortionMatrixGen.<RERUN>, after the certified PTC; it is certified, then verified; its
    selection SELECTION_PTC_BF is required by name."""
    from cpframe.campaign.spec import load_campaign
    from tests.test_campaign import SCRAMBLED_STEPS, write_campaign
    from tests.test_lsst_templates import CP_PIPE

    steps = [
        {"name": "verify-electro", "kind": "submit", "template": "bps_verify_electrostaticBFDistortionMatrix.yaml"},
        {"name": "certify-electro", "kind": "certify", "dataset_type": "electroBfDistortionMatrix"},
        {"name": "electro", "kind": "submit",
         "template": str(CP_PIPE / "bps/templates/bps_electrostaticBFDistortionMatrix.yaml")},  # cp_pipe's own
        *SCRAMBLED_STEPS,
    ]
    sel = "instrument='LSSTComCam' and exposure.observation_type='flat'"
    camp = load_campaign(write_campaign(tmp_path, steps, variables={"SELECTION_PTC_BF": sel,
                                                                    "SELECTION_PTC_BF_V": sel}))
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    assert pos["certify-ptc"] < pos["electro"] < pos["certify-electro"] < pos["verify-electro"]
    assert ("certify-ptc", "electroBfDistortionMatrix needs ptc") in camp.after["electro"]
    build, cert, verify = camp.step("electro"), camp.step("certify-electro"), camp.step("verify-electro")
    assert build.builds == "electroBfDistortionMatrix" and verify.verifies == "electroBfDistortionMatrix"
    assert build.gen_output.endswith("/test/electroBFDistortionMatrixGen.20250101a")
    assert cert.input == build.gen_output and cert.output.endswith("/test/electroBfDistortionMatrix.20250102a")
    assert verify.gen_output.endswith("/test/verifyElectrostaticBf.20250103a")
    # cpframe's own copy of the template is found in the project's templates/ by name
    camp = load_campaign(write_campaign(tmp_path, [{"name": "e", "kind": "submit",
                                                    "template": "bps_electrostaticBFDistortionMatrix.yaml"}],
                                        variables={"SELECTION_PTC_BF": sel}, name="d.yaml"))
    assert camp.step("e").builds == "electroBfDistortionMatrix" and Path(camp.step("e").template).is_file()
    with pytest.raises(CampaignError, match="missing variable SELECTION_PTC_BF "):
        load_campaign(write_campaign(tmp_path, steps[2:3], name="e.yaml"))



def test_only_the_pipelines_reading_the_certified_ptc_are_checked(dmtn222_variables, monkeypatch):
    """The campaign's FULLCOVARIANCE check (cpframe/campaign/preflight.py) applies to the templates whose
    electrostatic solve reads the certified ptc -- cp_pipe's own (with or without the stack) and cpframe's copy --
    and not to the variant with a PTC of its own; its input collections are the template's, in order."""
    from cpframe.campaign.preflight import certified_ptc_reader
    from cpframe.execution.templates import default_templates_dir
    from tests.test_lsst_templates import CP_PIPE, STACK

    env = dict(dmtn222_variables)
    for k in STACK:
        monkeypatch.delenv(k, raising=False)
    want = ["LSSTComCam/calib/DM-48520", "LSSTComCam/raw/all", "LSSTComCam/calib/DM-46562",
            "LSSTComCam/calib/curated/20241101"]
    real = str(CP_PIPE / "bps/templates/bps_electrostaticBFDistortionMatrix.yaml")
    assert certified_ptc_reader(real, env) == want
    assert certified_ptc_reader(real, {**env, **STACK}) == want
    assert certified_ptc_reader(str(default_templates_dir() / "bps_electrostaticBFDistortionMatrix.yaml"), env) == want
    assert certified_ptc_reader(str(default_templates_dir() / "bps_electrostaticBFDistortionMatrixBfPtc.yaml"),
                                env) is None


# -- the verification ----------------------------------------------------------------------------
def _truth_solution(truth, scale: float):
    from tests.test_electrostatic import _truth_solution

    sol = _truth_solution(float(np.mean([truth.amp(DET.id, a.name).bf_a00 for a in DET.amps])))
    sol.shifts = {k: v * scale for k, v in sol.shifts.items()}
    sol.gain = {a.name: float(truth.amp(DET.id, a.name).gain) for a in DET.amps}
    sol.meta = {"INSTRUME": "LSSTComCam", "DETECTOR": DET.id, "CAMSCALE": "mini"}
    return sol


@pytest.mark.parametrize("scale, failure", [(1.0, None), (0.0, "VARIANCE_LINEAR"), (2.0, "VARIANCE_LINEAR"),
                                            (3.0, "PAIRS_KEPT")], ids=["truth", "zero-matrix", "twice", "three-times"])
def test_verification_passes_the_truth_and_fails_a_wrong_matrix(scale, failure, bf_flats, bfk, tmp_path):  # noqa: F811
    """The stage's tests pass with the truth's matrix (measured: 0.06 %, 16 of 16 pairs kept) and can fail: scaled by
    0 it leaves the PTC bent down (as uncorrected), scaled by 2 it bends it up, both by > 1 % (measured 2.9 % and
    2.7 %); scaled by 3 the PTC's outlier rejection drops the upper pairs (5 of 16 kept, the rest straight to
    0.6 %), which PAIRS_KEPT catches.  (The fitted matrix passes in the campaign test below.)"""
    from cpframe.camera.models import load_camera
    from cpframe.science.electrostatic import write_electrostatic
    from cpframe.science.isr import isr_config_for
    from cpframe.science.tasks import cp_ptc
    from cpframe.verify import VerifyConfig, verify_calib

    truth, paths = bf_flats
    path = write_electrostatic(tmp_path / "electro.json", _truth_solution(truth, scale))
    cfg = isr_config_for("bfk", do_defect=False, do_brighter_fatter=True, brighter_fatter_correction_method="ASTIER23")
    low = paths[:N_LOW]
    cp_ptc(low, tmp_path / "ptc.fits", calibs={"electro_bf": path}, isr_config=cfg, workers=2,
           config={"numEdgeSuspect": 6})
    det = load_camera("LSSTComCam", "mini").detector(DET.id)
    stats = verify_calib("ELECTROSTATIC_BF", tmp_path / "ptc.fits", det, VerifyConfig(), uncorrected=bfk[1])
    assert stats["FAILURES"] == ([failure] if failure else []), (stats["FAILURES"], stats["DET"])
    assert stats["SUCCESS"] is (failure is None) and stats["DET"]["UNCORRECTED_NONLINEARITY"] > 0.02
    if failure is None:
        assert stats["DET"]["NONLINEARITY"] < 0.002 and stats["DET"]["N_POINTS"] == stats["DET"]["N_IN_RANGE"] == 16
    elif failure == "VARIANCE_LINEAR":
        assert stats["DET"]["NONLINEARITY"] > 0.01 and stats["DET"]["N_POINTS"] == stats["DET"]["N_IN_RANGE"]
        # the sign of the curvature says which way: bent down without the correction, up with too much of it
        assert (stats["DET"]["CURVATURE"] < 0) is (scale == 0.0), stats["DET"]
    else:
        assert stats["DET"]["N_POINTS"] < 0.8 * stats["DET"]["N_IN_RANGE"], stats["DET"]


# -- a campaign on the mini data set -------------------------------------------------------------
#: Mini-amp settings through extraQgraphOptions, as a campaign on mini detectors needs them (tests/test_bfk.py): a
#: FULLCOVARIANCE_NO_B PTC to lag 4 with 6-pixel edges; the electrostatic fit over those lags.
MINI_OPTIONS = {
    "bps_ptc.yaml": ("cpPtcExtractPair:maximumRangeCovariancesAstier=5", "cpPtcExtractPair:numEdgeSuspect=6",
                     "cpPtcSolve:ptcFitType=FULLCOVARIANCE_NO_B", "cpPtcSolve:maximumRangeCovariancesAstier=5",
                     "cpPtcSolve:maximumRangeCovariancesAstierFullCovFit=4",
                     "cpPtcSolve:maxSignalInitialPtcOutlierFit=80000"),
    "bps_electrostaticBFDistortionMatrix.yaml": ("cpBfSolve:fitRange=4",),
    "bps_verify_electrostaticBFDistortionMatrix.yaml": (
        "verifyElectrostaticBfPtcExtractPair:numEdgeSuspect=6",
        "verifyUncorrectedElectrostaticBfPtcExtractPair:numEdgeSuspect=6"),
}


def test_campaign_builds_certifies_verifies_and_reports_it(bf_flats, tmp_path, local_dask):  # noqa: F811
    from cpframe.campaign.runner import run_campaign
    from cpframe.campaign.spec import load_campaign
    from cpframe.science.electrostatic import read_electrostatic
    from cpframe.science.imageio import read_ptc
    from cpframe.verify.results import read_stats
    from tests._run_helpers import (
        RAW_RUN,
        TICKET,
        TRUTH_COLLECTION,
        certify_truth_calibs,
        make_repo,
        put_certified,
        ticket_chain_add,
    )

    truth, paths = bf_flats
    repo = make_repo(tmp_path / "repo", None, files=[Path(p) for p in paths])
    certify_truth_calibs(repo, truth, [DET.id], tmp_path / "calibs", types=("defects",))
    templates = Path(__file__).resolve().parents[1] / "templates"
    for name, opts in MINI_OPTIONS.items():
        (tmp_path / name).write_text((templates / name).read_text() + "extraQgraphOptions: \""
                                     + " ".join(f"--config {o}" for o in opts) + "\"\n")
    inst = "instrument='LSSTComCam'"
    doc = {"name": "electro", "variables": {
        "USER_CALIB_PREFIX": "", "INSTRUMENT": "LSSTComCam", "TICKET": TICKET, "REPO": str(repo.root),
        "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241110a",
        "CERT_RERUN": "20241111a", "VERIFY_RERUN": "20241112a", "START_DATE": "1970-01-01T00:00:00",
        "SCRATCH": str(tmp_path / "scratch"), "SELECTION_PTC": f"{inst} and exposure.observation_type='flat'",
        "SELECTION_PTC_BF": "${SELECTION_PTC}", "SELECTION_PTC_BF_V": f"{inst} and exposure.seq_num in (1..{N_LOW})"},
        "steps": [
            {"name": "report", "kind": "report"},
            {"name": "verify-electro", "kind": "submit",
             "template": str(tmp_path / "bps_verify_electrostaticBFDistortionMatrix.yaml")},
            {"name": "certify-electro", "kind": "certify", "dataset_type": "electroBfDistortionMatrix"},
            {"name": "electro", "kind": "submit", "template": str(tmp_path / "bps_electrostaticBFDistortionMatrix.yaml")},
            {"name": "certify-ptc", "kind": "certify", "dataset_type": "ptc"},
            {"name": "ptc", "kind": "submit", "template": str(tmp_path / "bps_ptc.yaml")},
        ]}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        camp = load_campaign(path)
        assert [s.name for s in camp.steps] == ["ptc", "certify-ptc", "electro", "certify-electro", "verify-electro",
                                                "report"]
        res = run_campaign(camp, client=local_dask.client, echo=lambda line: None)
        assert [o.status for o in res.outcomes] == ["ran"] * 6
        reg = repo.registry
        (pref,) = reg.query_certifications(camp.step("certify-ptc").output, "ptc")
        assert read_ptc(repo.get_path(pref))[1]["PTCFITTYPE"] == "FULLCOVARIANCE_NO_B"
        (ref,) = reg.query_certifications(camp.step("certify-electro").output, "electroBfDistortionMatrix")
        assert ref.run.startswith(camp.step("electro").gen_output + "/")
        sol = read_electrostatic(repo.get_path(ref))
        a00 = np.mean([truth.amp(DET.id, a.name).bf_a00 for a in DET.amps])
        m, t = sol.a_matrix_model, bf_a_matrix(a00, 4)
        assert sol.fit_range == 4 and sol.meta["PTCFITTYPE"] == "FULLCOVARIANCE_NO_B"
        assert m[0, 0] == pytest.approx(t[0, 0], rel=0.10)
        assert m[0, 1] == pytest.approx(t[0, 1], rel=0.10) and m[1, 0] == pytest.approx(t[1, 0], rel=0.10)
        # the verification: the corrected PTC is straight, the uncorrected one is not
        (sref,) = reg.query_datasets("verifyElectrostaticBfStats", collections=[camp.step("verify-electro").gen_output])
        det = read_stats(repo.get_path(sref))["DET"]
        assert det["NONLINEARITY"] < 0.01 < det["UNCORRECTED_NONLINEARITY"], det
        # the report: the section with its verdict, the figure and the units of the table
        report = res.outcomes[-1].outputs
        assert report["verdicts"]["electroBfDistortionMatrix"] is True, report["verdicts"]
        index = Path(report["index"]).read_text()
        assert 'id="electroBfDistortionMatrix"' in index and "Electrostatic brighter-fatter" in index
        pngs = list(Path(report["index"]).parent.glob("src/electroBfDistortionMatrix/electroBfDistortionMatrix_*.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000

        # a campaign whose certified PTC is not FULLCOVARIANCE stops before the build, naming the fit type found:
        # the campaign's PTC without its covariances, as an EXPAPPROXIMATION PTC, certified in front of it
        from cpframe.science.imageio import write_ptc

        rows, header = read_ptc(repo.get_path(pref))
        keep = ("gain", "gain_err", "noise", "noise_err", "turnoff", "a00", "n_pairs", "raw_means", "raw_vars",
                "exp_times", "mask", "overscan_noise")
        expa = write_ptc(tmp_path / "expa.fits", [{"amp": a, **{k: r[k] for k in keep}} for a, r in rows.items()],
                         {**{k: header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE")},
                          "OBSTYPE": "ptc", "PTCFITTYPE": "EXPAPPROXIMATION"})
        put_certified(repo, "ptc", [(expa, {"instrument": "LSSTComCam", "detector": DET.id})], "expa/run",
                      f"LSSTComCam/calib/{TICKET}/ptc.20241113a")
        ticket_chain_add(repo, f"LSSTComCam/calib/{TICKET}/ptc.20241113a")
        doc["name"], doc["variables"]["RERUN"] = "electro-again", "20241113a"
        doc["steps"] = [s for s in doc["steps"] if s["name"] == "electro"]
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        again = load_campaign(path)
        with pytest.raises(CampaignError, match=r"step 'electro' builds electroBfDistortionMatrix .* needs ptcFitType "
                                                r"FULLCOVARIANCE; the certified ptc found has detector 4: "
                                                r"EXPAPPROXIMATION \(in LSSTComCam/calib/DM-TEST/ptc.20241113a\)\. "
                                                r"Build the campaign's ptc with ptcFitType FULLCOVARIANCE") as err:
            run_campaign(again, client=local_dask.client, echo=lambda line: None)
        assert "--config cpPtcSolve:ptcFitType=FULLCOVARIANCE" in str(err.value) and "--resume" in str(err.value)
        assert not reg.query_collections("*/electroBFDistortionMatrixGen.20241113a*")  # nothing was submitted
    finally:
        repo.close()


def test_variant_with_its_own_ptc_builds_the_matrix_without_a_certified_ptc(bf_flats, tmp_path, local_dask):  # noqa: F811
    """bps_electrostaticBFDistortionMatrixBfPtc (cp_pipe's useBfPtc): bootstrap ISR with the certified defects only,
    a FULLCOVARIANCE_NO_B PTC of the ramp, the fit to its a matrix; no ptc is certified in the repository.  The
    same truth tolerance as the certified-PTC campaign (10 %); the campaign infers the product from its name."""
    from types import SimpleNamespace

    from cpframe.campaign.spec import _infer_from_template
    from cpframe.execution.submit import submit_template
    from cpframe.science.electrostatic import read_electrostatic
    from tests._run_helpers import TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables

    name = "bps_electrostaticBFDistortionMatrixBfPtc.yaml"
    assert _infer_from_template(name) == ("electroBfDistortionMatrix", None, None)
    truth, paths = bf_flats
    repo = make_repo(tmp_path / "repo", None, files=[Path(p) for p in paths])
    try:
        certify_truth_calibs(repo, truth, [DET.id], tmp_path / "calibs", types=("defects",))
        repo.registry.set_chain(f"LSSTComCam/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = variables(repo.root, tmp_path / "scratch", SimpleNamespace(plan=SimpleNamespace(selections={})),
                        SELECTION_PTC_BF="instrument='LSSTComCam' and exposure.observation_type='flat'")
        text = (Path(__file__).resolve().parents[1] / "templates" / name).read_text()
        (tmp_path / name).write_text(text + "extraQgraphOptions: \"" + " ".join(
            f"--config {o}" for o in MINI_BFPTC_OPTIONS) + "\"\n")
        res = submit_template(tmp_path / name, environ=env, client=local_dask.client)
        assert res.counts == {"electroBfDistortionMatrix": 1}, res.counts
        assert not repo.registry.query_datasets("ptc", collections=[res.run, TRUTH_COLLECTION])
        (ref,) = repo.registry.query_datasets("electroBfDistortionMatrix", collections=[res.run])
        sol = read_electrostatic(repo.get_path(ref))
        a00 = np.mean([truth.amp(DET.id, a.name).bf_a00 for a in DET.amps])
        m, t = sol.a_matrix_model, bf_a_matrix(a00, 4)
        assert sol.fit_range == 4 and sol.meta["PTCFITTYPE"] == "FULLCOVARIANCE_NO_B"
        assert m[0, 0] == pytest.approx(t[0, 0], rel=0.10)
        assert m[0, 1] == pytest.approx(t[0, 1], rel=0.10) and m[1, 0] == pytest.approx(t[1, 0], rel=0.10)
    finally:
        repo.close()


#: The variant's mini-amp settings (its labels; the values of tests/test_bfk.py's MINI_BFK_OPTIONS).
MINI_BFPTC_OPTIONS = ("cpBfPtcExtractPair:maximumRangeCovariancesAstier=5", "cpBfPtcExtractPair:numEdgeSuspect=6",
                      "cpBfPtcExtractPair:minNumberGoodPixelsForCovariance=10000",
                      "cpBfPtcSolve:ptcFitType=FULLCOVARIANCE_NO_B", "cpBfPtcSolve:maximumRangeCovariancesAstier=5",
                      "cpBfPtcSolve:maximumRangeCovariancesAstierFullCovFit=4", "cpBfSolve:fitRange=4")
