"""The configuration of :mod:`cpframe.science.combine` (``CombineConfig``, ``CLIP_METHODS``, ``SCALINGS``,
``STATISTICS``, ``_CAMEL``), importable without the science stack (module docstring of
:mod:`cpframe.science.configs`); :mod:`cpframe.science.combine` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cpframe.core.errors import ConfigError
from cpframe.science.configs.masks import MASK_BITS
from cpframe.science.options import alias_kwargs


MSG_UNKNOWN_KEYS = "unknown combine option(s) {keys}; known options: {known}."

MSG_BAD_VALUE = "combine option {key}={value!r}: {why}"

STATISTICS = ("MEAN", "MEDIAN", "MEANCLIP")

CLIP_METHODS = ("cp_pipe", "astropy")

SCALINGS = ("Unity", "ExposureTime", "DarkTime", "MeanStats", "InputList")

_CAMEL = {
    "calibrationType": "calibration_type",
    "exposureScaling": "exposure_scaling",
    "scalingLevel": "scaling_level",
    "combine": "combine",
    "clip": "clip",
    "nIter": "n_iter",
    "clipMethod": "clip_method",
    "fuseIsr": "fuse_isr",
    "fusedThreads": "fused_threads",
    "mask": "mask",
    "noGoodPixelsMask": "no_good_pixels_mask",
    "maxVisitsToCalcErrorFromInputVariance": "max_visits_to_calc_error_from_input_variance",
    "checkNoData": "check_no_data",
    "censorMaskPlanes": "censor_mask_planes",
    "distributionPercentiles": "distribution_percentiles",
    "flatSource": "flat_source",
    "datasetType": "dataset_type",
}


@dataclass(frozen=True)
class CombineConfig:
    """How to combine (cp_pipe ``CalibCombineConfig``; :meth:`from_dict` takes either naming)."""

    calibration_type: str = "calibration"
    """Written to ``OBSTYPE`` and used in the QA key names (``LSST CALIB <TYPE> ...``)."""
    dataset_type: str = ""
    """Output dataset type name; ``bias`` gives EXPTIME = DARKTIME = 0.0, others 1.0."""
    exposure_scaling: str = "Unity"
    """``Unity``, ``ExposureTime``, ``DarkTime``, ``MeanStats`` or ``InputList`` (scales given)."""
    scaling_level: str = "DETECTOR"
    """Only ``DETECTOR`` is implemented (the LSST default)."""
    combine: str = "MEANCLIP"
    """Statistic: ``MEAN``, ``MEDIAN`` or ``MEANCLIP``."""
    clip: float = 3.0
    """Clipping threshold, in sigma."""
    n_iter: int = 3
    """Mean/stdev clipping passes after the median/IQR pass (astropy: ``maxiters``)."""
    clip_method: str = "cp_pipe"
    """MEANCLIP rule: ``cp_pipe`` (default; afw: median/IQR pass, then mean ± clip·stdev passes
    that re-test every input) or ``astropy`` (``astropy.stats.sigma_clip`` with a median
    centre and population stdev, clipped values stay out; then the mean)."""
    mask: tuple[str, ...] = ("SAT", "DETECTED", "INTRP")
    """Input pixels with any of these mask planes are ignored."""
    no_good_pixels_mask: str = "BAD"
    """Plane set where no input survived or the value is not finite."""
    max_visits_to_calc_error_from_input_variance: int = 5
    """With fewer inputs, the output variance comes from the input variance planes."""
    check_no_data: bool = True
    """Raise if any output pixel carries ``NO_DATA``."""
    censor_mask_planes: bool = True
    """Clear every output plane except ``no_good_pixels_mask``."""
    distribution_percentiles: tuple[float, ...] = (0, 5, 16, 50, 84, 95, 100)
    """Per-amp QA percentiles written to the header."""
    flat_source: str = "DOME"
    """``FLATSRC`` for flats: DOME, TWILIGHT, PSEUDO or SKY."""
    fuse_isr: bool = True
    """Planning: ISR quanta that only this combine reads run fused into it, streamed without
    per-exposure files (:mod:`cpframe.science.fused`); false keeps them as separate quanta."""
    fused_threads: int = 0
    """Threads of a fused combine quantum (:func:`cpframe.science.fused.isr_combine`); 0: its own
    thread plus those of the idle workers on its node when it starts (docs/algorithms.md)."""

    def __post_init__(self):
        problems = []
        if self.combine not in STATISTICS:
            problems.append(MSG_BAD_VALUE.format(key="combine", value=self.combine,
                                                 why=f"use one of {', '.join(STATISTICS)}"))
        if self.exposure_scaling not in SCALINGS:
            problems.append(MSG_BAD_VALUE.format(key="exposureScaling", value=self.exposure_scaling,
                                                 why=f"use one of {', '.join(SCALINGS)}"))
        if self.scaling_level != "DETECTOR":
            problems.append(MSG_BAD_VALUE.format(key="scalingLevel", value=self.scaling_level,
                                                 why="only DETECTOR is implemented"))
        if self.clip_method not in CLIP_METHODS:
            problems.append(MSG_BAD_VALUE.format(key="clipMethod", value=self.clip_method,
                                                 why=f"use one of {', '.join(CLIP_METHODS)}"))
        if not (self.clip > 0):
            problems.append(MSG_BAD_VALUE.format(key="clip", value=self.clip, why="must be > 0"))
        if int(self.n_iter) < 0:
            problems.append(MSG_BAD_VALUE.format(key="nIter", value=self.n_iter, why="must be >= 0"))
        if int(self.fused_threads) < 0:
            problems.append(MSG_BAD_VALUE.format(key="fusedThreads", value=self.fused_threads,
                                                 why="must be >= 0 (0: the idle cores of the node)"))
        for names, key in ((self.mask, "mask"), ((self.no_good_pixels_mask,), "noGoodPixelsMask")):
            bad = [n for n in names if n not in MASK_BITS]
            if bad:
                problems.append(MSG_BAD_VALUE.format(key=key, value=list(names),
                                                     why=f"unknown plane(s) {bad}; known: {', '.join(MASK_BITS)}"))
        if self.flat_source not in ("DOME", "TWILIGHT", "PSEUDO", "SKY"):
            problems.append(MSG_BAD_VALUE.format(key="flatSource", value=self.flat_source,
                                                 why="use DOME, TWILIGHT, PSEUDO or SKY"))
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "CombineConfig":
        """Build from a plain dict using cp_pipe names (``nIter``) or field names (``n_iter``).

        Raises
        ------
        ConfigError
            Unknown keys (all listed) or invalid values.
        """
        kw, _ = alias_kwargs(cls, values, _CAMEL, MSG_UNKNOWN_KEYS)
        for k in ("mask", "distribution_percentiles"):
            if k in kw:
                kw[k] = tuple([kw[k]] if isinstance(kw[k], (str, int, float)) else kw[k])
        if "n_iter" in kw:
            kw["n_iter"] = int(kw["n_iter"])
        if "clip" in kw:
            kw["clip"] = float(kw["clip"])
        return cls(**kw)
