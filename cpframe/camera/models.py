"""Camera models: detectors, amplifiers and filters, read from ``cpframe/data/cameras/*.yaml``.

Raw geometry convention (shared by the simulator, ISR and the docs)
-------------------------------------------------------------------
A raw amplifier segment is a 2-d array ``raw[row, col]`` in **read-out order**:

* columns ``[0, prescan)`` are prescan, ``[prescan, prescan+data_cols)`` the data,
  the last ``serial_overscan_cols`` columns the serial overscan;
* rows ``[0, data_rows)`` are data rows, the last ``parallel_overscan_rows`` rows
  the parallel overscan.

To assemble, take ``raw[amp.data_slice]``, reverse columns if ``flip_x``, rows if
``flip_y``, and place it at ``amp.bbox`` of the detector image (``[y0:y1, x0:x1]``).
Amplifier ``row``/``col`` in the camera file give the position of the amp in the
2 x 8 grid (row 0 at the bottom, i.e. at low y).

``scale="mini"`` shrinks only the data region (e.g. 64 x 250 per amp); prescan and
overscans keep their real sizes so overscan statistics behave as on the real camera.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydantic import Field

from cpframe.core.paths import package_dir
from cpframe.core.errors import CameraError
from cpframe.core.schema import OpenSchema, Schema, read_yaml, validate

__all__ = ["Amplifier", "Detector", "Camera", "load_camera", "list_instruments", "SCALES"]

SCALES = ("full", "mini")


@dataclass(frozen=True)
class Amplifier:
    """One amplifier segment of a detector."""

    name: str
    """Amp name, e.g. ``C10``."""
    index: int
    """Position in the detector's amp list (0..15), also the HDU order in raw files."""
    row: int
    """Grid row (0 = bottom)."""
    col: int
    """Grid column (0 = left)."""
    flip_x: bool
    flip_y: bool
    data_cols: int
    data_rows: int
    prescan_cols: int
    serial_overscan_cols: int
    parallel_overscan_rows: int

    @property
    def raw_shape(self) -> tuple[int, int]:
        """(rows, cols) of the raw segment."""
        return (
            self.data_rows + self.parallel_overscan_rows,
            self.prescan_cols + self.data_cols + self.serial_overscan_cols,
        )

    @property
    def data_slice(self) -> tuple[slice, slice]:
        """Data region in raw (read-out) coordinates."""
        return (slice(0, self.data_rows), slice(self.prescan_cols, self.prescan_cols + self.data_cols))

    @property
    def serial_overscan_slice(self) -> tuple[slice, slice]:
        """Serial overscan, all rows (data + parallel overscan), raw coordinates."""
        c0 = self.prescan_cols + self.data_cols
        return (slice(0, self.raw_shape[0]), slice(c0, c0 + self.serial_overscan_cols))

    @property
    def parallel_overscan_slice(self) -> tuple[slice, slice]:
        """Parallel overscan rows under the data columns, raw coordinates."""
        r0 = self.data_rows
        return (slice(r0, r0 + self.parallel_overscan_rows), slice(self.prescan_cols, self.prescan_cols + self.data_cols))

    @property
    def prescan_slice(self) -> tuple[slice, slice]:
        return (slice(0, self.raw_shape[0]), slice(0, self.prescan_cols))

    @property
    def bbox(self) -> tuple[slice, slice]:
        """Where the (flipped) data region lands in the assembled detector image."""
        y0 = self.row * self.data_rows
        x0 = self.col * self.data_cols
        return (slice(y0, y0 + self.data_rows), slice(x0, x0 + self.data_cols))

    # FITS section strings (1-based, inclusive, x = column) -------------------------
    @property
    def datasec(self) -> str:
        """``DATASEC`` in raw coordinates, e.g. ``[4:512,1:2000]``."""
        return f"[{self.prescan_cols + 1}:{self.prescan_cols + self.data_cols},1:{self.data_rows}]"

    @property
    def biassec(self) -> str:
        """``BIASSEC``: serial overscan in raw coordinates."""
        c0 = self.prescan_cols + self.data_cols
        return f"[{c0 + 1}:{c0 + self.serial_overscan_cols},1:{self.raw_shape[0]}]"

    @property
    def detsec(self) -> str:
        """``DETSEC``: data region in detector coordinates, reversed ranges for flips."""
        ys, xs = self.bbox
        x1, x2 = xs.start + 1, xs.stop
        y1, y2 = ys.start + 1, ys.stop
        if self.flip_x:
            x1, x2 = x2, x1
        if self.flip_y:
            y1, y2 = y2, y1
        return f"[{x1}:{x2},{y1}:{y2}]"


@dataclass(frozen=True)
class Detector:
    """One CCD."""

    id: int
    """Integer detector id (the ``detector`` dimension)."""
    name: str
    """Full name, e.g. ``R22_S11``."""
    sensor_type: str
    vendor: str
    """``ITL`` or ``E2V``."""
    serial: str
    amps: tuple[Amplifier, ...]
    purpose: str = "SCIENCE"
    """``SCIENCE``, ``WAVEFRONT`` or ``GUIDER`` (the butler's detector ``purpose``); science
    pipelines and the simulator use SCIENCE detectors only."""

    @property
    def raft(self) -> str:
        return self.name.split("_")[0]

    @property
    def name_in_raft(self) -> str:
        return self.name.split("_")[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the assembled image."""
        a = self.amps[0]
        nrow = 1 + max(x.row for x in self.amps)
        ncol = 1 + max(x.col for x in self.amps)
        return (nrow * a.data_rows, ncol * a.data_cols)

    @property
    def amp_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.amps)

    def amp(self, name: str) -> Amplifier:
        for a in self.amps:
            if a.name == name:
                return a
        raise CameraError(f"detector {self.name} has no amplifier {name!r}; it has {', '.join(self.amp_names)}.")


@dataclass(frozen=True)
class Camera:
    """An instrument at a given scale."""

    name: str
    scale: str
    detectors: tuple[Detector, ...]
    filters: tuple[tuple[str, str], ...]
    """(physical_filter, band) pairs."""
    doc: str = ""

    @property
    def detector_ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.detectors)

    @property
    def science_detectors(self) -> tuple[Detector, ...]:
        """Detectors with purpose SCIENCE (LSSTCam: 189 of 205; no wavefront or guider)."""
        return tuple(d for d in self.detectors if d.purpose == "SCIENCE")

    @property
    def science_detector_ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.science_detectors)

    @property
    def amp_names(self) -> tuple[str, ...]:
        return self.detectors[0].amp_names

    def detector(self, key: int | str) -> Detector:
        """Look a detector up by id or full name."""
        for d in self.detectors:
            if d.id == key or d.name == key or (isinstance(key, str) and key.isdigit() and d.id == int(key)):
                return d
        raise CameraError(
            f"{self.name} has no detector {key!r}; ids are {self.detector_ids[0]}..{self.detector_ids[-1]}."
        )

    def band_of(self, physical_filter: str) -> str:
        for pf, band in self.filters:
            if pf == physical_filter:
                return band
        names = [pf for pf, _ in self.filters]
        shown = ", ".join(names[:15]) + (f", ... ({len(names)} in all, cpframe/data/cameras/{self.name}.yaml)"
                                         if len(names) > 15 else "")
        raise CameraError(f"{self.name} has no physical filter {physical_filter!r}; known: {shown}.")

    def filter_for_band(self, band: str) -> str:
        for pf, b in self.filters:
            if b == band:
                return pf
        raise CameraError(f"{self.name} has no filter in band {band!r}; bands: {', '.join(b for _, b in self.filters)}.")


# -- the camera YAML file (cpframe/data/cameras/<name>.yaml) ------------------------------------------
# Open schemas (extra keys allowed) where other readers (raw-header translators, the simulator)
# may keep their own keys; the geometry cpframe computes with is checked strictly.


class AmpSpec(Schema):
    """One amplifier of a sensor type: grid position and read-out flips."""

    name: str
    row: int = Field(ge=0)
    col: int = Field(ge=0)
    flip_x: bool
    flip_y: bool


class SensorTypeSpec(OpenSchema):
    """Geometry of one sensor type (pixels); ``simulation`` holds the simulator's truth ranges."""

    vendor: str
    data_cols: int = Field(gt=0)
    data_rows: int = Field(gt=0)
    mini_data_cols: int = Field(gt=0)
    mini_data_rows: int = Field(gt=0)
    prescan_cols: int = Field(ge=0)
    serial_overscan_cols: int = Field(gt=0)
    parallel_overscan_rows: int = Field(ge=0)
    simulation: dict[str, float | list[float]] = {}
    amps: list[AmpSpec] = Field(min_length=1)


class DetectorSpec(OpenSchema):
    """One detector: integer id, full name (``R22_S11``), sensor type, serial."""

    id: int = Field(ge=0)
    name: str
    sensor_type: str
    serial: str


class FilterSpec(Schema):
    physical_filter: str
    band: str


class CameraFile(OpenSchema):
    """A camera model file."""

    name: str
    doc: str = ""
    sensor_types: dict[str, SensorTypeSpec]
    detectors: list[DetectorSpec] = Field(min_length=1)
    filters: list[FilterSpec] = []


def _filter_combinations(spec: dict) -> tuple[tuple[str, str], ...]:
    """LATISS-style ``FILTER~GRATING`` names from ``latiss_filters`` x ``latiss_gratings``.

    Every filter alone and with every grating (band of the filter), plus ``empty~<f>`` for
    each filter ``f`` in the grating wheel (band of ``f``).  obs_lsst leaves out the
    ``diffuser~<grating>`` names, but real raws carry them (AT_O_20191118_000011), so cpframe
    keeps them.
    Names already listed under ``filters`` keep their entry there.
    """
    filters = spec.get("latiss_filters") or []
    if not filters:
        return ()
    listed = {f["physical_filter"] for f in spec.get("filters", [])}
    bands = {f["name"]: f["band"] for f in filters}
    out: dict[str, str] = {}
    for f in filters:
        out[f["name"]] = f["band"]
        for g in spec.get("latiss_gratings", []):
            out[f"{f['name']}~{g}"] = f["band"]
    for g in spec.get("latiss_grating_filters", []):
        out[f"empty~{g}"] = bands[g]
    return tuple((pf, band) for pf, band in out.items() if pf not in listed)


def list_instruments() -> list[str]:
    """Names of the camera models shipped in ``cpframe/data/cameras``."""
    root = package_dir() / "data" / "cameras"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


@functools.lru_cache(maxsize=None)
def _camera_yaml(name: str) -> dict:
    known = list_instruments()
    if name not in known:
        raise CameraError(f"unknown instrument {name!r}; cpframe knows {', '.join(known)}.")
    path = package_dir() / "data" / "cameras" / f"{name}.yaml"
    source = f"cpframe/data/cameras/{name}.yaml"
    data = read_yaml(str(path), text=path.read_text(), source=source, error=CameraError)
    spec = validate(data, CameraFile, source, error=CameraError)
    unknown = sorted({d.sensor_type for d in spec.detectors} - set(spec.sensor_types))
    if unknown:
        raise CameraError(f"{source}: detectors: sensor_type {', '.join(unknown)} is not one of the "
                          f"sensor_types ({', '.join(spec.sensor_types)})")
    return data


@functools.lru_cache(maxsize=None)
def load_camera(name: str, scale: str = "full") -> Camera:
    """Load the camera model ``name`` at ``scale`` (``full`` or ``mini``).

    Raises
    ------
    CameraError
        Unknown instrument or scale.
    """
    if scale not in SCALES:
        raise CameraError(f"unknown camera scale {scale!r}; use one of {', '.join(SCALES)}.")
    spec = _camera_yaml(name)
    amps_by_type: dict[str, tuple[Amplifier, ...]] = {}
    for st, s in spec["sensor_types"].items():
        cols = s["mini_data_cols"] if scale == "mini" else s["data_cols"]
        rows = s["mini_data_rows"] if scale == "mini" else s["data_rows"]
        amps_by_type[st] = tuple(
            Amplifier(
                name=a["name"], index=i, row=a["row"], col=a["col"], flip_x=bool(a["flip_x"]),
                flip_y=bool(a["flip_y"]), data_cols=cols, data_rows=rows, prescan_cols=s["prescan_cols"],
                serial_overscan_cols=s["serial_overscan_cols"], parallel_overscan_rows=s["parallel_overscan_rows"],
            )
            for i, a in enumerate(s["amps"])
        )
    dets = tuple(
        Detector(
            id=int(d["id"]), name=d["name"], sensor_type=d["sensor_type"],
            vendor=spec["sensor_types"][d["sensor_type"]]["vendor"], serial=d["serial"],
            amps=amps_by_type[d["sensor_type"]], purpose=str(d.get("purpose", "SCIENCE")),
        )
        for d in spec["detectors"]
    )
    filters = tuple((f["physical_filter"], f["band"]) for f in spec["filters"]) + _filter_combinations(spec)
    return Camera(name=spec["name"], scale=scale, detectors=dets, filters=filters, doc=spec.get("doc", ""))

