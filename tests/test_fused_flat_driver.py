"""The driver flats (cp_flat, cp_flat_bootstrap) are fused: each raw is measured on its ISR in memory, the
combine streams the raws with the normalisation's scales, and no ISR file is written."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from cpframe.science import tasks
from cpframe.science.combine import combine_config_for
from cpframe.science.flat_measure import flat_measure_image, flat_normalize_task
from cpframe.science.imageio import mask_value, read_masked, read_raw
from cpframe.science.isr import isr_config_for, load_calibs, run_isr
from tests.test_combine import _reference
from tests.test_fused import _planes_equal


def _written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux ``/proc/self/io``; None elsewhere)."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return None


def _run_and_count_writes(fn, *args, **kwargs):
    before = _written_bytes()
    res = fn(*args, **kwargs)
    after = _written_bytes()
    return res, None if before is None else after - before


def _assert_only_the_product_written(res, written, out_dir):
    assert res.extra.get("fused"), "the driver did not take the fused path"
    assert sorted(p.name for p in out_dir.iterdir()) == [out_dir.joinpath(res.path).name]
    assert all(e.path == "" for e in res.exposures)  # no ISR file behind any exposure
    if written is not None:  # the product is all that went through write(): not N ISR files besides it
        size = out_dir.joinpath(res.path).stat().st_size
        assert written < 1.5 * size, (written, size)


def _flat_calibs(mini_products):
    p = mini_products
    return {"ptc": p.ptc.path, "bias": p.bias.path, "dark": p.dark.path}


def test_cp_flat_is_fused_by_default_equals_unfused_and_numpy(mini_sim, mini_products, tmp_path):
    calibs = _flat_calibs(mini_products)
    raws = mini_sim.flat[:6]
    (tmp_path / "fused").mkdir()
    f, written = _run_and_count_writes(tasks.cp_flat, raws, tmp_path / "fused" / "flat.fits", calibs=calibs,
                                       memory_bytes=200_000)
    u = tasks.cp_flat(raws, tmp_path / "plain" / "flat.fits", calibs=calibs, fused=False)
    assert not u.extra.get("fused") and f.n_inputs == u.n_inputs == 6
    _assert_only_the_product_written(f, written, tmp_path / "fused")
    assert f.combine.strip_rows < read_masked(f.path).shape[0] // 2  # streamed in blocks
    # the same measurements (the ISR in memory is the ISR file's image), so the same scales
    assert f.combine.scales == u.combine.scales
    _planes_equal(f.path, u.path)
    # independent numpy: ISR in memory, CpFlatMeasure + normalisation, then MEANCLIP of the scaled stack
    icfg, ccfg = isr_config_for("flat"), combine_config_for("flat")
    loaded = load_calibs(calibs)
    isr = [run_isr(read_raw(r), icfg, loaded)[0] for r in raws]
    norm = flat_normalize_task([flat_measure_image(i) for i in isr])
    scales = [norm.exp_scale[int(i.header["EXPID"])] for i in isr]
    assert f.combine.scales == pytest.approx(scales, rel=1e-12)
    assert min(scales) > 1000  # the flats' levels (e-), far from one: the division matters below
    ref, valid = _reference(np.stack([i.image for i in isr]), np.stack([i.mask for i in isr]),
                            np.stack([i.variance for i in isr]), "MEANCLIP", ignore=mask_value(ccfg.mask),
                            scales=scales)
    good = valid.any(axis=0) & np.isfinite(ref)
    assert good.mean() > 0.95
    img = read_masked(f.path).image
    np.testing.assert_allclose(img[good], ref[good].astype(np.float32), rtol=2.4e-7, atol=1e-12)


@pytest.mark.parametrize(("workers", "executor"), [(1, "thread"), (2, "process")])
def test_cp_flat_bootstrap_is_fused_by_default_and_equals_unfused(mini_sim, mini_products, tmp_path, workers,
                                                                   executor):
    """Also with the raws measured in parallel processes (the driver's ``workers`` / ``executor``)."""
    calibs = {"bias": mini_products.bias_bootstrap.path, "dark": mini_products.dark_bootstrap.path}
    raws = mini_sim.flat[:4]  # 4 < maxVisitsToCalcErrorFromInputVariance: the input variances propagate
    (tmp_path / "fused").mkdir()
    f, written = _run_and_count_writes(tasks.cp_flat_bootstrap, raws, tmp_path / "fused" / "fb.fits",
                                       calibs=calibs, workers=workers, executor=executor)
    u = tasks.cp_flat_bootstrap(raws, tmp_path / "plain" / "fb.fits", calibs=calibs, fused=False)
    assert not u.extra.get("fused") and f.n_inputs == u.n_inputs == 4
    # with worker processes their writes are not this process's: the file listing still holds
    _assert_only_the_product_written(f, written if executor == "thread" else None, tmp_path / "fused")
    assert f.combine.scales == u.combine.scales
    _planes_equal(f.path, u.path)
    assert [e.exposure_id for e in f.exposures] == [e.exposure_id for e in u.exposures]


def _negated_raw(src: str, out_dir) -> str:
    """A copy of a flat raw with its signal mirrored about each segment's serial-overscan level: an exposure
    whose ISR background is negative, which the normalisation leaves out."""
    out = out_dir / src.rsplit("/", 1)[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    with fits.open(src) as hdul:
        for h in hdul[1:]:
            data = h.data.astype(np.int64)
            level = int(np.median(data[:, -16:]))
            h.data = (2 * level - data).astype(np.int32)
        hdul.writeto(out)
    return str(out)


def test_an_exposure_the_normalisation_leaves_out_is_left_out_of_both_paths(mini_sim, mini_products, tmp_path):
    calibs = _flat_calibs(mini_products)
    dark_flat = _negated_raw(mini_sim.flat[3], tmp_path / "negated")
    raws = [mini_sim.flat[0], dark_flat, mini_sim.flat[1], mini_sim.flat[2]]
    f = tasks.cp_flat(raws, tmp_path / "fused" / "flat.fits", calibs=calibs)
    u = tasks.cp_flat(raws, tmp_path / "plain" / "flat.fits", calibs=calibs, fused=False)
    assert f.extra.get("fused") and not u.extra.get("fused")
    left_out = int(read_raw(dark_flat, segments=False).exposure_id)
    for r in (f, u):
        assert r.n_inputs == 3 and len(r.combine.scales) == 3
        assert left_out not in [e.exposure_id for e in r.exposures]
    _planes_equal(f.path, u.path)
    # the product is the one of the three kept flats alone
    three = tasks.cp_flat(raws[:1] + raws[2:], tmp_path / "three" / "flat.fits", calibs=calibs)
    assert three.combine.scales == pytest.approx(f.combine.scales, rel=1e-12)
    _planes_equal(f.path, three.path)
