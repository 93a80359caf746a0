"""The configuration of :mod:`cpframe.science.fringe` (``FringeConfig``), importable without the science stack
(module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.fringe` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


_ALIASES = {
    "stats.clip": "stat_clip",
    "stats.nIter": "stat_iter",
    "subtractBackground.binSize": "background_bin_size",
    "detection.thresholdValue": "detect_threshold",
    "detectSigma": "detect_sigma",
}


@dataclass(frozen=True)
class FringeConfig:
    """``CpFringeTask`` settings (cp_pipe names in ``_ALIASES``)."""

    stat_clip: float = 3.0
    """Clipping (sigma) of the image level."""
    stat_iter: int = 3
    """Clipping iterations of the image level."""
    background_bin_size: int = 128
    """Smooth background bins (pixels; SubtractBackgroundTask's binSize)."""
    detect_threshold: float = 5.0
    """Sources: above this many sigma of the smoothed image (positive and negative) are masked DETECTED."""
    detect_sigma: float = 1.0
    """Gaussian smoothing (pixels) before the source threshold."""
    bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")
    """Planes left out of the statistics."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FringeConfig:
        """From cp_pipe names or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or a bin size / threshold that is not positive.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, "unknown fringe option(s) {keys}; known options: {known}.")
        if "bad_planes" in kw:
            kw["bad_planes"] = tuple(kw["bad_planes"])
        cfg = cls(**kw)
        for name in ("background_bin_size", "detect_threshold"):
            if not float(getattr(cfg, name)) > 0:
                raise ConfigError(f"fringe option {name} = {getattr(cfg, name)!r} must be positive.")
        return cfg
