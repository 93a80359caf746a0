"""Task kinds are defined once (cpframe/execution/kinds): pipeline-run config == direct-call
config == documented defaults, for every kind."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType

import pytest

from cpframe.core.config import load_settings
from cpframe.core.errors import PipelineError
from cpframe.execution.kinds import REGISTRY, REQUIRED, UNSET, Option, TaskKind, get_kind, kinds_markdown
from cpframe.execution.pipeline import KINDS, parse_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _one_task_pipeline(kind: type[TaskKind], config: dict) -> dict:
    dims = sorted(kind.dimensions[0])
    if kind.name == "combine":
        output, types = "bias", {}
    else:
        output, types = "kindOut", {"kindOut": {"dimensions": dims, "storageClass": "json"}}
    return {"name": "one", "datasetTypes": types,
            "tasks": {"t": {"kind": kind.name, "dimensions": dims, "inputs": ["raw"] if kind.reads_raw else [],
                            "output": output, "config": config}}}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pipeline_run_config_equals_direct_call_config(name):
    kind = get_kind(name)
    spec = parse_pipeline(_one_task_pipeline(kind, kind.required_example()))
    task = spec.task("t")
    # the pipeline filled every option from the kind's defaults (required ones from the example)
    expected = {k: v for k, v in kind.defaults().items() if v is not UNSET and v is not REQUIRED}
    assert {k: task.config[k] for k in expected} == {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in expected.items()}
    shared, notes = kind.plan(task, load_settings(), explicit=set())
    assert notes == []  # defaults never produce a note
    everything = {c: ["found"] for c in ("crosstalk", "linearizer", "ptc", "bias", "dark", "flat", "defects")}
    planned = kind.for_quantum(shared, everything)[kind.settings_key]
    assert planned == kind.direct_config()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_option_defaults_are_the_science_config_defaults(name):
    kind = get_kind(name)
    cfg = kind.config_class
    by_field = {f.name: f for f in fields(cfg)} if cfg else {}
    direct = kind.direct_config()
    for key, opt in kind.options.items():
        assert key[0].islower() and "_" not in key, f"{name}.{key}: options take cp_pipe's camelCase names"
        if opt.field is not None:
            assert opt.field in by_field, f"{name}.{key} names a field {opt.field!r} that {cfg.__name__} lacks"
            if not opt.required:
                value = kind.defaults()[key]
                assert getattr(direct, opt.field) == value, f"{name}.{key}: direct call {getattr(direct, opt.field)!r}"


def test_direct_function_defaults_come_from_the_config_classes():
    from cpframe.science import tasks

    sig = inspect.signature(tasks.flat_measure_task).parameters
    assert (sig["clip"].default, sig["n_iter"].default) == (get_kind("flatMeasure").defaults()["clip"],
                                                            get_kind("flatMeasure").defaults()["nIter"])
    assert inspect.signature(tasks.flat_normalize_task).parameters["max_iter"].default == \
        get_kind("flatNormalize").defaults()["scaleMaxIter"]


def test_documented_defaults_are_the_kinds():
    doc = (ROOT / "docs" / "kinds.md").read_text()
    assert doc == kinds_markdown(), "docs/kinds.md is stale: python -m cpframe.execution.kinds > docs/kinds.md"
    # and the page shows the values that matter, e.g. the defaults that used to disagree
    assert "| `edgesAsDefects` | bool | false |" in doc and "| `numEdgeSuspect` | int | 0 |" in doc
    assert "| `nCrPixelMax` | int | 10000 |" in doc


def test_every_shipped_pipeline_uses_known_kinds_and_kinds_are_the_registry():
    assert set(KINDS) == set(REGISTRY)
    used = {t.kind for p in (ROOT / "pipelines").glob("*.yaml") for t in parse_pipeline(
        __import__("yaml").safe_load(p.read_text()), str(p)).tasks}
    assert used <= set(REGISTRY)


def test_a_new_kind_is_one_class():
    """Defining a TaskKind subclass is all a pipeline needs to use it (no other table to edit)."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class ToyConfig:
        threshold: float = 2.5

    class Toy(TaskKind):
        name = "toyKind"
        summary = "a kind defined by this test"
        dimensions = (frozenset({"detector"}),)
        config_class = ToyConfig
        options = MappingProxyType({"threshold": Option(float, "threshold")})

        @classmethod
        def plan(cls, task, settings, explicit):
            return {"config": ToyConfig(**{"threshold": task.config["threshold"]})}, []

    try:
        spec = parse_pipeline(_one_task_pipeline(Toy, {}))
        assert spec.task("t").config["threshold"] == 2.5
        assert Toy.plan(spec.task("t"), None, set())[0]["config"] == ToyConfig()
        with pytest.raises(PipelineError, match="threshold must be a number"):
            parse_pipeline(_one_task_pipeline(Toy, {"threshold": "high"}))
        with pytest.raises(TypeError, match="defined twice"):
            type("Toy2", (TaskKind,), {"name": "toyKind"})
    finally:
        REGISTRY.pop("toyKind", None)


def test_lsst_task_classes_come_from_the_kinds(tmp_path):
    """The LSST pipeline reader knows a task class only through a kind's ``task_classes`` (issue 12)."""
    from dataclasses import dataclass

    from cpframe.execution.kinds import ClassMap
    from cpframe.execution.lsst_pipeline import lsst_classes, read_lsst_pipeline

    mapped = {c: k.name for k in REGISTRY.values() for c in k.task_classes}
    assert {c: m.kind for c, m in lsst_classes().items()} == mapped
    assert mapped["lsst.ip.isr.IsrTaskLSST"] == "isr" and mapped["lsst.cp.pipe.CpDarkTask"] == "darkCr"
    for name, k in REGISTRY.items():  # docs/kinds.md names each kind's classes
        for c in k.task_classes:
            assert f"`{c}`" in kinds_markdown().split(f"## `{name}`")[1].split("\n## ")[0]

    @dataclass(frozen=True)
    class ToyConfig:
        threshold: float = 2.5

    pipe = tmp_path / "toy.yaml"
    pipe.write_text("tasks:\n  toyTask:\n    class: lsst.cp.pipe.ToyMeasureTask\n    config:\n      threshold: 4.0\n"
                    "      connections.outputThing: toyThing\n")
    with pytest.raises(PipelineError, match="unknown task class 'lsst.cp.pipe.ToyMeasureTask'"):
        read_lsst_pipeline(pipe)
    try:
        class Toy(TaskKind):
            name = "toyLsstKind"
            summary = "a kind defined by this test, with an LSST class"
            dimensions = (frozenset({"detector"}),)
            config_class = ToyConfig
            options = MappingProxyType({"threshold": Option(float, "threshold")})
            task_classes = MappingProxyType({"lsst.cp.pipe.ToyMeasureTask": ClassMap(
                "toyLsstKind", ("detector",), (("inputThing", "raw"),), ("outputThing", "toyOut"),
                {"threshold": "threshold"})})

        data, _ = read_lsst_pipeline(pipe)
        assert data["tasks"]["toyTask"]["kind"] == "toyLsstKind"
        assert data["tasks"]["toyTask"]["config"]["threshold"] == 4.0
        assert data["tasks"]["toyTask"]["output"] == "toyThing"
        with pytest.raises(TypeError, match="map onto another kind"):
            type("Bad", (TaskKind,), {"name": "toyBad", "task_classes": {"x.Y": ClassMap(
                "isr", ("detector",), (), ("o", "o"))}})
    finally:
        REGISTRY.pop("toyLsstKind", None)
        REGISTRY.pop("toyBad", None)


def test_the_planner_reads_every_kind_and_pipeline_without_the_science_stack():
    """Every kind's options, defaults and checks, every shipped pipeline (cpframe's and the LSST files) and the
    fusion check come from :mod:`cpframe.science.configs`: a planning process (``cpframe submit`` of any
    compute site) imports neither numba, astropy, scipy, numpy nor the science and verification modules
    (issue 14: 0.5 s of CPU of every submission); the science modules still re-export their configurations."""
    import subprocess
    import sys

    code = """
import sys
from pathlib import Path
from cpframe.core.errors import PipelineError
from cpframe.execution.kinds import REGISTRY
from cpframe.execution.pipeline import list_pipelines, load_pipeline
from cpframe.science.configs.fused import fused_unsupported
from cpframe.science.configs.combine import CombineConfig
from cpframe.science.configs.isr import IsrConfig
for k in REGISTRY.values():
    if k.config_class is not None:
        k.config_class()
names = list_pipelines()
for name in names:
    load_pipeline(name)
lsst = Path(sys.argv[1])
env = {"CP_PIPE_DIR": str(lsst / "cp_pipe"), "CP_VERIFY_DIR": str(lsst / "cp_verify"),
       "ANALYSIS_TOOLS_DIR": str(lsst / "analysis_tools")}
loaded = 0
for path in sorted(lsst.glob("cp_*/pipelines/LSSTComCam/*.yaml")):
    try:
        load_pipeline(str(path), environ=env)
        loaded += 1
    except PipelineError:  # a task class cpframe does not run: reported, also without the science stack
        pass
assert fused_unsupported(IsrConfig(), CombineConfig()) == []
print(len(names), loaded, sorted(m for m in ("numpy", "numba", "astropy", "scipy", "cpframe.verify",
      "cpframe.science.combine", "cpframe.science.isr", "cpframe.science.fused", "cpframe.science.imageio")
      if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "data" / "lsst")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    n_own, n_lsst, heavy = out.stdout.split(maxsplit=2)
    assert int(n_own) >= 30 and int(n_lsst) >= 20 and heavy.strip() == "[]", out.stdout
    # the science modules' names are the configurations' (one class, two import paths)
    from cpframe.science import combine, isr
    from cpframe.science.configs import combine as combine_config
    from cpframe.science.configs import isr as isr_config
    from cpframe.verify.config import VerifyConfig
    from cpframe.science.configs.verify import VerifyConfig as VerifyConfigHere

    assert combine.CombineConfig is combine_config.CombineConfig and isr.IsrConfig is isr_config.IsrConfig
    assert VerifyConfig is VerifyConfigHere
