"""The configuration of :mod:`cpframe.science.ptc` (``PtcConfig``, ``FIT_TYPES``, ``_ALIASES``), importable without
the science stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.ptc` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.options import alias_kwargs


MSG_UNKNOWN_KEYS = "unknown PTC option(s) {keys}; known options: {known}."


@dataclass(frozen=True)
class PtcConfig:
    """PTC settings (cp_pipe names accepted by :meth:`from_dict`)."""

    n_sigma_clip_ptc: float = 5.5
    """Clip (sigma) for the means and the difference-image variance."""
    n_iter_sigma_clip_ptc: int = 3
    """Clipping iterations."""
    num_edge_suspect: int = 0
    """Pixels at each amp edge ignored (LSST 20)."""
    min_mean_signal: float = 0.0
    """Points with μ at or below this (adu) are masked."""
    max_mean_signal: float = 1e6
    """Points with μ at or above this (adu) are masked."""
    max_signal_initial_ptc_outlier_fit: float = 50000.0
    """Initial fit uses points below this signal (e-, converted with the approximate gain)."""
    scale_max_signal_initial_ptc_outlier_fit: bool = True
    """Convert the limit above from e- to adu with the approximate gain median(μ/var)."""
    max_iterations_ptc_outliers: int = 2
    """Outlier passes."""
    sigma_cut_ptc_outliers: float = 5.0
    """Keep points with |var − model| / max(√var, var·√(2/N)) below this (cp_pipe: /√var)."""
    max_delta_initial_ptc_outlier_fit: float = 9000.0
    """A jump in μ of at least this (e-) across a run of masked points masks all higher points."""
    ptc_fit_type: str = "EXPAPPROXIMATION"
    """EXPAPPROXIMATION (Astier+19 eq. 16), FULLCOVARIANCE (eq. 20) or FULLCOVARIANCE_NO_B (b = 0)."""
    maximum_range_covariances_astier: int = 10
    """Lags [0, L)² at which covariances are measured (FULLCOVARIANCE only)."""
    maximum_range_covariances_astier_full_cov_fit: int = 10
    """Lags [0, r)² the full covariance model is fitted to (r ≤ L)."""
    min_number_good_pixels_for_covariance: int = 10000
    """A pair with fewer usable pixels in an amp gives no covariances for that amp.  On the
    simulator's ``mini`` camera scale (header ``CAMSCALE = MINI``) the count is scaled by the
    mini/full amp area (:func:`covariance_pixel_floor`), so a real pipeline file's threshold,
    made for full-size amps, means the same fraction of an amp."""
    measure_covariances: bool = False
    """Measure the covariances in extraction even without a FULLCOVARIANCE fit type.  cp_pipe
    always measures them; cpframe only when they are used (they cost FFTs per amp and pair):
    the ``ptcExtract`` task kind sets it when its ``maximumRangeCovariancesAstier`` is given (as
    the extraction step of cp_pipe's cpBfk and LSST cpPtc pipelines does)."""

    def __post_init__(self):
        if self.ptc_fit_type not in FIT_TYPES:
            raise ConfigError(f"PTC option ptcFitType={self.ptc_fit_type!r}: use one of "
                              f"{', '.join(FIT_TYPES)}.")
        if self.full_covariance and not 1 <= int(self.maximum_range_covariances_astier_full_cov_fit) <= int(
                self.maximum_range_covariances_astier):
            raise ConfigError(
                "PTC option maximumRangeCovariancesAstierFullCovFit="
                f"{self.maximum_range_covariances_astier_full_cov_fit!r} must be between 1 and "
                f"maximumRangeCovariancesAstier={self.maximum_range_covariances_astier!r}; lower it.")

    @property
    def full_covariance(self) -> bool:
        """True for the FULLCOVARIANCE fit types (covariances are measured)."""
        return self.ptc_fit_type.startswith("FULLCOVARIANCE")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "PtcConfig":
        """Build from cp_pipe names (``nSigmaClipPtc``...) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        kw, _ = alias_kwargs(cls, values, _ALIASES, MSG_UNKNOWN_KEYS)
        return cls(**kw)


_ALIASES = {
    "nSigmaClipPtc": "n_sigma_clip_ptc",
    "nIterSigmaClipPtc": "n_iter_sigma_clip_ptc",
    "numEdgeSuspect": "num_edge_suspect",
    "minMeanSignal": "min_mean_signal",
    "maxMeanSignal": "max_mean_signal",
    "maxSignalInitialPtcOutlierFit": "max_signal_initial_ptc_outlier_fit",
    "scaleMaxSignalInitialPtcOutlierFit": "scale_max_signal_initial_ptc_outlier_fit",
    "maxIterationsPtcOutliers": "max_iterations_ptc_outliers",
    "sigmaCutPtcOutliers": "sigma_cut_ptc_outliers",
    "maxDeltaInitialPtcOutlierFit": "max_delta_initial_ptc_outlier_fit",
    "ptcFitType": "ptc_fit_type",
    "maximumRangeCovariancesAstier": "maximum_range_covariances_astier",
    "maximumRangeCovariancesAstierFullCovFit": "maximum_range_covariances_astier_full_cov_fit",
    "minNumberGoodPixelsForCovariance": "min_number_good_pixels_for_covariance",
}

#: ptcFitType values (cp_pipe names).
FIT_TYPES = ("EXPAPPROXIMATION", "FULLCOVARIANCE", "FULLCOVARIANCE_NO_B")
