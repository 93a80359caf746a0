"""Selections: the butler ``where`` language, parsed, type-checked and compiled to SQL.

A selection goes through three steps, each a pure function of the previous result and
each its own module:

1. **parse** (:mod:`.parser`) -- the text is read by a lark LALR parser (grammar below) into a small
   syntax tree of frozen dataclasses; the tree depends only on the text and is cached.
2. **type** (:mod:`.typed`) -- names are resolved against the dimension schema
   (``cpframe.repository.schema``: instrument, detector, physical_filter with its band,
   exposure) or the ``bind`` mapping, literals are checked against the field they are
   compared with, and the result is a :class:`Selection`.
3. **compile** (:mod:`.compiler`) -- the typed tree becomes a SQLAlchemy Core expression in which every
   user value is a bound parameter; no SQL text is ever built from user input.

Every problem is a :class:`cpframe.core.errors.SelectionError` carrying the expression and
the 0-based position of the offending token, so its message shows a caret under it.

The language (spec ``registry.md`` section 1, docs/selections.md)::

    instrument = 'LSSTComCam' AND exposure.observation_type = 'bias'
        AND exposure.day_obs = 20241110 AND exposure.seq_num IN (10..20, 44, 50..60:2)
    exposure.timespan OVERLAPS (T'2024-11-10 12:00:00', T'2024-11-10 13:00:00/tai')
    instrument = inst AND exposure IN (ids)          # bind={"inst": ..., "ids": [...]}

Public functions (the registry calls them with an open SQLAlchemy connection):
:func:`parse_selection`, :func:`select_dimension_records`, :func:`select_data_ids`,
:func:`filter_datasets`.
"""

from cpframe.repository.query.compiler import (
    compile_selection,
    filter_datasets,
    select_data_ids,
    select_dimension_records,
)
from cpframe.repository.query.typed import (
    DATA_ID_DIMENSIONS,
    DIMENSION_ELEMENTS,
    FIELDS,
    Field,
    Selection,
    named_instruments,
    parse_selection,
)

__all__ = [
    "Selection",
    "Field",
    "FIELDS",
    "parse_selection",
    "compile_selection",
    "named_instruments",
    "select_dimension_records",
    "select_data_ids",
    "filter_datasets",
    "DIMENSION_ELEMENTS",
    "DATA_ID_DIMENSIONS",
]
