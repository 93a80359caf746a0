"""Electrostatic brighter-fatter solution (cp_pipe ElectrostaticBrighterFatterSolveTask; cpframe/science/electrostatic.py).

Truth: the simulator's a matrix (cpframe/camera/bf.py: a_k ∝ r^-3, row lags 1.3x the column lags, zero sum,
truncated at lag 3) is not itself an electrostatic solution, so the stated tolerance (docs/algorithms.md,
"Electrostatic brighter-fatter") is on how well the fitted model reproduces it: with equal weights per
element, a00 within 1 %, the nearest lags (0,1) and (1,0) within 5 %, the diagonal (1,1) within 20 %.  On
the mini data set (the FULLCOVARIANCE PTC of tests/test_bfk.py's ramp, lags < 4), a00 and the nearest lags
of the model are within 10 % of the truth (detector mean) and a00 within 3 sigma of the measured mean: the
fit weighs each element by the amps' scatter, which on 16 000-pixel amps makes a00 (3 %) the least precise
element relative to its value, so the model follows the neighbours' shape (measured: a00 6.5 % above the
truth, 5 % above the measured mean, which is 1.3 % off the truth).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpframe.camera.bf import bf_a_matrix
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.electrostatic import (
    ElectrostaticConfig,
    area_change,
    boundary_shifts,
    fit_electrostatic,
    read_electrostatic,
    solve_electrostatic,
)
from tests.test_bfk import DET, bf_flats, bfk  # noqa: F401  (module fixtures: the BF flat ramp and its PTC)

GEOMETRY = dict(thickness=100.0, pixelsize=10.0, zq=1.0, zsh=2.0, zsv=3.0, a=2.0, b=2.0)


def test_model_is_a_redistribution_with_the_expected_signs():
    def full_sum(n):  # the whole (mirrored) area change within lags < n, relative to a00
        q = area_change(GEOMETRY, n)
        return (4 * q.sum() - 2 * q[0, :].sum() - 2 * q[:, 0].sum() + q[0, 0]) / q[0, 0]

    m = area_change(GEOMETRY, 10)
    # the charged pixel shrinks, its neighbours grow; the area is conserved: what is missing within lag 9
    # (2.7 % of a00 for a 100 µm sensor) falls further out (0.13 % beyond lag 19)
    assert m[0, 0] < 0 and (m[0, 1:] > 0).all() and (m[1:, 0] > 0).all()
    assert 0 < full_sum(10) < 0.05 and 0 < full_sum(20) < 0.1 * full_sum(10)
    # the side shifts add up to the area change; a side shared by two pixels moves them by opposite amounts
    s = boundary_shifts(GEOMETRY, 4)
    np.testing.assert_allclose(s["aN"] + s["aS"] + s["aE"] + s["aW"], area_change(GEOMETRY, 4))
    np.testing.assert_allclose(s["aN"][1, 2], -s["aS"][2, 2], rtol=1e-10)
    np.testing.assert_allclose(s["aE"][3, 1], -s["aW"][3, 2], rtol=1e-10)
    # a deeper vertex height for the column boundaries (zsv > zsh) makes row neighbours (1, 0) gain more
    assert m[1, 0] > m[0, 1]


@pytest.mark.parametrize("beta", [False, True])
def test_fit_reproduces_the_simulator_truth(beta):
    truth = bf_a_matrix(-2.5e-6, 10)
    sol = fit_electrostatic(truth, np.full_like(truth, 2e-8),
                            ElectrostaticConfig(fit_range=10, parameters_to_vary={"beta": beta}))
    m = sol.a_matrix_model
    assert m[0, 0] == pytest.approx(truth[0, 0], rel=0.01)
    assert m[0, 1] == pytest.approx(truth[0, 1], rel=0.05) and m[1, 0] == pytest.approx(truth[1, 0], rel=0.05)
    assert m[1, 1] == pytest.approx(truth[1, 1], rel=0.2)
    assert ("beta" in sol.free_params) is beta and ("alpha" in sol.free_params)
    assert sol.fit_params["beta"] == 0.0 or beta
    # the boundary shifts carry the fitted scale: their sum is the model (less beta)
    s = sol.shifts
    np.testing.assert_allclose(s["aN"] + s["aS"] + s["aE"] + s["aW"], s["athMinusBeta"], rtol=1e-9, atol=1e-15)


def test_config_and_input_errors(tmp_path, bfk, mini_products):  # noqa: F811
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'fitrange'"):
        ElectrostaticConfig.from_dict({"fitrange": 4})
    with pytest.raises(ConfigError, match="initialParametersDict has unknown parameter"):
        ElectrostaticConfig.from_dict({"initialParametersDict": {"depth": 3.0}})
    with pytest.raises(UserInputError, match=r"fitRange=10 is beyond the PTC's full-covariance fit range \(4\)"):
        solve_electrostatic(bfk[1], tmp_path / "e.json", {"fitRange": 10})
    with pytest.raises(UserInputError, match="needs a FULLCOVARIANCE PTC"):
        solve_electrostatic(mini_products.ptc.path, tmp_path / "e.json")
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "cpframe-bfk"}')
    with pytest.raises(UserInputError, match="not a cpframe electrostatic brighter-fatter file"):
        read_electrostatic(bad)
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("stack", [True, False], ids=["stack-set", "stack-unset"])
def test_real_template_runs_unchanged(stack, bf_flats, bfk, tmp_path, local_dask, monkeypatch):  # noqa: F811
    """cp_pipe's bps_electrostaticBFDistortionMatrix.yaml (LSSTComCam/cpElectrostaticBFDistortionMatrix.yaml
    with the stack set, cpframe's own pipeline without): the certified FULLCOVARIANCE ptc -> the product.
    fitRange is lowered to the mini PTC's fit range (4) with extraQgraphOptions, as a campaign would."""
    from types import SimpleNamespace

    from cpframe.execution.submit import submit_template
    from tests._run_helpers import INSTRUMENT, TICKET, TRUTH_COLLECTION, make_repo, put_certified, variables
    from tests.test_lsst_templates import CP_PIPE, STACK

    truth, paths = bf_flats
    repo = make_repo(tmp_path / "repo", None, files=[Path(p) for p in paths])
    try:
        put_certified(repo, "ptc", [(bfk[1], {"instrument": INSTRUMENT, "detector": DET.id})],
                      f"{TRUTH_COLLECTION}/ptc-run", TRUTH_COLLECTION)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        env = variables(repo.root, tmp_path / "scratch", SimpleNamespace(plan=SimpleNamespace(selections={})),
                        SELECTION_PTC_BF=f"instrument='{INSTRUMENT}' and exposure.observation_type='flat'")
        for k in STACK:
            monkeypatch.delenv(k, raising=False)
        if stack:
            env.update(STACK)
            for k, v in STACK.items():
                monkeypatch.setenv(k, v)
        template = tmp_path / "bps_electrostaticBFDistortionMatrix.yaml"
        template.write_text((CP_PIPE / "bps/templates/bps_electrostaticBFDistortionMatrix.yaml").read_text()
                            + 'extraQgraphOptions: "--config cpBfSolve:fitRange=4"\n')
        res = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"electroBfDistortionMatrix": 1}, res.counts
        (ref,) = repo.registry.query_datasets("electroBfDistortionMatrix", collections=[res.run])
        sol = read_electrostatic(repo.get_path(ref))
        assert sol.fit_range == 4 and sol.fit_params["beta"] == 0.0 and sol.fit_params["thickness"] == 100.0
        assert set(sol.free_params) == {"zq", "zsh", "zsv", "a", "b", "alpha"}
        a00 = np.mean([truth.amp(DET.id, a.name).bf_a00 for a in DET.amps])
        m, t = sol.a_matrix_model, bf_a_matrix(a00, 4)
        # stated tolerance (module docstring): a00 and the nearest lags within 10 % of the truth, a00 within
        # 3 sigma of the measured mean
        assert m[0, 0] == pytest.approx(t[0, 0], rel=0.10)
        assert m[0, 1] == pytest.approx(t[0, 1], rel=0.10) and m[1, 0] == pytest.approx(t[1, 0], rel=0.10)
        assert abs(m[0, 0] - sol.a_matrix[0, 0]) < 3 * sol.a_matrix_sigma[0, 0]
        assert sol.fit_reduced_chi2 < 5
        assert sol.meta["OBSTYPE"] == "electroBfDistortionMatrix" and set(sol.gain) == {a.name for a in DET.amps}
    finally:
        repo.close()


def _truth_solution(a00: float, size: int = 8):
    truth = bf_a_matrix(a00, size)
    return fit_electrostatic(truth, np.full_like(truth, 2e-8), ElectrostaticConfig(fit_range=size))


def test_astier23_correction_restores_poisson_flats_and_conserves_charge():
    """The boundary-shift correction on a simulated BF flat of 60 000 e-: var/mean back to 1 (Poisson) within
    2 % (14 % low before), no charge created."""
    from cpframe.camera.bf import apply_brighter_fatter
    from cpframe.science.electrostatic import electrostatic_correction

    sol = _truth_solution(-2.5e-6)
    rng = np.random.default_rng(5)
    q = apply_brighter_fatter(rng, np.full((200, 200), 60000, np.float32), -2.5e-6).astype(np.float64)
    corr = electrostatic_correction(q, sol)
    c = q + corr
    inner = (slice(20, -20), slice(20, -20))
    assert q[inner].var() / q.mean() < 0.9
    assert c[inner].var() / c.mean() == pytest.approx(1.0, abs=0.02)
    assert abs(corr.sum()) < 1e-6 * q.sum() and np.abs(corr).max() > 100


def test_isr_astier23_straightens_the_ptc(bf_flats, bfk, tmp_path):  # noqa: F811
    """ISR with brighterFatterCorrectionMethod ASTIER23 and the electrostatic solution of the truth: the PTC of
    the ramp is linear to < 1 % up to 50 000 e- (stage BFK), as with the kernel (tests/test_bfk.py)."""
    from cpframe.camera.models import load_camera
    from cpframe.science.electrostatic import write_electrostatic
    from cpframe.science.imageio import read_raw
    from cpframe.science.isr import IsrError, isr_config_for, load_calibs, run_isr
    from cpframe.science.tasks import cp_ptc
    from cpframe.verify import VerifyConfig, verify_calib

    truth, paths = bf_flats
    sol = _truth_solution(float(np.mean([truth.amp(DET.id, a.name).bf_a00 for a in DET.amps])))
    sol.gain = {a.name: float(truth.amp(DET.id, a.name).gain) for a in DET.amps}
    sol.meta = {"INSTRUME": "LSSTComCam", "DETECTOR": DET.id, "CAMSCALE": "mini"}
    path = write_electrostatic(tmp_path / "electro.json", sol)
    cfg = isr_config_for("bfk", do_defect=False, do_brighter_fatter=True, brighter_fatter_correction_method="ASTIER23")
    with pytest.raises(IsrError, match="electro_bf.*doBrighterFatter: false"):
        run_isr(read_raw(paths[0]), cfg, load_calibs({"bfk": bfk[0].path}))
    cp_ptc(paths, tmp_path / "ptc_corr.fits", calibs={"electro_bf": path}, isr_config=cfg, workers=2,
           config={"numEdgeSuspect": 6})
    det = load_camera("LSSTComCam", "mini").detector(DET.id)
    good = verify_calib("BFK", tmp_path / "ptc_corr.fits", det, VerifyConfig(), uncorrected=bfk[1])
    assert good["DET"]["NONLINEARITY"] < 0.01 < good["DET"]["UNCORRECTED_NONLINEARITY"], good["DET"]
    assert good["VERIFY"]["DET"]["VARIANCE_LINEAR"]
