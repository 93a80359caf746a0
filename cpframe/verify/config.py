"""Thresholds and statistics settings of verification: :mod:`cpframe.science.configs.verify`, re-exported here
(defined there so that the planner reads them without importing this package's stages)."""

from __future__ import annotations

from cpframe.science.configs.verify import TEST_NOTES, UNKNOWN_FIELD_MESSAGE, VerifyConfig

__all__ = ["TEST_NOTES", "UNKNOWN_FIELD_MESSAGE", "VerifyConfig"]
