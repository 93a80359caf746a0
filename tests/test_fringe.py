"""Fringe frames (issue 13 item 5, red bands): simulator truth, CpFringeTask's preparation + combine, ISR's
doFringe against the injected fringes, and cpframe's bps_fringe template on a simulated repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpframe.camera import fringe as cfr
from cpframe.core.errors import ConfigError, UserInputError

SEED = 37
DET = 4
FILTER = "z_03"
N_EXP = 8
STRENGTH = 0.02
#: stated tolerances (docs/fringe.md), mini LSSTComCam, 8 exposures of 200 e-/s x 30 s sky:
#: the combined frame is  k x F  with rms(frame - k F) in 4 x 4 px block means < 10 % of rms(k F) and k = STRENGTH x mean(a_e) within 5 %;
#: ISR with doFringe leaves < 5 % of an exposure's injected fringe amplitude
FRAME_FRACTION = 0.10
SCALE_REL = 0.05
RESIDUAL_FRACTION = 0.05


def _specs(first=100, n=N_EXP, physical_filter=FILTER):
    from cpframe.camera.plan import ExposureSpec

    return [ExposureSpec(20241110, first + i, "science", physical_filter, 30.0, 30.0, f"2024-11-10T03:{i:02d}:00",
                         observation_reason="science", flux=200.0) for i in range(n)]


def _truth(camera):
    from cpframe.camera.truth import make_truth

    return make_truth(camera, SEED, fringe=True, cosmics=False, dark_current=False, bias_pattern=False,
                      defects=False, manual_defects=False)


@pytest.fixture(scope="module")
def fringe_data(tmp_path_factory):
    """N_EXP + 1 z-band science exposures of detector 4 with fringes, ISR'd with the truth flat and PTC (no fringe
    correction)."""
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import simulate
    from cpframe.science.imageio import write_masked
    from cpframe.science.isr import isr_config_for, isr_file
    from tests._run_helpers import write_truth_ptc

    root = tmp_path_factory.mktemp("fringe")
    cam = load_camera("LSSTComCam", "mini")
    truth = _truth(cam)
    raws = sorted(simulate(_specs(n=N_EXP + 1), root / "raw", "LSSTComCam", scale="mini", seed=SEED,
                           detectors=[DET], truth=truth, workers=1))
    shape = cam.detector(DET).shape
    flat = write_masked(root / "flat.fits", truth.flat(DET, "z").astype(np.float32), np.zeros(shape, np.int32),
                        np.zeros(shape, np.float32), {"LSST ISR UNITS": "electron"})
    calibs = {"flat": flat, "ptc": write_truth_ptc(root / "ptc.fits", truth, DET)}
    cfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False)
    isr = [isr_file(p, root / f"isr{i}.fits", cfg, calibs, camera=cam) and root / f"isr{i}.fits"
           for i, p in enumerate(raws)]
    return {"root": root, "camera": cam, "truth": truth, "raws": raws, "isr": isr, "calibs": calibs, "shape": shape}


def _frame(fringe_data, out):
    from cpframe.science.combine import CombineConfig, combine_files
    from cpframe.science.fringe import FringeConfig, fringe_measure
    from cpframe.science.imageio import read_masked, write_masked

    paths = []
    for i, p in enumerate(fringe_data["isr"][:N_EXP]):
        m = fringe_measure(read_masked(p), FringeConfig())
        paths.append(write_masked(fringe_data["root"] / f"meas{i}.fits", m.image, m.mask, m.variance, m.header))
    combine_files(paths, out, CombineConfig(calibration_type="fringe", dataset_type="fringe",
                                            exposure_scaling="Unity"))
    return read_masked(out)


def _blocks(image, n=4):
    """n x n block means (the frame's pixel noise, 0.5 % of the sky per pixel here, averaged down)."""
    r, c = (image.shape[0] // n) * n, (image.shape[1] // n) * n
    return np.asarray(image, np.float64)[:r, :c].reshape(r // n, n, c // n, n).mean(axis=(1, 3))


def _fit(image, pattern):
    a = pattern.ravel()
    return float(a @ image.ravel() / (a @ a))


# ------------------------------------------------------------------------------------------
def test_fringes_only_in_red_science_exposures():
    from cpframe.camera.models import load_camera

    det = load_camera("LSSTComCam", "mini").detector(DET)
    f = cfr.fringe_pattern(SEED, DET, "z", det.shape)
    assert abs(f.mean()) < 1e-12 and abs(f.std() - 1) < 1e-12
    assert not np.allclose(f, cfr.fringe_pattern(SEED, DET, "i", det.shape))
    sci = _specs(n=1)[0]
    assert cfr.add_fringes(None, det, _specs(n=1, physical_filter="r_03")[0], "r", SEED, STRENGTH) is None
    assert cfr.add_fringes(None, det, sci, "z", SEED, 0.0) is None
    got = cfr.add_fringes(None, det, sci, "z", SEED, STRENGTH)
    a = cfr.fringe_scale(SEED, sci.day_obs, sci.seq_num)
    assert 0.7 <= a <= 1.3
    np.testing.assert_allclose(got, STRENGTH * sci.flux * a * f, rtol=1e-5, atol=1e-4)


def test_fringe_frame_matches_the_injected_pattern(fringe_data):
    fr = _frame(fringe_data, fringe_data["root"] / "fringe.fits")
    pattern = cfr.fringe_pattern(SEED, DET, "z", fringe_data["shape"])
    k = _fit(fr.image.astype(np.float64), pattern)
    mean_a = np.mean([cfr.fringe_scale(SEED, 20241110, 100 + i) for i in range(N_EXP)])
    assert k == pytest.approx(STRENGTH * mean_a, rel=SCALE_REL)
    assert float(np.std(_blocks(fr.image - k * pattern))) < FRAME_FRACTION * k


def test_isr_do_fringe_removes_the_fringes_of_a_held_out_exposure(fringe_data, tmp_path):
    from cpframe.science.imageio import read_masked
    from cpframe.science.isr import isr_config_for, isr_file

    frame = fringe_data["root"] / "fringe_isr.fits"
    _frame(fringe_data, frame)
    raw = fringe_data["raws"][N_EXP]  # not in the frame
    pattern = cfr.fringe_pattern(SEED, DET, "z", fringe_data["shape"])
    injected = STRENGTH * cfr.fringe_scale(SEED, 20241110, 100 + N_EXP)
    calibs = {**fringe_data["calibs"], "fringe": frame}
    cfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False, do_fringe=True,
                         fringe_filters=("z",))
    isr_file(raw, tmp_path / "with.fits", cfg, calibs, camera=fringe_data["camera"])
    without = read_masked(fringe_data["isr"][N_EXP]).image.astype(np.float64)
    got = read_masked(tmp_path / "with.fits")
    level = float(np.median(without))
    assert _fit(without - without.mean(), pattern) / level == pytest.approx(injected, rel=0.1)
    left = _fit(got.image.astype(np.float64) - got.image.mean(), pattern) / level
    assert abs(left) < RESIDUAL_FRACTION * injected, (left, injected)
    assert got.header["LSST ISR FRINGE AMPLITUDE"] > 0
    # a filter not in fringe.filters is left alone (ip_isr checkFilter)
    isr_file(raw, tmp_path / "other.fits", isr_config_for("science", do_bias=False, do_dark=False, do_defect=False,
                                                          do_fringe=True, fringe_filters=("i",)),
             calibs, camera=fringe_data["camera"])
    assert "LSST ISR FRINGE AMPLITUDE" not in read_masked(tmp_path / "other.fits").header


def test_fringe_verification_passes_the_frame_and_fails_pure_noise(fringe_data, tmp_path):
    from cpframe.science.imageio import write_masked
    from cpframe.verify import verify_calib

    det = fringe_data["camera"].detector(DET)
    did = {"instrument": "LSSTComCam", "detector": DET, "physical_filter": FILTER}
    fr = _frame(fringe_data, tmp_path / "fringe.fits")
    good = verify_calib("FRINGE", tmp_path / "fringe.fits", det, data_id=did)
    assert good["SUCCESS"] is True and good["DET"]["SNR"] > 10, good
    rng = np.random.default_rng(2)  # no fringes: the frame is its own noise
    noise = rng.normal(0, 0.005, fr.image.shape).astype(np.float32)
    write_masked(tmp_path / "noise.fits", noise, np.zeros(noise.shape, np.int32),
                 np.full(noise.shape, 0.005**2, np.float32), {"FILTER": FILTER})
    bad = verify_calib("FRINGE", tmp_path / "noise.fits", det, data_id=did)
    assert bad["SUCCESS"] is False and bad["DET"]["SNR"] < 3, bad


def test_user_errors_are_one_line(tmp_path):
    from cpframe.science.fringe import FringeConfig, fringe_correct, fringe_measure
    from cpframe.science.imageio import MaskedImage

    with pytest.raises(ConfigError, match=r"unknown fringe option\(s\) 'detectSigm'"):
        FringeConfig.from_dict({"detectSigm": 1.0})
    z = np.zeros((50, 60), np.float32)
    with pytest.raises(UserInputError, match=r"fringe measure: the image level is .*red band"):
        fringe_measure(MaskedImage(z, z.astype(np.int32), z, {}), FringeConfig())
    with pytest.raises(UserInputError, match=r"fringe frame shape \(50, 50\) differs from the image's \(50, 60\)"):
        fringe_correct(z.copy(), z.astype(np.int32), np.zeros((50, 50)))


def test_real_fringe_pipeline_maps_onto_the_kinds():
    from cpframe.execution.pipeline import load_pipeline
    from tests.test_lsst_templates import CP_PIPE, STACK

    pipe = load_pipeline(CP_PIPE / "pipelines/_ingredients/cpFringe.yaml", environ=STACK)
    assert [(t.kind, t.inputs, t.output) for t in pipe.tasks] == [
        ("isr", ("raw",), "cpFringeIsrExp"), ("fringeMeasure", ("cpFringeIsrExp",), "cpFringeMeasuredIsrExp"),
        ("combine", ("cpFringeMeasuredIsrExp",), "fringe")]
    comb = pipe.task("cpFringeCombine").config
    assert (comb["calibrationType"], comb["exposureScaling"]) == ("fringe", "Unity")
    assert pipe.task("cpFringeIsr").config["doFringe"] is False


def test_bps_fringe_builds_red_band_fringes_on_a_repository(fringe_data, tmp_path, local_dask):
    """cpframe's templates/bps_fringe.yaml on the z-band raws (plus r-band ones the template's band cut leaves
    out): one fringe for detector 4 in z_03, matching the truth; certified, it passes bps_verify_fringe and the
    report shows it."""
    from cpframe.camera.simulate import simulate
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

    simulate(_specs(first=200, n=2, physical_filter="r_03"), fringe_data["root"] / "raw", "LSSTComCam", scale="mini",
             seed=SEED, detectors=[DET], truth=fringe_data["truth"], workers=1)

    class _Data:
        root = fringe_data["root"] / "raw"
        plan = type("P", (), {"selections": {}})()

    repo = make_repo(tmp_path / "repo", _Data)
    try:
        certify_truth_calibs(repo, fringe_data["truth"], [DET], tmp_path / "calibs")
        did = {"instrument": INSTRUMENT, "detector": DET}
        z = np.zeros(fringe_data["shape"], np.float32)
        for name in ("bias", "dark"):
            p = write_masked(tmp_path / f"{name}.fits", z, z.astype(np.int32), z,
                             {"LSST ISR UNITS": "electron", "DARKTIME": 1.0})
            put_certified(repo, name, [(p, did)], f"{TRUTH_COLLECTION}/{name}-run", TRUTH_COLLECTION)
        f = read_masked(fringe_data["calibs"]["flat"])
        items = [(write_masked(tmp_path / f"flat_{pf}.fits", f.image, f.mask, f.variance, f.header),
                  {**did, "physical_filter": pf}) for pf in (FILTER, "r_03")]
        put_certified(repo, "flat", items, f"{TRUTH_COLLECTION}/flat-run", TRUTH_COLLECTION)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        sel = f"instrument='{INSTRUMENT}' and exposure.observation_type='science' and exposure.seq_num != {100 + N_EXP}"
        env = variables(repo.root, tmp_path / "scratch", _Data, SELECTION_FRINGE=sel)
        res = submit_template(Path(__file__).parents[1] / "templates/bps_fringe.yaml", environ=env,
                              client=local_dask.client, argv=["cpframe", "submit"])
        refs = repo.registry.query_datasets("fringe", collections=[res.run])
        assert [r.data_id["physical_filter"] for r in refs] == [FILTER]
        fr = read_masked(repo.get_path(refs[0]))
        pattern = cfr.fringe_pattern(SEED, DET, "z", fringe_data["shape"])
        k = _fit(fr.image.astype(np.float64), pattern)
        assert float(np.std(_blocks(fr.image - k * pattern))) < FRAME_FRACTION * k
        # certify, then cpframe's FRINGE verification (bps_verify_fringe) and the report's section
        from tests._run_helpers import certify_run, ticket_chain_add, verify_and_report

        cert = f"{INSTRUMENT}/calib/{TICKET}/fringe.20241110a"
        certify_run(repo, res.run, "fringe", cert)
        ticket_chain_add(repo, cert)
        _, _, page = verify_and_report(repo, Path(__file__).parents[1] / "templates/bps_verify_fringe.yaml",
                                       {**env, "SELECTION_FRINGE_V": sel}, local_dask.client, res.run, "fringe",
                                       "verifyFringeSummary", tmp_path / "report")
        assert "Fringe frame" in page
    finally:
        repo.close()
