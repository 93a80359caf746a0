"""ISR: each step against a hand-computed numpy expectation, and the simulator's injected effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.camera.models import load_camera
from cpframe.core.errors import ConfigError
from cpframe.science.imageio import MASK_BITS, read_raw, write_defects, write_masked, write_ptc
from cpframe.science.isr import IsrConfig, IsrError, isr_config_for, load_calibs, overscan_vector, run_isr
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate_detector, write_raw

CAM = load_camera("LSSTComCam", "mini")
DET = CAM.detector(4)
SPEC = ExposureSpec(20241110, 7, "flat", "r_03", 10.0, 12.5, "2024-11-10T20:00:00", "flat", "T", 1000.0)


def _pattern(amp) -> np.ndarray:
    """A distinct, asymmetric data pattern per amp (adu, read-out order)."""
    r, c = np.mgrid[0:amp.data_rows, 0:amp.data_cols]
    return (100.0 * amp.index + 3.0 * r + c).astype(np.float64)


@pytest.fixture()
def synthetic_raw(tmp_path):
    """Noise-free raw: bias 1000 adu + row drift everywhere, the pattern in the data region."""
    segs = []
    for amp in DET.amps:
        rows, cols = amp.raw_shape
        drift = 7.0 * np.sin(np.arange(rows) / 17.0)
        seg = np.rint(1000.0 + drift)[:, None] * np.ones((1, cols))
        seg[amp.data_slice] += _pattern(amp)
        segs.append(seg.astype(np.int32))
    return write_raw(tmp_path / "raw.fits", CAM, DET.id, SPEC, segs, seed=1)


def _expected_assembled() -> np.ndarray:
    out = np.zeros(DET.shape)
    for amp in DET.amps:
        p = _pattern(amp)
        if amp.flip_x:
            p = p[:, ::-1]
        if amp.flip_y:
            p = p[::-1, :]
        ys, xs = amp.bbox
        out[ys, xs] = p
    return out


QUIET = dict(integer_dither_mode="NONE")


def test_overscan_and_assembly_with_flips(synthetic_raw):
    img, stats = run_isr(read_raw(synthetic_raw), IsrConfig(do_bootstrap=True, **QUIET))
    np.testing.assert_allclose(img.image, _expected_assembled(), atol=1e-3)
    assert img.header["LSST ISR UNITS"] == "adu"
    for amp in DET.amps:
        assert img.header[f"LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {amp.name}"] == 0.0
        assert img.header[f"LSST ISR OVERSCAN SERIAL MEDIAN {amp.name}"] == pytest.approx(1000.0, abs=1)
        assert img.header[f"LSST ISR FINAL MEDIAN {amp.name}"] == pytest.approx(np.median(_pattern(amp)))
        assert stats[amp.name].gain == 1.0
    # variance (bootstrap: gain 1, read noise = overscan residual = 0) = image
    np.testing.assert_allclose(img.variance, img.image, rtol=1e-6)


def test_gains_bias_dark_defects_flat_and_variance(synthetic_raw, tmp_path):
    rng = np.random.default_rng(3)
    gains = {a.name: 1.2 + 0.05 * a.index for a in DET.amps}
    noise = {a.name: 4.0 + 0.1 * a.index for a in DET.amps}
    ptc = write_ptc(tmp_path / "ptc.fits", [
        {"amp": a, "gain": gains[a], "gain_err": 0.0, "noise": noise[a], "noise_err": 0.0, "turnoff": 5e4,
         "a00": 0.0, "n_pairs": 1, "raw_means": [1.0], "raw_vars": [1.0], "exp_times": [1.0], "mask": [True],
         "overscan_noise": [1.0]} for a in gains])
    shape = DET.shape
    bias = rng.normal(5, 1, shape).astype(np.float32)
    bias_var = np.full(shape, 0.5, np.float32)
    bias[3, 4] = np.nan
    dark = rng.uniform(0.01, 0.05, shape).astype(np.float32)
    dark_var = np.full(shape, 1e-4, np.float32)
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    flat_var = np.full(shape, 1e-6, np.float32)
    z = np.zeros(shape, np.int32)
    calibs = {
        "ptc": ptc,
        "bias": write_masked(tmp_path / "bias.fits", bias, z, bias_var, {"LSST ISR UNITS": "electron"}),
        "dark": write_masked(tmp_path / "dark.fits", dark, z, dark_var, {"LSST ISR UNITS": "electron",
                                                                          "DARKTIME": 1.0}),
        "flat": write_masked(tmp_path / "flat.fits", flat, z, flat_var, {}),
        "defects": write_defects(tmp_path / "defects.ecsv", [(10, 20, 3, 2), (100, 0, 1, 500)]),
    }
    cfg = IsrConfig(do_apply_gains=True, do_bias=True, do_dark=True, do_flat=True, do_defect=True, **QUIET)
    img, stats = run_isr(read_raw(synthetic_raw), cfg, load_calibs(calibs))
    g = np.zeros(shape)
    rn = np.zeros(shape)
    for amp in DET.amps:
        g[amp.bbox] = gains[amp.name]
        rn[amp.bbox] = noise[amp.name]
    e = _expected_assembled() * g - bias - dark * 12.5  # the raw's dark time is 12.5 s
    var = bias_var + dark_var * 12.5 ** 2 + e + rn ** 2
    exp_img = e / flat
    exp_var = var / flat ** 2 + e ** 2 * flat_var / flat ** 4
    ok = np.isfinite(exp_img)
    np.testing.assert_allclose(img.image[ok], exp_img[ok], rtol=2e-5, atol=2e-3)
    np.testing.assert_allclose(img.variance[ok], exp_var[ok], rtol=2e-5, atol=2e-3)
    assert img.mask[3, 4] & (1 << MASK_BITS["UNMASKEDNAN"])
    bad = (img.mask & 1) != 0
    assert bad[20:22, 10:13].all() and bad[:, 100].all() and bad.sum() == 6 + 500
    assert img.header["LSST ISR UNITS"] == "electron"
    assert img.header["LSST ISR GAIN C10"] == gains["C10"] and img.header["LSST ISR READNOISE C10"] == noise["C10"]
    assert img.header["LSST ISR DARK SCALE"] == 12.5
    assert stats["C00"].gain == gains["C00"]


def test_saturation_and_suspect_masks(synthetic_raw):
    amp = DET.amp("C13")
    level = float(np.percentile(_pattern(amp), 90))
    cfg = IsrConfig(do_bootstrap=True, do_saturation=True, saturation_level=level, do_suspect=True,
                    suspect_level=level - 50, **QUIET)
    img, stats = run_isr(read_raw(synthetic_raw), cfg)
    sat = (img.mask & (1 << MASK_BITS["SAT"])) != 0
    sus = (img.mask & (1 << MASK_BITS["SUSPECT"])) != 0
    expected = _expected_assembled() >= level
    np.testing.assert_array_equal(sat, expected)
    assert (sus >= sat).all() and sus.sum() > sat.sum()
    assert stats["C13"].n_sat == int(sat[amp.bbox].sum()) == img.header["LSST ISR MASK SAT C13"]


def test_overscan_vector_follows_drift_and_ignores_bleeds():
    rng = np.random.default_rng(0)
    drift = 20 * np.sin(np.arange(400) / 30.0)
    region = 1000 + drift[:, None] + rng.normal(0, 4, (400, 58))
    region[100:110, 10:20] += 5000  # a bleed into the overscan
    vec = overscan_vector(region, "MEDIAN_PER_ROW", 3.0, 1000.0)
    assert np.abs(vec - 1000 - drift).max() < 4 * 4 * math.sqrt(math.pi / 2 / 48)
    const = overscan_vector(region, "MEDIAN", 3.0, 1000.0)
    assert np.ptp(const) == 0 and const[0] == pytest.approx(np.median(region[np.abs(region - 1000) < 1000]))


def test_bootstrap_read_noise_from_overscan(tmp_path):
    truth = make_truth(CAM, 3, cosmics=False)
    spec = ExposureSpec(20241110, 3, "bias", "r_03", 0.0, 0.0, "2024-11-10T20:00:00", "bias", "T", 0.0)
    p = write_raw(tmp_path / "b.fits", CAM, DET.id, spec, simulate_detector(CAM, DET.id, spec, truth, 3), 3)
    img, stats = run_isr(read_raw(p), isr_config_for("biasBootstrap"))
    offsets = []
    for amp in DET.amps:
        t = truth.amp(DET.id, amp.name)
        expected = math.hypot(t.read_noise / t.gain, math.sqrt(1 / 12))  # + the dither
        assert stats[amp.name].overscan_noise_adu == pytest.approx(expected, rel=0.05), amp.name
        assert img.header[f"LSST ISR READNOISE {amp.name}"] == stats[amp.name].overscan_noise_adu
        # overscan-corrected bias: ~0 but for the fixed bump of the first rows read out; the
        # amp mean of one exposure scatters by 0.16 adu (mostly the parallel-overscan vector)
        offsets.append(stats[amp.name].mean - truth.bias_pattern(DET.id)[amp.bbox].mean())
    assert np.abs(offsets).max() < 0.8 and abs(np.mean(offsets)) < 0.15


@pytest.mark.parametrize("effect", ["crosstalk", "nonlinearity"])
def test_crosstalk_and_linearity_are_undone(tmp_path, effect):
    """Same seed with and without the effect: ISR with the correction gives the effect-free image."""
    spec = ExposureSpec(20241110, 9, "flat", "r_03", 10.0, 10.3, "2024-11-10T20:00:00", "flat", "T", 4000.0)
    clean_truth = make_truth(CAM, 5, cosmics=False)
    dirty_truth = make_truth(CAM, 5, cosmics=False, **{effect: True})
    outs = []
    for i, truth in enumerate((clean_truth, dirty_truth)):
        segs = simulate_detector(CAM, DET.id, spec, truth, 5)
        outs.append(read_raw(write_raw(tmp_path / f"r{i}.fits", CAM, DET.id, spec, segs, 5)))
    dt = dirty_truth.detectors[DET.id]
    base = dict(do_bootstrap=True, **QUIET)
    clean, _ = run_isr(outs[0], IsrConfig(**base))
    dirty, _ = run_isr(outs[1], IsrConfig(**base))
    if effect == "crosstalk":
        fixed, _ = run_isr(outs[1], IsrConfig(do_crosstalk=True, **base), load_calibs({"crosstalk": dt.crosstalk}))
    else:
        coeff = {"format": "cpframe-linearizer", "version": 1,
                 "amps": {a.name: {"type": "Polynomial", "coeffs": [-dirty_truth.amp(DET.id, a.name).nonlinearity,
                                                                     -dirty_truth.amp(DET.id, a.name).nonlinearity_cubic]}
                          for a in DET.amps}}
        fixed, _ = run_isr(outs[1], IsrConfig(do_linearize=True, **base), load_calibs({"linearizer": coeff}))
    effect_size = np.abs(dirty.image - clean.image).mean()
    residual = np.abs(fixed.image - clean.image).mean()
    assert effect_size > 1.0  # adu: the effect is there
    assert residual < 0.05 * effect_size


def test_config_from_dict_and_errors(synthetic_raw, tmp_path):
    cfg = IsrConfig.from_dict({"doBias": True, "doBootstrap": True, "doDeferredCharge": False,
                               "leadingToSkip": 2, "defaultSaturationSource": "NONE"})
    assert cfg.do_bias and cfg.do_bootstrap and cfg.overscan_leading_to_skip == 2
    with pytest.raises(ConfigError, match="'doBais'.*known options.*doBias"):
        IsrConfig.from_dict({"doBais": True})
    with pytest.raises(ConfigError, match="'doInterpolate'.* not implemented"):
        IsrConfig.from_dict({"doInterpolate": True})
    assert IsrConfig.from_dict({"doBrighterFatter": True}).do_brighter_fatter  # tests/test_bfk.py
    # ASTIER23 is the electrostatic correction (tests/test_electrostatic.py); others are refused
    astier = IsrConfig.from_dict({"brighterFatterCorrectionMethod": "ASTIER23"})
    assert astier.brighter_fatter_correction_method == "ASTIER23"
    with pytest.raises(ConfigError, match="brighter_fatter_correction_method='FLUX_CONSERVING'"):
        IsrConfig.from_dict({"brighterFatterCorrectionMethod": "FLUX_CONSERVING"})
    with pytest.raises(ConfigError, match="doBias.*true or false"):
        IsrConfig.from_dict({"doBias": "yes"})
    with pytest.raises(ConfigError, match="integer_dither_mode='RANDOM'"):
        IsrConfig(integer_dither_mode="RANDOM")
    raw = read_raw(synthetic_raw)
    with pytest.raises(IsrError, match=r"without their calibration: bias, flat, ptc .*doBias: false.*doFlat: false.*"
                                       r"doBootstrap: true"):
        run_isr(raw, IsrConfig(do_bias=True, do_flat=True))
    small = write_masked(tmp_path / "b.fits", np.zeros((3, 3), np.float32), np.zeros((3, 3), np.int32),
                         np.zeros((3, 3), np.float32))
    with pytest.raises(IsrError, match=r"bias has shape \(3, 3\), the detector \(500, 512\)"):
        run_isr(raw, IsrConfig(do_bootstrap=True, do_bias=True), load_calibs({"bias": small}))
    z = np.zeros(DET.shape, np.float32)
    mism = write_masked(tmp_path / "e.fits", z, z.astype(np.int32), z, {"LSST ISR UNITS": "electron"})
    with pytest.raises(IsrError, match="bias is in electron but the image is in adu"):
        run_isr(raw, IsrConfig(do_bootstrap=True, do_bias=True, do_raise_on_calib_mismatch=True),
                load_calibs({"bias": mism}))
    with pytest.raises(IsrError, match="unknown calibration key.*'flats'"):
        load_calibs({"flats": small})
    assert isr_config_for("flatBootstrap").do_dark and isr_config_for("ptc").units == "adu"
    with pytest.raises(ConfigError, match="no ISR settings for product 'fringe'"):
        isr_config_for("fringe")
