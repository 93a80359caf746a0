"""Anaglyph flats (cp_pipe cpFlatAnaglyph.yaml): the flats of a blue and a red LED, down-selected by observation
reason, each gradient-corrected, mixed with weightOne; checked against the simulator's truth (``led_flats`` effect,
cpframe/camera/led_flats.py) through the real template ``bps_flat_anaglyph_g`` run unchanged.

Tolerance (docs/algorithms.md "Anaglyph flat"): the anaglyph flat divided by the truth band flat (without its
planar gradient) is 1 + beta c (c the pixels' colour, truth) with beta within 3 % (of s) of the truth mix
s (w t_blue + (1 - w) t_red), and, with that colour taken out, flat to 1 % over the focal plane inside the fitted
radius (32 x 32 blocks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cpframe.camera.focal_plane import pixel_to_focal_plane
from cpframe.camera.led_flats import field_radius_mm, led_name, led_params, pixel_colour
from cpframe.camera.models import load_camera
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.anaglyph import TwoFlatsConfig, combine_two_flats, combine_two_flats_task
from cpframe.science.imageio import MASK_BITS, MaskedImage, read_masked, write_masked

CAM = load_camera("LSSTComCam", "mini")
SEED, S = 40, 0.02  # LEDs far apart in the band (t_blue -0.64, t_red 0.80): the weight matters
BLUE, RED, W = "m455l4", "m505l4", 0.630  # bps_flat_anaglyph_g's LEDs and weightOne
#: beta within 3 % of s (measured: 1e-4 of it); the shape within 1 %: each LED's flat carries its own gradient fit's
#: error (0.3-0.4 % on 3 x 3 bins of 128 pixels per mini detector, tests/test_flat_gradient.py's template run),
#: largest at the centre and the fitted radius's edge; measured 0.62 % for the mix
BETA_TOL, SHAPE_TOL = 0.03, 0.01


def test_mix_matches_numpy_with_nan_and_masks(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.9, 1.1, (20, 30)), rng.uniform(0.9, 1.1, (20, 30))
    va, vb = rng.uniform(1e-4, 2e-4, (20, 30)), rng.uniform(1e-4, 2e-4, (20, 30))
    a[0, 0] = np.nan
    b[1, 1] = np.nan
    a[2, 2] = b[2, 2] = np.nan
    ma, mb = np.zeros((20, 30), np.int32), np.zeros((20, 30), np.int32)
    ma[5, 5], mb[6, 6] = 1 << MASK_BITS["SAT"], 1 << MASK_BITS["BAD"]
    img, mask, var, n1, n0 = combine_two_flats(MaskedImage(a, ma, va), MaskedImage(b, mb, vb), TwoFlatsConfig(0.6))
    want = 0.6 * a + 0.4 * b
    want[0, 0], want[1, 1] = b[0, 0], a[1, 1]  # one finite input: that input
    ok = np.ones_like(want, bool)
    ok[2, 2] = False
    np.testing.assert_allclose(img[ok], want[ok], rtol=1e-6)
    assert np.isnan(img[2, 2]) and mask[2, 2] & (1 << MASK_BITS["BAD"]) and (n1, n0) == (2, 1)
    np.testing.assert_allclose(var[10, 10], 0.36 * va[10, 10] + 0.16 * vb[10, 10], rtol=1e-6)
    assert mask[5, 5] == 1 << MASK_BITS["SAT"] and mask[6, 6] == 1 << MASK_BITS["BAD"]
    with pytest.raises(ConfigError, match="weightOne 1.2 must be between 0 and 1"):
        TwoFlatsConfig.from_dict({"weightOne": 1.2})
    head = {"FILTER": "g_01"}
    p1 = write_masked(tmp_path / "a.fits", a.astype(np.float32), ma, va.astype(np.float32), head)
    p2 = write_masked(tmp_path / "b.fits", b.astype(np.float32), mb, vb.astype(np.float32), {"FILTER": "r_03"})
    with pytest.raises(UserInputError, match="filter 'g_01' but .* is 'r_03'; give two flats of one"):
        combine_two_flats_task(str(p1), str(p2), tmp_path / "out.fits")
    assert not (tmp_path / "out.fits").exists()


def test_led_effect_truth():
    assert led_name("single_led_flat_m455l4") == BLUE and led_name("flat") is None
    p = led_params(SEED, BLUE, S, 90.0)
    assert p == led_params(SEED, BLUE, S, 90.0) and p != led_params(SEED, RED, S, 90.0)
    c = pixel_colour(SEED, 4, (50, 60))
    assert abs(c.mean()) < 0.1 and 0.9 < c.std() < 1.1


def _data_radius(bin_factor=128, edge=10):
    """The largest focal-plane radius of a gradient-fit bin centre (pipelines/cpFlatAnaglyph.yaml's binFactor)."""
    r = 0.0
    for d in CAM.science_detectors:
        ny, nx = (d.shape[0] - 2 * edge) // bin_factor, (d.shape[1] - 2 * edge) // bin_factor
        yy, xx = np.meshgrid(edge + bin_factor * np.arange(ny) + 0.5 * bin_factor - 0.5,
                             edge + bin_factor * np.arange(nx) + 0.5 * bin_factor - 0.5, indexing="ij")
        r = max(r, float(np.hypot(*pixel_to_focal_plane(CAM, d, xx, yy)).max()))
    return r


def _reference(truth, band, path, nodes=(0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0)):
    from cpframe.science.flat_gradient import FlatGradient, write_flat_gradient

    p = truth.bands[band]
    r = np.asarray(nodes)
    vals = 1.0 - p["fp_radial"] * r * r / p["fp_radius_mm"] ** 2
    return write_flat_gradient(path, FlatGradient(list(map(float, r)), list(map(float, vals)),
                                                  meta={"FILTER": "g_01", "OBSTYPE": "flat_gradient_reference"}))


def test_real_anaglyph_template_runs_unchanged(tmp_path, local_dask, monkeypatch):
    """bps_flat_anaglyph_g (stack unset: cpframe's pipelines/cpFlatAnaglyph.yaml) on the 9 mini ComCam detectors:
    3 flats per LED plus 2 plain g flats the down-selection must leave out."""
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
    from cpframe.core.model import DatasetType
    from cpframe.execution.submit import submit_template
    from tests._run_helpers import INSTRUMENT, RAW_RUN, TICKET, TRUTH_COLLECTION, make_repo, put_certified, \
        truth_isr_calibs

    truth = make_truth(CAM, SEED, qe=False, vignetting=False, flat_gradient=True, led_flats=S, cosmics=False)
    reasons = [f"single_led_flat_{BLUE}"] * 3 + [f"single_led_flat_{RED}"] * 3 + ["flat"] * 2
    specs = [ExposureSpec(20241110, i + 1, "flat", "g_01", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00", reason, "LED",
                          5000.0) for i, reason in enumerate(reasons)]
    ids = [d.id for d in CAM.science_detectors]
    simulate(specs, tmp_path / "raw", CAM.name, "mini", seed=SEED, detectors=ids, workers=2, truth=truth)
    repo = make_repo(tmp_path / "repo", None, files=[tmp_path / "raw"])
    try:
        items = truth_isr_calibs(tmp_path, truth, CAM, ids, ("ptc", "bias", "dark"))
        items["flat_gradient_reference"] = [(_reference(truth, "g", tmp_path / "ref.json"),
                                             {"instrument": INSTRUMENT, "physical_filter": "g_01"})]
        repo.registry.register_dataset_type(DatasetType("flat_gradient_reference", ("instrument", "physical_filter"),
                                                        True, "json"))
        for dt, its in items.items():
            put_certified(repo, dt, its, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION)
        repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
        for k in ("CP_PIPE_DIR", "CP_VERIFY_DIR", "CPFRAME_PIPELINES"):
            monkeypatch.delenv(k, raising=False)
        env = {"USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo.root),
               "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241110a",
               "SCRATCH": str(tmp_path / "scratch"), "USER": "tester", "PATH": "/usr/bin:/bin",
               "SELECTION_FLAT_g": "instrument='LSSTComCam' and exposure.observation_type='flat'"}
        template = Path(__file__).parent / "data/lsst/cp_pipe/bps/templates/bps_flat_anaglyph_g.yaml"
        res = submit_template(template, environ=env, client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"flat": len(ids)}, res.counts
        pb, pr = led_params(SEED, BLUE, S, field_radius_mm(CAM)), led_params(SEED, RED, S, field_radius_mm(CAM))
        beta_true = S * (W * pb["t"] + (1 - W) * pr["t"])
        assert abs(S * (0.5 * pb["t"] + 0.5 * pr["t"]) - beta_true) > BETA_TOL * S  # the weight is seen
        band = truth.bands["g"]
        blocks, betas = [], []
        for ref in repo.registry.query_datasets("flat", collections=[res.run]):
            d = int(ref.data_id["detector"])
            det = CAM.detector(d)
            m = read_masked(repo.get_path(ref))
            assert m.header["WEIGHT1"] == W and m.header["FLATSRC"] == "ANAGLYPH"
            yy, xx = np.mgrid[0:det.shape[0], 0:det.shape[1]]
            xf, yf = pixel_to_focal_plane(CAM, det, xx, yy)
            plane = 1.0 + band["fp_gradient_x"] * xf + band["fp_gradient_y"] * yf
            base = truth.flat(d, "g") * plane  # the band flat without its plane, the reference's radial shape
            c = pixel_colour(SEED, d, det.shape)
            good = (base > 0.5 * np.median(base)) & np.isfinite(m.image)
            ratio = np.where(good, m.image / np.where(good, base, 1.0), np.nan)
            rr, cc = ratio[good], c[good]
            betas.append(float(np.cov(rr, cc)[0, 1] / np.var(cc) / np.mean(rr)))
            flat = ratio / (1.0 + beta_true * c)
            flat[np.hypot(xf, yf) > _data_radius()] = np.nan  # beyond the fitted radius the splines are clipped
            ny, nx = det.shape[0] // 32, det.shape[1] // 32
            with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore", RuntimeWarning)
                blocks.extend(np.nanmedian(flat[:ny * 32, :nx * 32].reshape(ny, 32, nx, 32), axis=(1, 3)).ravel())
        beta = float(np.mean(betas))
        assert abs(beta - beta_true) < BETA_TOL * S, (beta, beta_true)
        blocks = np.asarray(blocks)
        worst = float(np.nanmax(np.abs(blocks / np.nanmedian(blocks) - 1.0)))
        assert worst < SHAPE_TOL, worst
    finally:
        repo.close()


def test_lsstcam_real_anaglyph_template_runs_unchanged_with_the_stack(tmp_path, local_dask, monkeypatch):
    """bps_flat_anaglyph_g with the stack set and INSTRUMENT=LSSTCam: the real cpFlatAnaglyph.yaml, on nine LSSTCam
    mini detectors along the diagonal (the gradient fits need radii); the colour mix is checked (beta)."""
    from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
    from cpframe.core.model import DatasetType
    from cpframe.execution.submit import submit_template
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository
    from tests._run_helpers import put_certified, truth_isr_calibs
    from tests.test_flat_gradient_apply import DIAGONAL, LSSTCAM, truth_reference
    from tests.test_lsst_templates import CP_PIPE, STACK

    inst = "LSSTCam"
    truth = make_truth(LSSTCAM, SEED, qe=False, vignetting=False, flat_gradient=True, led_flats=S, cosmics=False)
    reasons = [f"single_led_flat_{BLUE}"] * 3 + [f"single_led_flat_{RED}"] * 3
    specs = [ExposureSpec(20241110, i + 1, "flat", "g_6", 10.0, 10.3, f"2024-11-10T20:{i:02d}:00", reason, "LED",
                          5000.0) for i, reason in enumerate(reasons)]
    paths = simulate(specs, tmp_path / "raw", inst, "mini", seed=SEED, detectors=list(DIAGONAL), workers=2,
                     truth=truth)
    repo = Repository.create(tmp_path / "repo")
    try:
        report = ingest_raws(repo, [str(p) for p in paths], run="LSSTCam/raw/all", transfer="direct", processes=1)
        assert not report.failed, report.summary()
        coll = "LSSTCam/calib/DM-TEST/truth"
        items = truth_isr_calibs(tmp_path, truth, LSSTCAM, DIAGONAL)
        items["flat_gradient_reference"] = [(truth_reference(truth, "g", "g_6", tmp_path / "ref.json"),
                                             {"instrument": inst, "physical_filter": "g_6"})]
        repo.registry.register_dataset_type(DatasetType("flat_gradient_reference", ("instrument", "physical_filter"),
                                                        True, "json"))
        for dt, its in items.items():
            put_certified(repo, dt, its, f"{coll}/{dt}-run", coll)
        repo.registry.set_chain("LSSTCam/calib/DM-TEST", [coll], mode="redefine")
        for k, v in STACK.items():
            monkeypatch.setenv(k, v)
        env = {"USER_CALIB_PREFIX": "", "INSTRUMENT": inst, "TICKET": "DM-TEST", "REPO": str(repo.root),
               "RAW_COLLECTION": "LSSTCam/raw/all", "CALIB_COLLECTIONS": coll, "TAG": "test", "RERUN": "20241110a",
               "SCRATCH": str(tmp_path / "scratch"), "USER": "tester", "PATH": "/usr/bin:/bin", **STACK,
               "SELECTION_FLAT_g": "instrument='LSSTCam' and exposure.observation_type='flat'"}
        res = submit_template(CP_PIPE / "bps/templates/bps_flat_anaglyph_g.yaml", environ=env,
                              client=local_dask.client, argv=["cpframe", "submit"])
        assert res.counts == {"flat": len(DIAGONAL)}, res.counts
        radius = field_radius_mm(LSSTCAM)
        pb, pr = led_params(SEED, BLUE, S, radius), led_params(SEED, RED, S, radius)
        beta_true = S * (W * pb["t"] + (1 - W) * pr["t"])
        band = truth.bands["g"]
        betas = []
        for ref in repo.registry.query_datasets("flat", collections=[res.run]):
            d = int(ref.data_id["detector"])
            det = LSSTCAM.detector(d)
            m = read_masked(repo.get_path(ref))
            yy, xx = np.mgrid[0:det.shape[0], 0:det.shape[1]]
            xf, yf = pixel_to_focal_plane(LSSTCAM, det, xx, yy)
            base = truth.flat(d, "g") * (1.0 + band["fp_gradient_x"] * xf + band["fp_gradient_y"] * yf)
            good = (base > 0.5 * np.median(base)) & np.isfinite(m.image)
            rr, cc = m.image[good] / base[good], pixel_colour(SEED, d, det.shape)[good]
            betas.append(float(np.cov(rr, cc)[0, 1] / np.var(cc) / np.mean(rr)))
        assert abs(float(np.mean(betas)) - beta_true) < BETA_TOL * S, (betas, beta_true)
    finally:
        repo.close()


def test_down_selection_at_planning():
    """Each LED's normalisation reads only its exposures (case-insensitive); none matching is a planning error
    naming the values found; doDownSelection without a value is refused."""
    from cpframe.core.errors import PlanningError
    from cpframe.core.model import DataId
    from cpframe.execution.graph import _expand
    from cpframe.execution.kinds import get_kind
    from cpframe.execution.pipeline import load_pipeline

    pipe = load_pipeline(Path(__file__).parents[1] / "pipelines/cpFlatAnaglyph.yaml")
    base = [DataId(instrument="LSSTComCam", exposure=e, detector=4, physical_filter="g_01") for e in (1, 2, 3)]
    exposures = {1: {"observation_reason": "single_led_flat_blue"}, 2: {"observation_reason": "flat"},
                 3: {"observation_reason": "flat"}}
    with pytest.raises(PlanningError, match=r"cpFlatRedNormalize: no selected exposure has observation_reason = "
                                            r"'single_led_flat_red' .*have: flat, single_led_flat_blue"):
        _expand(pipe, base, exposures, "t")
    exposures[2]["observation_reason"] = "SINGLE_LED_FLAT_RED"
    items = _expand(pipe, base, exposures, "t")
    reads = {t.label: [k for _, keys in inputs for k in keys] for t, _d, inputs, _k, _p in items
             if t.kind == "flatNormalize"}
    # the measurement keys end in detector-exposure: the blue LED's exposure 1, the red one's 2, never the plain 3
    assert reads == {"cpFlatBlueNormalize": ["cpFlatMeasure-t-4-1"], "cpFlatRedNormalize": ["cpFlatMeasure-t-4-2"]}
    task = pipe.task("cpFlatBlueNormalize")
    import dataclasses

    with pytest.raises(ConfigError, match="doDownSelection is true but downSelectionValue is not set"):
        get_kind("flatNormalize").exposure_filter(dataclasses.replace(task, config={**task.config,
                                                                                     "downSelectionValue": ""}))
