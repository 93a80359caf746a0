"""Electrostatic brighter-fatter verification (stage ``ELECTROSTATIC_BF``; cpframe's check: cp_verify has none
for ``electroBfDistortionMatrix``).

Runs on the PTC (fits-ptc) of a flat-pair ramp processed by ISR *with* the distortion matrix under
test, ``brighterFatterCorrectionMethod: ASTIER23`` (pipelines/verifyElectrostaticBf.yaml), and on the
PTC of the same flats without it.  The statistics are the BFK stage's (:mod:`cpframe.verify.bfk`):
per amp ``A00``, ``CURVATURE`` and ``NONLINEARITY`` of var(μ) in electrons; per detector the same
on the mean over amps, plus the uncorrected PTC's ``UNCORRECTED_NONLINEARITY`` / ``_CURVATURE``.

Tests (detector):

* ``VARIANCE_LINEAR``: the corrected PTC departs from a straight line by at most
  ``electrostatic_bf_max_nonlinearity`` (1 %) over the pairs it kept up to
  ``electrostatic_bf_max_mean_e`` (50 000 e-, the range of the BFK check, so both read the same pairs);
* ``PAIRS_KEPT``: the PTC kept (did not reject as outliers) at least ``electrostatic_bf_min_pairs_kept``
  (80 %) of the pairs in that range (``N_POINTS`` / ``N_IN_RANGE``).  Without it an over-correction
  passes: three times the right matrix bends the PTC up so much that its outlier rejection drops the
  upper pairs, and the 5 of 16 left are straight to 0.6 % (measured on the mini data set).

Brighter-fatter bends an uncorrected PTC by ~3 % over that range on the simulator's sensors
(a00 = −2.5e-6 /e-); the truth's matrix leaves 0.06 %; a zero matrix fails VARIANCE_LINEAR (2.9 %), twice
the matrix too (2.7 %), three times PAIRS_KEPT: tests/test_electrostatic_campaign.py.
"""

from __future__ import annotations

import math
from pathlib import Path

from cpframe.camera.models import Detector
from cpframe.verify.bfk import pairs_kept, ptc_linearity
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["ELECTROSTATIC_BF", "check_electrostatic_bf", "measure_electrostatic_bf"]


def measure_electrostatic_bf(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None,
                             uncorrected: str | Path | None = None) -> dict:
    """Statistics of the ELECTROSTATIC_BF stage (module docstring)."""
    return ptc_linearity(path, detector, config.electrostatic_bf_max_mean_e, uncorrected,
                         "the electrostatic brighter-fatter verification reads the PTC of the flats corrected "
                         "with the distortion matrix (pipelines/verifyElectrostaticBf.yaml)")


def check_electrostatic_bf(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the ELECTROSTATIC_BF stage (module docstring)."""
    det = stats["DET"]
    nl = det["NONLINEARITY"]
    linear = bool(math.isfinite(nl) and nl <= config.electrostatic_bf_max_nonlinearity)
    return {"AMP": {}, "DET": {"VARIANCE_LINEAR": linear,
                               "PAIRS_KEPT": pairs_kept(det, config.electrostatic_bf_min_pairs_kept)}}


ELECTROSTATIC_BF = register_stage(Stage(
    name="ELECTROSTATIC_BF", type_name="ElectrostaticBf", kind="calib", measure=measure_electrostatic_bf,
    check=check_electrostatic_bf, calib_type="electroBfDistortionMatrix"))
