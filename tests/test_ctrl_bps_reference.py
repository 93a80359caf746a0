"""cpframe's rendering of the 47 real templates, value by value against the real lsst-ctrl-bps.

``lsst.ctrl.bps.BpsConfig`` is built as ``bps submit`` builds it (``initialize.init_submission``:
its defaults, search order, then ``timestamp``, ``operator`` and ``uniqProcName``), with the stack
variables set so both read the same files.  Every value both define is compared after
substitution.  The only documented difference (docs/submit.md): none for these keys -- strict
mode in cpframe only adds errors for unset variables, which are all set here.
"""

from __future__ import annotations

import datetime as dt

import pytest

from cpframe.execution.templates import render

from tests.test_lsst_templates import EXTRA, STACK, TEMPLATES
from tests.fixtures.submit import DMTN222_VARIABLES

bps = pytest.importorskip("lsst.ctrl.bps", reason="lsst-ctrl-bps (the [test] extra) is not installed")

NOW = dt.datetime(2025, 2, 7, 18, 15, 12, tzinfo=dt.timezone.utc)
TIMESTAMP = "20250207T181512Z"
KEYS = ("pipelineYaml", "project", "campaign", "submitPath", "payloadName", "output", "outputRun", "butlerConfig",
        "inCollection", "dataQuery", "uniqProcName", "operator", "extraQgraphOptions")


def _bps_config(path):
    # the WMS plugins (htcondor, panda, parsl) are separate packages; their defaults do not touch these keys
    cfg = bps.BpsConfig(str(path), search_order=bps.BPS_SEARCH_ORDER, defaults=bps.BPS_DEFAULTS,
                        wms_service_class_fqn="lsst.ctrl.bps.wms_service.BaseWmsService")
    cfg[".bps_defined.timestamp"] = TIMESTAMP
    if "operator" not in cfg:
        cfg[".bps_defined.operator"] = "calibrator"
    if "uniqProcName" not in cfg:
        cfg[".bps_defined.uniqProcName"] = cfg["outputRun"].replace("/", "_")
    return cfg


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_values_match_ctrl_bps(template, monkeypatch):
    env = {**DMTN222_VARIABLES, **EXTRA, **STACK, "PWD": "/work/here"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ref = _bps_config(template)
    mine = render(template, environ=env, now=NOW, cwd="/work/here")
    payload = mine.config["payload"]
    compared = 0
    for key in KEYS:
        found, value = ref.search(key)
        if not found:
            continue
        ours = payload.get(key, mine.config.get(key))
        assert ours == value, (key, ours, value)
        compared += 1
    assert compared >= 10
    # per-task and per-cluster sections, and the environment section of included files
    for section in ("cluster", "pipetask", "environment"):
        if section not in mine.config:
            continue
        for label, sub in mine.config[section].items():
            if isinstance(sub, dict):
                for key, value in sub.items():
                    found, theirs = ref.search(key, opt={"curvals": {f"curr_{section}": label}})
                    assert found and str(theirs) == str(value), (section, label, key, value, theirs)
            else:
                found, theirs = ref.search(label, opt={"searchobj": ref[section]})
                assert str(theirs) == str(sub), (section, label, sub, theirs)
