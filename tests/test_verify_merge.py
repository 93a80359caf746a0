"""Exposure and run merges, Results tables (ECSV) and statistics files (JSON)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cpframe.core.errors import UserInputError
from cpframe.verify import (
    dataset_type_name,
    merge_calibs,
    merge_exposure,
    merge_run,
    read_results,
    read_stats,
    results_table,
    verify_calib,
    verify_exposure,
    write_results,
    write_stats,
)
from cpframe.verify.merge import MIXED_INPUT_MESSAGE
from tests.fixtures.verify import make_residual
from tests.test_verify_stages import write_ptc

EXPOSURES = (2024111000010, 2024111000011)


@pytest.fixture(scope="module")
def bias_run(mini_comcam):
    """Bias stats for 2 exposures x 3 detectors; exposure ...011 detector 5 has C12 at a wrong level."""
    per_exp = {}
    for e in EXPOSURES:
        stats = []
        for d in (3, 4, 5):
            det = mini_comcam.detector(d)
            levels = {"C12": 25.0} if (e == EXPOSURES[1] and d == 5) else None
            res, _ = make_residual(det, seed=100 * d + e % 100, exposure=e, amp_levels=levels)
            stats.append(verify_exposure("bias", res, det))
        per_exp[e] = stats
    return per_exp


def test_exposure_merge_is_and_over_detectors(bias_run):
    good = merge_exposure("bias", bias_run[EXPOSURES[0]])
    assert good["SUCCESS"] is True and good["FAILURES"] == []
    assert good["DATA_ID"]["exposure"] == EXPOSURES[0]
    assert set(good["DET"]) == {"R22_S10", "R22_S11", "R22_S12"}
    bad = merge_exposure("bias", list(reversed(bias_run[EXPOSURES[1]])))
    assert bad["SUCCESS"] is False
    assert bad["FAILURES"] == ["R22_S12 C12 MEAN"]
    assert bad["DET"]["R22_S12"] == {"SUCCESS": False, "FAILURES": ["C12 MEAN"]}
    assert bad["DET"]["R22_S10"]["SUCCESS"] is True
    assert "EXP" not in bad  # bias has no group tests


def test_run_merge_failures_keyed_by_exposure_and_full_table(bias_run, tmp_path):
    exps = [merge_exposure("bias", bias_run[e]) for e in EXPOSURES]
    table, summary = merge_run("bias", exps)
    assert summary["SUCCESS"] is False
    assert summary["FAILURES"] == {str(EXPOSURES[1]): ["R22_S12 C12 MEAN"]}
    assert summary["EXPOSURES"] == {str(EXPOSURES[0]): True, str(EXPOSURES[1]): False}
    # one row per amp of every detector of every exposure (bias has no detector-level values except N_CR)
    amp_rows = table[table["amplifier"] != ""]
    assert len(amp_rows) == 2 * 3 * 16
    assert {"instrument", "exposure", "detector", "amplifier", "mjd", "BIAS_MEAN", "BIAS_NOISE",
            "BIAS_VERIFY_MEAN", "BIAS_VERIFY_NOISE"} <= set(table.colnames)
    row = amp_rows[(amp_rows["exposure"] == EXPOSURES[1]) & (amp_rows["detector"] == 5)
                   & (amp_rows["amplifier"] == "C12")][0]
    src = bias_run[EXPOSURES[1]][2]["AMP"]["C12"]
    assert row["BIAS_MEAN"] == pytest.approx(src["MEAN"]) and not row["BIAS_VERIFY_MEAN"]
    assert int(np.sum(~np.asarray(amp_rows["BIAS_VERIFY_MEAN"], dtype=bool))) == 1
    # ECSV round trip keeps values, booleans and the detector rows
    path = write_results(table, tmp_path / "verifyBiasResults.ecsv")
    back = read_results(path)
    assert len(back) == len(table) and back.colnames == table.colnames
    assert np.allclose(back["BIAS_NOISE"], table["BIAS_NOISE"], equal_nan=True)
    assert list(back["BIAS_VERIFY_MEAN"][:16]) == list(table["BIAS_VERIFY_MEAN"][:16])
    assert back.meta["stage"] == "BIAS"


def test_flat_exposure_group_test_and_run_failures(mini_comcam):
    stats = []
    for d in (0, 1, 2):
        det = mini_comcam.detector(d)
        # detector 2 sits 20 % high after flat-fielding (e.g. a flat with the wrong detector scale)
        lv = {a: 0.2 * 20000.0 for a in det.amp_names} if d == 2 else None
        res, _ = make_residual(det, seed=d, signal=20000.0, amp_levels=lv)
        stats.append(verify_exposure("flat", res, det))
    assert all(s["SUCCESS"] for s in stats)  # each detector alone is fine
    exp = merge_exposure("flat", stats)
    means = [s["DET"]["MEAN"] for s in stats]
    assert exp["EXP"]["SCATTER"] == pytest.approx(np.std(means))
    assert exp["EXP"]["VERIFY"] == {"SCATTER": False, "SUCCESS": False}
    assert exp["SUCCESS"] is False and exp["FAILURES"] == ["SCATTER"]
    table, summary = merge_run("flat", [exp])
    assert summary["FAILURES"] == {"2024111000010": ["SCATTER"]}
    exp_rows = table[np.asarray(table["FLAT_EXP_VERIFY_SCATTER"].mask == False)]
    assert len(exp_rows) == 1 and not exp_rows[0]["FLAT_EXP_VERIFY_SCATTER"]
    det_rows = table[np.isfinite(table["FLAT_DET_SCATTER"])]
    assert len(det_rows) == 3 and set(det_rows["physical_filter"]) == {"r_03"}


def test_ptc_merge_keyed_by_detector(tmp_path, mini_comcam):
    stats = []
    for d in (0, 1):
        det = mini_comcam.detector(d)
        gains = {a: 1.6 for a in det.amp_names}
        noises = {a: 6.0 for a in det.amp_names}
        if d == 1:
            gains["C07"] = 1.8
        path = write_ptc(tmp_path / f"ptc{d}.fits", det, gains, noises)
        stats.append(verify_calib("ptc", path, det, nominal={a: {"gain": 1.6, "noise": 6.0} for a in det.amp_names}))
    table, summary = merge_calibs("ptc", stats)
    assert summary["FAILURES"] == {"R22_S01": ["C07 PTC_GAIN"]}
    assert summary["DETECTORS"] == {"R22_S00": True, "R22_S01": False}
    assert len(table) == 32 and "exposure" not in table.colnames
    assert dataset_type_name("ptc", "Summary") == "verifyPtcSummary"


def test_calib_merge_keeps_every_filter_of_a_detector(tmp_path, mini_comcam):
    """One detector calibrated in two filters (illumination correction, flat gradient...): a failure in one
    filter is not hidden by a pass in the other (the merge was keyed by detector name alone)."""
    det = mini_comcam.detector(0)
    nominal = {a: {"gain": 1.6, "noise": 6.0} for a in det.amp_names}
    stats = []
    for band, gain in (("g_01", 1.9), ("r_03", 1.6)):  # g fails, then r passes
        gains = {a: 1.6 for a in det.amp_names}
        gains["C10"] = gain
        path = write_ptc(tmp_path / f"ptc_{band}.fits", det, gains, {a: 6.0 for a in det.amp_names})
        stats.append(verify_calib("ptc", path, det, nominal=nominal, data_id={"physical_filter": band}))
    table, summary = merge_calibs("ptc", stats)
    assert summary["SUCCESS"] is False and summary["N_FAILED"] == 1
    assert summary["DETECTORS"] == {"R22_S00 g_01": False, "R22_S00 r_03": True}
    assert summary["FAILURES"] == {"R22_S00 g_01": ["C10 PTC_GAIN"]}
    assert sorted(set(table["physical_filter"])) == ["g_01", "r_03"] and len(table) == 32
    with pytest.raises(UserInputError, match="several statistics of the same calibration .R22_S00 g_01"):
        merge_calibs("ptc", [stats[0], stats[0]])


def test_stats_json_is_strict_and_round_trips(bias_run, tmp_path):
    s = dict(bias_run[EXPOSURES[0]][0])
    s["MJD"] = math.nan
    path = write_stats(s, tmp_path / "verifyBiasStats.json")
    text = path.read_text()
    assert "NaN" not in text
    json.loads(text)  # strict JSON
    back = read_stats(path)
    assert back["MJD"] is None and back["AMP"]["C10"]["NOISE"] == pytest.approx(s["AMP"]["C10"]["NOISE"])
    assert results_table([back])["mjd"][0] != results_table([back])["mjd"][0]  # None -> NaN in tables


def test_merges_refuse_mixed_inputs(bias_run, mini_comcam):
    a = bias_run[EXPOSURES[0]][0]
    b = bias_run[EXPOSURES[1]][0]
    with pytest.raises(UserInputError, match=MIXED_INPUT_MESSAGE + " exposure: statistics of several exposures"):
        merge_exposure("bias", [a, b])
    with pytest.raises(UserInputError, match=MIXED_INPUT_MESSAGE + " exposure: expected stage DARK"):
        merge_exposure("dark", [a])
    with pytest.raises(UserInputError, match="no detector statistics"):
        merge_exposure("bias", [])


def test_run_merge_rebuilds_rows_from_detector_stats(bias_run):
    exps = []
    for e in EXPOSURES:
        m = merge_exposure("bias", bias_run[e])
        m.pop("RESULTS")
        exps.append(m)
    dets = bias_run[EXPOSURES[0]] + bias_run[EXPOSURES[1]]
    table, summary = merge_run("bias", exps, dets)
    full, _ = merge_run("bias", [merge_exposure("bias", bias_run[e]) for e in EXPOSURES])
    assert len(table) == len(full)
    assert np.array_equal(table["BIAS_NOISE"], full["BIAS_NOISE"], equal_nan=True)
