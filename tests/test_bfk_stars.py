"""Brighter-fatter kernel verified on stars: cp_verify's bps_verify_bfk (CharacterizeImageTask -> starMeasure,
CpVerifyBfkTask -> verifyStats stage BFK_STARS), docs/verification.md "BFK_STARS".

Data: mini LSSTComCam detector 4, brighter_fatter on (a00 ≈ −2.5e-6 per amp), science exposures with stars
of a Gaussian PSF of sigma 1.7 px (truth size Ixx + Iyy = 2 σ² = 5.78 px²) at up to ~3·10⁶ e-.  The truth
kernel (∇²K = −a of the simulator's a matrix) is certified as ``bfk``.

Stated tolerances (docs/verification.md): the measured size of faint stars (< 10⁵ e-) is the truth within
2 %; without the kernel the size grows with flux (slope > 0.03 px² per 10⁶ e-), with it the slope is at most
half of that (cpframe's SIZE_SLOPE_REDUCED) and cp_verify's BRIGHT_SLOPE is below −0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.camera.models import load_camera

CAM = load_camera("LSSTComCam", "mini")
DET = 4
SEED = 61
FILTER = "r_03"
N_EXP = 4
TRUTH_SIZE = 2 * 1.7 ** 2


def _truth(camera):
    from cpframe.camera.truth import make_truth

    return make_truth(camera, SEED, brighter_fatter=True, stars=4e-4, cosmics=False, dark_current=False,
                      bias_pattern=False, defects=False, manual_defects=False)


def _truth_bfk(path, truth):
    from cpframe.camera.bf import bf_kernel_full
    from cpframe.science.bfk import BfkCalib, kernel_from_correlations, write_bfk

    det = CAM.detector(DET)
    a00 = float(np.mean([truth.amp(DET, a.name).bf_a00 for a in det.amps]))
    pre = np.zeros((11, 11))
    full = bf_kernel_full(a00)
    r = full.shape[0] // 2
    pre[5 - r:5 + r + 1, 5 - r:5 + r + 1] = -full
    kernel = kernel_from_correlations(pre)[1]
    names = [a.name for a in det.amps]
    calib = BfkCalib({a: kernel for a in names}, {a: pre for a in names}, {a: True for a in names},
                     {a: float(truth.amp(DET, a).gain) for a in names}, kernel,
                     meta={"INSTRUME": "LSSTComCam", "DETECTOR": DET, "CAMSCALE": "mini", "OBSTYPE": "bfk"})
    write_bfk(path, calib)
    return path


@pytest.fixture(scope="module")
def bf_stars(tmp_path_factory):
    """Science exposures with BF stars; ISR (truth flat and PTC) with and without the truth kernel."""
    from cpframe.camera.plan import ExposureSpec
    from cpframe.camera.simulate import simulate
    from cpframe.science.imageio import write_masked
    from cpframe.science.isr import isr_config_for, isr_file
    from tests._run_helpers import write_truth_ptc

    root = tmp_path_factory.mktemp("bfstars")
    truth = _truth(CAM)
    specs = [ExposureSpec(20241110, 200 + i, "science", FILTER, 30.0, 30.0, f"2024-11-10T04:{i:02d}:00",
                          observation_reason="science", flux=20.0) for i in range(N_EXP)]
    raws = sorted(simulate(specs, root / "raw", "LSSTComCam", scale="mini", seed=SEED, detectors=[DET],
                           truth=truth, workers=1))
    shape = CAM.detector(DET).shape
    flat = truth.flat(DET, CAM.band_of(FILTER))
    write_masked(root / "flat.fits", flat.astype(np.float32), np.zeros(shape, np.int32),
                 np.zeros(shape, np.float32), {"LSST ISR UNITS": "electron"})
    write_truth_ptc(root / "ptc.fits", truth, DET)
    _truth_bfk(root / "bfk.json", truth)
    calibs = {"flat": root / "flat.fits", "ptc": root / "ptc.fits", "bfk": root / "bfk.json"}
    out = {}
    for bf in (True, False):
        cfg = isr_config_for("science", do_bias=False, do_dark=False, do_defect=False, do_brighter_fatter=bf)
        out[bf] = [isr_file(p, root / f"isr{int(bf)}_{i}.fits", cfg, calibs, camera=CAM)[0]
                   for i, p in enumerate(raws)]
    return {"root": root, "truth": truth, "raws": raws, "isr": out, "calibs": calibs}


def _catalogs(bf_stars, tmp_path, corrected: bool):
    from cpframe.science.illumination import IlluminationConfig, measure_stars, write_catalog

    paths = []
    for i, img in enumerate(bf_stars["isr"][corrected]):
        cat = measure_stars(img, IlluminationConfig(), exposure=i, detector=DET, physical_filter=FILTER)
        paths.append(write_catalog(tmp_path / f"cat{int(corrected)}_{i}.json", cat))
    return paths


def test_star_sizes_grow_with_flux_and_the_kernel_removes_it(bf_stars, tmp_path):
    from cpframe.science.illumination import read_catalog

    cor = [read_catalog(p) for p in _catalogs(bf_stars, tmp_path, True)]
    unc = [read_catalog(p) for p in _catalogs(bf_stars, tmp_path, False)]
    f_u, s_u = np.concatenate([c.flux for c in unc]), np.concatenate([c.size for c in unc])
    f_c, s_c = np.concatenate([c.flux for c in cor]), np.concatenate([c.size for c in cor])
    assert len(f_u) > 40, len(f_u)
    faint = f_u < 1e5
    # the measurement: faint stars (BF < 0.2 %) have the truth's size
    assert abs(np.median(s_u[faint]) / TRUTH_SIZE - 1) < 0.02, np.median(s_u[faint])
    bright_u, bright_c = f_u > 1e6, f_c > 1e6
    assert bright_u.sum() >= 5
    # brighter-fatter: bright stars broader than the truth (~+1.3 % per 10^6 e-), corrected back within 1 %
    assert np.median(s_u[bright_u]) > TRUTH_SIZE * 1.01, np.median(s_u[bright_u])
    assert abs(np.median(s_c[bright_c]) / TRUTH_SIZE - 1) < 0.01, np.median(s_c[bright_c])


def test_bfk_stars_verification_passes_with_the_kernel_only(bf_stars, tmp_path):
    from cpframe.verify.bfk_stars import verify_star_sizes

    det = CAM.detector(DET)
    cor, unc = _catalogs(bf_stars, tmp_path, True), _catalogs(bf_stars, tmp_path, False)
    for c, u in zip(cor, unc):
        good = verify_star_sizes(c, u, det)
        d = good["DET"]
        assert good["SUCCESS"], (good["FAILURES"], d)
        assert d["UNCORRECTED_SIZE_SLOPE"] > 0.03 and d["SLOPE_RATIO"] <= 0.5 and d["BRIGHT_SLOPE"] < -0.5, d
        assert d["NUM_MATCHES"] == len(good["CATALOG"]["SIZE_DIFF"]) > 10
        # without a kernel (the same catalogue on both sides) nothing changes: BRIGHT_SLOPE and the slope fail
        bad = verify_star_sizes(u, u, det)
        assert not bad["SUCCESS"] and {"BRIGHT_SLOPE", "SIZE_SLOPE_REDUCED"} <= set(bad["FAILURES"]), bad["DET"]
    few = verify_star_sizes(cor[0], unc[0], det, {"bfk_match_radius": 1e-9})
    assert few["DET"]["NUM_MATCHES"] == 0 and "NUM_MATCHES" in few["FAILURES"]  # cp_verify would pass it


def test_bfk_stars_errors_are_one_line(bf_stars, tmp_path):
    from cpframe.core.errors import UserInputError
    from cpframe.verify.bfk_stars import verify_star_sizes

    det = CAM.detector(DET)
    with pytest.raises(UserInputError, match=r"nope.json: no star catalogue"):
        verify_star_sizes(tmp_path / "nope.json", tmp_path / "nope.json", det)


def test_real_verify_bfk_template_runs_unchanged_with_the_stack(bf_stars, tmp_path, local_dask, monkeypatch):
    """cp_verify's bps_verify_bfk.yaml with LSSTComCam/verifyBfk.yaml (stack set): IsrTaskLSST with and without
    the certified kernel, CharacterizeImageTask -> starMeasure, CpVerifyBfkTask -> BFK_STARS, the merges."""
    from cpframe.core.model import DatasetType
    from cpframe.execution.submit import submit_template
    from cpframe.science.imageio import write_masked
    from cpframe.verify.results import read_stats
    from tests._run_helpers import (
        INSTRUMENT,
        TICKET,
        TRUTH_COLLECTION,
        certify_truth_calibs,
        make_repo,
        put_certified,
        variables,
    )
    from tests.test_lsst_templates import CP_VERIFY, STACK

    class _Data:
        root = bf_stars["root"] / "raw"
        plan = type("P", (), {"selections": {}})()

    repo = make_repo(tmp_path / "repo", _Data)
    try:
        truth = bf_stars["truth"]
        certify_truth_calibs(repo, truth, [DET], tmp_path / "calibs")
        shape = CAM.detector(DET).shape
        zeros = np.zeros(shape, np.float32)
        did = {"instrument": INSTRUMENT, "detector": DET}
        for name in ("bias", "dark"):
            p = write_masked(tmp_path / f"{name}.fits", zeros, zeros.astype(np.int32), zeros,
                             {"LSST ISR UNITS": "electron", "DARKTIME": 1.0})
            put_certified(repo, name, [(p, did)], f"{TRUTH_COLLECTION}/{name}-run", TRUTH_COLLECTION)
        put_certified(repo, "flat", [(bf_stars["calibs"]["flat"], {**did, "physical_filter": FILTER})],
                      f"{TRUTH_COLLECTION}/flat-run", TRUTH_COLLECTION)
        repo.registry.register_dataset_type(DatasetType("bfk", ("instrument", "detector"), True, "json"))
        put_certified(repo, "bfk", [(_truth_bfk(tmp_path / "bfk.json", truth), did)], f"{TRUTH_COLLECTION}/bfk-run",
                      TRUTH_COLLECTION)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        sel = f"instrument='{INSTRUMENT}' and exposure.observation_type='science'"
        env = {**variables(repo.root, tmp_path / "scratch", _Data, SELECTION_PTC_BFK_V=sel), **STACK}
        for k, v in STACK.items():
            monkeypatch.setenv(k, v)
        res = submit_template(CP_VERIFY / "bps/templates/bps_verify_bfk.yaml", environ=env, client=local_dask.client,
                              argv=["cpframe", "submit"])
        refs = repo.registry.query_datasets("verifyBfkDetStats", collections=[res.run])
        assert len(refs) == N_EXP
        for ref in refs:
            s = read_stats(repo.get_path(ref))
            assert s["STAGE"] == "BFK_STARS" and s["SUCCESS"], (s["FAILURES"], s["DET"])
            assert s["DET"]["SLOPE_RATIO"] <= 0.5 and s["DET"]["BRIGHT_SLOPE"] < -0.5
        assert res.extra["verification"].startswith("verification: PASS"), res.extra["verification"]
        assert math.isfinite(s["DET"]["MEDIAN_SIZE"])
    finally:
        repo.close()
