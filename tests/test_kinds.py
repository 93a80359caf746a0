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
