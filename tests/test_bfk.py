"""Brighter-fatter: simulator truth, PTC FULLCOVARIANCE, the kernel (cpBfk), its ISR correction and its check.

Targets (issue 13, docs/algorithms.md "Brighter-fatter"): a00 within 5 % and gain within 0.5 % of
the truth; BF-corrected flat variance linear in the mean to < 1 % (up to 50 000 e-).

The mini data set: LSSTComCam mini detector 4 (16 amps of 64 x 250 px) with the brighter_fatter effect
on, 28 flat pairs (4 below 3 000 e-, 24 evenly up to 95 000 e-).  On 16 000-pixel amps a single
amp's a00 is known to ~4 % and its gain to ~0.7 % (one sigma), so the targets are checked on the
detector mean of the per-amp ratios, and each amp within 4 sigma-ish bounds stated below.  The b
terms of the full model are not constrained on amps this small (a00 then scatters by ~25 %); the
FULLCOVARIANCE fit *with* b is checked on covariances at full-size precision (1 M pixels) instead.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cpframe.camera.bf import apply_brighter_fatter, bf_a_matrix, bf_kernel_full, draw_amp_bf
from cpframe.camera.models import load_camera
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.bfk import (
    BfkConfig,
    brighter_fatter_correction,
    kernel_from_correlations,
    read_bfk,
    solve_bfk,
)
from cpframe.science.covariances import cov_model, fit_full_covariance, measure_covariances
from cpframe.science.imageio import FileFormatError, read_ptc

CAM = load_camera("LSSTComCam", "mini")
DET = CAM.detector(4)
SEED = 43
FLUX = 3000.0
LEVELS = tuple(np.geomspace(300, 3000, 4)) + tuple(np.linspace(6000, 95000, 24))  # e- (before the flat)
COV_RANGE = 5  # measured lags; the truth reaches lag 3
EDGE = 6  # per-amp edge left out of the PTC (the kernel is 11 x 11: 5 px uncorrected at the detector edge)


def _truth_kernel(a00: float, shape: int) -> np.ndarray:
    """The kernel the truth implies: ∇²K = −a on a (shape x shape) grid."""
    pre = np.zeros((shape, shape))
    full = bf_kernel_full(a00)
    c, r = shape // 2, full.shape[0] // 2
    pre[c - r:c + r + 1, c - r:c + r + 1] = -full
    return kernel_from_correlations(pre)[1]


# ------------------------------------------------------------------------------------------------
# simulator and measurement, no files
# ------------------------------------------------------------------------------------------------
def test_simulated_flats_have_the_astier_covariances_of_the_truth():
    """The area model's flats: variance and nearest covariances = Astier+19 eq. 20 with the truth a (3 sigma)."""
    rng = np.random.default_rng(5)
    a00, mu = -2.5e-6, 80000.0
    lam = np.full((700, 700), mu, np.float32)
    i1, i2 = apply_brighter_fatter(rng, lam, a00), apply_brighter_fatter(rng, lam, a00)
    assert abs(float(i1.mean()) / mu - 1) < 1e-4  # the areas add up: the mean is kept
    cov, n = measure_covariances(i1.astype(np.float64) - i2, np.ones(i1.shape), 3)
    model = cov_model(np.array([mu]), bf_a_matrix(a00, 3), np.zeros((3, 3)), np.zeros((3, 3)), 1.0)[0]
    assert cov[0, 0] == pytest.approx(model[0, 0], abs=3 * math.sqrt(2.0 / n) * model[0, 0])
    for lag in ((1, 0), (0, 1), (1, 1)):
        assert cov[lag] == pytest.approx(model[lag], abs=3 * model[0, 0] / math.sqrt(n)), lag
    # the effect is large: the variance is 15-20 % below the Poisson value
    assert model[0, 0] < 0.85 * mu and cov[0, 0] < 0.85 * mu


def test_effect_switch_keeps_other_truth_and_draws_around_the_nominal_value():
    from cpframe.camera.simulate import make_truth

    off, on = make_truth(CAM, SEED), make_truth(CAM, SEED, brighter_fatter=True)
    for a in DET.amps:
        t0, t1 = off.amp(DET.id, a.name), on.amp(DET.id, a.name)
        assert t0.bf_a00 == 0.0 and t0.gain == t1.gain and t0.read_noise == t1.read_noise
        assert -2.5e-6 * 1.15 <= t1.bf_a00 <= -2.5e-6 * 0.85
    assert draw_amp_bf(1, 4, 3, 0.0) == [0.0, 0.0, 0.0]
    k = bf_kernel_full(-2e-6)
    assert abs(k.sum()) < 1e-18 and k[3, 3] == -2e-6 and np.all(np.delete(k.ravel(), 24) >= 0)


def test_fft_covariances_equal_a_direct_sum_with_a_mask():
    rng = np.random.default_rng(3)
    d = rng.standard_normal((60, 70))
    d[:, 1:] += 0.3 * d[:, :-1]  # correlated along rows
    w = rng.random(d.shape) > 0.1
    cov, n = measure_covariances(d, w, 3)
    assert n == int(w.sum())
    for dy, dx in ((0, 0), (0, 1), (1, 0), (2, 1), (1, 2)):
        vals = []
        for sx in {dx, -dx}:
            ys, xs = np.nonzero(w)
            y2, x2 = ys + dy, xs + sx
            ok = (y2 < d.shape[0]) & (x2 >= 0) & (x2 < d.shape[1])
            ok[ok] &= w[y2[ok], x2[ok]]
            a, b = d[ys[ok], xs[ok]], d[y2[ok], x2[ok]]
            # the mean is removed over all weighted pixels, as measure_covariances does
            m = d[w].mean()
            vals.append(np.mean((a - m) * (b - m)) - (a - m).mean() * (b - m).mean())
        assert cov[dy, dx] == pytest.approx(0.5 * np.mean(vals), rel=1e-9, abs=1e-12), (dy, dx)


def test_full_covariance_fit_with_b_recovers_the_truth_at_full_size_precision():
    """FULLCOVARIANCE (a, b, noise, gain): covariances from the model with the truth, scattered by the
    measurement error of a 1 M-pixel amp, 40 pairs up to 100 000 e-: a00 within 5 %, gain within 0.5 %."""
    rng = np.random.default_rng(11)
    r, g, npix = 5, 1.45, 1_000_000
    a = bf_a_matrix(-2.3e-6, r)
    c = a * 1.5e-7  # b = 1.5e-7 /e- everywhere a is non-zero
    noise = np.zeros((r, r))
    noise[0, 0] = 36.0
    mu = np.linspace(500, 100000, 40) / g
    model = cov_model(mu, a, c, noise, g)
    sigma = np.abs(model[:, :1, :1]) / math.sqrt(npix) * np.ones_like(model)
    sigma[:, 0, 0] *= math.sqrt(2.0)
    cov = model + rng.standard_normal(model.shape) * sigma
    fit = fit_full_covariance(mu, cov, np.full(mu.size, npix), r, with_b=True)
    assert fit.a[0, 0] == pytest.approx(a[0, 0], rel=0.05)
    assert fit.gain == pytest.approx(g, rel=0.005)
    assert fit.a[1, 0] == pytest.approx(a[1, 0], rel=0.15) and fit.a[0, 1] == pytest.approx(a[0, 1], rel=0.15)
    assert math.sqrt(fit.noise[0, 0]) == pytest.approx(6.0, rel=0.05)
    assert 0.5 < fit.chi2_dof < 1.5


def test_correction_conserves_flux_and_undoes_a_kernel_redistribution():
    """Coulton's correction moves charge into the peak of a star (ip_isr's finite-difference form is
    not exactly flux-conserving on a 1.6-pixel star: ~9 %, hence its FLUX_CONSERVING variant), and the
    iteration removes a redistribution made with the same formula of opposite sign."""
    y, x = np.mgrid[0:81, 0:81]
    star = 2000.0 + 150000.0 * np.exp(-0.5 * ((x - 40.2) ** 2 + (y - 39.7) ** 2) / 1.6 ** 2)
    kernel = _truth_kernel(-2.5e-6, 11)
    corr, _, iters = brighter_fatter_correction(star, kernel, max_iter=1, threshold=0.0)
    assert np.abs(corr).max() > 1000 and abs(corr.sum()) < 0.15 * np.abs(corr).sum()
    assert corr[40, 40] == corr.max() > 0  # the correction moves charge back into the peak
    assert corr[:5].max() == 0 and corr[:, -5:].max() == 0  # the kernel's half size is left alone
    blurred = star - corr  # the forward effect, to first order
    back, _, _ = brighter_fatter_correction(blurred, kernel, max_iter=10, threshold=1.0)
    assert np.abs(blurred + back - star).max() < 1e-3 * np.abs(corr).max()
    assert brighter_fatter_correction(star, np.zeros((11, 11)))[0].max() == 0.0


def test_config_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="'useAMatrix'.*known options"):
        BfkConfig.from_dict({"useAMatrix": True})
    with pytest.raises(ConfigError, match="level='CHIP': use AMP or DETECTOR"):
        BfkConfig.from_dict({"level": "CHIP"})
    assert BfkConfig.from_dict({"useAmatrix": True, "maxIterSuccessiveOverRelaxation": 5}).use_amatrix
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "cpframe-cti"}')
    with pytest.raises(FileFormatError, match="not a cpframe brighter-fatter kernel file"):
        read_bfk(bad)


# ------------------------------------------------------------------------------------------------
# the mini data set
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf_flats(tmp_path_factory):
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate

    truth = make_truth(CAM, SEED, brighter_fatter=True, cosmics=False)
    specs, i = [], 0
    for lv in LEVELS:
        for _ in range(2):
            i += 1
            specs.append(ExposureSpec(20241110, i, "flat", "r_03", lv / FLUX, lv / FLUX + 0.3,
                                      f"2024-11-10T20:{i:02d}:00", "ptc", "BFK-TEST", FLUX))
    out = tmp_path_factory.mktemp("bfk_raw")
    paths = simulate(specs, out, CAM.name, "mini", seed=SEED, detectors=[DET.id], workers=2, truth=truth)
    return truth, sorted(str(p) for p in paths)


@pytest.fixture(scope="module")
def bfk(bf_flats, tmp_path_factory):
    from cpframe.science.drivers import cp_bfk

    _, paths = bf_flats
    out = tmp_path_factory.mktemp("bfk") / "bfk.json"
    ptc = {"ptcFitType": "FULLCOVARIANCE_NO_B", "maximumRangeCovariancesAstier": COV_RANGE,
           "maximumRangeCovariancesAstierFullCovFit": 4, "numEdgeSuspect": EDGE}
    calib = cp_bfk(paths, out, ptc_config=ptc, config={"useAmatrix": True}, workers=2)
    return calib, out.with_name("bfk_bfkPtc.fits")


def test_full_covariance_ptc_a00_and_gain_match_truth(bf_flats, bfk):
    truth, _ = bf_flats
    rows, header = read_ptc(bfk[1])
    assert header["PTCFITTYPE"] == "FULLCOVARIANCE_NO_B" and header["COVRANGE"] == COV_RANGE
    ra, rg = [], []
    for amp in DET.amps:
        t, r = truth.amp(DET.id, amp.name), rows[amp.name]
        assert r["covariances"].shape == (len(LEVELS), COV_RANGE, COV_RANGE)
        assert r["a_matrix"][0, 0] == r["a00"]
        ra.append(r["a00"] / t.bf_a00 - 1)
        rg.append(r["gain"] / t.gain - 1)
        assert abs(ra[-1]) < 0.15 and abs(rg[-1]) < 0.025, (amp.name, ra[-1], rg[-1])  # ~4 sigma of a mini amp
        # the nearest neighbours have the truth's sign and size
        ta = bf_a_matrix(t.bf_a00, 2)
        assert r["a_matrix"][1, 0] == pytest.approx(ta[1, 0], rel=0.6) and r["a_matrix"][0, 1] > 0
    assert abs(np.mean(ra)) < 0.05, ra  # target: a00 within 5 %
    assert abs(np.mean(rg)) < 0.005, rg  # target: gain within 0.5 %


def test_kernel_matches_the_truth_kernel(bf_flats, bfk):
    truth, _ = bf_flats
    calib, _ = bfk
    # cp_pipe's validity limit (nothing above 2.5 % of |K00|) is at the level of a mini amp's a-matrix
    # noise at lags 2-3, so about half the amps pass it; the detector kernel averages the valid ones
    assert calib.shape == (2 * COV_RANGE + 1,) * 2 and sum(calib.valid.values()) >= 4
    a00 = np.mean([truth.amp(DET.id, a).bf_a00 for a, ok in calib.valid.items() if ok])  # the amps averaged
    tk = _truth_kernel(a00, calib.shape[0])
    c = calib.shape[0] // 2
    assert calib.det_kernel[c, c] == pytest.approx(tk[c, c], rel=0.05)
    assert np.abs(calib.det_kernel - tk).max() < 0.1 * abs(tk[c, c])
    again = read_bfk(calib.path)
    np.testing.assert_array_equal(again.det_kernel, calib.det_kernel)
    assert again.valid == calib.valid and again.gain == pytest.approx(calib.gain)


def test_report_figure_of_the_kernel(bfk, tmp_path):
    from cpframe.report.caltypes import CALTYPE_PRODUCTS, render_bfk_png

    out = render_bfk_png(bfk[0].path, tmp_path / "bfk.png", "R22_S11")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert CALTYPE_PRODUCTS["bfk"][0] is render_bfk_png


def test_bf_corrected_flats_have_a_linear_ptc(bf_flats, bfk, tmp_path):
    """The verification stage BFK: the PTC of the flats corrected with the kernel is linear to < 1 %
    up to 50 000 e- (the uncorrected one is not: ~3 %)."""
    from cpframe.camera.models import load_camera
    from cpframe.science.isr import isr_config_for
    from cpframe.science.tasks import cp_ptc
    from cpframe.verify import VerifyConfig, verify_calib

    _, paths = bf_flats
    calib, uncorrected = bfk
    cfg = isr_config_for("bfk", do_defect=False, do_brighter_fatter=True)
    cp_ptc(paths, tmp_path / "ptc_corr.fits", calibs={"bfk": calib.path}, isr_config=cfg, workers=2,
           config={"numEdgeSuspect": EDGE})
    det = load_camera("LSSTComCam", "mini").detector(DET.id)
    good = verify_calib("BFK", tmp_path / "ptc_corr.fits", det, VerifyConfig(), uncorrected=uncorrected)
    bad = verify_calib("BFK", uncorrected, det, VerifyConfig())
    assert good["DET"]["UNCORRECTED_NONLINEARITY"] == bad["DET"]["NONLINEARITY"]
    assert good["DET"]["NONLINEARITY"] < 0.01 and good["VERIFY"]["DET"]["VARIANCE_LINEAR"], good["DET"]
    assert bad["DET"]["NONLINEARITY"] > 0.02 and not bad["VERIFY"]["DET"]["VARIANCE_LINEAR"], bad["DET"]
    assert bad["DET"]["CURVATURE"] < -0.08 and abs(good["DET"]["CURVATURE"]) < 0.02


def _scaled_truth_calib(truth, scale: float, path: Path) -> str:
    """A detector-level BFK file holding ``scale`` times the truth's kernel (the detector mean a00), truth gains."""
    from cpframe.science.bfk import BfkCalib, write_bfk

    names = [a.name for a in DET.amps]
    k = scale * _truth_kernel(float(np.mean([truth.amp(DET.id, a).bf_a00 for a in names])), 2 * COV_RANGE + 1)
    calib = BfkCalib(amp_kernels={a: k for a in names}, mean_xcorrs={a: np.zeros_like(k) for a in names},
                     valid={a: True for a in names}, gain={a: float(truth.amp(DET.id, a).gain) for a in names},
                     det_kernel=k, level="DETECTOR", meta={"INSTRUME": "LSSTComCam", "DETECTOR": DET.id})
    return str(write_bfk(path, calib))


@pytest.mark.parametrize("scale, failures", [(1.0, []), (3.0, ["PAIRS_KEPT"])], ids=["truth", "three-times"])
def test_an_over_correcting_kernel_fails_pairs_kept(scale, failures, bf_flats, tmp_path):
    """PAIRS_KEPT guards VARIANCE_LINEAR: three times the truth's kernel bends the PTC of the pairs up to 50 000 e-
    up so much that the PTC's outlier rejection drops the upper ones, and the 5 of 16 left are straight to 0.7 %
    (VARIANCE_LINEAR alone passes it).  The truth's kernel keeps 16 of 16 and is linear to 0.13 %."""
    from cpframe.science.isr import isr_config_for
    from cpframe.science.tasks import cp_ptc
    from cpframe.verify import VerifyConfig, verify_calib
    from cpframe.verify.config import TEST_NOTES

    truth, paths = bf_flats
    low = paths[:2 * sum(1 for lv in LEVELS if lv <= VerifyConfig().bfk_max_mean_e)]
    cfg = isr_config_for("bfk", do_defect=False, do_brighter_fatter=True)
    cp_ptc(low, tmp_path / "ptc.fits", calibs={"bfk": _scaled_truth_calib(truth, scale, tmp_path / "bfk.json")},
           isr_config=cfg, workers=2, config={"numEdgeSuspect": EDGE})
    stats = verify_calib("BFK", tmp_path / "ptc.fits", DET, VerifyConfig())
    det = stats["DET"]
    assert stats["FAILURES"] == failures and stats["SUCCESS"] is (not failures), (stats["FAILURES"], det)
    assert stats["VERIFY"]["DET"]["VARIANCE_LINEAR"] and det["NONLINEARITY"] < 0.01 and det["N_IN_RANGE"] == 16
    if failures:
        assert det["N_POINTS"] < 0.8 * det["N_IN_RANGE"] and det["CURVATURE"] > 0, det  # bent up, top dropped
    else:
        assert det["N_POINTS"] == 16 and det["NONLINEARITY"] < 0.005, det
    assert ("BFK", "PAIRS_KEPT") in TEST_NOTES  # the report's table of tests says what it checks


def test_solve_needs_covariances_and_isr_needs_the_kernel(tmp_path, mini_products, mini_sim):
    from cpframe.science.imageio import read_raw
    from cpframe.science.isr import IsrError, isr_config_for, load_calibs, run_isr

    with pytest.raises(UserInputError, match="no covariances; build it with ptcFitType: FULLCOVARIANCE"):
        solve_bfk(mini_products.ptc.path, tmp_path / "bfk.json")
    raw = read_raw(mini_sim.ptc[0])
    with pytest.raises(IsrError, match="bfk.*doBrighterFatter: false"):
        run_isr(raw, isr_config_for("bfk", do_defect=False, do_brighter_fatter=True), load_calibs({}))


#: Pipeline settings for mini amps, as a campaign would set them with extraQgraphOptions: with cp_pipe's
#: (20-pixel edges: ~5 000 pixels per amp; FULLCOVARIANCE to lag 10) no mini amp's kernel passes the
#: validity checks, and the detector kernel is zero.
MINI_BFK_OPTIONS = {
    "bps_bfk.yaml": ("cpBfkPtcExtractPair:maximumRangeCovariancesAstier=5", "cpBfkPtcExtractPair:numEdgeSuspect=6",
                     "cpBfkPtcExtractPair:minNumberGoodPixelsForCovariance=10000",
                     "cpBfkPtcSolve:ptcFitType=FULLCOVARIANCE_NO_B", "cpBfkPtcSolve:maximumRangeCovariancesAstier=5",
                     "cpBfkPtcSolve:maximumRangeCovariancesAstierFullCovFit=4"),
    "bps_verify_bfk.yaml": ("verifyBfkPtcExtractPair:numEdgeSuspect=6",
                            "verifyUncorrectedBfkPtcExtractPair:numEdgeSuspect=6"),
}


def test_templates_build_certify_and_verify_the_kernel(bf_flats, tmp_path, local_dask):
    """bps_bfk then bps_verify_bfk, submitted on a real repository and Dask cluster (cpframe's pipelines,
    the real templates' labels, mini-amp settings through extraQgraphOptions): the kernel is built per
    detector from its own covariance PTC, certified, and ISR with it straightens the PTC of the ramp
    (pairs up to 50 000 e-)."""
    from types import SimpleNamespace

    from cpframe.execution.submit import submit_template
    from cpframe.verify.results import read_stats
    from tests._run_helpers import (
        TICKET,
        TRUTH_COLLECTION,
        certify_run,
        certify_truth_calibs,
        make_repo,
        ticket_chain_add,
        variables,
    )

    truth, paths = bf_flats
    repo = make_repo(tmp_path / "repo", None, files=[Path(p) for p in paths])
    try:
        certify_truth_calibs(repo, truth, [DET.id], tmp_path / "calibs", types=("defects",))
        repo.registry.set_chain(f"LSSTComCam/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        n = 2 * sum(1 for lv in LEVELS if lv <= 50000)  # the verification reads the pairs it checks only
        env = variables(repo.root, tmp_path / "scratch", SimpleNamespace(plan=SimpleNamespace(selections={})),
                        SELECTION_PTC_BFK="instrument='LSSTComCam' and exposure.observation_type='flat'",
                        SELECTION_PTC_BFK_V=f"instrument='LSSTComCam' and exposure.seq_num in (1..{n})")
        templates = Path(__file__).resolve().parents[1] / "templates"
        for name, opts in MINI_BFK_OPTIONS.items():
            text = (templates / name).read_text()
            (tmp_path / name).write_text(text + "extraQgraphOptions: \"" + " ".join(f"--config {o}" for o in opts)
                                         + "\"\n")
        built = submit_template(tmp_path / "bps_bfk.yaml", environ=env, client=local_dask.client)
        (ref,) = repo.registry.query_datasets("bfk", collections=[built.run])
        calib = read_bfk(repo.get_path(ref))
        c = calib.shape[0] // 2
        assert calib.shape == (11, 11) and calib.det_kernel[c, c] < 0 and sum(calib.valid.values()) >= 4
        cert = f"LSSTComCam/calib/{TICKET}/bfk.20241110a"
        certify_run(repo, built.run, "bfk", cert)
        ticket_chain_add(repo, cert)
        checked = submit_template(tmp_path / "bps_verify_bfk.yaml", environ=env, client=local_dask.client)
        assert checked.extra["verification"].startswith("verification: PASS"), checked.extra["verification"]
        (sref,) = repo.registry.query_datasets("verifyBfkStats", collections=[checked.run])
        det = read_stats(repo.get_path(sref))["DET"]
        assert det["NONLINEARITY"] < 0.01 < det["UNCORRECTED_NONLINEARITY"], det
    finally:
        repo.close()


def test_real_bfk_template_runs_unchanged_with_the_stack(bf_flats, tmp_path, local_dask, monkeypatch):
    """cp_pipe's own bps_bfk.yaml and LSSTComCam/cpBfk.yaml (stack variables set): ISR, pair extraction with
    covariances, a FULLCOVARIANCE PTC, the folded gain-ratio adjustment and BrighterFatterKernelSolveTask,
    mapped onto cpframe's kinds (issue 12).

    Unchanged (lags to 8, the b terms fitted): the gains are within 2 % of the truth; no 16 000-pixel amp's kernel passes
    cp_pipe's validity checks (b terms unconstrained, see the module docstring), so the detector kernel is
    zero rather than a wrong one.  The same real files with the mini-amp settings as extraQgraphOptions
    (the real file's labels, MINI_BFK_OPTIONS) give the truth kernel."""
    from types import SimpleNamespace

    from cpframe.execution.submit import submit_template
    from tests._run_helpers import TICKET, TRUTH_COLLECTION, certify_truth_calibs, make_repo, variables
    from tests.test_lsst_templates import CP_PIPE, STACK

    truth, paths = bf_flats
    repo = make_repo(tmp_path / "repo", None, files=[Path(p) for p in paths])
    try:
        certify_truth_calibs(repo, truth, [DET.id], tmp_path / "calibs", types=("defects",))
        repo.registry.set_chain(f"LSSTComCam/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = {**variables(repo.root, tmp_path / "scratch", SimpleNamespace(plan=SimpleNamespace(selections={})),
                           SELECTION_PTC_BFK="instrument='LSSTComCam' and exposure.observation_type='flat'"),
               **STACK}
        for k, v in STACK.items():
            monkeypatch.setenv(k, v)
        template = CP_PIPE / "bps/templates/bps_bfk.yaml"
        res = submit_template(template, environ=env, client=local_dask.client)
        assert res.counts == {"bfk": 1}, res.counts
        (ref,) = repo.registry.query_datasets("bfk", collections=[res.run])
        calib = read_bfk(repo.get_path(ref))
        assert calib.shape == (17, 17) and set(calib.valid) == {a.name for a in DET.amps}  # lags to 8
        rg = [calib.gain[a.name] / truth.amp(DET.id, a.name).gain - 1 for a in DET.amps]
        # the b-term fit to lag 8 on mini amps: 1.1 % high on this data set (per amp ~1 %); the 0.5 % target is
        # met with the mini settings below (and in test_full_covariance_ptc_a00_and_gain_match_truth)
        assert abs(np.mean(rg)) < 0.02, rg
        assert not any(calib.valid.values()) and not calib.det_kernel.any()

        mini = tmp_path / "bps_bfk.yaml"
        mini.write_text(template.read_text() + "extraQgraphOptions: \"" + " ".join(
            f"--config {o}" for o in MINI_BFK_OPTIONS["bps_bfk.yaml"]) + "\"\n")
        res = submit_template(mini, environ={**env, "RERUN": "20241110b"}, client=local_dask.client)
        (ref,) = repo.registry.query_datasets("bfk", collections=[res.run])
        calib = read_bfk(repo.get_path(ref))
        assert calib.shape == (2 * COV_RANGE + 1,) * 2 and sum(calib.valid.values()) >= 4, calib.valid
        rg = [calib.gain[a.name] / truth.amp(DET.id, a.name).gain - 1 for a in DET.amps]
        assert abs(np.mean(rg)) < 0.005, rg  # target: gain within 0.5 %
        a00 = np.mean([truth.amp(DET.id, a).bf_a00 for a, ok in calib.valid.items() if ok])
        tk = _truth_kernel(a00, calib.shape[0])
        c = calib.shape[0] // 2
        assert calib.det_kernel[c, c] == pytest.approx(tk[c, c], rel=0.05)
        assert np.abs(calib.det_kernel - tk).max() < 0.1 * abs(tk[c, c])
    finally:
        repo.close()
