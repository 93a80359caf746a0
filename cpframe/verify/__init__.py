"""Verification of calibration products (cp_verify / DMTN-101 tests), on arrays and files.

No cluster and no registry here: the submit executor wraps these functions in Dask
tasks, ``cpframe verify-daily`` calls them in-process.  See docs/verification.md.

Typical use::

    stats = verify_exposure("bias", residual_path, detector)          # per exposure x detector
    exp = merge_exposure("bias", [stats, ...])                          # per exposure
    table, summary = merge_run("bias", [exp, ...])                      # per run
    ptc_stats = verify_calib("ptc", ptc_path, detector, nominal=...)    # per detector
    table, summary = merge_calibs("ptc", [ptc_stats, ...])
"""

from __future__ import annotations

from cpframe.verify import bfk, bfk_stars, bias, crosstalk, dark, defects, electrostatic, flat, flat_gradient, gain_correction, illumination, linearity, ptc, science, sky  # noqa: F401  (register the stages)
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import STAGES, Stage, dataset_type_name, get_stage, verify_calib, verify_exposure
from cpframe.verify.merge import merge_calibs, merge_exposure, merge_run
from cpframe.verify.results import (
    read_results,
    read_stats,
    read_summary,
    results_table,
    write_binned_residual,
    write_results,
    write_stats,
    write_summary,
)
from cpframe.verify.stats import ResidualImage, clipped_stats, read_residual

__all__ = [
    "STAGES",
    "ResidualImage",
    "Stage",
    "VerifyConfig",
    "clipped_stats",
    "dataset_type_name",
    "get_stage",
    "merge_calibs",
    "merge_exposure",
    "merge_run",
    "read_residual",
    "read_results",
    "read_stats",
    "read_summary",
    "results_table",
    "verify_calib",
    "verify_exposure",
    "write_binned_residual",
    "write_results",
    "write_stats",
    "write_summary",
]
