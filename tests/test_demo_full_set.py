"""End-to-end: `cpframe demo --full-set` builds, certifies, verifies and applies every calibration type.

One module fixture runs the full-set demo once (one mini detector, the r band): every simulator effect
of cpframe/campaign/fullset.py on at once, real SQLite repository, LocalCluster, submit engine,
verification and report.  The tests check, per type, that the product exists, is certified in the
ticket chain and passes its verification, compare products with the simulator's truth, and check that
downstream products were built with the certified calibrations applied (from the provenance records).
"""

from __future__ import annotations

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
        res = run_demo(d, detectors=[DETECTOR], bands=["r"], full_set=True, client=oc.client, echo=lines.append)
    finally:
        oc.close()
    return res, lines


def _repo(res):
    from cpframe.repository.repo import Repository

    return Repository.open(res.repo_root)


def _product(name: str) -> str:
    """Dataset type of a summary name (``flat-r`` -> ``flat``)."""
    return name.removesuffix("-r")


def _certified(repo, res) -> dict:
    """Product -> the one dataset certified by the campaign (its CALIBRATION collection)."""
    out = {}
    for t in res.types:
        (ref,) = repo.registry.query_datasets(_product(t.name), collections=[t.certified])
        out[_product(t.name)] = ref
    return out


def test_every_type_is_built_certified_and_verified(full):
    res, lines = full
    assert any(line.startswith("simulator effects on: nonlinearity=True") for line in lines)
    want = {"defects", "ptc", "bias", "dark", "flat-r"} | {t.name for t in FULL_SET}
    assert {t.name for t in res.types} == want, res.summary()
    for t in res.types:
        assert not t.not_run, t.line()
        assert t.built == 1, t.line()  # one detector
        assert t.certified.startswith("LSSTComCam/calib/DEMO-1/demo/"), t.line()
        assert t.verdict is True, t.line()
    assert res.passed, res.summary()
    summary = res.summary()
    assert "Calibration types (full set):" in summary and "RESULT: all products pass verification" in summary
    for t in res.types:
        assert f"  PASS  {t.name}  (1 datasets certified in {t.certified}; verified)" in summary
    # independently of the demo's own bookkeeping: each type is in the ticket chain, found from its CALIBRATION
    repo = _repo(res)
    try:
        chain = repo.registry.get_chain("LSSTComCam/calib/DEMO-1")
        for t in res.types:
            assert t.certified in chain, (t.name, chain)
            refs = repo.registry.query_datasets(_product(t.name), collections=[t.certified])
            assert len(refs) == 1 and refs[0].data_id["detector"] == DETECTOR
            assert repo.get_path(refs[0]).exists()
    finally:
        repo.close()
    # the report has a verdict row per verified type
    html = res.report_index.read_text()
    for name in ("bias", "dark", "flat", "defects", "ptc", "linearizer", "cti", "crosstalk", "bfk"):
        assert f'href="#{name}"' in html, name


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
    assert pos["certify-flat-r"] < pos["gain_correction"] and pos["certify-flat-r"] < pos["illuminationCorrection"]
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
                "flat": ("linearizer", "crosstalk"), "bfk": ("linearizer", "cti", "crosstalk"),
                "gain_correction": ("linearizer", "cti", "crosstalk", "flat")}
        for product, used in uses.items():
            inputs = _record_inputs(repo, certified[product].run, product)
            for u in used:
                assert any(i.startswith(f"{u} ") and f" {certified[u].id} " in i for i in inputs), (product, u, inputs)
    finally:
        repo.close()


def test_products_match_the_injected_truth(full):
    """Numbers against the simulator's truth, independent of the verification code: the PTC gains, the
    crosstalk matrix and the CTI (the tolerances of the types' own tests)."""
    from astropy.table import Table

    from cpframe.camera.simulate import Truth
    from cpframe.science.crosstalk import read_crosstalk

    res, _ = full
    truth = Truth.load(res.directory / "raw" / "truth")
    assert truth.effects["nonlinearity"] and truth.effects["crosstalk"] and truth.effects["cti"]
    assert truth.effects["brighter_fatter"] and truth.effects["gain_drift"] and truth.effects["flat_gradient"]
    amps = truth.detectors[DETECTOR].amps
    repo = _repo(res)
    try:
        paths = {k: repo.get_path(ref) for k, ref in _certified(repo, res).items()}
        table = Table.read(paths["ptc"], hdu="PTC")
        gains = np.array([row["gain"] for row in table])
        want = np.array([amps[str(row["amp"]).strip()].gain for row in table])
        np.testing.assert_allclose(gains, want, rtol=0.05)
        xt = read_crosstalk(paths["crosstalk"])
        true_xt = truth.detectors[DETECTOR].crosstalk
        off = ~np.eye(len(true_xt), dtype=bool)
        err = np.abs(xt.coeffs - true_xt)[off]
        tol = np.maximum(2e-6, 0.02 * np.abs(true_xt[off]))
        assert np.mean(err <= tol) >= 0.9, (np.max(err - tol))
    finally:
        repo.close()


# -- the table: a new type is one entry -----------------------------------------------------------


def test_a_type_that_cannot_run_is_listed_with_its_reason(full):
    from cpframe.campaign.demo import type_statuses

    res, _ = full
    blocked = FullSetType("fringe", "bps_fringe.yaml", "bps_verify_fringe.yaml", "fringe truth",
                          effects={"prnu": 0.5}, not_run="needs y-band science frames the mini demo does not take")
    assert [s["name"] for s in full_set_steps((blocked,))] == [] and full_set_effects((blocked,)) == {}
    repo = _repo(res)
    try:
        rows = type_statuses(res.campaign.campaign, repo, res.verdicts, (*FULL_SET, blocked))
    finally:
        repo.close()
    assert [r.name for r in rows if r.not_run] == ["fringe"]
    assert rows[-1].line() == "  --    fringe  not run: needs y-band science frames the mini demo does not take"
    assert rows[:-1] == res.types


def test_a_new_type_is_one_entry(tmp_path):
    import yaml

    from cpframe.camera.plan import read_plan
    from cpframe.core.paths import package_dir

    extra = FullSetType("sky", "bps_sky.yaml", "bps_verify_sky.yaml", "sky truth", effects={"stars": 2e-5},
                        blocks=({"day_obs": 20241201, "observation_type": "science", "count": 3, "seq_start": 5,
                                 "physical_filter": "r_03", "exposure_time": 30, "flux": 100,
                                 "selections": ["SELECTION_SKY"]},),
                        selections={"SELECTION_SKY": "instrument='{instrument}' and exposure.day_obs=20241201"})
    types = (*FULL_SET, extra)
    steps = full_set_steps(types)
    assert [s["name"] for s in steps[-3:]] == ["sky", "certify-sky", "verify-sky"]
    assert steps[-3]["builds"] == "sky" and steps[-2]["dataset_type"] == "sky" and steps[-1]["verifies"] == "sky"
    assert full_set_effects(types)["stars"] == 2e-5
    base = yaml.safe_load((package_dir() / "data" / "plans" / "demo.yaml").read_text())
    plan = full_set_plan(base, types)
    night = [n for n in plan["nights"] if n["day_obs"] == 20241201]
    assert len(night) == 1 and night[0]["blocks"][0]["selections"] == ["SELECTION_SKY"]
    assert "SELECTION_SKY" in plan["selections"] and len(plan["nights"]) == len(base["nights"]) + 2  # + restart
    # the plan reads back as a valid observing plan
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan))
    assert read_plan(p).intended["SELECTION_SKY"]
