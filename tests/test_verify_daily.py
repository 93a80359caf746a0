"""cpframe verify-daily end to end: simulated raws, real calibrations (cp_bias/cp_dark/cp_flat), real ISR."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cpframe.science import tasks
from cpframe.cli import main
from cpframe.cli._verify import DAILY_FAILED_MESSAGE
from cpframe.core.errors import PlanningError
from cpframe.science.imageio import read_masked, write_defects, write_masked, write_ptc
from cpframe.repository.ingest import ingest_raws
from cpframe.core.model import CollectionType, Timespan
from cpframe.repository.repo import Repository
from cpframe.camera.simulate import ExposureSpec, make_truth, simulate
from cpframe.verify.daily import MISSING_CALIBS_MESSAGE, verify_daily

INSTRUMENT = "LSSTComCam"
DET = 4
CAL = f"{INSTRUMENT}/calib/TEST/cal"
CHAIN = f"{INSTRUMENT}/calib"
BAD_CHAIN = f"{INSTRUMENT}/calib/bad"


def _spec(day, seq, kind, t, flux=0.0):
    d = str(day)
    return ExposureSpec(day, seq, kind, "r_03", t, t + (0.0 if kind == "bias" else 1.0),
                        f"{d[:4]}-{d[4:6]}-{d[6:]}T03:{seq:02d}:00", kind, "calib", flux)


@pytest.fixture(scope="module")
def daily_repo(tmp_path_factory, mini_comcam):
    """Night 20241110 builds the calibrations; 20241111 is a normal night; 20241113 has a saturated flat."""
    base = tmp_path_factory.mktemp("daily")
    specs = ([_spec(20241110, s, "bias", 0.0) for s in range(1, 7)] + [_spec(20241110, s, "dark", 30.0) for s in (7, 8, 9, 10, 11)]
             + [_spec(20241110, s, "flat", 10.0, 2000.0) for s in (12, 13, 14, 15)]
             + [_spec(20241111, 1, "bias", 0.0), _spec(20241111, 2, "bias", 0.0), _spec(20241111, 3, "dark", 30.0),
                _spec(20241111, 4, "flat", 10.0, 2000.0), _spec(20241111, 5, "flat", 10.0, 2000.0)]
             + [_spec(20241113, 1, "flat", 100.0, 2000.0)])  # ~200k e-: saturated at the full well
    cam = mini_comcam
    truth = make_truth(cam, 3, date=specs[0].begin)
    paths = simulate(specs, base / "raw", INSTRUMENT, "mini", seed=3, detectors=[DET], truth=truth, workers=1)
    repo = Repository.create(base / "repo")
    repo.register_instrument(INSTRUMENT, "mini")
    ingest_raws(repo, paths, transfer="direct")
    det = cam.detector(DET)
    # PTC and defects from the simulator's truth (the calibrations under test are bias, dark, flat)
    n = 3
    rows = [{"amp": a, "gain": truth.detectors[DET].amps[a].gain, "gain_err": 0.01,
             "noise": truth.detectors[DET].amps[a].read_noise, "noise_err": 0.1, "turnoff": 60000.0, "a00": -2e-6,
             "n_pairs": n, "raw_means": np.ones(n), "raw_vars": np.ones(n), "exp_times": np.ones(n),
             "mask": np.ones(n, bool), "overscan_noise": np.ones(n)} for a in det.amp_names]
    gen = base / "gen"
    ptc = write_ptc(gen / "ptc.fits", rows, {"INSTRUME": INSTRUMENT, "DET_SER": det.serial})
    defects = write_defects(gen / "defects.ecsv", [r[:4] for r in truth.detectors[DET].defects])
    by_type = {k: [str(p) for p in sorted(paths) if "/20241110/" in str(p)
                   and any(s.exposure_id == int(p.parent.name) and s.observation_type == k for s in specs)]
               for k in ("bias", "dark", "flat")}
    tasks.cp_bias(by_type["bias"], gen / "bias.fits", calibs={"ptc": str(ptc)})
    tasks.cp_dark(by_type["dark"], gen / "dark.fits", calibs={"ptc": str(ptc), "bias": str(gen / "bias.fits"),
                                                               "defects": str(defects)})
    tasks.cp_flat(by_type["flat"], gen / "flat.fits", calibs={"ptc": str(ptc), "bias": str(gen / "bias.fits"),
                                                               "dark": str(gen / "dark.fits")})
    bias = read_masked(gen / "bias.fits")  # a bias whose level is 20 e- too high
    write_masked(gen / "bad_bias.fits", bias.image + np.float32(20.0), bias.mask, bias.variance, bias.header)
    reg = repo.registry
    did = {"instrument": INSTRUMENT, "detector": DET}
    reg.register_collection("gen/run", CollectionType.RUN)
    refs = repo.put_files([(ptc, "ptc", did), (defects, "defects", did), (gen / "bias.fits", "bias", did),
                           (gen / "dark.fits", "dark", did), (gen / "flat.fits", "flat", dict(did, physical_filter="r_03"))],
                          "gen/run")
    reg.register_collection("gen/bad", CollectionType.RUN)
    bad = repo.put_files([(gen / "bad_bias.fits", "bias", did)], "gen/bad")
    since = Timespan.from_text("2024-11-01")
    reg.certify(CAL, refs, since)
    reg.certify(f"{INSTRUMENT}/calib/TEST/badbias", bad, since)
    reg.register_collection(CHAIN, CollectionType.CHAINED)
    reg.set_chain(CHAIN, [CAL])
    reg.register_collection(BAD_CHAIN, CollectionType.CHAINED)
    reg.set_chain(BAD_CHAIN, [f"{INSTRUMENT}/calib/TEST/badbias", CAL])
    repo.test_truth_dir = base / "raw" / "truth"  # where simulate() saved the truth
    yield repo
    repo.close()


def test_good_night_passes_and_history_is_not_duplicated(daily_repo, tmp_path):
    hist = tmp_path / "daily.ecsv"
    args = ["verify-daily", str(daily_repo.root), "--instrument", INSTRUMENT, "--day-obs", "20241111",
            "--collections", CHAIN, "--history", str(hist)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "BIAS  2 exposure(s): PASS" in r.output and "FLAT  2 exposure(s): PASS" in r.output
    assert "all tests pass" in r.output
    t = Table.read(hist, format="ascii.ecsv")
    assert len(t) == 5 * 16 and all(t["SUCCESS"])
    assert set(t["stage"]) == {"BIAS", "DARK", "FLAT"} and set(t["day_obs"]) == {20241111}
    # the residual bias noise is close to what was expected (model of docs/verification.md)
    b = t[t["stage"] == "BIAS"]
    ratio = np.asarray(b["NOISE"]) / np.asarray(b["EXPECTED_NOISE"])
    assert 0.95 < np.median(ratio) < 1.05
    assert all("bias:" in c and "ptc:" in c for c in t["calibrations"])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert len(Table.read(hist, format="ascii.ecsv")) == 80  # replaced, not duplicated


def test_saturated_flat_fails_the_flat_noise_test_with_exit_7(daily_repo, tmp_path):
    hist = tmp_path / "daily.csv"
    r = CliRunner().invoke(main, ["verify-daily", str(daily_repo.root), "--instrument", INSTRUMENT,
                                  "--day-obs", "20241113", "--collections", CHAIN, "--history", str(hist)])
    assert r.exit_code == 7, r.output
    assert DAILY_FAILED_MESSAGE.format(day_obs=20241113, n=16) in r.output
    assert "FLAT 2024111300001 R22_S11 C10 NOISE" in r.output
    t = Table.read(hist, format="ascii.csv")
    assert len(t) == 16 and {str(v) for v in t["SUCCESS"]} == {"False"}  # CSV keeps text
    assert set(t["FAILED_TESTS"]) == {"NOISE"}


def test_bias_with_a_wrong_level_fails_mean_not_noise(daily_repo):
    result = verify_daily(daily_repo, INSTRUMENT, 20241111, [BAD_CHAIN])
    bias_fail = {f.split()[-1] for f in result.failures if f.startswith("BIAS")}
    assert bias_fail == {"MEAN"}
    assert len([f for f in result.failures if f.startswith("BIAS")]) == 2 * 16
    # the dark residual inherits the 20 e- offset: MEAN again, the right test
    assert {f.split()[-1] for f in result.failures if f.startswith("DARK")} == {"MEAN"}
    table, summary = result.stages["BIAS"]
    assert not summary["SUCCESS"]
    assert np.allclose(table[table["amplifier"] != ""]["BIAS_MEAN"], -20.0, atol=2.0)


def test_missing_calibrations_and_bad_input_are_clear(daily_repo, tmp_path):
    daily_repo.registry.register_collection("empty/cal", CollectionType.CALIBRATION)
    with pytest.raises(PlanningError, match=MISSING_CALIBS_MESSAGE + " in empty/cal valid on day_obs 20241111: ptc"):
        verify_daily(daily_repo, INSTRUMENT, 20241111, ["empty/cal"])
    r = CliRunner().invoke(main, ["verify-daily", str(daily_repo.root), "--instrument", INSTRUMENT,
                                  "--day-obs", "20241111", "--collections", "empty/cal"])
    assert r.exit_code == 5 and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["verify-daily", str(daily_repo.root), "--instrument", INSTRUMENT,
                                  "--day-obs", "20241111", "--collections", CHAIN, "--history", str(tmp_path / "h.txt")])
    assert r.exit_code == 2 and ".ecsv or .csv" in r.output
    r = CliRunner().invoke(main, ["verify-daily", str(daily_repo.root), "--instrument", INSTRUMENT,
                                  "--day-obs", "20241112", "--collections", CHAIN])
    assert r.exit_code == 0 and "nothing to verify" in r.output


def test_ptc_nominal_values_from_the_saved_truth(daily_repo, mini_comcam):
    from cpframe.verify import verify_calib
    from cpframe.verify.ptc import nominal_from_truth

    det = mini_comcam.detector(DET)
    nominal = nominal_from_truth(daily_repo.test_truth_dir, DET)
    assert set(nominal) == set(det.amp_names) and 1.5 <= nominal["C10"]["gain"] <= 1.8
    ref = daily_repo.registry.find_dataset("ptc", {"instrument": INSTRUMENT, "detector": DET}, ["gen/run"])
    stats = verify_calib("ptc", daily_repo.get_path(ref), det, {"ptc_turnoff_threshold_e": 50000.0}, nominal=nominal)
    assert stats["SUCCESS"], stats["FAILURES"]
    assert stats["AMP"]["C10"]["PTC_GAIN"] == pytest.approx(nominal["C10"]["gain"])
