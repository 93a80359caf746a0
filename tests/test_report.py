"""The HTML report on a small real repository, rendered in headless Chromium."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.science.imageio import write_masked, write_ptc
from cpframe.core.model import CollectionType, DatasetType, Timespan, exposure_id, parse_tai
from cpframe.repository.repo import Repository
from cpframe.report.html import NO_DATASETS_MESSAGE, write_report
from cpframe.verify import (
    merge_calibs,
    merge_exposure,
    merge_run,
    verify_calib,
    verify_exposure,
    write_results,
    write_stats,
)
from cpframe.verify.plots import focal_plane_grid, stretch_limits
from tests.fixtures.verify import chromium_args, failure_links, look_at_report, make_residual, verdict_order

INSTRUMENT = "LSSTComCam"
DETECTORS = (0, 4, 8)
P = f"{INSTRUMENT}/calib/DEMO-1/demo"
BIAS_GEN = f"{P}/biasGen.20241111a"
FLAT_GEN = f"{P}/flatGen-r.20241111a"
PTC_GEN = f"{P}/ptcGen.20241111a"
VERIFY_BIAS = f"{P}/verifyBias.20241127a"
VERIFY_FLAT = f"{P}/verifyFlat-r.20241127a"
VERIFY_PTC = f"{P}/verifyPtc.20241127a"
BIAS_EXPOSURES = ((20241126, 21), (20241126, 22), (20241127, 5))  # two nights
FLAT_EXPOSURES = ((20241126, 27), (20241126, 28))
FAILING_FLAT = (exposure_id(20241126, 28), 8)  # (exposure, detector) with an amp 30 % high

VERIFY_TYPES = [
    DatasetType(f"verify{t}IsrExp", ("instrument", "detector", "exposure"), False, "fits-masked") for t in ("Bias", "Flat")
] + [
    DatasetType(f"verify{t}Stats", ("instrument", "detector", "exposure"), False, "json") for t in ("Bias", "Flat")
] + [
    DatasetType("verifyPtcStats", ("instrument", "detector"), False, "json"),
] + [
    DatasetType(f"verify{t}{k}", ("instrument",), False, fmt)
    for t in ("Bias", "Flat", "Ptc") for k, fmt in (("Results", "ecsv"), ("Summary", "json"))
]


def _exposure_record(day, seq, obs_type, physical_filter):
    begin = parse_tai(f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T03:00:00") + seq * 60 * 10**9
    return {"instrument": INSTRUMENT, "id": exposure_id(day, seq), "obs_id": f"CC_O_{day}_{seq:06d}",
            "day_obs": day, "seq_num": seq, "physical_filter": physical_filter, "observation_type": obs_type,
            "observation_reason": obs_type, "science_program": "test", "exposure_time": 0.0 if obs_type == "bias" else 15.0,
            "dark_time": 0.0, "timespan": Timespan(begin, begin + 30 * 10**9)}


def _product_header(kind, inputs):
    h = {"OBSTYPE": kind, "LSST ISR UNITS": "electron", "CALIB_CREATION_DATETIME": "2024-11-11T12:00:00"}
    for i, (day, seq) in enumerate(inputs):
        h[f"CPP_INPUT_{i}"] = exposure_id(day, seq)
        h[f"CPP_INPUT_DATE_{i}"] = f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T03:00:00"
        h[f"CPP_INPUT_EXPT_{i}"] = 0.0
        h[f"CPP_INPUT_SCALE_{i}"] = 1.0
    return h


@pytest.fixture(scope="module")
def report_repo(tmp_path_factory, mini_comcam):
    """A repository with bias/flat/ptc products and their verification (one flat exposure failing)."""
    root = tmp_path_factory.mktemp("report") / "repo"
    scratch = root.parent / "scratch"
    repo = Repository.create(root)
    repo.register_instrument(INSTRUMENT, "mini")
    for dt in VERIFY_TYPES:
        repo.registry.register_dataset_type(dt)
    repo.registry.insert_exposures([_exposure_record(d, s, "bias", "r_03") for d, s in BIAS_EXPOSURES]
                                   + [_exposure_record(d, s, "flat", "r_03") for d, s in FLAT_EXPOSURES])
    reg = repo.registry
    for chain in (BIAS_GEN, FLAT_GEN, PTC_GEN):
        run = f"{chain}/20241111T120000Z"
        reg.register_collection(run, CollectionType.RUN)
        reg.register_collection(chain, CollectionType.CHAINED)
        reg.set_chain(chain, [run])
        reg.set_run_info(run, {"records": [{"status": "complete", "command_line": ["cpframe", "submit", "bps.yaml"],
                                            "selection": f"instrument='{INSTRUMENT}'"}]})
    for run in (VERIFY_BIAS, VERIFY_FLAT, VERIFY_PTC):
        reg.register_collection(run, CollectionType.RUN)
    rng = np.random.default_rng(0)
    items = {BIAS_GEN: [], FLAT_GEN: [], PTC_GEN: []}
    for d in DETECTORS:
        det = mini_comcam.detector(d)
        shape = det.shape
        zeros = np.zeros(shape, np.int32)
        bias = rng.normal(0.0, 2.0, shape).astype(np.float32)
        p = write_masked(scratch / f"bias{d}.fits", bias, zeros, np.full(shape, 4.0, np.float32),
                         _product_header("bias", [(20241110, s) for s in range(10, 16)]))
        items[BIAS_GEN].append((p, "bias", {"instrument": INSTRUMENT, "detector": d}))
        flat = (1.0 + 0.05 * np.linspace(-1, 1, shape[1])[None, :] + rng.normal(0, 0.005, shape)).astype(np.float32)
        p = write_masked(scratch / f"flat{d}.fits", flat, zeros, np.full(shape, 1e-5, np.float32),
                         _product_header("flat", [(20241110, s) for s in range(21, 26)]))
        items[FLAT_GEN].append((p, "flat", {"instrument": INSTRUMENT, "detector": d, "physical_filter": "r_03"}))
        n = 8
        means = np.geomspace(500, 60000, n)
        rows = [{"amp": a, "gain": 1.6, "gain_err": 0.01, "noise": 6.0, "noise_err": 0.05, "turnoff": 65000.0,
                 "a00": -2e-6, "n_pairs": n, "raw_means": means, "raw_vars": means / 1.6 + (6.0 / 1.6) ** 2,
                 "exp_times": np.arange(1.0, n + 1), "mask": np.ones(n, bool), "overscan_noise": np.full(n, 3.75)}
                for a in det.amp_names]
        p = write_ptc(scratch / f"ptc{d}.fits", rows, {"INSTRUME": INSTRUMENT, "DET_SER": det.serial})
        items[PTC_GEN].append((p, "ptc", {"instrument": INSTRUMENT, "detector": d}))
    for chain, its in items.items():
        repo.put_files(its, f"{chain}/20241111T120000Z")
    # verification: residuals, stats, merges, results and summaries
    for stage, run, exposures, kw in (("bias", VERIFY_BIAS, BIAS_EXPOSURES, {}),
                                      ("flat", VERIFY_FLAT, FLAT_EXPOSURES, {"signal": 20000.0})):
        put, exp_merges = [], []
        for day, seq in exposures:
            eid = exposure_id(day, seq)
            det_stats = []
            for d in DETECTORS:
                det = mini_comcam.detector(d)
                levels = {"C04": 6000.0} if (stage == "flat" and (eid, d) == FAILING_FLAT) else None
                res, _ = make_residual(det, seed=eid % 1000 + d, exposure=eid, amp_levels=levels, **kw)
                path = write_masked(scratch / f"{stage}_{eid}_{d}.fits", res.image.astype(np.float32), res.mask,
                                    res.variance.astype(np.float32), res.header)
                stats = verify_exposure(stage, path, det, data_id={"instrument": INSTRUMENT, "exposure": eid})
                det_stats.append(stats)
                did = {"instrument": INSTRUMENT, "detector": d, "exposure": eid}
                t = stage.capitalize()
                put.append((path, f"verify{t}IsrExp", did))
                put.append((write_stats(stats, scratch / f"{stage}_stats_{eid}_{d}.json"), f"verify{t}Stats", did))
            exp_merges.append(merge_exposure(stage, det_stats))
        table, summary = merge_run(stage, exp_merges)
        t = stage.capitalize()
        put.append((write_results(table, scratch / f"{stage}_results.ecsv"), f"verify{t}Results", {"instrument": INSTRUMENT}))
        put.append((write_stats(summary, scratch / f"{stage}_summary.json"), f"verify{t}Summary", {"instrument": INSTRUMENT}))
        repo.put_files(put, run)
    ptc_stats = []
    for d in DETECTORS:
        det = mini_comcam.detector(d)
        ref = reg.find_dataset("ptc", {"instrument": INSTRUMENT, "detector": d}, [PTC_GEN])
        ptc_stats.append(verify_calib("ptc", repo.get_path(ref), det,
                                      nominal={a: {"gain": 1.6, "noise": 6.0} for a in det.amp_names}))
    table, summary = merge_calibs("ptc", ptc_stats)
    repo.put_files([(write_results(table, scratch / "ptc_results.ecsv"), "verifyPtcResults", {"instrument": INSTRUMENT}),
                    (write_stats(summary, scratch / "ptc_summary.json"), "verifyPtcSummary", {"instrument": INSTRUMENT})],
                   VERIFY_PTC)
    yield repo
    repo.close()


COLLECTIONS = [VERIFY_BIAS, VERIFY_FLAT, VERIFY_PTC, BIAS_GEN, FLAT_GEN, PTC_GEN]

# the other built types of a DMTN-222 campaign, in their own collections of the same repository
CALTYPES = {"linearizer": "Linearity", "crosstalk": "Crosstalk", "cti": "Cti", "bfk": "Bfk",
            "gain_correction": "GainCorrection"}
STAGE_OF = {"linearizer": "LINEARITY", "gain_correction": "GAIN_CORRECTION"}
FAILING_CROSSTALK = (4, "C12")  # (detector, amp): a significant residual crosstalk after ISR


def _linearizer(det, rng):
    """A Squared linearizer (c = -2e-7 /adu: 1.2 % at 60 000 adu) and the ramp it corrects to a line."""
    from cpframe.science.linearity import AmpLinearity, Linearizer

    t = np.linspace(1.0, 30.0, 20)
    amps = {}
    for a in det.amp_names:
        c = -2e-7 * (1 + 0.1 * rng.random())
        true = 2000.0 * t
        measured = true - c * true ** 2  # what corrected = m + c m^2 brings back to a line (to 1e-5)
        amps[a] = AmpLinearity("Squared", [c], turnoff=float(measured[-1]), max_signal=float(measured[-1]),
                               abscissa=t.tolist(), ordinate=measured.tolist(), mask=[True] * t.size,
                               residuals=[0.0] * t.size, residual_sigma_mad=2e-5, input_gain=1.6, input_noise=6.0)
    return Linearizer(amps, {"LINEARITY_TYPE": "Squared", "NPAIRS": int(t.size), "INSTRUME": INSTRUMENT,
                             "DETECTOR": det.id, "DET_NAME": det.name})


def _crosstalk(det, rng, residual_amp=None):
    """A crosstalk matrix (1e-4..5e-4 between neighbours); as a residual after ISR: zero, or one
    significant coefficient onto ``residual_amp``."""
    from cpframe.science.crosstalk import CrosstalkCalib

    n = len(det.amp_names)
    coeffs = np.zeros((n, n))
    valid = np.zeros((n, n), bool)
    if residual_amp is None:
        for t in range(n):
            for s in (t - 1, t + 1):
                if 0 <= s < n:
                    coeffs[t, s] = 1e-4 + 4e-4 * rng.random()
                    valid[t, s] = True
    elif residual_amp:
        t = det.amp_names.index(residual_amp)
        coeffs[t, (t + 1) % n] = 3e-5
        valid[t, (t + 1) % n] = True
    return CrosstalkCalib(list(det.amp_names), coeffs, np.full((n, n), 2e-6), np.full((n, n), 40000), valid,
                          np.zeros((n, n)), {"N_EXPOSURES": 8, "UNITS": "adu", "INSTRUME": INSTRUMENT,
                                             "DETECTOR": det.id})


def _cti(det, rng):
    from cpframe.science.cti import AmpCti, CtiCalib

    signal = np.geomspace(1000, 80000, 8)
    amps = {}
    for a in det.amp_names:
        cti, size = 1e-6 * (1 + rng.random()), 20.0 * rng.random()
        amps[a] = AmpCti(cti, size, 0.4, 0.1, 1.6, 511, signal.tolist(),
                         (511 * cti * signal + size * (1 - np.exp(-1 / 0.4))).tolist())
    return CtiCalib(amps, {"N_EXPOSURES": 16, "INSTRUME": INSTRUMENT, "DETECTOR": det.id})


def _bfk(det):
    """A kernel of the shape cp_pipe's solve gives (negative centre, zero sum), the same for every amp."""
    from cpframe.science.bfk import BfkCalib

    y, x = np.mgrid[-3:4, -3:4]
    k = -np.exp(-(x ** 2 + y ** 2) / 2.0) * 1e-7
    k -= k.mean()
    return BfkCalib({a: k for a in det.amp_names}, {a: np.zeros_like(k) for a in det.amp_names},
                    {a: True for a in det.amp_names}, {a: 1.6 for a in det.amp_names}, k,
                    n_pairs={a: 8 for a in det.amp_names}, meta={"INSTRUME": INSTRUMENT, "DETECTOR": det.id})


def _gain_correction(det, rng):
    """Adjustments of a few tenths of a percent (a restart), the flat ratio they correct."""
    from cpframe.science.gain_correction import GainCorrection

    adj = 1.0 + 0.003 * rng.standard_normal(len(det.amp_names))
    return GainCorrection({a: float(v) for a, v in zip(det.amp_names, adj)},
                          {"INSTRUME": INSTRUMENT, "DETECTOR": det.id, "CAMSCALE": "mini", "FILTER": "r_03",
                           "excluded_amps": [], "fixed_amp": det.amp_names[0],
                           "flat_ratio_per_amp": {a: float(1.0 / v) for a, v in zip(det.amp_names, adj)}})


@pytest.fixture(scope="module")
def campaign_collections(report_repo, mini_comcam):
    """Linearizer, crosstalk and CTI products of every detector with their verification (cpframe's
    verify stages on the files; one amp's residual crosstalk is significant) next to bias/flat/PTC:
    the collections of a report over every type a DMTN-222 campaign builds."""
    from cpframe.science.crosstalk import write_crosstalk
    from cpframe.science.cti import write_cti
    from cpframe.science.linearity import write_linearizer

    reg = report_repo.registry
    scratch = report_repo.root.parent / "scratch_caltypes"
    rng = np.random.default_rng(3)
    gens, verifies = [], []
    for key, type_name in CALTYPES.items():
        reg.register_dataset_type(DatasetType(key, ("instrument", "detector"), True, "json"))
        for what, fmt in (("Results", "ecsv"), ("Summary", "json")):
            reg.register_dataset_type(DatasetType(f"verify{type_name}{what}", ("instrument",), False, fmt))
        gen, verify = f"{P}/{key}Gen.20241111a", f"{P}/verify{type_name}.20241127a"
        reg.register_collection(gen, CollectionType.RUN)
        reg.register_collection(verify, CollectionType.RUN)
        products, stats = [], []
        for d in DETECTORS:
            det = mini_comcam.detector(d)
            did = {"instrument": INSTRUMENT, "detector": d}
            if key == "linearizer":
                p = write_linearizer(scratch / f"lin{d}.json", _linearizer(det, rng))
                checked = p
            elif key == "crosstalk":
                p = write_crosstalk(scratch / f"xt{d}.json", _crosstalk(det, rng))
                bad = FAILING_CROSSTALK[1] if d == FAILING_CROSSTALK[0] else ""
                checked = write_crosstalk(scratch / f"xt_residual{d}.json", _crosstalk(det, rng, residual_amp=bad))
            elif key == "cti":
                p = write_cti(scratch / f"cti{d}.json", _cti(det, rng))
                checked = p
            elif key == "gain_correction":
                from cpframe.science.gain_correction import write_gain_correction

                p = write_gain_correction(scratch / f"gc{d}.json", _gain_correction(det, rng))
                checked = p
            else:  # BFK is verified on the PTC of flats corrected with the kernel: a straight one here
                from cpframe.science.bfk import write_bfk

                p = write_bfk(scratch / f"bfk{d}.json", _bfk(det))
                checked = report_repo.get_path(reg.find_dataset("ptc", did, [PTC_GEN]))
            products.append((p, key, did))
            stats.append(verify_calib(STAGE_OF.get(key, CALTYPES[key].upper()), checked, det))
        report_repo.put_files(products, gen)
        table, summary = merge_calibs(stats[0]["STAGE"], stats)
        report_repo.put_files(
            [(write_results(table, scratch / f"{key}_results.ecsv"), f"verify{type_name}Results", {"instrument": INSTRUMENT}),
             (write_stats(summary, scratch / f"{key}_summary.json"), f"verify{type_name}Summary", {"instrument": INSTRUMENT})],
            verify)
        gens.append(gen)
        verifies.append(verify)
    return verifies + COLLECTIONS[:3] + gens + COLLECTIONS[3:]


@pytest.fixture(scope="module")
def campaign_report(report_repo, campaign_collections, tmp_path_factory):
    return write_report(report_repo, campaign_collections, tmp_path_factory.mktemp("campaign") / "report")


@pytest.fixture(scope="module")
def report(report_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report"
    return write_report(report_repo, COLLECTIONS, out)


def test_report_pages_verdicts_and_provenance(report):
    out = report.output_dir
    for page in ("index.html", "manifest.html", "navigation.html", "provenance.html", "bias_det.html",
                 "bias_exp.html", "flat_det.html", "flat_exp.html", "ptc_det.html"):
        assert (out / page).is_file(), page
    assert report.verdicts == {"bias": True, "flat": False, "ptc": True}
    eid, det = FAILING_FLAT
    assert report.failures["flat"] == [f"{eid} R22_S22 SCATTER"]
    index = (out / "index.html").read_text()
    assert 'id="summary-table"' in index
    rows = re.findall(r'<tr class="(\w+)"><td><a href="#(\w+)">\w+</a></td><td>(\w+)</td><td>(\w+)</td>', index)
    assert ("fail", "flat", "SCATTER", "detector") in rows
    assert ("pass", "flat", "NOISE", "amp") in rows and ("pass", "bias", "MEAN", "amp") in rows
    assert not [r for r in rows if r[0] == "fail" and r[1] != "flat"]
    # product provenance: the RUN and the CPP_INPUT_* exposures of each product
    det_page = (out / "bias_det.html").read_text()
    assert "2024111000010" in det_page and "2024111000015" in det_page
    assert "provenance.html#run-" in det_page
    prov = (out / "provenance.html").read_text()
    assert "cpframe submit bps.yaml" in prov and BIAS_GEN in prov
    # the failing exposure is red on the exposure page, the other is not
    exp_page = (out / "flat_exp.html").read_text()
    assert re.search(rf"Exposure {eid} <span class=\"verdict fail\">", exp_page)
    assert re.search(rf"Exposure {exposure_id(20241126, 27)} <span class=\"verdict pass\">", exp_page)
    # manifest lists every dataset the report used
    manifest = (out / "manifest.html").read_text()
    assert manifest.count("<tr><td>") == report.n_datasets == 3 * 3 + (3 * 3 * 2 + 2) + (2 * 3 * 2 + 2) + 2
    # every image referenced exists
    srcs = set(re.findall(r'<img src="([^"]+)"', index + det_page + exp_page))
    assert srcs and all((out / s).is_file() for s in srcs)
    results_page = next((out / "src" / "flat").glob("verifyFlatResults_*.html")).read_text()
    assert results_page.count('class="fail"') >= 1


def test_report_reuses_images_unless_overwrite(report_repo, report, tmp_path):
    again = write_report(report_repo, COLLECTIONS, report.output_dir)
    assert again.n_rendered == 0 and again.n_images == report.n_images > 10
    small = write_report(report_repo, [VERIFY_BIAS], tmp_path / "small")
    assert small.n_rendered == small.n_images == 3 + 2  # residual mosaics of 3 exposures, 2 metric plots
    forced = write_report(report_repo, [VERIFY_BIAS], tmp_path / "small", do_overwrite=True)
    assert forced.n_rendered == forced.n_images == small.n_images


def test_stretch_and_layout_against_references(mini_comcam):
    rng = np.random.default_rng(5)
    data = rng.normal(10.0, 3.0, 5000)
    q25, med, q75 = np.percentile(data, [25, 50, 75])
    lo, hi = stretch_limits(np.concatenate([data, [np.nan, 1e9]]))
    q25b, medb, q75b = np.percentile(np.concatenate([data, [1e9]]), [25, 50, 75])
    assert (lo, hi) == pytest.approx((medb - 3 * 0.74 * (q75b - q25b), medb + 3 * 0.74 * (q75b - q25b)))
    grid = focal_plane_grid(mini_comcam)
    # R22_Syx: S00 bottom-left, S22 top-right, S10 above S00
    names = {d.name: grid[d.id] for d in mini_comcam.detectors}
    assert names["R22_S00"] == (0, 0) and names["R22_S22"] == (2, 2) and names["R22_S10"] == (1, 0)
    assert names["R22_S01"] == (0, 1)


def test_report_errors(report_repo, tmp_path):
    from cpframe.core.errors import UnknownCollectionError, UserInputError

    with pytest.raises(UnknownCollectionError, match="nope"):
        write_report(report_repo, ["nope"], tmp_path / "r")
    report_repo.registry.register_collection("empty/run", CollectionType.RUN)
    with pytest.raises(UserInputError, match=NO_DATASETS_MESSAGE + " in empty/run"):
        write_report(report_repo, ["empty/run"], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_report_cli(report_repo, report, tmp_path):
    args = ["report", str(report_repo.root), "-o", str(report.output_dir)]  # images reused: fast
    for c in COLLECTIONS:
        args += ["-c", c]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert str(report.output_dir / "index.html") in r.output and "0 rendered" in r.output
    assert re.search(r"flat\s+FAIL", r.output) and re.search(r"bias\s+PASS", r.output)
    bad = CliRunner().invoke(main, ["report", str(report_repo.root), "-c", "nope", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 3 and "nope" in bad.output and "Traceback" not in bad.output


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    index = report.output_dir / "index.html"
    dom = subprocess.run(chromium_args(chromium, tmp_path / "p1") + ["--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    ok = int(re.search(r'data-images-ok="(\d+)"', body).group(1))
    assert total >= 8 and ok == total
    assert 'data-loaded="0"' not in dom.stdout
    assert 'id="summary-table"' in dom.stdout and "SCATTER" in dom.stdout
    shot = tmp_path / "index.png"
    r = subprocess.run(chromium_args(chromium, tmp_path / "p2") + [f"--screenshot={shot}", "--window-size=1280,2200",
                                                                     index.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 20000


def test_run_level_results_of_several_verify_collections_are_all_used(report_repo, mini_comcam, tmp_path):
    # a second flat band: its own verify collection with its own (instrument-only) Results and Summary
    run = f"{P}/verifyFlat-g.20241127a"
    report_repo.registry.register_collection(run, CollectionType.RUN)
    det = mini_comcam.detector(0)
    res, _ = make_residual(det, seed=99, exposure=exposure_id(20241126, 99), signal=20000.0, physical_filter="g_01")
    table, summary = merge_run("flat", [merge_exposure("flat", [verify_exposure("flat", res, det)])])
    report_repo.put_files([(write_results(table, tmp_path / "g.ecsv"), "verifyFlatResults", {"instrument": INSTRUMENT}),
                           (write_stats(summary, tmp_path / "g.json"), "verifyFlatSummary", {"instrument": INSTRUMENT})],
                          run)
    result = write_report(report_repo, [VERIFY_FLAT, run], tmp_path / "two")
    assert result.verdicts == {"flat": False}  # r fails, g passes: the type fails
    index = (tmp_path / "two" / "index.html").read_text()
    noise = re.search(r"<td>NOISE</td><td>amp</td><td class=\"num\">(\d+)</td>", index)
    assert int(noise.group(1)) == 2 * 3 * 16 + 16  # both bands' amp rows are counted
    assert "2024112600099" in (tmp_path / "two" / "flat_exp.html").read_text()


def test_overall_verdict_is_pass_only_when_every_product_was_verified(report_repo, report, tmp_path):
    """Issue 16: a product without verification makes the report INCOMPLETE (not a green badge),
    naming what is missing and the command that verifies it; a failure makes it FAIL."""
    assert report.overall == "FAIL"
    assert '<span class="verdict fail">FAIL</span>' in (report.output_dir / "index.html").read_text()
    part = write_report(report_repo, [VERIFY_BIAS, BIAS_GEN, PTC_GEN], tmp_path / "part")
    assert part.verdicts == {"bias": True, "ptc": None}
    assert part.overall == "INCOMPLETE"
    assert part.missing == {"ptc": "cpframe submit templates/bps_verify_ptc.yaml"}
    index = part.index.read_text()
    assert '<span class="verdict none">INCOMPLETE</span>' in index and "ALL PASS" not in index
    assert "NOT VERIFIED" in index and "bps_verify_ptc.yaml" in index
    verified = write_report(report_repo, [VERIFY_BIAS, VERIFY_PTC, BIAS_GEN, PTC_GEN], tmp_path / "full")
    assert verified.overall == "PASS" and verified.missing == {}


def test_submit_summary_says_pass_or_fail_for_verification_runs(report_repo):
    """`cpframe submit` of a verification template ends with the verdict of its Summary."""
    from cpframe.execution.submit import _verification_verdict

    flat = report_repo.registry.query_datasets("verifyFlatSummary", [VERIFY_FLAT], find_first=True)
    bias = report_repo.registry.query_datasets("verifyBiasSummary", [VERIFY_BIAS], find_first=True)
    eid, _ = FAILING_FLAT
    assert _verification_verdict(report_repo, bias) == "verification: PASS (verifyBiasSummary)"
    assert _verification_verdict(report_repo, flat) == (
        f"verification: FAIL (verifyFlatSummary): 1 failing test(s): {eid} R22_S22 SCATTER")
    assert _verification_verdict(report_repo, []) == ""  # not a verification run: no line


def test_report_pages_come_from_templates_not_python_strings():
    """Issue 16: every page of the report is a Jinja2 template (autoescaped, one place to read the
    markup); no HTML is assembled in Python strings of cpframe/report (docstrings aside)."""
    import ast
    from pathlib import Path

    import cpframe.report

    tag = re.compile(r"<(html|head|body|main|nav|div|p|table|thead|tbody|tr|td|th|h\d|a|span|ul|li|dl|dt|dd|figure|"
                     r"details|summary|img|code|pre|iframe)[\s>]")
    found = []
    for path in sorted(Path(cpframe.report.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{path.name}:{n.lineno}: {n.value[:60]!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs and tag.search(n.value)]
    assert not found, found
    templates = {p.name for p in (Path(cpframe.report.__file__).parent / "templates").glob("*.html")}
    assert {"detectors.html", "exposures.html", "provenance.html", "manifest.html", "navigation.html"} <= templates


@pytest.mark.browser
def test_report_of_every_built_type_as_a_reviewer_sees_it(report_repo, campaign_report, chromium, tmp_path):
    """Issue 16, in a real browser at a laptop's 1280 px, on a report over every type a DMTN-222
    campaign builds (bias, flat, PTC, linearizer, crosstalk, CTI): every image loads, no page
    scrolls sideways (index and each per-amp Results page), focal-plane mosaics take at least
    45 % of the page's width, every float column carries its unit, every test says when it
    passes, failing items come first and every failure links to a page, an anchor and the plot
    under it.  Screenshots go to $CPFRAME_SCREENSHOTS when set (for a person to look at)."""
    from astropy.table import Table

    from cpframe.report.values import COLUMN_UNITS

    out = campaign_report.output_dir
    assert set(campaign_report.verdicts) == {"bias", "flat", "ptc", "linearizer", "crosstalk", "cti", "bfk",
                                             "gain_correction"}
    det, amp = FAILING_CROSSTALK
    assert campaign_report.failures["crosstalk"] == [f"{mini_comcam_name(report_repo, det)} {amp} NO_SIGNIFICANT_DETECTION"]
    results = look_at_report(chromium, out, tmp_path, min_images=12, shoot=("index", "Bias"))
    assert len(results) == 8  # screenshots: the index and the widest per-amp table (bias: 28 columns)
    index = (out / "index.html").read_text()
    # failing items first: the two failing types lead both tables
    verdicts, tests = verdict_order(out / "index.html")
    assert [v for v in verdicts[:2]] == [("fail", "flat"), ("fail", "crosstalk")] and all(c == "pass" for c, _ in verdicts[2:])
    assert [c for c, _, _ in tests[:2]] == ["fail", "fail"] and "fail" not in [c for c, _, _ in tests[2:]]
    assert all(cond.strip() for _, _, cond in tests), [t for _, t, cond in tests if not cond.strip()]
    # every failure links to a page, an anchor there, and a plot under that anchor
    assert {p for p, _ in failure_links(out)} == {"flat_exp.html", "crosstalk_det.html"}
    # units: every measured float column of every Results table has one, shown under its name
    for key, type_name in {**CALTYPES, "bias": "Bias", "flat": "Flat", "ptc": "Ptc"}.items():
        ref = report_repo.registry.find_dataset(f"verify{type_name}Results", {"instrument": INSTRUMENT},
                                                campaign_collections_of(key))
        table = Table.read(report_repo.get_path(ref), format="ascii.ecsv")
        stage = STAGE_OF.get(key, type_name.upper())  # GAIN_CORRECTION has a '_' of its own
        floats = [c[len(stage) + 1:] for c in table.colnames if c.startswith(stage + "_") and "_VERIFY_" not in c
                  and table[c].dtype.kind == "f" and len(table[c].shape) == 1]
        assert floats and not [c for c in floats if c not in COLUMN_UNITS[stage]], (stage, floats)
    # conditions and cpframe's differences next to the results; flat's per-amp page: failing rows
    # first, short column names
    assert "|NOISE/E - 1| &lt;= 10 %" in index and "two-sided" in index
    assert index.index('<h2 id="flat">') < index.index('<h2 id="bias">')
    rtext = next(p for p in results if "Flat" in p.name).read_text()
    assert rtext.index('<tr class="fail">') < rtext.index("<tr><td")
    assert '<th title="FLAT_VERIFY_NOISE">VERIFY_<wbr>NOISE</th>' in rtext
    lin = next(p for p in results if "Linearity" in p.name).read_text()
    assert '<span class="unit">adu</span>' in lin and '<span class="unit">%</span>' in lin
    assert '<span class="unit">per transfer</span>' in next(p for p in results if "Cti" in p.name).read_text()


def mini_comcam_name(repo, detector: int) -> str:
    from cpframe.camera.models import load_camera

    return load_camera(INSTRUMENT, "mini").detector(detector).name


def campaign_collections_of(key: str) -> list:
    if key in CALTYPES:
        return [f"{P}/verify{CALTYPES[key]}.20241127a"]
    return {"bias": [VERIFY_BIAS], "flat": [VERIFY_FLAT], "ptc": [VERIFY_PTC]}[key]


def test_gain_correction_section_has_its_amp_map(campaign_report):
    """The gain-correction section: verdict from its verification, one figure per detector (the amp map of the
    adjustments and the flat ratio before / after), the Results table with its units."""
    out = campaign_report.output_dir
    assert campaign_report.verdicts["gain_correction"] is True
    index = (out / "index.html").read_text()
    sec = index[index.index('<h2 id="gain_correction">'):]
    sec = sec[:sec.find("<h2", 1)] if "<h2" in sec[1:] else sec
    imgs = re.findall(r'<img src="([^"]+)"', sec)
    assert len(imgs) == len(DETECTORS) and all((out / i).is_file() and (out / i).stat().st_size > 5000 for i in imgs)
    assert "the steps it removes" in sec
    page = next(out.glob("src/*/verifyGainCorrectionResults_*.html")).read_text()
    assert '<span class="unit">x PTC gain</span>' in page


def test_residual_preview_is_the_block_mean_of_the_unmasked_pixels(tmp_path):
    """verify<Type>Preview (cpframe.verify.preview): the residual block-averaged over the pixels not
    masked BAD/DETECTED/NO_DATA (other bits count), NaN + NO_DATA where a block has none, the
    variance of the block mean, and the residual's shape in the header; checked against numpy."""
    from cpframe.science.imageio import mask_value, read_masked
    from cpframe.verify.preview import preview_shape, write_preview

    rng = np.random.default_rng(5)
    rows, cols = 500, 512  # a mini detector: factor 2, a 250 x 256 preview
    image = rng.normal(10.0, 3.0, (rows, cols)).astype(np.float32)
    variance = rng.uniform(1.0, 2.0, (rows, cols)).astype(np.float32)
    mask = np.zeros((rows, cols), np.int32)
    mask[10:20, 30:35] = mask_value("BAD")
    mask[100:102, 200:202] = mask_value("DETECTED")  # one whole 2x2 block: no good pixel
    mask[300, 300] = mask_value("SAT")  # counts
    src = write_masked(tmp_path / "res.fits", image, mask, variance, {"INSTRUME": "LSSTComCam", "DETECTOR": 4})
    out = read_masked(write_preview(src, tmp_path / "preview.fits"))
    good = (mask & mask_value(["BAD", "DETECTED", "NO_DATA"])) == 0
    blocks = lambda a: a.astype(float).reshape(rows // 2, 2, cols // 2, 2).sum(axis=(1, 3))  # noqa: E731
    n = blocks(good)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = blocks(np.where(good, image, 0)) / n
        want_var = blocks(np.where(good, variance, 0)) / n**2
    assert out.image.shape == (250, 256)
    np.testing.assert_allclose(out.image, want, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(out.variance, want_var, rtol=1e-6, equal_nan=True)
    assert np.isnan(out.image[50, 100]) and out.mask[50, 100] == mask_value("NO_DATA")
    assert ((out.mask != 0) == (n == 0)).all() and (n == 0).sum() == 11  # 10 BAD blocks + the DETECTED one
    assert preview_shape(out.header) == (rows, cols) and out.header["DETECTOR"] == 4
    assert preview_shape({"NAXIS1": 3}) is None
