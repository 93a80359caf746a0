"""SQLAlchemy Core tables of the registry (the only schema definition).

Dimension tables carry the columns that selections may name; the selection
compiler (``cpframe.repository.query``) maps ``exposure.day_obs`` etc. onto them.
Times are integer ns since 1970-01-01 TAI (see ``cpframe.core.model``); unbounded
ends are stored as ``NS_MIN`` / ``NS_MAX``.

Bump ``SCHEMA_VERSION`` whenever a table changes; opening a repository with a
different version is a ``SchemaVersionError``.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["SCHEMA_VERSION", "metadata", "tables"]

SCHEMA_VERSION = "1.1"  # 1.1: pending_file.owner, ix_dataset_run

metadata = sa.MetaData()

meta = sa.Table(
    "cpframe_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

instrument = sa.Table(
    "instrument", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("detector_max", sa.Integer, nullable=False),
    sa.Column("amp_names", sa.Text, nullable=False),  # comma-separated
    sa.Column("doc", sa.Text, nullable=False, server_default=""),
)

detector = sa.Table(
    "detector", metadata,
    sa.Column("instrument", sa.String(64), sa.ForeignKey("instrument.name"), primary_key=True),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("full_name", sa.String(32), nullable=False),
    sa.Column("raft", sa.String(16), nullable=False),
    sa.Column("name_in_raft", sa.String(16), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False, server_default="SCIENCE"),
    sa.Column("vendor", sa.String(16), nullable=False),
    sa.Column("serial", sa.String(64), nullable=False),
)

physical_filter = sa.Table(
    "physical_filter", metadata,
    sa.Column("instrument", sa.String(64), sa.ForeignKey("instrument.name"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("band", sa.String(16), nullable=False),
)

exposure = sa.Table(
    "exposure", metadata,
    sa.Column("instrument", sa.String(64), sa.ForeignKey("instrument.name"), primary_key=True),
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("obs_id", sa.String(64), nullable=False),
    sa.Column("day_obs", sa.Integer, nullable=False),
    sa.Column("seq_num", sa.Integer, nullable=False),
    sa.Column("physical_filter", sa.String(64), nullable=False),
    sa.Column("observation_type", sa.String(32), nullable=False),
    sa.Column("observation_reason", sa.String(64), nullable=True),
    sa.Column("science_program", sa.String(64), nullable=True),
    sa.Column("exposure_time", sa.Float, nullable=False),
    sa.Column("dark_time", sa.Float, nullable=False),
    sa.Column("timespan_begin", sa.BigInteger, nullable=False),
    sa.Column("timespan_end", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(["instrument", "physical_filter"], ["physical_filter.instrument", "physical_filter.name"]),
    sa.Index("ix_exposure_day_seq", "instrument", "day_obs", "seq_num"),
    sa.Index("ix_exposure_type", "instrument", "observation_type", "day_obs"),
    sa.Index("ix_exposure_time", "instrument", "timespan_begin"),
)
# Upper bound of exposure durations in O(log n): selections turn "exposure.timespan OVERLAPS"
# into a range on ix_exposure_time (cpframe.repository.query).  Halves keep it inside int64.
sa.Index("ix_exposure_half_duration", exposure.c.timespan_end // 2 - exposure.c.timespan_begin // 2)

collection = sa.Table(
    "collection", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("type", sa.SmallInteger, nullable=False),  # model.CollectionType
    sa.Column("doc", sa.Text, nullable=False, server_default=""),
)

run_info = sa.Table(
    "run_info", metadata,
    sa.Column("collection_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("info", sa.Text, nullable=False),  # JSON provenance
)

collection_chain = sa.Table(
    "collection_chain", metadata,
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("child_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
    sa.Index("ix_chain_child", "child_id"),
)

dataset_type = sa.Table(
    "dataset_type", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("dimensions", sa.String(256), nullable=False),  # comma-separated, canonical order
    sa.Column("is_calibration", sa.Boolean, nullable=False),
    sa.Column("storage_format", sa.String(32), nullable=False),
)

dataset = sa.Table(
    "dataset", metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # uuid4 text
    sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("collection.id"), nullable=False),
    sa.Column("data_id_key", sa.String(256), nullable=False),  # DataId.key() over the type's dimensions
    sa.Column("instrument", sa.String(64), nullable=True),
    sa.Column("detector", sa.Integer, nullable=True),
    sa.Column("exposure", sa.BigInteger, nullable=True),
    sa.Column("physical_filter", sa.String(64), nullable=True),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("checksum", sa.String(80), nullable=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=True),
    sa.Column("ingest_date", sa.BigInteger, nullable=True),  # ns TAI
    sa.UniqueConstraint("dataset_type_id", "run_id", "data_id_key", name="uq_dataset_in_run"),
    sa.Index("ix_dataset_lookup", "dataset_type_id", "data_id_key"),
    sa.Index("ix_dataset_exposure", "instrument", "exposure"),
    sa.Index("ix_dataset_run", "run_id", "dataset_type_id"),
)

calib_association = sa.Table(
    "calib_association", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collection_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), nullable=False),
    sa.Column("dataset_id", sa.String(36), sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False),
    sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey("dataset_type.id"), nullable=False),
    sa.Column("data_id_key", sa.String(256), nullable=False),
    sa.Column("begin_ns", sa.BigInteger, nullable=False),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Index("ix_calib_lookup", "collection_id", "dataset_type_id", "data_id_key", "begin_ns"),
    sa.Index("ix_calib_dataset", "dataset_id"),
)

tagged_association = sa.Table(
    "tagged_association", metadata,
    sa.Column("collection_id", sa.Integer, sa.ForeignKey("collection.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("dataset_id", sa.String(36), sa.ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("dataset_type_id", sa.Integer, nullable=False),
    sa.Column("data_id_key", sa.String(256), nullable=False),
    sa.UniqueConstraint("collection_id", "dataset_type_id", "data_id_key", name="uq_tagged_one"),
)

pending_file = sa.Table(
    "pending_file", metadata,
    # write-ahead journal of the datastore: a row is committed before a file is moved into
    # place and deleted in the transaction that inserts the dataset row (see repo.py).
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    # "<hostname>:<pid>" of the writer, so that Repository.open repairs only leftovers of
    # processes that are gone and reports those of live writers.
    sa.Column("owner", sa.String(128), nullable=True),
)

run_lock = sa.Table(
    "run_lock", metadata,
    # one writer per RUN (issue 11): a submission holds this row while it writes into the RUN
    # and refreshes ``heartbeat_ns``; a second writer is refused with the owner's name.  Created
    # on first use in repositories made before it existed (no schema version change).
    sa.Column("run", sa.Text, primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),  # "<hostname>:<pid>:<token>"
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("started_ns", sa.BigInteger, nullable=False),
    sa.Column("heartbeat_ns", sa.BigInteger, nullable=False),
)

lifecycle_event = sa.Table(
    "lifecycle_event", metadata,
    # The approval ledger (cpframe.repository.ledger): append-only, hash-chained rows, one per
    # state transition of a calibration set (or per-site distribution step).  Additive: it is
    # created on first use in repositories made before it existed, so the version is unchanged.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("set_name", sa.String(256), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("previous", sa.String(32), nullable=False),
    sa.Column("site", sa.String(128), nullable=False, server_default=""),
    sa.Column("who", sa.String(128), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),  # ISO UTC, seconds
    sa.Column("why", sa.Text, nullable=False),
    sa.Column("report", sa.Text, nullable=False),
    sa.Column("report_sha256", sa.String(64), nullable=False),
    sa.Column("ticket", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON: waivers, override, evidence, site info
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),  # one successor per row: no forks
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Index("ix_lifecycle_set", "set_name", "id"),
)

tables = {t.name: t for t in metadata.sorted_tables}
