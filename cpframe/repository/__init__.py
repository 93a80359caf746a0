"""The registry: dimensions, dataset types, collections, datasets and validity ranges.

``Registry`` (``base.py``) is the interface; ``SqlRegistry`` (``sql.py`` with the
``sql_common``, ``sql_collections`` and ``sql_datasets`` parts) implements it on SQLAlchemy
for SQLite and PostgreSQL; ``query/`` parses, types and compiles selections;
``datastore.py`` (``FileDatastore``) keeps the files.  ``repo.py`` (``Repository`` =
registry + datastore), ``transfer.py`` (export/import) and ``ingest.py`` (raw ingest) sit on top.  May import: ``cpframe.core``, ``cpframe.camera``.  Most code uses
``cpframe.repository.repo.Repository``, which pairs a registry with the datastore.
"""

from __future__ import annotations

from cpframe.repository.base import CHAIN_MODES, CollectionInfo, Registry

__all__ = ["Registry", "CollectionInfo", "CHAIN_MODES", "SqlRegistry"]


def __getattr__(name: str):
    # SqlRegistry is imported on first use so that ``cpframe.repository.base`` stays cheap.
    if name == "SqlRegistry":
        from cpframe.repository.sql import SqlRegistry

        return SqlRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
