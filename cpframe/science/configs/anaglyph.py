"""The configuration of :mod:`cpframe.science.anaglyph` (``TwoFlatsConfig``), importable without the science stack
(module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.anaglyph` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.configs.masks import MASK_BITS
from cpframe.science.options import alias_kwargs


@dataclass(frozen=True)
class TwoFlatsConfig:
    """cp_pipe ``CalibCombineTwoFlatsByFilterConfig`` (the fields cpframe uses)."""

    weight_one: float = 0.5
    """Weight of the first flat (the second gets 1 - weight_one)."""
    no_good_pixels_mask: str = "BAD"
    """Mask plane of pixels with no finite input."""

    def __post_init__(self):
        if not 0.0 < self.weight_one < 1.0:
            raise ConfigError(f"anaglyph combine: weightOne {self.weight_one} must be between 0 and 1 (exclusive).")
        if self.no_good_pixels_mask not in MASK_BITS:
            raise ConfigError(f"anaglyph combine: noGoodPixelsMask {self.no_good_pixels_mask!r} is not a mask plane; "
                              f"known: {', '.join(MASK_BITS)}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "TwoFlatsConfig":
        """Build from field names or camelCase (``weightOne``).

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, {}, "unknown anaglyph-combine option(s) {keys}; known options: {known}.",
                             extra_known=_IGNORED, camel_case=True)
        return cls(**kw)


#: cp_pipe options accepted and not used: the statistic (a weighted mean here), QA percentiles, block size.
_IGNORED = ("calibration_type", "combine", "subregion_size", "distribution_percentiles")
