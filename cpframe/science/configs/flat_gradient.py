"""The configuration of :mod:`cpframe.science.flat_gradient` (``FlatGradientConfig``, ``_IGNORED``), importable
without the science stack (module docstring of :mod:`cpframe.science.configs`);
:mod:`cpframe.science.flat_gradient` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


_LSST_NODES = (0.0, 100.0, 200.0, 250.0, 275.0, 290.0, 300.0, 310.0, 315.0, 317.0, 320.0, 325.0, 333.0, 340.0, 350.0)


@dataclass(frozen=True)
class FlatGradientConfig:
    """Flat gradient fit settings (cp_pipe ``CpFlatFitGradientsConfig`` names, snake_case)."""

    do_reference_gradient: bool = False
    """The output is the reference gradient (``flat_gradient_reference``) rather than ``flat_gradient``."""
    bin_factor: int = 128
    """Binning (pixels of the flat) of the focal plane."""
    do_constrain_zero: bool = False
    """The outermost spline value is 0."""
    do_fit_centroid: bool = False
    """Fit an offset of the radial function's centre."""
    do_fit_gradient: bool = False
    """Fit a planar gradient (a, b per mm)."""
    do_normalize_center: bool = True
    """Divide by the median within ``normalize_center_radius`` first."""
    normalize_center_radius: float = 25.0
    """mm."""
    fp_centroid_x: float = 0.0
    """mm."""
    fp_centroid_y: float = 0.0
    """mm."""
    radial_spline_nodes: tuple[float, ...] = _LSST_NODES
    """Radii (mm) of the spline nodes (those beyond the data are dropped)."""
    min_flat_value: float = 0.05
    """Relative flat values below this are left out."""
    max_flat_value: float = 1.5
    """Relative flat values above this are left out."""
    detector_boundary: int = 10
    """Pixels at every detector edge left out."""

    def __post_init__(self):
        problems = []
        if self.bin_factor < 1:
            problems.append(f"bin_factor {self.bin_factor} must be >= 1")
        nodes = list(self.radial_spline_nodes)
        if len(nodes) < 2 or any(b <= a for a, b in zip(nodes, nodes[1:])):
            problems.append(f"radial_spline_nodes {nodes} must be at least two increasing radii (mm)")
        if not self.min_flat_value < self.max_flat_value:
            problems.append(f"min_flat_value {self.min_flat_value} must be below max_flat_value {self.max_flat_value}")
        if problems:
            raise ConfigError("flat gradient: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "FlatGradientConfig":
        """Build from field names (cp_pipe's) or camelCase.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, {}, "unknown flat-gradient option(s) {keys}; known options: {known}.",
                             extra_known=_IGNORED, camel_case=True)  # cp_pipe options accepted, not used
        if "radial_spline_nodes" in kw:
            kw["radial_spline_nodes"] = tuple(float(x) for x in kw["radial_spline_nodes"])
        return cls(**kw)


#: cp_pipe options accepted and not used (module docstring): fitter tolerances, the ITL pass, plots.
_IGNORED = ("radial_spline_nodes_initial", "fit_eps", "fit_gtol", "do_use_non_science_detectors",
            "fixed_model_residual_plot_scale")
