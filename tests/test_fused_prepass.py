"""The fused per-raw quanta fit each raw's overscans once: the prepass taken from run_isr's fits is the prepass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace

import numpy as np
import pytest

from cpframe.science import fused, isr
from cpframe.science.fused import prepass, prepass_with_isr
from cpframe.science.imageio import read_raw
from cpframe.science.isr import isr_config_for, load_calibs, run_isr

from tests._run_helpers import full_isr_setup


def _assert_same(a, b, where="state"):
    """``a`` and ``b`` are equal exactly: arrays bit for bit (NaN where NaN), floats equal or both NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        _assert_same(dataclasses.asdict(a), dataclasses.asdict(b), where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, sorted(set(a) ^ set(b)))  # same cards, same order
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), (where, a, b)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.mark.parametrize("setup", ["full", "biasBootstrap", "darkBootstrap-adu-crosstalk"])
def test_prepass_from_run_isrs_fits_equals_the_prepass(mini_sim, mini_products, setup):
    if setup == "full":
        icfg, calibs = full_isr_setup(mini_sim, mini_products, 2e-4)
        raw_path = mini_sim.flat[0]
    elif setup == "biasBootstrap":
        icfg, calibs = isr_config_for("biasBootstrap"), {}
        raw_path = mini_sim.bias[0]
    else:  # adu units: the crosstalk without gains, the dark's time scale, a bootstrap bias
        n_amp = len(mini_sim.detector.amps)
        xt = np.full((n_amp, n_amp), 3e-4)
        np.fill_diagonal(xt, 0.0)
        icfg = replace(isr_config_for("darkBootstrap"), do_crosstalk=True, do_dark=True)
        calibs = {"bias": mini_products.bias_bootstrap.path, "dark": mini_products.dark_bootstrap.path,
                  "crosstalk": xt}
        raw_path = mini_sim.dark[0]
    state, img = prepass_with_isr(raw_path, icfg, calibs)
    ref = prepass(raw_path, icfg, calibs)
    _assert_same(state, ref)
    assert set(state) == set(fused._PREPASS_FIELDS) - ({"xt_gains"} if not icfg.do_crosstalk else set())
    # and the ISR image is run_isr's, bit for bit (recording the fits changes nothing)
    plain, stats = run_isr(read_raw(raw_path), icfg, load_calibs(calibs))
    for plane in ("image", "mask", "variance"):
        _assert_same(getattr(img, plane), getattr(plain, plane), plane)
    _assert_same(img.header, plain.header, "header")
    # the setups exercise what they claim (a parallel overscan, crosstalk gains in electrons, a dark scale)
    assert all(v is not None for v in state["pvec"].values()) and all(v is not None for v in state["svec"].values())
    if setup == "full":
        assert state["units"] == "electron" and set(state["xt_gains"]) == {a.name for a in mini_sim.detector.amps}
        assert state["dark_scale"] != 1.0
    if setup.startswith("darkBootstrap"):
        assert state["units"] == "adu" and state["xt_gains"] is None and state["dark_scale"] != 1.0


def test_prepass_with_isr_fits_each_overscan_once(mini_sim, mini_products, monkeypatch):
    """The serial and parallel overscan fits run once per amp (in run_isr), not again for the prepass."""
    icfg, calibs = full_isr_setup(mini_sim, mini_products, 2e-4)
    calls = {"serial": 0, "parallel": 0}
    real_serial, real_parallel = isr.serial_amp, isr.parallel_overscan_vector

    def counted_serial(*a, **k):
        calls["serial"] += 1
        return real_serial(*a, **k)

    def counted_parallel(*a, **k):
        calls["parallel"] += 1
        return real_parallel(*a, **k)

    # the real functions, counted, wherever the ISR and the prepass call them
    for mod in (isr, fused):
        monkeypatch.setattr(mod, "serial_amp", counted_serial)
        monkeypatch.setattr(mod, "parallel_overscan_vector", counted_parallel)
    n_amp = len(mini_sim.detector.amps)
    prepass_with_isr(mini_sim.flat[1], icfg, calibs)
    assert calls == {"serial": n_amp, "parallel": n_amp}
    prepass(mini_sim.flat[1], icfg, calibs)  # the prepass alone fits them itself
    assert calls == {"serial": 2 * n_amp, "parallel": 2 * n_amp}


def test_the_prepass_makes_only_the_overscan_pixels(mini_sim):
    """The prepass converts and dithers the serial overscan columns of the data rows and the rows below the data,
    as the stream reads them, and leaves every data pixel alone (issue 14: 87 % of the work of a full-size amp)."""
    icfg = isr_config_for("biasBootstrap")
    src = fused._RawSource(str(mini_sim.bias[0]), icfg, load_calibs({}), {})
    for amp in src.det.amps:
        whole = src.read_block(amp, 0, amp.raw_shape[0], "whole").copy()
        src.scratch.get("prepass", amp.raw_shape, np.float32)[:] = np.nan  # what was there before
        part = src._overscan_pixels(amp)
        os_cols = amp.serial_overscan_slice[1]
        c0, c1 = os_cols.start + icfg.overscan_leading_to_skip, os_cols.stop - icfg.overscan_trailing_to_skip
        assert c1 > c0 and amp.data_rows < amp.raw_shape[0]
        made = np.zeros(amp.raw_shape, bool)
        made[:amp.data_rows, c0:c1] = True
        made[amp.data_rows:] = True
        np.testing.assert_array_equal(part[made], whole[made])  # bit for bit, dither included
        assert np.isnan(part[~made]).all()
