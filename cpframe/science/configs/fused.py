"""Which settings the fused ISR -> combine path (:mod:`cpframe.science.fused`) runs: read by the planner
(:func:`cpframe.execution.graph_fusion.fusion`) without the science stack; :mod:`cpframe.science.fused` re-exports
them."""

from __future__ import annotations

from dataclasses import fields

from cpframe.science.configs.combine import CombineConfig
from cpframe.science.configs.isr import IsrConfig

#: IsrConfig fields the fused path implements; any other field away from its default is unsupported
#: (new ISR steps added to IsrConfig are therefore run by the unfused path until cpframe.science.fused runs them
#: and this set names them).
_SUPPORTED_FIELDS = {
    "do_bootstrap", "integer_dither_mode", "do_overscan", "do_parallel_overscan", "overscan_fit_type",
    "overscan_num_sigma_clip", "overscan_leading_to_skip", "overscan_trailing_to_skip", "serial_max_deviation",
    "parallel_max_deviation", "do_saturation", "do_suspect", "saturation_source", "saturation_level",
    "suspect_level", "do_apply_gains", "use_gains_from", "gains", "do_crosstalk", "do_quadratic_crosstalk",
    "do_linearize", "do_assemble_ccd", "do_bias", "do_dark", "do_defect", "do_nan_masking", "do_variance",
    "do_flat", "flat_scaling_type", "flat_user_scale", "no_data_variance", "do_raise_on_calib_mismatch",
    "do_standard_statistics", "mask_negative_variance",
}


def fused_unsupported(isr_config: IsrConfig, combine_config: CombineConfig) -> list[str]:
    """Why the fused path cannot run these settings (empty list: it can)."""
    why = []
    default = IsrConfig()
    for f in fields(IsrConfig):
        if f.name not in _SUPPORTED_FIELDS and getattr(isr_config, f.name) != getattr(default, f.name):
            why.append(f"ISR option {f.name} is not implemented by the fused path")
    if combine_config.exposure_scaling == "MeanStats":
        why.append("exposureScaling MeanStats needs each whole ISR image")
    return why
