"""Thresholds and statistics settings of verification (:mod:`cpframe.verify`), in one frozen dataclass.

Defined here, beside the science modules' configurations (:mod:`cpframe.science.configs`), so that the planner
reads it without importing the verification package (whose import registers every stage, with numpy, numba and
astropy); :mod:`cpframe.verify.config` re-exports it.

Defaults are cp_verify's (``CpVerifyStatsConfig`` and the per-type tasks, spec
verification.md §3-4) except where docs/verification.md says cpframe differs.
A pipeline definition or a campaign may override any field by name through
:meth:`VerifyConfig.from_mapping`, which rejects unknown names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cpframe.core.errors import UserInputError

__all__ = ["TEST_NOTES", "UNKNOWN_FIELD_MESSAGE", "VerifyConfig"]

#: Message for an override naming a field that does not exist (tests check it).
UNKNOWN_FIELD_MESSAGE = "unknown verification setting(s)"


@dataclass(frozen=True)
class VerifyConfig:
    """Statistics settings and test thresholds used by every verification stage."""

    # -- statistics machinery (spec §3) ----------------------------------------------------
    mask_names: tuple[str, ...] = ("DETECTED", "BAD", "NO_DATA")
    """Mask planes whose pixels are excluded from the per-amp statistics."""
    n_sigma_clip: float = 5.0
    """Clipping half-width in units of the (clipped) standard deviation."""
    clip_max_iter: int = 3
    """Number of clipping passes (the first one is centred on the median, width from the IQR)."""
    amp_corner_box: int = 200
    """Side (pixels) of the AMP_CORNER box at the amp's read-out corner; cut to the amp size."""

    # -- simple cosmic-ray repair (CR_NOISE) ------------------------------------------------
    cr_n_sigma: float = 6.0
    """A CR pixel is above the clipped mean by more than this many clipped sigma."""
    cr_sharpness_n_sigma: float = 3.0
    """... and above the median of its 8 neighbours by more than this many sigma (sharp, not a source)."""
    cr_neighbour_n_sigma: float = 3.0
    """A pixel touching a CR is CR too if above the clipped mean by this many sigma."""
    cr_max_pixels: int = 10000
    """More CR pixels than this in one detector sets FORCE_FAILURE (PROCESSING test fails)."""

    # -- bias and dark (spec §4.1, §4.2) ----------------------------------------------------
    noise_threshold: float = 0.05
    """NOISE: (NOISE - E) / E must not exceed this (one-sided, as cp_verify); E = EXPECTED_NOISE."""
    cr_noise_threshold: float = 0.05
    """CR_NOISE: |NOISE - CR_NOISE| / CR_NOISE must not exceed this."""
    overscan_clip_n_sigma: float = 3.0
    """Clipping of the ISR's overscan residual STDEV (3 sigma in ip_isr): its bias is corrected."""
    overscan_skip_cols: int = 6
    """Overscan columns (rows) the ISR skips per amp (3 leading + 3 trailing, the LSST default)."""
    read_noise_threshold: float = 0.10
    """READ_NOISE_CONSISTENT: (READ_NOISE_OVERSCAN - RN) / RN limit (one-sided; counted in SUCCESS)."""

    # -- flat (spec §4.3) -------------------------------------------------------------------
    flat_noise_tolerance: float = 0.10
    """NOISE: |NOISE / EXPECTED_NOISE - 1| must not exceed this (two-sided; see docs)."""
    flat_det_scatter_threshold: float = 0.05
    """Detector SCATTER: std(amp MEANs) / mean(amp MEANs) limit."""
    flat_exp_scatter_threshold: float = 0.05
    """Exposure SCATTER: std(detector MEANs) / mean(detector MEANs) limit."""
    flat_sat_fraction_threshold: float = 0.001
    """SATURATION: largest allowed fraction of SAT-masked pixels in an amp."""

    # -- defects (spec §4.4) ----------------------------------------------------------------
    defect_mask_names: tuple[str, ...] = ("BAD",)
    """Mask planes that mark defects in the corrected image."""
    defects_stdev_tolerance: float = 0.02
    """STDEV: the unmasked clipped stdev may be this much (relative) below the masked one."""
    prob_test_n_sigma_excess: float = 5.0
    """PROB_TEST: improbable pixels outside defects may exceed the Gaussian expectation by
    this many Poisson sigma (plus one pixel) before the test fails."""

    # -- PTC (spec §4.5) --------------------------------------------------------------------
    ptc_gain_threshold_pct: float = 5.0
    """PTC_GAIN: 100 |g_PTC - g_nominal| / g_nominal limit (percent)."""
    ptc_noise_threshold_pct: float = 5.0
    """PTC_NOISE: 100 |sigma_PTC - sigma_nominal| / sigma_nominal limit (percent)."""
    ptc_error_n_sigma: float = 3.0
    """PTC_GAIN / PTC_NOISE also pass when the difference is below this many fit errors."""
    ptc_turnoff_threshold_e: float = 90000.0
    """PTC_TURNOFF: turnoff (adu) x gain must exceed this many electrons."""
    ptc_a00_ranges: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {"ITL": (-4.56e-6, 6.91e-7), "E2V": (-3.52e-6, -2.61e-6)}
    )
    """PTC_BFE_A00: open interval of a00 allowed per sensor vendor."""
    ptc_noise_independence_threshold: float = 1.25
    """NOISE_SIGNAL_INDEPENDENCE limit on the per-pair overscan noise statistic."""

    # -- linearizer (spec §4.7; cp_verify verifyLinearity.py) -------------------------------
    linearity_max_residual_spline_pct: float = 1.0
    """MAX_RESIDUAL_ERROR (Spline): largest |S(node) / node| in percent."""
    linearity_expected_quadratic_coeff: float = 1e-6
    """MAX_RESIDUAL_ERROR (Squared/Polynomial): |c_quadratic| limit (1/adu); higher orders scale by its root."""
    linearity_max_fit_residual: float = 0.001
    """FIT_RESIDUAL (cpframe): largest |corrected ramp / line - 1| above 1 % of the turnoff."""
    # -- CTI (cpframe's check; LSST sensor requirement serial CTE > 0.999995) ------------------
    cti_max: float = 5e-6
    """CTI: the global serial CTI per amp must be below this."""
    # -- gain correction (cpframe's check, cpframe/verify/gain_correction.py) --------------------
    gain_correction_max_adjustment: float = 0.05
    """ADJUSTMENT: largest |adjustment - 1| (cp_pipe's max_fractional_gain_ratio)."""
    # -- flat gradient reference (cpframe's check, cpframe/verify/flat_gradient.py) ------------
    flat_gradient_max_residual: float = 0.01
    """FIT_RESIDUAL: largest rms of the binned flat about the fitted model (fraction)."""
    flat_gradient_max_gradient_pct: float = 10.0
    """GRADIENT: largest change (%) of the planar gradient across the fitted radius."""
    # -- illumination correction (cpframe's check, cpframe/verify/illumination.py) -------------
    illumination_max_rms: float = 0.005
    """ILLUMINATION: rms of (c - 1) of the correction re-measured after applying one must be below this."""
    # -- brighter-fatter kernel (cpframe's check, cpframe/verify/bfk.py) ------------------------
    bfk_max_nonlinearity: float = 0.01
    """VARIANCE_LINEAR: largest departure of the BF-corrected PTC from a straight line (relative)."""
    bfk_max_mean_e: float = 50000.0
    """Pairs up to this mean (e-) enter the BFK check (the first-order correction's own limit)."""
    bfk_min_pairs_kept: float = 0.8
    """BFK PAIRS_KEPT: the corrected PTC must keep at least this fraction of the pairs in range."""
    # -- electrostatic brighter-fatter (cpframe's check, cpframe/verify/electrostatic.py) -----
    electrostatic_bf_max_nonlinearity: float = 0.01
    """ELECTROSTATIC_BF VARIANCE_LINEAR: largest departure of the ASTIER23-corrected PTC from a straight line."""
    electrostatic_bf_max_mean_e: float = 50000.0
    """Pairs up to this mean (e-) enter the ELECTROSTATIC_BF check (the BFK check's range: the same pairs)."""
    electrostatic_bf_min_pairs_kept: float = 0.8
    """ELECTROSTATIC_BF PAIRS_KEPT: the corrected PTC must keep at least this fraction of the pairs in range."""
    # -- brighter-fatter kernel on stars (cp_verify CpVerifyBfkTask, cpframe/verify/bfk_stars.py) -
    bfk_bright_slope_max: float = -0.5
    """BRIGHT_SLOPE: the exponential slope of (uncorrected - corrected size) vs magnitude must be below this."""
    bfk_min_matches: int = 10
    """NUM_MATCHES: more stars than this matched between the corrected and uncorrected catalogues."""
    bfk_match_radius: float = 3.0
    """Match radius (px) between the two catalogues (cp_verify's matchRadiusPix)."""
    bfk_max_slope_ratio: float = 0.5
    """SIZE_SLOPE_REDUCED: |size-flux slope corrected| / |uncorrected| must be at most this."""
    # -- sky and fringe frames (cpframe's checks, cpframe/verify/sky.py) ------------------------
    sky_max_noise: float = 0.003
    """SKY NOISE: median per-bin standard error of the sky frame (relative to the sky) below this."""
    sky_min_coverage: float = 0.9
    """SKY COVERAGE: at least this fraction of the sky frame's bins measured."""
    fringe_min_snr: float = 3.0
    """FRINGE SNR: the fringe frame's rms over its noise, in 7 x 7 px boxes, at least this."""
    # -- science (cpframe's own check) ------------------------------------------------------
    science_step_threshold: float = 0.01
    """AMP_STEP: largest |level jump| across an amp boundary relative to the detector background."""
    science_step_strip: int = 4
    """Width (pixels) of the strips compared on each side of an amp boundary."""
    science_structure_threshold: float = 3.0
    """COLUMN/ROW_STRUCTURE: robust scatter of the profile over its pure-noise expectation."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> VerifyConfig:
        """Defaults overridden by ``values`` (kebab- or snake-case names).

        >>> VerifyConfig.from_mapping({"noise-threshold": 0.1}).noise_threshold
        0.1

        Raises
        ------
        UserInputError
            A name that is not a field (all such names are listed at once).
        """
        if not values:
            return cls()
        known = {f.name for f in fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(k for k in clean if k not in known)
        if unknown:
            raise UserInputError(
                f"{UNKNOWN_FIELD_MESSAGE}: {', '.join(unknown)}. "
                f"Known settings are: {', '.join(sorted(known))}."
            )
        for k in ("mask_names", "defect_mask_names"):
            if k in clean:
                clean[k] = tuple(clean[k])
        return replace(cls(), **clean)


#: (stage, test) -> (what passes, why it differs from cp_verify or was loosened, or "").  The report
#: prints these next to each result, so a reviewer sees every cpframe change at the verdict
#: (issue 16); docs/verification.md has the derivations.
TEST_NOTES: dict[tuple[str, str], tuple[str, str]] = {
    ("BIAS", "MEAN"): ("|MEAN| < NOISE", ""),
    ("BIAS", "NOISE"): ("(NOISE - E)/E <= 5 %, E = expected noise",
                        "E adds the calibration's own noise and the overscan correction's to the read noise: "
                        "cp_verify's E = read noise fails every good bias combined from few exposures (+8 % "
                        "for 6); a raised read noise is caught by READ_NOISE_CONSISTENT instead"),
    ("BIAS", "CR_NOISE"): ("|NOISE - CR_NOISE|/CR_NOISE <= 5 %", ""),
    ("BIAS", "PROCESSING"): ("the cosmic-ray repair did not give up", ""),
    ("BIAS", "READ_NOISE_CONSISTENT"): ("(overscan read noise - PTC read noise)/PTC read noise <= 10 %",
                                        "counted in SUCCESS (cp_verify only records it, at 5 %), because NOISE "
                                        "is measured against this exposure's own overscan. 10 %: the PTC read "
                                        "noise is itself uncertain by up to 4 % per mini amp, and good demo amps "
                                        "read up to +5.3 %; a raised read noise (demo --broken noisy: +50 %) "
                                        "fails"),
    ("FLAT", "NOISE"): ("|NOISE/E - 1| <= 10 %, E = sqrt(variance plane)",
                        "two-sided against the propagated photon + read + flat noise; cp_verify's "
                        "NOISE <= sqrt(MEAN) fails every good flat and passes a saturated one. 10 % (not 5 %): "
                        "the flat's own noise in the variance plane is an estimate from few inputs"),
    ("FLAT", "SATURATION"): ("fraction of SAT pixels <= 0.1 %", "cpframe's own test (the ISR masks SAT)"),
    ("FLAT", "SCATTER"): ("std/mean of amp (detector) means <= 5 %",
                          "relative at the exposure level (cp_verify: absolute std <= 0.05, the same for a "
                          "flat near 1)"),
    ("FLAT_ANAGLYPH", "NOISE"): ("|NOISE/E - 1| <= 10 %, E = sqrt(variance plane)",
                        "two-sided against the propagated photon + read + flat noise; cp_verify's "
                        "NOISE <= sqrt(MEAN) fails every good flat and passes a saturated one. 10 % (not 5 %): "
                        "the flat's own noise in the variance plane is an estimate from few inputs"),
    ("FLAT_ANAGLYPH", "SATURATION"): ("fraction of SAT pixels <= 0.1 %", "cpframe's own test (the ISR masks SAT)"),
    ("FLAT_ANAGLYPH", "SCATTER"): ("std/mean of amp (detector) means <= 5 %",
                          "relative at the exposure level (cp_verify: absolute std <= 0.05, the same for a "
                          "flat near 1)"),
    ("DEFECTS", "OUTLIERS"): ("UNMASKED_OUTLIERS >= OUTLIERS", ""),
    ("DEFECTS", "STDEV"): ("UNMASKED_STDEV >= STDEV x 0.98",
                           "2 % allowed: the two sets differ only by the defect pixels, so the exact comparison "
                           "flips on noise"),
    ("DEFECTS", "MIN"): ("UNMASKED_MIN <= MIN", "informational: holds by construction (a subset), cannot fail"),
    ("DEFECTS", "MAX"): ("UNMASKED_MAX >= MAX", "informational: holds by construction (a subset), cannot fail"),
    ("DEFECTS", "PROB_TEST"): ("improbable pixels outside defects <= expected + 5 sqrt(expected) + 1",
                               "cp_verify's STAT_OUTLIERS == DEFECT_PIXELS fails on any detector with edge "
                               "defects or a Gaussian tail"),
    ("PTC", "PTC_GAIN"): ("|g - g_nominal| < 5 % or < 3 fit errors",
                          "3 fit errors allowed: on mini amps the fit is that uncertain"),
    ("PTC", "PTC_NOISE"): ("|noise - nominal| < 5 % or < 3 fit errors",
                           "3 fit errors allowed (mini amps: the intercept is uncertain by a few %); the PTC "
                           "noise has the overscan-correction variance divided out"),
    ("PTC", "PTC_TURNOFF"): ("turnoff x gain > 90 000 e-", ""),
    ("PTC", "PTC_BFE_A00"): ("a00 inside the vendor range", ""),
    ("PTC", "NOISE_SIGNAL_INDEPENDENCE"): ("sum((n - mean)^2)/std(n)/N < 1.25 over per-pair overscan noises", ""),
    ("LINEARITY", "MAX_RESIDUAL_ERROR"): ("Spline: max |value/node| <= 1 %; Squared: |c2| <= 1e-6 /adu; Polynomial: "
                                          "also |c_k| <= |c2| x 1e-3^k",
                                          "cpframe's coefficients start at the quadratic term (ip_isr's); cp_verify "
                                          "indexes coeffs[2], the quartic term of ip_isr's arrays"),
    ("LINEARITY", "FIT_RESIDUAL"): ("corrected ramp within 0.1 % of a line in time, above 1 % of the turnoff",
                                    "cpframe's own test (the residual non-linearity target)"),
    ("CROSSTALK", "NO_SIGNIFICANT_DETECTION"): ("no significant residual coefficient onto the amp after ISR "
                                                "with the crosstalk under test", "per amp (cp_verify: per detector), "
                                                "so a failing amp is named"),
    ("CTI", "CTI"): ("global serial CTI < 5e-6 (LSST sensor requirement: CTE > 0.999995)",
                     "cpframe's own test (cp_verify has no CTI task)"),
    ("CTI", "TRAP"): ("trap fit finite: size >= 0 e-, emission time > 0 transfers", "cpframe's own test"),
    ("GAIN_CORRECTION", "ADJUSTMENT"): ("|gain adjustment - 1| <= 5 %", "cpframe's own test (cp_verify has none); "
                                        "the limit is cp_pipe's max_fractional_gain_ratio"),
    ("GAIN_CORRECTION", "MEASURED"): ("the amp was measured (not excluded, so it is corrected)",
                                      "cpframe's own test"),
    ("FLAT_GRADIENT", "MODEL_RANGE"): ("the model at the amp's centre is within [0.05, 1.5]",
                                       "cpframe's own test (cp_verify has none)"),
    ("FLAT_GRADIENT", "FIT_RESIDUAL"): ("rms of the binned flat about the model <= 1 %", "cpframe's own test"),
    ("FLAT_GRADIENT", "GRADIENT"): ("planar gradient across the fitted radius <= 10 %", "cpframe's own test"),
    ("SKY", "NOISE"): ("median per-bin standard error of the sky frame < 0.3 % of the sky",
                       "cpframe's own test (cp_verify has no sky test)"),
    ("SKY", "COVERAGE"): (">= 90 % of the sky frame's bins measured", "cpframe's own test"),
    ("FRINGE", "SNR"): ("fringe frame rms / noise in 7 x 7 px boxes >= 3 (ISR amplitude bias < 11 %)",
                        "cpframe's own test (cp_verify has no fringe test)"),
    ("ILLUMINATION", "FLAT"): ("illumination correction re-measured after applying it: rms of c - 1 over the "
                               "detector < 0.5 %", "cpframe's own test (cp_verify makes the product, no test yet: "
                               "DM-49192)"),
    ("BFK", "VARIANCE_LINEAR"): ("PTC of flats corrected with the kernel within 1 % of a straight line up to "
                                 "50 000 e- (detector mean of the amps)",
                                 "cpframe's own test (its own template); cp_verify's star-size test is "
                                 "BFK_STARS (the real template)"),
    ("BFK", "PAIRS_KEPT"): ("that PTC kept (did not reject as outliers) >= 80 % of its pairs up to 50 000 e-",
                            "cpframe's own test: guards VARIANCE_LINEAR against an over-correcting kernel whose "
                            "PTC loses its upper pairs to outlier rejection"),
    ("ELECTROSTATIC_BF", "VARIANCE_LINEAR"): ("PTC of flats corrected with the distortion matrix (ISR ASTIER23) "
                                              "within 1 % of a straight line up to 50 000 e- (detector mean)",
                                              "cpframe's own test (cp_verify has none)"),
    ("ELECTROSTATIC_BF", "PAIRS_KEPT"): ("that PTC kept (did not reject as outliers) >= 80 % of its pairs up to "
                                         "50 000 e-", "cpframe's own test: guards VARIANCE_LINEAR against an "
                                         "over-correcting matrix"),
    ("BFK_STARS", "BRIGHT_SLOPE"): ("exponential fit of (uncorrected - corrected star size) against magnitude "
                                    "succeeds with slope < -0.5", "cp_verify's test and limit (verifyBfk.py)"),
    ("BFK_STARS", "NUM_MATCHES"): ("more than 10 stars matched between the corrected and uncorrected images",
                                   "cp_verify's limit; cp_verify passes an exposure with fewer, cpframe fails it"),
    ("BFK_STARS", "SIZE_SLOPE_REDUCED"): ("|slope of star size vs flux| with the kernel <= 0.5 x without it",
                                          "cpframe's own test"),
    ("SCIENCE", "COLUMN_STRUCTURE"): ("column-profile scatter / noise expectation <= 3", "cpframe's own test"),
    ("SCIENCE", "ROW_STRUCTURE"): ("row-profile scatter / noise expectation <= 3", "cpframe's own test"),
    ("SCIENCE", "AMP_STEP"): ("amp-boundary jumps <= 1 % of the background + 5 errors", "cpframe's own test"),
}
for _t in ("MEAN", "NOISE", "CR_NOISE", "PROCESSING", "READ_NOISE_CONSISTENT"):
    TEST_NOTES[("DARK", _t)] = TEST_NOTES[("BIAS", _t)]
for _t in ("NOISE", "SATURATION", "SCATTER"):  # one LED's flat: the anaglyph flat's (the flat's) thresholds
    TEST_NOTES[("FLAT_SINGLE_LED", _t)] = TEST_NOTES[("FLAT_ANAGLYPH", _t)]
