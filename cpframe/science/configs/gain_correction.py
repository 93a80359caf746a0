"""The configuration of :mod:`cpframe.science.gain_correction` (``GainCorrectionConfig``), importable without the
science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.gain_correction`
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


@dataclass(frozen=True)
class GainCorrectionConfig:
    """Gain-correction measurement settings (cp_pipe ``CpMeasureGainCorrectionConfig`` names)."""

    max_noise_reference: float = 12.0
    """e-: amps noisier than this in the PTC are not chosen as the fixed amp."""
    turnoff_percentile_reference: float = 25.0
    """Amps with a PTC turnoff below this percentile are not chosen as the fixed amp."""
    do_remove_radial_gradient: bool = True
    """Accepted, not applied (see the module docstring)."""
    radial_gradient_n_spline_nodes: int = 20
    """Accepted with ``do_remove_radial_gradient``."""
    chebyshev_gradient_order: int = 1
    """Order in x and in y of the smooth surface fitted with the amp factors."""
    chebyshev_gradient_nsig_clip: float = 5.0
    """Bins further than this many robust sigmas from the model are left out of the next iteration."""
    bin_factor: int = 8
    """Binning (pixels) of the ratio image."""
    amp_boundary: int = 20
    """Pixels at every amp edge left out."""
    max_fractional_gain_ratio: float = 0.05
    """Amps whose factor differs more from the median are left out and get no correction."""
    ratio_outlier_nsig_clip: float = 5.0
    """Bins further than this many robust sigmas from the median ratio are dropped first."""

    def __post_init__(self):
        problems = []
        if self.bin_factor < 1:
            problems.append(f"bin_factor {self.bin_factor} must be >= 1")
        if self.amp_boundary < 0:
            problems.append(f"amp_boundary {self.amp_boundary} must be >= 0")
        if not 0 <= self.chebyshev_gradient_order <= 6:
            problems.append(f"chebyshev_gradient_order {self.chebyshev_gradient_order} must be 0..6")
        if problems:
            raise ConfigError("gain correction: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "GainCorrectionConfig":
        """Build from field names (cp_pipe's are the same; camelCase accepted too).

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, {}, "unknown gain-correction option(s) {keys}; known options: {known}.",
                             camel_case=True)
        try:
            return cls(**kw)
        except TypeError as err:  # pragma: no cover - dataclass keyword errors are caught above
            raise ConfigError(f"gain correction: {err}") from None
