"""The registry interface: dimensions, dataset types, collections, datasets, certification.

``Registry`` is the abstract class every other part of cpframe codes against.
``cpframe.repository.sql.SqlRegistry`` implements it on SQLAlchemy (SQLite or
PostgreSQL).  The contract tests (``tests/registry_contract.py``) are written
once against this interface and run on both databases.

Semantics follow ``shared/spec/registry.md`` (observed on the real butler);
the places where cpframe deliberately differs are listed in
``docs/registry.md``.

Every method documents what it raises; all errors are subclasses of
:class:`cpframe.core.errors.RegistryError` or :class:`cpframe.core.errors.UserInputError`.
A method that raises changes nothing (each public method is one transaction).
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from cpframe.core.model import CollectionType, DataId, DatasetRef, DatasetType, Timespan

if TYPE_CHECKING:
    from cpframe.camera.models import Camera

#: A data ID as callers give it: dimension name -> value (int ids, str names); extra keys allowed.
DataIdLike = Mapping[str, "int | str"]
#: A dimension record (an exposure...): column -> value (int, float, str or a Timespan).
DimensionRecord = Mapping[str, object]
#: Selection bind values: name -> a scalar, a sequence (for IN) or a (begin, end) pair (for OVERLAPS).
BindValues = Mapping[str, object]

__all__ = ["Registry", "CollectionInfo", "ChainMode", "CHAIN_MODES", "DataIdLike", "DimensionRecord", "BindValues"]

#: Modes of :meth:`Registry.set_chain`, as in ``butler collection-chain --mode``.
CHAIN_MODES = ("redefine", "prepend", "extend", "remove", "pop")
ChainMode = str


@dataclass(frozen=True)
class CollectionInfo:
    """What ``query_collections`` returns for each collection."""

    name: str
    type: CollectionType
    children: tuple[str, ...] = ()
    """Children in search order (CHAINED only)."""
    doc: str = ""


class Registry(abc.ABC):
    """Abstract registry.  See the module docstring."""

    # -- lifecycle --------------------------------------------------------------------------
    SCHEMA_VERSION: str = "1.0"

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[object]:
        """Group several registry calls into one write transaction (re-entrant).

        Everything done through this registry inside the ``with`` block commits together
        or not at all (``Repository`` uses it to drop its file journal with the rows).
        """

    # -- dimensions -------------------------------------------------------------------------
    @abc.abstractmethod
    def register_instrument(self, camera: "Camera") -> bool:
        """Insert the instrument, its detectors and physical filters from a ``cpframe.camera.models.Camera``.

        Returns True if inserted, False if an identical definition was already there.

        Raises
        ------
        ConflictingDefinitionError
            The instrument exists with different detectors/filters.
        """

    @abc.abstractmethod
    def insert_exposures(self, records: Iterable[DimensionRecord]) -> tuple[int, int]:
        """Insert exposure records; identical existing ones are skipped.

        Each record has: instrument, id, obs_id, day_obs, seq_num, physical_filter,
        observation_type, observation_reason, science_program, exposure_time, dark_time,
        timespan (:class:`Timespan`).  Returns (inserted, skipped).

        Raises
        ------
        ConflictingDefinitionError
            An exposure id exists with different values.
        RegistryError
            Unknown instrument or physical filter.
        """

    @abc.abstractmethod
    def query_dimension_records(
        self, element: str, where: str = "", bind: BindValues | None = None,
        instrument: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records of ``element`` (instrument, detector, physical_filter, exposure) matching ``where``.

        Exposure records include ``timespan`` as a :class:`Timespan`.

        Raises
        ------
        SelectionError
            The expression does not parse or type-check (message has a caret).
        """

    @abc.abstractmethod
    def query_data_ids(
        self, dimensions: Sequence[str], where: str = "", bind: BindValues | None = None,
        instrument: str | None = None,
    ) -> list[DataId]:
        """Distinct data IDs over ``dimensions`` (e.g. ``["exposure", "detector"]``) matching ``where``.

        ``instrument`` is always included in the returned data IDs.  Sorted.

        Raises
        ------
        SelectionError
        """

    # -- dataset types ----------------------------------------------------------------------
    @abc.abstractmethod
    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Register; True if new, False if identical exists.

        Raises
        ------
        ConflictingDefinitionError
            Same name, different definition.
        """

    @abc.abstractmethod
    def get_dataset_type(self, name: str) -> DatasetType:
        """Raises UnknownDatasetTypeError."""

    @abc.abstractmethod
    def normalize_data_id(self, dataset_type: str, data_id: DataIdLike) -> DataId:
        """The data ID restricted to the dataset type's dimensions, values typed.

        Raises UserInputError (a dimension missing or of the wrong kind), UnknownDatasetTypeError.
        """

    @abc.abstractmethod
    def query_dataset_types(self) -> list[DatasetType]:
        """All registered dataset types, sorted by name."""

    # -- collections ------------------------------------------------------------------------
    @abc.abstractmethod
    def register_collection(self, name: str, type: CollectionType, doc: str = "") -> bool:
        """Create a collection; True if new, False if it exists with the same type.

        Raises
        ------
        CollectionNameError
            Empty, ``,``, glob characters, whitespace, ``..`` segment or leading ``/``.
        CollectionTypeError
            Exists with a different type.
        """

    @abc.abstractmethod
    def get_collection_type(self, name: str) -> CollectionType:
        """Raises UnknownCollectionError."""

    @abc.abstractmethod
    def query_collections(
        self, pattern: str = "*", types: Iterable[CollectionType] | None = None,
        flatten_chains: bool = False,
    ) -> list[CollectionInfo]:
        """Collections whose name matches the glob ``pattern``, sorted by name."""

    @abc.abstractmethod
    def get_chain(self, name: str) -> tuple[str, ...]:
        """Children of a CHAINED collection, in order.

        Raises UnknownCollectionError, CollectionTypeError.
        """

    @abc.abstractmethod
    def set_chain(
        self, parent: str, children: Sequence[str] = (), mode: ChainMode = "redefine",
        flatten: bool = False, pop_indices: Sequence[int] = (), doc: str = "", allow_empty: bool = False,
    ) -> tuple[str, ...]:
        """Edit a chain as ``butler collection-chain`` does (spec §5); returns the new chain.

        ``doc`` documents a chain created by this call (an existing chain keeps its own).
        ``redefine`` with no children is refused, as by the butler, unless ``allow_empty``
        (import of an exported empty chain).

        Raises
        ------
        UnknownCollectionError
            A child (or, for remove/pop, the parent) does not exist.
        CollectionTypeError
            Parent exists but is not CHAINED.
        ChainCycleError
            The chain would contain itself.
        UserInputError
            Bad mode, pop index out of range, --flatten with remove/pop.
        """

    @abc.abstractmethod
    def flatten(self, collections: Sequence[str]) -> list[str]:
        """Expand chains depth-first into a search list of non-CHAINED collections (no duplicates).

        Raises UnknownCollectionError.
        """

    @abc.abstractmethod
    def get_parent_chains(self, name: str) -> list[str]:
        """Names of CHAINED collections that list ``name`` as a direct child."""

    @abc.abstractmethod
    def remove_collection(self, name: str, remove_from_parents: bool = False) -> None:
        """Remove a non-RUN collection (RUNs go through ``Repository.remove_runs``).

        Raises UnknownCollectionError; RegistryError if it is a chain child and not
        ``remove_from_parents``.
        """

    # -- datasets ---------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_datasets(self, refs: Sequence[DatasetRef]) -> list[DatasetRef]:
        """Insert dataset rows (id, type, run, data ID, path, checksum), all or nothing.

        Normally called by ``Repository`` after the files are in place.

        Raises
        ------
        DatasetConflictError
            A (type, data ID) already in that RUN (lists every conflict).
        UnknownCollectionError / CollectionTypeError
            Run missing or not a RUN.
        UnknownDatasetTypeError
        """

    @abc.abstractmethod
    def get_dataset(self, id: str) -> DatasetRef:
        """Raises MissingDatasetError."""

    @abc.abstractmethod
    def find_dataset(
        self, dataset_type: str, data_id: DataIdLike, collections: Sequence[str],
        timespan: Timespan | None = None,
    ) -> DatasetRef | None:
        """Find-first lookup (spec §4): walk ``collections`` depth-first through chains.

        A RUN/TAGGED child matches at any time; a CALIBRATION child matches when a link's
        validity range overlaps ``timespan`` (required when a CALIBRATION collection is
        searched for a calibration type; ``None`` then matches nothing there).
        ``data_id`` may hold extra keys (e.g. exposure); only the dataset type's
        dimensions are used.

        Raises
        ------
        AmbiguousCalibrationError
            Two ranges in one CALIBRATION collection overlap ``timespan``.
        UnknownCollectionError, UnknownDatasetTypeError
        """

    @abc.abstractmethod
    def find_calibration(
        self, dataset_type: str, data_id: DataIdLike, collections: Sequence[str],
        exposure: int | DimensionRecord,
    ) -> DatasetRef | None:
        """``find_dataset`` with the timespan of ``exposure`` (an id, with the instrument taken
        from ``data_id``, or an exposure record)."""

    @abc.abstractmethod
    def find_datasets(
        self, dataset_type: str, data_ids: Sequence[DataIdLike], collections: Sequence[str] | str,
        timespans: Sequence[Timespan | None] | Timespan | None = None,
    ) -> list[DatasetRef | None]:
        """:meth:`find_dataset` for many data IDs at once (a handful of queries); ``None`` where
        nothing matches.  ``timespans`` is one per data ID, or one for all.

        Raises AmbiguousCalibrationError, UnknownCollectionError, UnknownDatasetTypeError.
        """

    @abc.abstractmethod
    def find_calibrations(
        self, dataset_type: str, data_ids: Sequence[DataIdLike], collections: Sequence[str] | str,
        exposures: Sequence[int | DimensionRecord | None] | None = None,
    ) -> list[DatasetRef | None]:
        """:meth:`find_calibration` for many data IDs: each at the time of its exposure (an id
        of the data ID's instrument, an exposure record, or the data ID's own ``exposure``).

        Raises AmbiguousCalibrationError, UnknownCollectionError, UnknownDatasetTypeError.
        """

    @abc.abstractmethod
    def get_datasets(self, ids: Sequence[str]) -> list[DatasetRef]:
        """Refs for ``ids`` in the same order.  Raises MissingDatasetError listing missing ids."""

    @abc.abstractmethod
    def query_datasets(
        self, dataset_type: str | Sequence[str] | None = None, collections: Sequence[str] | str = "*",
        where: str = "", bind: BindValues | None = None, find_first: bool = False,
    ) -> list[DatasetRef]:
        """Datasets of the given type(s) in the collections (globs allowed unless ``find_first``).

        With ``find_first`` the collections are an ordered search path and only the first
        dataset per (type, data ID) is returned.  For CALIBRATION collections, refs carry
        ``extra['timespan']``.

        Raises SelectionError, UnknownCollectionError.
        """

    @abc.abstractmethod
    def remove_datasets(self, ids: Sequence[str]) -> None:
        """Delete rows (and their associations).  Files are the Repository's business."""

    @abc.abstractmethod
    def remove_run(self, name: str, remove_from_parents: bool = False) -> list[DatasetRef]:
        """Delete a RUN, its dataset rows and their links; returns the removed refs.

        Files are the ``Repository``'s business (``Repository.remove_runs`` journals them in
        the same transaction).

        Raises
        ------
        UnknownCollectionError, CollectionTypeError
        RegistryError
            The RUN is a chain child and ``remove_from_parents`` is false.
        """

    # -- certification ----------------------------------------------------------------------
    @abc.abstractmethod
    def certify(self, collection: str, refs: Sequence[DatasetRef], timespan: Timespan) -> None:
        """Link ``refs`` into CALIBRATION ``collection`` (created if absent) with ``timespan``.

        All or nothing.

        Raises
        ------
        ValidityOverlapError
            A range for the same type + data ID overlaps (even identical); names each.
        CollectionTypeError
            ``collection`` exists and is not CALIBRATION.
        RegistryError
            A dataset type that is not a calibration.
        """

    @abc.abstractmethod
    def decertify(
        self, collection: str, dataset_type: str, timespan: Timespan,
        data_ids: Sequence[DataIdLike] | None = None,
    ) -> int:
        """Remove/trim validity ranges inside ``timespan``; returns how many links changed."""

    @abc.abstractmethod
    def query_certifications(self, collection: str, dataset_type: str | None = None) -> list[DatasetRef]:
        """Links of a CALIBRATION collection; each ref has ``extra['timespan']``."""

    @abc.abstractmethod
    def insert_calib_links(self, collection: str, links: Sequence[tuple[str, Timespan]]) -> None:
        """Certify (dataset id, validity range) pairs with possibly different ranges (import)."""

    @abc.abstractmethod
    def certified_in(self, dataset_ids: Sequence[str]) -> dict[str, list[str]]:
        """For each dataset id, the CALIBRATION collections linking it (only ids with links)."""

    # -- runs metadata (provenance, locks) --------------------------------------------------
    @abc.abstractmethod
    def set_run_info(self, run: str, info: Mapping[str, Any]) -> None:
        """Store JSON-able provenance for a RUN (merged into existing)."""

    @abc.abstractmethod
    def get_run_info(self, run: str) -> dict[str, Any]:
        """Provenance stored for a RUN ({} if none)."""

    # -- dimension rows for export / import -------------------------------------------------
    @abc.abstractmethod
    def exposure_timespans(self, instrument: str, ids: Sequence[int]) -> dict[int, Timespan]:
        """Timespans of exposures ``ids`` of ``instrument`` (missing ids are absent)."""

    @abc.abstractmethod
    def dimension_rows(
        self, element: str, instruments: Iterable[str], exposure_ids: Iterable[int] = ()
    ) -> list[dict[str, Any]]:
        """Raw rows of a dimension element (``instrument``, ``detector``, ``physical_filter``,
        ``exposure``) for export; values are whatever the column holds."""

    @abc.abstractmethod
    def insert_dimension_rows(self, element: str, rows: Sequence[DimensionRecord]) -> tuple[int, int]:
        """Insert raw dimension rows (import); identical existing rows are skipped.
        Returns (inserted, skipped).  Raises ConflictingDefinitionError."""

    # -- datastore journal (Repository's pending-file rows) -----------------------------------
    @abc.abstractmethod
    def add_pending_files(self, paths: Sequence[str], owner: str) -> None:
        """Journal ``paths`` as being written (committed before the files move into place).

        Raises DatasetConflictError when another writer is writing one of them right now.
        """

    @abc.abstractmethod
    def remove_pending_files(self, paths: Sequence[str]) -> None:
        """Drop journal rows (in the caller's transaction when inside :meth:`transaction`)."""

    @abc.abstractmethod
    def pending_files(self) -> list[dict[str, Any]]:
        """Journal rows: ``path`` (str), ``created_ns`` (int), ``owner`` (``host:pid``)."""

    @abc.abstractmethod
    def paths_in_use(self, paths: Sequence[str]) -> set[str]:
        """The subset of ``paths`` that dataset rows point at."""
