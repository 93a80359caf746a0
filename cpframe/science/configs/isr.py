"""The configuration of :mod:`cpframe.science.isr` (``IsrConfig``, ``DITHER_MODES``, ``OVERSCAN_FIT_TYPES``,
``SATURATION_SOURCES``, ``_ALIASES``), importable without the science stack (module docstring of
:mod:`cpframe.science.configs`); :mod:`cpframe.science.isr` re-exports it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from cpframe.core.errors import ConfigError


MSG_UNKNOWN_KEYS = "unknown ISR option(s) {keys}; known options: {known}."

MSG_NOT_IMPLEMENTED = ("ISR option(s) {keys} = true are not implemented by cpframe (off for calibration "
                       "products, spec §3); set them to false.")

MSG_BAD_VALUE = "ISR option {key}={value!r}: {why}"

DITHER_MODES = ("SYMMETRIC", "POSITIVE", "NEGATIVE", "NONE")

OVERSCAN_FIT_TYPES = ("MEDIAN_PER_ROW", "MEAN_PER_ROW", "MEDIAN", "MEAN", "MEANCLIP")

SATURATION_SOURCES = ("PTCTURNOFF", "CAMERAMODEL", "NONE")

FLAT_SCALINGS = ("USER", "MEAN", "MEDIAN")


@dataclass(frozen=True)
class IsrConfig:
    """ISR switches and parameters (ip_isr ``IsrTaskLSSTConfig`` names via :meth:`from_dict`).

    Defaults are the cp_pipe calibration baseline (spec §3): overscan, assembly, NaN
    masking, variance and statistics on; everything else off.
    """

    do_bootstrap: bool = False
    """No PTC: gain 1, read noise from the overscan residual, no saturation level, adu."""
    integer_dither_mode: str = "SYMMETRIC"
    """Dither added to the integer counts: SYMMETRIC [-0.5, 0.5), POSITIVE, NEGATIVE or NONE."""
    do_overscan: bool = True
    """Serial overscan subtraction."""
    do_parallel_overscan: bool = True
    """Parallel overscan subtraction."""
    overscan_fit_type: str = "MEDIAN_PER_ROW"
    """MEDIAN_PER_ROW, MEAN_PER_ROW, MEDIAN, MEAN or MEANCLIP."""
    overscan_num_sigma_clip: float = 3.0
    """Clip (sigma) for the per-row overscan statistics."""
    overscan_leading_to_skip: int = 3
    """Overscan columns (rows for parallel) skipped at the start."""
    overscan_trailing_to_skip: int = 3
    """Overscan columns (rows for parallel) skipped at the end."""
    serial_max_deviation: float = 1000.0
    """Serial overscan pixels further than this (adu) from the median are ignored."""
    parallel_max_deviation: float = 100.0
    """Parallel overscan pixels further than this (adu) from the median are ignored."""
    do_saturation: bool = False
    """Mask pixels at or above the saturation level as SAT."""
    do_suspect: bool = False
    """Mask pixels at or above the suspect level as SUSPECT."""
    saturation_source: str = "PTCTURNOFF"
    """Where the saturation level comes from: PTCTURNOFF, CAMERAMODEL (none in cpframe's models) or NONE."""
    saturation_level: float = math.nan
    """Saturation level (adu) for every amp; overrides the source when finite."""
    suspect_level: float = math.nan
    """Suspect level (adu) for every amp; NaN = no suspect masking."""
    do_apply_gains: bool = False
    """Multiply by the gain: output in electrons."""
    use_gains_from: str = "PTC"
    """PTC, or LINEARIZER (the gains and noise the linearizer measured on its own ramp; no PTC needed)."""
    gains: Mapping[str, float] = field(default_factory=dict)
    """Per-amp configured gains (e-/adu); a finite value overrides the PTC / bootstrap gain."""
    do_correct_gains: bool = False
    """Multiply the PTC gains by the gain correction's per-amp adjustments (calibs['gain_correction'],
    optional as in ip_isr: skipped when none is found; cpframe/science/gain_correction.py)."""
    do_crosstalk: bool = False
    """Subtract crosstalk (needs calibs['crosstalk'])."""
    do_quadratic_crosstalk: bool = False
    """Also subtract the quadratic crosstalk term (needs a quadratic matrix)."""
    do_linearize: bool = False
    """Apply the linearity correction (needs calibs['linearizer'])."""
    do_deferred_charge: bool = False
    """Correct the serial trap (needs calibs['cti']; cpframe/science/cti.py)."""
    do_cti_statistics: bool = False
    """Write the EPER statistics (last data column, first overscan columns) to the header."""
    do_assemble_ccd: bool = True
    """Assemble amps into the detector image (always on)."""
    do_bias: bool = False
    do_dark: bool = False
    do_defect: bool = False
    do_nan_masking: bool = True
    do_brighter_fatter: bool = False
    """Brighter-fatter kernel correction after dark and defects (needs calibs['bfk'];
    cpframe/science/bfk.py); the image is converted to electrons with the kernel's gains if needed."""
    brighter_fatter_correction_method: str = "COULTON18"
    """COULTON18 (ip_isr's kernel correction, calibs['bfk']) or ASTIER23 (the electrostatic boundary-shift
    correction, calibs['electro_bf']: cpframe/science/electrostatic.py)."""
    brighter_fatter_level: str = "DETECTOR"
    """The detector kernel (ip_isr's default; the only level ip_isr applies)."""
    brighter_fatter_max_iter: int = 10
    brighter_fatter_threshold: float = 1000.0
    """Stop iterating when the summed absolute change of the corrected image is below this (e-)."""
    do_variance: bool = True
    do_flat: bool = False
    do_illumination_correction: bool = False
    """Divide by the illumination correction after the flat (needs calibs['illumination'];
    ip_isr ``illuminationCorrection``; cpframe/science/illumination.py)."""
    do_fringe: bool = False
    """Fit and subtract the fringe frame after the flat (legacy IsrTask ``doFringe``, ``fringeAfterFlat``;
    needs calibs['fringe']; only for the filters of ``fringe_filters``; cpframe/science/fringe.py)."""
    fringe_filters: tuple[str, ...] = ()
    """Physical filters or bands fringes are removed from (ip_isr ``fringe.filters``; empty: none)."""
    fringe_small: int = 3
    """Half-size of the fringe measurement boxes (pixels; ``fringe.small``)."""
    fringe_large: int = 30
    """Half-size of the background scale (pixels; ``fringe.large``): the background is removed in 2x bins."""
    fringe_iterations: int = 20
    """Rejection rounds of the amplitude fit (``fringe.iterations``)."""
    fringe_clip: float = 3.0
    """Rejection threshold of the amplitude fit (sigma; ``fringe.clip``)."""
    flat_scaling_type: str = "USER"
    """USER (divide by flat/flat_user_scale), MEAN or MEDIAN of the flat."""
    flat_user_scale: float = 1.0
    no_data_variance: float = 1e10
    """Variance given to pixels where the flat has NO_DATA."""
    do_raise_on_calib_mismatch: bool = False
    """Raise (instead of logging a warning) when a bias/dark unit differs from the image's."""
    do_standard_statistics: bool = True
    """Per-amp FINAL MEAN/MEDIAN/STDEV and mask counts in the header."""
    mask_negative_variance: bool = False
    """Set BAD where the variance is negative."""

    def __post_init__(self):
        problems = []
        checks = (("integer_dither_mode", DITHER_MODES), ("overscan_fit_type", OVERSCAN_FIT_TYPES),
                  ("saturation_source", SATURATION_SOURCES), ("flat_scaling_type", FLAT_SCALINGS),
                  ("use_gains_from", ("PTC", "LINEARIZER")),
                  ("brighter_fatter_correction_method", ("COULTON18", "ASTIER23")),
                  ("brighter_fatter_level", ("DETECTOR",)))
        for key, allowed in checks:
            if getattr(self, key) not in allowed:
                problems.append(MSG_BAD_VALUE.format(key=key, value=getattr(self, key),
                                                     why=f"use one of {', '.join(allowed)}"))
        if not self.do_assemble_ccd:
            problems.append(MSG_BAD_VALUE.format(key="doAssembleCcd", value=False, why="cpframe always assembles"))
        if self.overscan_leading_to_skip < 0 or self.overscan_trailing_to_skip < 0:
            problems.append(MSG_BAD_VALUE.format(key="leadingToSkip/trailingToSkip",
                                                 value=(self.overscan_leading_to_skip,
                                                        self.overscan_trailing_to_skip), why="must be >= 0"))
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def units(self) -> str:
        """Units of the output image."""
        return "electron" if (self.do_apply_gains and not self.do_bootstrap) else "adu"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "IsrConfig":
        """Build from a plain dict with ip_isr/cp_pipe names (``doBias``) or field names (``do_bias``).

        ip_isr switches that cpframe does not implement (``doDeferredCharge``,
        ``doBrighterFatter``, ``doInterpolate``...) are accepted when false.

        Raises
        ------
        ConfigError
            Unknown keys (all listed), unimplemented switches set true, or bad values.
        """
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        given: dict[str, str] = {}
        unknown, unimplemented = [], []
        for k, v in values.items():
            key = _ALIASES.get(k, k)
            if key in names:
                kw[key] = v
                given[key] = k
            elif k in _ACCEPTED_WHEN_FALSE:
                if v:
                    unimplemented.append(k)
            else:
                unknown.append(k)
        if unknown:
            known = sorted(set(_ALIASES) | names | set(_ACCEPTED_WHEN_FALSE))
            raise ConfigError(MSG_UNKNOWN_KEYS.format(keys=", ".join(map(repr, unknown)), known=", ".join(known)))
        if unimplemented:
            raise ConfigError(MSG_NOT_IMPLEMENTED.format(keys=", ".join(map(repr, unimplemented))))
        problems = []
        for k, v in list(kw.items()):
            f = _FIELD_TYPES[k]
            if f == "bool" and not isinstance(v, bool):
                problems.append(MSG_BAD_VALUE.format(key=given[k], value=v, why="must be true or false"))
            elif f in ("float", "int"):
                try:
                    kw[k] = float(v) if f == "float" else int(v)
                except (TypeError, ValueError):
                    problems.append(MSG_BAD_VALUE.format(key=given[k], value=v, why="must be a number"))
        if problems:
            raise ConfigError("; ".join(problems))
        if "gains" in kw:
            kw["gains"] = {str(a): float(g) for a, g in dict(kw["gains"]).items()}
        if "fringe_filters" in kw:
            f = kw["fringe_filters"]
            kw["fringe_filters"] = (str(f),) if isinstance(f, str) else tuple(str(x) for x in f or ())
        return cls(**kw)


_ALIASES = {
    "doBootstrap": "do_bootstrap",
    "integerDitherMode": "integer_dither_mode",
    "doOverscan": "do_overscan",
    "doSerialOverscan": "do_overscan",
    "doParallelOverscan": "do_parallel_overscan",
    "fitType": "overscan_fit_type",
    "overscanFitType": "overscan_fit_type",
    "numSigmaClip": "overscan_num_sigma_clip",
    "leadingToSkip": "overscan_leading_to_skip",
    "trailingToSkip": "overscan_trailing_to_skip",
    "maxDeviation": "serial_max_deviation",
    "parallelMaxDeviation": "parallel_max_deviation",
    "doSaturation": "do_saturation",
    "doSuspect": "do_suspect",
    "defaultSaturationSource": "saturation_source",
    "saturation": "saturation_level",
    "suspectLevel": "suspect_level",
    "doApplyGains": "do_apply_gains",
    "useGainsFrom": "use_gains_from",
    "doCorrectGains": "do_correct_gains",
    "doCrosstalk": "do_crosstalk",
    "doQuadraticCrosstalkCorrection": "do_quadratic_crosstalk",
    "doLinearize": "do_linearize",
    "doDeferredCharge": "do_deferred_charge",
    "doCtiStatistics": "do_cti_statistics",
    "isrStats.doCtiStatistics": "do_cti_statistics",
    "doAssembleCcd": "do_assemble_ccd",
    "doBias": "do_bias",
    "doDark": "do_dark",
    "doDefect": "do_defect",
    "doNanMasking": "do_nan_masking",
    "doBrighterFatter": "do_brighter_fatter",
    "brighterFatterCorrectionMethod": "brighter_fatter_correction_method",
    "brighterFatterLevel": "brighter_fatter_level",
    "brighterFatterMaxIter": "brighter_fatter_max_iter",
    "brighterFatterThreshold": "brighter_fatter_threshold",
    "doVariance": "do_variance",
    "doFlat": "do_flat",
    "doIlluminationCorrection": "do_illumination_correction",
    "doFringe": "do_fringe",
    "fringeFilters": "fringe_filters",
    "fringeSmall": "fringe_small",
    "fringeLarge": "fringe_large",
    "fringeIterations": "fringe_iterations",
    "fringeClip": "fringe_clip",
    "flatScalingType": "flat_scaling_type",
    "flatUserScale": "flat_user_scale",
    "noDataVariance": "no_data_variance",
    "doRaiseOnCalibMismatch": "do_raise_on_calib_mismatch",
    "doStandardStatistics": "do_standard_statistics",
    "maskNegativeVariance": "mask_negative_variance",
}

#: ip_isr switches that are off for calibration products (spec §3); accepted when false.
_ACCEPTED_WHEN_FALSE = (
    "doInterpolate", "doSetBadRegions",
    "doWidenSaturationTrails", "doAmpOffset", "doBinnedExposures", "doE2VEdgeBleedMask",
    "doITLDipMask", "doITLSatSagMask", "doITLEdgeBleedMask", "doVignette",
    "doCalculateStatistics", "doCheckUnprocessableData", "doDiffNonLinearCorrection", "doSaturationInterpolation",
    "doFluxConservingBrighterFatterCorrection", "doWrite", "doStrayLight", "doAttachTransmissionCurve",
)

_FIELD_TYPES = {f.name: ("bool" if f.type in ("bool",) else "float" if f.type in ("float",)
                         else "int" if f.type in ("int",) else "other") for f in fields(IsrConfig)}
