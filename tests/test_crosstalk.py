"""Crosstalk: solved from simulated spot exposures, checked against the injected matrix.

Tolerances (issue 13, docs/algorithms.md "Crosstalk"): every coefficient within
max(2e-6, 2 %) of the truth; after ISR removal with the solved matrix the ghosts are
below the read noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.camera.models import load_camera
from cpframe.camera.spots import lit_amp, spot_field
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.crosstalk import (
    CrosstalkConfig,
    CrosstalkRatios,
    read_crosstalk,
    solve_crosstalk,
)
from cpframe.science.drivers import cp_crosstalk
from cpframe.science.imageio import FileFormatError

pytestmark = [pytest.mark.slow]

CAM = load_camera("LSSTComCam", "mini")
DET = CAM.detector(4)
SEED = 31
N_SPOT = 4 * len(DET.amps)  # every amp lit 4 times: ~32 000 source pixels per pair
CONFIG = {"growMaskRadius": 0}  # the spots have sharp edges and no halo (cpframe/camera/spots.py)


def _spec(i: int, kind: str = "spot", flux: float = 5e4):
    from cpframe.camera.simulate import ExposureSpec

    return ExposureSpec(20241110, i + 1, kind, "r_03", 10.0, 10.3, f"2024-11-10T2{i // 60}:{i % 60:02d}:00",
                        "crosstalk", "XT-TEST", flux)


@pytest.fixture(scope="module")
def spots(tmp_path_factory):
    from cpframe.camera.simulate import make_truth, simulate

    truth = make_truth(CAM, SEED, crosstalk=True, cosmics=False)
    out = tmp_path_factory.mktemp("xt_raw")
    paths = simulate([_spec(i) for i in range(N_SPOT)], out, CAM.name, "mini", seed=SEED, detectors=[DET.id],
                     workers=2, truth=truth)
    return truth, [str(p) for p in paths]


@pytest.fixture(scope="module")
def solved(spots, tmp_path_factory):
    _, paths = spots
    return cp_crosstalk(paths, tmp_path_factory.mktemp("xt") / "crosstalk.json", workers=2, config=CONFIG)


def test_coefficients_match_truth(spots, solved):
    truth, _ = spots
    c_true = truth.detectors[DET.id].crosstalk
    off = ~np.eye(len(DET.amps), dtype=bool)
    assert c_true[off].min() > 1e-6  # every pair has a measurable coefficient
    tol = np.maximum(2e-6, 0.02 * np.abs(c_true))
    diff = np.abs(solved.coeffs - c_true)
    bad = [(DET.amps[t].name, DET.amps[s].name, c_true[t, s], solved.coeffs[t, s])
           for t, s in zip(*np.nonzero((diff > tol) & off))]
    assert not bad, bad
    assert solved.n_valid == off.sum()  # all significant, none filtered to 0
    assert np.all(np.diag(solved.coeffs) == 0)
    assert solved.meta["N_EXPOSURES"] == N_SPOT and solved.meta["UNITS"] == "adu"
    assert solved.coeff_num[off].min() > 20000


def test_isr_removes_the_ghosts_below_read_noise(spots, solved):
    """Ghost level (mean over the lit source pixels) per target: > read noise before, < 1/4 of it after."""
    from cpframe.science.crosstalk import _background, _readout
    from cpframe.science.imageio import read_raw
    from cpframe.science.isr import isr_config_for, load_calibs, run_isr

    truth, paths = spots
    worst_before, worst_after = 0.0, 0.0
    for p in paths[:2]:
        raw = read_raw(p)
        src = lit_amp(DET, raw.header["SEQNUM"])
        for on in (False, True):
            cfg = isr_config_for("crosstalk", do_defect=False, do_apply_gains=False, do_bootstrap=True,
                                 do_crosstalk=on)
            img, _ = run_isr(raw, cfg, load_calibs({"crosstalk": solved.path} if on else {}))
            lit = _readout(img.image[src.bbox], src) > 30000
            for a in DET.amps:
                if a.name == src.name:
                    continue
                t = _readout(img.image[a.bbox], a).astype(np.float64)
                ghost = abs(float(np.mean((t - _background(t, ~lit))[lit])))
                rn_adu = truth.amp(DET.id, a.name).read_noise / truth.amp(DET.id, a.name).gain
                if on:
                    worst_after = max(worst_after, ghost / rn_adu)
                else:
                    worst_before = max(worst_before, ghost / rn_adu)
    assert worst_before > 1.0  # the neighbours' ghosts are above the read noise
    assert worst_after < 0.25


def test_electron_ratios_are_converted_to_adu(spots, tmp_path):
    """ISR with gains (electrons): the ratios are converted with the header gains; same matrix."""
    from cpframe.science.imageio import write_ptc

    truth, paths = spots
    rows = [{"amp": a.name, "gain": truth.amp(DET.id, a.name).gain, "gain_err": 0.0, "noise": 6.0, "noise_err": 0.0,
             "turnoff": math.inf, "a00": 0.0, "n_pairs": 0, "raw_means": np.zeros(1), "raw_vars": np.zeros(1),
             "exp_times": np.zeros(1), "mask": np.ones(1, bool), "overscan_noise": np.zeros(1)} for a in DET.amps]
    ptc = write_ptc(tmp_path / "ptc.fits", rows, {"OBSTYPE": "ptc"})
    seqs = (1, 2, 3, 17, 18, 19)  # amps 1-3 lit twice each
    sub = [p for p in paths if int(p.split("/")[-1].split("_")[1]) % 100000 in seqs]
    assert len(sub) == len(seqs)
    cal_e = cp_crosstalk(sub, tmp_path / "xt_e.json", calibs={"ptc": str(ptc)}, workers=2, config=CONFIG)
    cal_a = cp_crosstalk(sub, tmp_path / "xt_a.json", workers=2, config=CONFIG)
    src = {lit_amp(DET, i).index for i in seqs}
    for s in src:
        big = np.abs(truth.detectors[DET.id].crosstalk[:, s]) > 1e-4
        np.testing.assert_allclose(cal_e.coeffs[big, s], cal_a.coeffs[big, s], rtol=0.02)


def test_spot_exposures_light_one_amp(spots):
    from cpframe.science.imageio import read_raw

    truth, paths = spots
    raw = read_raw(paths[5])
    a = lit_amp(DET, raw.header["SEQNUM"])
    assert raw.header["IMGTYPE"] == "spot"
    img = spot_field(DET, raw.header["SEQNUM"], 1.0)
    assert img[a.bbox].mean() == pytest.approx(0.5) and img.sum() == img[a.bbox].sum()


def test_file_round_trip_and_errors(solved, tmp_path):
    back = read_crosstalk(solved.path)
    np.testing.assert_array_equal(back.coeffs, solved.coeffs)
    np.testing.assert_array_equal(back.coeff_valid, solved.coeff_valid)
    assert back.amps == [a.name for a in DET.amps]
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "cpframe-crosstalk", "version": 7}')
    with pytest.raises(FileFormatError, match="version 7.*reads version 1"):
        read_crosstalk(bad)
    bad.write_text("{}")
    with pytest.raises(FileFormatError, match="not a cpframe crosstalk file"):
        read_crosstalk(bad)
    with pytest.raises(ConfigError, match="'treshold'.*known options.*threshold"):
        CrosstalkConfig.from_dict({"treshold": 1})
    with pytest.raises(ConfigError, match="fluxOrder=2"):
        CrosstalkConfig.from_dict({"fluxOrder": 2})
    with pytest.raises(UserInputError, match="no ratio measurements"):
        solve_crosstalk([], None)


def test_solve_on_synthetic_ratios_clipping_and_significance():
    """Clipped mean of the ratios; an insignificant pair is filtered to 0; fluxOrder 1 gives intercept + slope."""
    rng = np.random.default_rng(3)
    n = 5000
    f = rng.uniform(3e4, 6e4, n).astype(np.float32)
    r_ab = (2e-4 + 1e-5 * rng.standard_normal(n)).astype(np.float32)
    r_ab[:50] = 0.5  # outliers (another source's light)
    r_ba = (1e-8 + 1e-5 * rng.standard_normal(n)).astype(np.float32)  # nothing there
    m = CrosstalkRatios(exposure_id=1, detector=4, amps=["A", "B"],
                        ratios={"A": {"B": r_ab}, "B": {"A": r_ba}}, fluxes={"A": {"B": f}, "B": {"A": f}})
    cal = solve_crosstalk([m], None)
    assert cal.coeffs[0, 1] == pytest.approx(2e-4, abs=1e-6) and cal.coeff_valid[0, 1]
    assert cal.coeffs[1, 0] == 0.0 and not cal.coeff_valid[1, 0]
    r_q = (1e-4 + 2e-9 * f + 1e-6 * rng.standard_normal(n)).astype(np.float32)
    mq = CrosstalkRatios(1, 4, ["A", "B"], ratios={"A": {"B": r_q}, "B": {"A": r_ba}},
                         fluxes={"A": {"B": f}, "B": {"A": f}})
    calq = solve_crosstalk([mq], None, {"fluxOrder": 1})
    assert calq.coeffs[0, 1] == pytest.approx(1e-4, rel=0.01) and calq.coeffs_sqr[0, 1] == pytest.approx(2e-9, rel=0.01)


def test_verify_crosstalk_on_residual_matrix(spots, solved, tmp_path):
    """CROSSTALK stage: the residual matrix after ISR with the solved crosstalk has no significant
    coefficient; with the uncorrected data (no crosstalk applied) every neighbour is detected."""
    from cpframe.verify import verify_calib

    _, paths = spots
    sub = paths[:32]
    resid = cp_crosstalk(sub, tmp_path / "resid.json", workers=2, config=CONFIG,
                         calibs={"crosstalk": solved.path},
                         isr_config=_isr_with_crosstalk())
    ok = verify_calib("crosstalk", resid.path, DET)
    assert ok["SUCCESS"], ok["FAILURES"]
    assert all(s["MAX_GHOST_E"] < 100.0 for s in ok["AMP"].values())
    bad = verify_calib("crosstalk", solved.path, DET)  # the matrix itself is all significant
    assert not bad["SUCCESS"] and len(bad["FAILURES"]) == len(DET.amps)


def _isr_with_crosstalk():
    from cpframe.science.isr import isr_config_for

    return isr_config_for("crosstalk", do_defect=False, do_apply_gains=False, do_bootstrap=True, do_crosstalk=True)
