"""Contracts of LSST pipeline files (``contracts:``), checked on the configuration as read, never executed.

A contract is a Python expression over task labels and their config fields
(``cpFlatBin8.connections.inputExp == cpFlatCombine.calibrationType``).  Only comparisons,
``and``/``or``/``not`` and constants are evaluated; a contract on a task not selected is dropped
(as pipetask does) and one that compares a value cpframe does not know (a class default it does not
model) is not checked.  Used by :mod:`cpframe.execution.lsst_pipeline`.
"""

from __future__ import annotations

import ast
from typing import Any, Mapping, Sequence

from cpframe.core.errors import PipelineError
from cpframe.execution.lsst_config import CALIB_BASELINE

__all__ = ["check_contracts"]


def check_contracts(contracts: Sequence[tuple[str, str, str]], resolved: Mapping[str, Any],
                    classes: Mapping[str, Any]) -> None:
    """Raise :class:`PipelineError` for the first contract ``(expression, message, file)`` that is false.

    ``resolved`` maps task labels to objects with ``cls`` (the task class) and ``values`` (the fields set);
    ``classes`` maps known classes to their :class:`~cpframe.execution.kinds.base.ClassMap` (for defaults).
    """
    for expr, msg, file in contracts:
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError:
            continue  # pipetask would fail too; not ours to judge
        labels = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if not labels <= set(resolved):
            continue  # a contract on a task not selected is dropped (as pipetask does)
        try:
            ok = _eval(tree.body, resolved, classes)
        except LookupError:
            continue  # compares a value cpframe does not know (a class default): not checked
        if ok is False:
            raise PipelineError(f"{file}: contract {expr!r} does not hold"
                                f"{f' ({msg})' if msg else ''} with this configuration (check "
                                "extraQgraphOptions --config overrides).")


def _eval(node: ast.AST, resolved: Mapping[str, Any], classes: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BoolOp):
        vals = [_eval(v, resolved, classes) for v in node.values]
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _eval(node.operand, resolved, classes)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
        a, b = _eval(node.left, resolved, classes), _eval(node.comparators[0], resolved, classes)
        return (a == b) if isinstance(node.ops[0], ast.Eq) else (a != b)
    if isinstance(node, ast.Attribute):
        parts = []
        n = node
        while isinstance(n, ast.Attribute):
            parts.append(n.attr)
            n = n.value
        if isinstance(n, ast.Name):
            r = resolved[n.id]
            fld = ".".join(reversed(parts))
            if fld in r.values:
                return r.values[fld]
            cmap = classes.get(r.cls)
            if cmap is not None:
                if "__baseline__" in r.values and fld in CALIB_BASELINE:
                    return CALIB_BASELINE[fld]
                if fld in cmap.defaults:
                    return cmap.defaults[fld]
            raise LookupError(fld)
    raise LookupError(ast.dump(node))
