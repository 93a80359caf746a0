"""Task kinds, each defined once: its options (cp_pipe names, types, defaults), dimensions,
planning and run function.

A pipeline task names a ``kind`` (``isr``, ``combine``, ``defects``, ``ptcSolve``,
``verifyStats``...).  Everything cpframe knows about a kind lives in its class here:

* :attr:`TaskKind.options` -- the ``config:`` keys a pipeline file may set, under
  cp_pipe's names, with their types.  Their **defaults are the science configuration's**
  (:attr:`TaskKind.config_class`, e.g. :class:`cpframe.science.defects.DefectsConfig`), so a
  pipeline run and a direct Python call (``cp_defects(...)``) start from the same values;
  :func:`cpframe.execution.pipeline.parse_pipeline` fills and checks them from here and
  ``docs/kinds.md`` is generated from here (``python -m cpframe.execution.kinds``).
* :attr:`TaskKind.dimensions` -- the quantum dimensions a task of the kind may run on.
* :meth:`TaskKind.calibrations` -- calibrations derived from the config (ISR), if any.
* :meth:`TaskKind.plan` / :meth:`TaskKind.for_quantum` -- the science settings the planner
  (:mod:`cpframe.execution.graph`) gives every quantum.
* :meth:`TaskKind.run` -- what a Dask worker runs for one quantum
  (:func:`cpframe.execution.graph_tasks.run_quantum`).

How to add a kind
-----------------
1. Write one module in this package (``cpframe/execution/kinds/<name>.py``) with a
   subclass of :class:`TaskKind`: ``name``, ``summary``, ``dimensions``, ``config_class``
   (a frozen dataclass in ``cpframe.science.configs``, or none), ``options`` (cp_pipe name ->
   :class:`Option` naming the config field), ``plan`` and ``run``; ``task_classes`` (the real
   LSST task classes it runs, each a :class:`ClassMap`: connections and config fields), which is
   all the LSST pipeline reader (:mod:`cpframe.execution.lsst_pipeline`) knows of a class.  Defining the class
   registers it; every module of this package is imported below, nothing else to edit.  Import the science
   module inside ``run`` (and the configuration from :mod:`cpframe.science.configs`): the command that plans
   never imports the science stack (``tests/test_kinds.py`` checks it).
2. Write its pipeline YAML in ``pipelines/`` (``kind: <name>``).
3. Regenerate ``docs/kinds.md``: ``python -m cpframe.execution.kinds > docs/kinds.md``
   (``tests/test_kinds.py`` fails until the page matches, and checks that pipeline-run
   config == direct-call config == documented defaults for every kind).

May import: ``cpframe.core``, ``cpframe.camera``, ``cpframe.science``, ``cpframe.verify``.
"""

from __future__ import annotations

import importlib
import pkgutil

from cpframe.execution.kinds.base import (
    REGISTRY,
    ClassMap,
    REQUIRED,
    UNSET,
    Option,
    TaskKind,
    enum,
    get_kind,
)

__all__ = ["ClassMap", "Option", "TaskKind", "REGISTRY", "REQUIRED", "UNSET", "enum", "get_kind", "kinds", "kinds_markdown"]

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "__main__"):
        importlib.import_module(f"{__name__}.{_m.name}")


def kinds() -> dict[str, type[TaskKind]]:
    """Every kind, by name (registration order)."""
    return dict(REGISTRY)


def _type_text(t) -> str:
    if isinstance(t, tuple) and t and t[0] == "enum":
        return " \\| ".join(t[1])
    return {bool: "bool", int: "int", float: "float", str: "text", "planes": "mask planes", "plane": "mask plane",
            "floats": "numbers", "mapping": "mapping"}.get(t, str(t))


def _value_text(v) -> str:
    if v is REQUIRED:
        return "**required**"
    if v is UNSET:
        return "(unset)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(_value_text(x) for x in v) + "]"
    if hasattr(v, "items"):
        return "{}" if not v else str(dict(v))
    return f"{v}"


def kinds_markdown() -> str:
    """``docs/kinds.md``: every kind with its options, types and defaults (generated)."""
    lines = [
        "# Task kinds and their options",
        "",
        "Generated from `cpframe/execution/kinds/` by `python -m cpframe.execution.kinds > docs/kinds.md`;",
        "`tests/test_kinds.py` fails when this page and the code disagree.  Option names are cp_pipe's;",
        "each default is the science configuration's, so a pipeline run and a direct Python call",
        "of the same task start from the same values.  How to add a kind: the docstring of",
        "`cpframe/execution/kinds/__init__.py` and docs/architecture.md.",
        "",
    ]
    for name, k in REGISTRY.items():
        dims = " or ".join("[" + ", ".join(sorted(d)) + "]" for d in k.dimensions)
        cfg = f"`{k.config_class.__module__}.{k.config_class.__name__}`" if k.config_class else "none"
        lines += [f"## `{name}`", "", k.summary, "", f"Quantum dimensions: {dims}.  Science configuration: {cfg}.", ""]
        if k.task_classes or k.folded_classes:
            runs = ", ".join(f"`{c}`" for c in k.task_classes)
            folds = ", ".join(f"`{c}` ({role})" for c, role in k.folded_classes.items())
            lines += ["Real LSST task classes it runs (`task_classes`, read by the LSST pipeline reader): "
                      + (runs or "none") + (f"; folded into it: {folds}" if folds else "") + ".", ""]
        lines += ["| option | type | default | field | note |", "|---|---|---|---|---|"]
        defaults = k.defaults()
        for key, opt in k.options.items():
            lines.append(f"| `{key}` | {_type_text(opt.type)} | {_value_text(defaults[key])} | "
                         f"{'`' + opt.field + '`' if opt.field else ''} | {opt.doc} |")
        lines.append("")
    return "\n".join(lines)
