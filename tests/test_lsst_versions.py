"""Real cp_pipe files of other versions than tests/data/lsst's copies (tests/data/lsst/history, see its README).

A site may run an older stack.  Its pipeline files use task classes since renamed
(``PhotonTransferCurveExtractTask``) and config fields cpframe does not implement
(``doAmpOffsetGainRatioFixup``, deprecated since): a real field is accepted and said so in the plan,
only a name no version of the class ever had is an error (cpframe/execution/lsst_fields.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cpframe.core.errors import PipelineError
from cpframe.execution.kinds import REGISTRY
from cpframe.execution.lsst_fields import known_fields
from cpframe.execution.pipeline import load_pipeline
from cpframe.execution.submit import validate_stage
from cpframe.execution.templates import render

from tests.fixtures.submit import DMTN222_VARIABLES

HISTORY = Path(__file__).parent / "data" / "lsst" / "history"


def _env(cp_pipe: Path) -> dict[str, str]:
    return {**DMTN222_VARIABLES, "PATH": "/usr/bin:/bin", "CP_PIPE_DIR": str(cp_pipe), "INSTRUMENT": "LSSTCam",
            "SELECTION_PTC": "instrument='LSSTCam'"}


@pytest.mark.parametrize("version, extract", [("cp_pipe-00ef13e", "cpPtcExtract"),
                                              ("cp_pipe-070fc22", "cpPtcExtractPair")])
def test_older_real_ptc_templates_plan(version, extract):
    root = HISTORY / version
    _, pipe = validate_stage(render(root / "bps/templates/bps_ptc.yaml", environ=_env(root)))
    kinds = {t.label: t.kind for t in pipe.tasks}
    assert kinds == {"cpPtcIsr": "isr", extract: "ptcExtract", "cpPtcSolve": "ptcSolve"}
    # the pairs' measurements the extraction writes are what the solve reads, whatever the class's connection
    assert pipe.task("cpPtcSolve").inputs == (pipe.task(extract).output,)
    assert pipe.task("cpPtcSolve").config["ptcFitType"] == "FULLCOVARIANCE"
    # a real field cpframe does not implement is accepted and named in the plan, not dropped in silence
    assert any("accepted, not implemented by cpframe" in n and "doAmpOffsetGainRatioFixup=True" in n
               for n in pipe.notes), pipe.notes


def test_a_field_no_version_ever_had_is_still_an_error(tmp_path):
    root = HISTORY / "cp_pipe-070fc22"
    (tmp_path / "typo.yaml").write_text(
        "description: a typo\nimports:\n  - location: $CP_PIPE_DIR/pipelines/LSSTCam/cpPtc.yaml\n"
        "tasks:\n  cpPtcSolve:\n    class: lsst.cp.pipe.ptc.PhotonTransferCurveSolveTask\n"
        "    config:\n      doAmpOffsetGainRatioFixupp: false\n")
    with pytest.raises(PipelineError, match=r"tasks.cpPtcSolve: unknown config field 'doAmpOffsetGainRatioFixupp' for "
                                            r"PhotonTransferCurveSolveTask \(did you mean 'doAmpOffsetGainRatioFixup'"):
        load_pipeline(tmp_path / "typo.yaml", environ={"CP_PIPE_DIR": str(root)})


def test_the_field_catalogue_covers_every_real_class_cpframe_maps():
    """Each cp_pipe / ip_isr / cp_verify class a kind maps has its real fields listed (regenerate the catalogue
    when a kind maps a class it lacks: python -m cpframe.execution.lsst_fields)."""
    missing = [cls for kind in REGISTRY.values() for cls in kind.task_classes
               if cls.startswith(("lsst.cp.pipe.", "lsst.ip.isr.", "lsst.cp.verify.")) and not known_fields(cls)]
    assert not missing, missing
    assert {"doLinearize", "doCrosstalk", "doBrighterFatter", "saveLogOutput"} <= known_fields("lsst.ip.isr.IsrTaskLSST")
