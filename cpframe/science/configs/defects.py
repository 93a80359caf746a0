"""The configuration of :mod:`cpframe.science.defects` (``DefectsConfig``, ``COMBINATION_MODES``,
``THRESHOLD_TYPES``, ``_ALIASES``), importable without the science stack (module docstring of
:mod:`cpframe.science.configs`); :mod:`cpframe.science.defects` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


MSG_UNKNOWN_KEYS = "unknown defects option(s) {keys}; known options: {known}."

MSG_BAD_VALUE = "defects option {key}={value!r}: {why}"

THRESHOLD_TYPES = ("STDEV", "VALUE")

COMBINATION_MODES = ("OR", "AND", "FRACTION")


@dataclass(frozen=True)
class DefectsConfig:
    """Defect-finding settings (cp_pipe names accepted by :meth:`from_dict`)."""

    threshold_type_bias: str = "VALUE"
    """STDEV or VALUE for combined biases (LSST: VALUE)."""
    threshold_type_dark: str = "STDEV"
    """STDEV or VALUE for combined darks (LSSTCam/ComCam/LATISS: VALUE)."""
    threshold_type_flat: str = "STDEV"
    """STDEV or VALUE for combined flats."""
    n_sigma_bright: float = 4.8
    """STDEV mode: hot above m + n_sigma_bright·s."""
    n_sigma_dark: float = -5.0
    """STDEV mode, flats: cold below m + n_sigma_dark·s."""
    dark_current_threshold: float = 5.0
    """VALUE mode, darks: hot above m + this·t_exp/g (e-/s)."""
    bias_threshold: float = 1000.0
    """VALUE mode, biases: hot above m + this (adu)."""
    frac_threshold_flat: float = 0.8
    """VALUE mode, flats: cold below this·m."""
    n_pix_border_left_right: int = 5
    """Edge border (columns) marked when ``edges_as_defects``."""
    n_pix_border_up_down: int = 5
    """Edge border (rows) marked when ``edges_as_defects``."""
    edges_as_defects: bool = False
    """Mark the detector border as defects (LSST: true)."""
    saturated_column_dilation_radius: int = 0
    """Widen each SAT pixel by ± this along its row (LSST: 2)."""
    bad_on_and_off_pixel_column_threshold: int = 50
    """A column with at least this many bad pixels is filled between its lowest and highest one..."""
    good_pixel_column_gap_threshold: int = 30
    """...except gaps of at least this many good pixels."""
    bad_pixels_to_fill_column_threshold: int = -1
    """At least this many bad pixels in an amp column -> the whole amp column (-1 = off; LSST 1000)."""
    saturated_pixels_to_fill_column_threshold: int = -1
    """At least this many SAT pixels in an amp column -> the whole amp column (-1 = off; LSST 20)."""
    combination_mode: str = "OR"
    """How inputs of one image type merge: OR, AND or FRACTION."""
    combination_fraction: float = 0.7
    """FRACTION mode threshold."""
    fit_amp_gradient: bool = False
    """Flats: divide each amp by a smooth (quadratic) surface before thresholding."""

    def __post_init__(self):
        problems = []
        for key in ("threshold_type_bias", "threshold_type_dark", "threshold_type_flat"):
            if getattr(self, key) not in THRESHOLD_TYPES:
                problems.append(MSG_BAD_VALUE.format(key=key, value=getattr(self, key),
                                                     why=f"use one of {', '.join(THRESHOLD_TYPES)}"))
        if self.combination_mode not in COMBINATION_MODES:
            problems.append(MSG_BAD_VALUE.format(key="combinationMode", value=self.combination_mode,
                                                 why=f"use one of {', '.join(COMBINATION_MODES)}"))
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "DefectsConfig":
        """Build from cp_pipe names (``nSigmaBright``, ``thresholdType`` sets all three types) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        values = dict(values or {})
        kw, both = alias_kwargs(cls, values, _ALIASES, MSG_UNKNOWN_KEYS,
                                extra_known=("thresholdType", "threshold_type"))
        for k in both:  # one threshold type for every image type, unless one is given
            for t in ("bias", "dark", "flat"):
                kw.setdefault(f"threshold_type_{t}", values[k])
        return cls(**kw)


_ALIASES = {
    "nSigmaBright": "n_sigma_bright",
    "nSigmaDark": "n_sigma_dark",
    "darkCurrentThreshold": "dark_current_threshold",
    "biasThreshold": "bias_threshold",
    "fracThresholdFlat": "frac_threshold_flat",
    "nPixBorderLeftRight": "n_pix_border_left_right",
    "nPixBorderUpDown": "n_pix_border_up_down",
    "edgesAsDefects": "edges_as_defects",
    "saturatedColumnDilationRadius": "saturated_column_dilation_radius",
    "badOnAndOffPixelColumnThreshold": "bad_on_and_off_pixel_column_threshold",
    "goodPixelColumnGapThreshold": "good_pixel_column_gap_threshold",
    "badPixelsToFillColumnThreshold": "bad_pixels_to_fill_column_threshold",
    "saturatedPixelsToFillColumnThreshold": "saturated_pixels_to_fill_column_threshold",
    "combinationMode": "combination_mode",
    "combinationFraction": "combination_fraction",
    "fitAmpGradient": "fit_amp_gradient",
    "thresholdTypeBias": "threshold_type_bias",
    "thresholdTypeDark": "threshold_type_dark",
    "thresholdTypeFlat": "threshold_type_flat",
}
