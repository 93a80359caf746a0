"""Camera simulator: raw files with every effect calibration removes, plus the truth injected.

The simulator writes one ``fits-raw`` file per exposure x detector (docs/architecture.md)
and saves, beside the data, the truth it used (``truth/truth.json`` +
``truth/truth_arrays.npz``) so that tests can compare calibrations with it.

Model of one exposure x detector (units in brackets)
----------------------------------------------------
On the assembled detector image, in electrons::

    lam   = (flux + stars) * exposure_time * response(band)      # response = flat * norm
          + dark_rate * dark_time                                 # per-amp dark + hot pixels
    e     = Poisson(lam) + cosmic rays, clipped at the amp's full well

Per amplifier, in the read-out frame (``cpframe/camera/models.py``), in adu::

    s     = e / gain;  s *= 1 + nonlinearity * s;  s += crosstalk @ s(other amps)
    raw   = s (data region only) + bias_level + jitter + drift(row) + bias_pattern (data only)
          + Normal(0, read_noise / gain)       (everywhere: prescan, data, both overscans)
    raw   = clip(rint(raw), 0, 2**adc_bits - 1) as int32

``Truth.flat(detector, band)`` is ``response / mean over the focal plane`` (so it averages
to ~1 over all detectors of the camera); ``Truth.amp(d, a).saturation`` is the raw level
(adu, bias included) where the full well (or the ADC) clips.

Every random draw comes from ``numpy.random.SeedSequence`` streams: truth from
``(seed, TRUTH, detector)``, each exposure x detector from ``(seed, exposure_id,
detector)``, split into independent children (signal, cosmic rays, bias, noise) so that
switching one effect off leaves the other draws unchanged.  Same seed -> same bytes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from collections import OrderedDict
from datetime import datetime
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import yaml

from cpframe.core.paths import package_dir
from cpframe.camera.models import Camera, Detector, _camera_yaml, load_camera
from cpframe.core.errors import CameraError, UserInputError
from cpframe.core.model import exposure_id as _exposure_id
from cpframe.core.model import ns_to_iso, parse_tai

__all__ = [
    "ExposureSpec",
    "Plan",
    "AmpTruth",
    "DetectorTruth",
    "Truth",
    "EFFECTS",
    "OBSERVATION_TYPES",
    "list_plans",
    "read_plan",
    "load_plan",
    "make_truth",
    "simulate_detector",
    "write_raw",
    "raw_path",
    "simulate",
    "fast_tai_ns",
    "process_context",
    "raw_header_cards",
]

#: Observation types the simulator can produce (``IMGTYPE`` header).
OBSERVATION_TYPES = ("bias", "dark", "flat", "science")

#: Effects of :func:`make_truth` and their default strength (``True`` = the default strength,
#: ``False``/0 = off, a number = that strength, in the unit given).
EFFECTS: dict[str, Any] = {
    "bias_drift": True,  # row-wise bias drift (amplitude from the camera YAML range, adu)
    "bias_jitter": 1.0,  # exposure-to-exposure bias offset per amp, rms adu
    "bias_pattern": True,  # fixed 2-d bias bump at the start of read-out (2-6 adu)
    "read_noise": True,  # Gaussian read noise (camera YAML range, e-)
    "dark_current": True,  # uniform dark current per amp (camera YAML range, e-/s)
    "defects": True,  # hot / cold / dead pixels and bad columns
    "manual_defects": True,  # the curated manual defects (cpframe/data/curated/<INSTRUMENT>)
    "cosmics": 0.03,  # cosmic-ray rate, events / cm^2 / s of dark time
    "vignetting": True,  # smooth illumination x vignetting per band
    "prnu": 0.01,  # pixel response non-uniformity, rms (relative)
    "qe": 0.03,  # detector-to-detector response scatter, rms (relative)
    "poisson": True,  # photon + dark shot noise
    "saturation": True,  # full-well clip (the ADC clip always applies)
    "stars": 1e-5,  # science frames: stars per pixel
    "nonlinearity": False,  # quadratic non-linearity coefficient (1/adu); True = -1e-7
    "crosstalk": False,  # crosstalk strength (largest coefficient); True = 3e-4
}
_EFFECT_ON = {
    "bias_jitter": 1.0,
    "cosmics": 0.03,
    "prnu": 0.01,
    "qe": 0.03,
    "stars": 1e-5,
    "nonlinearity": -1e-7,
    "crosstalk": 3e-4,
}

TRUTH_FORMAT = "cpframe-truth"
TRUTH_VERSION = 1

# SeedSequence tags (arbitrary constants; changing them changes every simulated file)
_TAG_TRUTH = 0x7472_7574
_TAG_PRNU = 0x7072_6E75
_TAG_BANDS = 0x6261_6E64

_BAND_VIGNETTING = {"u": 0.22, "g": 0.18, "r": 0.15, "i": 0.13, "z": 0.11, "y": 0.10}
_TAI_MINUS_UTC_S = 37  # constant since 2017
_BUMP_ROWS = 30.0  # e-folding length of the bias bump, rows
_BUMP_ROWS_USED = 360  # rows of the bump simulated (6 adu * exp(-12) < 4e-5 adu beyond)
_HOT_RATE = (3.5, 10.0)  # e-/s of hot pixels (above cp_pipe's 3 e-/s dark threshold)
_COLD_RESPONSE = (0.3, 0.7)
_BAD_COLUMN_RESPONSE = (0.2, 0.6)
_CACHE_BYTES = 768 * 2**20


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
        doc = yaml.safe_load(text)
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
            day_begin = parse_tai(f"{date}T12:00:00") + _TAI_MINUS_UTC_S * 10**9
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
            if otype in ("flat", "science") and flux <= 0:
                problems.append(
                    f"{blabel}: {otype} exposures need flux > 0 (e-/s/pixel at the focal-plane centre)"
                )
            if otype in ("bias", "dark") and flux != 0:
                problems.append(f"{blabel}: {otype} exposures have flux 0")
            try:
                if "band" in block:
                    pf = camera.filter_for_band(block["band"])
                else:
                    pf = block.get("physical_filter", defaults.get("physical_filter", camera.filters[0][0]))
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


# =========================================================================================
# Truth
# =========================================================================================


@dataclass(frozen=True)
class AmpTruth:
    """Injected values of one amplifier."""

    gain: float
    """e-/adu."""
    read_noise: float
    """e- rms (in data and overscan)."""
    bias_level: float
    """adu, mean raw level with no signal."""
    bias_drift: float
    """adu, amplitude of the row-wise drift (same in data and overscan columns of a row)."""
    dark_current: float
    """e-/s, uniform over the amp (hot pixels come on top)."""
    full_well: float
    """e-, where the pixel stops collecting charge."""
    saturation: float
    """adu, raw level (bias included) where the full well or the ADC clips."""
    bias_bump: float
    """adu, amplitude of the fixed bias bump at the first rows read (data region only)."""


@dataclass
class DetectorTruth:
    """Injected values of one detector."""

    id: int
    name: str
    amps: dict[str, AmpTruth]
    defects: list[tuple[int, int, int, int, str]]
    """(x0, y0, width, height, kind) in assembled pixels, 0-based; kind in hot|cold|bad_column|dead."""
    defect_values: list[float]
    """Per defect: extra dark current for ``hot`` (e-/s), relative response otherwise."""
    qe: float
    """Relative response of the detector (focal-plane average ~ 1)."""
    crosstalk: np.ndarray
    """16 x 16 [target, source] coefficients (adu/adu, read-out frames); zeros when off."""
    nonlinearity: float
    """k in s_measured = s * (1 + k * s), s in adu; 0 when off."""


def _sim_facts(camera: Camera, det: Detector) -> dict:
    st = _camera_yaml(camera.name)["sensor_types"][det.sensor_type]
    return st.get("simulation") or _camera_yaml("LSSTComCam")["sensor_types"]["ITL"]["simulation"]


def _effect_value(name: str, value: Any) -> float:
    if value is True:
        return float(_EFFECT_ON.get(name, 1.0))
    if value is False or value is None:
        return 0.0
    return float(value)


def _grid_position(camera: Camera, det: Detector) -> tuple[float, float]:
    """(row, col) of a detector in units of detectors, focal-plane centre at (0, 0)."""
    m = re.fullmatch(r"R(\d)(\d)_S(\d)(\d)", det.name)
    if not m or len(camera.detectors) == 1:
        return 0.0, 0.0
    ry, rx, sy, sx = (int(g) for g in m.groups())
    return float(3 * ry + sy - 7), float(3 * rx + sx - 7)


def _field_radius(camera: Camera) -> float:
    """Half-diagonal of the detector grid, in detector units."""
    return _field_radius_of(camera.name, camera.scale)


@functools.lru_cache(maxsize=16)
def _field_radius_of(instrument: str, scale: str) -> float:
    camera = load_camera(instrument, scale)
    pos = np.array([_grid_position(camera, d) for d in camera.detectors])
    ny = pos[:, 0].max() - pos[:, 0].min() + 1
    nx = pos[:, 1].max() - pos[:, 1].min() + 1
    return 0.5 * math.hypot(ny, nx)


class Truth:
    """Everything the simulator injected, for one instrument at one scale.

    Attributes
    ----------
    instrument, scale : str
    seed : int
    date : str or None
        ISO TAI date at which curated manual defects were taken (None = newest).
    effects : dict
        Effect name -> strength used (0 = off).
    detectors : dict[int, DetectorTruth]
    bands : dict[str, dict]
        Illumination parameters per band (``radial``, ``quartic``, ``grad_x``, ``grad_y``).
    flat_norm : dict[str, float]
        Focal-plane mean of the un-normalised response per band.
    """

    def __init__(
        self,
        instrument: str,
        scale: str,
        seed: int,
        effects: Mapping[str, float],
        detectors: dict[int, DetectorTruth],
        bands: dict[str, dict],
        date: str | None = None,
        prnu_arrays: Mapping[int, np.ndarray] | None = None,
    ):
        self.instrument = instrument
        self.scale = scale
        self.seed = int(seed)
        self.effects = dict(effects)
        self.detectors = detectors
        self.bands = bands
        self.date = date
        self._stored_prnu = dict(prnu_arrays or {})
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self.flat_norm = {b: self._flat_norm(b) for b in bands}

    # -- pickling for process pools: drop caches ------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def camera(self) -> Camera:
        return load_camera(self.instrument, self.scale)

    def amp(self, detector_id: int, amp_name: str) -> AmpTruth:
        """Truth of one amplifier."""
        return self.detectors[int(detector_id)].amps[amp_name]

    def _cached(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        # one lock: thread pools share the truth; a re-entrant lock lets make() use other caches
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            arr = make()
            arr.setflags(write=False)
            self._cache[key] = arr
            while sum(a.nbytes for a in self._cache.values()) > _CACHE_BYTES and len(self._cache) > 1:
                self._cache.popitem(last=False)
            return arr

    # -- per-pixel fields -------------------------------------------------------------------
    def prnu(self, detector_id: int) -> np.ndarray:
        """Pixel response non-uniformity (mean exactly 1), float32, ``detector.shape``."""
        det = self.camera.detector(detector_id)

        def make():
            if det.id in self._stored_prnu:
                return np.asarray(self._stored_prnu[det.id], dtype=np.float32)
            sigma = self.effects.get("prnu", 0.0)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _TAG_PRNU, det.id]))
            z = rng.standard_normal(det.shape, dtype=np.float32)
            z -= z.mean(dtype=np.float64)
            return (1.0 + sigma * z).astype(np.float32)

        return self._cached(("prnu", det.id), make)

    def illumination(self, detector_id: int, band: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Smooth illumination x vignetting (1 at the focal-plane centre), float64.

        With ``shape`` the function is sampled on a coarse grid of pixel centres instead.
        """
        cam = self.camera
        det = cam.detector(detector_id)
        rows, cols = det.shape
        p = self.bands[band]
        gy, gx = _grid_position(cam, det)
        radius = _field_radius(cam)
        if shape is None:
            y = (np.arange(rows) + 0.5) / rows
            x = (np.arange(cols) + 0.5) / cols
        else:
            y = (np.arange(shape[0]) + 0.5) / shape[0]
            x = (np.arange(shape[1]) + 0.5) / shape[1]
        v = (gy + y - 0.5)[:, None] / radius
        u = (gx + x - 0.5)[None, :] / radius
        rho2 = u * u + v * v
        return (1.0 - p["radial"] * rho2 - p["quartic"] * rho2 * rho2) * (
            1.0 + p["grad_x"] * u + p["grad_y"] * v
        )

    def _defect_response(self, detector_id: int) -> np.ndarray:
        det = self.camera.detector(detector_id)
        dt = self.detectors[det.id]
        resp = np.ones(det.shape, dtype=np.float32)
        for (x0, y0, w, h, kind), val in zip(dt.defects, dt.defect_values):
            if kind != "hot":
                resp[y0 : y0 + h, x0 : x0 + w] *= val
        return resp

    def response(self, detector_id: int, band: str) -> np.ndarray:
        """Un-normalised relative response (illumination x qe x PRNU x defects), float32."""
        det_id = int(detector_id)

        def make():
            ill = self.illumination(det_id, band).astype(np.float32)
            return (
                ill
                * np.float32(self.detectors[det_id].qe)
                * self.prnu(det_id)
                * self._defect_response(det_id)
            )

        return self._cached(("response", det_id, band), make)

    def _flat_norm(self, band: str) -> float:
        tot = 0.0
        for det in self.camera.detectors:
            tot += float(self.illumination(det.id, band, shape=(64, 64)).mean()) * self.detectors[det.id].qe
        return tot / len(self.camera.detectors)

    def flat(self, detector_id: int, band: str) -> np.ndarray:
        """The flat a normalised combined flat must recover (focal-plane mean ~1), float64.

        Illumination x vignetting x detector QE x PRNU x defect response, divided by the
        focal-plane mean of illumination x QE for ``band``.
        """
        if band not in self.bands:
            raise CameraError(f"{self.instrument} has no band {band!r}; bands: {', '.join(self.bands)}.")
        return self.response(detector_id, band).astype(np.float64) / self.flat_norm[band]

    def dark_rate(self, detector_id: int) -> np.ndarray:
        """Dark current per pixel including hot pixels (dead pixels 0), e-/s, float32."""
        det = self.camera.detector(detector_id)
        dt = self.detectors[det.id]

        def make():
            rate = np.zeros(det.shape, dtype=np.float32)
            for a in det.amps:
                rate[a.bbox] = dt.amps[a.name].dark_current
            for (x0, y0, w, h, kind), val in zip(dt.defects, dt.defect_values):
                if kind == "hot":
                    rate[y0 : y0 + h, x0 : x0 + w] += val
                elif kind == "dead":
                    rate[y0 : y0 + h, x0 : x0 + w] = 0.0
            return rate

        return self._cached(("dark", det.id), make)

    def hot_pixels(self, detector_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, x, rate e-/s) of every hot pixel (hot rectangles expanded to pixels)."""
        det = self.camera.detector(detector_id)
        ys, xs, rs = [], [], []
        for (x0, y0, w, h, kind), val in zip(
            self.detectors[det.id].defects, self.detectors[det.id].defect_values
        ):
            if kind == "hot":
                yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
                ys.append(yy.ravel())
                xs.append(xx.ravel())
                rs.append(np.full(yy.size, val))
        if not ys:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
        return np.concatenate(ys), np.concatenate(xs), np.concatenate(rs)

    def bias_pattern_raw(self, detector_id: int, amp_name: str) -> np.ndarray:
        """Fixed bias bump of one amp on its data region, read-out frame, adu (float32)."""
        det = self.camera.detector(detector_id)
        a = det.amp(amp_name)
        bump = self.amp(det.id, amp_name).bias_bump
        prof = (bump * np.exp(-np.arange(a.data_rows) / _BUMP_ROWS)).astype(np.float32)
        return np.broadcast_to(prof[:, None], (a.data_rows, a.data_cols))

    def bias_pattern(self, detector_id: int) -> np.ndarray:
        """Fixed 2-d bias structure left after overscan correction, assembled frame, adu (float64)."""
        det = self.camera.detector(detector_id)
        out = np.zeros(det.shape)
        for a in det.amps:
            out[a.bbox] = _to_assembled(self.bias_pattern_raw(det.id, a.name), a)
        return out

    def defect_mask(
        self, detector_id: int, kinds: Iterable[str] = ("hot", "cold", "bad_column", "dead")
    ) -> np.ndarray:
        """Boolean mask of the injected defects of the given kinds, assembled frame."""
        det = self.camera.detector(detector_id)
        kinds = set(kinds)
        mask = np.zeros(det.shape, dtype=bool)
        for x0, y0, w, h, kind in self.detectors[det.id].defects:
            if kind in kinds:
                mask[y0 : y0 + h, x0 : x0 + w] = True
        return mask

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able description (everything but the PRNU arrays)."""
        dets = {}
        for d in self.detectors.values():
            dets[str(d.id)] = {
                "name": d.name,
                "qe": d.qe,
                "nonlinearity": d.nonlinearity,
                "amps": {k: asdict(v) for k, v in d.amps.items()},
                "defects": [[*df, val] for df, val in zip(d.defects, d.defect_values)],
                "crosstalk": d.crosstalk.tolist(),
            }
        return {
            "format": TRUTH_FORMAT,
            "version": TRUTH_VERSION,
            "instrument": self.instrument,
            "scale": self.scale,
            "seed": self.seed,
            "date": self.date,
            "effects": self.effects,
            "bands": self.bands,
            "flat_norm": self.flat_norm,
            "detectors": dets,
            "units": {
                "gain": "e-/adu",
                "read_noise": "e-",
                "bias_level": "adu",
                "bias_drift": "adu",
                "dark_current": "e-/s",
                "full_well": "e-",
                "saturation": "adu (raw, bias included)",
                "bias_bump": "adu",
                "defects": "[x0, y0, width, height, kind, value] assembled pixels; "
                "value = e-/s for hot, relative response otherwise",
                "nonlinearity": "1/adu",
                "crosstalk": "[target][source] adu/adu",
            },
            "models": {
                "illumination": "(1 - radial*rho^2 - quartic*rho^4) * (1 + grad_x*u + grad_y*v), u, v, rho "
                "in units of the detector-grid half-diagonal, focal-plane centre at 0",
                "flat": "illumination * qe * prnu * defect response / flat_norm[band]",
                "bias_bump": "bias_bump * exp(-row/30) on the data region, row in read-out order",
                "prnu": "truth_arrays.npz prnu_<detector> (float32, assembled)",
            },
        }

    def save(self, directory: str | os.PathLike, detectors: Iterable[int] | None = None) -> Path:
        """Write ``truth.json`` and ``truth_arrays.npz`` (PRNU of ``detectors``) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ids = sorted(self.detectors) if detectors is None else sorted(int(i) for i in detectors)
        tmp = d / ".truth.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, d / "truth.json")
        tmp = d / ".truth_arrays.tmp.npz"
        np.savez(tmp, **{f"prnu_{i}": self.prnu(i) for i in ids})
        os.replace(tmp, d / "truth_arrays.npz")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Truth":
        """Read a truth written by :meth:`save` (a directory holding ``truth.json``).

        Raises
        ------
        UserInputError
            Missing or unreadable files, or not a cpframe truth.
        """
        d = Path(directory)
        if (d / "truth").is_dir() and not (d / "truth.json").exists():
            d = d / "truth"
        try:
            doc = json.loads((d / "truth.json").read_text())
        except (OSError, ValueError) as err:
            raise UserInputError(
                f"{d}: cannot read truth.json ({err}); pass the simulator's truth directory."
            ) from None
        if doc.get("format") != TRUTH_FORMAT or doc.get("version") != TRUTH_VERSION:
            raise UserInputError(f"{d}/truth.json is not a cpframe truth of version {TRUTH_VERSION}.")
        dets = {}
        for k, v in doc["detectors"].items():
            dets[int(k)] = DetectorTruth(
                id=int(k),
                name=v["name"],
                amps={a: AmpTruth(**x) for a, x in v["amps"].items()},
                defects=[
                    (int(x0), int(y0), int(w), int(h), str(kind)) for x0, y0, w, h, kind, _ in v["defects"]
                ],
                defect_values=[float(x[5]) for x in v["defects"]],
                qe=float(v["qe"]),
                crosstalk=np.array(v["crosstalk"], dtype=float),
                nonlinearity=float(v["nonlinearity"]),
            )
        arrays = {}
        if (d / "truth_arrays.npz").exists():
            with np.load(d / "truth_arrays.npz") as z:
                arrays = {int(n.split("_", 1)[1]): z[n] for n in z.files if n.startswith("prnu_")}
        return cls(
            doc["instrument"],
            doc["scale"],
            doc["seed"],
            doc["effects"],
            dets,
            doc["bands"],
            date=doc.get("date"),
            prnu_arrays=arrays,
        )


def _uniform(rng: np.random.Generator, lohi: Sequence[float]) -> float:
    return float(rng.uniform(float(lohi[0]), float(lohi[1])))


def _make_defects(rng: np.random.Generator, det: Detector) -> tuple[list, list]:
    rows, cols = det.shape
    npix = rows * cols
    defects: list[tuple[int, int, int, int, str]] = []
    values: list[float] = []
    # bad columns: a segment of one column inside one amp, running to the amp's edge
    for _ in range(1 + rng.poisson(1.0)):
        amp = det.amps[int(rng.integers(len(det.amps)))]
        ys, xs = amp.bbox
        x = int(rng.integers(xs.start + 2, xs.stop - 2))
        h = int(rng.integers(max(2, amp.data_rows // 5), amp.data_rows + 1))
        y0 = ys.start if rng.random() < 0.5 else ys.stop - h
        defects.append((x, y0, 1, h, "bad_column"))
        values.append(_uniform(rng, _BAD_COLUMN_RESPONSE))
    for kind, density, minimum in (("hot", 5e-5, 3), ("cold", 2e-5, 2), ("dead", 1e-5, 1)):
        n = max(minimum, int(rng.poisson(density * npix)))
        ys = rng.integers(0, rows, n)
        xs = rng.integers(0, cols, n)
        vals = (
            rng.uniform(*_HOT_RATE, n)
            if kind == "hot"
            else (rng.uniform(*_COLD_RESPONSE, n) if kind == "cold" else np.zeros(n))
        )
        for y, x, v in zip(ys, xs, vals):
            defects.append((int(x), int(y), 1, 1, kind))
            values.append(float(v))
    # one small dead cluster per detector, away from the amp edges
    y = int(rng.integers(4, rows - 8))
    x = int(rng.integers(4, cols - 8))
    size = int(rng.integers(2, 4))
    defects.append((x, y, size, size, "dead"))
    values.append(0.0)
    return defects, values


def _make_crosstalk(rng: np.random.Generator, det: Detector, strength: float) -> np.ndarray:
    """[target, source] coefficients falling with the distance between amps (1 at neighbours)."""
    row = np.array([a.row for a in det.amps])
    col = np.array([a.col for a in det.amps])
    dist = np.abs(col[:, None] - col[None, :]) + 2 * np.abs(row[:, None] - row[None, :])
    scale = rng.uniform(0.5, 1.0, dist.shape)
    return np.where(dist > 0, strength * scale / np.maximum(dist, 1) ** 2, 0.0)


def make_truth(camera: Camera, seed: int, date: str | None = None, **effects: Any) -> Truth:
    """Draw the truth of every detector of ``camera`` for ``seed``.

    Parameters
    ----------
    camera
        From :func:`cpframe.camera.models.load_camera` (the scale matters: defect positions,
        array shapes).
    seed
        Master seed; each detector's truth depends only on (seed, detector id).
    date
        ISO TAI date at which the curated manual defects are taken (None = newest version).
    **effects
        Switches and strengths, see :data:`EFFECTS` (e.g. ``crosstalk=True``,
        ``cosmics=False``, ``prnu=0.02``).

    Raises
    ------
    UserInputError
        An unknown effect name.
    """
    unknown = set(effects) - set(EFFECTS)
    if unknown:
        raise UserInputError(
            f"unknown simulator effect(s) {', '.join(sorted(unknown))}; known: {', '.join(EFFECTS)}."
        )
    eff = {k: _effect_value(k, effects.get(k, v)) for k, v in EFFECTS.items()}
    from cpframe.camera.curated import manual_defects_at  # same layer; curated files hold the known bad columns

    manual = manual_defects_at(camera, date) if eff["manual_defects"] else {}
    dets: dict[int, DetectorTruth] = {}
    for det in camera.detectors:
        facts = _sim_facts(camera, det)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_TRUTH, det.id]))
        adc_max = 2 ** int(facts.get("adc_bits", 18)) - 1
        nonlin = eff["nonlinearity"]
        amps = {}
        for a in det.amps:
            gain = _uniform(rng, facts["gain"])
            rn = _uniform(rng, facts["read_noise"])
            bias = round(_uniform(rng, facts["bias_level"]), 1)
            drift = _uniform(rng, facts["bias_drift"])
            dark = _uniform(rng, facts["dark_current"])
            fw = _uniform(rng, facts["full_well"])
            bump = _uniform(rng, (2.0, 6.0))
            fw_adu = fw / gain
            fw_adu *= 1.0 + nonlin * fw_adu
            sat = min(bias + fw_adu, adc_max) if eff["saturation"] else float(adc_max)
            amps[a.name] = AmpTruth(
                gain=gain,
                read_noise=rn if eff["read_noise"] else 0.0,
                bias_level=bias,
                bias_drift=drift if eff["bias_drift"] else 0.0,
                dark_current=dark if eff["dark_current"] else 0.0,
                full_well=fw if eff["saturation"] else math.inf,
                saturation=float(sat),
                bias_bump=bump if eff["bias_pattern"] else 0.0,
            )
        defects, values = _make_defects(rng, det)
        if not eff["defects"]:
            defects, values = [], []
        for rect in manual.get(det.id, []):
            defects.append((*rect[:4], rect[4]))
            values.append(0.0 if rect[4] == "dead" else 0.2)
        qe = 1.0 + eff["qe"] * float(rng.standard_normal())
        xt = _make_crosstalk(rng, det, eff["crosstalk"] or 1.0)
        if not eff["crosstalk"]:
            xt[:] = 0.0
        dets[det.id] = DetectorTruth(
            id=det.id,
            name=det.name,
            amps=amps,
            defects=defects,
            defect_values=values,
            qe=qe,
            crosstalk=xt,
            nonlinearity=nonlin,
        )
    brng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_BANDS]))
    bands = {}
    for _, band in camera.filters:
        g = brng.normal(0.0, 0.02, 2)
        on = bool(eff["vignetting"])
        bands[band] = {
            "radial": _BAND_VIGNETTING.get(band, 0.15) if on else 0.0,
            "quartic": 0.05 if on else 0.0,
            "grad_x": float(g[0]) if on else 0.0,
            "grad_y": float(g[1]) if on else 0.0,
        }
    return Truth(camera.name, camera.scale, seed, eff, dets, bands, date=date)


# =========================================================================================
# One exposure x detector
# =========================================================================================


def _to_readout(img: np.ndarray, amp) -> np.ndarray:
    if amp.flip_x:
        img = img[:, ::-1]
    if amp.flip_y:
        img = img[::-1, :]
    return img


_to_assembled = _to_readout  # flips are their own inverse


def _poisson(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """Poisson draw of float32 ``lam`` (overwritten); Gaussian approximation above 100 e-.

    The approximation keeps the mean and the variance (what ISR, PTC and verification use).
    """
    small = np.flatnonzero(lam <= 100.0)
    if small.size == lam.size:
        return rng.poisson(lam).astype(np.float32)
    exact = rng.poisson(lam.flat[small]) if small.size else None
    noise = rng.standard_normal(lam.shape, dtype=np.float32)
    noise *= np.sqrt(lam)
    lam += noise
    if exact is not None:
        lam.flat[small] = exact
    return lam


def _cosmic_rays(
    rng: np.random.Generator, shape: tuple[int, int], rate_per_cm2_s: float, dark_time: float, pixel_um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pixels (y, x) and charges (e-) of cosmic-ray tracks and worms."""
    area_cm2 = shape[0] * shape[1] * (pixel_um * 1e-4) ** 2
    n = int(rng.poisson(rate_per_cm2_s * area_cm2 * dark_time))
    if n == 0:
        return None
    ys, xs, qs = [], [], []
    for _ in range(n):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if rng.random() < 0.7:  # muon track through 100 um of silicon
            cos_t = math.sqrt(rng.uniform(0.05, 1.0))
            length = min(100.0, 10.0 * math.sqrt(1 - cos_t**2) / cos_t)
            phi = rng.uniform(0, 2 * math.pi)
            nstep = max(1, int(2 * length) + 1)
            t = np.linspace(0.0, length, nstep)
            y = y0 + t * math.sin(phi) + rng.normal(0, 0.35, nstep)
            x = x0 + t * math.cos(phi) + rng.normal(0, 0.35, nstep)
            q = np.full(nstep, 8000.0 / cos_t / nstep)
        else:  # low-energy electron: a short random walk ("worm")
            nstep = int(rng.integers(4, 20))
            y = y0 + np.cumsum(rng.normal(0, 0.7, nstep))
            x = x0 + np.cumsum(rng.normal(0, 0.7, nstep))
            q = np.full(nstep, rng.uniform(3000, 20000) / nstep)
        ys.append(y)
        xs.append(x)
        qs.append(q)
    y = np.floor(np.concatenate(ys)).astype(int)
    x = np.floor(np.concatenate(xs)).astype(int)
    q = np.concatenate(qs)
    ok = (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
    return y[ok], x[ok], q[ok]


def _star_field(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray | None:
    """Stars (e-/s per pixel) with a Gaussian PSF, sigma 1.7 px."""
    n = int(rng.poisson(density * shape[0] * shape[1]))
    if n == 0:
        return None
    img = np.zeros(shape, dtype=np.float32)
    half = 8
    sig = 1.7
    for _ in range(n):
        yc, xc = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rate = 10 ** rng.uniform(2.0, 5.0)
        y0, x0 = max(0, int(yc) - half), max(0, int(xc) - half)
        y1, x1 = min(shape[0], int(yc) + half + 1), min(shape[1], int(xc) + half + 1)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) + 0.5 - yc) / sig) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) + 0.5 - xc) / sig) ** 2)
        img[y0:y1, x0:x1] += (rate / (2 * math.pi * sig * sig)) * np.outer(gy, gx)
    return img


def _exposure_rngs(seed: int, exposure_id: int, detector_id: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), int(exposure_id), int(detector_id)])
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def simulate_detector(
    camera: Camera, detector_id: int, spec: ExposureSpec, truth: Truth, seed: int
) -> list[np.ndarray]:
    """Simulate the raw amplifier segments of one detector for one exposure.

    Returns
    -------
    list of numpy.ndarray
        One ``int32`` array per amp, in the camera file's amp order, shape ``amp.raw_shape``,
        in read-out order.  Deterministic for (seed, exposure id, detector).

    Raises
    ------
    UserInputError
        Truth made for another instrument or scale.
    CameraError
        Unknown detector or filter.
    """
    if truth.instrument != camera.name or truth.scale != camera.scale:
        raise UserInputError(
            f"truth is for {truth.instrument} at scale {truth.scale!r} but the camera is {camera.name} at "
            f"scale {camera.scale!r}; make the truth with make_truth(camera, seed)."
        )
    det = camera.detector(detector_id)
    dt = truth.detectors[det.id]
    facts = _sim_facts(camera, det)
    adc_max = 2 ** int(facts.get("adc_bits", 18)) - 1
    eff = truth.effects
    r_signal, r_cosmic, r_bias, r_noise = _exposure_rngs(seed, spec.exposure_id, det.id)
    band = camera.band_of(spec.physical_filter)

    # -- electrons, amp by amp (blocks of ~1 M pixels stay in cache) ---------------------------
    # Poisson sums split: the uniform dark of an amp joins its light (one draw) or, with no
    # light, is drawn as N ~ Poisson(rate * t * npix) events at uniform positions (exact, and
    # far cheaper than a Poisson draw per pixel); hot pixels are drawn on their own.
    light = spec.flux > 0 and spec.exposure_time > 0
    stars = None
    if light and spec.observation_type == "science" and eff.get("stars", 0) > 0:
        stars = _star_field(r_signal, det.shape, eff["stars"])
    resp = truth.response(det.id, band) if light else None
    dark_t = spec.dark_time if eff["dark_current"] or eff["defects"] or eff["manual_defects"] else 0.0
    extra = []  # sparse charges (y, x, e-): hot pixels, cosmic rays
    hot_y, hot_x, hot_rate = truth.hot_pixels(det.id)
    if dark_t > 0 and hot_rate.size:
        q = hot_rate * dark_t
        extra.append((hot_y, hot_x, r_signal.poisson(q) if eff["poisson"] else q))
    if eff["cosmics"] > 0 and spec.dark_time > 0:
        cr = _cosmic_rays(
            r_cosmic, det.shape, eff["cosmics"], spec.dark_time, float(facts.get("pixel_size_um", 10.0))
        )
        if cr is not None:
            extra.append(cr)
    dead = [(x0, y0, w, h) for x0, y0, w, h, kind in dt.defects if kind == "dead"]
    has_dark = dark_t > 0 and any(dt.amps[a.name].dark_current > 0 for a in det.amps)
    signal = None
    if light or has_dark or extra:
        signal = np.zeros((len(det.amps), det.amps[0].data_rows, det.amps[0].data_cols), dtype=np.float32)
    for a in det.amps if signal is not None else ():
        at = dt.amps[a.name]
        ys, xs = a.bbox
        dark_e = np.float32(at.dark_current * dark_t)
        if light:
            lam = resp[ys, xs] * np.float32(spec.flux * spec.exposure_time)
            if stars is not None:
                lam += stars[ys, xs] * resp[ys, xs] * np.float32(spec.exposure_time)
            lam += dark_e
            e = _poisson(r_signal, lam) if eff["poisson"] else lam
        elif has_dark and eff["poisson"]:
            npix = a.data_rows * a.data_cols
            n = int(r_signal.poisson(float(dark_e) * npix))
            e = (
                np.bincount(r_signal.integers(0, npix, n), minlength=npix)
                .astype(np.float32)
                .reshape(a.data_rows, -1)
            )
        else:
            e = np.full((a.data_rows, a.data_cols), dark_e, dtype=np.float32)
        for yy, xx, qq in extra:
            inside = (yy >= ys.start) & (yy < ys.stop) & (xx >= xs.start) & (xx < xs.stop)
            if inside.any():
                np.add.at(
                    e, (yy[inside] - ys.start, xx[inside] - xs.start), np.asarray(qq, np.float32)[inside]
                )
        for x0, y0, w, h in dead:  # collects nothing: no light, no dark current, no cosmic-ray charge
            e[
                max(y0 - ys.start, 0) : max(y0 + h - ys.start, 0),
                max(x0 - xs.start, 0) : max(x0 + w - xs.start, 0),
            ] = 0.0
        if math.isfinite(at.full_well):
            np.minimum(e, np.float32(at.full_well), out=e)
        e *= np.float32(1.0 / at.gain)
        if dt.nonlinearity:
            e *= 1.0 + np.float32(dt.nonlinearity) * e
        signal[a.index] = _to_readout(e, a)
    if signal is not None and dt.crosstalk.any():
        signal = signal + np.tensordot(dt.crosstalk.astype(np.float32), signal, axes=(1, 0))

    # -- bias, drift, pattern, read noise; digitise --------------------------------------------
    segments = []
    for a in det.amps:
        at = dt.amps[a.name]
        nrow, ncol = a.raw_shape
        level = at.bias_level + (
            eff["bias_jitter"] * float(r_bias.standard_normal()) if eff["bias_jitter"] else 0.0
        )
        cycles = r_bias.uniform(0.5, 3.0)
        phase = r_bias.uniform(0, 2 * math.pi)
        drift = at.bias_drift * np.sin(2 * math.pi * cycles * np.arange(nrow) / nrow + phase)
        raw = r_noise.standard_normal((nrow, ncol), dtype=np.float32)
        raw *= np.float32(at.read_noise / at.gain)
        raw += (level + drift + 0.5).astype(np.float32)[:, None]  # + 0.5: truncation below rounds
        data = raw[a.data_slice]
        if at.bias_bump:  # the bump is below 1e-4 adu after _BUMP_ROWS_USED rows
            bump = truth.bias_pattern_raw(det.id, a.name)[:_BUMP_ROWS_USED]
            data[: len(bump)] += bump
        if signal is not None:
            data += signal[a.index]
        np.clip(raw, 0, adc_max, out=raw)
        segments.append(raw.astype(np.int32))  # values >= 0: truncation = floor
    return segments


# =========================================================================================
# Files
# =========================================================================================


def raw_path(outdir: str | os.PathLike, instrument: str, spec: ExposureSpec, detector: Detector) -> Path:
    """``outdir/<day_obs>/<exposure_id>/<instrument>_<exposure_id>_<detname>.fits``."""
    return (
        Path(outdir)
        / str(spec.day_obs)
        / str(spec.exposure_id)
        / (f"{instrument}_{spec.exposure_id}_{detector.name}.fits")
    )


def _mjd(ns: int) -> float:
    return 40587.0 + ns / 86400e9


def _primary_bytes(cards) -> bytes:
    from astropy.io import fits

    hdr = fits.Header(
        [
            ("SIMPLE", True, "conforms to FITS standard"),
            ("BITPIX", 8, "array data type"),
            ("NAXIS", 0, "number of array dimensions"),
            ("EXTEND", True),
        ]
    )
    hdr.extend(cards)
    return hdr.tostring().encode("ascii")


@functools.lru_cache(maxsize=4096)
def _amp_header_bytes(instrument: str, scale: str, detector_id: int, amp_name: str) -> bytes:
    from astropy.io import fits

    a = load_camera(instrument, scale).detector(detector_id).amp(amp_name)
    nrow, ncol = a.raw_shape
    h = fits.Header(
        [
            ("XTENSION", "IMAGE", "Image extension"),
            ("BITPIX", 32, "array data type"),
            ("NAXIS", 2, "number of array dimensions"),
            ("NAXIS1", ncol),
            ("NAXIS2", nrow),
            ("PCOUNT", 0, "number of parameters"),
            ("GCOUNT", 1, "number of groups"),
            ("EXTNAME", f"SEGMENT{a.name[1:]}", "extension name"),
            ("AMPNAME", a.name, "amplifier"),
            ("DATASEC", a.datasec, "data region, raw (read-out) frame"),
            ("BIASSEC", a.biassec, "serial overscan, raw frame"),
            ("DETSEC", a.detsec, "data region in the assembled detector"),
            ("BUNIT", "adu", "raw counts"),
        ]
    )
    return h.tostring().encode("ascii")


def write_raw(
    path: str | os.PathLike,
    camera: Camera,
    detector_id: int,
    spec: ExposureSpec,
    segments: Sequence[np.ndarray] | None,
    seed: int,
) -> Path:
    """Write one ``fits-raw`` file (docs/architecture.md), atomically (temporary name + rename).

    ``segments=None`` writes the headers only and leaves every pixel 0 as a hole of a sparse
    file (for tests and benchmarks of header handling: no disk space, no write time).

    Returns the path written.
    """
    det = camera.detector(detector_id)
    if segments is not None and len(segments) != len(det.amps):
        raise UserInputError(
            f"{det.name}: {len(segments)} segments given, the detector has {len(det.amps)} amps."
        )
    cards = raw_header_cards(camera, det.id, spec, seed)
    for a, seg in zip(det.amps, segments or []):
        if seg.shape != a.raw_shape:
            raise UserInputError(f"{det.name} {a.name}: segment shape {seg.shape}, expected {a.raw_shape}.")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # Headers are formatted by astropy; the HDUs are laid out directly (header blocks, big-endian
    # data padded to 2880 bytes), which is ~10x faster than building HDU objects for 16 small
    # segments.  tests/test_simulate.py checks the files with astropy's verify().
    try:
        with open(tmp, "wb") as f:
            f.write(_primary_bytes(cards))
            for i, a in enumerate(det.amps):
                f.write(_amp_header_bytes(camera.name, camera.scale, det.id, a.name))
                nbytes = a.raw_shape[0] * a.raw_shape[1] * 4
                if segments is None:
                    f.seek(nbytes + (-nbytes % 2880), os.SEEK_CUR)
                    continue
                data = np.ascontiguousarray(segments[i], dtype=">i4")
                f.write(data.data)
                if -nbytes % 2880:
                    f.write(b"\0" * (-nbytes % 2880))
            f.truncate()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def raw_header_cards(camera: Camera, detector_id: int, spec: ExposureSpec, seed: int) -> list[tuple]:
    """Primary-header cards ``(key, value, comment)`` of a raw file (docs/architecture.md)."""
    det = camera.detector(detector_id)
    info = _camera_yaml(camera.name)
    b_ns, e_ns = spec.begin_ns, spec.end_ns
    cards = [
        ("INSTRUME", camera.name, "instrument"),
        ("TELESCOP", info.get("telescope", camera.name), "telescope"),
        ("DETECTOR", det.id, "detector id"),
        ("DETNAME", det.name, "detector name"),
        ("RAFTBAY", det.raft, "raft"),
        ("CCDSLOT", det.name_in_raft, "sensor slot in the raft"),
        ("DET_SER", det.serial, "sensor serial (vendor-...)"),
        ("OBSID", spec.obs_id(camera.name), "observation id"),
        ("IMGTYPE", spec.observation_type, "observation type"),
        ("REASON", spec.observation_reason, "observation reason"),
        ("PROGRAM", spec.science_program, "science program"),
        ("FILTER", spec.physical_filter, "physical filter"),
        ("FILTBAND", camera.band_of(spec.physical_filter), "band"),
        ("EXPTIME", float(spec.exposure_time), "[s] exposure time"),
        ("DARKTIME", float(spec.dark_time), "[s] dark time"),
        ("DATE-BEG", ns_to_iso(b_ns), "start of exposure (TAI)"),
        ("DATE-END", ns_to_iso(e_ns), "end of exposure (TAI)"),
        ("TIMESYS", "TAI", "time scale of DATE-* and MJD-*"),
        ("MJD-BEG", _mjd(b_ns), "start of exposure, MJD (TAI)"),
        ("MJD-END", _mjd(e_ns), "end of exposure, MJD (TAI)"),
        ("DAYOBS", int(spec.day_obs), "observing day YYYYMMDD"),
        ("SEQNUM", int(spec.seq_num), "sequence number within the day"),
        ("EXPID", int(spec.exposure_id), "exposure id = DAYOBS*100000+SEQNUM"),
        ("CAMSCALE", camera.scale, "camera scale (full or mini)"),
        ("CPFSEED", int(seed), "cpframe simulator seed"),
        ("ORIGIN", "cpframe simulate", "written by"),
    ]
    return cards


# =========================================================================================
# Whole campaigns, in parallel
# =========================================================================================

_WORKER: dict[str, Any] = {}


def process_context(preload: Sequence[str]):
    """Multiprocessing context for worker pools: ``fork`` when this process runs a single
    thread (cheap: nothing to import again), else ``forkserver`` (forking a process that runs
    threads, e.g. a Dask client, can deadlock), whose server imports ``preload`` once."""
    import multiprocessing as mp

    if threading.active_count() == 1:
        return mp.get_context("fork")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def _init_worker(truth: Truth, outdir: str, seed: int) -> None:
    """Process-pool initializer: the job's context, sent once per worker process."""
    _WORKER.update(truth=truth, outdir=outdir, seed=seed, camera=truth.camera)


def _one(task: tuple[ExposureSpec, int], ctx: Mapping[str, Any] | None = None) -> tuple[str, int]:
    """Simulate and write one (exposure, detector); ``ctx`` for threads, the process global otherwise."""
    ctx = ctx if ctx is not None else _WORKER
    spec, det_id = task
    cam, truth, seed = ctx["camera"], ctx["truth"], ctx["seed"]
    segs = simulate_detector(cam, det_id, spec, truth, seed)
    path = write_raw(
        raw_path(ctx["outdir"], cam.name, spec, cam.detector(det_id)), cam, det_id, spec, segs, seed
    )
    return str(path), path.stat().st_size


def simulate(
    specs: Iterable[ExposureSpec],
    outdir: str | os.PathLike,
    instrument: str,
    scale: str = "mini",
    seed: int = 1,
    detectors: Iterable[int | str] | None = None,
    workers: int | None = None,
    truth: Truth | None = None,
    executor: str = "thread",
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Simulate raw files for every (exposure, detector) and save the truth.

    Writes ``outdir/<day_obs>/<exposure_id>/<instrument>_<exposure_id>_<detname>.fits`` and
    ``outdir/truth/`` (see :meth:`Truth.save`).  Existing files are rewritten (identically,
    for the same seed).

    Parameters
    ----------
    specs
        Exposures (e.g. from :func:`load_plan`).
    outdir
        Output directory (created).
    instrument, scale
        Camera model and scale (``mini`` or ``full``).
    seed
        Master seed.
    detectors
        Detector ids or names; default all.
    workers
        Parallel workers; default ``min(cpu count, number of files)``; 1 = in this process.
    truth
        Use this truth instead of ``make_truth(camera, seed)``.
    executor
        ``thread`` (default: numpy and file writes release the GIL; no start-up cost) or
        ``process`` pool (see :func:`process_context`).
    progress
        Called as ``progress(done, total)`` after each file.

    Returns
    -------
    list of pathlib.Path
        Files written, sorted.

    Raises
    ------
    UserInputError, CameraError
        Duplicate exposure ids, unknown detectors/filters, truth for another camera.
    """
    camera = load_camera(instrument, scale)
    if executor not in ("thread", "process"):
        raise UserInputError(f"executor {executor!r}: use 'process' or 'thread'.")
    specs = list(specs)
    if not specs:
        raise UserInputError("no exposures to simulate; check the plan.")
    seen: dict[int, ExposureSpec] = {}
    for s in specs:
        camera.band_of(s.physical_filter)
        if s.observation_type not in OBSERVATION_TYPES:
            raise UserInputError(
                f"exposure {s.exposure_id}: observation_type {s.observation_type!r}; use one of "
                f"{', '.join(OBSERVATION_TYPES)}."
            )
        if s.exposure_id in seen:
            raise UserInputError(
                f"exposure {s.exposure_id} (day_obs {s.day_obs}, seq_num {s.seq_num}) is planned twice."
            )
        seen[s.exposure_id] = s
    dets = [camera.detector(d) for d in (detectors if detectors is not None else camera.detector_ids)]
    det_ids = sorted({d.id for d in dets})
    if truth is None:
        first = min(specs, key=lambda s: s.begin_ns).begin
        truth = make_truth(camera, seed, date=first)
    elif truth.instrument != camera.name or truth.scale != camera.scale:
        raise UserInputError(
            f"truth is for {truth.instrument} at scale {truth.scale!r}, not {camera.name} at {scale!r}."
        )
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    truth.save(out / "truth", det_ids)
    # detector-major order keeps each worker's per-detector caches (flat, dark) warm
    tasks = [(s, d) for d in det_ids for s in sorted(specs, key=lambda s: s.exposure_id)]
    n = len(tasks)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    paths: list[Path] = []
    job = {"truth": truth, "outdir": str(out), "seed": seed, "camera": camera}
    if workers == 1:
        for i, t in enumerate(tasks):
            paths.append(Path(_one(t, job)[0]))
            if progress:
                progress(i + 1, n)
        return sorted(paths)
    if executor == "thread":
        pool, fn, chunk = ThreadPoolExecutor(workers), functools.partial(_one, ctx=job), 1
    else:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=process_context(["cpframe.camera.simulate"]),
            initializer=_init_worker,
            initargs=(truth, str(out), seed),
        )
        fn, chunk = _one, max(1, n // (workers * 4))
    with pool:
        for i, (p, _size) in enumerate(pool.map(fn, tasks, chunksize=chunk)):
            paths.append(Path(p))
            if progress:
                progress(i + 1, n)
    return sorted(paths)


def plan_summary(specs: Iterable[ExposureSpec]) -> dict[int, dict[str, int]]:
    """Counts of exposures by day_obs and observation type."""
    out: dict[int, dict[str, int]] = {}
    for s in specs:
        d = out.setdefault(s.day_obs, {})
        d[s.observation_type] = d.get(s.observation_type, 0) + 1
    return dict(sorted(out.items()))
