"""Gain correction: measured from simulated flats taken after a gain drift, checked against the injected truth.

Tolerance (issue 13, docs/algorithms.md "Gain correction"): every amp's adjustment within 5e-4 of the truth
``(1 + δ) / (1 + δ_median amp)`` for a drift of 0.4 % rms; ISR with the correction leaves amp-boundary steps
below 5e-4 where they were ~δ without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cpframe.camera.gain_drift import draw_amp_gain_drift, exposure_gain, expected_adjustments
from cpframe.camera.models import load_camera
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.gain_correction import (
    GainCorrection,
    GainCorrectionConfig,
    choose_reference_amp,
    measure_gain_correction,
    read_gain_correction,
    write_gain_correction,
)
from cpframe.science.imageio import FileFormatError, write_masked

CAM = load_camera("LSSTComCam", "mini")
DET = CAM.detector(4)
SEED = 57
DRIFT = 0.004
DAY_BEFORE, DAY_AFTER = 20241110, 20241111
TOL = 5e-4
FLUX = 5000.0  # 50 000 e- at the centre in 10 s


def _specs(n=8, day=DAY_AFTER):
    from cpframe.camera.simulate import ExposureSpec

    return [ExposureSpec(day, i + 1, "flat", "r_03", 10.0, 10.3, f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}"
                         f"T20:{i:02d}:00", "gain_correction", "GAIN-TEST", FLUX) for i in range(n)]


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    """Eight r flats the day after the restart; the truth (drift 0.4 % rms from DAY_AFTER on)."""
    from cpframe.camera.simulate import make_truth, simulate

    truth = make_truth(CAM, SEED, gain_drift=DRIFT, gain_drift_day_obs=DAY_AFTER, cosmics=False, dark_current=False,
                       bias_pattern=False)
    out = tmp_path_factory.mktemp("gain_raw")
    paths = simulate(_specs(), out, CAM.name, "mini", seed=SEED, detectors=[DET.id], workers=2, truth=truth)
    return truth, out, [str(p) for p in paths]


def _truth_ptc(truth) -> dict:
    return {a.name: {"gain": truth.amp(DET.id, a.name).gain, "noise": truth.amp(DET.id, a.name).read_noise,
                     "turnoff": 9e4} for a in DET.amps}


def _truth_adjustments(truth) -> np.ndarray:
    return expected_adjustments([truth.amp(DET.id, a.name).gain_drift for a in DET.amps])


@pytest.fixture(scope="module")
def calibs(drifted, tmp_path_factory):
    """Truth PTC (the gains before the drift), zero bias/dark, truth defects and the truth r flat, as files."""
    from tests._run_helpers import write_truth_defects, write_truth_ptc

    truth, _, _ = drifted
    d = tmp_path_factory.mktemp("gain_calibs")
    z = np.zeros(DET.shape, np.float32)
    zm = np.zeros(DET.shape, np.int32)
    head = {"INSTRUME": CAM.name, "DETECTOR": DET.id, "DETNAME": DET.name, "CAMSCALE": "mini"}
    return {
        "ptc": str(write_truth_ptc(d / "ptc.fits", truth, DET.id)),
        "defects": str(write_truth_defects(d / "defects.ecsv", truth, DET.id)),
        "bias": str(write_masked(d / "bias.fits", z, zm, z + 1.0, {**head, "LSST ISR UNITS": "electron"})),
        "dark": str(write_masked(d / "dark.fits", z, zm, z + 1e-4, {**head, "LSST ISR UNITS": "electron"})),
        "flat": str(write_masked(d / "flat.fits", truth.flat(DET.id, "r").astype(np.float32), zm, z + 1e-6,
                                 {**head, "FILTER": "r_03", "OBSTYPE": "flat"})),
    }


def _isr(raw, calibs, out, **kw):
    from cpframe.science.isr import isr_config_for
    from cpframe.science.tasks import isr_task

    cfg = isr_config_for("flat", do_defect=True, **kw)
    return isr_task(raw, out, cfg, calibs, detector=DET.id)


@pytest.fixture(scope="module")
def measured(drifted, calibs, tmp_path_factory):
    """The new flat (mean of the ISR-processed flats, PTC gains, no correction) and the gain correction."""
    from cpframe.science.gain_correction import gain_correction_task
    from cpframe.science.imageio import read_masked

    truth, _, paths = drifted
    d = tmp_path_factory.mktemp("gain_isr")
    base = {k: calibs[k] for k in ("ptc", "defects", "bias", "dark")}
    imgs = [read_masked(_isr(p, base, d / f"isr{i}.fits").path) for i, p in enumerate(paths)]
    stack = np.mean([m.image / np.median(m.image) for m in imgs], axis=0).astype(np.float32)
    mask = np.bitwise_or.reduce([m.mask for m in imgs])
    new = write_masked(d / "flat_gain_correction.fits", stack, mask, np.ones_like(stack),
                       {**imgs[0].header, "FILTER": "r_03"})
    gc = gain_correction_task(str(new), [calibs["flat"]], calibs["ptc"], d / "gain_correction.json")
    return gc, str(new), d


def test_adjustments_match_truth(drifted, measured):
    truth, _, _ = drifted
    gc, _, _ = measured
    expected = _truth_adjustments(truth)
    got = np.array([gc.adjustments[a.name] for a in DET.amps])
    drifts = np.array([truth.amp(DET.id, a.name).gain_drift for a in DET.amps])
    assert np.std(drifts) > 0.002  # the drift is really there (0.4 % rms injected)
    assert np.max(np.abs(got - expected)) < TOL, (got - expected)
    assert sorted(got)[len(got) // 2] == 1.0  # the median amp is the fixed point, as cp_pipe
    assert gc.meta["excluded_amps"] == [] and gc.meta["fixed_amp"] in [a.name for a in DET.amps]


def test_isr_with_the_correction_removes_the_amp_steps(drifted, calibs, measured):
    """Flat-fielded flat: amp-to-amp level steps are ~δ without the correction, below TOL with it."""
    from cpframe.science.imageio import read_masked

    truth, _, paths = drifted
    gc, _, d = measured
    base = {k: calibs[k] for k in ("ptc", "defects", "bias", "dark", "flat")}

    def steps(img):
        lv = np.array([np.median(img[a.bbox][20:-20, 8:-8]) for a in DET.amps])
        return lv / np.median(lv) - 1.0

    without = read_masked(_isr(paths[0], base, d / "ff_without.fits", do_flat=True).path)
    with_gc = read_masked(_isr(paths[0], {**base, "gain_correction": gc.path}, d / "ff_with.fits", do_flat=True,
                               do_correct_gains=True).path)
    assert "LSST ISR GAINCORRECTION APPLIED" not in without.header
    assert with_gc.header["LSST ISR GAINCORRECTION APPLIED"] is True
    s0, s1 = steps(without.image), steps(with_gc.image)
    assert np.max(np.abs(s0)) > 3e-3  # the steps the drift made (δ up to 3 x 0.4 %)
    assert np.max(np.abs(s1)) < TOL, s1
    # and the correction is the one ip_isr applies: gain x adjustment
    for a in DET.amps[:3]:
        assert with_gc.header[f"LSST ISR GAIN {a.name}"] == pytest.approx(
            truth.amp(DET.id, a.name).gain * gc.adjustments[a.name], rel=1e-12)


def test_truth_draws_and_exposure_gain():
    a = draw_amp_gain_drift(3, 4, 16, 0.01)
    assert a == draw_amp_gain_drift(3, 4, 16, 0.01) and a != draw_amp_gain_drift(3, 5, 16, 0.01)
    assert max(abs(x) for x in a) <= 0.03 and 0.003 < float(np.std(a)) < 0.02
    assert exposure_gain(2.0, 0.01, DAY_BEFORE, DAY_AFTER) == 2.0
    assert exposure_gain(2.0, 0.01, DAY_AFTER, DAY_AFTER) == pytest.approx(2.02)
    assert exposure_gain(2.0, 0.01, DAY_BEFORE, 0) == pytest.approx(2.02)  # 0: every exposure


def test_simulated_counts_follow_the_drift(tmp_path):
    """Before the restart day the counts are e-/g; after it e-/(g (1 + δ)): the raw levels differ by 1/(1 + δ)."""
    from cpframe.camera.simulate import make_truth, simulate_detector

    truth = make_truth(CAM, SEED, gain_drift=0.02, gain_drift_day_obs=DAY_AFTER, cosmics=False, read_noise=False,
                       poisson=False, dark_current=False, bias_pattern=False, bias_drift=False, bias_jitter=0.0)
    before = simulate_detector(CAM, DET.id, _specs(1, DAY_BEFORE)[0], truth, SEED)
    after = simulate_detector(CAM, DET.id, _specs(1, DAY_AFTER)[0], truth, SEED)
    for a, s0, s1 in zip(DET.amps, before, after):
        bias = truth.amp(DET.id, a.name).bias_level
        r = np.median(s1[a.data_slice] - bias) / np.median(s0[a.data_slice] - bias)
        assert r == pytest.approx(1.0 / (1.0 + truth.amp(DET.id, a.name).gain_drift), abs=2e-4), a.name


def test_measure_on_synthetic_steps_and_a_gradient():
    """Independent check on a noiseless image: known steps times a planar gradient are recovered exactly."""
    rng = np.random.default_rng(5)
    r = 1.0 + rng.normal(0, 0.01, len(DET.amps))
    yy, xx = np.mgrid[0:DET.shape[0], 0:DET.shape[1]]
    ref = np.ones(DET.shape)
    new = 1.0 + 0.02 * xx / DET.shape[1] - 0.01 * yy / DET.shape[0]
    for i, a in enumerate(DET.amps):
        new[a.bbox] *= r[i]
    ptc = {a.name: {"gain": 1.0 + 0.01 * i, "noise": 6.0, "turnoff": 9e4} for i, a in enumerate(DET.amps)}
    gc = measure_gain_correction(new, ref, DET, ptc, {"chebyshev_gradient_order": 1})
    got = np.array([gc.adjustments[a.name] for a in DET.amps])
    want = (1 / r) / (1 / r)[np.argsort(1 / r)[len(r) // 2]]
    assert np.max(np.abs(got - want)) < 2e-4  # the bilinear term of order 1 absorbs the plane, not the steps


def test_an_amp_too_far_off_is_left_out():
    r = np.ones(len(DET.amps))
    r[5] = 1.2  # a 20 % "gain change": a broken amp, not a drift
    new = np.ones(DET.shape)
    for i, a in enumerate(DET.amps):
        new[a.bbox] *= r[i]
    ptc = {a.name: {"gain": 1.0, "noise": 6.0, "turnoff": 9e4} for a in DET.amps}
    gc = measure_gain_correction(new, np.ones(DET.shape), DET, ptc)
    assert gc.meta["excluded_amps"] == [DET.amps[5].name] and gc.adjustments[DET.amps[5].name] == 1.0


def test_reference_amp_choice_and_no_candidate():
    names = [a.name for a in DET.amps]
    noisy = {n: {"gain": 1.0, "noise": 50.0, "turnoff": 9e4} for n in names}
    assert choose_reference_amp(noisy, names, GainCorrectionConfig()) == -1
    gc = measure_gain_correction(np.ones(DET.shape), np.ones(DET.shape), DET, noisy)
    assert set(gc.adjustments.values()) == {1.0} and "every adjustment is 1" in gc.meta["note"]


def test_files_and_errors(tmp_path):
    gc = GainCorrection({"C00": 1.001, "C01": 0.999}, {"DETECTOR": 4})
    p = write_gain_correction(tmp_path / "g.json", gc)
    back = read_gain_correction(p)
    assert back.adjustments == gc.adjustments and back.meta["DETECTOR"] == 4
    (tmp_path / "bad.json").write_text('{"format": "cpframe-gain-correction", "version": 1, "amp_names": ["C00"], '
                                       '"gain_adjustments": []}')
    with pytest.raises(FileFormatError, match="1 amp names but 0 gain adjustments"):
        read_gain_correction(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text('{"format": "x"}')
    with pytest.raises(FileFormatError, match="not a cpframe gain correction file"):
        read_gain_correction(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="unknown gain-correction option.*'binFactr'"):
        GainCorrectionConfig.from_dict({"binFactr": 4})
    with pytest.raises(ConfigError, match="bin_factor 0 must be >= 1"):
        GainCorrectionConfig.from_dict({"bin_factor": 0})
    with pytest.raises(UserInputError, match="has shape"):
        measure_gain_correction(np.ones((3, 3)), np.ones((4, 4)), DET, {})


# ------------------------------------------------------------------------------------------
# the real cp_pipe template, unchanged, on a simulated repository (stack unset: cpframe's pipeline)
# ------------------------------------------------------------------------------------------
def test_real_gain_correction_template_runs_unchanged(tmp_path, drifted, calibs, local_dask, monkeypatch):
    from pathlib import Path

    from cpframe.execution.submit import submit_template
    from tests._run_helpers import INSTRUMENT, RAW_RUN, TICKET, TRUTH_COLLECTION, make_repo, put_certified

    truth, root, _ = drifted
    repo = make_repo(tmp_path / "repo", None, files=[root])
    try:
        did = {"instrument": INSTRUMENT, "detector": DET.id}
        for dt in ("ptc", "defects", "bias", "dark", "flat"):
            extra = {"physical_filter": "r_03"} if dt == "flat" else {}
            put_certified(repo, dt, [(Path(calibs[dt]), {**did, **extra})], f"{TRUTH_COLLECTION}/{dt}-run",
                          TRUTH_COLLECTION)
        for k in ("CP_PIPE_DIR", "CP_VERIFY_DIR", "CPFRAME_PIPELINES"):
            monkeypatch.delenv(k, raising=False)
        env = {"USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo.root),
               "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241111a",
               "SCRATCH": str(tmp_path / "scratch"), "USER": "tester", "PATH": "/usr/bin:/bin",
               "SELECTION_GAIN_CORRECTION_FLAT": "instrument='LSSTComCam' and observation_reason='gain_correction'"}
        template = Path(__file__).parent / "data/lsst/cp_pipe/bps/templates/bps_gain_correction.yaml"
        res = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"gain_correction": 1}
        from cpframe.science.gain_correction import read_gain_correction

        (ref,) = repo.registry.query_datasets("gain_correction", collections=[res.run])
        gc = read_gain_correction(repo.get_path(ref))
        got = np.array([gc.adjustments[a.name] for a in DET.amps])
        assert np.max(np.abs(got - _truth_adjustments(truth))) < TOL
        assert gc.meta["FILTER"] == "r_03" and gc.meta["OBSTYPE"] == "gain_correction"
    finally:
        repo.close()
