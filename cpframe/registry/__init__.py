"""The registry: dimensions, dataset types, collections, datasets and validity ranges.

``Registry`` (``base.py``) is the interface; ``SqlRegistry`` (``sql.py``) implements it on
SQLAlchemy for SQLite and PostgreSQL; ``query.py`` compiles selections.  Most code uses
``cpframe.repo.Repository``, which pairs a registry with the datastore.
"""

from __future__ import annotations

from .base import CHAIN_MODES, CollectionInfo, Registry

__all__ = ["Registry", "CollectionInfo", "CHAIN_MODES", "SqlRegistry"]


def __getattr__(name: str):
    # SqlRegistry is imported on first use so that ``cpframe.registry.base`` stays cheap.
    if name == "SqlRegistry":
        from .sql import SqlRegistry

        return SqlRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
