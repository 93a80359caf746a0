"""Bias verification (stage ``BIAS``, spec verification.md §4.1; DMTN-101 §4).

The residual is a bias exposure processed by ISR with the bias under test
subtracted, in electrons.  Per amp:

``MEAN``
    mean of the valid pixels (masks DETECTED, BAD, NO_DATA excluded);
``MEDIAN``, ``MEANCLIP``
    median and clipped mean;
``NOISE``
    clipped standard deviation (5 sigma, 3 passes);
``EXPECTED_NOISE``
    the noise a perfect calibration leaves (docs/verification.md):
    ``sqrt(RN_os^2 (1 + k_os) + CALIB_VAR)`` where ``RN_os`` (``READ_NOISE_OVERSCAN``)
    is this exposure's read noise measured in its serial overscan (DMTN-101 4.3; the
    ISR's 3-sigma-clipped STDEV corrected for clipping, times the gain), ``k_os``
    the variance the per-row / per-column overscan medians add (pi/2 / n for medians
    of n overscan pixels) and ``CALIB_VAR`` the calibrations' own noise that the ISR
    propagated into the variance plane (mean variance - header read noise^2);
``CR_NOISE``
    standard deviation after a simple cosmic-ray repair (``N_CR`` pixels repaired);
``READ_NOISE_ADU``
    header ``LSST ISR OVERSCAN RESIDUAL SERIAL STDEV <amp>``;
``AMP_CORNER``
    mean of the 200x200 box at the amp's read-out corner;
and, from the header, the nominal ``GAIN`` (e-/adu) and ``READ_NOISE`` (e-).

Tests: ``MEAN`` (|MEAN| < NOISE), ``NOISE`` ((NOISE - E)/E <= 0.05, one-sided, with
E = EXPECTED_NOISE; cp_verify uses E = RN, which fails on good data whenever the
calibration was combined from few exposures: see docs/verification.md),
``CR_NOISE`` (|NOISE - CR_NOISE|/CR_NOISE <= 0.05), ``PROCESSING`` (False only when the
cosmic-ray repair gave up) and ``READ_NOISE_CONSISTENT`` ((READ_NOISE_OVERSCAN - RN)/RN
<= 0.05: this exposure's overscan read noise, un-truncated, against the nominal (PTC) read
noise).  cp_verify records the last one without counting it; cpframe counts it because
``NOISE`` is measured against this exposure's own overscan, so without it a camera whose
read noise rose would pass (issue 16; docs/verification.md).
The dark stage (``cpframe.verify.dark``) reuses all of this.
"""

from __future__ import annotations

import math

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage
from cpframe.verify.stats import (
    ResidualImage,
    amp_corner_box,
    clipped_stats,
    expected_noise,
    header_amp_value,
    header_value,
    mask_of,
    overscan_correction_variance,
    repair_cosmic_rays,
    truncated_std_factor,
)

__all__ = ["MISSING_NOMINAL_MESSAGE", "check_noise_stage", "measure_noise_stage", "nominal_from_header"]

#: Message when the residual lacks the ISR's gain / read-noise cards (tests check it).
MISSING_NOMINAL_MESSAGE = "has no nominal read noise"


def nominal_from_header(residual: ResidualImage, detector: Detector, required: bool = True) -> dict:
    """Per-amp nominal gain (e-/adu) and read noise (e-) from the residual's header.

    Looks up ``LSST ISR GAIN <amp>`` / ``LSST ISR READNOISE <amp>``, then the scalar
    ``LSST GAIN`` / ``LSST READNOISE`` (spec §3).

    Raises
    ------
    UserInputError
        ``required`` and some amp has no read noise (lists the amps).
    """
    gains = {a: header_amp_value(residual.header, "LSST ISR GAIN", a, "LSST GAIN") for a in detector.amp_names}
    noises = {
        a: header_amp_value(residual.header, "LSST ISR READNOISE", a, "LSST READNOISE") for a in detector.amp_names
    }
    missing = [a for a, v in noises.items() if not math.isfinite(v)]
    if required and missing:
        raise UserInputError(
            f"{residual.path or 'residual image'} {MISSING_NOMINAL_MESSAGE} for amp(s) {', '.join(missing)} "
            "(header 'LSST ISR READNOISE <amp>'). Verification compares the noise with it: run the "
            "verification ISR with gains applied (not bootstrap mode)."
        )
    return {"GAIN": gains, "READ_NOISE": noises}


def _overscan_variance_factor(residual: ResidualImage, amp, config: VerifyConfig) -> float:
    """Variance (in units of RN^2) that subtracting per-row (and per-column) overscan medians adds.

    See :func:`overscan_correction_variance`; the parallel term counts only when the ISR did
    a parallel overscan (its header cards are there).
    """
    parallel = header_value(residual.header, f"LSST ISR OVERSCAN PARALLEL STDEV {amp.name}") is not None
    return overscan_correction_variance(amp, config.overscan_skip_cols, parallel)


def _calibration_variance(residual: ResidualImage, amp, exclude: np.ndarray, read_noise: float,
                          mean: float) -> float:
    """Noise variance of the calibrations applied, as the ISR propagated it (0 without a variance plane).

    The ISR's variance is calibration variance + image (photon term, electrons) + RN^2; the
    photon term of a residual is its mean, which a wrong calibration makes non-zero, so it is
    taken out with the read noise.
    """
    total = expected_noise(residual, amp, exclude)
    if not math.isfinite(total):
        return 0.0
    photon = mean if math.isfinite(mean) else 0.0
    return max(total**2 - read_noise**2 - photon, 0.0)


def measure_noise_stage(residual: ResidualImage, detector: Detector, config: VerifyConfig) -> dict:
    """Statistics of the BIAS / DARK stages (module docstring)."""
    meta = nominal_from_header(residual, detector)
    exclude = mask_of(residual, config.mask_names) | ~np.isfinite(residual.image)
    clip_factor = truncated_std_factor(config.overscan_clip_n_sigma)
    amps: dict[str, dict] = {}
    n_cr_total = 0
    for amp in detector.amps:
        ys, xs = amp.bbox
        data = residual.image[ys, xs]
        bad = exclude[ys, xs]
        vals = data[~bad]
        clip = clipped_stats(vals, config.n_sigma_clip, config.clip_max_iter)
        repaired, cr = repair_cosmic_rays(
            data, bad, clip.mean, clip.stdev, n_sigma=config.cr_n_sigma,
            sharp_n_sigma=config.cr_sharpness_n_sigma, neighbour_n_sigma=config.cr_neighbour_n_sigma,
        )
        n_cr_total += int(cr.sum())
        good = repaired[~bad]
        cy, cx = amp_corner_box(amp, config.amp_corner_box)
        corner = residual.image[cy, cx][~exclude[cy, cx]]
        gain, rn = meta["GAIN"][amp.name], meta["READ_NOISE"][amp.name]
        rn_adu = header_amp_value(residual.header, "LSST ISR OVERSCAN RESIDUAL SERIAL STDEV", amp.name)
        rn_os = gain * rn_adu / clip_factor if math.isfinite(gain * rn_adu) and rn_adu > 0 else math.nan
        rn_ref = rn_os if math.isfinite(rn_os) else rn
        k_os = _overscan_variance_factor(residual, amp, config)
        mean = float(np.mean(vals)) if vals.size else math.nan
        calib_var = _calibration_variance(residual, amp, exclude, rn, mean)
        amps[amp.name] = {
            "MEAN": mean,
            "MEDIAN": clip.median,
            "MEANCLIP": clip.mean,
            "NOISE": clip.stdev,
            "EXPECTED_NOISE": math.sqrt(rn_ref**2 * (1.0 + k_os) + calib_var),
            "READ_NOISE_OVERSCAN": rn_os,
            "OVERSCAN_NOISE_VAR": rn_ref**2 * k_os,
            "CALIB_NOISE": math.sqrt(calib_var),
            "CR_NOISE": float(np.std(good, ddof=1)) if good.size > 1 else math.nan,
            "N_CR": int(cr.sum()),
            "READ_NOISE_ADU": rn_adu,
            "AMP_CORNER": float(np.mean(corner)) if corner.size else math.nan,
            "NMASKED": int(bad.sum()),
            "GAIN": meta["GAIN"][amp.name],
            "READ_NOISE": meta["READ_NOISE"][amp.name],
        }
        for p in (0, 5, 16, 50, 84, 95, 100):
            for kind in ("BIAS", "DARK"):
                v = header_value(residual.header, f"LSST CALIB {kind} {amp.name} DISTRIBUTION {p}-PCT")
                if v is not None:
                    amps[amp.name][f"{kind}_DIST_{p}_PCT"] = float(v)
    det = {"N_CR": n_cr_total, "FORCE_FAILURE": bool(n_cr_total > config.cr_max_pixels)}
    return {"METADATA": meta, "AMP": amps, "DET": det}


def _ratio(a: float, b: float) -> float:
    """``a / b`` as numpy (cp_verify) divides: NaN for 0 / 0, an infinity for x / 0, so a test on it fails instead of
    raising (a one-exposure bias verified against itself has a residual noise of exactly 0)."""
    if b != 0:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)


def check_noise_stage(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the BIAS / DARK stages (module docstring)."""
    force = bool(stats["DET"].get("FORCE_FAILURE", False))
    out: dict[str, dict] = {}
    for amp, s in stats["AMP"].items():
        noise, rn, cr_noise = s["NOISE"], s["READ_NOISE"], s["CR_NOISE"]
        expected = s["EXPECTED_NOISE"]
        tests = {
            "MEAN": bool(abs(s["MEAN"]) < noise),
            "NOISE": bool(_ratio(noise - expected, expected) <= config.noise_threshold),
            "CR_NOISE": bool(_ratio(abs(noise - cr_noise), cr_noise) <= config.cr_noise_threshold),
            "PROCESSING": not force,
        }
        rn_adu, rn_os = s["READ_NOISE_ADU"], s.get("READ_NOISE_OVERSCAN", math.nan)
        if math.isfinite(rn_adu) and rn_adu != 0:
            value = _ratio(rn_os - rn, rn)
            tests["READ_NOISE_CONSISTENT"] = bool(math.isfinite(value) and value <= config.read_noise_threshold)
        out[amp] = tests
    return {"AMP": out, "DET": {}}


BIAS = register_stage(Stage(
    name="BIAS", type_name="Bias", kind="exposure", measure=measure_noise_stage, check=check_noise_stage,
))
