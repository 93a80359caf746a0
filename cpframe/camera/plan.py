"""Observing plans for the simulator: :class:`ExposureSpec`, :class:`Plan`, :func:`read_plan`.

A plan (``cpframe/data/plans/<name>.yaml`` or a user file) lists nights of exposure blocks;
:func:`load_plan` expands it into one :class:`ExposureSpec` per exposure.  Pure: no pixels.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from cpframe.core import yamlsafe
from cpframe.camera.models import _camera_yaml, load_camera
from cpframe.core.errors import CameraError, UserInputError
from cpframe.core.paths import package_dir
from cpframe.core.model import exposure_id as _exposure_id
from cpframe.core.model import ns_to_iso, parse_tai, tai_minus_utc_ns

#: Observation types the simulator can produce (``IMGTYPE`` header).
OBSERVATION_TYPES = ("bias", "dark", "flat", "science", "spot")  # spot: cpframe/camera/spots.py


_ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
_EPOCH = datetime(1970, 1, 1)


def fast_tai_ns(text: str) -> int:
    """ns since 1970-01-01 TAI of an ISO TAI text; same result as :func:`cpframe.core.model.parse_tai`.

    TAI has no leap seconds, so this is calendar arithmetic; other forms fall back to
    ``parse_tai``.

    >>> fast_tai_ns("1970-01-02T00:00:00.5")
    86400500000000
    """
    m = _ISO_RE.match(text)
    if not m:
        return parse_tai(text)
    y, mo, d, hh, mi, ss, frac = m.groups()
    try:
        delta = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss)) - _EPOCH
    except ValueError:
        return parse_tai(text)  # raises BadDateError with the usual message
    ns = (delta.days * 86400 + delta.seconds) * 10**9
    return ns + (int((frac or "0").ljust(9, "0")) if frac else 0)


# =========================================================================================
# Exposures and observing plans
# =========================================================================================


@dataclass(frozen=True)
class ExposureSpec:
    """One exposure to simulate (one per exposure; every detector gets the same spec)."""

    day_obs: int
    """Observing day, ``YYYYMMDD`` (rolls over at 12:00 UTC)."""
    seq_num: int
    """Sequence number within the day."""
    observation_type: str
    """``bias``, ``dark``, ``flat`` or ``science`` (``IMGTYPE``)."""
    physical_filter: str
    """Physical filter in the beam, e.g. ``r_03``."""
    exposure_time: float
    """Shutter-open time, s."""
    dark_time: float
    """Time the charge integrates (dark current, cosmic rays), s."""
    begin: str
    """Start of the exposure, ISO TAI."""
    observation_reason: str = ""
    """Why it was taken (``REASON``), e.g. ``bias``, ``ptc``, ``object``."""
    science_program: str = ""
    """Observing block / program (``PROGRAM``)."""
    flux: float = 0.0
    """Illumination at the focal-plane centre, e-/s/pixel (0 for bias and dark)."""

    @property
    def exposure_id(self) -> int:
        """Rubin exposure id ``day_obs * 100000 + seq_num``."""
        return _exposure_id(self.day_obs, self.seq_num)

    @property
    def begin_ns(self) -> int:
        """Start, ns since 1970 TAI."""
        return fast_tai_ns(self.begin)

    @property
    def end_ns(self) -> int:
        """End of integration (begin + dark time), ns since 1970 TAI."""
        return self.begin_ns + int(round(self.dark_time * 1e9))

    @property
    def end(self) -> str:
        """End of integration, ISO TAI."""
        return ns_to_iso(self.end_ns)

    def obs_id(self, instrument: str) -> str:
        """Observation id as the camera writes it, e.g. ``CC_O_20241110_000044``."""
        prefix = _camera_yaml(instrument).get("obs_id_prefix", instrument[:2].upper() + "_O")
        return f"{prefix}_{self.day_obs}_{self.seq_num:06d}"


@dataclass(frozen=True)
class Plan:
    """An observing plan read from YAML (see :func:`read_plan`)."""

    name: str
    instrument: str
    description: str
    scale: str
    """Scale the plan is meant for (``mini`` or ``full``); a hint, not enforced."""
    specs: tuple[ExposureSpec, ...]
    selections: dict[str, str]
    """``SELECTION_*`` name -> butler selection text, instrument filled in."""
    intended: dict[str, tuple[int, ...]]
    """``SELECTION_*`` name -> exposure ids the plan's blocks mark as intended for it."""
    path: str = ""


_NIGHT_KEYS = {"day_obs", "start", "blocks"}
_BLOCK_KEYS = {
    "observation_type",
    "count",
    "pair_exposure_times",
    "exposure_time",
    "physical_filter",
    "band",
    "flux",
    "observation_reason",
    "science_program",
    "seq_start",
    "selections",
}
_TOP_KEYS = {"name", "description", "instrument", "scale", "defaults", "nights", "selections"}
_DEFAULT_KEYS = {"physical_filter", "science_program", "readout_s", "dark_overhead_s"}


def list_plans() -> list[str]:
    """Names of the plans shipped in ``cpframe/data/plans``."""
    root = package_dir() / "data" / "plans"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _plan_text(name_or_path: str | os.PathLike) -> tuple[str, str]:
    s = str(name_or_path)
    if s in list_plans():
        return (package_dir() / "data" / "plans" / f"{s}.yaml").read_text(), s
    p = Path(s)
    if p.is_file():
        return p.read_text(), str(p)
    raise UserInputError(
        f"observing plan {s!r} not found: it is neither a file nor a shipped plan "
        f"({', '.join(list_plans())}). Pass --plan dmtn222, --plan demo or the path of a plan YAML file."
    )


def read_plan(name_or_path: str | os.PathLike, instrument: str | None = None) -> Plan:
    """Read and validate an observing plan.

    Parameters
    ----------
    name_or_path
        A shipped plan name (``dmtn222``, ``demo``) or a YAML file path.
    instrument
        Instrument to plan for; default the plan's ``instrument``.

    Returns
    -------
    Plan

    Raises
    ------
    UserInputError
        Unknown plan, bad YAML, unknown keys, bad values, duplicated sequence numbers or
        exposures outside their ``day_obs``; every problem is listed at once.
    CameraError
        Unknown instrument or filter.
    """
    text, where = _plan_text(name_or_path)
    try:
        doc = yamlsafe.load(text, str(where), max_nodes=100_000)  # bounded aliases (issue 11)
    except yaml.YAMLError as err:
        raise UserInputError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise UserInputError(f"{where}: a plan is a YAML mapping with 'nights:' (see docs/simulator.md).")
    problems: list[str] = []
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        problems.append(f"unknown top-level keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    instrument = instrument or doc.get("instrument")
    if not instrument:
        raise UserInputError(f"{where}: no instrument: give --instrument or set 'instrument:' in the plan.")
    camera = load_camera(instrument)
    try:
        home = load_camera(doc["instrument"]) if doc.get("instrument") else None
    except CameraError:
        home = None
    defaults = dict(doc.get("defaults") or {})
    unknown = set(defaults) - _DEFAULT_KEYS
    if unknown:
        problems.append(f"defaults: unknown keys {sorted(unknown)}; allowed: {sorted(_DEFAULT_KEYS)}")
    readout_ns = int(round(float(defaults.get("readout_s", 3.0)) * 1e9))
    overhead = float(defaults.get("dark_overhead_s", 0.0))
    specs: list[ExposureSpec] = []
    intended: dict[str, list[int]] = {}
    nights = doc.get("nights") or []
    if not nights:
        problems.append("no 'nights:' given")
    for ni, night in enumerate(nights):
        label = f"nights[{ni}]"
        if not isinstance(night, dict) or "day_obs" not in night:
            problems.append(f"{label}: needs 'day_obs' and 'blocks'")
            continue
        unknown = set(night) - _NIGHT_KEYS
        if unknown:
            problems.append(f"{label}: unknown keys {sorted(unknown)}; allowed: {sorted(_NIGHT_KEYS)}")
        day_obs = night["day_obs"]
        if not isinstance(day_obs, int) or not re.fullmatch(r"20\d{6}", str(day_obs)):
            problems.append(f"{label}: day_obs {day_obs!r} is not an integer YYYYMMDD (e.g. 20241110)")
            continue
        ds = str(day_obs)
        date = f"{ds[:4]}-{ds[4:6]}-{ds[6:]}"
        try:
            day_begin = parse_tai(f"{date}T12:00:00") + tai_minus_utc_ns(int(ds[:4]), int(ds[4:6]), int(ds[6:]))
        except UserInputError as err:
            problems.append(f"{label}: {err}")
            continue
        try:
            t_ns = parse_tai(str(night.get("start", f"{date}T18:00:00")), f"{label}.start")
        except UserInputError as err:
            problems.append(str(err))
            continue
        seq = 1
        used: set[int] = set()
        for bi, block in enumerate(night.get("blocks") or []):
            blabel = f"{label}.blocks[{bi}]"
            if not isinstance(block, dict):
                problems.append(f"{blabel}: a block is a mapping")
                continue
            unknown = set(block) - _BLOCK_KEYS
            if unknown:
                problems.append(f"{blabel}: unknown keys {sorted(unknown)}; allowed: {sorted(_BLOCK_KEYS)}")
            otype = block.get("observation_type")
            if otype not in OBSERVATION_TYPES:
                problems.append(
                    f"{blabel}: observation_type {otype!r}; use one of {', '.join(OBSERVATION_TYPES)}"
                )
                continue
            if "pair_exposure_times" in block:
                if otype != "flat":
                    problems.append(f"{blabel}: pair_exposure_times (a PTC ramp) needs observation_type flat")
                    continue
                times = [float(t) for t in block["pair_exposure_times"] for _ in (0, 1)]
            else:
                count = block.get("count")
                if not isinstance(count, int) or count < 1:
                    problems.append(f"{blabel}: count {count!r} must be a positive integer")
                    continue
                times = [float(block.get("exposure_time", 0.0))] * count
            if otype == "bias" and any(t != 0 for t in times):
                problems.append(f"{blabel}: a bias has exposure_time 0")
            if otype != "bias" and any(t <= 0 for t in times):
                problems.append(f"{blabel}: {otype} exposures need exposure_time > 0")
            flux = float(block.get("flux", 0.0))
            if otype in ("flat", "science", "spot") and flux <= 0:
                problems.append(
                    f"{blabel}: {otype} exposures need flux > 0 (e-/s/pixel at the focal-plane centre)"
                )
            if otype in ("bias", "dark") and flux != 0:
                problems.append(f"{blabel}: {otype} exposures have flux 0")
            try:
                if "band" in block:
                    pf = camera.filter_for_band(block["band"])
                else:
                    pf = block.get("physical_filter", defaults.get("physical_filter"))
                    if pf is None:
                        pf = camera.filters[0][0]
                    elif home is not None and home.name != camera.name:
                        # a plan written for another camera: same band, this camera's filter
                        pf = camera.filter_for_band(home.band_of(pf))
                    camera.band_of(pf)
            except CameraError as err:
                problems.append(f"{blabel}: {err}")
                continue
            seq = int(block.get("seq_start", seq))
            for t in times:
                if seq in used:
                    problems.append(f"{blabel}: seq_num {seq} of day_obs {day_obs} is used twice")
                used.add(seq)
                if not day_begin <= t_ns < day_begin + 86400 * 10**9:
                    problems.append(
                        f"{blabel}: seq_num {seq} starts at {ns_to_iso(t_ns)} TAI, outside day_obs {day_obs} "
                        "(12:00 UTC to 12:00 UTC next day); move 'start' earlier or split the night"
                    )
                spec = ExposureSpec(
                    day_obs=day_obs,
                    seq_num=seq,
                    observation_type=otype,
                    physical_filter=pf,
                    exposure_time=t,
                    dark_time=round(t + overhead, 6),
                    begin=ns_to_iso(t_ns),
                    observation_reason=str(block.get("observation_reason", otype)),
                    science_program=str(block.get("science_program", defaults.get("science_program", ""))),
                    flux=flux,
                )
                specs.append(spec)
                for sel in block.get("selections") or []:
                    intended.setdefault(sel, []).append(spec.exposure_id)
                t_ns = spec.end_ns + readout_ns
                seq += 1
    selections_raw = doc.get("selections") or {}
    selections = {}
    for k, v in selections_raw.items():
        if not str(k).startswith("SELECTION_"):
            problems.append(f"selections: key {k!r} should start with SELECTION_")
        selections[str(k)] = str(v).replace("{instrument}", instrument)
    for k in intended:
        if k not in selections:
            problems.append(f"a block names selection {k!r}, which 'selections:' does not define")
    if problems:
        raise UserInputError(f"{where}: invalid observing plan:\n  - " + "\n  - ".join(problems))
    return Plan(
        name=str(doc.get("name", Path(where).stem)),
        instrument=instrument,
        description=str(doc.get("description", "")).strip(),
        scale=str(doc.get("scale", "mini")),
        specs=tuple(specs),
        selections=selections,
        intended={k: tuple(v) for k, v in intended.items()},
        path=where,
    )


def load_plan(name_or_path: str | os.PathLike, instrument: str | None = None) -> list[ExposureSpec]:
    """The exposures of an observing plan (see :func:`read_plan`)."""
    return list(read_plan(name_or_path, instrument).specs)


