"""Real LSST pipeline files (the ``pipetask`` format of cp_pipe / cp_verify) -> cpframe tasks.

cpframe keeps ONE pipeline reader (:func:`cpframe.execution.pipeline.load_pipeline`) and one
validation (:func:`~cpframe.execution.pipeline.parse_pipeline`).  A file in the LSST format
(``imports``, ``tasks: label: {class, config}``, ``subsets``, ``parameters``, ``contracts``) is
first translated here into cpframe's own task mapping (``kind``, ``dimensions``, ``inputs``,
``output``, ``config``), which then goes through the same validation as cpframe's own
pipelines.  docs/submit.md "Real LSST pipeline files" is the user's reference.

What is read (pipe_base's ``PipelineIR`` semantics, in our own words):

* ``imports``: each ``location`` (``$VAR`` expanded) is read first, recursively; ``include`` /
  ``exclude`` keep or drop labels (or subset names); a task the importing file declares
  again with the same class gets the imported configuration first, then its own.
* ``tasks``: ``label: class`` or ``label: {class, config}``; ``config`` may be a list of
  mappings.  Field names are dotted (``crosstalk.doQuadraticCrosstalkCorrection``), and a
  ``python:`` block is read statement by statement (never executed): only
  ``configureIsrTaskLSSTForCalibrations(config)``, ``config.a.b = <literal>`` and
  ``config.a.append(<literal>)`` are understood; anything else is an error naming the line.
* ``parameters``: a config value ``parameters.NAME`` is replaced by the parameter.
* ``subsets`` and ``file.yaml#a,b``: a selection of labels or subset names.
* ``contracts``: evaluated when every value they compare is known (set in a file, an
  override or a class default below); a broken contract is an error.

Each class maps onto a cpframe task kind through that kind's ``task_classes`` (:func:`lsst_classes`; no table here): which connections are the
input(s) and output(s), which config fields map onto which cpframe key, and which fields are
accepted but not implemented by cpframe (reported as plan notes when set).  Visualisation
and analysis tasks are skipped with a note (cpframe does not make those plots); a class that
builds a calibration cpframe does not build yet is a clear error; an unknown class or field
is an error naming the file, the label and the field.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from cpframe.core.errors import PipelineError
from cpframe.execution.dataset_types import PRODUCT_TYPES, RENAMABLE_CALIBRATIONS
from cpframe.execution.kinds.defects import LSST_FIELDS as _DEFECT_FIELDS
from cpframe.execution.kinds.defects import LSST_IGNORED as _DEFECT_IGNORED
from cpframe.execution.kinds.illumination import CHAIN as _CHAIN
from cpframe.execution.lsst_config import CALIB_BASELINE, MISSING, NOT_BUILT, SKIPPED, python_ops
from cpframe.execution.lsst_contracts import check_contracts
from cpframe.science.configs.ptc import FIT_TYPES as _PTC_FIT_TYPES

__all__ = [
    "lsst_classes",
    "ClassMap",
    "is_lsst_pipeline",
    "read_lsst_pipeline",
    "split_selection",
]

# ------------------------------------------------------------------------------------------
# class table
# ------------------------------------------------------------------------------------------
from cpframe.execution.kinds import REGISTRY, ClassMap


#: Known LSST task classes cpframe runs -> how (from each kind's ``task_classes``; short names:
#: ``lsst.cp.pipe.ptc.X`` == ``lsst.cp.pipe.X``).
def lsst_classes() -> dict[str, ClassMap]:
    """Every kind's ``task_classes`` (read when needed: a kind defined later is known too)."""
    return {c: m for k in REGISTRY.values() for c, m in k.task_classes.items()}


def __getattr__(name: str) -> Any:
    if name == "CLASSES":  # the table as it is now (kept for callers of the former constant)
        return lsst_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FOLDED = {c: role for k in REGISTRY.values() for c, role in k.folded_classes.items()}
# Defect measurement: three measure tasks and a merge in cp_pipe; one defects task in cpframe.
_DEFECT_MEASURE = tuple(c for c, role in _FOLDED.items() if role == "measure")
_DEFECT_MERGE = tuple(c for c, role in _FOLDED.items() if role == "merge")
# PTC gain-ratio adjustment: folded (its output is the solved PTC).
_PTC_ADJUST = tuple(c for c, role in _FOLDED.items() if role == "adjust")
# Crosstalk filter: folded (the solve filters, doFiltering; its output is the filtered matrix).
_XT_FILTER = tuple(c for c, role in _FOLDED.items() if role == "filter")

_STORAGE = {"skyImage": "fits-masked", "fringeMeasure": "fits-masked", "starMeasure": "json", "illuminationSolve": "fits-masked", "crosstalkExtract": "json", "linearitySolve": "json", "linearityNormalize": "json", "isr": "fits-masked", "darkCr": "fits-masked", "flatMeasure": "json", "flatNormalize": "json",
            "combine": "fits-masked", "ptcExtract": "json", "ptcSolve": "fits-ptc", "verifyStats": "json",
            "defects": "ecsv-defects", "flatGradientApply": "fits-masked", "combineTwoFlats": "fits-masked"}


def _canonical(cls: str) -> str:
    """``lsst.ip.isr.isrTask.IsrTask`` -> ``lsst.ip.isr.IsrTask``; ``lsst.cp.pipe.X`` == ``lsst.cp.pipe.ptc.X``."""
    known = (*lsst_classes(), *SKIPPED, *NOT_BUILT, *_DEFECT_MEASURE, *_DEFECT_MERGE, *_PTC_ADJUST, *_XT_FILTER,
             *_CHAIN)
    if cls in known:
        return cls
    short = cls.rsplit(".", 1)[-1]
    for k in known:
        if k.rsplit(".", 1)[-1] == short and k.split(".")[:3] == cls.split(".")[:3]:
            return k
    return cls


def _all_known() -> list[str]:
    return sorted({*lsst_classes(), *SKIPPED, *NOT_BUILT, *_DEFECT_MEASURE, *_DEFECT_MERGE, *_PTC_ADJUST, *_XT_FILTER,
                   *_CHAIN})


# ------------------------------------------------------------------------------------------
# reading the files
# ------------------------------------------------------------------------------------------
@dataclass
class _Task:
    label: str
    cls: str
    file: str
    ops: list = field(default_factory=list)  # (field, op, value, file) in order; op "set" | "append"


@dataclass
class _Doc:
    path: str
    description: str = ""
    tasks: dict = field(default_factory=dict)  # label -> _Task
    subsets: dict = field(default_factory=dict)  # name -> [labels]
    contracts: list = field(default_factory=list)  # (expr, msg, file)
    parameters: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def is_lsst_pipeline(data: Any) -> bool:
    """True for a pipetask-format document (``imports`` or tasks with ``class``)."""
    if not isinstance(data, Mapping):
        return False
    if "imports" in data or "contracts" in data or "subsets" in data or "parameters" in data:
        return True
    tasks = data.get("tasks")
    return isinstance(tasks, Mapping) and any(
        isinstance(t, str) or (isinstance(t, Mapping) and "class" in t) for t in tasks.values())


def split_selection(path: str) -> tuple[str, tuple[str, ...]]:
    """``file.yaml#a,b`` -> (``file.yaml``, ("a", "b")).

    >>> split_selection("cpBias.yaml#cpBiasIsr,cpBiasCombine")
    ('cpBias.yaml', ('cpBiasIsr', 'cpBiasCombine'))
    >>> split_selection("cpSky.yaml")
    ('cpSky.yaml', ())
    """
    base, sep, sel = str(path).partition("#")
    return base, tuple(s.strip() for s in sel.split(",") if s.strip()) if sep else ()


_ENV = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")
#: Packages whose pipelines only add plots: an import from them is skipped when their variable is unset.
_OPTIONAL_PACKAGES = {"ANALYSIS_TOOLS_DIR": "analysis_tools plots"}


def _expand_location(loc: str, where: str, environ: Mapping[str, str]) -> str | None:
    unset = [m.group(1) or m.group(2) for m in _ENV.finditer(loc) if (m.group(1) or m.group(2)) not in environ]
    if unset:
        if all(u in _OPTIONAL_PACKAGES for u in unset):
            return None
        raise PipelineError(f"{where}: imports location {loc!r} needs {', '.join(unset)}, which "
                            f"{'is' if len(unset) == 1 else 'are'} not set. Set up the stack package or export "
                            "the variable.")
    return _ENV.sub(lambda m: environ[m.group(1) or m.group(2)], loc)


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise PipelineError(f"pipeline file {str(path)!r} cannot be read: {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: not valid YAML: {err}") from None


def _config_items(cfg: Any, where: str) -> list[tuple[str, Any]]:
    if cfg is None:
        return []
    if isinstance(cfg, Mapping):
        cfg = [cfg]
    if not isinstance(cfg, list):
        raise PipelineError(f"{where}.config must be a mapping of field: value, got {cfg!r}")
    out = []
    for block in cfg:
        if not isinstance(block, Mapping):
            raise PipelineError(f"{where}.config must be a mapping of field: value, got {block!r}")
        for k, v in block.items():
            out.append((str(k), v))
    return out


def _read_doc(path: Path, environ: Mapping[str, str], seen: tuple[Path, ...]) -> _Doc:
    path = path.resolve()
    if path in seen:
        raise PipelineError(f"{seen[0]}: imports form a cycle: {' -> '.join(map(str, (*seen, path)))}")
    data = _load(path)
    where = str(path)
    if not isinstance(data, Mapping):
        raise PipelineError(f"{where}: a pipeline must be a YAML mapping, got {data!r}.")
    allowed = ("description", "instrument", "imports", "tasks", "subsets", "contracts", "parameters", "steps",
               "connections")
    bad = [k for k in data if k not in allowed]
    if bad:
        raise PipelineError(f"{where}: unknown top-level key {bad[0]!r}; an LSST pipeline has "
                            f"{', '.join(allowed[:-1])}.")
    doc = _Doc(str(path), str(data.get("description", "")))
    if "connections" in data:  # cp_verify verifyPtc.yaml: contracts written under a key pipe_base ignores
        doc.notes.append(f"{path.name}: top-level 'connections' is not a pipeline section; ignored (as pipetask does)")
    imports = data.get("imports") or []
    if not isinstance(imports, list):
        raise PipelineError(f"{where}: imports must be a list of locations, got {imports!r}")
    params = dict(data.get("parameters") or {})
    for item in imports:
        spec = {"location": item} if isinstance(item, str) else item
        if not isinstance(spec, Mapping) or "location" not in spec:
            raise PipelineError(f"{where}: each import needs a location, got {item!r}")
        unknown = set(spec) - {"location", "include", "exclude", "importContracts", "importSteps",
                               "labeledSubsetModifyMode", "instrument"}
        if unknown:
            raise PipelineError(f"{where}: imports: unknown key {sorted(unknown)[0]!r}")
        loc = _expand_location(str(spec["location"]), where, environ)
        if loc is None:
            doc.notes.append(f"{path.name}: import {spec['location']} skipped: "
                             f"{_OPTIONAL_PACKAGES['ANALYSIS_TOOLS_DIR']} are not made by cpframe")
            continue
        sub_path = Path(loc) if Path(loc).is_absolute() else path.parent / loc
        if not sub_path.is_file():
            raise PipelineError(f"{where}: imported pipeline {loc!r} not found.")
        sub = _read_doc(sub_path, environ, (*seen, path))
        include, exclude = spec.get("include"), spec.get("exclude")
        if include is not None and exclude is not None:
            raise PipelineError(f"{where}: an import takes include or exclude, not both")
        keep = set(sub.tasks)
        if include is not None:
            keep = set(_expand_labels(sub, list(include), f"{where}: imports.include"))
        if exclude is not None:
            keep -= set(_expand_labels(sub, list(exclude), f"{where}: imports.exclude"))
        for label in sub.tasks:
            if label in keep:
                if label in doc.tasks:
                    raise PipelineError(f"{where}: task {label!r} is imported twice")
                doc.tasks[label] = sub.tasks[label]
        for name, labels in sub.subsets.items():
            doc.subsets[name] = [lab for lab in labels if lab in keep]
        if spec.get("importContracts", True):
            doc.contracts.extend(sub.contracts)
        for k, v in sub.parameters.items():
            params.setdefault(k, v)
        doc.notes.extend(sub.notes)
    doc.parameters = params

    tasks = data.get("tasks") or {}
    if not isinstance(tasks, Mapping):
        raise PipelineError(f"{where}: tasks must be a mapping label -> {{class, config}}, got {tasks!r}")
    for label, sec in tasks.items():
        label = str(label)
        tw = f"{where}: tasks.{label}"
        if isinstance(sec, str):
            sec = {"class": sec}
        if not isinstance(sec, Mapping):
            raise PipelineError(f"{tw} must be a class name or a mapping with class and config, got {sec!r}")
        bad = set(sec) - {"class", "config"}
        if bad:
            raise PipelineError(f"{tw}: unknown key {sorted(bad)[0]!r}; a task has class and config")
        cls = sec.get("class")
        items = _config_items(sec.get("config"), tw)
        prev = doc.tasks.get(label)
        if cls is None and prev is None:
            raise PipelineError(f"{tw} has no class")
        if prev is not None and (cls is None or _canonical(str(cls)) == _canonical(prev.cls)):
            task = _Task(label, prev.cls, str(path), list(prev.ops))
        else:
            if prev is not None:  # pipetask: another class replaces the task, its configuration is dropped
                doc.notes.append(f"{path.name}: tasks.{label}: class {str(cls).rsplit('.', 1)[-1]} replaces the "
                                 f"imported {prev.cls.rsplit('.', 1)[-1]} with its own defaults (its connections "
                                 "and configuration are not imported, as in pipetask)")
            task = _Task(label, str(cls), str(path))
        for k, v in items:
            task.ops.append((k, "set", v, str(path)))
        doc.tasks[label] = task

    subsets = data.get("subsets") or {}
    for name, sec in subsets.items():
        labels = sec.get("subset") if isinstance(sec, Mapping) else sec
        if not isinstance(labels, list):
            raise PipelineError(f"{where}: subsets.{name} must list task labels, got {sec!r}")
        doc.subsets[str(name)] = [str(lab) for lab in labels]
    for c in data.get("contracts") or []:
        if isinstance(c, Mapping):
            doc.contracts.append((str(c.get("contract")), c.get("msg"), str(path)))
        else:
            doc.contracts.append((str(c), None, str(path)))
    return doc


def _expand_labels(doc: _Doc, names: Sequence[str], where: str) -> list[str]:
    out: list[str] = []
    for n in names:
        if n in doc.subsets:
            out.extend(doc.subsets[n])
        elif n in doc.tasks:
            out.append(n)
        else:
            known = sorted({*doc.tasks, *doc.subsets})
            close = difflib.get_close_matches(n, known, n=1)
            raise PipelineError(f"{where}: {n!r} is neither a task label nor a subset of this pipeline"
                                f"{f' (did you mean {close[0]!r}?)' if close else ''}; labels and subsets: "
                                f"{', '.join(known)}")
    return out


# ------------------------------------------------------------------------------------------
# translation
# ------------------------------------------------------------------------------------------
def _real_field(cls: str, name: str) -> bool:
    """True when some version of the real class ``cls`` has the config field ``name`` (its top-level part):
    a field cpframe does not implement, not a typo (:mod:`cpframe.execution.lsst_fields`)."""
    from cpframe.execution.lsst_fields import known_fields

    return name.split(".", 1)[0] in known_fields(cls)


def _ignored(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


@dataclass
class _Resolved:
    label: str
    cls: str
    file: str
    values: dict  # LSST field -> value (as set)
    notes: list


def _apply_ops(task: _Task, cmap: ClassMap | None, params: Mapping[str, Any], notes: list[str]) -> dict:
    values: dict[str, Any] = {}
    for fld, op, val, file in task.ops:
        where = f"{file}: tasks.{task.label}"
        if fld == "python":
            for sub in python_ops(str(val), where, file):
                _set(values, sub, task, notes)
            continue
        if isinstance(val, str) and val.startswith("parameters."):
            pname = val.split(".", 1)[1]
            if pname not in params:
                raise PipelineError(f"{where}.config.{fld}: parameter {pname!r} is not defined under parameters")
            val = params[pname]
        _set(values, (fld, op, val, file), task, notes)
    return values


def _set(values: dict, op: tuple, task: _Task, notes: list[str]) -> None:
    fld, kind, val, file = op
    if fld == "__note__":
        notes.append(f"{task.label}: {val}")
        return
    if kind == "set":
        values[fld] = val
        return
    cur = values.get(fld, MISSING)
    if cur is MISSING:
        cmap = lsst_classes().get(_canonical(task.cls))
        cur = list(_default(cmap, fld)) if cmap is not None and _default(cmap, fld) is not None else []
    cur = list(cur)
    if kind == "append":
        cur.append(val)
    else:
        cur.extend(val)
    values[fld] = cur


def _default(cmap: ClassMap, fld: str) -> Any:
    if fld in cmap.defaults:
        return cmap.defaults[fld]
    if fld == "mask" and cmap.kind == "combine":
        return ["SAT", "DETECTED", "INTRP"]  # CalibCombineConfig.mask default
    return None


def _connection(cmap: ClassMap, values: Mapping[str, Any], conn: str, default: str) -> str:
    return str(values.get(f"connections.{conn}", default))


def read_lsst_pipeline(path: str | os.PathLike, *, selection: Sequence[str] = (),
                       overrides: Sequence[tuple[str, str, Any]] = (),
                       environ: Mapping[str, str] | None = None) -> tuple[dict, list[str]]:
    """Read an LSST pipeline file and translate it into cpframe's pipeline mapping.

    Parameters
    ----------
    path : path-like
        The pipeline file (``$CP_PIPE_DIR/pipelines/LSSTCam/cpBias.yaml``).
    selection : sequence of str
        Labels or subset names (``#a,b``); empty: every task.
    overrides : sequence of (label, field, value)
        ``--config`` overrides from ``extraQgraphOptions``, applied last.
    environ : mapping, optional
        For ``$VAR`` in import locations (default ``os.environ``).

    Returns
    -------
    data, notes
        A mapping :func:`cpframe.execution.pipeline.parse_pipeline` validates, and notes for
        the plan (skipped tasks, fields cpframe accepts but does not implement).

    Raises
    ------
    PipelineError
        Unknown class or field (naming file, label and field), a class building a calibration
        cpframe does not build yet, a python config line it cannot read, a broken contract,
        an unknown label in the selection or an override, imports it cannot find.
    """
    env = dict(os.environ if environ is None else environ)
    p = Path(path)
    doc = _read_doc(p, env, ())
    notes = list(doc.notes)
    labels = list(doc.tasks)
    if selection:
        chosen = set(_expand_labels(doc, list(selection), f"{p}#{','.join(selection)}"))
        labels = [lab for lab in labels if lab in chosen]
    for label, fld, val in overrides:
        if label not in doc.tasks:
            close = difflib.get_close_matches(label, list(doc.tasks), n=1)
            raise PipelineError(f"extraQgraphOptions --config {label}:{fld}: pipeline {p.name} has no task "
                                f"{label!r}{f' (did you mean {close[0]!r}?)' if close else ''}; its tasks: "
                                f"{', '.join(doc.tasks)}")
        doc.tasks[label].ops.append((fld, "set", val, "extraQgraphOptions"))

    # classify first: a class cpframe cannot run is reported before its configuration is read
    classes = {label: _canonical(doc.tasks[label].cls) for label in labels}
    not_built = {lab: NOT_BUILT[c] for lab, c in classes.items() if c in NOT_BUILT}
    if not_built:
        what = sorted(set(not_built.values()))
        raise PipelineError(
            f"{p}: cpframe does not build {', '.join(what)} yet (tasks "
            f"{', '.join(f'{lab} ({classes[lab]})' for lab in not_built)}). The calibration types cpframe "
            "builds and verifies, and the real task classes it runs, are listed in docs/kinds.md.")
    unknown = [lab for lab, c in classes.items() if c not in lsst_classes() and c not in SKIPPED
               and c not in _DEFECT_MEASURE + _DEFECT_MERGE + _PTC_ADJUST + _XT_FILTER and c not in _CHAIN]
    if unknown:
        t = doc.tasks[unknown[0]]
        close = difflib.get_close_matches(t.cls, _all_known(), n=1)
        raise PipelineError(f"{t.file}: tasks.{t.label}: unknown task class {t.cls!r}"
                            f"{f' (did you mean {close[0]!r}?)' if close else ''}. cpframe runs the cp_pipe, "
                            "ip_isr and cp_verify classes listed in docs/submit.md.")
    resolved: dict[str, _Resolved] = {}
    for label in labels:
        t = doc.tasks[label]
        tnotes: list[str] = []
        values = {} if classes[label] in SKIPPED and not _connections_only(t) else \
            _apply_ops(t, lsst_classes().get(classes[label]), doc.parameters, tnotes)
        resolved[label] = _Resolved(label, classes[label], t.file, values, tnotes)
    check_contracts(doc.contracts, resolved, lsst_classes())

    tasks: dict[str, dict] = {}
    dataset_types: dict[str, dict] = {}
    skipped_outputs: set[str] = set()
    problems: list[str] = []
    renamed: dict[str, str] = {}  # folded outputs: adjust output -> solve output name kept
    filtered: set[str] = set()  # crosstalk matrices a folded CrosstalkFilterTask writes
    isr_stats: dict[str, str] = {}  # ISR outputStatistics name -> its output exposure (which carries them)
    binned: dict[str, str] = {}  # PTC extraction's binned images -> its pair measurements (linearity reads them)
    folded_labels: list[str] = []  # a template's cluster/pipetask sections may name them
    alias: dict[str, str] = {}  # folded chain steps (illumination correction): output -> the input read instead
    defect_measures = [r for r in resolved.values() if r.cls in _DEFECT_MEASURE]
    for label, r in resolved.items():
        for n in r.notes:
            notes.append(n)
        if r.cls in SKIPPED:
            notes.append(f"{label} ({r.cls.rsplit('.', 1)[-1]}): not run, cpframe does not make {SKIPPED[r.cls]}")
            for k, v in r.values.items():
                # what the skipped task writes (connections.output*), not what it reads: cpFlatBin8 reads the
                # flat that cpFlatFitGradientsReference reads too
                if k.startswith("connections.output") and isinstance(v, str):
                    skipped_outputs.add(v)
            continue
        if r.cls in _DEFECT_MEASURE:
            continue  # folded into the merge task below
        if r.cls in _PTC_ADJUST:
            src = r.values.get("connections.input_ptc", "ptcUnadjusted")
            out = r.values.get("connections.output_ptc", "ptc")
            renamed[str(src)] = str(out)
            notes.append(f"{label} (PhotonTransferCurveAdjustGainRatiosTask): gain-ratio adjustment is not "
                         f"implemented by cpframe; the solved PTC is written as {out}")
            continue
        if r.cls in _XT_FILTER:
            src = str(r.values.get("connections.inputCrosstalk", "crosstalkProposal"))
            out = str(r.values.get("connections.outputCrosstalk", "crosstalk"))
            renamed[src] = out
            filtered.add(out)
            notes.append(f"{label} (CrosstalkFilterTask): cpframe's crosstalk solve filters itself "
                         f"(doFiltering) and writes {out}")
            continue
        if r.cls in _DEFECT_MERGE:
            tasks[label] = _defects_task(r, defect_measures, notes, problems)
            continue
        if r.cls in _CHAIN:  # source tables, association, FGCM build/output: folded into illuminationSolve
            ic, idef, oc, odef, how = _CHAIN[r.cls]
            src = str(r.values.get(f"connections.{ic}", idef))
            out = str(r.values.get(f"connections.{oc}", odef))
            if how == "input":
                alias[out] = src
            else:
                renamed[src] = out
            notes.append(f"{label} ({r.cls.rsplit('.', 1)[-1]}): folded into cpframe's illuminationSolve")
            folded_labels.append(label)
            continue
        cmap = lsst_classes()[r.cls]
        if cmap.kind == "ptcExtract":
            binned[str(r.values.get("connections.outputBinnedImages", "cpPtcPairBinned"))] = \
                _connection(cmap, r.values, *cmap.output)
        if cmap.kind == "isr" and "connections.outputStatistics" in r.values:
            isr_stats[str(r.values["connections.outputStatistics"])] = _connection(cmap, r.values, *cmap.output)
        cfg: dict[str, Any] = dict(cmap.fixed)
        explicit: list[str] = []
        accepted: list[str] = []
        renames: dict[str, str] = {}  # ISR's flat read as flat_<LED_NAME> (cp_verify's connections.flat)
        for fld, val in r.values.items():
            if fld == "__baseline__":
                continue
            if fld.startswith("connections."):
                conn = fld.split(".", 1)[1]
                known = ({c for c, _ in cmap.inputs} | {cmap.output[0]} | set(cmap.extra_connections)
                         | {c for c, _ in cmap.calibrations} | {c for c, _ in cmap.extra_outputs})
                if conn not in known and not cmap.kind.startswith("verify"):
                    problems.append(f"{r.file}: tasks.{label}: unknown connection {conn!r} for "
                                    f"{r.cls.rsplit('.', 1)[-1]}; known: {', '.join(sorted(known))}")
                if cmap.kind == "isr" and conn in RENAMABLE_CALIBRATIONS and str(val) != conn:
                    renames[conn] = str(val)
                continue
            if fld in cmap.fields:
                cfg[cmap.fields[fld]] = val
                if fld in _explicit_fields(doc.tasks[label]):
                    explicit.append(cmap.fields[fld])
            elif _ignored(fld, cmap.ignored) or _real_field(r.cls, fld):
                if fld in _explicit_fields(doc.tasks[label]):
                    accepted.append(f"{fld}={val!r}")
            else:
                from cpframe.execution.lsst_fields import known_fields

                close = difflib.get_close_matches(fld, [*cmap.fields, *cmap.ignored, *known_fields(r.cls)], n=1)
                problems.append(f"{r.file}: tasks.{label}: unknown config field {fld!r} for "
                                f"{r.cls.rsplit('.', 1)[-1]}{f' (did you mean {close[0]!r}?)' if close else ''}")
        if accepted:
            notes.append(f"{label}: accepted, not implemented by cpframe: {', '.join(accepted)}")
        if cmap.kind == "isr":
            base = dict(CALIB_BASELINE) if "__baseline__" in r.values else dict(cmap.defaults)
            for k, v in base.items():
                cfg.setdefault(cmap.fields[k], v)
            if cfg.get("doQuadraticCrosstalkCorrection") and not cfg.get("doCrosstalk"):
                cfg["doQuadraticCrosstalkCorrection"] = False
        for k, v in cmap.defaults.items():
            if cmap.kind != "isr" and cmap.fields.get(k):
                cfg.setdefault(cmap.fields[k], v)
        inputs = [_connection(cmap, r.values, c, d) for c, d in cmap.inputs
                  if c not in cmap.optional_inputs or f"connections.{c}" in r.values]
        out = _connection(cmap, r.values, *cmap.output)
        if cmap.kind == "flatGradientFit" and not cfg.get("doReferenceGradient"):
            # cp_pipe's connections keep output_gradient, not output_reference_gradient, without do_reference_gradient
            out = _connection(cmap, r.values, "output_gradient", "flat_gradient")
        task = {"kind": cmap.kind, "dimensions": list(cmap.dimensions), "inputs": inputs, "output": out,
                "config": cfg, "explicit": explicit, "lsstClass": r.cls}
        if renames:
            task["calibrationConnections"] = renames
        if cmap.extra_outputs:
            task["extraOutputs"] = [_connection(cmap, r.values, c, d) for c, d in cmap.extra_outputs]
        if cmap.calibrations:
            task["calibrations"] = [_connection(cmap, r.values, c, d) for c, d in cmap.calibrations]
        if cmap.kind == "combine":
            ct = cfg.get("calibrationType")
            if ct in ("bias", "dark", "flat") and out == f"{ct}Bootstrap":
                cfg["calibrationType"] = out
        if cmap.kind == "bfkSolve" and cfg.get("useBfkPtc") is False:
            # cp_pipe: without useBfkPtc the kernel is solved from the certified PTC (inputPtc)
            task["inputs"] = []
            task["calibrations"] = [_connection(cmap, r.values, "inputPtc", "ptc")]
        if cmap.kind == "electrostaticBfSolve":
            # cp_pipe: useBfPtc reads the pipeline's own PTC (inputBfPtc); otherwise the certified ptc (inputPtc),
            # the raws (dummy) only placing the quantum
            if cfg.get("useBfPtc"):
                task["inputs"] = [_connection(cmap, r.values, "inputBfPtc", "bfPtc")]
            else:
                task["calibrations"] = [_connection(cmap, r.values, "inputPtc", "ptc")]
        if cmap.kind == "ptcSolve" and cfg.get("ptcFitType") not in (None, *_PTC_FIT_TYPES):
            notes.append(f"{label}: ptcFitType={cfg['ptcFitType']!r} is not implemented by cpframe "
                         f"({', '.join(_PTC_FIT_TYPES)} are); EXPAPPROXIMATION is fitted")
            cfg["ptcFitType"] = "EXPAPPROXIMATION"
        if cmap.kind == "verifyStats" and cmap.inputs[0][0] == "inputCalib":
            task["inputs"] = []
            task["calibrations"] = [inputs[0]]
        tasks[label] = task

    # folded PTC adjustment / crosstalk filter: the solve writes the adjusted (filtered) name
    lab_of = {id(t): lab for lab, t in tasks.items()}
    for t in tasks.values():
        if t["output"] in renamed:
            t["output"] = renamed[t["output"]]
            if t["output"] in filtered and t["kind"] == "crosstalkSolve":
                t["config"]["doFiltering"] = True
        # ISR statistics (cpCti): cpframe's ISR output carries them
        t["inputs"] = [isr_stats.get(i, i) for i in t["inputs"]]
        if t["kind"] == "linearitySolve":
            _linearity_inputs(lab_of[id(t)], t, resolved[lab_of[id(t)]], binned, notes)
        for k, i in enumerate(t["inputs"]):  # folded chain steps: read what the first of them read
            seen = set()
            while i in alias and i not in seen:
                seen.add(i)
                i = alias[i]
            t["inputs"][k] = i
    # verify merges: the stage of the verify task they (transitively) read; run merges write a summary too
    writer = {t["output"]: lab for lab, t in tasks.items()}
    for t in tasks.values():
        # a calibration connection (inputCalib, inputPtc) naming what a task of this pipeline writes is read
        # from that task (cp_verify's second linearizer); one that nothing here writes is a calibration
        if t["kind"] in ("verifyStats", "linearitySolve"):
            t["inputs"] = [*t["inputs"], *[c for c in t.get("calibrations", []) if c in writer]]
            t["calibrations"] = [c for c in t.get("calibrations", []) if c not in writer]
            t["calibrations"] += [i for i in t["inputs"] if i not in writer and i in PRODUCT_TYPES]
            t["inputs"] = [i for i in t["inputs"] if i in writer or i not in PRODUCT_TYPES]
            if not t["calibrations"]:
                t.pop("calibrations")
    for lab, t in tasks.items():
        if t["kind"] != "verifyMerge":
            continue
        src = t["inputs"][0] if t["inputs"] else None
        seen = set()
        while src in writer and src not in seen:
            seen.add(src)
            w = tasks[writer[src]]
            if "stage" in w["config"]:
                t["config"]["stage"] = w["config"]["stage"]
                break
            src = w["inputs"][0] if w["inputs"] else None
        if "stage" not in t["config"]:
            problems.append(f"{resolved[lab].file}: tasks.{lab}: cannot tell which verification it merges "
                            f"(its input {t['inputs']} is not written by a cp_verify task of this pipeline)")
        if not t["dimensions"]:
            stats = resolved[lab].values.get("connections.outputStats")
            if stats:
                t["extraOutputs"] = [str(stats)]
    # tasks reading what a skipped task writes are skipped too (none in the real files)
    for lab in [lab for lab, t in tasks.items() if set(t["inputs"]) & skipped_outputs]:
        notes.append(f"{lab}: not run, it reads the output of a skipped task")
        del tasks[lab]
    if problems:
        items = "\n".join(f"  - {x}" for x in problems)
        raise PipelineError(f"{p}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the LSST "
                            f"pipeline:\n{items}")
    if not tasks:  # cpPlotPtc.yaml: plots only
        what = sorted({SKIPPED.get(r.cls, r.cls.rsplit('.', 1)[-1]) for r in resolved.values()})
        raise PipelineError(f"{p}: nothing for cpframe to run: every task of this pipeline ("
                            f"{', '.join(resolved)}) makes what cpframe does not make ({', '.join(what)}). "
                            "Submit the pipeline that builds the calibration instead (docs/kinds.md).")
    # declare intermediate / renamed outputs with the task's dimensions
    for lab, t in tasks.items():
        for i, name in enumerate([t["output"], *t.get("extraOutputs", [])]):
            if name in PRODUCT_TYPES:
                continue
            sc = _STORAGE.get(t["kind"], "json")
            if t["kind"] == "verifyMerge":
                sc = "ecsv" if (not t["dimensions"] and i == 0) else "json"
            elif i > 0:  # ClassMap.extra_outputs
                sc = "json"
            dataset_types[name] = {"dimensions": list(t["dimensions"]), "storageClass": sc}
            if i == 0 and t["kind"] == "combine" and not any(name in u.get("inputs", ()) for u in tasks.values()):
                # a combine's final product renamed (cpFlat's flat_<LED_NAME>) is a calibration, as in cp_pipe
                dataset_types[name]["isCalibration"] = True
    verifies = None
    stages = {t["config"].get("stage") for t in tasks.values() if t["kind"] == "verifyStats"}
    if len(stages) == 1:
        verifies = {"BIAS": "bias", "DARK": "dark", "FLAT": "flat", "DEFECTS": "defects", "PTC": "ptc",
                    "LINEARITY": "linearizer", "BFK_STARS": "bfk"}.get(
            stages.pop())
    data = {"name": p.stem, "description": doc.description, "datasetTypes": dataset_types, "tasks": tasks}
    if verifies:
        # the ISR's flat renamed (flat_<LED_NAME>): that is the calibration under test
        renamed = {t.get("calibrationConnections", {}).get(verifies) for t in tasks.values()} - {None}
        data["verifies"] = renamed.pop() if len(renamed) == 1 else verifies
    if folded_labels:
        data["foldedLabels"] = folded_labels
    return data, notes


def _linearity_inputs(label: str, t: dict, r: _Resolved, binned: Mapping[str, str], notes: list[str]) -> None:
    """A linearity solve's inputs: the binned images of the PTC extraction are its pair measurements;
    the focal-plane normalisation is read only with ``useFocalPlaneNormalization`` (as cp_pipe's
    connections)."""
    cls = r.cls.rsplit(".", 1)[-1]
    inputs = []
    for i in t["inputs"]:
        if i in binned:
            notes.append(f"{label} ({cls}): reads the pair measurements of the extraction ({binned[i]}) for its "
                         f"binned images ({i}); cpframe fits one absolute spline per amp")
            i = binned[i]
        inputs.append(i)
    norm_conn = "connections.inputNormalization"
    if cls == "LinearityDoubleSplineSolveTask":
        norm = str(r.values.get(norm_conn, "cpLinearizerPtcNormalization"))
        if t["config"].get("useFocalPlaneNormalization"):
            if norm not in inputs:
                inputs.append(norm)
        elif norm in inputs:
            inputs.remove(norm)
    elif t["config"].get("useFocalPlaneNormalization"):
        inputs.append(str(r.values.get(norm_conn, "cpLinearizerPtcNormalization")))
    t["inputs"] = inputs


def _connections_only(task: _Task) -> bool:
    """A skipped task's config is read only when it is plain ``field: value`` (no python block)."""
    return all(fld != "python" for fld, *_ in task.ops)


def _explicit_fields(task: _Task) -> set[str]:
    out = set()
    for fld, _, val, file in task.ops:
        if fld == "python":
            try:
                out.update(f for f, *_ in python_ops(str(val), "", file) if not f.startswith("__"))
            except PipelineError:
                pass
        else:
            out.add(fld)
    # the calibration baseline is what every cp_pipe pipeline starts from: not an explicit choice
    return out - (set(CALIB_BASELINE) - {f for f, _, v, _ in task.ops if f != "python"})


def _defects_task(merge: _Resolved, measures: list[_Resolved], notes: list[str], problems: list[str]) -> dict:
    cfg: dict[str, Any] = {}
    calibs: list[str] = []
    explicit: list[str] = []
    manual = True
    inputs = {"inputBiasDefects", "inputDarkDefects", "inputFlatDefects", "inputManualDefects"}
    for r in [*measures, merge]:
        for fld, val in r.values.items():
            if fld.startswith("connections."):
                conn = fld.split(".", 1)[1]
                if conn == "inputExp":
                    calibs.append(str(val))
                elif conn not in inputs | {"outputDefects", "outputCombinedDefects", "camera", "inputDims"}:
                    problems.append(f"{r.file}: tasks.{r.label}: unknown connection {conn!r}")
                continue
            if fld == "doManualDefects":
                manual = bool(val)  # cpframe merges curated manual_defects when found
                continue
            if fld in _DEFECT_FIELDS:
                if fld in cfg and cfg[fld] != val:
                    notes.append(f"{r.label}: {fld}={val!r} differs from another defect task's {cfg[fld]!r}; "
                                 "cpframe measures all defects with one configuration, the last one given is used")
                cfg[fld] = val
                explicit.append(fld)
            elif _ignored(fld, _DEFECT_IGNORED) or _real_field(r.cls, fld):
                notes.append(f"{r.label}: accepted, not implemented by cpframe: {fld}={val!r}")
            else:
                close = difflib.get_close_matches(fld, list(_DEFECT_FIELDS), n=1)
                problems.append(f"{r.file}: tasks.{r.label}: unknown config field {fld!r} for "
                                f"{r.cls.rsplit('.', 1)[-1]}{f' (did you mean {close[0]!r}?)' if close else ''}")
    if measures:
        notes.append(f"{merge.label}: cpframe measures and merges defects in one task per detector "
                     f"(folds {', '.join(m.label for m in measures)})")
    out = str(merge.values.get("connections.outputDefects", "defects"))
    return {"kind": "defects", "dimensions": ["detector"], "inputs": [], "output": out,
            "calibrations": calibs or ["biasBootstrap", "darkBootstrap", "flatBootstrap"],
            "optionalCalibrations": ["manual_defects"] if manual else [], "config": cfg, "explicit": explicit,
            "lsstClass": merge.cls}
