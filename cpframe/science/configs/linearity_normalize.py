"""The configuration of :mod:`cpframe.science.linearity_normalize` (``NormalizeConfig``), importable without the
science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.linearity_normalize`
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


MSG_UNKNOWN_KEYS = "unknown linearity normalisation option(s) {keys}; known options: {known}."


@dataclass(frozen=True)
class NormalizeConfig:
    """Settings of the focal-plane normalisation (cp_pipe ``LinearityNormalizeConfig``)."""

    normalize_detectors: tuple[int, ...] = ()
    """Detectors whose linearizers are used (cp_pipe ``normalizeDetectors``; empty: every one given)."""
    reference_detector: int | None = None
    """Must be among the inputs (cp_pipe ``referenceDetector``; it labels the exposures there)."""
    min_valid_fraction: float = 0.5
    """Fraction of the expected amps that must have a residual at a pair for it to get a value."""

    def __post_init__(self):
        problems = []
        if self.reference_detector is not None and self.normalize_detectors and \
                int(self.reference_detector) not in {int(d) for d in self.normalize_detectors}:
            problems.append(f"referenceDetector {self.reference_detector} must be one of normalizeDetectors "
                            f"{list(self.normalize_detectors)}")
        if not 0.0 < float(self.min_valid_fraction) <= 1.0:
            problems.append(f"minValidFraction={self.min_valid_fraction!r} must be in (0, 1]")
        if problems:
            raise ConfigError("linearity normalisation: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "NormalizeConfig":
        """Build from cp_pipe names (``normalizeDetectors``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, MSG_UNKNOWN_KEYS)
        if "normalize_detectors" in kw:
            kw["normalize_detectors"] = tuple(int(d) for d in kw["normalize_detectors"])
        if kw.get("reference_detector") is not None:
            kw["reference_detector"] = int(kw["reference_detector"])
        return cls(**kw)


_ALIASES = {"normalizeDetectors": "normalize_detectors", "referenceDetector": "reference_detector",
            "minValidFraction": "min_valid_fraction"}
