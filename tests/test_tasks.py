"""Science tasks end to end on one simulated mini detector, checked against the simulator truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpframe.camera.translators import compute_exposure_id
from cpframe.science import tasks
from cpframe.science.combine import clipped_stats
from cpframe.core.errors import UserInputError
from cpframe.science.imageio import MASK_BITS, read_header, read_masked


def _amp_pixel_noise(img: np.ndarray) -> float:
    """Pixel-to-pixel noise of an amp: clipped stdev after removing row and column means.

    Row means take out the fixed bias bump (constant along rows) and the per-row serial
    overscan residual; column means the per-column parallel overscan residual.
    """
    x = img.astype(np.float64)
    x = x - np.median(x, axis=1, keepdims=True)
    x = x - np.median(x, axis=0, keepdims=True)
    return clipped_stats(x)[1] * math.sqrt(x.size / ((x.shape[0] - 1) * (x.shape[1] - 1)))


def test_bias_noise_is_read_noise_over_sqrt_n(mini_sim, mini_products):
    """Combined bias (e-): per-amp pixel noise = read noise/sqrt(N) within 5 %, bias bump recovered."""
    bias = read_masked(mini_products.bias.path)
    assert bias.header["LSST ISR UNITS"] == "electron"
    assert bias.header["EXPTIME"] == 0.0 and bias.header["OBSTYPE"] == "bias"
    n = len(mini_sim.bias)
    pattern = mini_sim.truth.bias_pattern(mini_sim.detector.id)
    for amp in mini_sim.detector.amps:
        t = mini_sim.truth.amp(mini_sim.detector.id, amp.name)
        expected = t.read_noise / math.sqrt(n)
        noise = _amp_pixel_noise(bias.image[amp.bbox])
        assert noise == pytest.approx(expected, rel=0.05), amp.name
        # the fixed bias bump (adu, rows near the read-out start) survives, in electrons:
        # regress the row profile on the truth's (slope 1 = recovered at its amplitude)
        prof = bias.image[amp.bbox].mean(axis=1)
        truth = pattern[amp.bbox].mean(axis=1) * t.gain
        slope = np.polyfit(truth, prof, 1)[0]
        assert slope == pytest.approx(1.0, abs=0.1), amp.name


def test_dark_current_per_amp_matches_truth(mini_sim, mini_products):
    """Combined dark (e-/s): per-amp clipped mean within 5 % of the injected dark current."""
    dark = read_masked(mini_products.dark.path)
    assert dark.header["LSST ISR UNITS"] == "electron" and dark.header["DARKTIME"] == 1.0
    for amp in mini_sim.detector.amps:
        truth = mini_sim.truth.amp(mini_sim.detector.id, amp.name).dark_current
        measured = clipped_stats(dark.image[amp.bbox])[0]
        assert measured == pytest.approx(truth, rel=0.05), amp.name
    # hot pixels stay in the product (BAD cleared by CpDark), at their injected rate
    ys, xs, rates = mini_sim.truth.hot_pixels(mini_sim.detector.id)
    assert np.median(dark.image[ys, xs] / rates) == pytest.approx(1.0, rel=0.1)


def test_dark_cosmic_rays_are_masked_before_combining(mini_sim, mini_products):
    """Each dark's CR pixels are flagged; none of the cosmic-ray charge reaches the product."""
    dark = read_masked(mini_products.dark.path)
    # a 1000 s dark has ~8 cosmic rays of thousands of e-: without CR rejection the
    # max over the product would be > 1 e-/s away from hot pixels
    hot = mini_sim.truth.defect_mask(mini_sim.detector.id, ("hot",))
    from scipy import ndimage

    near_hot = ndimage.binary_dilation(hot, iterations=2)
    assert np.nanmax(np.abs(dark.image[~near_hot])) < 0.5
    assert all(e.exposure_time == 1000.0 for e in mini_products.dark.exposures)


def test_flat_pattern_recovered(mini_sim, mini_products):
    """Combined flat: the truth pattern (single detector: normalised to its mean) within 0.5 % rms."""
    flat = read_masked(mini_products.flat.path)
    assert flat.header["OBSTYPE"] == "flat" and flat.header["FLATSRC"] == "DOME"
    truth = mini_sim.truth.flat(mini_sim.detector.id, "r")
    good = (flat.mask == 0) & ~mini_sim.truth.defect_mask(mini_sim.detector.id)
    ratio = flat.image[good] / truth[good]
    ratio /= ratio.mean()
    assert np.sqrt(np.mean((ratio - 1) ** 2)) < 0.005
    # one detector: the normalisation puts its mean at ~1
    assert np.mean(flat.image[good]) == pytest.approx(1.0, rel=0.01)
    scales = [flat.header[f"CPP_INPUT_SCALE_{i}"] for i in range(len(mini_sim.flat))]
    # E[e] is each exposure's background: 8 flats of 10 s at 2000 e-/s (measured: 19797-19798 e-)
    assert scales == pytest.approx([2000.0 * 10.0] * len(mini_sim.flat), rel=0.03)
    assert max(scales) - min(scales) < 1e-3 * max(scales)  # same illumination and exposure time


def test_product_headers_carry_inputs_and_amp_statistics(mini_sim, mini_products):
    h = read_header(mini_products.bias.path)
    # raws carry DAYOBS/SEQNUM (real format); the exposure id comes from the translation
    ids = sorted(compute_exposure_id(read_header(p)["DAYOBS"], read_header(p)["SEQNUM"], "O") for p in mini_sim.bias)
    assert sorted(h[f"CPP_INPUT_{i}"] for i in range(len(ids))) == ids
    assert h["DATE-BEG"] <= h["DATE-AVG"] <= h["DATE-END"] and h["TIMESYS"] == "TAI"
    img = read_masked(mini_products.bias.path)
    for amp in mini_sim.detector.amps:
        pct = np.nanpercentile(img.image[amp.bbox], [0, 5, 50, 100])
        got = [h[f"LSST CALIB BIAS {amp.name} DISTRIBUTION {p}-PCT"] for p in (0, 5, 50, 100)]
        np.testing.assert_allclose(got, pct.astype(np.float32), rtol=1e-6)
        nbad = int(np.count_nonzero(img.mask[amp.bbox] & (1 << MASK_BITS["BAD"])))
        assert h[f"LSST CALIB BIAS {amp.name} BADPIX-NUM"] == nbad


def test_flat_normalisation_recovers_exposure_and_detector_factors():
    """B[d,e] = E[e]·G[d] (one entry missing, one NaN) is solved back (spec §6).

    G is fixed up to a constant: the solution must reproduce every finite B exactly and
    have a mean of 1 weighted by each detector's summed pixel count.
    """
    rng = np.random.default_rng(3)
    e_true = rng.uniform(1000, 5000, 6)
    g_true = rng.uniform(0.8, 1.2, 4)
    w = rng.integers(5000, 20000, 4)
    meas = [tasks.FlatMeasurement(exposure_id=100 + e, detector=d, physical_filter="r", background=float(
        e_true[e] * g_true[d]), sigma=1.0, n_pixels=int(w[d])) for e in range(6) for d in range(4)
        if not (e == 2 and d == 1)]
    meas.append(tasks.FlatMeasurement(exposure_id=102, detector=1, physical_filter="r", background=float("nan"),
                                      sigma=1.0, n_pixels=100))
    res = tasks.flat_normalize_task(meas)
    for m in meas:
        if math.isfinite(m.background):
            assert res.exp_scale[m.exposure_id] * res.det_scale[m.detector] == pytest.approx(m.background, rel=1e-9)
    g = np.array([res.det_scale[d] for d in range(4)])
    np.testing.assert_allclose(g / g_true, g[0] / g_true[0], rtol=1e-9)  # proportional to the truth
    weight = np.array([w[d] * (5 if d == 1 else 6) for d in range(4)])
    assert np.average(g, weights=weight) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(UserInputError, match="no flat exposure has a finite positive background"):
        tasks.flat_normalize_task(meas[-1:])


def test_isr_task_checks_detector_and_config(mini_sim, tmp_path):
    raw = mini_sim.bias[0]
    with pytest.raises(UserInputError, match="detector 4, the task was asked for detector 5"):
        tasks.isr_task(raw, tmp_path / "x.fits", {"doBootstrap": True}, detector=5)
    with pytest.raises(UserInputError, match="'doBias_typo'"):
        tasks.isr_task(raw, tmp_path / "x.fits", {"doBias_typo": True})
    st = tasks.isr_task(raw, tmp_path / "x.fits", {"doBootstrap": True})
    assert st.units == "adu" and st.observation_type == "bias" and st.detector == 4
    assert set(st.amp_stats) == set(mini_sim.detector.amp_names)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_dark_cr_task_flags_injected_cosmic_ray(tmp_path):
    """A synthetic track on a flat dark is flagged CR (grown by 2 px); BAD is cleared."""
    from cpframe.science.imageio import write_masked

    rng = np.random.default_rng(5)
    img = rng.normal(0, 5, (80, 90)).astype(np.float32)
    var = np.full(img.shape, 25.0, np.float32)
    mask = np.zeros(img.shape, np.int32)
    mask[10, 10] = 1 << MASK_BITS["BAD"]
    img[10, 10] = 5000.0  # a hot pixel flagged BAD is not a cosmic ray
    track = [(40, 30 + i) for i in range(6)]
    for y, x in track:
        img[y, x] += 2000.0
    p = tmp_path / "d.fits"
    write_masked(p, img, mask, var, {"EXPID": 7})
    res = tasks.dark_cr_task(p)
    out = read_masked(p)
    cr = (out.mask & (1 << MASK_BITS["CR"])) != 0
    assert all(cr[y, x] for y, x in track)
    assert cr[38, 28] and cr[42, 37] and not cr[37, 30]  # grown by exactly 2 pixels
    assert not cr[10, 10]
    assert not (out.mask & (1 << MASK_BITS["BAD"])).any()
    assert res.n_cosmic_rays == 1 and res.n_cr_pixels == int(cr.sum())
