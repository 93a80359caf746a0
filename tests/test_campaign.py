"""Tests of cpframe.campaign.runner and `cpframe campaign` / `cpframe deploy`.

Validation, ordering and the plan text run on campaign files written here (fast, no
repository).  Running, resuming, the construction record and deployment run on a real
SQLite repository with the real submit engine (see the second half).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cpframe.campaign.model import PRODUCT_NEEDS
from cpframe.campaign.spec import _infer_from_template, load_campaign, parse_campaign, parse_var_options
from cpframe.cli import main
from cpframe.core.errors import CampaignError

BASE_VARS = {
    "USER_CALIB_PREFIX": "u/tester/",
    "INSTRUMENT": "LSSTComCam",
    "TICKET": "DM-1",
    "REPO": "REPO_PLACEHOLDER",
    "RAW_COLLECTION": "LSSTComCam/raw/all",
    "CALIB_COLLECTIONS": "LSSTComCam/calib/DM-1/curated",
    "TAG": "test",
    "RERUN": "20250101a",
    "BOOTSTRAP_RUN_NUMBER": "1",
    "CERT_RERUN": "20250102a",
    "VERIFY_RERUN": "20250103a",
    "START_DATE": "1970-01-01T00:00:00",
    "SELECTION_BIAS_BOOTSTRAP": "instrument='LSSTComCam' and exposure.observation_type='bias'",
    "SELECTION_DARK_BOOTSTRAP": "instrument='LSSTComCam' and exposure.observation_type='dark'",
    "SELECTION_FLAT_BOOTSTRAP": "instrument='LSSTComCam' and exposure.observation_type='flat'",
    "SELECTION_PTC": "instrument='LSSTComCam' and exposure.observation_type='flat'",
    "SELECTION_BIAS": "instrument='LSSTComCam' and exposure.observation_type='bias'",
    "SELECTION_DARK": "instrument='LSSTComCam' and exposure.observation_type='dark'",
    "SELECTION_FLAT_g": "instrument='LSSTComCam' and exposure.observation_type='flat'",
    "SELECTION_FLAT_r": "instrument='LSSTComCam' and exposure.observation_type='flat'",
    "SELECTION_BIAS_V": "${SELECTION_BIAS}",
    "SELECTION_DARK_V": "${SELECTION_DARK}",
    "SELECTION_FLAT_g_V": "${SELECTION_FLAT_g}",
}

#: The full product sequence, in a deliberately scrambled file order.
SCRAMBLED_STEPS = [
    {"name": "report", "kind": "report"},
    {"name": "verify-bias", "kind": "submit", "template": "bps_verify_bias.yaml"},
    {"name": "certify-flat-g", "kind": "certify", "dataset_type": "flat", "band": "g"},
    {"name": "flat-g", "kind": "submit", "template": "bps_flat_g.yaml"},
    {"name": "certify-dark", "kind": "certify", "dataset_type": "dark"},
    {"name": "dark", "kind": "submit", "template": "bps_dark.yaml"},
    {"name": "certify-bias", "kind": "certify", "dataset_type": "bias"},
    {"name": "bias", "kind": "submit", "template": "bps_bias.yaml"},
    {"name": "certify-ptc", "kind": "certify", "dataset_type": "ptc"},
    {"name": "ptc", "kind": "submit", "template": "bps_ptc.yaml"},
    {"name": "certify-defects", "kind": "certify", "dataset_type": "defects"},
    {"name": "defects", "kind": "submit", "template": "bps_defects.yaml"},
    {"name": "flatBootstrap", "kind": "submit", "template": "bps_flatBootstrap.yaml"},
    {"name": "darkBootstrap", "kind": "submit", "template": "bps_darkBootstrap.yaml"},
    {"name": "biasBootstrap", "kind": "submit", "template": "bps_biasBootstrap.yaml"},
    {"name": "deploy", "kind": "deploy"},
]

TEMPLATE_NAMES = [
    "bps_biasBootstrap.yaml",
    "bps_darkBootstrap.yaml",
    "bps_flatBootstrap.yaml",
    "bps_defects.yaml",
    "bps_ptc.yaml",
    "bps_bias.yaml",
    "bps_dark.yaml",
    "bps_flat_g.yaml",
    "bps_flat_r.yaml",
    "bps_verify_bias.yaml",
    "bps_verify_dark.yaml",
    "bps_verify_flat_g.yaml",
    "bps_linearizer.yaml",
    "bps_cti.yaml",
    "bps_crosstalk.yaml",
    "bps_verify_linearizer.yaml",
]


def write_campaign(tmp_path: Path, steps, variables=None, drop=(), name="c.yaml") -> Path:
    """A campaign file in tmp_path with placeholder templates next to it."""
    tdir = tmp_path / "templates"
    tdir.mkdir(exist_ok=True)
    for t in TEMPLATE_NAMES:
        (tdir / t).write_text("pipelineYaml: x.yaml\n")
    v = dict(BASE_VARS)
    v["REPO"] = str(tmp_path / "repo")
    v.update(variables or {})
    for d in drop:
        v.pop(d, None)
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"name": "test-campaign", "variables": v, "steps": steps}, sort_keys=False))
    return p


# -- validation -------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path):
    steps = [
        {"name": "bias", "kind": "submitt", "template": "bps_bias.yaml"},
        {"name": "dark", "kind": "submit", "template": "bps_dark.yaml", "colour": "red"},
    ]
    p = write_campaign(tmp_path, steps, variables={"RERUN": "2025-01-01"}, drop=["TICKET"])
    with pytest.raises(CampaignError) as info:
        load_campaign(p)
    msg = str(info.value)
    assert "steps[0].kind: 'submitt' is not allowed; use one of submit, certify, report, deploy" in msg
    assert "missing variable(s) TICKET" in msg and "--var NAME=VALUE" in msg
    assert "RERUN='2025-01-01' is not a rerun" in msg and "20250207a" in msg
    assert "steps[1].colour: unknown key; allowed keys: band, builds, doc, kind, name, needs, template, vars, verifies" in msg
    assert "4 problem(s)" in msg


def test_missing_selection_variable_names_the_variable(tmp_path):
    steps = [{"name": "flat-r", "kind": "submit", "template": "bps_flat_r.yaml"}]
    p = write_campaign(tmp_path, steps, drop=["SELECTION_FLAT_r"])
    with pytest.raises(
        CampaignError, match=r"missing variable SELECTION_FLAT_r \(the selection this flat step reads\)"
    ):
        load_campaign(p)


def test_undefined_reference_in_a_step(tmp_path):
    steps = [{"name": "certify-bias", "kind": "certify", "dataset_type": "bias", "begin_date": "${BEGIN}"}]
    p = write_campaign(tmp_path, steps)
    with pytest.raises(CampaignError, match=r"step 'certify-bias': missing variable\(s\) BEGIN"):
        load_campaign(p)


def test_dependency_cycle_is_shown_with_its_reasons(tmp_path):
    # bias declared to need dark, but dark needs bias (dependencies.md §7)
    steps = [
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml", "needs": ["dark"]},
        {"name": "dark", "kind": "submit", "template": "bps_dark.yaml"},
    ]
    p = write_campaign(tmp_path, steps)
    with pytest.raises(
        CampaignError,
        match=r"dependency cycle: .*bias -> dark \(dark needs bias\).*"
        r"dark -> bias \(declared in needs\)",
    ):
        load_campaign(p)


def test_unknown_needs_and_duplicate_names(tmp_path):
    steps = [
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml", "needs": ["nosuch"]},
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml"},
    ]
    p = write_campaign(tmp_path, steps)
    with pytest.raises(CampaignError, match="used twice"):
        load_campaign(p)
    steps = [{"name": "bias", "kind": "submit", "template": "bps_bias.yaml", "needs": ["nosuch"]}]
    with pytest.raises(CampaignError, match="needs 'nosuch', which is not a step"):
        load_campaign(write_campaign(tmp_path, steps))


@pytest.mark.parametrize(
    "output,why",
    [
        ("${TAG_PREFIX}/biasGen.${RERUN}", "names a generation"),
        ("${TICKET_CHAIN}", "is the ticket chain"),
        ("${TAG_PREFIX}/verifyBias.${VERIFY_RERUN}", "names a verification collection"),
        ("${TAG_PREFIX}/dark.${CERT_RERUN}", "does not end with bias.<CERT_RERUN>"),
        ("${TAG_PREFIX}/biasGen.${RERUN}/run1", "names a generation"),
    ],
)
def test_certify_into_a_non_calibration_collection_name(tmp_path, output, why):
    steps = [{"name": "certify-bias", "kind": "certify", "dataset_type": "bias", "output": output}]
    p = write_campaign(tmp_path, steps)
    with pytest.raises(CampaignError, match="not a CALIBRATION collection name") as info:
        load_campaign(p)
    assert why in str(info.value)
    assert "u/tester/LSSTComCam/calib/DM-1/test/bias.20250102a" in str(info.value)  # the example to follow


def test_certify_of_bootstrap_and_bad_dates(tmp_path):
    steps = [
        {"name": "c1", "kind": "certify", "dataset_type": "biasBootstrap"},
        {"name": "c2", "kind": "certify", "dataset_type": "bias", "begin_date": "2024-11-10T00:00:00Z"},
        {"name": "c3", "kind": "certify", "dataset_type": "flat"},
    ]
    with pytest.raises(CampaignError) as info:
        load_campaign(write_campaign(tmp_path, steps))
    msg = str(info.value)
    assert "bootstrap products are read from their RUNs" in msg
    assert "time-zone suffix claims UTC" in msg
    assert "certifying flats needs 'band'" in msg


def test_variable_value_checks(tmp_path):
    steps = [{"name": "bias", "kind": "submit", "template": "bps_bias.yaml"}]
    p = write_campaign(
        tmp_path,
        steps,
        variables={
            "USER_CALIB_PREFIX": "u/tester",
            "INSTRUMENT": "HSC",
            "START_DATE": "yesterday",
            "RAW_COLLECTION": "raw,all",
            "TICKET_CHAIN": "x",
        },
    )
    with pytest.raises(CampaignError) as info:
        load_campaign(p)
    msg = str(info.value)
    assert "USER_CALIB_PREFIX='u/tester' must end with '/'" in msg
    assert "INSTRUMENT='HSC' is not a camera cpframe knows" in msg
    assert "START_DATE 'yesterday'" in msg
    assert "RAW_COLLECTION" in msg and "contains ','" in msg
    assert "TICKET_CHAIN is computed by cpframe" in msg


def test_missing_template_and_missing_file(tmp_path):
    steps = [{"name": "bias", "kind": "submit", "template": "bps_nosuch.yaml", "builds": "bias"}]
    with pytest.raises(CampaignError, match="template 'bps_nosuch.yaml' not found"):
        load_campaign(write_campaign(tmp_path, steps))
    with pytest.raises(CampaignError, match="does not exist. Start from templates/campaign_demo.yaml"):
        load_campaign(tmp_path / "nope.yaml")
    with pytest.raises(CampaignError, match="not valid YAML"):
        parse_campaign("steps: [", tmp_path / "bad.yaml")


def test_var_options():
    assert parse_var_options(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(CampaignError, match=r"--var expects NAME=VALUE; got 'RERUN'"):
        parse_var_options(["RERUN"])


def test_template_name_inference():
    assert _infer_from_template("bps_biasBootstrap.yaml") == ("biasBootstrap", None, None)
    assert _infer_from_template("x/bps_flat_y.yaml") == ("flat", None, "y")
    assert _infer_from_template("bps_verify_flat_g.yaml") == (None, "flat", "g")
    assert _infer_from_template("mine.yaml") == (None, None, None)


# -- ordering ---------------------------------------------------------------------------------


def test_order_follows_the_calibration_dependencies(tmp_path):
    camp = load_campaign(write_campaign(tmp_path, SCRAMBLED_STEPS))
    order = [s.name for s in camp.steps]
    # independent statement of dependencies.md §6/§7 + DMTN-222: bootstraps -> defects -> ptc -> bias
    # -> dark -> flats, each certified before the next build; verification after every
    # certification; report last; deploy after everything.
    expected = [
        "biasBootstrap",
        "darkBootstrap",
        "flatBootstrap",
        "defects",
        "certify-defects",
        "ptc",
        "certify-ptc",
        "bias",
        "certify-bias",
        "dark",
        "certify-dark",
        "flat-g",
        "certify-flat-g",
        "verify-bias",
        "report",
        "deploy",
    ]
    assert order == expected
    pos = {n: i for i, n in enumerate(order)}
    builds = {s.builds: s.name for s in camp.steps if s.kind == "submit" and s.builds}
    for product, needs in PRODUCT_NEEDS.items():
        if product not in builds:  # a type this campaign does not build (linearizer, cti, crosstalk)
            continue
        for need in needs:
            assert pos[builds[need]] < pos[builds[product]]
            cert = f"certify-{need}"
            if cert in pos:
                assert pos[cert] < pos[builds[product]]


def test_file_order_is_kept_when_dependencies_allow(tmp_path):
    steps = [
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml"},
        {"name": "flat-r", "kind": "submit", "template": "bps_flat_r.yaml"},
        {"name": "flat-g", "kind": "submit", "template": "bps_flat_g.yaml"},
        {"name": "certify-flat-g", "kind": "certify", "dataset_type": "flat", "band": "g"},
        {"name": "certify-flat-r", "kind": "certify", "dataset_type": "flat", "band": "r"},
    ]
    camp = load_campaign(write_campaign(tmp_path, steps))
    assert [s.name for s in camp.steps] == ["bias", "flat-r", "flat-g", "certify-flat-g", "certify-flat-r"]
    # the certify step reads the generation chain of the step that builds its band
    assert camp.step("certify-flat-g").input == "u/tester/LSSTComCam/calib/DM-1/test/flatGen-g.20250101a"
    assert camp.step("certify-flat-r").output == "u/tester/LSSTComCam/calib/DM-1/test/flat-r.20250102a"


def test_first_chaining_step_redefines_later_ones_prepend(tmp_path):
    camp = load_campaign(write_campaign(tmp_path, SCRAMBLED_STEPS))
    certs = [s for s in camp.steps if s.kind == "certify"]
    modes = [camp.chain_mode(s) for s in certs]
    assert certs[0].name == "certify-defects"
    assert modes == ["redefine"] + ["prepend"] * (len(certs) - 1)
    assert all(s.chain == "u/tester/LSSTComCam/calib/DM-1" for s in certs)


def test_var_overrides_change_the_names(tmp_path):
    camp = load_campaign(
        write_campaign(tmp_path, SCRAMBLED_STEPS), {"CERT_RERUN": "20250301c", "TAG": "other"}
    )
    assert camp.step("certify-bias").output == "u/tester/LSSTComCam/calib/DM-1/other/bias.20250301c"
    assert camp.variables["TAG_PREFIX"] == "u/tester/LSSTComCam/calib/DM-1/other"
    # variables referring to variables are expanded
    assert camp.variables["SELECTION_BIAS_V"] == BASE_VARS["SELECTION_BIAS"]


# -- the plan -----------------------------------------------------------------------------------


def test_dry_run_plan_text(tmp_path):
    p = write_campaign(tmp_path, SCRAMBLED_STEPS)
    res = CliRunner().invoke(main, ["campaign", str(p), "--dry-run", "--var", "RERUN=20250101b"])
    assert res.exit_code == 0, res.output
    out = res.output
    lines = [ln for ln in out.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    assert len(lines) == len(SCRAMBLED_STEPS)
    names = [ln.split()[2] for ln in lines]
    assert names[:3] == ["biasBootstrap", "darkBootstrap", "flatBootstrap"] and names[-2:] == [
        "report",
        "deploy",
    ]
    assert "biasBootstrapGen.20250101b/run1" in out  # --var applied; fixed bootstrap RUN shown
    assert (
        "defects from u/tester/LSSTComCam/calib/DM-1/test/defectGen.20250101b into "
        "u/tester/LSSTComCam/calib/DM-1/test/defects.20250102a [1970-01-01T00:00:00, +inf); "
        "redefine u/tester/LSSTComCam/calib/DM-1"
    ) in out
    assert "prepend u/tester/LSSTComCam/calib/DM-1" in out
    assert "only with --deploy" in out
    assert "Order derived from the calibration dependencies" in out
    assert "certify-defects after defects (certifies what defects builds)" in out
    assert "does not exist yet: every step is pending" in out
    assert "Dry run: nothing was run" in out
    assert not (tmp_path / "repo").exists()  # a dry run writes nothing


def test_campaign_cli_errors_are_clean(tmp_path):
    p = write_campaign(tmp_path, [{"name": "x", "kind": "nope"}])
    res = CliRunner().invoke(main, ["campaign", str(p), "--dry-run"])
    assert res.exit_code == 4
    assert "steps[0].kind: 'nope' is not allowed" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        main, ["campaign", str(write_campaign(tmp_path, SCRAMBLED_STEPS)), "--until", "nosuch"]
    )
    assert res.exit_code == 4 and "no step named 'nosuch'" in res.output
    res = CliRunner().invoke(main, ["campaign", str(write_campaign(tmp_path, SCRAMBLED_STEPS))])
    assert res.exit_code == 4 and "does not exist. Create it" in res.output


def test_dp1_example_mirrors_dmtn222_and_renders_every_template():
    from cpframe.campaign.runner import _submit_variables
    from cpframe.execution.templates import render

    root = Path(__file__).resolve().parents[1]
    camp = load_campaign(root / "templates" / "campaign_dp1_example.yaml")
    v = camp.variables
    assert (v["INSTRUMENT"], v["TICKET"], v["TAG"], v["RERUN"], v["START_DATE"]) == (
        "LSSTComCam",
        "DM-48520",
        "DP1",
        "20250207a",
        "1970-01-01T00:00:00",
    )
    order = [s.name for s in camp.steps]
    assert order[:5] == ["biasBootstrap", "darkBootstrap", "flatBootstrap", "defects", "certify-defects"]
    flats = [s for s in camp.steps if s.kind == "submit" and s.builds == "flat"]
    assert sorted(s.band for s in flats) == sorted("ugrizy")
    certs = [s for s in camp.steps if s.kind == "certify"]
    assert len(certs) == 10 and camp.chain_mode(certs[0]) == "redefine"
    assert {s.output.rsplit("/", 1)[1] for s in certs if s.band} == {f"flat-{b}.20250207a" for b in "ugrizy"}
    last_cert = max(order.index(s.name) for s in certs)
    verifies = [s for s in camp.steps if s.kind == "submit" and s.verifies]
    assert len(verifies) == 10 and min(order.index(s.name) for s in verifies) > last_cert
    assert order[-2:] == ["report", "deploy"]
    report = camp.step("report")
    # cpv_report order: verification collections first, then generation collections
    kinds = ["verify" in c.rsplit("/", 1)[1] for c in report.collections]
    assert kinds == sorted(kinds, reverse=True) and any(kinds) and not all(kinds)
    # every template renders strictly with the campaign's variables (no unset variable)
    for s in camp.steps:
        if s.kind == "submit":
            sv = _submit_variables(camp, s)
            cfg = render(s.template, sv, environ=sv).config
            assert cfg["payload"]["output"] == s.gen_output


# -- deployment and self-check (real SQLite repository) ----------------------------------------

P = "u/tester/LSSTComCam/calib/DM-1"
T = P + "/test"


def _exposure(day_obs, seq, begin, physical_filter="r_03"):
    from cpframe.core.model import Timespan, parse_tai

    b = parse_tai(begin)
    return {
        "instrument": "LSSTComCam",
        "id": day_obs * 100000 + seq,
        "obs_id": f"CC_O_{day_obs}_{seq:06d}",
        "day_obs": day_obs,
        "seq_num": seq,
        "physical_filter": physical_filter,
        "observation_type": "science",
        "observation_reason": "object",
        "science_program": "test",
        "exposure_time": 30.0,
        "dark_time": 30.0,
        "timespan": Timespan(b, b + 30 * 10**9),
    }


def _put_calibs(repo, tmp_path, run, dataset_type, data_ids):
    from cpframe.core.model import CollectionType

    repo.registry.register_collection(run, CollectionType.RUN)
    items = []
    for i, did in enumerate(data_ids):
        f = tmp_path / f"{run.replace('/', '_')}_{dataset_type}_{i}.fits"
        f.write_bytes(f"{run} {dataset_type} {did}".encode())
        items.append((f, dataset_type, did))
    return repo.put_files(items, run)


@pytest.fixture
def calib_repo(tmp_path):
    """A repository with raws' collection, an old deployed bias, and a ticket chain with bias + r flat."""
    from cpframe.core.model import CollectionType
    from cpframe.repository.repo import Repository

    repo = Repository.create(tmp_path / "repo")
    repo.register_instrument("LSSTComCam", scale="mini")
    reg = repo.registry
    reg.insert_exposures(
        [
            _exposure(20241020, 5, "2024-10-20T20:00:00"),
            _exposure(20241110, 7, "2024-11-10T20:00:00"),
            _exposure(20241112, 9, "2024-11-12T20:00:00", physical_filter="g_01"),
        ]
    )
    reg.register_collection("LSSTComCam/raw/all", CollectionType.RUN)
    dets = [{"instrument": "LSSTComCam", "detector": d} for d in (0, 1)]
    # an older deployment: LSSTComCam/calib -> an old bias, valid forever
    _put_calibs(repo, tmp_path, "LSSTComCam/calib/DM-0/biasGen.20240101a/run", "bias", dets)
    repo.certify_calibrations(
        "LSSTComCam/calib/DM-0/biasGen.20240101a/run",
        "LSSTComCam/calib/DM-0/bias.20240101a",
        "bias",
        begin_date="1970-01-01",
    )
    reg.set_chain("LSSTComCam/calib/DM-0", ["LSSTComCam/calib/DM-0/bias.20240101a"])
    reg.set_chain("LSSTComCam/calib", ["LSSTComCam/calib/DM-0"])
    # the campaign's products, certified from 2024-11-01 and chained into P
    _put_calibs(repo, tmp_path, T + "/biasGen.20250101a/20250101T000000Z", "bias", dets)
    _put_calibs(
        repo,
        tmp_path,
        T + "/flatGen-r.20250101a/20250101T000000Z",
        "flat",
        [dict(d, physical_filter="r_03") for d in dets],
    )
    repo.certify_calibrations(
        T + "/biasGen.20250101a/20250101T000000Z", T + "/bias.20250102a", "bias", begin_date="2024-11-01"
    )
    repo.certify_calibrations(
        T + "/flatGen-r.20250101a/20250101T000000Z", T + "/flat-r.20250102a", "flat", begin_date="2024-11-01"
    )
    reg.set_chain(P, [T + "/bias.20250102a"])
    reg.set_chain(P, [T + "/flat-r.20250102a"], mode="prepend")
    yield repo
    repo.close()


def test_deploy_prepends_and_self_check_passes(calib_repo):
    from cpframe.campaign.runner import deploy

    reg = calib_repo.registry
    plan = deploy(reg, "LSSTComCam", P, raw_collection="LSSTComCam/raw/all", dry_run=True)
    assert plan.dry_run and reg.get_chain("LSSTComCam/calib") == ("LSSTComCam/calib/DM-0",)  # nothing changed
    assert any("prepend LSSTComCam/calib " + P in c for c in plan.changes)
    res = deploy(reg, "LSSTComCam", P, raw_collection="LSSTComCam/raw/all")
    assert reg.get_chain("LSSTComCam/calib") == (P, "LSSTComCam/calib/DM-0")
    assert reg.get_chain("LSSTComCam/defaults") == ("LSSTComCam/raw/all", "LSSTComCam/calib")
    # the self-check exposure is the latest one inside the validity ranges [2024-11-01, +inf)
    assert res.exposure["id"] == 2024111200009
    rows = {(c.dataset_type, c.physical_filter): c for c in res.checks}
    assert set(rows) == {("bias", None), ("flat", "r_03")}
    assert rows[("bias", None)].n_ok == rows[("bias", None)].n_checked == 2
    assert rows[("bias", None)].found_in == (T + "/bias.20250102a",)
    assert rows[("flat", "r_03")].found_in == (T + "/flat-r.20250102a",)
    assert res.ok and "self-check PASS" in res.format()
    # the lookup really goes to the new bias, not the old deployment (independent check)
    exp = res.exposure
    got = reg.find_calibration(
        "bias", {"instrument": "LSSTComCam", "detector": 1}, ["LSSTComCam/defaults"], exp
    )
    assert got.run == T + "/biasGen.20250101a/20250101T000000Z"
    # deploying again changes nothing
    again = deploy(reg, "LSSTComCam", P, raw_collection="LSSTComCam/raw/all")
    assert again.changes == [] and reg.get_chain("LSSTComCam/calib") == (P, "LSSTComCam/calib/DM-0")


def test_self_check_fails_when_defaults_shadow_the_new_calibrations(calib_repo):
    from cpframe.campaign.runner import deploy

    reg = calib_repo.registry
    # a defaults chain that searches the old calibrations before LSSTComCam/calib
    reg.set_chain("LSSTComCam/defaults", ["LSSTComCam/calib/DM-0", "LSSTComCam/raw/all"])
    res = deploy(reg, "LSSTComCam", P, raw_collection="LSSTComCam/raw/all")
    rows = {c.dataset_type: c for c in res.checks}
    assert not res.ok and rows["bias"].n_ok == 0 and rows["flat"].n_ok == 2
    assert "expected" in rows["bias"].problems[0] and "FAIL" in res.format()
    # an exposure before the validity range cannot pick the new calibrations either
    res = deploy(reg, "LSSTComCam", P, raw_collection="LSSTComCam/raw/all", exposure=2024102000005)
    assert not res.ok and "not valid at this exposure" in res.checks[0].problems[0]


def test_deploy_cli(calib_repo, tmp_path):
    root = str(calib_repo.root)
    args = [
        "deploy",
        "--repo",
        root,
        "--instrument",
        "LSSTComCam",
        "--chain",
        P,
        "--raw-collection",
        "LSSTComCam/raw/all",
    ]
    res = CliRunner().invoke(main, args + ["--dry-run"])
    assert res.exit_code == 0 and "Dry run: nothing changed" in res.output, res.output
    # not reviewed and approved: refused, nothing changes (docs/lifecycle.md)
    res = CliRunner().invoke(main, args + ["--yes"])
    assert res.exit_code == 2 and "refusing to deploy" in res.output and "--override-approval" in res.output
    assert calib_repo.registry.get_chain("LSSTComCam/calib") == ("LSSTComCam/calib/DM-0",)
    args += ["--override-approval", "test of the deploy command"]
    res = CliRunner().invoke(main, args, input="n\n")
    assert res.exit_code == 0 and "Not deployed." in res.output
    assert calib_repo.registry.get_chain("LSSTComCam/calib") == ("LSSTComCam/calib/DM-0",)
    res = CliRunner().invoke(main, args + ["--yes"])
    assert res.exit_code == 0, res.output
    assert "self-check PASS" in res.output and "2/2 detectors" in res.output
    res = CliRunner().invoke(
        main,
        [
            "deploy",
            "--repo",
            root,
            "--chain",
            "nosuch/chain",
            "--instrument",
            "LSSTComCam",
            "--raw-collection",
            "LSSTComCam/raw/all",
            "--yes",
        ],
    )
    assert res.exit_code == 4 and "nothing to deploy: 'nosuch/chain'" in res.output
    res = CliRunner().invoke(main, ["deploy", "--repo", root])
    assert res.exit_code == 4 and "--instrument, --chain, --raw-collection" in res.output


# -- running certify/deploy steps on a real repository (no cluster needed) ----------------------


@pytest.fixture
def gen_repo(tmp_path):
    """Generation outputs as a submission leaves them: RUN + CHAINED ``T/<x>Gen.<RERUN>`` = [RUN, inputs]."""
    from cpframe.core.model import CollectionType
    from cpframe.repository.repo import Repository

    repo = Repository.create(tmp_path / "repo")
    repo.register_instrument("LSSTComCam", scale="mini")
    reg = repo.registry
    reg.insert_exposures([_exposure(20241110, 7, "2024-11-10T20:00:00")])
    reg.register_collection("LSSTComCam/raw/all", CollectionType.RUN)
    dets = [{"instrument": "LSSTComCam", "detector": d} for d in (0, 1)]
    for stem, dtype, extra in (("biasGen", "bias", {}), ("flatGen-r", "flat", {"physical_filter": "r_03"})):
        run = f"{T}/{stem}.20250101a/20250101T000000Z"
        _put_calibs(repo, tmp_path, run, dtype, [dict(d, **extra) for d in dets])
        reg.set_chain(f"{T}/{stem}.20250101a", [run, "LSSTComCam/raw/all"])
    yield repo
    repo.close()


CERT_STEPS = [
    {"name": "certify-bias", "kind": "certify", "dataset_type": "bias"},
    {"name": "certify-flat-r", "kind": "certify", "dataset_type": "flat", "band": "r"},
    {"name": "deploy", "kind": "deploy"},
]


def test_run_until_resume_and_explicit_deploy(gen_repo, tmp_path, monkeypatch):
    from cpframe.campaign.runner import CampaignState, campaign_dir, run_campaign

    reg = gen_repo.registry
    camp = load_campaign(write_campaign(tmp_path, CERT_STEPS, variables={"REPO": str(gen_repo.root)}))
    lines = []
    res = run_campaign(camp, until="certify-bias", echo=lines.append)
    assert [(o.name, o.status) for o in res.outcomes] == [
        ("certify-bias", "ran"),
        ("certify-flat-r", "not-run"),
        ("deploy", "not-run"),
    ]
    assert reg.get_chain(P) == (T + "/bias.20250102a",)  # the first chaining step redefines P
    assert {r.run for r in reg.query_certifications(T + "/bias.20250102a")} == {
        T + "/biasGen.20250101a/20250101T000000Z"
    }
    with pytest.raises(CampaignError, match=r"already started .*\(1 of 3 steps done\).*--resume"):
        run_campaign(camp)
    res = run_campaign(camp, resume=True, echo=lines.append)
    assert [(o.name, o.status) for o in res.outcomes] == [
        ("certify-bias", "skipped"),
        ("certify-flat-r", "ran"),
        ("deploy", "not-run"),
    ]
    assert reg.get_chain(P) == (T + "/flat-r.20250102a", T + "/bias.20250102a")
    assert "LSSTComCam/calib" not in {c.name for c in reg.query_collections()}  # never deployed implicitly
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for k in ("TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich's overrides of what a terminal is
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "stderr", Tty())  # a terminal: one bar over the steps (issue 16)
    res = run_campaign(camp, resume=True, deploy_step=True)
    drawn = sys.stderr.getvalue()
    monkeypatch.undo()
    assert "campaign" in drawn and "━" in drawn, drawn[-500:]
    assert [o.status for o in res.outcomes] == ["skipped", "skipped", "ran"]
    assert res.deploy.ok and reg.get_chain("LSSTComCam/calib") == (P,)
    # CALIB_COLLECTIONS that exist are appended behind P (here: none exist, so nothing appended)
    assert reg.get_chain("LSSTComCam/defaults") == ("LSSTComCam/raw/all", "LSSTComCam/calib")

    state = CampaignState.load(campaign_dir(camp))
    assert {n: state.get(n)["status"] for n in ("certify-bias", "certify-flat-r", "deploy")} == {
        "certify-bias": "done",
        "certify-flat-r": "done",
        "deploy": "done",
    }
    sh = (campaign_dir(camp) / "commands.sh").read_text()
    assert sh.count("# ==== ") == 3 and "(start)" in sh and sh.count("(resume)") == 2
    assert (
        f"cpframe certify-calibrations {gen_repo.root} {T}/biasGen.20250101a {T}/bias.20250102a bias "
        "--begin-date 1970-01-01T00:00:00\n"
    ) in sh
    assert f"cpframe collection-chain {gen_repo.root} --mode redefine {P} {T}/bias.20250102a\n" in sh
    assert f"cpframe collection-chain {gen_repo.root} --mode prepend {P} {T}/flat-r.20250102a\n" in sh
    assert f"created the empty CHAINED collection {P}" in sh
    entries = json.loads((campaign_dir(camp) / "record.json").read_text())
    ran = [(e["step"], e["outcome"]) for e in entries if "step" in e]
    assert ran == [
        ("certify-bias", "ok"),
        ("certify-bias", "skipped"),
        ("certify-flat-r", "ok"),
        ("certify-bias", "skipped"),
        ("certify-flat-r", "skipped"),
        ("deploy", "ok"),
    ]


def test_interrupted_certification_is_only_chained_on_resume(gen_repo, tmp_path):
    """Killed after certify-calibrations but before collection-chain: the resume chains, nothing else."""
    from cpframe.campaign.runner import run_campaign

    reg = gen_repo.registry
    camp = load_campaign(write_campaign(tmp_path, CERT_STEPS[:1], variables={"REPO": str(gen_repo.root)}))
    gen_repo.certify_calibrations(
        T + "/biasGen.20250101a", T + "/bias.20250102a", "bias", begin_date="1970-01-01T00:00:00"
    )
    links = {r.id for r in reg.query_certifications(T + "/bias.20250102a")}
    res = run_campaign(camp)
    assert res.outcomes[0].status == "ran" and "already certified" in res.outcomes[0].detail
    assert {r.id for r in reg.query_certifications(T + "/bias.20250102a")} == links
    assert reg.get_chain(P) == (T + "/bias.20250102a",)


def test_failed_certification_names_the_step_and_how_to_resume(gen_repo, tmp_path):
    from cpframe.campaign.runner import CampaignState, campaign_dir, run_campaign

    steps = [
        {
            "name": "certify-bias",
            "kind": "certify",
            "dataset_type": "bias",
            "input": "${TAG_PREFIX}/nosuchGen.${RERUN}",
        }
    ]
    camp = load_campaign(write_campaign(tmp_path, steps, variables={"REPO": str(gen_repo.root)}))
    with pytest.raises(
        CampaignError,
        match=r"(?s)step 1 'certify-bias' \(certify\) failed: certify bias: input "
        r"collection '.*nosuchGen.20250101a' does not exist.*"
        r"then run: cpframe campaign \S+c.yaml --resume",
    ):
        run_campaign(camp)
    state = CampaignState.load(campaign_dir(camp))
    assert state.get("certify-bias")["status"] == "failed"
    sh = (campaign_dir(camp) / "commands.sh").read_text()
    assert "# cpframe certify-calibrations" in sh and "-> failed" in sh  # failed commands are commented out


def test_new_types_follow_their_dependencies(tmp_path):
    """Issue 13 types: linearizer after certified defects, CTI after the certified linearizer, crosstalk after
    the certified PTC (dependencies.md §6), whatever the file order."""
    steps = [
        {"name": "verify-linearizer", "kind": "submit", "template": "bps_verify_linearizer.yaml",
         "verifies": "linearizer"},
        {"name": "crosstalk", "kind": "submit", "template": "bps_crosstalk.yaml", "builds": "crosstalk"},
        {"name": "certify-linearizer", "kind": "certify", "dataset_type": "linearizer"},
        {"name": "cti", "kind": "submit", "template": "bps_cti.yaml", "builds": "cti"},
        {"name": "linearizer", "kind": "submit", "template": "bps_linearizer.yaml", "builds": "linearizer"},
        *SCRAMBLED_STEPS,
    ]
    variables = {k: "instrument='LSSTComCam'" for k in (
        "SELECTION_PTC_LINEARIZER", "SELECTION_PTC_CTI", "SELECTION_CROSSTALK", "SELECTION_PTC_LINEARIZER_V")}
    camp = load_campaign(write_campaign(tmp_path, steps, variables=variables))
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    assert pos["certify-defects"] < pos["linearizer"] < pos["certify-linearizer"] < pos["cti"]
    assert pos["certify-linearizer"] < pos["verify-linearizer"]
    assert pos["certify-ptc"] < pos["crosstalk"]


def test_gain_correction_comes_after_the_flat_it_is_measured_against(tmp_path):
    """bps_gain_correction (a name with '_') is inferred as the gain_correction product, ordered after ptc, bias,
    dark, defects and the flat (and their certification), whatever the file order."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "bps_gain_correction.yaml").write_text("pipelineYaml: x.yaml\n")
    steps = [
        {"name": "gain-correction", "kind": "submit", "template": "bps_gain_correction.yaml"},
        {"name": "certify-gain-correction", "kind": "certify", "dataset_type": "gain_correction"},
        {"name": "ptc", "kind": "submit", "template": "bps_ptc.yaml"},
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml"},
        {"name": "flat-r", "kind": "submit", "template": "bps_flat_r.yaml"},
        {"name": "certify-flat-r", "kind": "certify", "dataset_type": "flat", "band": "r"},
    ]
    camp = load_campaign(write_campaign(tmp_path, steps, variables={
        "SELECTION_GAIN_CORRECTION_FLAT": "instrument='LSSTComCam' and observation_reason='gain'"}))
    order = [s.name for s in camp.steps]
    assert camp.step("gain-correction").builds == "gain_correction"
    for before in ("ptc", "bias", "flat-r", "certify-flat-r"):
        assert order.index(before) < order.index("gain-correction"), order
    assert order.index("gain-correction") < order.index("certify-gain-correction")
    assert camp.step("certify-gain-correction").input.endswith("/gainCorrectionGen.20250101a")


def test_flat_gradient_reference_is_per_band(tmp_path):
    """bps_flat_gradient_reference_<b> builds flat_gradient_reference for band b, after the PTC, bias and dark; its
    generation chain and certification carry the band like a flat's."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "bps_flat_gradient_reference_r.yaml").write_text("pipelineYaml: x.yaml\n")
    steps = [
        {"name": "gradient-r", "kind": "submit", "template": "bps_flat_gradient_reference_r.yaml"},
        {"name": "certify-gradient-r", "kind": "certify", "dataset_type": "flat_gradient_reference", "band": "r"},
        {"name": "bias", "kind": "submit", "template": "bps_bias.yaml"},
        {"name": "ptc", "kind": "submit", "template": "bps_ptc.yaml"},
    ]
    camp = load_campaign(write_campaign(tmp_path, steps))
    order = [s.name for s in camp.steps]
    step = camp.step("gradient-r")
    assert (step.builds, step.band) == ("flat_gradient_reference", "r")
    assert order.index("ptc") < order.index("bias") < order.index("gradient-r") < order.index("certify-gradient-r")
    assert camp.step("certify-gradient-r").input.endswith("/flatGradientReferenceGen-r.20250101a")
    with pytest.raises(CampaignError, match="certifying flat_gradient_reference needs 'band'"):
        load_campaign(write_campaign(tmp_path, [{"name": "c", "kind": "certify",
                                                 "dataset_type": "flat_gradient_reference"}], name="d.yaml"))


def test_products_are_built_after_the_certified_calibrations_their_isr_applies(tmp_path):
    """USES_WHEN_CERTIFIED (dependencies.md §3): with a linearizer and a crosstalk in the campaign, the PTC
    comes after the certified linearizer and bias/dark/flat after the certified linearizer and crosstalk, even
    when the file lists them first; a campaign without them keeps the plain order (test above)."""
    from cpframe.campaign.model import USES_WHEN_CERTIFIED

    steps = [
        *SCRAMBLED_STEPS,
        {"name": "crosstalk", "kind": "submit", "template": "bps_crosstalk.yaml", "builds": "crosstalk"},
        {"name": "certify-crosstalk", "kind": "certify", "dataset_type": "crosstalk"},
        {"name": "linearizer", "kind": "submit", "template": "bps_linearizer.yaml", "builds": "linearizer"},
        {"name": "certify-linearizer", "kind": "certify", "dataset_type": "linearizer"},
    ]
    variables = {k: "instrument='LSSTComCam'" for k in ("SELECTION_PTC_LINEARIZER", "SELECTION_CROSSTALK")}
    camp = load_campaign(write_campaign(tmp_path, steps, variables=variables))
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    assert pos["certify-linearizer"] < pos["ptc"] < pos["certify-ptc"] < pos["crosstalk"]
    for product in ("bias", "dark", "flat-g"):
        assert pos["certify-linearizer"] < pos[product] and pos["certify-crosstalk"] < pos[product], product
    assert ("certify-crosstalk", "bias applies the certified crosstalk") in camp.after["bias"]
    assert set(USES_WHEN_CERTIFIED["flat"]) == {"linearizer", "crosstalk"}


def test_step_vars_may_refer_to_campaign_variables(tmp_path):
    steps = [{"name": "bias", "kind": "submit", "template": "bps_bias.yaml",
              "vars": {"CALIB_COLLECTIONS": "${TICKET_CHAIN},${CALIB_COLLECTIONS}", "X": "${NOT_A_VARIABLE}"}}]
    camp = load_campaign(write_campaign(tmp_path, steps))
    got = dict(camp.step("bias").vars)
    assert got["CALIB_COLLECTIONS"] == "u/tester/LSSTComCam/calib/DM-1,LSSTComCam/calib/DM-1/curated"
    assert got["X"] == "${NOT_A_VARIABLE}"  # left for the template
