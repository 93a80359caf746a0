"""The configuration of :mod:`cpframe.science.illumination` (``IlluminationConfig``), importable without the science
stack (module docstring of :mod:`cpframe.science.configs`); :mod:`cpframe.science.illumination` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from cpframe.core.errors import ConfigError


#: cpframe's verification threshold: after correction, the re-measured correction's rms deviation from 1.
VERIFY_MAX_DEVIATION = 0.005


@dataclass(frozen=True)
class IlluminationConfig:
    """Star measurement and super-star fit settings (cp_pipe/fgcmcal names in :data:`_ALIASES`)."""

    detection_threshold: float = 10.0
    """Peak significance (sigma of the PSF-smoothed image) for a star to be measured."""
    psf_sigma: float = 1.7
    """Gaussian PSF sigma used to smooth before detection (px)."""
    aperture_radius: float = 6.0
    """Aperture radius (px)."""
    annulus_radii: tuple[float, float] = (8.0, 12.0)
    """Inner and outer radius of the local background annulus (px)."""
    isolation_radius: float = 14.0
    """No other detected peak within this distance (px): isolated stars only."""
    match_radius: float = 1.5
    """Association radius after dither registration (px)."""
    chebyshev_order: int = 4
    """Total order of the per-detector Chebyshev surface (fgcm ``superStarSubCcdChebyshevOrder``)."""
    force_zero_mean: bool = True
    """Zero mean magnitude over the detector (fgcm ``superStarForceZeroMean``)."""
    min_observations: int = 2
    """Stars seen fewer times are not fitted."""
    fit_exposure_zero_points: bool = False
    """Fit a zero point per exposure.  Off: fluxes per second of exposure time are compared directly
    (photometric nights).  With translation-only dithers a free zero point per exposure cannot tell a
    linear gradient of the correction from the stars' magnitudes (FGCM breaks that with the whole focal
    plane and its atmosphere model), so the linear terms are then left out."""
    do_illumination_correction: bool = False
    """Divide the image by an existing correction before measuring (cp_verify)."""
    verify_max_deviation: float = VERIFY_MAX_DEVIATION
    """Verification: largest allowed rms of (c − 1) over the detector for a correction measured after
    applying one (the rms, not the peak: the fit's own noise grows at the corners where few stars fall)."""

    def __post_init__(self):
        problems = []
        if self.chebyshev_order < 0 or self.chebyshev_order > 8:
            problems.append(f"superStarSubCcdChebyshevOrder={self.chebyshev_order} must be 0..8")
        if not (0 < self.aperture_radius < self.annulus_radii[0] < self.annulus_radii[1]):
            problems.append(f"aperture/annulus radii {self.aperture_radius}, {self.annulus_radii} must increase")
        if self.detection_threshold <= 0:
            problems.append(f"detectionThreshold={self.detection_threshold} must be > 0")
        if problems:
            raise ConfigError("illumination correction: " + "; ".join(problems) + ".")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> IlluminationConfig:
        """From cp_pipe/fgcmcal names (``superStarSubCcdChebyshevOrder``) or field names.

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or bad values.
        """
        names = {f.name for f in fields(cls)}
        kw, unknown = {}, []
        for k, v in dict(values or {}).items():
            key = _ALIASES.get(k, k)
            if key in names:
                kw[key] = tuple(v) if key == "annulus_radii" else v
            else:
                unknown.append(k)
        if unknown:
            raise ConfigError(f"illumination correction: unknown option(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(sorted({*_ALIASES, *names}))}.")
        return cls(**kw)


_ALIASES = {
    "superStarSubCcdChebyshevOrder": "chebyshev_order",
    "superStarForceZeroMean": "force_zero_mean",
    "doIlluminationCorrection": "do_illumination_correction",
    "detectionThreshold": "detection_threshold",
    "apertureRadius": "aperture_radius",
    "matchRadius": "match_radius",
    "minObservations": "min_observations",
    "verifyMaxDeviation": "verify_max_deviation",
    "fitExposureZeroPoints": "fit_exposure_zero_points",
}
