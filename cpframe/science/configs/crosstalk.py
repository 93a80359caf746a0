"""The configuration of :mod:`cpframe.science.crosstalk` (``CrosstalkConfig``, ``_ALIASES``), importable without the
science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.crosstalk` re-exports
it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.configs.masks import MASK_BITS
from cpframe.science.options import alias_kwargs


MSG_UNKNOWN_KEYS = "unknown crosstalk option(s) {keys}; known options: {known}."


@dataclass(frozen=True)
class CrosstalkConfig:
    """Extract + solve settings (cp_pipe names via :meth:`from_dict`)."""

    threshold: float = 30000.0
    """Source pixels are above this (image units: electrons after gains, else adu)."""
    bad_mask: tuple[str, ...] = ("BAD", "INTRP")
    """Source pixels with these mask bits are skipped."""
    grow_mask_radius: int = 20
    """A target's own bright pixels are grown by this many pixels and skipped."""
    rej_iter: int = 3
    rej_sigma: float = 2.0
    flux_order: int = 0
    """0: coefficient = clipped mean ratio; 1: intercept of ratio vs source flux (slope = quadratic term)."""
    significance_limit: float = 3.0
    do_significance_scaling: bool = True
    """Compare |C| with the error of the mean (error / √N)."""
    reject_negative_solutions: bool = False
    do_filtering: bool = True
    """Set coefficients that are not significant to 0 (CrosstalkFilterTask)."""
    units_are_electrons: bool = True
    """Accepted for cp_pipe configurations; cpframe reads the units from the ISR header."""

    def __post_init__(self):
        if self.flux_order not in (0, 1):
            raise ConfigError(f"crosstalk option fluxOrder={self.flux_order!r}: use 0 or 1 (higher orders are "
                              "not supported, as in cp_pipe).")
        bad = [m for m in self.bad_mask if m not in MASK_BITS]
        if bad:
            raise ConfigError(f"crosstalk option badMask: unknown mask plane(s) {bad}; known: "
                              f"{', '.join(MASK_BITS)}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CrosstalkConfig":
        """Build from cp_pipe names (``threshold``, ``rejSigma``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, MSG_UNKNOWN_KEYS, extra_known=_IGNORED)
        if "bad_mask" in kw:
            kw["bad_mask"] = tuple(kw["bad_mask"])
        return cls(**kw)


_ALIASES = {
    "badMask": "bad_mask", "growMaskRadius": "grow_mask_radius", "rejIter": "rej_iter", "rejSigma": "rej_sigma",
    "fluxOrder": "flux_order", "significanceLimit": "significance_limit",
    "doSignificanceScaling": "do_significance_scaling", "rejectNegativeSolutions": "reject_negative_solutions",
    "doFiltering": "do_filtering", "unitsAreElectrons": "units_are_electrons",
}

#: cp_pipe options with no effect in cpframe (intra-detector, trimmed images only).
_IGNORED = ("doMeasureInterchip", "isTrimmed", "ignoreSaturatedPixels", "nSigmaCoeffClip", "nSigmaCoeffSqrClip")
