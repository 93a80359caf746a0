"""Statistics machinery of cpframe.verify against plain numpy / astropy references."""

from __future__ import annotations

import doctest
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

import cpframe.verify.defects
import cpframe.verify.ptc
import cpframe.verify.results
import cpframe.verify.stats
from cpframe.core.errors import UserInputError
from cpframe.verify import VerifyConfig, read_residual, verify_exposure
from cpframe.verify.bias import MISSING_NOMINAL_MESSAGE
from cpframe.verify.config import UNKNOWN_FIELD_MESSAGE
from cpframe.verify.core import UNKNOWN_STAGE_MESSAGE
from cpframe.verify.stats import amp_corner_box, clipped_stats, repair_cosmic_rays
from tests.fixtures.verify import make_residual


def reference_clip(x, n_sigma=5.0, n_iter=3):
    """Independent plain-numpy MEANCLIP/STDEVCLIP: median/IQR window first, then mean/stdev."""
    x = x[np.isfinite(x)]
    lo_q, hi_q = np.percentile(x, [25, 75])
    center, width = np.median(x), n_sigma * 0.7413 * (hi_q - lo_q)
    for _ in range(n_iter):
        keep = x[(x >= center - width) & (x <= center + width)]
        center, width = keep.mean(), n_sigma * keep.std(ddof=1)
    return keep.mean(), keep.std(ddof=1), x.size - keep.size


def test_doctests_of_verify_modules():
    # (bin_image and its doctest moved from results to stats with the results<->core cycle fix)
    import cpframe.science.configs.verify  # VerifyConfig's module (cpframe.verify.config re-exports it)

    for mod in (cpframe.verify.stats, cpframe.verify.defects, cpframe.verify.ptc,
                cpframe.science.configs.verify):
        failed, tried = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert tried > 0 and failed == 0, mod.__name__


def test_clipped_stats_matches_numpy_and_astropy():
    rng = np.random.default_rng(11)
    x = rng.normal(100.0, 7.0, 20000)
    x[:60] = rng.uniform(300.0, 5000.0, 60)  # outliers far beyond 5 sigma
    mean, std, nclip = reference_clip(x)
    r = clipped_stats(x)
    assert r.mean == pytest.approx(mean, rel=1e-12)
    assert r.stdev == pytest.approx(std, rel=1e-12)
    assert r.n_clipped == nclip >= 60
    a_mean, _, a_std = sigma_clipped_stats(x, sigma=5, maxiters=3, cenfunc="mean", stdfunc="std", std_ddof=1)
    assert r.mean == pytest.approx(a_mean, rel=1e-6)
    assert r.stdev == pytest.approx(a_std, rel=1e-3)
    # non-finite values are excluded, not propagated
    y = np.concatenate([x, [np.nan, np.inf]])
    assert clipped_stats(y).mean == pytest.approx(r.mean, rel=1e-12)
    assert np.isnan(clipped_stats(np.array([np.nan])).mean)


def test_bias_amp_stats_exclude_masked_pixels(mini_comcam):
    det = mini_comcam.detector(4)
    res, _ = make_residual(det, seed=3)
    bad_bit = 1 << res.mask_bits["BAD"]
    det_bit = 1 << res.mask_bits["DETECTED"]
    sat_bit = 1 << res.mask_bits["SAT"]
    amp = det.amp("C13")
    ys, xs = amp.bbox
    # masked pixels get absurd values: they must not reach MEAN / NOISE
    res.image[ys.start:ys.start + 20, xs.start:xs.start + 10] = 1e6
    res.mask[ys.start:ys.start + 20, xs.start:xs.start + 10] |= bad_bit
    res.image[ys.start + 30, xs.start + 5] = -1e5
    res.mask[ys.start + 30, xs.start + 5] |= det_bit
    res.image[ys.stop - 1, xs.stop - 1] = 77.0  # SAT is not excluded by default
    res.mask[ys.stop - 1, xs.stop - 1] |= sat_bit
    stats = verify_exposure("bias", res, det)
    sub = res.image[ys, xs]
    excl = (res.mask[ys, xs] & (bad_bit | det_bit)) != 0
    vals = sub[~excl]
    s = stats["AMP"]["C13"]
    assert s["MEAN"] == pytest.approx(vals.mean(), rel=1e-12)
    assert s["MEDIAN"] == pytest.approx(np.median(vals), rel=1e-12)
    ref_mean, ref_std, _ = reference_clip(vals)
    assert s["NOISE"] == pytest.approx(ref_std, rel=1e-12)
    assert s["MEANCLIP"] == pytest.approx(ref_mean, rel=1e-12)
    assert s["NMASKED"] == int(excl.sum()) == 201
    # another amp is untouched by C13's pixels
    other = det.amp("C00")
    assert stats["AMP"]["C00"]["MEAN"] == pytest.approx(res.image[other.bbox].mean(), rel=1e-12)


@pytest.mark.parametrize("amp_name", ["C10", "C07"])  # flipped in x and y / not flipped
def test_amp_corner_is_at_the_readout_corner(mini_comcam, amp_name):
    det = mini_comcam.detector(0)
    amp = det.amp(amp_name)
    # independent reference: mark the first raw pixels read (raw rows/cols from 0), assemble by the flips
    raw = np.zeros((amp.data_rows, amp.data_cols))
    n = 200
    raw[: min(n, amp.data_rows), : min(n, amp.data_cols)] = 1.0
    assembled = raw[:, ::-1] if amp.flip_x else raw
    assembled = assembled[::-1, :] if amp.flip_y else assembled
    box = amp_corner_box(amp, n)
    marker = np.zeros(det.shape)
    marker[amp.bbox] = assembled
    expected = np.zeros(det.shape, dtype=bool)
    expected[box] = True
    assert np.array_equal(marker == 1.0, expected)
    res, _ = make_residual(det, seed=5)
    res.image[amp.bbox] += 50.0 * assembled
    stats = verify_exposure("bias", res, det)
    corner_ref = res.image[amp.bbox][assembled == 1.0].mean()
    assert stats["AMP"][amp_name]["AMP_CORNER"] == pytest.approx(corner_ref, rel=1e-12)
    assert stats["AMP"][amp_name]["AMP_CORNER"] == pytest.approx(50.0, abs=1.0)


def test_cosmic_ray_repair_recovers_the_noise():
    rng = np.random.default_rng(8)
    sigma = 6.0
    data = rng.normal(0.0, sigma, (250, 64))
    truth_std = data.std(ddof=1)
    hits = [(20, 10), (100, 40), (200, 55), (150, 5)]
    for y, x in hits:  # a 2-pixel track plus a fainter neighbour
        data[y, x] += 3000.0
        data[y + 1, x] += 1500.0
        data[y, x + 1] += 60.0
    bad = np.zeros(data.shape, dtype=bool)
    repaired, cr = repair_cosmic_rays(data, bad, 0.0, sigma)
    for y, x in hits:
        assert cr[y, x] and cr[y + 1, x] and cr[y, x + 1]
    assert cr.sum() <= 3 * len(hits) + 2
    assert data.std(ddof=1) > 5 * truth_std
    assert repaired.std(ddof=1) == pytest.approx(truth_std, rel=0.02)
    # a smooth bright source is not a cosmic ray
    yy, xx = np.mgrid[:250, :64]
    blob = 400.0 * np.exp(-((yy - 120) ** 2 + (xx - 30) ** 2) / (2 * 4.0**2))
    _, cr2 = repair_cosmic_rays(rng.normal(0, sigma, data.shape) + blob, bad, 0.0, sigma)
    assert cr2.sum() == 0


def test_read_residual_from_fits_masked_file(tmp_path, mini_comcam):
    det = mini_comcam.detector(2)
    res, _ = make_residual(det, seed=9)
    res.mask[10, 10] = 1 << 6  # bit 6 renamed BAD by this file's MP_ cards
    primary = fits.PrimaryHDU()
    for k, v in res.header.items():
        primary.header[f"HIERARCH {k}" if len(k) > 8 or " " in k else k] = v
    mask_hdu = fits.ImageHDU(res.mask.astype(np.int32), name="MASK")
    mask_hdu.header["MP_BAD"] = 6
    mask_hdu.header["HIERARCH MP_DETECTED"] = 5
    path = tmp_path / "res.fits"
    fits.HDUList([primary, fits.ImageHDU(res.image.astype(np.float32), name="IMAGE"), mask_hdu,
                  fits.ImageHDU(res.variance.astype(np.float32), name="VARIANCE")]).writeto(path)
    back = read_residual(path)
    assert back.mask_bits["BAD"] == 6
    assert np.allclose(back.image, res.image.astype(np.float32))
    stats = verify_exposure("bias", path, det)
    assert stats["AMP"][det.amps[0].name]["READ_NOISE"] == 6.0
    assert stats["DATA_ID"]["exposure"] == 2024111000010 and stats["DATA_ID"]["detector_name"] == det.name
    amp = [a for a in det.amps if a.bbox[0].start <= 10 < a.bbox[0].stop and a.bbox[1].start <= 10 < a.bbox[1].stop][0]
    assert stats["AMP"][amp.name]["NMASKED"] == 1


def test_user_errors_are_clear(tmp_path, mini_comcam):
    det = mini_comcam.detector(1)
    res, _ = make_residual(det)
    with pytest.raises(UserInputError, match=UNKNOWN_STAGE_MESSAGE + ".*'biass'.*BIAS"):
        verify_exposure("biass", res, det)
    with pytest.raises(UserInputError, match=re.escape(UNKNOWN_FIELD_MESSAGE) + ": noise_treshold"):
        VerifyConfig.from_mapping({"noise-treshold": 0.1})
    with pytest.raises(UserInputError, match="does not exist"):
        verify_exposure("bias", tmp_path / "nope.fits", det)
    with pytest.raises(UserInputError, match=r"shape \(500, 512\) does not match detector .* shape \(4000, 4072\)"):
        verify_exposure("bias", res, det.__class__(**{**det.__dict__, "amps": tuple(
            a.__class__(**{**a.__dict__, "data_rows": 2000, "data_cols": 509}) for a in det.amps)}))
    res.header = {k: v for k, v in res.header.items() if not k.startswith("LSST ISR READNOISE C1")}
    with pytest.raises(UserInputError, match=MISSING_NOMINAL_MESSAGE + r".*C10, C11.*gains applied"):
        verify_exposure("bias", res, det)
    with pytest.raises(UserInputError, match="verify_calib"):
        verify_exposure("ptc", res, det)
    with pytest.raises(UserInputError, match="uncorrected_path"):
        verify_exposure("defects", res, det)


def test_binned_residual_is_the_block_mean_of_unmasked_pixels(tmp_path, mini_comcam):
    det = mini_comcam.detector(3)
    res, _ = make_residual(det, seed=12)
    res.mask[:8, :8] = 1 << res.mask_bits["BAD"]  # the first block is fully masked
    res.mask[8, 8] = 1 << res.mask_bits["BAD"]
    out = tmp_path / "verifyBiasResidual8.fits"
    verify_exposure("bias", res, det, binned_path=out)
    binned = fits.getdata(out)
    assert binned.shape == (det.shape[0] // 8, det.shape[1] // 8)
    assert np.isnan(binned[0, 0])
    block = res.image[8:16, 8:16].copy()
    assert binned[1, 1] == pytest.approx(np.delete(block.ravel(), 0).mean(), rel=1e-5)
    assert binned[5, 7] == pytest.approx(res.image[40:48, 56:64].mean(), rel=1e-5)
    assert fits.getheader(out)["HIERARCH CPF DETECTOR_NAME"] == det.name
