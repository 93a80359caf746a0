"""The configuration of :mod:`cpframe.science.flat_measure` (``FlatMeasureConfig``, ``FlatNormalizeConfig``),
importable without the science stack (module docstring of :mod:`cpframe.science.configs`);
:mod:`cpframe.science.flat_measure` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlatMeasureConfig:
    """CpFlatMeasure settings (cp_pipe ``CpFlatMeasureConfig``)."""

    clip: float = 3.0
    """Clipping threshold of the background statistics, sigma."""
    n_iter: int = 3
    """Clipping iterations."""


@dataclass(frozen=True)
class FlatNormalizeConfig:
    """CpFlatNormalization settings (cp_pipe ``CpFlatNormalizationConfig``)."""

    max_iter: int = 10
    """Iterations of the exposure x detector factorisation."""
