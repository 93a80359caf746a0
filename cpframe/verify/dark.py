"""Dark verification (stage ``DARK``, spec verification.md §4.2; DMTN-101 §5).

The residual is a dark exposure processed by ISR with the bias *and* the dark under
test subtracted (electrons).  Statistics and tests are those of the bias stage
(:mod:`cpframe.verify.bias`): a good dark leaves a residual with zero mean and
read-noise-limited scatter once cosmic rays are repaired.  The combined dark's
percentiles (``LSST CALIB DARK <amp> DISTRIBUTION <p>-PCT``), when the ISR copies
them, become ``DARK_DIST_<p>_PCT``.

Not implemented (as in cp_verify): DMTN-101 5.5-5.7 (odd/even split) and the
"N/5 darks at 5 x T" comparison.
"""

from __future__ import annotations

from cpframe.verify.bias import check_noise_stage, measure_noise_stage
from cpframe.verify.core import Stage, register_stage

__all__ = ["DARK"]

DARK = register_stage(Stage(
    name="DARK", type_name="Dark", kind="exposure", measure=measure_noise_stage, check=check_noise_stage,
))
