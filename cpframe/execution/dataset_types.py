"""The dataset types every repository knows: name -> (dimensions without instrument, storage class).

Both pipeline formats (:mod:`cpframe.execution.pipeline`, :mod:`cpframe.execution.lsst_pipeline`)
read this table; it sits below them so neither imports the other for it.
"""

from __future__ import annotations

__all__ = ["PRODUCT_TYPES", "CALIBRATION_TYPES", "RENAMABLE_CALIBRATIONS"]

#: Dataset types known to every repository: name -> (dimensions without instrument, storage class).
PRODUCT_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "raw": (("exposure", "detector"), "fits-raw"),
    "biasBootstrap": (("detector",), "fits-masked"),
    "darkBootstrap": (("detector",), "fits-masked"),
    "flatBootstrap": (("detector", "physical_filter"), "fits-masked"),
    "bias": (("detector",), "fits-masked"),
    "dark": (("detector",), "fits-masked"),
    "flat": (("detector", "physical_filter"), "fits-masked"),
    "defects": (("detector",), "ecsv-defects"),
    "manual_defects": (("detector",), "ecsv-defects"),
    "ptc": (("detector",), "fits-ptc"),
    # optional inputs only (cpframe does not build them; dependencies.md §7)
    "linearizer": (("detector",), "json"),  # cpframe/science/linearity.py
    "crosstalk": (("detector",), "json"),  # cpframe/science/crosstalk.py
    "cti": (("detector",), "json"),  # cpframe/science/cti.py
    "bfk": (("detector",), "json"),  # cpframe/science/bfk.py
    "electroBfDistortionMatrix": (("detector",), "json"),  # cpframe/science/electrostatic.py
    "gain_correction": (("detector",), "json"),  # cpframe/science/gain_correction.py
    "flat_gradient_reference": (("physical_filter",), "json"),  # cpframe/science/flat_gradient.py
    "illuminationCorrection": (("detector", "physical_filter"), "fits-masked"),  # cpframe/science/illumination.py
    "sky": (("detector", "physical_filter"), "fits-masked"),  # cpframe/science/sky.py (binned)
    "fringe": (("detector", "physical_filter"), "fits-masked"),  # cpframe/science/fringe.py
}

#: Calibration dataset types (looked up by validity range, not produced per exposure).
CALIBRATION_TYPES = frozenset(PRODUCT_TYPES) - {"raw"}

#: ISR calibration connections a pipeline may point at another dataset type (cp_pipe / cp_verify
#: ``--config <isrLabel>:connections.flat=flat_<LED_NAME>``): the task reads that type as its flat (bias, dark).
RENAMABLE_CALIBRATIONS = ("bias", "dark", "flat")
