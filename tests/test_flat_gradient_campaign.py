"""A campaign whose flat pipeline reads the certified flat_gradient_reference (issue 13).

cp_pipe's LSSTCam cpFlat.yaml (``_ingredients/cpFlatCorrectedLSST.yaml``, since cp_pipe efa90dd7) fits each new
flat's gradient (``cpFlatFitGradients``, ``do_reference_gradient: false``: output ``flat_gradient``) and corrects
the flat against the certified ``flat_gradient_reference`` of its band (``cpFlatApplyGradients``, a prerequisite
input).  The campaign reads that from the pipeline the step will run (cpframe/campaign/preflight.py
``certified_reads``): it orders the flat after the reference of its band is certified, and, when the campaign does
not make the reference and none is certified in the flat's inputs, stops before submitting with the steps to add.
"""

from __future__ import annotations

import pytest

from cpframe.core.errors import CampaignError
from tests.test_campaign import write_campaign
from tests.test_lsst_templates import CP_PIPE, STACK

REAL = CP_PIPE / "bps" / "templates"
SEL = "instrument='LSSTCam' and exposure.observation_type='flat'"


@pytest.fixture
def lsst_stack(monkeypatch):
    """The stack's variables set in the environment, as `setup lsst_distrib` does."""
    for k, v in STACK.items():
        monkeypatch.setenv(k, v)


def _steps(bands=("r", "g"), reference=("r",)):
    steps = []
    for b in bands:  # the flats first in the file: the order must come from the pipelines
        steps += [{"name": f"certify-flat-{b}", "kind": "certify", "dataset_type": "flat", "band": b},
                  {"name": f"flat-{b}", "kind": "submit", "template": str(REAL / f"bps_flat_{b}.yaml")}]
    for b in reference:
        steps += [{"name": f"certify-fgr-{b}", "kind": "certify", "dataset_type": "flat_gradient_reference",
                   "band": b},
                  {"name": f"fgr-{b}", "kind": "submit",
                   "template": str(REAL / f"bps_flat_gradient_reference_{b}.yaml")}]
    return steps


def _load(tmp_path, steps, **extra):
    from cpframe.campaign.spec import load_campaign

    return load_campaign(write_campaign(tmp_path, steps, variables={"INSTRUMENT": "LSSTCam", "SELECTION_FLAT_r": SEL,
                                                                    "SELECTION_FLAT_g": SEL, **extra}))


def test_the_lsstcam_flat_is_ordered_after_the_certified_reference_of_its_band(tmp_path, lsst_stack):
    camp = _load(tmp_path, _steps())
    pos = {s.name: i for i, s in enumerate(camp.steps)}
    assert pos["fgr-r"] < pos["certify-fgr-r"] < pos["flat-r"] < pos["certify-flat-r"], [s.name for s in camp.steps]
    assert camp.step("flat-r").reads == (("cpFlatApplyGradients", "flat_gradient_reference"),)
    why = "flat's pipeline reads the certified flat_gradient_reference (task cpFlatApplyGradients)"
    assert ("certify-fgr-r", why) in camp.after["flat-r"] and ("fgr-r", why) in camp.after["flat-r"]
    # the reference of another band does not order the g flat; the reference's own pipeline reads none
    assert not any(a.startswith(("fgr", "certify-fgr")) for a, _ in camp.after["flat-g"])
    assert camp.step("fgr-r").reads == () and pos["flat-g"] < pos["fgr-r"]


def test_flat_pipelines_that_do_not_read_it_are_not_ordered(tmp_path, monkeypatch):
    """cpframe's own flat pipeline (stack unset) and LSSTComCam's cp_pipe one (cpFlatLSST.yaml) read no reference."""
    from cpframe.campaign.spec import load_campaign

    for k in STACK:
        monkeypatch.delenv(k, raising=False)
    steps = _steps(reference=("r",))
    camp = _load(tmp_path, steps)
    assert camp.step("flat-r").reads == () and not any("flat_gradient_reference" in w for _, w in camp.after["flat-r"])
    for k, v in STACK.items():
        monkeypatch.setenv(k, v)
    steps = [s for s in steps if not s["name"].endswith("fgr-r")]  # LSSTComCam has no cpFlatGradientReference.yaml
    camp = load_campaign(write_campaign(tmp_path, steps, variables={"SELECTION_FLAT_r": SEL}, name="comcam.yaml"))
    assert camp.step("flat-r").reads == ()


def test_a_missing_reference_stops_before_the_submission_with_the_steps_to_add(tmp_path, lsst_stack):
    from cpframe.campaign.preflight import check_before_submit
    from cpframe.campaign.runner import _submit_variables
    from cpframe.repository.repo import Repository

    camp = _load(tmp_path, _steps(bands=("g",), reference=()))
    repo = Repository.create(tmp_path / "repo")
    step = camp.step("flat-g")
    with pytest.raises(CampaignError) as err:
        check_before_submit(step, {**STACK, **_submit_variables(camp, step)}, repo, {})
    msg = str(err.value)
    assert msg.startswith("step 'flat-g' builds flat (g) with a pipeline whose task 'cpFlatApplyGradients' reads the "
                          "certified flat_gradient_reference of band g, and none is certified in the step's input "
                          "collections (u/tester/LSSTCam/calib/DM-1, "), msg
    assert ("add a submit step with template bps_flat_gradient_reference_g.yaml and a certify step with "
            "dataset_type: flat_gradient_reference, band: g") in msg, msg


def test_a_certified_reference_of_the_band_lets_the_flat_run(tmp_path, lsst_stack):
    """A reference certified in the inputs passes the check; one of another band does not, and when the campaign
    makes it the message names its steps."""
    from cpframe.campaign.preflight import check_before_submit
    from cpframe.campaign.runner import _submit_variables
    from cpframe.core.model import CollectionType, DatasetType
    from cpframe.repository.repo import Repository
    from tests._run_helpers import put_certified

    camp = _load(tmp_path, _steps(bands=("r",), reference=()))
    repo = Repository.create(tmp_path / "repo")
    step = camp.step("flat-r")
    v = {**STACK, **_submit_variables(camp, step)}
    ref = tmp_path / "fgr.json"
    ref.write_text("{}")
    # no flat_gradient_reference ever stored (a new repository does not register the type): missing, not a crash
    repo.registry.register_collection(camp.variables["TICKET_CHAIN"], CollectionType.CALIBRATION)
    with pytest.raises(CampaignError, match="of band r, and none is certified"):
        check_before_submit(step, v, repo, {})
    repo.register_instrument("LSSTCam")
    repo.registry.register_dataset_type(DatasetType("flat_gradient_reference", ("instrument", "physical_filter"), True,
                                                    "json"))
    chain = camp.variables["TICKET_CHAIN"]  # the first input collection of bps_flat_r.yaml
    put_certified(repo, "flat_gradient_reference", [(ref, {"instrument": "LSSTCam", "physical_filter": "g_6"})],
                  "fgr-run-g", chain)
    with pytest.raises(CampaignError, match="of band r, and none is certified") as err:
        check_before_submit(step, v, repo, {"flat_gradient_reference": ["fgr-r", "certify-fgr-r"]})
    assert "The campaign's step(s) 'fgr-r', 'certify-fgr-r' make it" in str(err.value)
    put_certified(repo, "flat_gradient_reference", [(ref, {"instrument": "LSSTCam", "physical_filter": "r_57"})],
                  "fgr-run-r", chain)
    check_before_submit(step, v, repo, {})
