"""The ``linearitySolve`` kind: a linearizer per detector from the flat-pair ramp (cp_pipe
``LinearitySolveTask``; science in :mod:`cpframe.science.linearity`).

Its input is the ``ptcExtract`` measurements of one detector (pairs of equal exposure time).
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import Option, TaskKind, enum, output_path
from cpframe.science import linearity as _lin


def _field(key: str) -> str:
    return _lin._ALIASES[key]


class LinearitySolve(TaskKind):
    name = "linearitySolve"
    summary = "Linearizer (polynomial, squared or spline) per amp from the flat-pair ramp of one detector."
    dimensions = (frozenset({"detector"}),)
    config_class = _lin.LinearityConfig
    settings_key = "linearity"
    options = MappingProxyType({
        "linearityType": Option(enum(*_lin.LINEARITY_TYPES), _field("linearityType")),
        **{k: Option(t, _field(k)) for k, t in (
            ("polynomialOrder", int), ("splineKnots", int), ("maxLinearAdu", float), ("minLinearAdu", float),
            ("nSigmaClipLinear", float), ("maxFracLinearityDeviation", float),
            ("minSignalFitLinearityTurnoff", float), ("splineFitMinIter", int), ("splineFitMaxIter", int),
            ("splineFitMaxRejectionPerIteration", int), ("doSplineFitOffset", bool))},
        "usePhotodiode": Option(bool, _field("usePhotodiode"), doc="only false: cpframe has no photodiode data"),
    })

    @classmethod
    def run(cls, spec, groups):
        pairs = next(iter(groups.values()))
        return _lin.linearity_solve_task([m for m, _ in pairs], output_path(spec), spec.settings["linearity"],
                                         meta=pairs[0][1])
