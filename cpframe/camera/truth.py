"""The simulator's injected truth: :func:`make_truth` -> :class:`Truth` (per detector and amp).

Every effect switch (:data:`EFFECTS`) and every drawn value (gains, read noise, dark
current, defects, flat response, bias pattern, crosstalk) lives here, saved beside the
raws (``truth/truth.json`` + ``truth/truth_arrays.npz``) so tests compare products with it.
The model itself is described in :mod:`cpframe.camera.simulate`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from cpframe.camera.bf import draw_amp_bf
from cpframe.camera.cti import draw_amp_cti
from cpframe.camera.focal_plane import detector_size_mm
from cpframe.camera.focal_plane import grid_position as _grid_position
from cpframe.camera.fp_gradient import draw_band_gradient, gradient_factor
from cpframe.camera.gain_drift import draw_amp_gain_drift
from cpframe.camera.models import Camera, Detector, _camera_yaml, load_camera
from cpframe.camera.nonlinearity import draw_amp_nonlinearity, measured_signal
from cpframe.core.errors import CameraError, UserInputError

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
    "nonlinearity": False,  # non-linearity strength k (1/adu), per-amp curves around it; True = -1e-7
    "crosstalk": False,  # crosstalk strength (largest coefficient); True = 3e-4
    "cti": False,  # serial CTI (nominal, per-amp around it) + one serial trap per amp; True = 3e-6
    "brighter_fatter": False,  # pixel areas follow the charge: nominal a00 (1/e-), per amp around it; True = -2.5e-6
    "gain_drift": False,  # per-amp gain change after a restart (rms fraction; True = 0.003; camera/gain_drift.py)
    "gain_drift_day_obs": 0,  # day_obs (YYYYMMDD) from which the drifted gains apply (0 = every exposure)
    "flat_gradient": False,  # focal-plane radial fall-off / planar gradient in mm (True = 0.02; camera/fp_gradient.py)
    "led_flats": False,  # single-LED flats: per-LED plane and detector colour (True = 0.02; camera/led_flats.py)
    "illumination_correction": False,  # dome-flat-only pattern + dithered fixed star field (camera/illumination.py); True = 0.04
    "sky_frame": False,  # static per-detector sky pattern (rms, relative) + per-exposure level/gradient (camera/sky.py); True = 0.02
    "fringe": False,  # additive fringes in i, z, y science frames (rms relative to the sky; camera/fringe.py); True = 0.02
}
_EFFECT_ON = {
    "bias_jitter": 1.0,
    "cosmics": 0.03,
    "prnu": 0.01,
    "qe": 0.03,
    "stars": 1e-5,
    "nonlinearity": -1e-7,
    "crosstalk": 3e-4,
    "cti": 3e-6,
    "brighter_fatter": -2.5e-6,
    "gain_drift": 0.003,
    "flat_gradient": 0.02,
    "illumination_correction": 0.04,
    "sky_frame": 0.02,
    "fringe": 0.02,
    "led_flats": 0.02,
}

TRUTH_FORMAT = "cpframe-truth"
TRUTH_VERSION = 1

# SeedSequence tags (arbitrary constants; changing them changes every simulated file)
_TAG_TRUTH = 0x7472_7574
_TAG_PRNU = 0x7072_6E75
_TAG_BANDS = 0x6261_6E64

_BAND_VIGNETTING = {"u": 0.22, "g": 0.18, "r": 0.15, "i": 0.13, "z": 0.11, "y": 0.10}
_BUMP_ROWS = 30.0  # e-folding length of the bias bump, rows
_BUMP_ROWS_USED = 360  # rows of the bump simulated (6 adu * exp(-12) < 4e-5 adu beyond)
_HOT_RATE = (3.5, 10.0)  # e-/s of hot pixels (above cp_pipe's 3 e-/s dark threshold)
_COLD_RESPONSE = (0.3, 0.7)
_BAD_COLUMN_RESPONSE = (0.2, 0.6)
_CACHE_BYTES = 768 * 2**20


def _to_readout(img: np.ndarray, amp) -> np.ndarray:
    """An assembled amp image in its read-out order (flip_x / flip_y)."""
    if amp.flip_x:
        img = img[:, ::-1]
    if amp.flip_y:
        img = img[::-1, :]
    return img


_to_assembled = _to_readout  # flips are their own inverse


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
    nonlinearity: float = 0.0
    """1/adu, k2 of the response m = s (1 + k2 s + k3 s²) (``cpframe/camera/nonlinearity.py``)."""
    nonlinearity_cubic: float = 0.0
    """1/adu², k3 of the same response."""
    cti: float = 0.0
    """Global serial CTI (fraction lost per transfer; ``cpframe/camera/cti.py``)."""
    trap_size: float = 0.0
    """e-, capacity of the amp's serial trap (0 = none)."""
    trap_emission_time: float = 1.0
    """Transfers, emission time constant of the trap."""
    trap_scaling: float = 0.0
    """Linear capture: the trap fills to min(size, scaling x signal)."""
    bf_a00: float = 0.0
    """1/e-, brighter-fatter a00 (≤ 0; 0 = off); the whole a matrix is
    ``cpframe.camera.bf.bf_a_matrix(bf_a00, size)``."""
    gain_drift: float = 0.0
    """Fractional gain change from day ``gain_drift_day_obs`` on (``cpframe/camera/gain_drift.py``)."""


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
    """Nominal strength k of the effect (1/adu; 0 when off); each amp's own curve is in its
    :class:`AmpTruth` (``nonlinearity``, ``nonlinearity_cubic``)."""


def _sim_facts(camera: Camera, det: Detector) -> dict:
    st = _camera_yaml(camera.name)["sensor_types"][det.sensor_type]
    return st.get("simulation") or _camera_yaml("LSSTComCam")["sensor_types"]["ITL"]["simulation"]


def _effect_value(name: str, value: Any) -> float:
    if value is True:
        return float(_EFFECT_ON.get(name, 1.0))
    if value is False or value is None:
        return 0.0
    return float(value)


def _field_radius(camera: Camera) -> float:
    """Half-diagonal of the detector grid, in detector units."""
    return _field_radius_of(camera.name, camera.scale)


@functools.lru_cache(maxsize=16)
def _field_radius_of(instrument: str, scale: str) -> float:
    camera = load_camera(instrument, scale)
    pos = np.array([_grid_position(camera, d) for d in camera.science_detectors])
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
        ill = (1.0 - p["radial"] * rho2 - p["quartic"] * rho2 * rho2) * (
            1.0 + p["grad_x"] * u + p["grad_y"] * v
        )
        if p.get("fp_radial") or p.get("fp_gradient_x") or p.get("fp_gradient_y"):  # camera/fp_gradient.py
            w, h = detector_size_mm(cam, det)
            ill = ill * gradient_factor(p, u * radius * w, v * radius * h)
        return ill

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
        for det in self.camera.science_detectors:
            tot += float(self.illumination(det.id, band, shape=(64, 64)).mean()) * self.detectors[det.id].qe
        return tot / len(self.camera.science_detectors)

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
                "bf_a00": "1/e- (brighter-fatter a00; a matrix from cpframe.camera.bf.bf_a_matrix)",
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
    from cpframe.camera.curated import (
        manual_defects_at,  # same layer; curated files hold the known bad columns
    )

    manual = manual_defects_at(camera, date) if eff["manual_defects"] else {}
    dets: dict[int, DetectorTruth] = {}
    for det in camera.science_detectors:  # wavefront/guider sensors are not simulated
        facts = _sim_facts(camera, det)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_TRUTH, det.id]))
        adc_max = 2 ** int(facts.get("adc_bits", 18)) - 1
        nonlin = eff["nonlinearity"]
        amps = {}
        curves = iter(draw_amp_nonlinearity(  # own random stream: other draws are unchanged
            seed, det.id, [float(facts["full_well"][1]) / float(facts["gain"][0])] * len(det.amps), nonlin))
        deferred = iter(draw_amp_cti(seed, det.id, len(det.amps), eff["cti"]))  # own stream
        bf = iter(draw_amp_bf(seed, det.id, len(det.amps), eff["brighter_fatter"]))  # own stream
        gdrift = iter(draw_amp_gain_drift(seed, det.id, len(det.amps), eff["gain_drift"]))  # own stream
        for a in det.amps:
            gain = _uniform(rng, facts["gain"])
            rn = _uniform(rng, facts["read_noise"])
            bias = round(_uniform(rng, facts["bias_level"]), 1)
            drift = _uniform(rng, facts["bias_drift"])
            dark = _uniform(rng, facts["dark_current"])
            fw = _uniform(rng, facts["full_well"])
            bump = _uniform(rng, (2.0, 6.0))
            k2, k3 = next(curves)
            fw_adu = float(measured_signal(fw / gain, k2, k3))
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
                nonlinearity=k2,
                nonlinearity_cubic=k3,
                **dict(zip(("cti", "trap_size", "trap_emission_time", "trap_scaling"), next(deferred))),
                bf_a00=next(bf),
                gain_drift=next(gdrift),
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
        if eff["flat_gradient"]:  # own stream per band: the other draws are unchanged
            w_mm = detector_size_mm(camera, camera.science_detectors[0])[0]
            bands[band].update(draw_band_gradient(seed, band, eff["flat_gradient"], _field_radius(camera) * w_mm))
    return Truth(camera.name, camera.scale, seed, eff, dets, bands, date=date)


