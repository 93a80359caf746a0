"""Value types shared by every part of cpframe.

Glossary (one word per concept)
-------------------------------
instrument
    A camera (``LATISS``, ``LSSTComCam``, ``LSSTCam``); see ``cpframe.camera.models``.
exposure
    One read-out of the camera; id = ``day_obs * 100000 + seq_num``.
data ID
    A mapping of dimension name -> value identifying a dataset
    (``{"instrument": "LSSTComCam", "detector": 4, "exposure": 2024111000044}``).
dataset type
    A named kind of dataset (``raw``, ``bias``, ``flat``...) with its dimensions,
    whether it is a calibration, and its storage format.
dataset
    One file in the datastore plus its registry row; identified by a UUID.
run
    A RUN collection: owns datasets; a dataset type + data ID appears once per run.
calibration collection
    A CALIBRATION collection: links datasets with a validity range.
chain
    A CHAINED collection: an ordered list of child collections, searched in order.
validity range
    A :class:`Timespan` ``[begin, end)`` in TAI; ``None`` ends are unbounded.
selection
    A butler-style ``where`` expression (``instrument='X' and exposure.day_obs=20241110``).
stage
    One step of ``cpframe submit``: render -> validate -> plan -> run -> record.

Times
-----
All times are TAI.  In the registry a time is stored as integer nanoseconds
since 1970-01-01T00:00:00 TAI (:func:`tai_ns`); unbounded ends are ``None`` in
Python and the sentinels :data:`NS_MIN` / :data:`NS_MAX` in the database.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from cpframe.core.errors import BadDateError

__all__ = [
    "CollectionType",
    "Timespan",
    "DataId",
    "DatasetType",
    "DatasetRef",
    "NS_MIN",
    "NS_MAX",
    "parse_tai",
    "tai_ns",
    "ns_to_iso",
    "exposure_id",
    "DIMENSION_ORDER",
]

#: Sentinels stored in the database for unbounded validity ends.
NS_MIN = -(2**62)
NS_MAX = 2**62

#: Canonical order of dimensions in data IDs and file names.
DIMENSION_ORDER = ("instrument", "detector", "physical_filter", "band", "exposure", "day_obs")


class CollectionType(enum.IntEnum):
    """Kind of collection.

    RUN
        Owns datasets; (dataset type, data ID) unique within the run.
    TAGGED
        Links datasets from runs, at most one per (dataset type, data ID).
    CHAINED
        Ordered list of child collections, never containing itself.
    CALIBRATION
        Links datasets with validity ranges; ranges for one (dataset type,
        data ID) never overlap.
    """

    RUN = 1
    TAGGED = 2
    CHAINED = 3
    CALIBRATION = 4


_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?$"
)
_YDAY_RE = re.compile(r"^(\d{4}):(\d{3})(?::(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?$")


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


_EPOCH = None  # astropy Time for 1970-01-01 TAI, created lazily


def _epoch():
    global _EPOCH
    if _EPOCH is None:
        from astropy.time import Time

        _EPOCH = Time("1970-01-01T00:00:00", scale="tai", format="isot")
    return _EPOCH


def parse_tai(text: str, what: str = "date") -> int:
    """Parse a TAI date/time text into nanoseconds since 1970-01-01 TAI.

    Accepted: ``YYYY-MM-DD``, ``YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]`` and the day-of-year
    form ``YYYY:DDD[:HH:MM[:SS[.fraction]]]`` (as the butler, through astropy), read as TAI.
    Rejected: empty text, ``Z`` / ``+00:00`` suffixes, compact ``20241001``, free text.

    >>> parse_tai("1970:002") == parse_tai("1970-01-02")
    True

    >>> parse_tai("1970-01-01T00:00:01")
    1000000000
    """
    s = str(text).strip()
    if not s:
        raise BadDateError(
            f"{what} is empty. Give a date such as 2024-11-10 (TAI), or leave the option out for an "
            "unbounded range (a begin of 1970-01-01 also means 'valid since forever')."
        )
    m = _YDAY_RE.match(s)
    if m:  # YYYY:DDD[:HH:MM[:SS[.fff]]], astropy's "yday" form, which the butler accepts
        y, doy, hh, mi, ss, frac = m.groups()
        if int(doy) < 1 or int(doy) > (366 if _leap(int(y)) else 365):
            raise BadDateError(f"{what} {text!r}: day of year {int(doy)} does not exist in {y} (YYYY:DDD).")
        try:
            from astropy.time import Time

            t = Time(f"{y}:{doy}:{hh or '00'}:{mi or '00'}:{ss or '00'}{frac or ''}", scale="tai", format="yday")
        except ValueError:
            raise BadDateError(f"{what} {text!r} is not a valid YYYY:DDD:HH:MM:SS time.") from None
        return tai_ns(t)
    if s.upper().endswith("Z") or "+" in s or re.search(r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?-\d{2}:?\d{2}$", s):
        raise BadDateError(
            f"{what} {text!r}: a time-zone suffix claims UTC, but cpframe dates are TAI. "
            "Drop the suffix and give the TAI time, e.g. 2024-11-10T12:00:00."
        )
    m = _DATE_RE.match(s)
    if not m:
        raise BadDateError(
            f"{what} {text!r} is not a date cpframe accepts. Use YYYY-MM-DD or "
            "YYYY-MM-DDTHH:MM[:SS[.fff]] (TAI), e.g. 2024-11-10T12:00:00."
        )
    y, mo, d, hh, mi, ss, frac = m.groups()
    try:
        from astropy.time import Time

        iso = f"{y}-{mo}-{d}T{hh or '00'}:{mi or '00'}:{ss or '00'}{frac or ''}"
        t = Time(iso, scale="tai", format="isot")
    except ValueError as err:
        reason = str(err).strip().splitlines()[-1]  # astropy's last line says which part ("bad day")
        raise BadDateError(f"{what} {text!r} is not a valid calendar date/time ({reason}).") from None
    return tai_ns(t)


def tai_minus_utc_ns(year: int, month: int, day: int) -> int:
    """TAI - UTC on a UTC calendar day, in ns, from erfa's leap-second table (``erfa.dat``).

    >>> tai_minus_utc_ns(2024, 11, 10) // 10**9, tai_minus_utc_ns(2015, 1, 1) // 10**9
    (37, 35)
    """
    import erfa

    return int(round(float(erfa.dat(int(year), int(month), int(day), 0.0)) * 1e9))


def tai_now_ns() -> int:
    """Now as ns since 1970-01-01 TAI: the system's UTC clock plus TAI - UTC of today (erfa)."""
    import time

    ns = time.time_ns()
    y, mo, d = time.gmtime(ns // 10**9)[:3]
    return ns + tai_minus_utc_ns(y, mo, d)


def tai_ns(t: Any) -> int:
    """Convert an astropy ``Time`` (any scale) to integer ns since 1970-01-01 TAI."""
    dt = t.tai - _epoch()
    # two-part day arithmetic keeps nanosecond precision
    return int(round((dt.jd1 * 86400.0) * 1e9)) + int(round(dt.jd2 * 86400.0 * 1e9))


def ns_to_iso(ns: int | None) -> str | None:
    """Format ns since 1970 TAI as ISO text (TAI), ``None`` for unbounded.

    >>> ns_to_iso(1000000000)
    '1970-01-01T00:00:01.000'
    """
    if ns is None or ns <= NS_MIN or ns >= NS_MAX:
        return None
    from astropy.time import TimeDelta

    t = _epoch() + TimeDelta(ns // 1_000_000_000, ns % 1_000_000_000 * 1e-9, format="sec")
    return t.tai.isot


def exposure_id(day_obs: int, seq_num: int) -> int:
    """Rubin exposure id.

    >>> exposure_id(20241110, 44)
    2024111000044
    """
    return int(day_obs) * 100000 + int(seq_num)


@dataclass(frozen=True)
class Timespan:
    """Half-open TAI interval ``[begin_ns, end_ns)``; ``None`` = unbounded."""

    begin_ns: int | None = None
    """Start, ns since 1970-01-01 TAI, inclusive; None for -inf."""
    end_ns: int | None = None
    """End, ns since 1970-01-01 TAI, exclusive; None for +inf."""

    def __post_init__(self):
        if self.begin_ns is not None and self.end_ns is not None and self.begin_ns > self.end_ns:
            raise BadDateError(
                f"validity range begins ({ns_to_iso(self.begin_ns)}) after it ends "
                f"({ns_to_iso(self.end_ns)}); swap --begin-date and --end-date."
            )

    @classmethod
    def from_text(cls, begin: str | None = None, end: str | None = None) -> "Timespan":
        """Build from CLI texts; a begin at or before 1970-01-01 means unbounded.

        ``None`` means "not given" (unbounded); an empty text is an error, never "forever"
        (issue 11).  ``begin == end`` is an error: the range ``[t, t)`` is empty and could never
        match an exposure (the butler would store it and silently never use it).

        Raises
        ------
        BadDateError
            An empty or malformed text, begin after end, or begin equal to end.
        """
        b = parse_tai(begin, "begin date") if begin is not None else None
        if b is not None and b <= 0:
            b = None
        e = parse_tai(end, "end date") if end is not None else None
        span = cls(b, e)
        span.require_not_empty()
        return span

    def require_not_empty(self) -> "Timespan":
        """Raise :class:`BadDateError` for a zero-length validity range ``[t, t)``; else return self."""
        if self.begin_ns is not None and self.begin_ns == self.end_ns:
            raise BadDateError(
                f"validity range [{ns_to_iso(self.begin_ns)}, {ns_to_iso(self.end_ns)}) is empty: begin equals "
                "end, so no exposure could ever match it. Give an end after the begin, or no end date."
            )
        return self

    @property
    def db_begin(self) -> int:
        return NS_MIN if self.begin_ns is None else self.begin_ns

    @property
    def db_end(self) -> int:
        return NS_MAX if self.end_ns is None else self.end_ns

    def overlaps(self, other: "Timespan") -> bool:
        """True when the two half-open ranges share an instant."""
        return self.db_begin < other.db_end and other.db_begin < self.db_end

    def __str__(self) -> str:
        return f"[{ns_to_iso(self.begin_ns) or '-inf'}, {ns_to_iso(self.end_ns) or '+inf'})"


class DataId(Mapping[str, Any]):
    """Immutable, hashable mapping of dimension name -> value.

    >>> d = DataId(instrument="LATISS", detector=0)
    >>> d["detector"], str(d)
    (0, 'instrument=LATISS,detector=0')
    """

    __slots__ = ("_d", "_hash")

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kw: Any):
        d = dict(mapping or {})
        d.update(kw)
        order = {k: i for i, k in enumerate(DIMENSION_ORDER)}
        self._d = dict(sorted(d.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
        self._hash = hash(tuple(self._d.items()))

    def __getitem__(self, k: str) -> Any:
        return self._d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"DataId({self._d!r})"

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self._d.items())

    def key(self) -> str:
        """Canonical text used for uniqueness in the registry."""
        return str(self)

    def subset(self, names) -> "DataId":
        return DataId({k: self._d[k] for k in names if k in self._d})


@dataclass(frozen=True)
class DatasetType:
    """A named kind of dataset."""

    name: str
    """Dataset type name, e.g. ``bias``."""
    dimensions: tuple[str, ...]
    """Dimension names of its data IDs, e.g. ``("instrument", "detector")``."""
    is_calibration: bool = False
    """Whether datasets of this type may be certified into CALIBRATION collections."""
    storage_format: str = "fits"
    """File format tag; see docs/architecture.md ("File formats")."""


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset: its id, type, data ID and run, plus where its file is."""

    id: str
    """UUID (text)."""
    dataset_type: str
    data_id: DataId
    run: str
    path: str | None = None
    """Path of the file relative to the datastore root (or absolute for ``direct`` ingest)."""
    checksum: str | None = None
    """``sha256:<hex>`` of the file as written."""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    """Optional extra facts (e.g. ``timespan`` when found through a CALIBRATION collection)."""
