"""Which report section a ``flat`` belongs to: an anaglyph flat (campaign product ``flat_anaglyph``,
cpframe/science/anaglyph.py) is the band's ``flat`` in the registry, told apart by the ``FLATSRC = ANAGLYPH``
its combination writes in the header.  The "Flat" section shows the other flats, "Anaglyph flat" these.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_anaglyph_flat", "split_anaglyph_flats"]

#: Report stage keys of the two sections that read the dataset type ``flat``.
_FLAT, _ANAGLYPH = "flat", "flat_anaglyph"


def is_anaglyph_flat(path: Any) -> bool:
    """Whether the flat at ``path`` is an anaglyph flat (header ``FLATSRC = ANAGLYPH``); False when unreadable."""
    from cpframe.core.errors import CpframeError
    from cpframe.science.imageio import read_header

    try:
        return str(read_header(path).get("FLATSRC", "")).upper() == "ANAGLYPH"
    except CpframeError:  # the flat section shows it (and its own error)
        return False


def split_anaglyph_flats(items: list) -> list:
    """``items`` without the products each of the two flat sections must not show (both find every ``flat``)."""
    cache: dict[str, bool] = {}
    out = []
    for it in items:
        if it.kind == "product" and it.stage.key in (_FLAT, _ANAGLYPH):
            key = str(it.path)
            if key not in cache:
                cache[key] = is_anaglyph_flat(it.path)
            if cache[key] != (it.stage.key == _ANAGLYPH):
                continue
        out.append(it)
    return out
