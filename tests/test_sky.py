"""Sky frames (issue 13 item 5): simulator truth, the four cpSky steps, the science-side subtraction,
verification, and the real cp_pipe bps_sky template run unchanged on a simulated repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpframe.camera import sky as csky
from cpframe.core.errors import ConfigError, UserInputError

SEED = 31
FILTER = "r_03"
N_EXP = 6
AMP = 0.02
#: stated tolerance (docs/sky.md): rms of (frame - truth), both in 32 px bins, below 5 % of the truth's rms
#: (mini LSSTComCam, 9 detectors, 6 exposures of 200 e-/s x 30 s sky)
TRUTH_FRACTION = 0.05


def _specs(first=100, n=N_EXP):
    from cpframe.camera.plan import ExposureSpec

    return [ExposureSpec(20241110, first + i, "science", FILTER, 30.0, 30.0, f"2024-11-10T03:{i:02d}:00",
                         observation_reason="science", flux=200.0) for i in range(n)]


def _truth(camera):
    from cpframe.camera.truth import make_truth

    return make_truth(camera, SEED, sky_frame=True, cosmics=False, dark_current=False, bias_pattern=False,
                      defects=False, manual_defects=False)


def _binned(image, n=32):
    from cpframe.science.sky import _block_stat

    return _block_stat(image, np.ones(image.shape, bool), n, n, 99.0, 1)


@pytest.fixture(scope="module")
def sky_data(tmp_path_factory):
    """6 science exposures (+1 held out) of the 9 mini LSSTComCam detectors with the sky pattern, ISR'd with the
    truth flat and PTC."""
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import simulate
    from cpframe.science.imageio import read_header, write_masked
    from cpframe.science.isr import isr_config_for, isr_file
    from tests._run_helpers import write_truth_ptc

    root = tmp_path_factory.mktemp("sky")
    cam = load_camera("LSSTComCam", "mini")
    truth = _truth(cam)
    raws = sorted(simulate(_specs(n=N_EXP + 1), root / "raw", "LSSTComCam", scale="mini", seed=SEED, truth=truth,
                           workers=1))
    calibs = {}
    for det in cam.detectors:
        shape = det.shape
        flat = write_masked(root / f"flat{det.id}.fits", truth.flat(det.id, "r").astype(np.float32),
                            np.zeros(shape, np.int32), np.zeros(shape, np.float32), {"LSST ISR UNITS": "electron"})
        calibs[det.id] = {"flat": flat, "ptc": write_truth_ptc(root / f"ptc{det.id}.fits", truth, det.id)}
    cfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False)
    isr = {}
    by_name = {d.name: d.id for d in cam.detectors}
    for p in raws:
        h = read_header(p)
        d, e = by_name[f"{h['RAFTBAY']}_{h['CCDSLOT']}"], int(h["SEQNUM"])
        out = root / f"isr_{e}_{d}.fits"
        isr_file(p, out, cfg, calibs[d], camera=cam)
        isr[(e, d)] = out
    return {"root": root, "camera": cam, "truth": truth, "raws": raws, "isr": isr, "calibs": calibs}


def _frames(sky_data, config=None):
    from cpframe.science import sky as ssky
    from cpframe.science.imageio import read_masked

    cam, cfg = sky_data["camera"], config or ssky.SkyConfig()
    held_out = 100 + N_EXP
    masked, per_exp = {}, {}
    for (e, d), path in sorted(sky_data["isr"].items()):
        if e == held_out:
            continue
        masked[(e, d)], bg = ssky.sky_image(read_masked(path), cam, cam.detector(d), cfg)
        per_exp.setdefault(e, []).append(bg)
    scales = {e: ssky.scale_measure(v, cfg) for e, v in per_exp.items()}
    residuals: dict[int, list] = {}
    for (e, d), m in masked.items():
        residuals.setdefault(d, []).append(ssky.subtract_background(m, cam, cam.detector(d), scales[e], cfg))
    out = {}
    for d, res in residuals.items():
        out[d] = ssky.combine_sky(res, sky_data["root"] / f"sky{d}.fits", cfg, {"FILTER": FILTER})["path"]
    return out, scales


# ------------------------------------------------------------------------------------------
# simulator
# ------------------------------------------------------------------------------------------
def test_sky_pattern_is_zero_mean_unit_rms_and_only_in_science_exposures():
    from cpframe.camera.models import load_camera

    cam = load_camera("LSSTComCam", "mini")
    det = cam.detector(4)
    s = csky.sky_pattern(SEED, 4, det.shape)
    assert abs(s.mean()) < 1e-12 and abs(s.std() - 1) < 1e-12
    assert not np.allclose(s, csky.sky_pattern(SEED, 5, det.shape))
    sci, flat = _specs(n=1)[0], _specs(n=1)[0].__class__(**{**_specs(n=1)[0].__dict__, "observation_type": "flat"})
    assert csky.extra_sky(cam, det, flat, SEED, AMP) is None and csky.extra_sky(cam, det, sci, SEED, 0.0) is None
    extra = csky.extra_sky(cam, det, sci, SEED, AMP)
    lev, _, _ = csky.exposure_sky(SEED, sci.day_obs, sci.seq_num)
    # the detector mean is the level and the gradient at the detector centre (pattern zero mean; centre at 0 mm)
    assert extra.mean() == pytest.approx(sci.flux * lev, rel=1e-3, abs=0.05)


# ------------------------------------------------------------------------------------------
# the four steps against the truth; the science-side subtraction
# ------------------------------------------------------------------------------------------
def test_sky_frame_matches_the_injected_truth(sky_data):
    from cpframe.science.imageio import read_masked

    frames, scales = _frames(sky_data)
    assert len(frames) == 9
    for d, path in frames.items():
        f = read_masked(path)
        shape = sky_data["camera"].detector(d).shape
        truth = _binned(csky.sky_frame_truth(SEED, d, shape, AMP))
        assert f.image.shape == truth.shape == (16, 16)
        rms = float(np.sqrt(np.mean((f.image - truth) ** 2)))
        assert rms < TRUTH_FRACTION * float(truth.std()), (d, rms)
        assert f.header["LSST SKY NEXP"] == N_EXP and f.header["LSST SKY VERIFY SUCCESS"] is True
    # the scales follow the exposures' sky levels (ratios: the flat's normalisation cancels)
    got = {e: s["backgrounds"]["homogeneous"]["scale"] for e, s in scales.items()}
    want = {e: 1 + csky.exposure_sky(SEED, 20241110, e)[0] for e in got}
    for e, g in got.items():
        assert g / got[100] == pytest.approx(want[e] / want[100], rel=0.005)


def test_subtract_sky_removes_the_pattern_from_a_held_out_exposure(sky_data):
    from cpframe.science.imageio import read_masked
    from cpframe.science.sky import subtract_sky

    frames, _ = _frames(sky_data)
    d = 4
    img = read_masked(sky_data["isr"][(100 + N_EXP, d)])
    shape = img.image.shape
    pattern = _binned(csky.sky_frame_truth(SEED, d, shape, AMP))
    before = _binned(img.image.astype(np.float64))
    corrected, amp = subtract_sky(img, read_masked(frames[d]))
    after = _binned(corrected)
    level = float(np.median(before))
    # amplitude = the exposure's sky level (the frame is in units of it)
    assert amp == pytest.approx(level, rel=0.02)

    def detrended_rms(b):  # what is left once a plane (the focal-plane background) is removed
        jj, ii = np.indices(b.shape)
        a = np.column_stack([np.ones(b.size), ii.ravel(), jj.ravel()])
        return float(np.std(b.ravel() - a @ np.linalg.lstsq(a, b.ravel(), rcond=None)[0]))
    assert detrended_rms(before) > 0.5 * AMP * level
    assert detrended_rms(after) < 0.1 * detrended_rms(before)
    assert float(np.std(pattern)) > 0


def test_sky_verification_fails_a_noisy_frame(sky_data, tmp_path):
    from cpframe.science.sky import SkyConfig, combine_sky
    from cpframe.verify import verify_calib

    det = sky_data["camera"].detector(4)
    frames, _ = _frames(sky_data)
    good = verify_calib("SKY", frames[4], det, data_id={"instrument": "LSSTComCam", "detector": 4,
                                                        "physical_filter": FILTER})
    assert (good["VERIFY"]["DET"]["NOISE"], good["VERIFY"]["DET"]["COVERAGE"], good["SUCCESS"]) == (True, True, True)
    rng = np.random.default_rng(1)  # three exposures whose residuals scatter by 5 % of the sky: a useless frame
    res = [{"bins": rng.normal(0, 0.05, (16, 16)).tolist(), "x_bin_size": 32, "y_bin_size": 32,
            "shape": [500, 512], "scale": 1.0} for _ in range(3)]
    combine_sky(res, tmp_path / "noisy.fits", SkyConfig(), {"FILTER": FILTER})
    bad = verify_calib("SKY", tmp_path / "noisy.fits", det, data_id={"instrument": "LSSTComCam", "detector": 4,
                                                                    "physical_filter": FILTER})
    assert bad["VERIFY"]["DET"]["NOISE"] is False and bad["SUCCESS"] is False


def test_campaign_orders_sky_and_fringe_after_the_flat(tmp_path):
    from cpframe.campaign.spec import load_campaign
    from tests.test_campaign import SCRAMBLED_STEPS, write_campaign
    from tests.test_lsst_templates import CP_PIPE

    steps = [
        {"name": "verify-sky", "kind": "submit", "template": "bps_verify_sky.yaml"},
        {"name": "certify-sky", "kind": "certify", "dataset_type": "sky"},
        {"name": "sky", "kind": "submit", "template": str(CP_PIPE / "bps/templates/bps_sky.yaml")},  # cp_pipe's
        {"name": "fringe", "kind": "submit", "template": "bps_fringe.yaml"},
        {"name": "certify-fringe", "kind": "certify", "dataset_type": "fringe"},
        *SCRAMBLED_STEPS,
    ]
    sel = "instrument='LSSTComCam' and exposure.observation_type='science'"
    camp = load_campaign(write_campaign(tmp_path, steps, variables={
        "SELECTION_SKY": sel, "SELECTION_SKY_V": sel, "SELECTION_FRINGE": sel}))
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    for step in ("sky", "fringe"):
        assert max(pos["certify-flat-g"], pos["certify-dark"], pos["certify-ptc"]) < pos[step]
    assert pos["sky"] < pos["certify-sky"] < pos["verify-sky"] and pos["fringe"] < pos["certify-fringe"]
    assert camp.steps[pos["sky"]].builds == "sky" and camp.steps[pos["fringe"]].builds == "fringe"
    assert camp.steps[pos["fringe"]].gen_output.rsplit("/", 1)[-1] == "fringeGen.20250101a"


def test_user_errors_are_one_line():
    from cpframe.science.sky import SkyConfig, combine_sky, scale_measure

    with pytest.raises(ConfigError, match=r"unknown sky option\(s\) 'maskThres'"):
        SkyConfig.from_dict({"maskThres": 3})
    with pytest.raises(ConfigError, match=r"sky option x_bin_size = 0 must be positive"):
        SkyConfig.from_dict({"sky.background.xBinSize": 0})
    with pytest.raises(UserInputError, match=r"no detector of the exposure has unmasked pixels"):
        scale_measure([{"samples": []}], SkyConfig())
    with pytest.raises(UserInputError, match=r"no residual backgrounds to combine"):
        combine_sky([], "/nonexistent/x.fits", SkyConfig())
    for e in (ConfigError, UserInputError):
        assert "\n" not in str(e("x"))


# ------------------------------------------------------------------------------------------
# the real template, unchanged, on a simulated repository
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", [True, False], ids=["stack-set", "stack-unset"])
def test_real_bps_sky_runs_unchanged(sky_data, tmp_path, local_dask, monkeypatch, stack):
    """cp_pipe's bps_sky.yaml (LSSTComCam cpSky.yaml with the stack set; cpframe's pipelines/cpSky.yaml without)
    on raws with the sky pattern: one sky per detector matching the truth, verification passes."""
    from cpframe.execution.submit import submit_template
    from cpframe.science.imageio import read_masked, write_masked
    from tests._run_helpers import (
        INSTRUMENT,
        TICKET,
        TRUTH_COLLECTION,
        certify_truth_calibs,
        make_repo,
        put_certified,
        variables,
    )
    from tests.test_lsst_templates import CP_PIPE, STACK

    class _Data:  # what make_repo/variables read
        root = sky_data["root"] / "raw"
        plan = type("P", (), {"selections": {}})()

    cam, truth = sky_data["camera"], sky_data["truth"]
    repo = make_repo(tmp_path / "repo", _Data)
    try:
        dets = [d.id for d in cam.detectors]
        certify_truth_calibs(repo, truth, dets, tmp_path / "calibs")
        for name in ("bias", "dark"):
            items = []
            for d in cam.detectors:
                z = np.zeros(d.shape, np.float32)
                items.append((write_masked(tmp_path / f"{name}{d.id}.fits", z, z.astype(np.int32), z,
                                           {"LSST ISR UNITS": "electron", "DARKTIME": 1.0}),
                              {"instrument": INSTRUMENT, "detector": d.id}))
            put_certified(repo, name, items, f"{TRUTH_COLLECTION}/{name}-run", TRUTH_COLLECTION)
        flats = []
        for d in cam.detectors:
            f = read_masked(sky_data["calibs"][d.id]["flat"])
            flats.append((write_masked(tmp_path / f"flat{d.id}.fits", f.image, f.mask, f.variance, f.header),
                          {"instrument": INSTRUMENT, "detector": d.id, "physical_filter": FILTER}))
        put_certified(repo, "flat", flats, f"{TRUTH_COLLECTION}/flat-run", TRUTH_COLLECTION)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        sel = f"instrument='{INSTRUMENT}' and exposure.observation_type='science' and exposure.seq_num < {100 + N_EXP}"
        env = {**variables(repo.root, tmp_path / "scratch", _Data, SELECTION_SKY=sel), **(STACK if stack else {})}
        for k in STACK:
            monkeypatch.delenv(k, raising=False)
        for k, v in (STACK.items() if stack else ()):
            monkeypatch.setenv(k, v)
        res = submit_template(CP_PIPE / "bps/templates/bps_sky.yaml", environ=env, client=local_dask.client,
                              argv=["cpframe", "submit"])
        assert res.counts.get("sky") == 9, res.counts
        for ref in repo.registry.query_datasets("sky", collections=[res.run]):
            assert ref.data_id["physical_filter"] == FILTER
            f = read_masked(repo.get_path(ref))
            d = int(ref.data_id["detector"])
            t = _binned(csky.sky_frame_truth(SEED, d, cam.detector(d).shape, AMP))
            assert float(np.sqrt(np.mean((f.image - t) ** 2))) < TRUTH_FRACTION * float(t.std())
        if not stack:  # certify, then cpframe's SKY verification and the report (stack-independent: once)
            from tests._run_helpers import certify_run, ticket_chain_add, verify_and_report

            cert = f"{INSTRUMENT}/calib/{TICKET}/sky.20241110a"
            certify_run(repo, res.run, "sky", cert)
            ticket_chain_add(repo, cert)
            _, _, page = verify_and_report(repo, Path(__file__).parents[1] / "templates/bps_verify_sky.yaml",
                                           {**env, "SELECTION_SKY_V": sel}, local_dask.client, res.run, "sky",
                                           "verifySkySummary", tmp_path / "report")
            assert "Sky frame" in page
    finally:
        repo.close()


def test_real_pipeline_maps_onto_the_kinds_and_names_a_misspelt_field():
    from cpframe.core.errors import PipelineError
    from cpframe.execution.pipeline import load_pipeline
    from tests.test_lsst_templates import CP_PIPE, STACK

    path = CP_PIPE / "pipelines/LSSTCam/cpSky.yaml"
    pipe = load_pipeline(path, environ=STACK)
    assert [(t.kind, t.inputs, t.outputs) for t in pipe.tasks] == [
        ("isr", ("raw",), ("cpSkyIsrExp",)),
        ("skyImage", ("cpSkyIsrExp",), ("cpSkyMaskedIsrExp", "cpSkyDetectorBackground")),
        ("skyScaleMeasure", ("cpSkyDetectorBackground",), ("cpSkyExpBackground", "cpSkyExpScale")),
        ("skySubtractBackground", ("cpSkyMaskedIsrExp", "cpSkyExpBackground"), ("cpSkyExpResidualBackground",)),
        ("skyCombine", ("cpSkyExpResidualBackground",), ("sky",))]
    assert pipe.task("cpSkyScaleMeasure").config["includeAlternateBackground"] is True
    assert pipe.task("cpSkyImage").config["largeScaleBackground.xSize"] == 40.96
    with pytest.raises(PipelineError, match=r"unknown config field 'maskThres' for CpSkyImageTask "
                                            r"\(did you mean 'maskThresh'\?\)"):
        load_pipeline(path, environ=STACK, overrides=[("cpSkyImage", "maskThres", 3.0)])
