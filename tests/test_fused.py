"""Fused streaming ISR -> combine: the same products as ISR files + combine, and as plain numpy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cpframe.science import tasks
from cpframe.science.combine import CombineConfig, combine_config_for
from cpframe.science.fused import FusedUnsupported, fused_unsupported, isr_combine
from cpframe.science.imageio import mask_value, read_masked, read_raw
from cpframe.science.isr import IsrConfig, isr_config_for, load_calibs, run_isr
from tests._run_helpers import full_isr_setup
from tests.test_combine import _reference


def _planes_equal(a, b):
    A, B = read_masked(a), read_masked(b)
    np.testing.assert_allclose(A.image, B.image, rtol=2.4e-7, atol=0)
    np.testing.assert_allclose(A.variance, B.variance, rtol=2.4e-7, atol=0)
    np.testing.assert_array_equal(A.mask, B.mask)
    return A, B


def test_bias_bootstrap_fused_equals_unfused_and_writes_no_intermediate(mini_sim, tmp_path):
    fused_dir, plain_dir = tmp_path / "fused", tmp_path / "plain"
    f = tasks.cp_bias_bootstrap(mini_sim.bias[:8], fused_dir / "bb.fits", memory_bytes=300_000)
    u = tasks.cp_bias_bootstrap(mini_sim.bias[:8], plain_dir / "bb.fits", fused=False)
    assert f.extra.get("fused") and not u.extra.get("fused")
    assert f.combine.strip_rows < read_masked(f.path).shape[0] // 2  # really streamed in blocks
    _planes_equal(f.path, u.path)
    assert sorted(p.name for p in fused_dir.iterdir()) == ["bb.fits"]  # no per-exposure file, no scratch dir
    # per-exposure numbers: exact where they come from the prepass or sums, the median from a histogram
    for ef, eu in zip(f.exposures, u.exposures):
        assert ef.exposure_id == eu.exposure_id and ef.path == ""
        for amp, su in eu.amp_stats.items():
            sf = ef.amp_stats[amp]
            for k in ("gain", "read_noise", "overscan_noise_adu", "overscan_median_adu", "n_sat", "n_bad"):
                assert sf[k] == su[k], (amp, k)
            assert sf["mean"] == pytest.approx(su["mean"], rel=1e-9, abs=1e-9)
            assert sf["stdev"] == pytest.approx(su["stdev"], rel=1e-9)
            assert abs(sf["median"] - su["median"]) <= 0.01 * su["stdev"]


@pytest.mark.parametrize(("n", "combine"), [(4, "MEDIAN"), (7, "MEANCLIP"), (7, "MEAN")])
def test_full_isr_fused_equals_unfused_and_numpy(mini_sim, mini_products, tmp_path, n, combine):
    """Gains, bias, dark, defects, saturation, crosstalk, linearity and flat, streamed in 7-row blocks.

    n = 4 propagates the input variances (below maxVisitsToCalcErrorFromInputVariance).
    """
    det = mini_sim.detector
    icfg, calibs = full_isr_setup(mini_sim, mini_products, 1e-4)
    ccfg = replace(combine_config_for("dark"), combine=combine, check_no_data=False)
    raws = mini_sim.dark[:n]
    img, res, exps = isr_combine(raws, tmp_path / "fused.fits", icfg, ccfg, calibs, memory_bytes=60_000)
    assert res.strip_rows < 20
    u = tasks._product("dark", raws, tmp_path / "plain.fits", calibs=calibs, work_dir=tmp_path / "isr",
                       isr_config=icfg, combine_config=ccfg, memory_bytes=10**8, threads=1, workers=1, fused=False)
    _planes_equal(tmp_path / "fused.fits", u.path)
    # independent numpy: ISR in memory, then the statistic over the stack (test_combine's reference)
    loaded = load_calibs(calibs)
    isr = [run_isr(read_raw(r), icfg, loaded)[0] for r in raws]
    ref, valid = _reference(np.stack([i.image for i in isr]), np.stack([i.mask for i in isr]),
                            np.stack([i.variance for i in isr]), combine, ignore=mask_value(ccfg.mask),
                            scales=res.scales)
    good = valid.any(axis=0) & np.isfinite(ref)
    assert good.mean() > 0.95
    np.testing.assert_allclose(img.image[good], ref[good].astype(np.float32), rtol=2.4e-7, atol=1e-12)
    # the exposures' header cards are the ones run_isr writes
    for e, i in zip(exps, isr):
        for amp in det.amps:
            for key in ("LSST ISR GAIN", "LSST ISR READNOISE", "LSST ISR OVERSCAN PARALLEL MEAN",
                        "LSST ISR MASK SAT", "LSST ISR MASK BAD"):
                assert e.header[f"{key} {amp.name}"] == i.header[f"{key} {amp.name}"], key
        assert e.header["LSST ISR DARK SCALE"] == i.header["LSST ISR DARK SCALE"]


def test_dark_fused_with_its_cosmic_rays_equals_unfused(mini_sim, mini_products, tmp_path):
    """cpDark: the cosmic rays are found on each raw's ISR in memory and set while streaming; same product as the
    ISR files + CpDark + combine, and nothing written but the product."""
    from cpframe.science.fused import prepass_cosmic_rays
    from cpframe.science.imageio import MASK_BITS

    p = mini_products
    calibs = {"ptc": p.ptc.path, "bias": p.bias.path, "defects": p.defects.path}
    raws = mini_sim.dark[:6]
    f = tasks.cp_dark(raws, tmp_path / "fused" / "dark.fits", calibs=calibs, memory_bytes=200_000)
    u = tasks.cp_dark(raws, tmp_path / "plain" / "dark.fits", calibs=calibs, work_dir=tmp_path / "isr")
    assert f.extra.get("fused") and not u.extra.get("fused") and f.combine.strip_rows < 100
    _planes_equal(f.path, u.path)
    assert sorted(p.name for p in (tmp_path / "fused").iterdir()) == ["dark.fits"]
    # the same cosmic-ray pixels as CpDark found on the ISR files (and there are some)
    cr_bit = 1 << MASK_BITS["CR"]
    icfg = isr_config_for("dark")
    n_cr = []
    for raw, isr_file in zip(raws, sorted((tmp_path / "isr").glob("*.fits"))):
        state = prepass_cosmic_rays(raw, icfg, {k: str(v) for k, v in calibs.items()}, tasks.CrConfig())
        on_file = np.flatnonzero(read_masked(isr_file).mask.reshape(-1) & cr_bit)
        np.testing.assert_array_equal(state["cr_index"], on_file)
        n_cr.append(on_file.size)
    assert sum(n_cr) > 0, n_cr
    # and they matter: without them the fused combine gives another dark
    plain = tasks._product("dark", raws, tmp_path / "nocr.fits", calibs=calibs, work_dir=None, isr_config=None,
                           combine_config=None, memory_bytes=None, threads=1, workers=1, cr_config=None, fused=True)
    assert not np.array_equal(read_masked(plain.path).image, read_masked(f.path).image)


def test_unsupported_settings_fall_back_to_the_unfused_path(mini_sim, tmp_path):
    assert fused_unsupported(IsrConfig(), CombineConfig()) == []
    assert fused_unsupported(IsrConfig(), CombineConfig(exposure_scaling="MeanStats"))
    with pytest.raises(FusedUnsupported, match="MeanStats"):
        isr_combine(mini_sim.bias[:3], None, isr_config_for("biasBootstrap"),
                    CombineConfig(exposure_scaling="MeanStats"))
    # work_dir asks for the ISR files: the unfused path keeps them there
    r = tasks.cp_bias_bootstrap(mini_sim.bias[:3], tmp_path / "bb.fits", work_dir=tmp_path / "isr")
    assert not r.extra.get("fused") and all((tmp_path / "isr").glob("*.fits"))
    assert len(list((tmp_path / "isr").glob("*.fits"))) == 3


def _traced_peak(paths, out, budget):
    """Peak of the Python/numpy allocations (tracemalloc) of one fused bias-bootstrap combine."""
    import tracemalloc

    icfg, ccfg = isr_config_for("biasBootstrap"), combine_config_for("biasBootstrap")
    isr_combine(paths[:2], None, icfg, ccfg, memory_bytes=budget)  # numba kernels compiled/loaded first
    tracemalloc.start()
    try:
        _, res, _ = isr_combine(paths, out, icfg, ccfg, memory_bytes=budget)
        return tracemalloc.get_traced_memory()[1], res
    finally:
        tracemalloc.stop()


def test_fused_memory_obeys_the_budget_and_is_flat_in_n(mini_sim, tmp_path):
    """What grows with N (per-input state + the N inputs' row blocks) stays within the budget.

    tracemalloc counts every numpy allocation (the memory-mapped product planes are file pages, not
    allocations).  The budget covers the inputs' state and blocks, so 4x the inputs cost no more
    than the budget plus the fixed part (per-amp prepass, 256-row chunks of the product passes).
    The full-size figures (peak anonymous memory of a worker, N = 10..200) are measured by
    benchmarks/bench_memory.py.
    """
    from cpframe.science import fused

    det = mini_sim.detector
    rows, cols = det.shape
    plane_bytes = rows * cols * 14  # image + variance + mask + count of the product
    state = fused.input_state_bytes(det)
    budget = 20 * state
    few, many = mini_sim.bias[:4], [mini_sim.bias[i % len(mini_sim.bias)] for i in range(16)]
    peak_few, res_few = _traced_peak(few, tmp_path / "few.fits", budget)
    peak_many, res_many = _traced_peak(many, tmp_path / "many.fits", budget)
    n_bands = len(fused._bands(det, 0, 1))
    for n, res in ((4, res_few), (16, res_many)):
        assert 1 <= res.strip_rows < det.amps[0].data_rows
        block = (n + 2) * res.strip_rows * cols * n_bands * (fused._BLOCK_BYTES_VAR if n < 5 else fused._BLOCK_BYTES)
        assert n * state + block <= budget, (n, res.strip_rows)
    assert res_many.strip_rows < res_few.strip_rows  # more inputs: smaller blocks
    # measured: the budget + 0.7 MB (N = 4) and - 0.2 MB (N = 16); the fixed part (per-amp prepass,
    # 256-row chunks of the product passes) is below one product's planes, never N of them
    assert peak_few <= budget + plane_bytes, (peak_few, budget, plane_bytes)
    assert peak_many <= budget + plane_bytes, (peak_many, budget, plane_bytes)
    # and the product is the same as the unfused path's (memory-mapped planes written out correctly)
    plain = tasks.cp_bias_bootstrap(many, tmp_path / "plain" / "bb.fits", fused=False)
    _planes_equal(tmp_path / "many.fits", plain.path)


def test_block_reads_through_reused_buffers_equal_run_isrs_dithered_segments(mini_sim):
    """Row blocks read into the reused work buffers (``Scratch``) are run_isr's dithered segments.

    Reference: astropy's integer segments + one PCG64 stream over the amps in order, as
    :func:`cpframe.science.isr.run_isr` draws it; a second block read into the same buffer must
    not change what an earlier read returned to a different key.
    """
    from cpframe.science.fused import _calibs, _RawSource
    from cpframe.science.fused_work import Scratch
    from cpframe.science.isr import _dither_offset

    cfg = isr_config_for("biasBootstrap")
    path = mini_sim.bias[0]
    raw = read_raw(path)
    rng = np.random.default_rng(raw.exposure_id & 0xFFFFFFFF)
    ref = {}
    for amp in raw.detector.amps:
        seg = raw.segments[amp.name].astype(np.float32)
        seg += rng.random(seg.shape, dtype=np.float32) + np.float32(_dither_offset(cfg.integer_dither_mode))
        ref[amp.name] = seg
    scratch = Scratch()
    src = _RawSource(path, cfg, _calibs({}), {}, scratch)
    for amp in raw.detector.amps[:3] + raw.detector.amps[-1:]:
        rows = amp.raw_shape[0]
        whole = src.read_block(amp, 0, rows, "whole")
        np.testing.assert_array_equal(whole, ref[amp.name])
        a = src.read_block(amp, 3, 10)
        np.testing.assert_array_equal(a, ref[amp.name][3:10])
        b = src.read_block(amp, 11, rows - 1)  # same key, larger: a new buffer; "whole" untouched
        np.testing.assert_array_equal(b, ref[amp.name][11:rows - 1])
        np.testing.assert_array_equal(whole, ref[amp.name])
        c = src.read_block(amp, 1, 2)  # same key, smaller: the buffer is reused
        assert np.shares_memory(b, c)
        np.testing.assert_array_equal(c, ref[amp.name][1:2])
