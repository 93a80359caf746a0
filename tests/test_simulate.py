"""Tests of the camera simulator: headers, geometry, injected effects measured back, determinism.

Every measurement here is plain numpy / astropy on the written FITS files (the reference),
compared with the truth the simulator saved.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from cpframe.camera.models import load_camera
from cpframe.cli import main
from cpframe.core.errors import UserInputError
from cpframe.camera.simulate import (
    EFFECTS,
    ExposureSpec,
    Truth,
    load_plan,
    make_truth,
    read_plan,
    simulate,
    simulate_detector,
)

CAM = load_camera("LSSTComCam", "mini")


def _spec(seq, otype="flat", t=10.0, flux=2000.0, pf="r_03", day=20241201, dark=None):
    return ExposureSpec(
        day,
        seq,
        otype,
        pf,
        t,
        t + 0.3 if dark is None else dark,
        f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T20:{seq:02d}:00",
        "test",
        "TEST",
        flux,
    )


def _read(path):
    """Primary header and {AMPNAME: (data int array, header)} of a raw file."""
    with fits.open(path) as h:
        h.verify("exception")
        return h[0].header.copy(), {
            x.header["AMPNAME"]: (x.data.astype(np.int64), x.header.copy()) for x in h[1:]
        }


def _sec(text):
    """FITS section '[x1:x2,y1:y2]' -> (x1, x2, y1, y2), 1-based inclusive."""
    return tuple(int(v) for v in re.fullmatch(r"\[(\d+):(\d+),(\d+):(\d+)\]", text).groups())


def _overscan_corrected(data, hdr):
    """Data region minus the serial-overscan median of each row (adu, read-out frame)."""
    dx1, dx2, dy1, dy2 = _sec(hdr["DATASEC"])
    bx1, bx2, _, _ = _sec(hdr["BIASSEC"])
    row = np.median(data[:, bx1 - 1 : bx2], axis=1)
    return (data[dy1 - 1 : dy2, dx1 - 1 : dx2] - row[dy1 - 1 : dy2, None]).astype(float)


def _assemble(amps, shape, fn=_overscan_corrected):
    """Assembled detector image built from DATASEC/DETSEC alone (reversed ranges = flips)."""
    img = np.full(shape, np.nan)
    for data, hdr in amps.values():
        seg = fn(data, hdr)
        x1, x2, y1, y2 = _sec(hdr["DETSEC"])
        if x1 > x2:
            seg, (x1, x2) = seg[:, ::-1], (x2, x1)
        if y1 > y2:
            seg, (y1, y2) = seg[::-1, :], (y2, y1)
        img[y1 - 1 : y2, x1 - 1 : x2] = seg
    return img


def test_headers_and_geometry(mini_dataset):
    spec = mini_dataset.specs_for("SELECTION_FLAT_r")[0]
    hdr, amps = _read(mini_dataset.path(spec.exposure_id, 4))
    det = CAM.detector(4)
    # the real cameras' keys and value types (obs_lsst tests/headers, comCam-CC_O_20241108_000266):
    # no DETECTOR/EXPID, DAYOBS a string, upper-case IMGTYPE, CONTRLLR, RAFTBAY/CCDSLOT, LSST_NUM
    expect = {
        "INSTRUME": "ComCam",
        "TELESCOP": "Simonyi Survey Telescope",
        "RAFTBAY": "R22",
        "CCDSLOT": "S11",
        "LSST_NUM": det.serial,
        "CCD_MANU": "ITL",
        "OBSID": f"CC_O_{spec.day_obs}_{spec.seq_num:06d}",
        "IMGTYPE": "FLAT",
        "REASON": "flat",
        "PROGRAM": spec.science_program,
        "CONTRLLR": "O",
        "FILTER": "r_03",
        "FILTBAND": "r",
        "EXPTIME": spec.exposure_time,
        "SHUTTIME": spec.exposure_time,
        "DARKTIME": spec.dark_time,
        "TIMESYS": "TAI",
        "DAYOBS": str(spec.day_obs),
        "SEQNUM": spec.seq_num,
        "CAMSCALE": "mini",
        "CPFSEED": mini_dataset.seed,
    }
    assert "DETECTOR" not in hdr and "EXPID" not in hdr
    assert {k: hdr[k] for k in expect} == expect
    assert hdr["DATE-BEG"].startswith(spec.begin[:19]) and hdr["DATE-END"] > hdr["DATE-BEG"]
    assert det.serial.split("-")[0] == "ITL"
    # MJD from DATE-BEG with astropy (TAI) as the reference
    from astropy.time import Time

    assert abs(Time(hdr["DATE-BEG"], scale="tai").mjd - hdr["MJD-BEG"]) < 1e-8
    assert abs((hdr["MJD-END"] - hdr["MJD-BEG"]) * 86400 - spec.dark_time) < 1e-3
    with fits.open(mini_dataset.path(spec.exposure_id, 4)) as h:
        assert [x.name for x in h[1:]] == [f"SEGMENT{a.name[1:]}" for a in det.amps]
    for a in det.amps:
        data, h = amps[a.name]
        assert data.shape == a.raw_shape and h["BITPIX"] == 32
        assert (h["DATASEC"], h["BIASSEC"], h["DETSEC"]) == (a.datasec, a.biassec, a.detsec)
    # geometry: assembling by DETSEC alone must line the PRNU up with the truth flat
    img = _assemble(amps, det.shape)
    gains = np.zeros(det.shape)
    for a in det.amps:
        gains[a.bbox] = mini_dataset.truth.amp(4, a.name).gain
    prnu = mini_dataset.truth.prnu(4)
    smooth = mini_dataset.truth.flat(4, "r") / prnu  # illumination x QE (x defects)
    good = ~mini_dataset.truth.defect_mask(4)
    for a in det.amps:  # ~0 for an amp misplaced or flipped
        g = good[a.bbox]
        ratio = (img * gains)[a.bbox][g] / smooth[a.bbox][g]
        assert np.corrcoef(ratio, prnu[a.bbox][g])[0, 1] > 0.6, a.name


def test_read_noise_bias_level_and_drift(tmp_path):
    truth = make_truth(CAM, 11, bias_jitter=0)
    spec = _spec(1, "bias", 0.0, 0.0)
    segs = simulate_detector(CAM, 4, spec, truth, 11)
    for a, raw in zip(CAM.detector(4).amps, segs):
        at = truth.amp(4, a.name)
        over = raw[a.serial_overscan_slice].astype(float)
        n = over.shape[1]
        resid = over - over.mean(axis=1, keepdims=True)
        sigma = np.sqrt(resid.var() * n / (n - 1) - 1 / 12)  # remove the row drift and the rounding
        assert sigma == pytest.approx(at.read_noise / at.gain, rel=0.03)
        assert abs(np.median(over) - at.bias_level) <= at.bias_drift + 0.5
        # the same drift in data and overscan columns of each row
        data = raw[a.data_slice].astype(float) - truth.bias_pattern_raw(4, a.name)
        diff = data.mean(axis=1) - over[: a.data_rows].mean(axis=1)
        row_sigma = at.read_noise / at.gain * np.sqrt(1 / a.data_cols + 1 / n)
        assert np.abs(diff).max() < 5 * row_sigma
        drift = over.mean(axis=1)
        assert drift.max() - drift.min() > at.bias_drift  # the drift is there and visible


def test_bias_pattern_survives_overscan_correction():
    truth = make_truth(CAM, 12)
    segs = simulate_detector(CAM, 0, _spec(1, "bias", 0.0, 0.0), truth, 12)
    amps = {
        a.name: (s.astype(np.int64), {"DATASEC": a.datasec, "BIASSEC": a.biassec, "DETSEC": a.detsec})
        for a, s in zip(CAM.detector(0).amps, segs)
    }
    img = _assemble(amps, CAM.detector(0).shape)
    pattern = truth.bias_pattern(0)
    # average many rows to beat the noise: the first rows read carry the bump
    assert np.corrcoef(img.mean(axis=1), pattern.mean(axis=1))[0, 1] > 0.9


def test_gain_from_a_flat_pair(mini_dataset):
    pair = [s for s in mini_dataset.specs_for("SELECTION_PTC") if s.exposure_time == 6.5]
    assert len(pair) == 2
    _, a1 = _read(mini_dataset.path(pair[0].exposure_id, 0))
    _, a2 = _read(mini_dataset.path(pair[1].exposure_id, 0))
    mask = mini_dataset.truth.defect_mask(0)
    for amp in CAM.detector(0).amps:
        d1, h = a1[amp.name]
        d2, _ = a2[amp.name]
        i1 = _overscan_corrected(d1, h)
        i2 = _overscan_corrected(d2, h)
        good = ~_readout(mask[amp.bbox], amp)
        bx1, bx2, _, _ = _sec(h["BIASSEC"])
        over = d1[:, bx1 - 1 : bx2] - d1[:, bx1 - 1 : bx2].mean(axis=1, keepdims=True)
        rn2 = over.var()  # adu^2
        diff = (i1 - i2)[good]
        mean = 0.5 * (i1 + i2)[good].mean()
        gain = mean / (0.5 * diff.var() - rn2)
        assert gain == pytest.approx(mini_dataset.truth.amp(0, amp.name).gain, rel=0.05), amp.name


def _readout(img, amp):
    if amp.flip_x:
        img = img[:, ::-1]
    if amp.flip_y:
        img = img[::-1, :]
    return img


def test_dark_current_and_hot_pixels():
    truth = make_truth(CAM, 13, cosmics=0)
    spec = _spec(1, "dark", 1000.0, 0.0, dark=1000.0)
    segs = simulate_detector(CAM, 4, spec, truth, 13)
    det = CAM.detector(4)
    hot = truth.defect_mask(4, ["hot"])
    bad = truth.defect_mask(4)
    amps = {
        a.name: (s.astype(np.int64), {"DATASEC": a.datasec, "BIASSEC": a.biassec, "DETSEC": a.detsec})
        for a, s in zip(det.amps, segs)
    }
    img = _assemble(amps, det.shape) - truth.bias_pattern(4)
    for a in det.amps:
        at = truth.amp(4, a.name)
        e = img[a.bbox][~bad[a.bbox]] * at.gain
        err = at.read_noise / np.sqrt(e.size) + np.sqrt(at.dark_current * 1000 / e.size)
        assert e.mean() / 1000 == pytest.approx(at.dark_current, abs=5 * err / 1000 + 1e-4), a.name
    gains = np.zeros(det.shape)
    for a in det.amps:
        gains[a.bbox] = truth.amp(4, a.name).gain
    rate = truth.dark_rate(4)
    measured = img[hot] * gains[hot] / 1000
    assert measured == pytest.approx(rate[hot], rel=0.1, abs=0.05)
    assert (rate[hot] >= 3.5).all()


def test_cosmic_rays_only_where_injected():
    with_cr = make_truth(CAM, 14, cosmics=5.0)
    without = make_truth(CAM, 14, cosmics=0)
    spec = _spec(2, "dark", 300.0, 0.0)
    on = simulate_detector(CAM, 4, spec, with_cr, 14)
    off = simulate_detector(CAM, 4, spec, without, 14)
    changed = 0
    for a, x, y in zip(CAM.detector(4).amps, on, off):
        d = x - y
        assert (d >= 0).all()  # charge only added
        assert not d[a.serial_overscan_slice].any() and not d[a.parallel_overscan_slice].any()
        changed += int((d[a.data_slice] > 50).sum())
    assert changed > 20  # 5 /cm^2/s x 0.256 cm^2 x 300 s: hundreds of events


def test_saturation_full_well_and_adc_clip():
    truth = make_truth(CAM, 15)
    spec = _spec(3, "flat", 100.0, 20000.0)  # 2e6 e-: far past full well
    segs = simulate_detector(CAM, 4, spec, truth, 15)
    dead = truth.defect_mask(4, ["dead", "cold", "bad_column"])
    for a, raw in zip(CAM.detector(4).amps, segs):
        at = truth.amp(4, a.name)
        data = raw[a.data_slice][~_readout(dead[a.bbox], a)]
        assert np.median(data) == pytest.approx(at.saturation, abs=at.bias_drift + 3 + at.bias_bump)
        assert at.saturation == pytest.approx(at.bias_level + at.full_well / at.gain)
    no_fw = make_truth(CAM, 15, saturation=False)
    segs = simulate_detector(CAM, 4, spec, no_fw, 15)
    a = CAM.detector(4).amps[3]
    assert segs[3][a.data_slice].max() == 2**18 - 1 == no_fw.amp(4, a.name).saturation


def test_defects_visible_in_a_flat(mini_dataset):
    spec = mini_dataset.specs_for("SELECTION_FLAT_g")[0]
    hdr, amps = _read(mini_dataset.path(spec.exposure_id, 4))
    det = CAM.detector(4)
    img = _assemble(amps, det.shape)
    truth = mini_dataset.truth
    dt = truth.detectors[4]
    expected = truth.flat(4, "g") * truth.flat_norm["g"] * spec.flux * spec.exposure_time
    gains = np.zeros(det.shape)
    for a in det.amps:
        gains[a.bbox] = truth.amp(4, a.name).gain
    e = img * gains
    kinds = {k for *_, k in dt.defects}
    assert {"hot", "cold", "dead", "bad_column"} <= kinds
    for (x0, y0, w, h, kind), val in zip(dt.defects, dt.defect_values):
        box = (slice(y0, y0 + h), slice(x0, x0 + w))
        if kind == "dead":
            assert np.abs(e[box]).max() < 60  # read noise only
        elif kind in ("cold", "bad_column"):
            np.testing.assert_allclose(e[box].mean(), expected[box].mean(), rtol=0.05)
            assert val < 0.9
    # the manual (curated) defects are among the truth defects of R22_S11
    assert any(k == "bad_column" and h > 50 for *_, h, k in dt.defects)


def test_flat_truth_mean_over_focal_plane_is_one():
    truth = make_truth(CAM, 16)
    for band in ("g", "z"):
        means = [truth.flat(d, band).mean() for d in CAM.detector_ids]
        assert np.mean(means) == pytest.approx(1.0, abs=2e-3)
        assert np.std(means) > 0.01  # detectors differ (vignetting, QE)
    flat = truth.flat(4, "r")
    assert flat.dtype == np.float64 and flat.shape == CAM.detector(4).shape


def test_crosstalk_and_nonlinearity():
    spec = _spec(4, "flat", 10.0, 2000.0)
    base = make_truth(CAM, 17)
    xt = make_truth(CAM, 17, crosstalk=1e-3)
    nl = make_truth(CAM, 17, nonlinearity=-1e-6)
    s0 = simulate_detector(CAM, 4, spec, base, 17)
    s1 = simulate_detector(CAM, 4, spec, xt, 17)
    s2 = simulate_detector(CAM, 4, spec, nl, 17)
    amps = CAM.detector(4).amps
    signal = np.array(
        [
            np.median(_overscan_corrected(s, {"DATASEC": a.datasec, "BIASSEC": a.biassec}))
            for a, s in zip(amps, s0)
        ]
    )
    matrix = xt.detectors[4].crosstalk
    assert (
        matrix.shape == (16, 16)
        and np.all(np.diag(matrix) == 0)
        and matrix.max() == pytest.approx(1e-3, rel=0.5)
    )
    assert not base.detectors[4].crosstalk.any()
    for a, x, y, z in zip(amps, s0, s1, s2):
        d = np.median((y - x)[a.data_slice])
        assert d == pytest.approx(matrix[a.index] @ signal, abs=1.0)
        assert not (y - x)[a.serial_overscan_slice].any()
        ratio = np.median(z[a.data_slice] - x[a.data_slice]) / signal[a.index]
        at = nl.amp(4, a.name)  # each amp has its own curve around the nominal strength
        assert 1.4 * -1e-6 <= at.nonlinearity <= 0.6 * -1e-6 and at.nonlinearity_cubic <= 0
        expected = at.nonlinearity * signal[a.index] + at.nonlinearity_cubic * signal[a.index] ** 2
        assert ratio == pytest.approx(expected, rel=0.05)
    k2 = [nl.amp(4, a.name).nonlinearity for a in amps]
    assert np.std(k2) > 0.1 * 1e-6  # the amps differ
    assert base.amp(4, amps[0].name).nonlinearity == 0.0
    # switching the effect on changes no other draw of the truth
    assert [nl.amp(4, a.name).gain for a in amps] == [base.amp(4, a.name).gain for a in amps]


def test_deterministic_bytes(simulate_tiny, tmp_path):
    specs = [_spec(5, "flat"), _spec(6, "dark", 30.0, 0.0)]
    a = simulate_tiny(specs, tmp_path / "a", seed=3)
    b = simulate_tiny(specs, tmp_path / "b", seed=3)
    c = simulate_tiny(specs, tmp_path / "c", seed=4)
    d = simulate(
        specs, tmp_path / "d", "LSSTComCam", "mini", seed=3, detectors=[0, 4], workers=2, executor="thread"
    )
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in a]
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in b]
    assert all(x != hashlib.sha256(p.read_bytes()).hexdigest() for x, p in zip(digest, c))
    # a detector's file does not depend on which other detectors or workers were used
    assert digest == [hashlib.sha256(p.read_bytes()).hexdigest() for p in d if "R22_S11" in p.name]
    assert digest[0] != digest[1]


def test_process_pool_matches_in_process(simulate_tiny, tmp_path):
    specs = [_spec(7, "bias", 0.0, 0.0), _spec(8, "flat")]
    a = simulate_tiny(specs, tmp_path / "a", detectors=(0, 4))
    b = simulate(
        specs, tmp_path / "b", "LSSTComCam", "mini", seed=7, detectors=[0, 4], workers=2, executor="process"
    )
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_truth_save_load_round_trip(mini_dataset):
    loaded = Truth.load(mini_dataset.root / "truth")
    t = mini_dataset.truth
    assert loaded.instrument == "LSSTComCam" and loaded.scale == "mini" and loaded.seed == t.seed
    assert loaded.amp(4, "C10") == t.amp(4, "C10")
    assert loaded.detectors[0].defects == t.detectors[0].defects
    np.testing.assert_array_equal(loaded.flat(4, "i"), t.flat(4, "i"))
    np.testing.assert_array_equal(loaded.bias_pattern(0), t.bias_pattern(0))
    import json

    doc = json.loads((mini_dataset.root / "truth" / "truth.json").read_text())
    assert doc["detectors"]["4"]["amps"]["C00"]["gain"] == t.amp(4, "C00").gain
    with np.load(mini_dataset.root / "truth" / "truth_arrays.npz") as z:
        assert sorted(z.files) == ["prnu_0", "prnu_4"]
    with pytest.raises(UserInputError, match="cannot read truth.json"):
        Truth.load(mini_dataset.root / "20241110")


def test_truth_values_in_itl_ranges():
    truth = make_truth(load_camera("LSSTComCam", "mini"), 18)
    amps = [a for d in truth.detectors.values() for a in d.amps.values()]
    assert all(
        1.5 <= a.gain <= 1.8 and 5 <= a.read_noise <= 9 and 15000 <= a.bias_level <= 25000 for a in amps
    )
    assert all(0.005 <= a.dark_current <= 0.02 and 100000 <= a.full_well <= 110000 for a in amps)
    assert len({round(a.gain, 6) for a in amps}) == len(amps)  # gains differ per amp
    with pytest.raises(UserInputError, match="unknown simulator effect.*sparkles"):
        make_truth(CAM, 1, sparkles=True)
    assert set(truth.effects) == set(EFFECTS)


def test_plans_and_their_validation(tmp_path):
    demo = read_plan("demo")
    assert demo.instrument == "LSSTComCam" and len(demo.specs) == 74
    ptc = [s for s in demo.specs if s.observation_reason == "ptc"]
    times = sorted(s.exposure_time for s in ptc)
    assert len(ptc) == 34 and times[::2] == times[1::2]  # 17 pairs
    assert [s.begin for s in demo.specs] == sorted(s.begin for s in demo.specs)
    assert load_plan("dmtn222", "LATISS")[0].obs_id("LATISS").startswith("AT_O_20241110_000044")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "instrument: LSSTComCam\nnights:\n"
        "  - day_obs: 20241110\n    start: '2024-11-11T12:00:30'\n    blocks:\n"
        "      - {observation_type: flat, count: 2, exposure_time: 5, flux: 100, seq_start: 5, colour: red}\n"
        "      - {observation_type: bias, count: 1, seq_start: 5}\n"
        "      - {observation_type: dusk, count: 1}\n"
        "      - {observation_type: flat, count: 1, exposure_time: 5, physical_filter: q_99, flux: 1}\n"
    )
    with pytest.raises(UserInputError) as err:
        read_plan(bad)
    msg = str(err.value)
    for words in (
        "blocks[0].colour: unknown key; allowed keys: band, count",
        "seq_num 5 of day_obs 20241110 is used twice",
        "outside day_obs",
        "observation_type: 'dusk' is not allowed; use one of 'bias'",
        "no physical filter 'q_99'",
    ):
        assert words in msg
    with pytest.raises(UserInputError, match="not found.*demo, dmtn222"):
        read_plan("nosuchplan")


def test_cli_simulate_and_plan_selections(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text(
        "instrument: LSSTComCam\nnights:\n  - day_obs: 20241201\n    blocks:\n"
        "      - {observation_type: bias, count: 2, seq_start: 3, selections: [SELECTION_BIAS]}\n"
        "selections:\n  SELECTION_BIAS: \"instrument='{instrument}' and exposure.seq_num in (3..4)\"\n"
    )
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            str(tmp_path / "out"),
            "--plan",
            str(plan),
            "--detectors",
            "R22_S22",
            "--effect",
            "crosstalk=on",
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 2 raw files" in r.output and "day_obs 20241201: 2 bias" in r.output
    assert "2 exposures x 1 detector(s)" in r.output
    assert len(list((tmp_path / "out").rglob("*_R22_S22.fits"))) == 2
    assert Truth.load(tmp_path / "out").detectors[8].crosstalk.any()
    r = CliRunner().invoke(main, ["plan-selections", str(plan), "-i", "LATISS"])
    assert r.output.strip() == "export SELECTION_BIAS=\"instrument='LATISS' and exposure.seq_num in (3..4)\""
    r = CliRunner().invoke(
        main, ["simulate", str(tmp_path / "o2"), "--plan", str(plan), "--effect", "cosmics"]
    )
    assert r.exit_code == 2 and "--effect 'cosmics': write NAME=VALUE" in r.output
