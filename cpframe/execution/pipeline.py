"""Pipeline definitions: ``pipelines/*.yaml`` -> validated :class:`PipelineSpec`.

A pipeline lists its tasks.  Each task has a ``kind`` (what the science code
does), a ``config`` (cp_pipe field names: ``doBias``, ``combine``, ``clip``...),
its quantum ``dimensions``, the dataset types it reads from earlier tasks
(``inputs``) and the one it writes (``output``).  The calibrations a task reads
are *derived*: for ISR from the ``do*`` switches (spec dependencies.md §1, with
the minimal closed set of §7: linearizer, CTI, crosstalk and BFK are optional),
for other kinds from an explicit ``calibrations`` list.

File format (see docs/submit.md for the full reference)::

    name: cpBias
    description: Combined bias from bias exposures.
    datasetTypes:                    # intermediates this pipeline writes
      cpBiasIsrExp: {dimensions: [exposure, detector], storageClass: fits-masked}
    tasks:
      cpBiasIsr:
        kind: isr
        dimensions: [exposure, detector]
        inputs: [raw]
        output: cpBiasIsrExp
        config: {doApplyGains: true}
      cpBiasCombine:
        kind: combine
        dimensions: [detector]
        inputs: [cpBiasIsrExp]
        output: bias
        config: {calibrationType: bias, exposureScaling: Unity, mask: [DETECTED, INTRP]}

Every problem in a file is reported at once in one :class:`~cpframe.core.errors.PipelineError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import yaml

from cpframe.core import yamlsafe
from cpframe.core.errors import PipelineError
from cpframe.execution.dataset_types import CALIBRATION_TYPES, PRODUCT_TYPES, RENAMABLE_CALIBRATIONS
from cpframe.execution import kinds as _kinds

__all__ = [
    "DatasetTypeSpec",
    "PipelineSpec",
    "TaskSpec",
    "KINDS",
    "MASK_PLANES",
    "calibrations_for_isr",
    "list_pipelines",
    "load_pipeline",
    "parse_pipeline",
]

#: Mask plane names (docs/architecture.md "Mask bits").
MASK_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "SUSPECT", "NO_DATA",
               "UNMASKEDNAN", "VIGNETTED", "PARTLY_VIGNETTED")

#: cp_pipe / cp_verify pipelines for calibrations cpframe does not build (yet): file stem -> what.
NOT_BUILT_PIPELINES = {
}

STORAGE_CLASSES = ("fits-masked", "json", "ecsv", "ecsv-defects", "fits-ptc")

_DIM_ORDER = ("instrument", "exposure", "detector", "physical_filter")

# Every task kind (its options with types and defaults, dimensions, planning and run) is
# defined once, in cpframe.execution.kinds; this module only reads those definitions.
KINDS = tuple(_kinds.REGISTRY)

_ANY = object()


def _kind_table(kind: str) -> dict[str, tuple]:
    """cp_pipe key -> (type, default) of a kind; ``_ANY`` marks a required key, UNSET keys are not filled."""
    k = _kinds.REGISTRY[kind]
    defaults = k.defaults()
    return {key: (opt.type, _ANY if defaults[key] is _kinds.REQUIRED else defaults[key])
            for key, opt in k.options.items()}


_TASK_KEYS = ("kind", "dimensions", "inputs", "output", "extraOutputs", "config", "calibrations",
              "optionalCalibrations", "description", "calibrationConnections")
_TOP_KEYS = ("name", "description", "datasetTypes", "tasks", "verifies", "instrument", "foldedLabels")


def calibrations_for_isr(config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Calibrations an ISR task reads, from its switches: :meth:`cpframe.execution.kinds.isr.Isr.calibrations`.

    >>> calibrations_for_isr(_kinds.get_kind("isr").filled({"doApplyGains": True}))
    (('ptc',), ())
    """
    return _kinds.get_kind("isr").calibrations(_kinds.get_kind("isr").filled(config))


@dataclass(frozen=True)
class DatasetTypeSpec:
    """A dataset type a pipeline writes or reads."""

    name: str
    """Dataset type name."""
    dimensions: tuple[str, ...]
    """Dimensions, ``instrument`` first."""
    storage_class: str
    """File format (docs/architecture.md)."""
    is_calibration: bool = False
    """Found by validity range in CALIBRATION collections."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a pipeline."""

    label: str
    """Unique label (``cpBiasIsr``); cluster sections of templates name these."""
    kind: str
    """What it does: one of :data:`KINDS`."""
    dimensions: tuple[str, ...]
    """Quantum dimensions, ``instrument`` first: one quantum per distinct value."""
    inputs: tuple[str, ...]
    """Dataset types read from ``raw`` or earlier tasks of this pipeline."""
    output: str
    """Dataset type written (one per quantum)."""
    config: Mapping[str, Any]
    """Complete configuration (defaults filled in), read-only."""
    calibrations: tuple[str, ...] = ()
    """Calibration dataset types that must be found for every quantum."""
    optional_calibrations: tuple[str, ...] = ()
    """Calibration dataset types applied when found, skipped otherwise."""
    description: str = ""
    """Free text."""
    extra_outputs: tuple[str, ...] = ()
    """Further dataset types written by the same quantum (e.g. a run summary next to the results table)."""
    explicit: frozenset = frozenset()
    """Config keys the pipeline file (or an override) sets; the others are defaults."""
    calibration_connections: tuple[tuple[str, str], ...] = ()
    """ISR: (connection, dataset type read) of renamed calibration inputs (``flat`` -> ``flat_<LED_NAME>``)."""
    lsst_class: str = ""
    """For a task read from an LSST pipeline file: its class (``lsst.ip.isr.IsrTaskLSST``)."""

    @property
    def outputs(self) -> tuple[str, ...]:
        """``output`` followed by ``extra_outputs``."""
        return (self.output, *self.extra_outputs)


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline definition."""

    name: str
    """Pipeline name (``cpBias``)."""
    path: str
    """File it was read from."""
    tasks: tuple[TaskSpec, ...]
    """Tasks in an order where every input is written before it is read."""
    dataset_types: Mapping[str, DatasetTypeSpec]
    """Every dataset type read or written, by name."""
    description: str = ""
    """Free text."""
    verifies: str | None = None
    """For verification pipelines: the calibration under test (must be found first)."""
    notes: tuple[str, ...] = ()
    folded: tuple[str, ...] = ()
    """Labels of an LSST pipeline's tasks cpframe runs inside another (a template may still name them)."""
    """What cpframe does differently from the file (LSST pipelines: skipped plots, fields not implemented)."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Task labels in run order."""
        return tuple(t.label for t in self.tasks)

    def task(self, label: str) -> TaskSpec:
        """The task called ``label``; PipelineError names the known labels."""
        for t in self.tasks:
            if t.label == label:
                return t
        raise PipelineError(f"pipeline {self.name} has no task {label!r}; its tasks are {', '.join(self.labels)}.")

    @property
    def calibrations(self) -> tuple[str, ...]:
        """Required calibration types over all tasks, sorted."""
        return tuple(sorted({c for t in self.tasks for c in t.calibrations}))

    @property
    def optional_calibrations(self) -> tuple[str, ...]:
        """Optional calibration types over all tasks, sorted."""
        return tuple(sorted({c for t in self.tasks for c in t.optional_calibrations} - set(self.calibrations)))

    @property
    def products(self) -> tuple[str, ...]:
        """Outputs no task of this pipeline reads (what the pipeline is for)."""
        read = {i for t in self.tasks for i in t.inputs}
        return tuple(o for t in self.tasks for o in t.outputs if o not in read)


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _dims(value: Any, where: str, problems: list[str]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}.dimensions must be a list such as [exposure, detector], got {value!r}")
        return None
    bad = [d for d in value if d not in _DIM_ORDER]
    if bad:
        problems.append(f"{where}.dimensions has unknown {', '.join(map(repr, bad))}; use {', '.join(_DIM_ORDER)}")
        return None
    return tuple(d for d in _DIM_ORDER if d in set(value) | {"instrument"})


def _check_value(kind: Any, value: Any, where: str, problems: list[str]) -> Any:
    typ = kind
    if typ is bool:
        if not isinstance(value, bool):
            problems.append(f"{where} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where} must be a whole number, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where} must be a number, got {value!r}")
            return value
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            problems.append(f"{where} must be text, got {value!r}")
        return value
    if typ == "mapping":
        if not isinstance(value, Mapping):
            problems.append(f"{where} must be a mapping, got {value!r}")
            return {}
        return MappingProxyType(dict(value))
    if typ in ("planes", "plane"):
        items = [value] if typ == "plane" else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            problems.append(f"{where} must be {'a mask plane name' if typ == 'plane' else 'a list of mask planes'},"
                            f" got {value!r}")
            return value
        bad = [v for v in items if v not in MASK_PLANES]
        if bad:
            problems.append(f"{where} has unknown mask plane {', '.join(map(repr, bad))}; "
                            f"known: {', '.join(MASK_PLANES)}")
        return value if typ == "plane" else tuple(value)
    if typ == "strings":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            problems.append(f"{where} must be a list of names, got {value!r}")
            return value
        return tuple(items)
    if typ == "floats":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            problems.append(f"{where} must be a list of numbers, got {value!r}")
            return value
        return tuple(float(v) for v in value)
    if isinstance(typ, tuple) and typ[0] == "enum":
        if value not in typ[1]:
            problems.append(f"{where} must be one of {', '.join(typ[1])}, got {value!r}"
                            + (_suggest(value, typ[1]) if isinstance(value, str) else ""))
        return value
    raise AssertionError(typ)  # pragma: no cover - table error


def _task(label: str, sec: Any, problems: list[str]) -> dict | None:
    where = f"tasks.{label}"
    if not isinstance(sec, Mapping):
        problems.append(f"{where} must be a mapping with kind, dimensions, inputs, output, config; got {sec!r}")
        return None
    for key in sec:
        if key not in _TASK_KEYS:
            problems.append(f"{where}: unknown key {key!r}{_suggest(str(key), _TASK_KEYS)}; "
                            f"allowed: {', '.join(_TASK_KEYS)}")
    kind = sec.get("kind")
    if kind not in _kinds.REGISTRY:
        problems.append(f"{where}: unknown task kind {kind!r}{_suggest(str(kind), KINDS)}; "
                        f"known kinds: {', '.join(KINDS)}")
        return None
    dims = _dims(sec.get("dimensions"), where, problems)
    kind_dims = _kinds.REGISTRY[kind].dimensions
    if dims is not None and frozenset(dims) - {"instrument"} not in kind_dims:
        allowed = " or ".join("[" + ", ".join(d for d in _DIM_ORDER if d in s) + "]" for s in kind_dims)
        problems.append(f"{where}: a {kind} task runs per {allowed}, not {list(dims)}")
    inputs = sec.get("inputs", [])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        problems.append(f"{where}.inputs must be a list of dataset type names, got {inputs!r}")
        inputs = []
    output = sec.get("output")
    if not isinstance(output, str) or not output:
        problems.append(f"{where}.output must name the dataset type it writes, got {output!r}")
        output = None
    extra = sec.get("extraOutputs", [])
    if not isinstance(extra, list) or not all(isinstance(e, str) and e for e in extra):
        problems.append(f"{where}.extraOutputs must be a list of dataset type names, got {extra!r}")
        extra = []
    raw_cfg = sec.get("config") or {}
    if not isinstance(raw_cfg, Mapping):
        problems.append(f"{where}.config must be a mapping, got {raw_cfg!r}")
        raw_cfg = {}
    table = _kind_table(kind)
    cfg: dict[str, Any] = {}
    for key, value in raw_cfg.items():
        if key not in table:
            problems.append(f"{where}.config: unknown key {key!r} for a {kind} task{_suggest(str(key), table)}")
            continue
        cfg[key] = _check_value(table[key][0], value, f"{where}.config.{key}", problems)
    for key, (_, default) in table.items():
        if key not in cfg:
            if default is _ANY:
                problems.append(f"{where}.config.{key} is required for a {kind} task")
            elif default is not _kinds.UNSET:
                cfg[key] = default
    calibs = sec.get("calibrations", [])
    opt = sec.get("optionalCalibrations", [])
    for name, lst in (("calibrations", calibs), ("optionalCalibrations", opt)):
        if not isinstance(lst, list) or not all(isinstance(c, str) for c in lst):
            problems.append(f"{where}.{name} must be a list of calibration types, got {lst!r}")
        else:
            bad = [c for c in lst if c not in CALIBRATION_TYPES]
            if bad:
                problems.append(f"{where}.{name} has unknown calibration type {', '.join(map(repr, bad))}; "
                                f"known: {', '.join(sorted(CALIBRATION_TYPES))}")
    derived = _kinds.REGISTRY[kind].calibrations(cfg) if all(k in cfg for k in table) else None
    renamed = _calibration_connections(kind, sec.get("calibrationConnections"), where, problems)
    if derived is not None:
        if "calibrations" in sec or "optionalCalibrations" in sec:
            problems.append(f"{where}: an {kind} task's calibrations follow from its do* switches "
                            "(doBias, doDark, doFlat, doDefect, doBootstrap, ...); remove the list")
        calibs, opt = ([renamed.get(c, c) for c in cs] for cs in derived)
    if _kinds.REGISTRY[kind].reads_raw and dims is not None and list(inputs) != ["raw"]:
        problems.append(f"{where}.inputs: an {kind} task reads raw only, got {inputs!r}")
    return {"label": label, "kind": kind, "dimensions": dims or (), "inputs": tuple(inputs), "output": output,
            "config": MappingProxyType(cfg), "calibrations": tuple(calibs if isinstance(calibs, list | tuple) else ()),
            "optional_calibrations": tuple(opt if isinstance(opt, list | tuple) else ()),
            "description": str(sec.get("description", "")), "extra_outputs": tuple(extra),
            "explicit": frozenset(str(k) for k in raw_cfg), "calibration_connections": tuple(sorted(renamed.items()))}


def _calibration_connections(kind: str, value: Any, where: str, problems: list[str]) -> dict[str, str]:
    """``calibrationConnections`` of a task: {connection: dataset type} for :data:`RENAMABLE_CALIBRATIONS` of ISR."""
    if not value:
        return {}
    if kind != "isr":
        problems.append(f"{where}.calibrationConnections: only an isr task's calibration inputs can be renamed, "
                        f"not a {kind} task's")
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) and v for v in value.values()):
        problems.append(f"{where}.calibrationConnections must be a mapping such as {{flat: flat_m455l4}}, "
                        f"got {value!r}")
        return {}
    bad = [k for k in value if k not in RENAMABLE_CALIBRATIONS]
    if bad:
        problems.append(f"{where}.calibrationConnections: cannot rename {', '.join(map(repr, bad))}; an isr task's "
                        f"renamable calibration inputs are {', '.join(RENAMABLE_CALIBRATIONS)}")
    return {str(k): str(v) for k, v in value.items() if k in RENAMABLE_CALIBRATIONS}


def _matchable(task_dims: tuple[str, ...], input_dims: tuple[str, ...]) -> bool:
    """A quantum gathers inputs with more dimensions, or broadcasts inputs with fewer.

    ``exposure`` implies ``physical_filter`` (an exposure is taken through one filter).
    """
    def closure(d):
        return set(d) | {"instrument"} | ({"physical_filter"} if "exposure" in d else set())

    t, i = closure(task_dims), closure(input_dims)
    return t <= i or i <= t


def parse_pipeline(data: Any, path: str = "<pipeline>") -> PipelineSpec:
    """Validate a loaded pipeline mapping.

    Parameters
    ----------
    data : Any
        The YAML document.
    path : str
        Named in messages.

    Returns
    -------
    PipelineSpec

    Raises
    ------
    PipelineError
        Every problem at once: unknown task kind or config key (with a suggestion),
        wrong value types, dimensions a kind cannot run on, an input no earlier task
        writes, an output type not declared, dimension mismatches, cycles.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise PipelineError(f"{path}: a pipeline must be a YAML mapping with name and tasks, got {data!r}.")
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"unknown top-level key {key!r}{_suggest(str(key), _TOP_KEYS)}; "
                            f"allowed: {', '.join(_TOP_KEYS)}")
    name = data.get("name") or Path(path).stem
    types: dict[str, DatasetTypeSpec] = {
        n: DatasetTypeSpec(n, ("instrument", *d), s, n in CALIBRATION_TYPES) for n, (d, s) in PRODUCT_TYPES.items()
    }
    declared = data.get("datasetTypes") or {}
    if not isinstance(declared, Mapping):
        problems.append(f"datasetTypes must be a mapping name -> {{dimensions, storageClass}}, got {declared!r}")
        declared = {}
    for tname, sec in declared.items():
        where = f"datasetTypes.{tname}"
        if tname in PRODUCT_TYPES:
            problems.append(f"{where}: {tname} is a standard dataset type; do not redeclare it")
            continue
        if not isinstance(sec, Mapping):
            problems.append(f"{where} must be a mapping with dimensions and storageClass, got {sec!r}")
            continue
        dims = _dims(sec.get("dimensions"), where, problems)
        sc = sec.get("storageClass")
        if sc not in STORAGE_CLASSES:
            problems.append(f"{where}.storageClass must be one of {', '.join(STORAGE_CLASSES)}, got {sc!r}")
        if dims is not None:  # isCalibration: set by an output renamed from a calibration type (flat -> flat_<LED>)
            types[str(tname)] = DatasetTypeSpec(str(tname), dims, str(sc), bool(sec.get("isCalibration", False)))

    tasks_sec = data.get("tasks")
    if not isinstance(tasks_sec, Mapping) or not tasks_sec:
        problems.append(f"tasks must be a non-empty mapping label -> task, got {tasks_sec!r}")
        tasks_sec = {}
    parsed = [t for t in (_task(str(label), sec, problems) for label, sec in tasks_sec.items()) if t]
    for t in parsed:  # a renamed calibration input (flat -> flat_<LED>) is a calibration with the input's dimensions
        for conn, new in t["calibration_connections"]:
            if new not in types:
                dims, sc = PRODUCT_TYPES[conn]
                types[new] = DatasetTypeSpec(new, ("instrument", *dims), sc, True)

    writers: dict[str, str] = {}
    for t in parsed:
        for out in (t["output"], *t["extra_outputs"]):
            if out is None:
                continue
            if out in writers:
                problems.append(f"tasks.{t['label']}: output {out!r} is also written by {writers[out]}")
            writers[out] = t["label"]
            if out not in types:
                problems.append(f"tasks.{t['label']}.output {out!r} is not declared; add it under datasetTypes "
                                "with its dimensions and storageClass")
            elif out == "raw":
                problems.append(f"tasks.{t['label']}.output cannot be raw")
            elif t["dimensions"] and types[out].dimensions != t["dimensions"]:
                problems.append(f"tasks.{t['label']}.output {out!r} has dimensions {list(types[out].dimensions)} "
                                f"but the task runs per {list(t['dimensions'])}")
    for t in parsed:
        for i in t["inputs"]:
            if i != "raw" and i not in writers:
                problems.append(f"tasks.{t['label']}.inputs: {i!r} is not written by any task of this pipeline "
                                f"(calibrations go under calibrations, not inputs)")
            elif i in types and t["dimensions"] and not _matchable(t["dimensions"], types[i].dimensions):
                problems.append(f"tasks.{t['label']}.inputs: {i!r} ({list(types[i].dimensions)}) cannot be "
                                f"matched to quanta per {list(t['dimensions'])}")
    verifies = data.get("verifies")
    if verifies is not None and verifies not in CALIBRATION_TYPES and not (
            verifies in types and types[verifies].is_calibration):  # a renamed flat under test (flat_<LED_NAME>)
        problems.append(f"verifies must name a calibration type, got {verifies!r}")

    # run order (inputs first); a cycle leaves tasks unplaced
    order: list[dict] = []
    done = {"raw"}
    pending = list(parsed)
    while pending:
        ready = [t for t in pending if all(i in done or i not in writers for i in t["inputs"])]
        if not ready:
            problems.append("tasks form a cycle through their inputs: " + ", ".join(t["label"] for t in pending))
            break
        for t in ready:
            order.append(t)
            done.update((t["output"], *t["extra_outputs"]))
            pending.remove(t)
    if problems:
        items = "\n".join(f"  - {p}" for p in problems)
        raise PipelineError(f"{path}: pipeline {name} has {len(problems)} problem"
                            f"{'s' if len(problems) > 1 else ''}:\n{items}")
    return PipelineSpec(name=str(name), path=path, tasks=tuple(TaskSpec(**t) for t in order),
                        dataset_types=MappingProxyType(types), description=str(data.get("description", "")),
                        verifies=verifies, folded=tuple(str(x) for x in data.get("foldedLabels") or ()))


def load_pipeline(path: str | os.PathLike, *, overrides: Sequence[tuple[str, str, Any]] = (),
                  environ: Mapping[str, str] | None = None) -> PipelineSpec:
    """Read and validate a pipeline: cpframe's own format or a real LSST (pipetask) file.

    ``path`` may be a file, or a bare name (``cpBias``) looked up in ``$CPFRAME_PIPELINES``
    or the project's ``pipelines/``; ``file.yaml#a,b`` keeps the tasks (or subsets) a, b.
    An LSST file (``imports``, ``tasks: {label: {class, config}}``) is translated by
    :mod:`cpframe.execution.lsst_pipeline` into cpframe's task mapping first; both then go
    through :func:`parse_pipeline`, the one validation.

    Parameters
    ----------
    overrides : sequence of (label, field, value)
        ``--config label:field=value`` from the template's ``extraQgraphOptions``.
    environ : mapping, optional
        For ``$VAR`` in LSST import locations (default ``os.environ``).

    Raises
    ------
    PipelineError
        File missing (lists the available pipelines), bad YAML, or invalid content.
    """
    from cpframe.execution.lsst_pipeline import is_lsst_pipeline, read_lsst_pipeline, split_selection

    base_name, selection = split_selection(str(path))
    p = Path(base_name)
    base = Path(os.environ.get("CPFRAME_PIPELINES") or _default_dir())
    if not p.is_file() and str(p) == p.name:
        cand = base / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
        if cand.is_file():
            p = cand
    if not p.is_file():
        what = NOT_BUILT_PIPELINES.get(p.stem)
        if what:
            raise PipelineError(f"pipeline file {base_name!r} not found: cpframe does not build {what} yet "
                                f"(cp_pipe/cp_verify's {p.stem} pipeline).")
        raise PipelineError(f"pipeline file {base_name!r} not found. Available pipelines: "
                            f"{', '.join(list_pipelines(base)) or '(none)'} (in {base}).")
    try:
        data = yamlsafe.load(p.read_text(), str(p), max_nodes=100_000)  # bounded aliases (issue 11)
    except yamlsafe.YamlBombError as err:
        raise PipelineError(str(err)) from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{p}: not valid YAML: {err}") from None
    notes: list[str] = []
    extras: dict[str, dict] = {}
    folded: tuple[str, ...] = ()
    if is_lsst_pipeline(data):
        data, notes = read_lsst_pipeline(p, selection=selection, overrides=overrides, environ=environ)
        for label, sec in data["tasks"].items():
            extras[label] = {"explicit": frozenset(sec.pop("explicit", ())), "lsst_class": sec.pop("lsstClass", "")}
        folded = tuple(data.pop("foldedLabels", ()))
    elif selection or overrides:
        data = _select_and_override(data, str(p), selection, overrides, notes)
    try:
        spec = parse_pipeline(data, str(p))
    except PipelineError as err:
        replaced = [n for n in notes if "replaces the imported" in n]
        if not replaced:
            raise
        # say why the tasks do not connect: an instrument file redeclared them with another class
        raise PipelineError(f"{err}\n  because: " + "\n  because: ".join(replaced)) from None
    if folded:
        spec = dataclasses.replace(spec, folded=folded)
    if selection:
        spec = dataclasses.replace(spec, path=f"{p}#{','.join(selection)}")
    if extras:
        spec = dataclasses.replace(spec, tasks=tuple(
            dataclasses.replace(t, **extras[t.label]) if t.label in extras else t for t in spec.tasks))
    if overrides and not extras:
        over = {(lab, fld) for lab, fld, _ in overrides}
        spec = dataclasses.replace(spec, tasks=tuple(
            dataclasses.replace(t, explicit=t.explicit | {f for lab, f in over if lab == t.label})
            for t in spec.tasks))
    return dataclasses.replace(spec, notes=tuple(notes)) if notes else spec


# cp_pipe's display tasks (cpFlatBin8, cpBiasMosaic64...), which cpframe's own pipelines leave out
_DISPLAY_LABEL = re.compile(r"(Bin|Mosaic)\d+$")


def _select_and_override(data: Any, path: str, selection: Sequence[str],
                         overrides: Sequence[tuple[str, str, Any]], notes: list[str]) -> Any:
    """cpframe format: keep the selected labels, apply ``label:field=value`` to their config."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping):
        return data
    data = dict(data)
    tasks = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data["tasks"].items()}
    if selection:
        unknown = [s for s in selection if s not in tasks]
        if unknown:
            raise PipelineError(f"{path}#{','.join(selection)}: no task {unknown[0]!r}; its tasks are "
                                f"{', '.join(tasks)}")
        tasks = {k: v for k, v in tasks.items() if k in selection}
    for label, fld, value in overrides:
        if label not in tasks and fld.startswith("connections.") and _DISPLAY_LABEL.search(label):
            # cp_pipe renames of its display tasks (cpFlatBin8...), which cpframe's pipelines do not have
            notes.append(f"extraQgraphOptions --config {label}:{fld}: pipeline {Path(path).stem} has no task "
                         f"{label} (cp_pipe's display task); ignored")
            continue
        if label not in tasks:
            raise PipelineError(f"extraQgraphOptions --config {label}:{fld}: pipeline {Path(path).stem} has no "
                                f"task {label!r}{_suggest(label, tasks)}; its tasks: {', '.join(tasks)}")
        sec = tasks[label]
        if fld.startswith("connections.") and sec.get("kind") == "isr" \
                and fld.split(".", 1)[1] in RENAMABLE_CALIBRATIONS:
            _rename_calibration(data, sec, fld.split(".", 1)[1], str(value))
            continue
        if fld.startswith("connections."):
            conn = fld.split(".", 1)[1]
            if conn not in ("output", "outputData", "outputExposure", "outputExp"):
                raise PipelineError(f"extraQgraphOptions --config {label}:{fld}: cpframe pipelines rename only "
                                    f"the output (connections.output) and an isr task's calibration inputs "
                                    f"({', '.join(RENAMABLE_CALIBRATIONS)})")
            old = sec.get("output")
            declared = dict(data.get("datasetTypes") or {})
            if old in declared or old in PRODUCT_TYPES:
                dims, sc = (declared[old].get("dimensions"), declared[old].get("storageClass")) \
                    if old in declared and isinstance(declared[old], Mapping) else PRODUCT_TYPES[old]
                # a renamed calibration is a calibration (cp_pipe's flat_<LED_NAME> of a single-LED flat is certified)
                calib = old in CALIBRATION_TYPES or bool(old in declared and isinstance(declared[old], Mapping)
                                                         and declared[old].get("isCalibration"))
                declared[str(value)] = {"dimensions": list(dims or []), "storageClass": sc, "isCalibration": calib}
                data["datasetTypes"] = declared
            sec["output"] = value
            continue
        cfg = dict(sec.get("config") or {})
        cfg[fld] = value
        sec["config"] = cfg
    data["tasks"] = tasks
    return data


def _rename_calibration(data: dict, sec: dict, conn: str, new: str) -> None:
    """An ISR task reads the calibration ``new`` as its ``conn`` (cp_verify's ``connections.flat=flat_<LED>``):
    ``new`` is declared a calibration with ``conn``'s dimensions, and is what the pipeline verifies when it
    verified ``conn``."""
    sec["calibrationConnections"] = {**dict(sec.get("calibrationConnections") or {}), conn: new}
    if new not in PRODUCT_TYPES:
        dims, sc = PRODUCT_TYPES[conn]
        data["datasetTypes"] = {**dict(data.get("datasetTypes") or {}),
                                new: {"dimensions": list(dims), "storageClass": sc, "isCalibration": True}}
    if data.get("verifies") == conn:
        data["verifies"] = new


def _default_dir() -> Path:
    from cpframe.execution.templates import default_pipelines_dir

    return default_pipelines_dir()


def list_pipelines(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the pipeline files in ``directory`` (default: the project's pipelines/)."""
    d = Path(directory) if directory else _default_dir()
    return sorted(p.stem for p in d.glob("*.yaml"))
