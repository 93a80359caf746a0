"""Verification of single-LED flats (stage FLAT_SINGLE_LED; docs/verification.md "FLAT_SINGLE_LED").

The verification ISR reads ``flat_<LED_NAME>`` as its flat (templates/bps_verify_flat_single_led.yaml renames the
ISR's flat connection, as cp_verify renames connections), on that LED's own flats.  Truth (the simulator's
``led_flats`` effect, cpframe/camera/led_flats.py): the LED's flat is the band's flat times the LED's response
factor L; certified as ``flat_<LED>``, it passes; the other LED's (its colour 1 + s t c differs by
s (t_blue - t_red) ~ 2.9 % per pixel, its plane by 2 % over the field) fails NOISE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_anaglyph import BLUE, CAM, RED, SEED, S

VARS = {"SELECTION_FLAT_white_V": "instrument='LSSTComCam' and exposure.observation_type='flat'", "LED_NAME": BLUE}


def test_pipeline_reads_the_led_flat_as_its_flat(dmtn222_variables):
    """The template's ``--config verifyFlatSingleLedIsr:connections.flat=flat_<LED>``: the ISR requires flat_<LED>
    (a calibration with a flat's dimensions), the calibration under test; other renames are refused by name."""
    from cpframe.core.errors import PipelineError
    from cpframe.execution.pipeline import load_pipeline
    from cpframe.execution.submit import render_stage, validate_stage
    from cpframe.execution.templates import default_pipelines_dir, default_templates_dir

    env = {**dmtn222_variables, **VARS}
    _, pipe = validate_stage(render_stage(default_templates_dir() / "bps_verify_flat_single_led.yaml", env,
                                          environ=env))
    isr = pipe.task("verifyFlatSingleLedIsr")
    assert f"flat_{BLUE}" in isr.calibrations and "flat" not in isr.calibrations
    assert isr.calibration_connections == (("flat", f"flat_{BLUE}"),) and pipe.verifies == f"flat_{BLUE}"
    dt = pipe.dataset_types[f"flat_{BLUE}"]
    assert dt.is_calibration and dt.dimensions == ("instrument", "detector", "physical_filter")
    path = default_pipelines_dir() / "verifyFlatSingleLed.yaml"
    with pytest.raises(PipelineError, match=r"connections.ptc: cpframe pipelines rename only the output "
                                            r"\(connections.output\) and an isr task's calibration inputs "
                                            r"\(bias, dark, flat\)"):
        load_pipeline(path, overrides=[("verifyFlatSingleLedIsr", "connections.ptc", "ptc_x")])


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_truth_led_flat_passes_the_other_leds_fails(tmp_path, local_dask, monkeypatch):
    """9 mini ComCam detectors, 2 white flats of the blue LED; truth ptc, defects, zero bias and dark certified.
    Campaign 1 verifies the truth blue flat certified as flat_<blue>: passes, and the report shows a
    "Single-LED flat" section; campaign 2 the red LED's truth flat certified as flat_<blue>: NOISE fails."""
    from cpframe.camera.led_flats import response_factor
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
    from cpframe.campaign.runner import run_campaign
    from cpframe.campaign.spec import load_campaign
    from cpframe.core.model import DatasetType
    from cpframe.science.imageio import write_masked
    from cpframe.verify.results import read_stats
    from tests._run_helpers import INSTRUMENT, RAW_RUN, TICKET, TRUTH_COLLECTION, make_repo, put_certified, \
        write_truth_defects, write_truth_ptc

    truth = make_truth(CAM, SEED, qe=False, vignetting=False, flat_gradient=True, led_flats=S, cosmics=False)
    specs = [ExposureSpec(20241110, i + 1, "flat", "empty", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00",
                          f"single_led_flat_{BLUE}", "LED", 5000.0) for i in range(2)]
    ids = [d.id for d in CAM.science_detectors]
    simulate(specs, tmp_path / "raw", CAM.name, "mini", seed=SEED, detectors=ids, workers=2, truth=truth)
    repo = make_repo(tmp_path / "repo", None, files=[tmp_path / "raw"])
    try:
        items: dict[str, list] = {"ptc": [], "defects": [], "bias": [], "dark": []}
        flats: dict[str, list] = {BLUE: [], RED: []}
        for d in ids:
            det = CAM.detector(d)
            did = {"instrument": INSTRUMENT, "detector": d}
            z, zm = np.zeros(det.shape, np.float32), np.zeros(det.shape, np.int32)
            head = {"INSTRUME": CAM.name, "DETECTOR": d, "CAMSCALE": "mini", "LSST ISR UNITS": "electron"}
            items["ptc"].append((write_truth_ptc(tmp_path / f"ptc{d}.fits", truth, d), did))
            items["defects"].append((write_truth_defects(tmp_path / f"def{d}.ecsv", truth, d), did))
            items["bias"].append((write_masked(tmp_path / f"bias{d}.fits", z, zm, z + 1.0, head), did))
            items["dark"].append((write_masked(tmp_path / f"dark{d}.fits", z, zm, z, head), did))
            for led in (BLUE, RED):  # the LED's truth flat: the band's flat x L_led (dead pixels: 1, masked anyway)
                f = truth.flat(d, "white") * response_factor(truth, det, f"single_led_flat_{led}")
                f = np.where(f > 0.05, f, 1.0).astype(np.float32)
                flats[led].append((write_masked(tmp_path / f"flat_{led}{d}.fits", f, zm, z, head),
                                   {**did, "physical_filter": "empty"}))
        for dt, its in items.items():
            put_certified(repo, dt, its, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION)
        repo.registry.register_dataset_type(DatasetType(f"flat_{BLUE}", ("instrument", "detector", "physical_filter"),
                                                        True, "fits-masked"))
        for led in (BLUE, RED):  # both certified as flat_<blue>, each into a collection of its own
            put_certified(repo, f"flat_{BLUE}", flats[led], f"truth/{led}-run", f"truth/{led}")
        for k in ("CP_PIPE_DIR", "CP_VERIFY_DIR", "CPFRAME_PIPELINES"):
            monkeypatch.delenv(k, raising=False)
        results = {}
        for n, led in enumerate((BLUE, RED)):
            doc = {"name": f"verify-{led}", "variables": {
                "USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo.root),
                "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": f"truth/{led},{TRUTH_COLLECTION}", "TAG": "test",
                "RERUN": "20241110a", "CERT_RERUN": "20241111a", "VERIFY_RERUN": f"2024111{2 + n}a",
                "START_DATE": "1970-01-01T00:00:00", "SCRATCH": str(tmp_path / "scratch"), **VARS},
                "steps": [{"name": "report", "kind": "report"},
                          {"name": "verify-led", "kind": "submit", "template": "bps_verify_flat_single_led.yaml"}]}
            path = tmp_path / f"campaign-{led}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            camp = load_campaign(path)
            step = camp.step("verify-led")
            assert (step.verifies, step.led) == ("flat_single_led", BLUE)
            assert step.gen_output.endswith(f"/test/verifyFlatSingleLed-{BLUE}.2024111{2 + n}a")
            res = run_campaign(camp, client=local_dask.client, echo=lambda line: None)
            assert [o.status for o in res.outcomes] == ["ran"] * 2, [(o.name, o.status, o.detail)
                                                                    for o in res.outcomes]
            (sref,) = repo.registry.query_datasets("verifyFlatSingleLedSummary", collections=[step.gen_output])
            results[led] = (read_stats(repo.get_path(sref)), res.outcomes[-1].outputs)
        good, report = results[BLUE]
        assert good["SUCCESS"] is True, good.get("FAILURES")
        assert report["verdicts"]["flat_single_led"] is True, report["verdicts"]
        index = Path(report["index"]).read_text()
        assert 'id="flat_single_led"' in index and "Single-LED flat" in index and 'id="flat"' not in index
        bad, report = results[RED]
        assert bad["SUCCESS"] is False and "NOISE" in str(bad["FAILURES"]), bad.get("FAILURES")
        assert report["verdicts"]["flat_single_led"] is False, report["verdicts"]
    finally:
        repo.close()
