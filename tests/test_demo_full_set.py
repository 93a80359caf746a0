"""End-to-end: `cpframe demo --full-set` builds, certifies, verifies and applies every calibration type.

One module fixture runs the full-set demo once (one mini detector, the r and i bands: the fringe needs the i
flat): every simulator effect
of cpframe/campaign/fullset.py on at once, real SQLite repository, LocalCluster, submit engine,
verification and report.  The tests check, per type, that the product exists, is certified in the
ticket chain and passes its verification, compare products with the simulator's truth, and check that
downstream products were built with the certified calibrations applied (from the provenance records).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from cpframe.campaign.fullset import FULL_SET, FullSetType, full_set_effects, full_set_plan, full_set_steps

pytestmark = [pytest.mark.slow]

DETECTOR = 4


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from cpframe.campaign.demo import run_demo
    from cpframe.core.config import load_settings
    from cpframe.execution.cluster import open_cluster

    d = tmp_path_factory.mktemp("fullset") / "demo"
    lines: list[str] = []
    oc = open_cluster(load_settings({"n_workers": 2, "cluster_kind": "local"}))
    try:
        res = run_demo(d, detectors=[DETECTOR], bands=["r", "i"], full_set=True, client=oc.client,
                       echo=lines.append)
    finally:
        oc.close()
    return res, lines


def _repo(res):
    from cpframe.repository.repo import Repository

    return Repository.open(res.repo_root)


def _product(name: str) -> str:
    """Dataset type of a summary name (``flat-r`` -> ``flat``)."""
    return re.sub(r"-[ugrizy]$", "", name)


def _registry_type(name: str) -> str:
    """Dataset type a summary name is certified as (``flat_single_led`` -> ``flat_<LED>``)."""
    led = next((t.led for t in FULL_SET if t.name == name and t.led), None)
    return f"flat_{led}" if led else _product(name)


def _certified(repo, res) -> dict:
    """Summary name (``flat-r``) -> the one dataset certified by the campaign (its CALIBRATION collection)."""
    out = {}
    for t in res.types:
        if not t.not_run:
            (ref,) = repo.registry.query_datasets(_registry_type(t.name), collections=[t.certified])
            out[t.name] = ref
    return out


#: Verification tests that fail in the full set, and why (docs/demo.md "Every calibration type"): the serial trap
#: of the `cti` effect (20-60 e- per amp) distorts the PTC's lowest pairs (80-400 e-), which fix its read-noise
#: intercept; with the certified CTI applied the PTC read noise still comes out 4-14 % high, and PTC_NOISE
#: (5 % or 3 fit errors) catches the amps where that is more than 3 fit errors.  A fix makes this set empty.
KNOWN_FAILURES = {"ptc": {"PTC_NOISE"}}


def test_every_type_is_built_certified_and_verified(full):
    res, lines = full
    assert any(line.startswith("simulator effects on: nonlinearity=True") for line in lines)
    want = {"defects", "ptc", "bias", "dark", "flat-r", "flat-i"} | {t.name for t in FULL_SET}
    assert {t.name for t in res.types} == want, res.summary()
    summary = res.summary()
    assert "Calibration types (full set):" in summary
    for t in res.types:
        if t.not_run:  # listed with its reason, printed at the start and in the summary; nothing of it built
            entry = next(e for e in FULL_SET if e.name == t.name)
            assert entry.not_run == t.not_run and t.built == 0 and t.line() in summary
            assert f"(--full-set: {t.name} not run: {t.not_run})" in lines
            continue
        assert t.built == 1, t.line()  # one detector
        assert t.certified.startswith("LSSTComCam/calib/DEMO-1/demo/"), t.line()
        if t.name in KNOWN_FAILURES and t.verdict is False:
            assert {f.rsplit(" ", 1)[1] for f in t.failures} <= KNOWN_FAILURES[t.name], t.line()
            assert f"  FAIL  {t.name}  (1 datasets certified in {t.certified}; verification FAILS" in summary
            continue
        assert t.verdict is True, t.line()
        assert f"  PASS  {t.name}  (1 datasets certified in {t.certified}; verified)" in summary
    # independently of the demo's own bookkeeping: each type is in the ticket chain, found from its CALIBRATION
    repo = _repo(res)
    try:
        chain = repo.registry.get_chain("LSSTComCam/calib/DEMO-1")
        for t in (t for t in res.types if not t.not_run):
            assert t.certified in chain, (t.name, chain)
            refs = repo.registry.query_datasets(_registry_type(t.name), collections=[t.certified])
            # per detector, except the focal-plane flat gradient reference (per physical_filter)
            where = {"physical_filter": "r_03"} if t.name.startswith("flat_gradient") else {"detector": DETECTOR}
            assert len(refs) == 1 and where.items() <= dict(refs[0].data_id).items(), refs
            assert repo.get_path(refs[0]).exists()
    finally:
        repo.close()
    # one report, a passing verdict row per type (read from the HTML, as a reviewer sees it)
    html = res.report_index.read_text()
    table = html[html.index('id="verdicts"'):]
    table = table[: table.index("</table>")]
    rows = {name: (tr, td) for tr, name, td in
            re.findall(r'<tr class="(\w+)"><td><a href="#(\w+)">\w+</a></td><td class="(\w*)">', table)}
    assert set(rows) == {_product(t.name) for t in res.types if not t.not_run} | {"science"}, rows
    for name, verdict in rows.items():
        ok = next((t.verdict for t in res.types if _product(t.name) == name), True)
        assert verdict == (("pass", "pass") if ok else ("fail", "fail")), (name, verdict)
        assert ok or name in KNOWN_FAILURES


def test_campaign_order_follows_the_dependencies(full):
    res, _ = full
    order = [s.name for s in res.campaign.campaign.steps]
    assert [o.name for o in res.campaign.outcomes] == order  # every step ran in that order
    assert all(o.status == "ran" for o in res.campaign.outcomes if o.name != "deploy"), res.campaign.summary()
    pos = {n: i for i, n in enumerate(order)}
    assert pos["certify-defects"] < pos["linearizer"] < pos["certify-linearizer"] < pos["ptc"]
    assert pos["certify-linearizer"] < pos["cti"]
    assert pos["certify-ptc"] < pos["crosstalk"] < pos["certify-crosstalk"] < pos["bias"]
    assert pos["certify-crosstalk"] < pos["bfk"] and pos["certify-cti"] < pos["bfk"]
    # the electrostatic matrix's own PTC runs the BFK's ISR: after the certified linearizer, CTI and crosstalk
    assert pos["certify-crosstalk"] < pos["electroBfDistortionMatrix"] and pos["certify-cti"] < pos["electroBfDistortionMatrix"]
    assert pos["certify-flat-r"] < pos["gain_correction"] and pos["certify-flat-r"] < pos["illuminationCorrection"]
    assert pos["certify-flat-r"] < pos["sky"] and pos["certify-flat-i"] < pos["fringe"]
    last_cert = max(i for n, i in pos.items() if n.startswith("certify-"))
    assert min(i for n, i in pos.items() if n.startswith("verify-")) > last_cert


def _record_inputs(repo, run, dataset_type) -> list[str]:
    """The ``inputs`` of ``dataset_type``'s output in the provenance record of ``run``."""
    from cpframe.execution.provenance import load_provenance

    rec = [r for r in load_provenance(repo.registry, run) if r["status"] == "complete"][-1]
    (out,) = [o for o in rec["outputs"] if o["dataset_type"] == dataset_type]
    return out["inputs"]


def test_downstream_products_apply_the_certified_calibrations(full):
    """The flat, dark, bias and BFK were built with the certified linearizer and crosstalk (and the BFK with
    the CTI), the PTC with the linearizer: the ids in their provenance are the certified datasets."""
    res, _ = full
    repo = _repo(res)
    try:
        certified = _certified(repo, res)
        uses = {"ptc": ("linearizer",), "bias": ("linearizer", "crosstalk"), "dark": ("linearizer", "crosstalk"),
                "flat-r": ("linearizer", "crosstalk"), "flat-i": ("linearizer", "crosstalk"),
                "bfk": ("linearizer", "cti", "crosstalk"), "electroBfDistortionMatrix": ("linearizer", "cti", "crosstalk"),
                "gain_correction": ("linearizer", "cti", "crosstalk", "flat-r"),
                "sky": ("linearizer", "crosstalk", "bias", "dark", "flat-r"),
                "fringe": ("bias", "dark", "flat-i")}
        for name, used in uses.items():
            inputs = _record_inputs(repo, certified[name].run, _product(name))
            for u in used:
                assert any(i.startswith(f"{_product(u)} ") and f" {certified[u].id} " in i for i in inputs), \
                    (name, u, inputs)
    finally:
        repo.close()


def test_products_match_the_injected_truth(full):
    """Numbers against the simulator's truth, independent of the verification code: the PTC gains (5 %, as the
    plain demo), the gain correction's adjustments (5e-4, tests/test_gain_correction.py), the CTI trap sizes
    (20 %, tests/test_cti.py) and the crosstalk matrix (max(2e-6, 2 %), tests/test_crosstalk.py, for every
    coefficient the solver kept)."""
    from astropy.table import Table

    from cpframe.camera.gain_drift import expected_adjustments
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import Truth
    from cpframe.science.crosstalk import read_crosstalk
    from cpframe.science.cti import read_cti
    from cpframe.science.gain_correction import read_gain_correction

    res, _ = full
    truth = Truth.load(res.directory / "raw" / "truth")
    eff = truth.effects
    assert all(eff[k] for k in ("nonlinearity", "crosstalk", "cti", "brighter_fatter", "gain_drift", "flat_gradient",
                                "illumination_correction"))
    det = load_camera("LSSTComCam", "mini").detector(DETECTOR)
    amps = [truth.amp(DETECTOR, a.name) for a in det.amps]
    repo = _repo(res)
    try:
        paths = {k: repo.get_path(ref) for k, ref in _certified(repo, res).items()}
    finally:
        repo.close()
    table = Table.read(paths["ptc"], hdu="PTC")
    gains = {str(row["amp"]).strip(): row["gain"] for row in table}
    np.testing.assert_allclose([gains[a.name] for a in det.amps], [t.gain for t in amps], rtol=0.05)
    gc = read_gain_correction(paths["gain_correction"])
    want = expected_adjustments([t.gain_drift for t in amps])
    got = np.array([gc.adjustments[a.name] for a in det.amps])
    assert np.std([t.gain_drift for t in amps]) > 0.002 and np.max(np.abs(got - want)) < 5e-4, got - want
    cti = read_cti(paths["cti"])
    trap = [cti.amps[a.name].trap_size / t.trap_size - 1 for a, t in zip(det.amps, amps)]
    assert max(abs(e) for e in trap) < 0.20, trap
    xt = read_crosstalk(paths["crosstalk"])
    true_xt = truth.detectors[DETECTOR].crosstalk
    off = ~np.eye(len(det.amps), dtype=bool)
    tol = np.maximum(2e-6, 0.02 * np.abs(true_xt))
    kept = off & (xt.coeffs != 0)
    bad = np.argwhere((np.abs(xt.coeffs - true_xt) > tol) & kept)
    assert not len(bad), [(t, s, true_xt[t, s], xt.coeffs[t, s]) for t, s in bad]
    # doFiltering (cp_pipe) sets a coefficient it cannot tell from 0 to 0: with every effect on, a few of the
    # smallest (here one of 240, 4.6e-6) are; none of the large ones may be
    assert kept.sum() >= off.sum() - 3 and np.all(np.abs(true_xt[off & ~kept]) < 1e-5), true_xt[off & ~kept]


def test_electrostatic_matrix_matches_the_injected_truth(full):
    """The electrostatic model fitted to the a matrix of its own FULLCOVARIANCE_NO_B PTC (lags < 4) against the
    simulator's a matrix: a00 and the nearest lags within 10 % of the truth (detector mean), the tolerance of
    tests/test_electrostatic_campaign.py, with every other effect of the full set on (and corrected)."""
    from cpframe.camera.bf import bf_a_matrix
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import Truth
    from cpframe.science.electrostatic import read_electrostatic

    res, _ = full
    truth = Truth.load(res.directory / "raw" / "truth")
    det = load_camera("LSSTComCam", "mini").detector(DETECTOR)
    repo = _repo(res)
    try:
        sol = read_electrostatic(repo.get_path(_certified(repo, res)["electroBfDistortionMatrix"]))
    finally:
        repo.close()
    t = bf_a_matrix(float(np.mean([truth.amp(DETECTOR, a.name).bf_a00 for a in det.amps])), 4)
    m = sol.a_matrix_model
    assert sol.fit_range == 4 and sol.meta["PTCFITTYPE"] == "FULLCOVARIANCE_NO_B"
    assert m[0, 0] == pytest.approx(t[0, 0], rel=0.10), (m[:2, :2], t[:2, :2])
    assert m[0, 1] == pytest.approx(t[0, 1], rel=0.10) and m[1, 0] == pytest.approx(t[1, 0], rel=0.10), \
        (m[:2, :2], t[:2, :2])


def _block_means(image, good, n=4):
    """Means of the good pixels in n x n px blocks (blocks with none left out)."""
    rows, cols = (image.shape[0] // n) * n, (image.shape[1] // n) * n
    s = np.where(good, image, 0.0)[:rows, :cols].reshape(rows // n, n, cols // n, n).sum(axis=(1, 3))
    c = good[:rows, :cols].reshape(rows // n, n, cols // n, n).sum(axis=(1, 3))
    return s[c > 0] / c[c > 0]


def _without_plane(image):
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    m = np.c_[np.ones(image.size), x.ravel(), y.ravel()]
    coef, *_ = np.linalg.lstsq(m, image.ravel(), rcond=None)
    return image - (m @ coef).reshape(image.shape)


def test_sky_and_fringe_match_the_injected_truth(full):
    """The sky and fringe frames against the simulator's truth, with every other effect of the full set on.

    What a frame holds is whatever static structure the sky shows after ISR, so with every effect on the truth is
    more than one effect's pattern: the flats carry the dome-only pattern of `illumination_correction` that the sky
    has not (ISR does not apply the illumination correction: IsrTaskLSST has no such step), so the flat-fielded sky
    shows ``c - 1`` (``c`` its truth correction) on top of the `sky_frame` pattern.  Sky (docs/sky.md): rms of the
    difference in 32 px bins < 5 % of the pattern's, compared without their best-fit planes (one detector: each
    exposure's focal-plane background plane, fitted to it alone, takes the detector's planar part).  Fringe
    (docs/fringe.md): k = strength x mean exposure scale within 5 %; residual 4 x 4 px block means of the good
    pixels (defects are BAD) against k x pattern plus that static structure as the fringe's own 128 px background
    leaves it < 10 % of k."""
    from cpframe.camera import fringe as cfr
    from cpframe.camera import illumination as cil
    from cpframe.camera import sky as csky
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import Truth
    from cpframe.science.fringe import smooth_background
    from cpframe.science.imageio import read_masked
    from cpframe.science.sky import _block_stat

    res, _ = full
    truth = Truth.load(res.directory / "raw" / "truth")
    shape = load_camera("LSSTComCam", "mini").detector(DETECTOR).shape
    repo = _repo(res)
    try:
        refs = _certified(repo, res)
        sky, fringe = (read_masked(repo.get_path(refs[k])) for k in ("sky", "fringe"))
        assert refs["sky"].data_id["physical_filter"] == "r_03" and refs["fringe"].data_id["physical_filter"] == "i_06"
    finally:
        repo.close()
    everywhere = np.ones(shape, bool)
    pattern = csky.sky_frame_truth(truth.seed, DETECTOR, shape, float(truth.effects["sky_frame"]))
    static = pattern + cil.illumination_correction_truth(truth.seed, DETECTOR, shape,
                                                         float(truth.effects["illumination_correction"])) - 1.0
    want = _block_stat(static, everywhere, 32, 32, 99.0, 1)
    assert sky.image.shape == want.shape
    rms = float(np.sqrt(np.mean((_without_plane(sky.image.astype(np.float64)) - _without_plane(want)) ** 2)))
    scale = float(_block_stat(pattern, everywhere, 32, 32, 99.0, 1).std())
    assert rms < 0.05 * scale, (rms, scale)

    good = fringe.mask == 0
    img = fringe.image.astype(np.float64)
    f = cfr.fringe_pattern(truth.seed, DETECTOR, "i", shape)
    k = float(f[good] @ img[good] / (f[good] @ f[good]))
    (block,) = [b for t in FULL_SET if t.product == "fringe" for b in t.blocks]
    mean_a = np.mean([cfr.fringe_scale(truth.seed, block["day_obs"], block["seq_start"] + i)
                      for i in range(block["count"])])
    assert k == pytest.approx(float(truth.effects["fringe"]) * mean_a, rel=0.05)
    left = static - smooth_background(static, everywhere, 128)
    resid = float(np.std(_block_means(img - k * f - left, good)))
    assert resid < 0.10 * k, (resid, k)


def test_a_type_whose_flat_band_is_left_out_is_left_out(tmp_path):
    """--full-set --bands r: the fringe (i flat) is not in the campaign, the sky (r flat) is; the demo names why."""
    from cpframe.campaign.demo import _demo_specs, _full_set_plan, _needs_flat_of, demo_campaign
    from cpframe.campaign.fullset import full_set_flat_needs

    assert full_set_flat_needs()["fringe"] == {"i"} and full_set_flat_needs()["certify-sky"] == {"r"}
    plan = _full_set_plan(tmp_path)
    _, selections, _, _ = _demo_specs(plan, ["r"], None)
    needs = {**_needs_flat_of(plan), **full_set_flat_needs()}
    camp = demo_campaign(tmp_path / "repo", ["r"], selections, [DETECTOR], needs, full_set_steps())
    names = {s.name for s in camp.steps}
    assert {"sky", "certify-sky", "verify-sky", "illuminationCorrection"} <= names
    assert not names & {"fringe", "certify-fringe", "verify-fringe"}, names
    # the full set is its own campaign (own state and construction record); the plain demo's keeps its name
    assert camp.name == "demo-full-set"
    assert demo_campaign(tmp_path / "repo", ["r"], selections, [DETECTOR], needs).name == "demo"


# -- the table: a new type is one entry -----------------------------------------------------------


def test_a_type_that_cannot_run_is_listed_with_its_reason(full):
    from cpframe.campaign.demo import type_statuses

    res, _ = full
    blocked = FullSetType("flatAnaglyph", "bps_flatAnaglyph.yaml", "", "a flat",
                          effects={"prnu": 0.5}, not_run="the campaign does not build it yet")
    assert [s["name"] for s in full_set_steps((blocked,))] == [] and full_set_effects((blocked,)) == {}
    repo = _repo(res)
    try:
        rows = type_statuses(res.campaign.campaign, repo, res.verdicts, (*FULL_SET, blocked))
    finally:
        repo.close()
    assert [r.name for r in rows if r.not_run] == [t.name for t in FULL_SET if t.not_run] + [blocked.name]
    assert rows[-1].line() == "  --    flatAnaglyph  not run: the campaign does not build it yet"
    assert rows[:-1] == res.types


def test_a_new_type_is_one_entry(tmp_path):
    import yaml

    from cpframe.camera.plan import read_plan
    from cpframe.core.paths import package_dir

    extra = FullSetType("spectroFlat", "bps_spectroFlat.yaml", "bps_verify_spectroFlat.yaml", "a truth",
                        effects={"stars": 2e-5},
                        blocks=({"day_obs": 20241201, "observation_type": "science", "count": 3, "seq_start": 5,
                                 "physical_filter": "r_03", "exposure_time": 30, "flux": 100,
                                 "selections": ["SELECTION_SPECTRO"]},),
                        selections={"SELECTION_SPECTRO": "instrument='{instrument}' and exposure.day_obs=20241201"})
    types = (*FULL_SET, extra)
    steps = full_set_steps(types)
    assert [s["name"] for s in steps[-3:]] == ["spectroFlat", "certify-spectroFlat", "verify-spectroFlat"]
    assert steps[-3]["builds"] == steps[-2]["dataset_type"] == steps[-1]["verifies"] == "spectroFlat"
    assert full_set_effects(types)["stars"] == 2e-5
    base = yaml.safe_load((package_dir() / "data" / "plans" / "demo.yaml").read_text())
    plan = full_set_plan(base, types)
    night = [n for n in plan["nights"] if n["day_obs"] == 20241201]
    assert len(night) == 1 and night[0]["blocks"][0]["selections"] == ["SELECTION_SPECTRO"]
    assert "SELECTION_SPECTRO" in plan["selections"] and len(plan["nights"]) == len(base["nights"]) + 2  # + restart
    # the plan reads back as a valid observing plan
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan))
    assert read_plan(p).intended["SELECTION_SPECTRO"]


def test_single_led_flat_has_the_leds_colour(full):
    """The certified flat_<LED>: its colour (regression of flat / band flat on the pixels' colour c) is s t_led within
    3 % of s (tests/test_anaglyph_campaign.py's tolerance); verified by FLAT_SINGLE_LED on the LED's other flats."""
    from cpframe.camera.led_flats import field_radius_mm, led_params, pixel_colour
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import Truth
    from cpframe.science.imageio import read_masked

    res, _ = full
    (entry,) = [t for t in FULL_SET if t.product == "flat_single_led"]
    status = next(t for t in res.types if t.name == entry.name)
    assert status.verdict is True, status.line()
    truth = Truth.load(res.directory / "raw" / "truth")
    cam = load_camera("LSSTComCam", "mini")
    det = cam.detector(DETECTOR)
    repo = _repo(res)
    try:
        image = read_masked(repo.get_path(_certified(repo, res)[entry.name])).image
    finally:
        repo.close()
    s = float(truth.effects["led_flats"])
    base, colour = truth.flat(DETECTOR, "white"), pixel_colour(truth.seed, DETECTOR, det.shape)
    good = (base > 0.5 * np.median(base)) & np.isfinite(image)
    ratio, c = image[good] / base[good], colour[good]
    beta = float(np.cov(ratio, c)[0, 1] / np.var(c) / np.mean(ratio))
    want = s * led_params(truth.seed, entry.led, s, field_radius_mm(cam))["t"]
    assert abs(beta - want) < 0.03 * s, (beta, want)
