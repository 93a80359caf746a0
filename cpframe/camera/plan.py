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
from typing import Literal

from pydantic import Field

from cpframe.camera.models import _camera_yaml, load_camera
from cpframe.core.errors import CameraError, UserInputError
from cpframe.core.paths import package_dir
from cpframe.core.model import exposure_id as _exposure_id
from cpframe.core.model import ns_to_iso, parse_tai, tai_minus_utc_ns
from cpframe.core.schema import Schema, check, read_yaml

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


class PlanDefaults(Schema):
    """``defaults:`` of a plan."""

    physical_filter: str | None = None
    science_program: str = ""
    readout_s: float = Field(3.0, ge=0)
    """From the end of one exposure to the start of the next, s."""
    dark_overhead_s: float = Field(0.0, ge=0)
    """dark_time = exposure_time + this, s."""


class PlanBlock(Schema):
    """One block of a night: ``count`` exposures (or a PTC ramp of flat pairs)."""

    observation_type: Literal["bias", "dark", "flat", "science", "spot"]
    count: int | None = Field(None, ge=1)
    pair_exposure_times: list[float] | None = None
    exposure_time: float = 0.0
    physical_filter: str | None = None
    band: str | None = None
    flux: float = 0.0
    """e-/s/pixel at the focal-plane centre."""
    observation_reason: str | None = None
    science_program: str | None = None
    seq_start: int | None = Field(None, ge=0)
    selections: list[str] = []


class PlanNight(Schema):
    """One night: ``day_obs`` (YYYYMMDD), its ``start`` (TAI) and its blocks."""

    day_obs: int
    start: str | None = None
    blocks: list[dict] = []


class PlanFile(Schema):
    """An observing plan file (docs/simulator.md)."""

    name: str | None = None
    description: str = ""
    instrument: str | None = None
    scale: Literal["full", "mini"] = "mini"
    defaults: PlanDefaults = PlanDefaults()
    nights: list[dict] = []
    selections: dict[str, str] = {}


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
    doc = read_yaml(where, text=text, error=UserInputError)
    if not isinstance(doc, dict):
        raise UserInputError(f"{where}: a plan is a YAML mapping with 'nights:' (see docs/simulator.md).")
    problems: list[str] = []
    plan = check(doc, PlanFile, problems) or PlanFile.model_construct(
        **{k: v for k, v in doc.items() if k in PlanFile.model_fields and k != "defaults"})
    instrument = instrument or plan.instrument
    if not instrument:
        raise UserInputError(f"{where}: no instrument: give --instrument or set 'instrument:' in the plan.")
    camera = load_camera(instrument)
    try:
        home = load_camera(plan.instrument) if plan.instrument else None
    except CameraError:
        home = None
    defaults = plan.defaults if isinstance(plan.defaults, PlanDefaults) else PlanDefaults()
    readout_ns = int(round(defaults.readout_s * 1e9))
    overhead = defaults.dark_overhead_s
    specs: list[ExposureSpec] = []
    intended: dict[str, list[int]] = {}
    nights = plan.nights if isinstance(plan.nights, list) else []
    if not nights:
        problems.append("no 'nights:' given")
    for ni, night in enumerate(nights):
        label = f"nights[{ni}]"
        n = check(night, PlanNight, problems, prefix=label)
        if n is None:
            continue
        day_obs = n.day_obs
        if not re.fullmatch(r"20\d{6}", str(day_obs)):
            problems.append(f"{label}.day_obs: {day_obs!r} is not an integer YYYYMMDD (e.g. 20241110)")
            continue
        ds = str(day_obs)
        date = f"{ds[:4]}-{ds[4:6]}-{ds[6:]}"
        try:
            day_begin = parse_tai(f"{date}T12:00:00") + tai_minus_utc_ns(int(ds[:4]), int(ds[4:6]), int(ds[6:]))
        except UserInputError as err:
            problems.append(f"{label}: {err}")
            continue
        try:
            t_ns = parse_tai(n.start or f"{date}T18:00:00", f"{label}.start")
        except UserInputError as err:
            problems.append(str(err))
            continue
        seq = 1
        used: set[int] = set()
        for bi, raw_block in enumerate(n.blocks):
            blabel = f"{label}.blocks[{bi}]"
            block = check(raw_block, PlanBlock, problems, prefix=blabel)
            if block is None:
                continue
            otype = block.observation_type
            if block.pair_exposure_times is not None:
                if otype != "flat":
                    problems.append(f"{blabel}: pair_exposure_times (a PTC ramp) needs observation_type flat")
                    continue
                times = [float(t) for t in block.pair_exposure_times for _ in (0, 1)]
            else:
                if block.count is None:
                    problems.append(f"{blabel}.count: is required (a positive integer) unless pair_exposure_times is given")
                    continue
                times = [block.exposure_time] * block.count
            if otype == "bias" and any(t != 0 for t in times):
                problems.append(f"{blabel}: a bias has exposure_time 0")
            if otype != "bias" and any(t <= 0 for t in times):
                problems.append(f"{blabel}: {otype} exposures need exposure_time > 0")
            flux = block.flux
            if otype in ("flat", "science", "spot") and flux <= 0:
                problems.append(
                    f"{blabel}: {otype} exposures need flux > 0 (e-/s/pixel at the focal-plane centre)"
                )
            if otype in ("bias", "dark") and flux != 0:
                problems.append(f"{blabel}: {otype} exposures have flux 0")
            try:
                if block.band is not None:
                    pf = camera.filter_for_band(block.band)
                else:
                    pf = block.physical_filter or defaults.physical_filter
                    if pf is None:
                        pf = camera.filters[0][0]
                    elif home is not None and home.name != camera.name:
                        # a plan written for another camera: same band, this camera's filter
                        pf = camera.filter_for_band(home.band_of(pf))
                    camera.band_of(pf)
            except CameraError as err:
                problems.append(f"{blabel}: {err}")
                continue
            seq = block.seq_start if block.seq_start is not None else seq
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
                    observation_reason=block.observation_reason if block.observation_reason is not None else otype,
                    science_program=(block.science_program if block.science_program is not None
                                     else defaults.science_program),
                    flux=flux,
                )
                specs.append(spec)
                for sel in block.selections:
                    intended.setdefault(sel, []).append(spec.exposure_id)
                t_ns = spec.end_ns + readout_ns
                seq += 1
    selections_raw = plan.selections if isinstance(plan.selections, dict) else {}
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
        name=plan.name or Path(where).stem,
        instrument=instrument,
        description=str(plan.description).strip(),
        scale=plan.scale,
        specs=tuple(specs),
        selections=selections,
        intended={k: tuple(v) for k, v in intended.items()},
        path=where,
    )


def load_plan(name_or_path: str | os.PathLike, instrument: str | None = None) -> list[ExposureSpec]:
    """The exposures of an observing plan (see :func:`read_plan`)."""
    return list(read_plan(name_or_path, instrument).specs)


