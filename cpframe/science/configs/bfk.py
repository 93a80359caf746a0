"""The configuration of :mod:`cpframe.science.bfk` (``BfkConfig``), importable without the science stack (module
docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.bfk` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from cpframe.core.errors import ConfigError


@dataclass(frozen=True)
class BfkConfig:
    """cpBfkSolve settings (cp_pipe ``BrighterFatterKernelSolveConfig`` names via :meth:`from_dict`)."""

    level: str = "AMP"
    """AMP (a kernel per amp, plus their average for the detector) or DETECTOR (one kernel
    from all amps' correlations)."""
    n_sigma_clip: float = 5.0
    """Clip (sigma) of the mean over pairs."""
    xcorr_check_reject_level: float = 2.0
    """Pairs whose |Σ X| / Σ |X| exceeds this are dropped."""
    force_zero_sum: bool = True
    """Move the pre-kernel's sum into its centre (Broughton et al. 2024)."""
    use_amatrix: bool = True
    """Use −a of the PTC's full covariance fit instead of the mean measured correlations.
    cp_pipe's default is false; cpframe's is true (docs/algorithms.md "Brighter-fatter kernel":
    the mean of the flux-scaled correlations is dominated by the noisiest pairs and carries the
    second-order terms; on mini-scale amps it gives no valid kernel).  Without an a matrix
    (an EXPAPPROXIMATION PTC) the mean correlations are used."""
    do_check_validity: bool = True
    n_sigma_tol_for_valid_edge: float = 5.0
    fraction_k00_for_kernel_max: float = 0.025
    ignore_amps_for_averaging: tuple[str, ...] = ()

    def __post_init__(self):
        if self.level not in ("AMP", "DETECTOR"):
            raise ConfigError(f"BFK option level={self.level!r}: use AMP or DETECTOR.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "BfkConfig":
        """Build from cp_pipe names (``useAmatrix``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed).
        """
        import re

        names = {f.name for f in fields(cls)}
        kw, unknown = {}, []
        for k, v in dict(values or {}).items():
            key = _ALIASES.get(k, re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower())
            if key in names:
                kw[key] = tuple(v) if key == "ignore_amps_for_averaging" else v
            elif k in _IGNORED:
                continue
            else:
                unknown.append(k)
        if unknown:
            raise ConfigError(f"unknown BFK option(s) {', '.join(map(repr, unknown))}; known options: "
                              f"{', '.join(sorted(names))} (cp_pipe camelCase accepted).")
        return cls(**kw)


_ALIASES = {"useAmatrix": "use_amatrix", "nSigmaTolForValidEdge": "n_sigma_tol_for_valid_edge",
            "fractionK00ForKernelMax": "fraction_k00_for_kernel_max"}

#: cp_pipe options accepted and not used: the SOR controls (cpframe solves the Poisson
#: equation exactly), the PTC-selection switch (the pipeline connects the PTC), and model
#: options cpframe does not implement.
_IGNORED = ("maxIterSuccessiveOverRelaxation", "eLevelSuccessiveOverRelaxation", "useBfkPtc",
            "correlationModelRadius", "correlationModelSlope")
