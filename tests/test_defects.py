"""Defects: measure on combined calibrations, merge, column rules, boxes; against the simulator truth."""

from __future__ import annotations

import numpy as np
import pytest

from cpframe.science.defects import DefectsConfig, mask_to_boxes, measure_defects, merge_defects
from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.imageio import MASK_BITS, MaskedImage, boxes_to_mask, read_defects


def test_defects_found_against_truth(mini_sim, mini_products):
    """>= 99 % of the injected defect pixels found, <= 1 % of the found pixels false."""
    boxes, meta = read_defects(mini_products.defects.path)
    found = boxes_to_mask(boxes, mini_sim.detector.shape)
    injected = mini_sim.truth.defect_mask(mini_sim.detector.id)
    assert injected.sum() > 50
    assert (found & injected).sum() >= 0.99 * injected.sum()
    assert (found & ~injected).sum() <= 0.01 * found.sum()
    assert meta["n_pixels"] == int(found.sum()) and meta["detector"] == mini_sim.detector.id
    # hot pixels come from the dark, cold/dead/bad columns from the flat
    assert mini_products.defects.by_type["dark"] > 0 and mini_products.defects.by_type["flat"] > 0


def _calib(image, imgtype, n_inputs=5, mask=None):
    h = {"IMGTYPE": imgtype, **{f"CPP_INPUT_{i}": i for i in range(n_inputs)}}
    return MaskedImage(image.astype(np.float32), np.zeros(image.shape, np.int32) if mask is None else mask,
                       np.ones(image.shape, np.float32), h)


def test_measure_thresholds_follow_the_spec():
    rng = np.random.default_rng(2)
    shape = (120, 100)
    flat = 1000 + rng.normal(0, 10, shape)
    flat[5, 5] = 700  # cold: -30 sigma, and below 0.8 x mean
    flat[6, 6] = 1100  # hot: +10 sigma
    flat[7, 7] = 960  # -4 sigma: not a defect
    m = measure_defects(_calib(flat, "flat"), DefectsConfig())
    assert m.bad[5, 5] and m.bad[6, 6] and not m.bad[7, 7]
    m_value = measure_defects(_calib(flat, "flat"), DefectsConfig(threshold_type_flat="VALUE"))
    assert m_value.bad[5, 5] and not m_value.bad[6, 6]  # VALUE mode finds cold pixels only
    bias = rng.normal(0, 5, shape)
    bias[10, 10] = 1500
    mb = measure_defects(_calib(bias, "bias"), DefectsConfig())
    assert mb.bad[10, 10] and mb.bad.sum() == 1
    dark = rng.normal(0.01, 0.002, shape)
    dark[20, 30] = 8.0  # above 5 e-/s x 1 s / gain 1
    dark[21, 30] = 4.0  # below it
    md = measure_defects(_calib(dark, "dark"), DefectsConfig(threshold_type_dark="VALUE"), gains={"ALL": 1.0})
    assert md.bad[20, 30] and md.bad.sum() == 1


def test_column_rules_fill_blocks_and_keep_long_gaps():
    bad = np.zeros((200, 20), bool)
    bad[10:70:2, 3] = True  # 30 bad pixels, gaps of 1: below the 50-pixel threshold -> untouched
    bad[0:120:2, 5] = True  # 60 bad pixels -> filled from 0 to 118
    bad[0:30, 8] = True
    bad[100:130, 8] = True  # 60 bad, one gap of 70 good pixels -> stays open
    m = measure_defects(_calib(np.zeros((200, 20)), "bias"), DefectsConfig())
    from cpframe.science.defects import _column_rules

    out = _column_rules(bad, np.zeros_like(bad), {}, DefectsConfig())
    assert out[:, 3].sum() == 30
    assert out[0:119, 5].all() and not out[119:, 5].any()
    assert out[0:30, 8].all() and out[100:130, 8].all() and not out[30:100, 8].any()
    sat = np.zeros_like(bad)
    sat[50, 12] = True
    out2 = _column_rules(np.zeros_like(bad), sat, {}, DefectsConfig(saturated_column_dilation_radius=2))
    assert out2[50, 10:15].all() and out2.sum() == 5
    assert not m.bad.any()


def test_merge_or_and_fraction_edges_and_manual(tmp_path):
    shape = (40, 50)
    a = np.zeros(shape, bool)
    a[3, 4] = True
    b = np.zeros(shape, bool)
    b[3, 4] = True
    b[10, 10] = True
    from cpframe.science.defects import DefectMeasurement
    from cpframe.science.imageio import write_defects

    mk = [DefectMeasurement("flat", 5, a), DefectMeasurement("flat", 5, b), DefectMeasurement("flat", 3, ~a),
          DefectMeasurement("dark", 4, np.zeros(shape, bool))]
    res = merge_defects(mk, tmp_path / "or.ecsv", DefectsConfig())
    found = boxes_to_mask(read_defects(res.path)[0], shape)
    assert found[3, 4] and found[10, 10] and found.sum() == 2  # the 3-input flat is not used
    res = merge_defects(mk, tmp_path / "and.ecsv", DefectsConfig(combination_mode="AND"))
    assert res.n_pixels == 1
    manual = write_defects(tmp_path / "manual.ecsv", [(20, 20, 2, 3)])
    res = merge_defects(mk, tmp_path / "edge.ecsv", DefectsConfig(edges_as_defects=True, n_pix_border_left_right=2,
                                                                  n_pix_border_up_down=1),
                        manual_defects_path=manual)
    found = boxes_to_mask(read_defects(res.path)[0], shape)
    assert found[:, :2].all() and found[:, -2:].all() and found[0].all() and found[-1].all()
    assert found[20:23, 20:22].all()
    assert res.n_pixels == int(found.sum())
    with pytest.raises(UserInputError, match="no measurements"):
        merge_defects([], tmp_path / "x.ecsv", DefectsConfig())


def test_mask_to_boxes_covers_exactly():
    rng = np.random.default_rng(9)
    for _ in range(20):
        m = rng.random((37, 23)) < 0.2
        m[:, 7] = True
        boxes = mask_to_boxes(m)
        np.testing.assert_array_equal(boxes_to_mask(boxes, m.shape), m)
        assert sum(w * h for _, _, w, h in boxes) == m.sum()  # no overlaps
    col = np.zeros((30, 10), bool)
    col[:, 4] = True
    assert mask_to_boxes(col) == [(4, 0, 1, 30)]


def test_config_errors():
    with pytest.raises(ConfigError, match="'nSigmaBrite'.*known options"):
        DefectsConfig.from_dict({"nSigmaBrite": 3})
    with pytest.raises(ConfigError, match="combinationMode='XOR'"):
        DefectsConfig.from_dict({"combinationMode": "XOR"})
    cfg = DefectsConfig.from_dict({"thresholdType": "VALUE", "nSigmaBright": 4.0})
    assert (cfg.threshold_type_bias, cfg.threshold_type_dark, cfg.threshold_type_flat) == ("VALUE",) * 3
    assert MASK_BITS["BAD"] == 0
