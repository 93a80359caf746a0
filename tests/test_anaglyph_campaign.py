"""Anaglyph flats and single-LED flats as campaign products (docs/campaign.md "Anaglyph and single-LED flats").

``flat_anaglyph`` (per band; templates/bps_flat_anaglyph_<band>.yaml or cp_pipe's) is written and certified as
the band's ``flat``, into ``<TAG_PREFIX>/flatAnaglyph-<band>.<CERT_RERUN>``, and verified by the flat's tests
under the stage FLAT_ANAGLYPH; ``flat_single_led`` (per ``LED_NAME``; templates/bps_flat_single_led.yaml or cp_pipe's
bps_flat_singleled_white.yaml) is written and certified as ``flat_<LED>`` into ``<TAG_PREFIX>/flat_<LED>.<CERT_RERUN>``.

Truth checks (the simulator's ``led_flats`` effect, cpframe/camera/led_flats.py; tolerances of tests/test_anaglyph.py):
the certified anaglyph flat's colour beta within 3 % of s of the truth mix s (w t_blue + (1 - w) t_red); the
certified single-LED flat's colour within 3 % of s of s t_led.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from cpframe.core.errors import CampaignError
from tests.test_anaglyph import BLUE, CAM, RED, SEED, W, S, _reference

LED_VARS = {"SELECTION_FLAT_g": "instrument='LSSTComCam' and exposure.observation_type='flat'",
            "SELECTION_FLAT_g_V": "instrument='LSSTComCam' and exposure.observation_reason='flat'",
            "SELECTION_FLAT_white": "instrument='LSSTComCam' and exposure.observation_type='flat'",
            "SELECTION_FLAT_white_V": "instrument='LSSTComCam' and exposure.observation_type='flat'",
            "LED_NAME": BLUE}


# -- the campaign file ---------------------------------------------------------------------------
def test_campaign_orders_and_names_them(tmp_path):
    """Both build after the certified ptc, bias, dark and defects; each is certified under its own dataset type
    into a collection of its own, then verified; template names give the product (and band)."""
    from cpframe.campaign.spec import load_campaign
    from tests.test_campaign import SCRAMBLED_STEPS, write_campaign
    from tests.test_lsst_templates import CP_PIPE

    steps = [
        {"name": "verify-anaglyph-g", "kind": "submit", "template": "bps_verify_flat_anaglyph_g.yaml"},
        {"name": "certify-anaglyph-g", "kind": "certify", "dataset_type": "flat_anaglyph", "band": "g"},
        {"name": "anaglyph-g", "kind": "submit",
         "template": str(CP_PIPE / "bps/templates/bps_flat_anaglyph_g.yaml")},  # cp_pipe's own
        {"name": "verify-led", "kind": "submit", "template": "bps_verify_flat_single_led.yaml"},
        {"name": "certify-led", "kind": "certify", "dataset_type": "flat_single_led"},
        {"name": "led", "kind": "submit", "template": "bps_flat_single_led.yaml"},
        *[s for s in SCRAMBLED_STEPS if "flat-g" not in s["name"]],
    ]
    camp = load_campaign(write_campaign(tmp_path, steps, variables=LED_VARS))
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    for before in ("certify-ptc", "certify-bias", "certify-dark", "certify-defects"):
        assert pos[before] < pos["anaglyph-g"] and pos[before] < pos["led"], before
    assert pos["anaglyph-g"] < pos["certify-anaglyph-g"] < pos["verify-anaglyph-g"] < pos["report"]
    assert pos["led"] < pos["certify-led"] < pos["verify-anaglyph-g"]
    assert ("certify-dark", "flat_anaglyph needs dark") in camp.after["anaglyph-g"]
    build, cert, verify = camp.step("anaglyph-g"), camp.step("certify-anaglyph-g"), camp.step("verify-anaglyph-g")
    assert (build.builds, build.band, verify.verifies, verify.band) == ("flat_anaglyph", "g", "flat_anaglyph", "g")
    assert build.gen_output.endswith("/test/flatAnaglyphGen-g.20250101a") and build.registry_type == "flat"
    assert cert.input == build.gen_output and cert.registry_type == "flat"
    assert cert.output.endswith("/test/flatAnaglyph-g.20250102a")
    assert verify.gen_output.endswith("/test/verifyFlatAnaglyph-g.20250103a")
    led, cled = camp.step("led"), camp.step("certify-led")
    assert (led.led, led.registry_type, cled.led, cled.registry_type) == (BLUE, f"flat_{BLUE}", BLUE, f"flat_{BLUE}")
    assert led.gen_output.endswith(f"/test/flatGen-white-{BLUE}.20250101a") and cled.input == led.gen_output
    assert cled.output.endswith(f"/test/flat_{BLUE}.20250102a")
    vled = camp.step("verify-led")  # tests/test_single_led_verify.py runs it
    assert pos["certify-led"] < pos["verify-led"] < pos["report"]
    assert (vled.verifies, vled.led) == ("flat_single_led", BLUE)
    assert vled.gen_output.endswith(f"/test/verifyFlatSingleLed-{BLUE}.20250103a")
    # cp_pipe's single-LED template: its own output name (every LED into flatGen-white)
    camp = load_campaign(write_campaign(tmp_path, [
        {"name": "led", "kind": "submit", "template": str(CP_PIPE / "bps/templates/bps_flat_singleled_white.yaml")},
        {"name": "certify-led", "kind": "certify", "dataset_type": "flat_single_led", "led": BLUE}],
        variables=LED_VARS, name="cp.yaml"))
    assert camp.step("led").gen_output.endswith("/test/flatGen-white.20250101a")
    assert camp.step("certify-led").input == camp.step("led").gen_output


def test_bad_combinations_are_refused(tmp_path):
    """A plain and an anaglyph flat of one band certified into one chain, two LEDs into cp_pipe's one output chain,
    a single-LED step without its LED: each a clear error naming the steps and what to do."""
    from cpframe.campaign.spec import load_campaign
    from tests.test_campaign import write_campaign
    from tests.test_lsst_templates import CP_PIPE

    both = [{"name": "flat-g", "kind": "submit", "template": "bps_flat_g.yaml"},
            {"name": "certify-flat-g", "kind": "certify", "dataset_type": "flat", "band": "g"},
            {"name": "anaglyph-g", "kind": "submit", "template": "bps_flat_anaglyph_g.yaml"},
            {"name": "certify-anaglyph-g", "kind": "certify", "dataset_type": "flat_anaglyph", "band": "g"}]
    with pytest.raises(CampaignError, match=r"steps 'certify-flat-g', 'certify-anaglyph-g' certify both a flat and "
                                            r"an anaglyph flat of band g into u/tester/LSSTComCam/calib/DM-1: .* "
                                            r"give one certify step 'chain: false'"):
        load_campaign(write_campaign(tmp_path, both, variables=LED_VARS))
    both[3]["chain"] = False  # certified into its own collection only: allowed
    camp = load_campaign(write_campaign(tmp_path, both, variables=LED_VARS, name="b.yaml"))
    assert camp.step("certify-anaglyph-g").chain is None
    real = str(CP_PIPE / "bps/templates/bps_flat_singleled_white.yaml")
    two = [{"name": "led-blue", "kind": "submit", "template": real},
           {"name": "led-red", "kind": "submit", "template": real, "vars": {"LED_NAME": RED}}]
    with pytest.raises(CampaignError, match=rf"steps 'led-blue', 'led-red' build single-LED flats of LEDs {BLUE}, "
                                            rf"{RED} into one output chain .*/flatGen-white.20250101a; .*Use cpframe's "
                                            r"templates/bps_flat_single_led.yaml"):
        load_campaign(write_campaign(tmp_path, two, variables=LED_VARS, name="c.yaml"))
    two[0]["template"] = two[1]["template"] = "bps_flat_single_led.yaml"
    camp = load_campaign(write_campaign(tmp_path, two, variables=LED_VARS, name="d.yaml"))
    assert {camp.step("led-blue").led, camp.step("led-red").led} == {BLUE, RED}
    no_led = {k: v for k, v in LED_VARS.items() if k != "LED_NAME"}
    with pytest.raises(CampaignError, match=r"step 'led': a flat_single_led step needs the LED's name: set LED_NAME "
                                            r"under the step's 'vars:'.*\n.*step 'c': a flat_single_led step needs "
                                            r"the LED's name: set 'led: <name>'"):
        load_campaign(write_campaign(tmp_path, [
            {"name": "led", "kind": "submit", "template": "bps_flat_single_led.yaml"},
            {"name": "c", "kind": "certify", "dataset_type": "flat_single_led"}], variables=no_led, name="e.yaml"))


# -- a campaign on a mini simulated camera -------------------------------------------------------
def _beta(image, base, colour):
    good = (base > 0.5 * np.median(base)) & np.isfinite(image)
    rr, cc = image[good] / base[good], colour[good]
    return float(np.cov(rr, cc)[0, 1] / np.var(cc) / np.mean(rr))


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the truth PTC (inputs of the chains) has no ramp
def test_campaign_builds_certifies_verifies_and_reports_them(tmp_path, local_dask, monkeypatch):
    """On the 9 mini ComCam detectors: 3 g flats per LED (blue, red), 2 plain g flats (the anaglyph verification's
    exposures), 2 white flats of the blue LED (its single-LED flat); truth ptc, defects, zero bias and dark and
    the band's flat gradient reference certified beforehand."""
    from cpframe.camera.focal_plane import pixel_to_focal_plane
    from cpframe.camera.led_flats import field_radius_mm, led_params, pixel_colour
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
    from cpframe.campaign.runner import run_campaign
    from cpframe.campaign.spec import load_campaign
    from cpframe.core.model import DatasetType
    from cpframe.science.imageio import read_masked
    from cpframe.verify.results import read_stats
    from tests._run_helpers import INSTRUMENT, RAW_RUN, TICKET, TRUTH_COLLECTION, make_repo, put_certified, \
        truth_isr_calibs

    truth = make_truth(CAM, SEED, qe=False, vignetting=False, flat_gradient=True, led_flats=S, cosmics=False)
    shots = ([("g_01", f"single_led_flat_{BLUE}")] * 3 + [("g_01", f"single_led_flat_{RED}")] * 3
             + [("g_01", "flat")] * 2 + [("empty", f"single_led_flat_{BLUE}")] * 2)
    # the plain g flats at 1 s (~4 900 e-): the anaglyph flat carries the band's colour by design, 1 + beta c with
    # |beta| = 0.2 % here, which plain (lamp) flats lack; at 49 000 e- that is 100 e- per pixel beside 222 e- of
    # photon noise and NOISE fails (measured 1.11 x expected); at 4 900 e-, 10 e- beside 70 e-
    specs = [ExposureSpec(20241110, i + 1, "flat", f, 1.0 if reason == "flat" else 10.0, 10.3,
                          f"2024-11-10T20:{i:02d}:00", reason, "LED", 5000.0) for i, (f, reason) in enumerate(shots)]
    ids = [d.id for d in CAM.science_detectors]
    simulate(specs, tmp_path / "raw", CAM.name, "mini", seed=SEED, detectors=ids, workers=2, truth=truth)
    repo = make_repo(tmp_path / "repo", None, files=[tmp_path / "raw"])
    try:
        items = truth_isr_calibs(tmp_path, truth, CAM, ids)
        items["flat_gradient_reference"] = [(_reference(truth, "g", tmp_path / "ref.json"),
                                             {"instrument": INSTRUMENT, "physical_filter": "g_01"})]
        repo.registry.register_dataset_type(DatasetType("flat_gradient_reference", ("instrument", "physical_filter"),
                                                        True, "json"))
        for dt, its in items.items():
            put_certified(repo, dt, its, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION)
        for k in ("CP_PIPE_DIR", "CP_VERIFY_DIR", "CPFRAME_PIPELINES"):
            monkeypatch.delenv(k, raising=False)
        doc = {"name": "leds", "variables": {
            "USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo.root),
            "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241110a",
            "CERT_RERUN": "20241111a", "VERIFY_RERUN": "20241112a", "START_DATE": "1970-01-01T00:00:00",
            "SCRATCH": str(tmp_path / "scratch"), **LED_VARS},
            "steps": [
                {"name": "report", "kind": "report"},
                {"name": "verify-anaglyph-g", "kind": "submit", "template": "bps_verify_flat_anaglyph_g.yaml"},
                {"name": "certify-anaglyph-g", "kind": "certify", "dataset_type": "flat_anaglyph", "band": "g"},
                {"name": "anaglyph-g", "kind": "submit", "template": "bps_flat_anaglyph_g.yaml"},
                {"name": "certify-led", "kind": "certify", "dataset_type": "flat_single_led"},
                {"name": "led", "kind": "submit", "template": "bps_flat_single_led.yaml"},
            ]}
        path = tmp_path / "campaign.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        camp = load_campaign(path)
        assert [s.name for s in camp.steps] == ["anaglyph-g", "certify-anaglyph-g", "led", "certify-led",
                                                "verify-anaglyph-g", "report"]
        res = run_campaign(camp, client=local_dask.client, echo=lambda line: None)
        assert [o.status for o in res.outcomes] == ["ran"] * 6, [(o.name, o.status, o.detail) for o in res.outcomes]
        reg = repo.registry
        radius = field_radius_mm(CAM)
        pb, pr = led_params(SEED, BLUE, S, radius), led_params(SEED, RED, S, radius)
        # the anaglyph flat: certified as flat (one per detector, filter g_01) in its own collection
        refs = reg.query_certifications(camp.step("certify-anaglyph-g").output, "flat")
        assert len(refs) == len(ids) and {r.data_id["physical_filter"] for r in refs} == {"g_01"}
        assert all(r.run.startswith(camp.step("anaglyph-g").gen_output + "/") for r in refs)
        band = truth.bands["g"]
        betas = []
        for ref in refs:
            d = int(ref.data_id["detector"])
            det = CAM.detector(d)
            m = read_masked(repo.get_path(ref))
            assert m.header["FLATSRC"] == "ANAGLYPH" and m.header["WEIGHT1"] == W
            yy, xx = np.mgrid[0:det.shape[0], 0:det.shape[1]]
            xf, yf = pixel_to_focal_plane(CAM, det, xx, yy)
            base = truth.flat(d, "g") * (1.0 + band["fp_gradient_x"] * xf + band["fp_gradient_y"] * yf)
            betas.append(_beta(m.image, base, pixel_colour(SEED, d, det.shape)))
        beta_true = S * (W * pb["t"] + (1 - W) * pr["t"])
        assert abs(float(np.mean(betas)) - beta_true) < 0.03 * S, (betas, beta_true)
        # the single-LED flat: certified as flat_<LED>, its colour the LED's
        lrefs = reg.query_certifications(camp.step("certify-led").output, f"flat_{BLUE}")
        assert len(lrefs) == len(ids) and {r.data_id["physical_filter"] for r in lrefs} == {"empty"}
        lbetas = [_beta(read_masked(repo.get_path(r)).image, truth.flat(int(r.data_id["detector"]), "white"),
                        pixel_colour(SEED, int(r.data_id["detector"]), CAM.detector(int(r.data_id["detector"])).shape))
                  for r in lrefs]
        assert abs(float(np.mean(lbetas)) - S * pb["t"]) < 0.03 * S, (lbetas, S * pb["t"])
        # the verification: the flat's tests, with the anaglyph flat, on the plain g flats
        out = camp.step("verify-anaglyph-g").gen_output
        (sref,) = reg.query_datasets("verifyFlatAnaglyphSummary", collections=[out])
        summary = read_stats(repo.get_path(sref))
        assert summary["SUCCESS"] is True, summary.get("FAILURES")
        # the report: a section of its own, passing; no "Flat" section (no plain flat here; the truth inputs the
        # output chains hold, ptc and defects, are reported unverified)
        report = res.outcomes[-1].outputs
        assert report["verdicts"]["flat_anaglyph"] is True and "flat" not in report["verdicts"], report["verdicts"]
        index = Path(report["index"]).read_text()
        assert 'id="flat_anaglyph"' in index and "Anaglyph flat" in index and 'id="flat"' not in index
        # run again: every build and certification is found done under its dataset type (flat, flat_m455l4)
        again = run_campaign(camp, resume=True, client=local_dask.client, echo=lambda line: None)
        details = [(o.status, o.detail) for o in again.outcomes]
        assert [o.status for o in again.outcomes][:5] == ["skipped"] * 5, details
        assert details[0][1].endswith(": 9 flat") and details[1][1].startswith("9 flat certified in "), details
        assert details[2][1].endswith(f": 9 flat_{BLUE}") and details[3][1].startswith(f"9 flat_{BLUE} certified")
    finally:
        repo.close()


def test_renamed_flat_of_one_led_is_a_calibration(dmtn222_variables, monkeypatch):
    """cp_pipe's single-LED template renames cpFlatCombine's output to flat_<LED_NAME>: a calibration (the campaign
    certifies it), with cpframe's pipelines and with the stack's; intermediates read by a later task are not."""
    from cpframe.execution.submit import render_stage, validate_stage
    from cpframe.execution.templates import default_templates_dir
    from tests.test_lsst_templates import CP_PIPE, STACK

    real = CP_PIPE / "bps/templates"
    for k in STACK:
        monkeypatch.delenv(k, raising=False)
    for env, template in ((dmtn222_variables, default_templates_dir() / "bps_flat_single_led.yaml"),
                          (dmtn222_variables, real / "bps_flat_singleled_white.yaml"),
                          ({**dmtn222_variables, **STACK}, real / "bps_flat_singleled_white.yaml")):
        _, pipe = validate_stage(render_stage(template, env, environ=env))
        assert pipe.dataset_types[f"flat_{BLUE}"].is_calibration, template
    env = {**dmtn222_variables, **STACK, "INSTRUMENT": "LSSTCam"}
    _, pipe = validate_stage(render_stage(real / "bps_flat_anaglyph_g.yaml", env, environ=env))
    assert pipe.dataset_types["flat"].is_calibration and not pipe.dataset_types["flat_blue"].is_calibration
