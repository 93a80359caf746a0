"""Which dataset types the report's "Single-LED flat" section shows: one LED's flat (campaign product
``flat_single_led``, cpframe's templates/bps_flat_single_led.yaml) is the dataset type ``flat_<LED_NAME>``, one per
LED, so the section finds its products by that form rather than by one name: registered calibration types
``flat_<name>`` with a flat's dimensions that are no standard type (``flat_gradient_reference``) and not an
intermediate of a pipeline (cpFlatAnaglyph's ``flat_blue`` is not a calibration).  The other sections find theirs
by name.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

__all__ = ["SINGLE_LED_KEY", "is_single_led_type", "mosaic_group", "product_types"]

#: Report stage key of the section (cpframe/report/html.py REPORT_STAGES).
SINGLE_LED_KEY = "flat_single_led"

_NAME = re.compile(r"^flat_[A-Za-z0-9][A-Za-z0-9_]*$")


def is_single_led_type(dataset_type: Any) -> bool:
    """Whether a registered dataset type (:class:`cpframe.core.model.DatasetType`) is one LED's flat.

    >>> from cpframe.core.model import DatasetType
    >>> led = DatasetType("flat_m455l4", ("instrument", "detector", "physical_filter"), True)
    >>> ref = DatasetType("flat_gradient_reference", ("instrument", "physical_filter"), True)
    >>> blue = DatasetType("flat_blue", ("instrument", "detector", "physical_filter"), False)
    >>> [is_single_led_type(t) for t in (led, ref, blue)]
    [True, False, False]
    """
    name = str(dataset_type.name)  # flat_gradient_reference: no detector dimension
    return (bool(_NAME.match(name)) and bool(dataset_type.is_calibration)
            and set(dataset_type.dimensions) - {"instrument"} == {"detector", "physical_filter"})


def product_types(stage: Any, registered: Iterable[Any]) -> list[str]:
    """Product dataset types the report stage ``stage`` shows, among the ``registered`` dataset types: its
    ``product`` when registered; every ``flat_<LED>`` for the single-LED section."""
    types = list(registered)
    if stage.key == SINGLE_LED_KEY:
        return sorted(t.name for t in types if is_single_led_type(t))
    return [stage.product] if stage.product and stage.product in {t.name for t in types} else []


def mosaic_group(stage: Any, ref: Any) -> str:
    """The mosaic a product goes into: its physical filter, and its dataset type when that is not the stage's
    product (every LED's flat is of filter ``empty``: one mosaic per LED)."""
    filt = str(ref.data_id.get("physical_filter", ""))
    return filt if ref.dataset_type == stage.product else f"{filt}-{ref.dataset_type}".lstrip("-")
