"""The fused path's compiled per-pixel ISR (cpframe/science/fused_isr.py) against the numpy steps it replaces.

The reference below is written here with numpy, statement by statement as run_isr applies the steps
(cpframe/science/isr.py: integer conversion, dither, serial overscan, SAT/SUSPECT, gain, parallel overscan,
orientation, bias, dark, defects, NaN masking, variance, flat); the kernels must equal it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest

from cpframe.science.fused_isr import RAW_SAT, RAW_SUSPECT, amp_steps, amp_to_band, raw_rows, threshold
from cpframe.science.imageio import MASK_BITS
from cpframe.science.isr import IsrConfig, _flat_correct
from cpframe.science.fused_isr import DitherStream

BIT = {k: np.int32(1 << v) for k, v in MASK_BITS.items()}


def _raw_bytes(rng, rows, cols, itemsize):
    lo, hi = (-32768, 32767) if itemsize == 2 else (-2**31, 2**31 - 1)
    ints = rng.integers(lo, hi, size=rows * cols, endpoint=True, dtype=np.int64)
    return ints.astype(">i2" if itemsize == 2 else ">i4")


def _numpy_rows(buf, bzero, cols, c0, c1, dither, offset, svec, sat, sus, gain):
    """What run_isr does to these rows, with numpy (one statement per step)."""
    if bzero == 0:
        x = buf.astype(np.float32)
    elif buf.dtype.itemsize == 2:
        x = np.add(buf, np.float32(bzero), dtype=np.float32)
    else:
        x = (buf.astype(np.int64) + bzero).astype(np.float32)  # the exact sum rounded once (astropy's scaled data)
    x = x.reshape(-1, cols)
    if dither is not None:
        x += dither.reshape(-1, cols) + np.float32(offset)
    if svec is not None:
        x -= svec[:, None]
    x = x[:, c0:c1].copy()
    bits = np.where(x >= sat, np.int32(RAW_SAT), np.int32(0)) | np.where(x >= sus, np.int32(RAW_SUSPECT), np.int32(0))
    if gain is not None:
        x *= np.float32(gain)
    return x, bits


@pytest.mark.parametrize("itemsize,bzero", [(2, 0), (2, 32768), (4, 0), (4, 2**31), (4, -1000)])
@pytest.mark.parametrize("level_type", [float, np.float64])
def test_raw_rows_equal_numpy_bit_for_bit(itemsize, bzero, level_type):
    rng = np.random.default_rng(itemsize * 7 + bzero % 97)
    rows, cols, c0, c1 = 13, 41, 3, 35
    buf = _raw_bytes(rng, rows, cols, itemsize)
    # the rows as if they began at pixel 1001 of the raw: the kernel makes numpy's numbers of that position
    seed, first = 77 + itemsize, 1001
    dither = np.random.default_rng(seed).random(first + rows * cols, dtype=np.float32)[first:]
    stream = DitherStream(np.random.PCG64(seed).state)
    svec = rng.normal(1000, 5, rows).astype(np.float32)
    x_ref, _ = _numpy_rows(buf, bzero, cols, 0, cols, None, 0.0, None, math.inf, math.inf, None)
    # levels that float32 cannot hold: numpy compares in float32 with a Python float, in float64 with np.float64
    sat = level_type(float(np.median(x_ref)) + 0.3)
    sus = level_type(float(np.quantile(x_ref, 0.25)) + 0.1)
    ref, ref_bits = _numpy_rows(buf, bzero, cols, c0, c1, dither, -0.5, svec, sat, sus, 1.7)
    out = np.full((rows, c1 - c0), np.nan, np.float32)
    bits = np.full((rows, c1 - c0), -1, np.int32)
    any_bit = raw_rows(buf, itemsize, bzero, cols, c0, c1, stream, first, -0.5, svec, threshold(sat), threshold(sus),
                       1.7, out, bits)
    np.testing.assert_array_equal(out.view(np.int32), ref.view(np.int32))
    np.testing.assert_array_equal(bits, ref_bits)
    assert any_bit and 0 < (ref_bits & RAW_SAT).sum() < ref_bits.size
    # all columns, no dither, no levels, no gain, no bits: the plain conversion
    plain = np.empty((rows, cols), np.float32)
    assert not raw_rows(buf, itemsize, bzero, cols, 0, cols, None, 0, 0.0, None, (math.inf, False),
                        (math.inf, False), None, plain, None)
    np.testing.assert_array_equal(plain, x_ref)


def test_threshold_follows_numpys_comparison():
    img = np.array([65535.0, 65535.00390625], np.float32)
    for level in (65535.001, np.float64(65535.001), 65535, np.float32(65535.001)):
        value, in32 = threshold(level)
        x = img.astype(np.float64)
        mine = (img >= np.float32(value)) if in32 else (x >= value)
        np.testing.assert_array_equal(mine, img >= level)
    assert threshold(math.inf) == (math.inf, False) and threshold(math.nan)[0] == math.inf


@dataclass
class _Calib:
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray


def _calib(rng, shape, level, nodata=False):
    mask = np.where(rng.random(shape) < 0.05, BIT["BAD"], np.int32(0)).astype(np.int32)
    if nodata:
        mask[rng.random(shape) < 0.05] |= BIT["NO_DATA"]
    return _Calib(rng.normal(level, level * 0.01 + 1, shape).astype(np.float32), mask,
                  rng.uniform(0.5, 2, shape).astype(np.float32))


def _numpy_band(seg, bits, pvec, flip_x, flip_y, x0, width, *, bias, dark, dark_scale, defect, amp_bad, nan,
                variance, neg, flat, flat_scale, no_data_variance):
    """The old fused path's numpy steps (run_isr's, on the assembled amp; its flat step itself) for one amp's
    columns."""
    rows, n = seg.shape
    cs = slice(x0, x0 + n)
    im = np.zeros((rows, width), np.float32)
    mk = np.zeros((rows, width), np.int32)
    vr = np.zeros((rows, width), np.float32)
    data = seg - pvec if pvec is not None else seg.copy()
    b = np.where(bits & RAW_SAT, BIT["SAT"], 0) | np.where(bits & RAW_SUSPECT, BIT["SUSPECT"], 0)
    if flip_x:
        data, b = data[:, ::-1], b[:, ::-1]
    if flip_y:
        data, b = data[::-1], b[::-1]
    im[:, cs] = data
    mk[:, cs] |= b.astype(np.int32)
    if bias is not None:
        im -= bias.image
        vr += bias.variance
        mk |= bias.mask
    if dark is not None:
        im -= np.float32(dark_scale) * dark.image
        vr += np.float32(dark_scale * dark_scale) * dark.variance
        mk |= dark.mask
    if defect is not None:
        mk[defect] |= BIT["BAD"]
        if amp_bad:
            mk[:, cs] |= BIT["BAD"]
    if nan:
        mk[~np.isfinite(im)] |= BIT["UNMASKEDNAN"]
    if variance is not None:
        vr[:, cs] += im[:, cs] * np.float32(variance[0]) + np.float32(variance[1])
        if neg:
            mk[vr < 0] |= BIT["BAD"]
    if flat is not None:  # run_isr's own flat step, its scale fixed as the fused path fixes it
        _flat_correct(im, vr, mk, flat, IsrConfig(flat_scaling_type="USER", flat_user_scale=flat_scale,
                                                  no_data_variance=no_data_variance))
    return im[:, cs], mk[:, cs], vr[:, cs]


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("flip_y", [False, True])
@pytest.mark.parametrize("steps", ["all", "bootstrap", "amp_bad", "no_pvec_no_bits"])
def test_amp_to_band_equals_numpy_bit_for_bit(flip_x, flip_y, steps):
    rng = np.random.default_rng(17 + 2 * flip_x + flip_y)
    rows, n, x0, width = 11, 23, 9, 45
    seg = rng.normal(50, 30, (rows, n)).astype(np.float32)
    seg[rng.random((rows, n)) < 0.03] = np.nan
    seg[0, 0] = np.inf
    bits = rng.integers(0, 4, (rows, n)).astype(np.int32)
    pvec = rng.normal(3, 1, n).astype(np.float32)
    kw = dict(bias=_calib(rng, (rows, width), 10.0), dark=_calib(rng, (rows, width), 2.0), dark_scale=1.37,
              defect=rng.random((rows, width)) < 0.05, amp_bad=False, nan=True, variance=(1 / 1.3, (6.0 / 1.3) ** 2),
              neg=True, flat=_calib(rng, (rows, width), 1.0, nodata=True), flat_scale=0.93, no_data_variance=7.5)
    if steps == "bootstrap":
        kw.update(bias=None, dark=None, defect=None, flat=None, variance=(1.0, 4.0))
    elif steps == "amp_bad":
        kw.update(amp_bad=True)
    elif steps == "no_pvec_no_bits":
        pvec, bits = None, np.zeros_like(bits)
    ref_im, ref_mk, ref_vr = _numpy_band(seg, bits, pvec, flip_x, flip_y, x0, width, **kw)
    im = np.full((rows, width), -99.0, np.float32)  # whatever was there: every pixel of the amp is written
    mk = np.full((rows, width), -1, np.int32)
    vr = np.full((rows, width), -99.0, np.float32)
    consts = amp_steps(MASK_BITS, dark_scale=kw["dark_scale"], amp_bad=kw["amp_bad"], nan_masking=kw["nan"],
                       variance=kw["variance"], mask_negative_variance=kw["neg"], flat_scale=kw["flat_scale"],
                       no_data_variance=kw["no_data_variance"])
    amp_to_band(seg, None if steps == "no_pvec_no_bits" else bits, pvec, flip_x, flip_y, x0, im, mk, vr,
                kw["bias"], kw["dark"], kw["defect"], kw["flat"], consts)
    cs = slice(x0, x0 + n)
    np.testing.assert_array_equal(im[:, cs].view(np.int32), ref_im.view(np.int32))
    np.testing.assert_array_equal(mk[:, cs], ref_mk)
    np.testing.assert_array_equal(vr[:, cs].view(np.int32), ref_vr.view(np.int32))
    assert (im[:, :x0] == -99.0).all() and (mk[:, x0 + n:] == -1).all()  # nothing outside the amp's columns
    if steps != "no_pvec_no_bits":
        assert (ref_mk & BIT["SAT"]).any() and (ref_mk & BIT["UNMASKEDNAN"]).any()
    # the exposure's statistics accumulated in the same pass, against a plain Python loop over the pixels written
    # in row order (the same float64 additions in the same order: equal bit for bit), the histogram too; and the
    # pass without statistics returns zeros
    from cpframe.science.fused_stats import _AmpAccumulator

    acc = _AmpAccumulator()
    acc.add(np.nan_to_num(im[:, cs], posinf=0.0), np.zeros((rows, n), np.int32))  # a first block sets its range
    ignore, sat_b, bad_b, sus_b, shift, lo, inv_w, hist = acc.kernel_args()
    hist_ref = hist.copy()
    want = [0, 0.0, 0.0, 0, 0, 0]
    for v, m in zip(im[:, cs].ravel().tolist(), mk[:, cs].ravel().tolist()):
        want[3:] = [want[3] + bool(m & sat_b), want[4] + bool(m & bad_b), want[5] + bool(m & sus_b)]
        if m & ignore or not math.isfinite(v):
            continue
        want[0] += 1
        want[1] += v - shift
        want[2] += (v - shift) * (v - shift)
        k = (v - lo) * inv_w
        hist_ref[0 if k < 0 else (len(hist_ref) - 1 if k >= len(hist_ref) - 2 else int(k) + 1)] += 1
    got = amp_to_band(seg, None if steps == "no_pvec_no_bits" else bits, pvec, flip_x, flip_y, x0, im, mk, vr,
                      kw["bias"], kw["dark"], kw["defect"], kw["flat"], consts, acc.kernel_args())
    assert got == tuple(want) and (got[0] > 0 or steps == "amp_bad")
    np.testing.assert_array_equal(hist, hist_ref)
    assert amp_to_band(seg, None if steps == "no_pvec_no_bits" else bits, pvec, flip_x, flip_y, x0, im, mk, vr,
                       kw["bias"], kw["dark"], kw["defect"], kw["flat"], consts) == (0, 0.0, 0.0, 0, 0, 0)
    if steps != "no_pvec_no_bits":
        assert got[3] > 0 and (steps != "amp_bad" or got[4] == n * rows)  # SAT counted; BAD on a bad amp


def test_fused_without_linearizer_equals_unfused(mini_sim, mini_products, tmp_path):
    """The parallel overscan subtracted by the kernel (no linearizer in between), every other step on."""
    from cpframe.science import tasks
    from cpframe.science.combine import combine_config_for
    from cpframe.science.fused import isr_combine
    from cpframe.science.imageio import read_masked
    from tests._run_helpers import full_isr_setup

    icfg, calibs = full_isr_setup(mini_sim, mini_products, 1e-4)
    icfg = replace(icfg, do_linearize=False, do_suspect=True, suspect_level=float(icfg.saturation_level or 1e5) * 0.5)
    calibs.pop("linearizer")
    ccfg = replace(combine_config_for("dark"), combine="MEAN", check_no_data=False)
    raws = mini_sim.dark[:4]
    isr_combine(raws, tmp_path / "fused.fits", icfg, ccfg, calibs, memory_bytes=60_000)
    u = tasks._product("dark", raws, tmp_path / "plain.fits", calibs=calibs, work_dir=tmp_path / "isr",
                       isr_config=icfg, combine_config=ccfg, memory_bytes=10**8, threads=1, workers=1, fused=False)
    a, b = read_masked(tmp_path / "fused.fits"), read_masked(u.path)
    np.testing.assert_allclose(a.image, b.image, rtol=2.4e-7, atol=0)
    np.testing.assert_allclose(a.variance, b.variance, rtol=2.4e-7, atol=0)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert np.isfinite(a.image).mean() > 0.95


def _products_equal(a, b):
    from cpframe.science.imageio import read_masked

    A, B = read_masked(a), read_masked(b)
    np.testing.assert_array_equal(A.image.view(np.int32), B.image.view(np.int32))
    np.testing.assert_array_equal(A.variance.view(np.int32), B.variance.view(np.int32))
    np.testing.assert_array_equal(A.mask, B.mask)
    qa = [{k: v for k, v in X.header.items() if k.startswith("LSST CALIB ")} for X in (A, B)]
    assert qa[0] == qa[1] and any("DISTRIBUTION" in k for k in qa[0])  # per-amp QA (threads too)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_stream_the_same_product_and_statistics(mini_sim, mini_products, tmp_path, threads):
    """Full ISR (crosstalk, linearizer, bias, dark, defects, flat) of 5 raws: the product bit for bit the one
    thread's, in small blocks and in one block; in one block the exposures' header cards too."""
    from cpframe.science.combine import combine_config_for
    from cpframe.science.fused import isr_combine
    from tests._run_helpers import full_isr_setup

    icfg, calibs = full_isr_setup(mini_sim, mini_products, 1e-4)
    ccfg = replace(combine_config_for("dark"), combine="MEANCLIP", check_no_data=False)
    raws = mini_sim.dark[:5]
    for label, budget in (("blocks", 60_000), ("whole", 10**9)):
        _, r1, e1 = isr_combine(raws, tmp_path / f"{label}1.fits", icfg, ccfg, calibs, memory_bytes=budget)
        _, rn, en = isr_combine(raws, tmp_path / f"{label}n.fits", icfg, ccfg, calibs, memory_bytes=budget,
                                threads=threads)
        _products_equal(tmp_path / f"{label}1.fits", tmp_path / f"{label}n.fits")
        assert rn.amp_stats == r1.amp_stats and list(rn.amp_stats) == [a.name for a in mini_sim.detector.amps]
        if label == "blocks":
            assert rn.strip_rows <= r1.strip_rows < 20  # more threads hold more rows in flight: smaller blocks
            for a, b in zip(e1, en):
                for amp in mini_sim.detector.amps:
                    for k in ("MEAN", "STDEV"):
                        key = f"LSST ISR FINAL {k} {amp.name}"
                        assert a.header[key] == pytest.approx(b.header[key], rel=1e-9), key
        else:
            assert rn.strip_rows == r1.strip_rows == mini_sim.detector.amps[0].data_rows
            assert [e.header for e in e1] == [e.header for e in en]


def test_threads_stream_a_dark_with_its_cosmic_rays(mini_sim, mini_products, tmp_path):
    from cpframe.science import tasks

    p = mini_products
    calibs = {"ptc": p.ptc.path, "bias": p.bias.path, "defects": p.defects.path}
    raws = mini_sim.dark[:4]
    one = tasks.cp_dark(raws, tmp_path / "one" / "dark.fits", calibs=calibs, memory_bytes=200_000)
    two = tasks.cp_dark(raws, tmp_path / "two" / "dark.fits", calibs=calibs, memory_bytes=200_000, threads=2)
    assert one.extra.get("fused") and two.extra.get("fused")
    _products_equal(one.path, two.path)


def test_a_failure_in_a_thread_is_raised_with_no_thread_left(mini_sim, tmp_path):
    """The last raw (streamed by the second thread) is cut short after its prepass: the error names it, and
    the threads are gone when it is raised."""
    import shutil
    import threading

    from cpframe.science.combine import combine_config_for
    from cpframe.science.fused import FusedUnsupported, isr_combine, prepass
    from cpframe.science.isr import isr_config_for

    raws = [shutil.copy(r, tmp_path / f"r{i}.fits") for i, r in enumerate(mini_sim.bias[:4])]
    icfg = isr_config_for("biasBootstrap")
    pre = [prepass(r, icfg) for r in raws]
    size = (tmp_path / "r3.fits").stat().st_size
    with open(tmp_path / "r3.fits", "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(FusedUnsupported, match=r"r3\.fits: raw file is truncated"):
        isr_combine(raws, tmp_path / "out.fits", icfg, combine_config_for("biasBootstrap"), {}, memory_bytes=60_000,
                    prepasses=pre, threads=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("cpframe-fused")]
    assert not (tmp_path / "out.fits").exists()


def test_fused_threads_option_is_checked():
    from cpframe.science.combine import CombineConfig

    assert CombineConfig.from_dict({"fusedThreads": 2}).fused_threads == 2
    with pytest.raises(Exception, match=r"fusedThreads.*-1.*must be >= 0"):
        CombineConfig.from_dict({"fusedThreads": -1})


def test_threads_stay_within_the_memory_budget(mini_sim, tmp_path):
    """Two threads hold two raws' transient rows each: the rows per block shrink so that the N inputs' state and
    blocks still fit the budget, and the traced peak stays under it plus one product's planes, as one thread's."""
    import tracemalloc

    from cpframe.science import fused
    from cpframe.science.combine import combine_config_for
    from cpframe.science.isr import isr_config_for

    det = mini_sim.detector
    rows, cols = det.shape
    budget = 20 * fused.input_state_bytes(det)
    raws = [mini_sim.bias[i % len(mini_sim.bias)] for i in range(12)]
    icfg, ccfg = isr_config_for("biasBootstrap"), combine_config_for("biasBootstrap")
    # kernels compiled or loaded first, the same ones as below (2 raws would take the input-variance kernel, and
    # one thread passes whole blocks, C-contiguous, two threads parts of them: other specialisations; compiled
    # inside the traced run when the numba cache is cold, as on a fresh clone, they count tens of MB)
    for threads in (1, 2):
        fused.isr_combine(raws, None, icfg, ccfg, memory_bytes=budget, threads=threads)
    peaks = {}
    for threads in (1, 2):
        tracemalloc.start()
        try:
            _, res, _ = fused.isr_combine(raws, tmp_path / f"t{threads}.fits", icfg, ccfg, memory_bytes=budget,
                                          threads=threads)
            peaks[threads] = (tracemalloc.get_traced_memory()[1], res.strip_rows)
        finally:
            tracemalloc.stop()
    n_bands = len(fused._bands(det, 0, 1))
    rows1, rows2 = peaks[1][1], peaks[2][1]
    assert rows2 < rows1  # two more raws in flight
    block = (12 + 2 * 2) * rows2 * cols * n_bands * fused._BLOCK_BYTES
    assert 12 * fused.input_state_bytes(det) + block <= budget
    for threads, (peak, _) in peaks.items():
        assert peak <= budget + rows * cols * 14, (threads, peak, budget)
    _products_equal(tmp_path / "t1.fits", tmp_path / "t2.fits")


def test_segment_layout_comes_from_the_one_header_read(mini_sim, tmp_path):
    """The prepass takes each segment's data offset, BITPIX and BZERO from the headers ``read_raw`` parsed (issue 14:
    no second parse): the same layout as parsing the file's headers again, and the data there are the segment's
    pixels; a compressed or floating-point segment is still refused, naming the amp."""
    import shutil

    from astropy.io import fits

    from cpframe.science.fused import FusedUnsupported, _raw_layout, prepass
    from cpframe.science.imageio import read_raw
    from cpframe.science.isr import isr_config_for

    raw = mini_sim.bias[0]
    r = read_raw(raw, segments=False)
    assert r.segment_layout is not None and set(r.segment_layout) == {a.name for a in r.detector.amps}
    layout = _raw_layout(str(raw), r.detector, r.segment_layout)
    assert layout == _raw_layout(str(raw), r.detector)
    full = read_raw(raw)
    assert full.segment_layout is None
    for amp in r.detector.amps:
        off, dtype, bzero = layout[amp.name]
        n = amp.raw_shape[0] * amp.raw_shape[1]
        data = np.fromfile(raw, dtype=dtype, count=n, offset=off).reshape(amp.raw_shape).astype(np.int64) + bzero
        np.testing.assert_array_equal(data, full.segments[amp.name])

    icfg = isr_config_for("biasBootstrap")
    amp = r.detector.amps[1].name
    for how in ("compressed", "float"):
        bad = tmp_path / f"{how}.fits"
        shutil.copy(raw, bad)
        with fits.open(bad) as hdul:
            hdus = [hdul[0].copy()]
            for h in hdul[1:]:
                if h.header.get("EXTNAME") == "SEGMENT" + amp[1:]:
                    data = h.data.astype(np.int32 if how == "compressed" else np.float32)
                    hdr = h.header.copy()
                    for k in ("BZERO", "BSCALE"):
                        hdr.remove(k, ignore_missing=True)
                    h = (fits.CompImageHDU(data, header=hdr) if how == "compressed"
                         else fits.ImageHDU(data, header=hdr))
                hdus.append(h.copy() if hasattr(h, "copy") else h)
            fits.HDUList(hdus).writeto(bad, overwrite=True)
        with pytest.raises(FusedUnsupported, match=rf"{how}\.fits: amp {amp} is not an uncompressed 16/32-bit"):
            prepass(bad, icfg)
