"""The configuration of :mod:`cpframe.science.linearity` (``LinearityConfig``, ``LINEARITY_TYPES``, ``_ALIASES``),
importable without the science stack (module docstring of :mod:`cpframe.science.configs`);
:mod:`cpframe.science.linearity` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


LINEARITY_TYPES = ("Polynomial", "Squared", "Spline", "None")

MSG_UNKNOWN_KEYS = "unknown linearizer option(s) {keys}; known options: {known}."

MSG_BAD_VALUE = "linearizer option {key}={value!r}: {why}"


@dataclass(frozen=True)
class LinearityConfig:
    """Linearizer solve settings (cp_pipe ``LinearitySolveConfig`` names via :meth:`from_dict`)."""

    linearity_type: str = "Spline"
    """Polynomial, Squared, Spline or None (cp_pipe default Squared; LSST pipelines use splines)."""
    polynomial_order: int = 3
    """Highest power of the Polynomial fit (>= 2)."""
    spline_knots: int = 10
    """Number of spline nodes (first at 0)."""
    max_linear_adu: float = 20000.0
    """Polynomial/Squared: points at or above this mean (adu) are not fitted."""
    min_linear_adu: float = 30.0
    """Points at or below this mean (adu) are not fitted."""
    n_sigma_clip_linear: float = 5.0
    """Polynomial: distance from the linear fit, in √μ; Spline: clip in MAD-sigma of the residuals."""
    max_frac_linearity_deviation: float = 0.01
    """Turnoff: largest relative departure from the linear slope."""
    min_signal_fit_linearity_turnoff: float = 1000.0
    """Turnoff: the slope uses points above this mean (adu)."""
    spline_fit_min_iter: int = 3
    spline_fit_max_iter: int = 20
    spline_fit_max_rejection_per_iteration: int = 5
    do_spline_fit_offset: bool = True
    """Fit a constant offset O (scattered light, residual bias)."""
    use_photodiode: bool = False
    """Only False is implemented: the abscissa is the exposure time."""
    spline_node_size: float = 0.0
    """Spline: the distance between nodes (adu; cp_pipe ``absoluteSplineNodeSize``), widened so that each
    interval keeps at least :data:`MIN_POINTS_PER_NODE` fitted pairs; 0 = ``splineKnots`` nodes evenly
    over the fitted range."""
    use_focal_plane_normalization: bool = False
    """Multiply each pair's exposure time by the focal-plane normalisation of its exposures (the lamp's
    flux relative to the ramp's median, :mod:`cpframe.science.linearity_normalize`); the solve then needs
    one (cp_pipe ``useFocalPlaneNormalization``)."""

    def __post_init__(self):
        problems = []
        if self.linearity_type not in LINEARITY_TYPES:
            problems.append(MSG_BAD_VALUE.format(key="linearityType", value=self.linearity_type,
                                                 why=f"use one of {', '.join(LINEARITY_TYPES)}"))
        if int(self.polynomial_order) < 2:
            problems.append(MSG_BAD_VALUE.format(key="polynomialOrder", value=self.polynomial_order,
                                                 why="must be at least 2"))
        if int(self.spline_knots) < 3:
            problems.append(MSG_BAD_VALUE.format(key="splineKnots", value=self.spline_knots,
                                                 why="must be at least 3"))
        if float(self.spline_node_size) < 0:
            problems.append(MSG_BAD_VALUE.format(key="splineNodeSize", value=self.spline_node_size,
                                                 why="must be 0 (use splineKnots) or a distance in adu"))
        if self.use_photodiode:
            problems.append(MSG_BAD_VALUE.format(key="usePhotodiode", value=True,
                                                 why="cpframe has no photodiode data; set usePhotodiode: false"))
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "LinearityConfig":
        """Build from cp_pipe names (``linearityType``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, MSG_UNKNOWN_KEYS)
        return cls(**kw)


_ALIASES = {
    "linearityType": "linearity_type",
    "polynomialOrder": "polynomial_order",
    "splineKnots": "spline_knots",
    "maxLinearAdu": "max_linear_adu",
    "minLinearAdu": "min_linear_adu",
    "nSigmaClipLinear": "n_sigma_clip_linear",
    "maxFracLinearityDeviation": "max_frac_linearity_deviation",
    "minSignalFitLinearityTurnoff": "min_signal_fit_linearity_turnoff",
    "splineFitMinIter": "spline_fit_min_iter",
    "splineFitMaxIter": "spline_fit_max_iter",
    "splineFitMaxRejectionPerIteration": "spline_fit_max_rejection_per_iteration",
    "doSplineFitOffset": "do_spline_fit_offset",
    "usePhotodiode": "use_photodiode",
    "splineNodeSize": "spline_node_size",
    "useFocalPlaneNormalization": "use_focal_plane_normalization",
}
