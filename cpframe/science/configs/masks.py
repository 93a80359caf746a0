"""Mask plane name -> bit number, importable without the science stack (:mod:`cpframe.science.configs`);
:mod:`cpframe.science.imageio` re-exports it."""

from __future__ import annotations

#: Mask plane name -> bit number (docs/architecture.md "Mask bits").
MASK_BITS: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "UNMASKEDNAN": 9,
    "VIGNETTED": 10,
    "PARTLY_VIGNETTED": 11,
}
