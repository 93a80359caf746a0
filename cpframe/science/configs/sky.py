"""The configuration of :mod:`cpframe.science.sky` (``SkyConfig``), importable without the science stack (module
docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.sky` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


_ALIASES = {
    "maskThresh": "mask_thresh",
    "maskList": "mask_list",
    "largeScaleBackground.xSize": "x_size_mm",
    "largeScaleBackground.ySize": "y_size_mm",
    "sky.background.xBinSize": "x_bin_size",
    "sky.background.yBinSize": "y_bin_size",
    "sky.skyIter": "sky_iter",
    "sky.skyRej": "sky_rej",
    "includeAlternateBackground": "include_alternate_background",
    "verifyMaxNoise": "verify_max_noise",
}


@dataclass(frozen=True)
class SkyConfig:
    """Settings of the four sky-frame steps (cp_pipe names in ``_ALIASES``)."""

    mask_thresh: float = 3.0
    """Sources: pixels above this many sigma of the local background are masked DETECTED."""
    mask_list: tuple[str, ...] = ("DETECTED", "BAD", "NO_DATA", "SAT")
    """Mask planes left out of every background measurement (planes cpframe does not have are ignored)."""
    x_size_mm: float = 40.96
    """Superpixel width of the focal-plane background (mm)."""
    y_size_mm: float = 40.96
    """Superpixel height of the focal-plane background (mm)."""
    x_bin_size: int = 32
    """Residual background bin width (pixels; SkyMeasurementTask's background.xBinSize)."""
    y_bin_size: int = 32
    """Residual background bin height (pixels)."""
    sky_iter: int = 3
    """Clipping iterations of the bin statistics."""
    sky_rej: float = 3.0
    """Clipping threshold (sigma) of the bin statistics and of the combine over exposures."""
    include_alternate_background: bool = False
    """One focal-plane background per physical sensor type."""
    verify_max_noise: float = 0.003
    """Product card: per-bin standard error of the frame (relative to the sky) the verification allows."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SkyConfig:
        """From cp_pipe names or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or a bin / superpixel size that is not positive.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, "unknown sky option(s) {keys}; known options: {known}.")
        if "mask_list" in kw:
            kw["mask_list"] = tuple(kw["mask_list"])
        cfg = cls(**kw)
        for name in ("x_size_mm", "y_size_mm", "x_bin_size", "y_bin_size"):
            if not float(getattr(cfg, name)) > 0:
                raise ConfigError(f"sky option {name} = {getattr(cfg, name)!r} must be positive.")
        return cfg
