"""The configuration language of LSST pipeline files, read and never executed: ``python:`` config
blocks (``config.field = value``, ``config.field.append(value)``, cp_pipe's
``configureIsrTaskLSSTForCalibrations``), ``--config label:field=value`` overrides, and the
tables of LSST task classes cpframe skips or does not build yet.  Used by
:mod:`cpframe.execution.lsst_pipeline` (the reader) and :mod:`cpframe.execution.submission`.
"""

from __future__ import annotations

import ast
from typing import Any, Sequence

from cpframe.core.errors import PipelineError

__all__ = ["CALIB_BASELINE", "MISSING", "NOT_BUILT", "SKIPPED", "parse_config_overrides", "python_ops"]

#: A value not given (distinct from None).
MISSING = object()

# cp_pipe's configureIsrTaskLSSTForCalibrations (python/lsst/cp/pipe/_configure.py): the values it sets
# for the switches cpframe reads; the others it sets are accepted-and-ignored fields below.
CALIB_BASELINE = {
    "doBootstrap": False, "doCorrectGains": False, "doSaturation": False, "doSuspect": False, "doApplyGains": False,
    "doCrosstalk": False, "crosstalk.doQuadraticCrosstalkCorrection": False, "doLinearize": False,
    "doDeferredCharge": False, "doAssembleCcd": True, "doBias": False, "doDark": False, "doDefect": False,
    "doNanMasking": True, "doBrighterFatter": False, "doVariance": True, "doFlat": False, "doInterpolate": False,
    "doStandardStatistics": True, "doCalculateStatistics": True,
}

#: Classes that make no calibration: skipped with a note (cpframe does not make these plots/mosaics).
SKIPPED = {
    "lsst.pipe.tasks.visualizeVisit.VisualizeBinCalibTask": "binned image for display",
    "lsst.pipe.tasks.visualizeVisit.VisualizeBinCalibFilterTask": "binned image for display",
    "lsst.pipe.tasks.visualizeVisit.VisualizeMosaicCalibTask": "focal-plane mosaic for display",
    "lsst.pipe.tasks.visualizeVisit.VisualizeMosaicCalibFilterTask": "focal-plane mosaic for display",
    "lsst.pipe.tasks.visualizeVisit.VisualizeMosaicExpTask": "focal-plane mosaic for display",
    "lsst.pipe.tasks.visualizeVisit.VisualizeBinExpTask": "binned image for display",
    "lsst.analysis.tools.tasks.VerifyCalibAnalysisTask": "analysis_tools plots",
    "lsst.analysis.tools.tasks.VerifyCalibAnalysisTaskByFilter": "analysis_tools plots",
    "lsst.analysis.tools.tasks.VerifyCalibDetectorTask": "analysis_tools plots",
    "lsst.cp.pipe.ptc.PlotPhotonTransferCurveTask": "PTC plots",
    "lsst.cp.pipe.PlotPhotonTransferCurveTask": "PTC plots",
}
#: Known classes that build a calibration cpframe does not build yet -> what they build.
NOT_BUILT = {
    "lsst.cp.verify.CpVerifyCrosstalkTask": "crosstalk verification",
    "lsst.cp.pipe.CpFilterScanTask": "filter scan",
    "lsst.cp.pipe.CpFlatNormalizationRedBlueTask": "anaglyph (red/blue LED) flat",
    "lsst.cp.pipe.CpSpectroFlatTask": "spectroscopic flat",
}


# ------------------------------------------------------------------------------------------
# python config blocks (read, never executed)
# ------------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Subscript):  # config.plugins["name"].field (a registry item)
            if not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
                return None
            parts.append(f"[{node.slice.value!r}]")
        else:
            parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "config":
        return ".".join(reversed(parts)).replace(".[", "[")
    return None


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Attribute) and _dotted(node) is None:
        # np.inf and friends: keep as text (only ignored fields use them)
        return ast.unparse(node)
    return ast.literal_eval(node)


def python_ops(src: str, where: str, file: str) -> list[tuple[str, str, Any, str]]:
    """The (field, "set"|"append"|"extend", value, file) operations of a ``python:`` config block.

    Raises
    ------
    PipelineError
        A statement that is not one of those forms (named with its line).
    """
    try:
        tree = ast.parse(src)
    except SyntaxError as err:
        raise PipelineError(f"{where}: python config does not parse: {err.msg} (line {err.lineno})") from None
    ops: list[tuple[str, str, Any, str]] = []
    for st in tree.body:
        line = ast.get_source_segment(src, st) or ""
        bad = f"{where}: python config line {st.lineno} is not understood by cpframe: {line.strip()!r}. " \
              "cpframe reads 'config.field = value', 'config.field.append(value)' and 'config.field |= [...]' only; set the field " \
              "under config: instead."
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(st, ast.Expr) and isinstance(st.value, ast.Call):
            call = st.value
            fn = call.func
            if isinstance(fn, ast.Name) and fn.id == "configureIsrTaskLSSTForCalibrations":
                ops.extend((k, "set", v, file) for k, v in CALIB_BASELINE.items())
                ops.append(("__baseline__", "set", True, file))
                continue
            if isinstance(fn, ast.Attribute) and fn.attr in ("append", "extend") and _dotted(fn.value):
                try:
                    val = _literal(call.args[0]) if len(call.args) == 1 else MISSING
                except ValueError:
                    val = MISSING
                if val is MISSING:
                    raise PipelineError(bad)
                ops.append((_dotted(fn.value), fn.attr, val, file))
                continue
            raise PipelineError(bad)
        if isinstance(st, ast.AugAssign) and isinstance(st.op, ast.BitOr) and _dotted(st.target):
            try:  # config.plugins.names |= [...]: a set union, read as extend
                ops.append((_dotted(st.target), "extend", list(_literal(st.value)), file))
            except (ValueError, TypeError):
                raise PipelineError(bad) from None
            continue
        if isinstance(st, ast.Assign) and len(st.targets) == 1:
            tgt = st.targets[0]
            name = _dotted(tgt)
            try:
                val = _literal(st.value)
            except ValueError:
                raise PipelineError(bad) from None
            if name:
                ops.append((name, "set", val, file))
                continue
            if isinstance(tgt, ast.Name):
                # 'doBias = True' binds a local name: no effect in pipetask either
                ops.append(("__note__", "set", f"python config line {st.lineno} '{line.strip()}' sets a local "
                                              f"name, not a config field: no effect (as in pipetask)", file))
                continue
        raise PipelineError(bad)
    return ops


# ------------------------------------------------------------------------------------------
# --config label:field=value
# ------------------------------------------------------------------------------------------
def parse_config_overrides(items: Sequence[str]) -> list[tuple[str, str, Any]]:
    """``label:field=value`` items -> (label, field, value); values read as Python literals when they parse.

    >>> parse_config_overrides(["cpBiasCombine:clip=4.0", "cpFlatCombine:connections.outputData=flat_x"])
    [('cpBiasCombine', 'clip', 4.0), ('cpFlatCombine', 'connections.outputData', 'flat_x')]
    """
    out = []
    for item in items:
        label, sep, rest = item.partition(":")
        fld, eq, value = rest.partition("=")
        if not sep or not eq or not label or not fld:
            raise PipelineError(f"--config {item!r} must be label:field=value (e.g. cpBiasCombine:clip=4.0)")
        try:
            val: Any = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            val = value
        out.append((label.strip(), fld.strip(), val))
    return out
