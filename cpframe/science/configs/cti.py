"""The configuration of :mod:`cpframe.science.cti` (``CtiConfig``), importable without the science stack (module
docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.cti` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError


@dataclass(frozen=True)
class CtiConfig:
    """CTI solve settings (cpframe names; cp_pipe's ``CpCtiSolveConfig`` differs, see the module docstring)."""

    min_trap_signal: float = 2000.0
    """e-: flats whose last data column is above this are used (the trap is full there)."""
    max_signal_fraction: float = 0.9
    """Flats above this fraction of the brightest one are dropped (saturation)."""
    n_trail_columns: int = 8
    """Overscan columns 2..n fitted for the trap trail."""
    num_previous_pixels: int = 6
    """Correction: pixels back the trap occupancy is followed (ip_isr nPixelTrapCorrection)."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CtiConfig":
        """Build from field names or camelCase (``minTrapSignal``...).

        Raises
        ------
        ConfigError
            Unknown keys (all listed).
        """
        import re

        names = {f for f in cls.__dataclass_fields__}
        kw, unknown = {}, []
        for k, v in dict(values or {}).items():
            key = re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower()
            if key in names:
                kw[key] = v
            elif k in _IGNORED:
                continue
            else:
                unknown.append(k)
        if unknown:
            raise ConfigError(f"unknown CTI option(s) {', '.join(map(repr, unknown))}; known options: "
                              f"{', '.join(sorted(names))} (camelCase accepted).")
        return cls(**kw)


#: cp_pipe CpCtiSolveConfig options accepted and not used (cpframe fits no local offset model).
_IGNORED = ("maxImageMean", "localOffsetColumnRange", "maxSignalForCti", "globalCtiColumnRange",
            "trapColumnRange", "fitError", "useGains")
