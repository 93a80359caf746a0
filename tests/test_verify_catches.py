"""Every verification test can fail: a simulated bad input of its kind, per test (issue 16).

The headline cases run the way a verify pipeline does: raws from the simulator (with the
bad effect injected at the source), the ISR with the switches of ``pipelines/verify*.yaml``
and the calibrations of the science fixture's chain, then ``verify_exposure`` /
``verify_calib``.  Tests whose bad input is most simply a residual image use the residual
fixture of ``test_verify_stages``.  ``test_every_counted_test_has_a_bad_input`` keeps the
catalogue complete: a new verification test without a failing case fails it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
from cpframe.science.imageio import read_masked, read_ptc, write_defects, write_masked, write_ptc
from cpframe.science.tasks import isr_task
from cpframe.verify import get_stage, merge_exposure, verify_calib, verify_exposure
from cpframe.verify.ptc import nominal_from_truth
from tests.fixtures.science import DETECTOR, INSTRUMENT, SEED
from tests.fixtures.verify import make_residual

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

#: (stage, test) -> the test function (in this module or test_verify_stages) whose bad input it fails.
CAUGHT_BY = {
    ("BIAS", "MEAN"): "test_verify_stages::test_bias_with_a_wrong_level_fails_mean_only",
    ("BIAS", "NOISE"): "test_bias_calibration_with_undeclared_noise_fails_noise",
    ("BIAS", "CR_NOISE"): "test_verify_stages::test_unrepaired_structure_fails_cr_noise",
    ("BIAS", "PROCESSING"): "test_verify_stages::test_cosmic_rays_are_repaired_for_cr_noise_and_too_many_force_failure",
    ("BIAS", "READ_NOISE_CONSISTENT"): "test_high_noise_bias_fails_read_noise_consistent",
    ("DARK", "MEAN"): "test_light_leak_in_a_dark_fails_mean",
    ("DARK", "NOISE"): "test_dark_calibration_with_undeclared_noise_fails_noise",
    ("DARK", "CR_NOISE"): "test_dark_with_a_glow_fails_cr_noise",
    ("DARK", "PROCESSING"): "test_verify_stages::test_cosmic_rays_are_repaired_for_cr_noise_and_too_many_force_failure",
    ("DARK", "READ_NOISE_CONSISTENT"): "test_high_noise_bias_fails_read_noise_consistent",
    ("FLAT", "NOISE"): "test_saturated_flat_fails_saturation_and_noise",
    ("FLAT", "SATURATION"): "test_saturated_flat_fails_saturation_and_noise",
    ("FLAT", "DET SCATTER"): "test_flat_with_a_wrong_amp_fails_detector_scatter",
    ("FLAT", "EXP SCATTER"): "test_flat_with_a_wrong_detector_fails_exposure_scatter",
    ("DEFECTS", "OUTLIERS"): "test_defects_covering_part_of_a_noisy_region_fail_outliers",
    ("DEFECTS", "STDEV"): "test_inverted_defects_fail_stdev",
    ("DEFECTS", "PROB_TEST"): "test_defects_missing_the_bad_columns_fail_prob_test",
    ("PTC", "PTC_GAIN"): "test_ptc_with_a_wrong_gain_fails_ptc_gain",
    ("PTC", "PTC_NOISE"): "test_ptc_with_a_wrong_gain_fails_ptc_gain",
    ("PTC", "PTC_TURNOFF"): "test_verify_stages::test_ptc_against_nominal_values",
    ("PTC", "PTC_BFE_A00"): "test_verify_stages::test_ptc_against_nominal_values",
    ("PTC", "NOISE_SIGNAL_INDEPENDENCE"): "test_overscan_noise_growing_with_signal_fails_independence",
    ("SCIENCE", "COLUMN_STRUCTURE"): "test_verify_stages::test_science_amp_step_and_column_pattern_fail_their_tests",
    ("SCIENCE", "ROW_STRUCTURE"): "test_science_row_pattern_fails_row_structure",
    ("SCIENCE", "DET AMP_STEP"): "test_verify_stages::test_science_amp_step_and_column_pattern_fail_their_tests",
}

#: Tests recorded but not counted in SUCCESS, with the reason (shown in the report as informational).
NOT_COUNTED = {
    ("DEFECTS", "MIN"): "a subset's minimum is never below the whole set's: cannot fail",
    ("DEFECTS", "MAX"): "a subset's maximum is never above the whole set's: cannot fail",
}


def _tests_of(stats: dict) -> set[str]:
    names = set()
    for tests in stats["VERIFY"]["AMP"].values():
        names |= {k for k in tests if k != "SUCCESS"}
    names |= {f"DET {k}" for k in stats["VERIFY"].get("DET", {}) if k != "SUCCESS"}
    return names


def test_every_counted_test_has_a_bad_input(mini_comcam, tmp_path):
    """Every test a stage records is either caught by a named bad input here or declared not counted."""
    import tests.test_verify_stages as stages_mod

    det = mini_comcam.detector(4)
    seen: dict[str, set[str]] = {}
    res, _ = make_residual(det, seed=61, read_noise=6.0, header_extra={
        f"LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {a}": 6.0 / 1.6 for a in det.amp_names})
    for stage in ("bias", "dark"):
        seen[stage.upper()] = _tests_of(verify_exposure(stage, res, det))
    flat, _ = make_residual(det, seed=62, signal=20000.0)
    fstats = verify_exposure("flat", flat, det)
    seen["FLAT"] = _tests_of(fstats) | {f"EXP {k}" for k in merge_exposure("flat", [fstats])["EXP"]["VERIFY"]
                                         if k != "SUCCESS"}
    seen["SCIENCE"] = _tests_of(verify_exposure("science", flat, det))
    seen["DEFECTS"] = _tests_of(verify_exposure("defects", flat, det, uncorrected_path=flat))
    ptc = stages_mod.write_ptc(tmp_path / "p.fits", det, {a: 1.6 for a in det.amp_names},
                               {a: 6.0 for a in det.amp_names})
    seen["PTC"] = _tests_of(verify_calib("ptc", ptc, det, nominal={a: {"gain": 1.6, "noise": 6.0}
                                                                  for a in det.amp_names}))
    recorded = {(st, t) for st, names in seen.items() for t in names}
    informational = {(st, t) for st, t in recorded if t in get_stage(st).informational}
    assert informational == set(NOT_COUNTED), "informational tests must be listed with a reason"
    assert recorded - informational == set(CAUGHT_BY), sorted((recorded - informational) ^ set(CAUGHT_BY))
    here = globals()
    for where in CAUGHT_BY.values():
        mod, _, name = where.rpartition("::")
        assert callable((vars(stages_mod) if mod else here).get(name)), where


# -- end to end: simulated raws, the verify pipelines' ISR, the fixture chain's calibrations --------


def _isr_switches(pipeline: str, task: str | None = None) -> dict:
    doc = yaml.safe_load((PIPELINES / f"{pipeline}.yaml").read_text())
    for label, t in doc["tasks"].items():
        if t["kind"] == "isr" and (task is None or label == task):
            cfg = dict(t.get("config") or {})
            # the chain has no crosstalk or linearizer (optional inputs the pipeline applies when found)
            for k in ("doCrosstalk", "doQuadraticCrosstalkCorrection", "doLinearize"):
                cfg.pop(k, None)
            return cfg
    raise AssertionError(f"no isr task in {pipeline}")


def _spec(seq: int, kind: str, expt: float, flux: float = 0.0, dark_time: float | None = None) -> ExposureSpec:
    dark = (0.0 if kind == "bias" else expt + 0.3) if dark_time is None else dark_time
    return ExposureSpec(20241111, seq, kind, "r_03", float(expt), float(dark), f"2024-11-11T20:{seq:02d}:00",
                        kind, "BAD-INPUT", float(flux))


def _simulate_one(tmp_path, spec, truth=None):
    from cpframe.camera.models import load_camera

    truth = truth or make_truth(load_camera(INSTRUMENT, "mini"), SEED)
    (path,) = simulate([spec], tmp_path / "raw", INSTRUMENT, scale="mini", seed=SEED, detectors=[DETECTOR],
                       workers=1, truth=truth, executor="thread")
    return str(path)


def _calibs(products, **override):
    c = {"bias": products.bias.path, "dark": products.dark.path, "flat": products.flat.path,
         "defects": products.defects.path, "ptc": products.ptc.path}
    c.update(override)
    return c


def _residual(tmp_path, raw, pipeline, products, name="res.fits", task=None, **override):
    out = tmp_path / name
    isr_task(raw, out, _isr_switches(pipeline, task), _calibs(products, **override))
    return out


def _failing_tests(stats) -> set[str]:
    return {f.split()[-1] for f in stats["FAILURES"]}


def test_saturated_flat_fails_saturation_and_noise(tmp_path, mini_sim, mini_products):
    """20 x the full well: the verifyFlat ISR masks SAT (doSaturation), so SATURATION fails;
    a good flat of the same band passes both."""
    # a verification flat independent of the flat's inputs (as DMTN-222's SELECTION_FLAT_V)
    good = _residual(tmp_path, _simulate_one(tmp_path, _spec(9, "flat", 10.0, flux=2000.0)), "verifyFlat",
                     mini_products, "good.fits")
    g = verify_exposure("flat", good, mini_sim.detector)
    assert not ({"SATURATION", "NOISE"} & _failing_tests(g)), g["FAILURES"]
    raw = _simulate_one(tmp_path, _spec(1, "flat", 10.0, flux=200000.0))
    stats = verify_exposure("flat", _residual(tmp_path, raw, "verifyFlat", mini_products), mini_sim.detector)
    assert {"SATURATION", "NOISE"} <= _failing_tests(stats)
    assert all(s["SAT_FRACTION"] > 0.9 for s in stats["AMP"].values())


def test_light_leak_in_a_dark_fails_mean(tmp_path, mini_sim, mini_products):
    """A dark taken with light reaching the sensor (0.05 e-/s over 1000 s): MEAN fails; the
    same dark without the leak passes."""
    ok = verify_exposure("dark", _residual(tmp_path, _simulate_one(tmp_path, _spec(2, "dark", 1000.0)),
                                           "verifyDark", mini_products, "ok.fits"), mini_sim.detector)
    assert "MEAN" not in _failing_tests(ok), ok["FAILURES"]
    raw = _simulate_one(tmp_path, _spec(3, "dark", 1000.0, flux=0.05))
    stats = verify_exposure("dark", _residual(tmp_path, raw, "verifyDark", mini_products), mini_sim.detector)
    assert "MEAN" in _failing_tests(stats)
    assert sum(f.endswith(" MEAN") for f in stats["FAILURES"]) >= 12  # most amps (vignetting lowers corners)


def test_high_noise_bias_fails_read_noise_consistent(tmp_path, mini_sim, mini_products):
    """One amp's read noise rose by 50 % (data and overscan alike): NOISE, measured against the
    exposure's own overscan, cannot see it; READ_NOISE_CONSISTENT (against the PTC) fails."""
    from cpframe.camera.models import load_camera

    truth = make_truth(load_camera(INSTRUMENT, "mini"), SEED)
    amps = truth.detectors[DETECTOR].amps
    amps["C04"] = dataclasses.replace(amps["C04"], read_noise=1.5 * amps["C04"].read_noise)
    raw = _simulate_one(tmp_path, _spec(4, "bias", 0.0), truth)
    stats = verify_exposure("bias", _residual(tmp_path, raw, "verifyBias", mini_products), mini_sim.detector)
    assert stats["FAILURES"] == ["C04 READ_NOISE_CONSISTENT"]


def _noisy_copy(src, dst, amp, sigma, seed=5):
    """A calibration whose one amp carries noise its variance plane does not declare."""
    m = read_masked(src)
    rng = np.random.default_rng(seed)
    img = m.image.astype(np.float32).copy()
    img[amp.bbox] += rng.normal(0.0, sigma, img[amp.bbox].shape).astype(np.float32)
    write_masked(dst, img, m.mask, m.variance, m.header)
    return str(dst)


def test_bias_calibration_with_undeclared_noise_fails_noise(tmp_path, mini_sim, mini_products):
    amp = mini_sim.detector.amp("C13")
    bad_bias = _noisy_copy(mini_products.bias.path, tmp_path / "noisybias.fits", amp, 5.0)
    raw = mini_sim.bias[0]
    good = verify_exposure("bias", _residual(tmp_path, raw, "verifyBias", mini_products, "g.fits"), mini_sim.detector)
    assert good["SUCCESS"], good["FAILURES"]
    stats = verify_exposure("bias", _residual(tmp_path, raw, "verifyBias", mini_products, bias=bad_bias),
                            mini_sim.detector)
    assert stats["FAILURES"] == ["C13 NOISE"]


def test_dark_calibration_with_undeclared_noise_fails_noise(tmp_path, mini_sim, mini_products):
    amp = mini_sim.detector.amp("C02")
    bad_dark = _noisy_copy(mini_products.dark.path, tmp_path / "noisydark.fits", amp, 0.01)  # e-/s x 1000 s
    stats = verify_exposure("dark", _residual(tmp_path, mini_sim.dark[0], "verifyDark", mini_products, dark=bad_dark),
                            mini_sim.detector)
    assert "C02 NOISE" in stats["FAILURES"]


def test_dark_with_a_glow_fails_cr_noise(tmp_path, mini_sim, mini_products):
    """An amplifier glow (a smooth bright spot, not sharp like a cosmic ray) left in the dark
    residual: clipped out of NOISE, kept in the unclipped CR_NOISE."""
    det = mini_sim.detector
    out = _residual(tmp_path, mini_sim.dark[0], "verifyDark", mini_products)
    m = read_masked(out)
    amp = det.amp("C11")
    yy, xx = np.mgrid[: amp.data_rows, : amp.data_cols]
    img = m.image.copy()
    img[amp.bbox] += (800.0 * np.exp(-((yy - 100) ** 2 + (xx - 30) ** 2) / (2 * 2.5**2))).astype(np.float32)
    write_masked(out, img, m.mask, m.variance, m.header)
    assert verify_exposure("dark", out, det)["FAILURES"] == ["C11 CR_NOISE"]


def test_flat_with_a_wrong_amp_fails_detector_scatter(tmp_path, mini_sim, mini_products):
    """The flat under test has one amp 30 % low (e.g. a gain jump when it was taken)."""
    m = read_masked(mini_products.flat.path)
    img = m.image.copy()
    img[mini_sim.detector.amp("C07").bbox] *= np.float32(0.7)
    bad = write_masked(tmp_path / "flat.fits", img, m.mask, m.variance, m.header)
    stats = verify_exposure("flat", _residual(tmp_path, mini_sim.flat[0], "verifyFlat", mini_products, flat=str(bad)),
                            mini_sim.detector)
    assert "SCATTER" in stats["FAILURES"]


def test_flat_with_a_wrong_detector_fails_exposure_scatter(mini_comcam):
    """Two detectors of one exposure flat-fielded to levels 20 % apart (one detector's flat
    normalised wrongly): the exposure-level SCATTER fails, each detector alone passes."""
    a, b = mini_comcam.detector(4), mini_comcam.detector(5)
    ra, _ = make_residual(a, seed=63, signal=20000.0)
    rb, _ = make_residual(b, seed=64, signal=16000.0)
    sa, sb = verify_exposure("flat", ra, a), verify_exposure("flat", rb, b)
    assert sa["SUCCESS"] and sb["SUCCESS"]
    exp = merge_exposure("flat", [sa, sb])
    assert exp["SUCCESS"] is False and exp["FAILURES"] == ["SCATTER"]


def test_defects_missing_the_bad_columns_fail_prob_test(tmp_path, mini_sim, mini_products):
    """Defects under test without the detector's bad columns, cold and dead pixels, on a
    verification flat (the exposures DMTN-222's SELECTION_DEFECTS_V takes)."""
    boxes = [(d[0], d[1], d[2], d[3]) for d in mini_sim.truth.detectors[DETECTOR].defects
             if d[4] not in ("cold", "dead", "bad_column")]
    assert len(boxes) < len(mini_sim.truth.detectors[DETECTOR].defects)
    bad = write_defects(tmp_path / "defects.ecsv", boxes)
    raw = _simulate_one(tmp_path, _spec(10, "flat", 10.0, flux=2000.0))
    good_c = _residual(tmp_path, raw, "verifyDefects", mini_products, "gc.fits", task="verifyDefectsIsr")
    unc = _residual(tmp_path, raw, "verifyDefects", mini_products, "u.fits", task="verifyUncorrectedDefectsIsr")
    good = verify_exposure("defects", good_c, mini_sim.detector, uncorrected_path=unc)
    assert "PROB_TEST" not in _failing_tests(good), good["FAILURES"]
    cor = _residual(tmp_path, raw, "verifyDefects", mini_products, "c.fits", task="verifyDefectsIsr",
                    defects=str(bad))
    stats = verify_exposure("defects", cor, mini_sim.detector, uncorrected_path=unc)
    assert "PROB_TEST" in _failing_tests(stats)


def test_defects_covering_part_of_a_noisy_region_fail_outliers(mini_comcam):
    """A noisy region (a glowing corner: 3x the noise over 30 % of an amp) whose defects cover
    only 90 % of it: the rest stands out against the quieter pixels, so masking *raises* the
    number of clipped outliers."""
    det = mini_comcam.detector(4)
    res, _ = make_residual(det, seed=65, signal=1000.0)
    amp = det.amp("C10")
    ys, xs = amp.bbox
    rows = int(0.3 * amp.data_rows)
    res.image[ys, xs][:rows] += np.random.default_rng(1).normal(0, 3 * math.sqrt(1000.0), (rows, amp.data_cols))
    unc = dataclasses.replace(res, mask=res.mask.copy())
    res.mask[ys, xs][: int(0.9 * rows)] |= 1 << res.mask_bits["BAD"]
    stats = verify_exposure("defects", res, det, uncorrected_path=unc)
    assert "C10 OUTLIERS" in stats["FAILURES"]
    assert stats["AMP"]["C10"]["OUTLIERS"] > stats["AMP"]["C10"]["UNMASKED_OUTLIERS"]


def test_inverted_defects_fail_stdev(mini_comcam):
    """A defect mask inverted by a bug (everything masked except the defects): what is left
    is mostly the hot pixels, so the masked STDEV exceeds the unmasked one."""
    det = mini_comcam.detector(4)
    res, _ = make_residual(det, seed=65, signal=1000.0)
    rng = np.random.default_rng(6)
    hot = np.zeros(det.shape, bool)
    hot[rng.integers(0, det.shape[0], 400), rng.integers(0, det.shape[1], 400)] = True
    res.image[hot] += 5000.0
    unc = dataclasses.replace(res, mask=res.mask.copy())
    res.mask[~hot] |= 1 << res.mask_bits["BAD"]
    res.mask[:, :40] &= ~(1 << res.mask_bits["BAD"])  # a few good columns left unmasked too
    stats = verify_exposure("defects", res, det, uncorrected_path=unc)
    assert "STDEV" in _failing_tests(stats)


def test_ptc_with_a_wrong_gain_fails_ptc_gain(tmp_path, mini_sim, mini_products):
    """The fixture's PTC passes against the simulator truth (gain and, since the overscan
    variance is divided out, read noise); with one amp's gain 8 % off and another's noise
    15 % off, PTC_GAIN and PTC_NOISE fail for exactly those amps."""
    det = mini_sim.detector
    nominal = nominal_from_truth(mini_sim.truth, det.id)
    good = verify_calib("ptc", mini_products.ptc.path, det, {"ptc_turnoff_threshold_e": 0.0}, nominal=nominal)
    assert good["SUCCESS"], good["FAILURES"]
    rows, header = read_ptc(mini_products.ptc.path)
    out = []
    for a in det.amp_names:
        r = dict(rows[a], amp=a)
        if a == "C16":
            r["gain"] *= 1.08
        if a == "C05":
            r["noise"] *= 1.15
        out.append(r)
    bad = write_ptc(tmp_path / "ptc.fits", out, {k: v for k, v in header.items() if k.isupper() and len(k) <= 8})
    stats = verify_calib("ptc", bad, det, {"ptc_turnoff_threshold_e": 0.0}, nominal=nominal)
    assert sorted(stats["FAILURES"]) == ["C05 PTC_NOISE", "C16 PTC_GAIN"]


def test_overscan_noise_growing_with_signal_fails_independence(tmp_path, mini_comcam):
    """Overscan noise that rises with the flat level (signal leaking into the overscan)."""
    import tests.test_verify_stages as stages_mod
    from astropy.io import fits

    det = mini_comcam.detector(4)
    path = stages_mod.write_ptc(tmp_path / "p.fits", det, {a: 1.6 for a in det.amp_names},
                                {a: 6.0 for a in det.amp_names})
    nominal = {a: {"gain": 1.6, "noise": 6.0} for a in det.amp_names}
    assert verify_calib("ptc", path, det, nominal=nominal)["SUCCESS"]
    with fits.open(path, mode="update") as h:
        h["PTC"].data["overscan_noise"][:] = np.array([4.0, 4.0, 4.0, 4.0, 4.0, 9.0])  # jumps at high signal
    stats = verify_calib("ptc", path, det, nominal=nominal)
    assert _failing_tests(stats) == {"NOISE_SIGNAL_INDEPENDENCE"}


def test_science_row_pattern_fails_row_structure(mini_comcam):
    """A residual row pattern (a flat's row structure not corrected) in one amp."""
    det = mini_comcam.detector(4)
    res, _ = make_residual(det, seed=66, signal=800.0)
    amp = det.amp("C03")
    rng = np.random.default_rng(7)
    res.image[amp.bbox] += rng.normal(0.0, 25.0, amp.data_rows)[:, None]
    assert "C03 ROW_STRUCTURE" in verify_exposure("science", res, det)["FAILURES"]


def test_nominal_gains_are_finite(mini_sim):
    nominal = nominal_from_truth(mini_sim.truth, DETECTOR)
    assert all(math.isfinite(v["gain"]) and math.isfinite(v["noise"]) for v in nominal.values())
