# Long module: every file format cpframe writes (raw, masked image strips, defects, PTC) with its reader next to its writer, so a format change is one edit.
"""Detector files: read raws, read/write masked images in row strips, defects and PTC tables.

Formats follow ``docs/architecture.md`` exactly:

``fits-raw``
    primary HDU (metadata) + one int32 ``SEGMENTxy`` image HDU per amp, read-out order.
``fits-masked``
    primary HDU (metadata, HIERARCH cards) + ``IMAGE`` (float32), ``MASK`` (int32 bit
    flags, ``MP_<NAME>`` keys) and ``VARIANCE`` (float32), uncompressed.  Rows are
    contiguous on disk, so a strip of rows is one ``pread`` per plane: :class:`MaskedLayout`
    records where each plane starts and :func:`read_rows` reads ``[r0, r1)`` without
    astropy and without keeping a file handle open.
``ecsv-defects``
    astropy ECSV table of boxes ``x0, y0, width, height``.
``fits-ptc``
    primary HDU + ``PTC`` binary table, one row per amp.

Every writer writes to a temporary name in the destination directory and renames,
so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from cpframe.camera.models import Camera, Detector, load_camera
from cpframe.core import files as _files
from cpframe.core.errors import CameraError, UserInputError
from cpframe.science.configs.masks import MASK_BITS  # noqa: F401 (defined there, importable without the science stack)

__all__ = [
    "MASK_BITS",
    "mask_value",
    "mask_names",
    "RawExposure",
    "read_raw",
    "detector_from_header",
    "amp_boxes",
    "MaskedImage",
    "MaskedLayout",
    "masked_layout",
    "read_rows",
    "read_masked",
    "write_masked",
    "open_masked",
    "read_header",
    "update_header",
    "format_card",
    "header_bytes",
    "masked_header_bytes",
    "parse_header",
    "write_defects",
    "read_defects",
    "boxes_to_mask",
    "write_ptc",
    "read_ptc",
    "FileFormatError",
]


MSG_UNKNOWN_PLANE = "unknown mask plane(s) {names}; known planes: {known}."
MSG_NOT_MASKED = "{path}: not a fits-masked file (needs IMAGE, MASK and VARIANCE HDUs; found {found})."
MSG_NOT_RAW = "{path}: not a fits-raw file ({why}). Raws come from the simulator or the camera (docs/architecture.md)."

_FITS_BLOCK = 2880


class FileFormatError(UserInputError):
    """A file that is not in the cpframe format it should be in."""


def mask_value(names: Iterable[str] | str) -> int:
    """Bit mask for mask-plane names.

    >>> mask_value(["BAD", "SAT"])
    3
    >>> mask_value("CR")
    8
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    bad = [n for n in names if n not in MASK_BITS]
    if bad:
        raise UserInputError(MSG_UNKNOWN_PLANE.format(names=", ".join(map(repr, bad)), known=", ".join(MASK_BITS)))
    value = 0
    for n in names:
        value |= 1 << MASK_BITS[n]
    return value


def mask_names(value: int) -> list[str]:
    """Names of the planes set in ``value``.

    >>> mask_names(9)
    ['BAD', 'CR']
    """
    return [n for n, b in MASK_BITS.items() if value & (1 << b)]


# --------------------------------------------------------------------------------------
# fits-raw
# --------------------------------------------------------------------------------------
@dataclass
class RawExposure:
    """One raw exposure x detector in memory."""

    header: dict[str, Any]
    """Primary header of the raw file (plain Python values)."""
    camera: Camera
    detector: Detector
    segments: dict[str, np.ndarray]
    """Amp name -> int32 raw segment, read-out order, shape ``amp.raw_shape``."""
    path: str = ""
    segment_layout: dict[str, tuple[int, int, float, float, bool]] | None = None
    """Read with ``segments=False``: amp name -> (data offset in the file, BITPIX, BZERO, BSCALE, compressed) of
    its segment, from the headers read once (the fused ISR reads the segments itself)."""

    @property
    def exposure_id(self) -> int:
        return int(self.header.get("EXPID", 0))


def normalized_cards(header: Mapping[str, Any], filename: str | None = None) -> dict[str, Any]:
    """cpframe's cards of a raw header (see ``cpframe.camera.raw_headers.normalized_cards``)."""
    from cpframe.camera.raw_headers import normalized_cards as cards

    return cards(header, filename)


#: Raw path -> (translated cards, begin, end in ns TAI) from the registry, given by the planner with each quantum
#: (:func:`remember_raw_cards`); bounded: a worker of a long night forgets the oldest.
_PLANNED_CARDS: dict[str, tuple[dict[str, Any], int, int]] = {}
_PLANNED_AT_MOST = 4096
_PLANNED_LOCK = threading.Lock()  # a worker's threads run quanta side by side


def remember_raw_cards(path: str, cards: Mapping[str, Any], begin_ns: int, end_ns: int) -> None:
    """What the registry says a raw's header translates to (``cpframe.camera.raw_headers.registry_cards`` and the
    exposure's timespan): :func:`read_raw` of ``path`` in this process uses these cards instead of translating
    the header when the header's ``DATE-BEG``/``DATE-END`` are that timespan (issue 14: a worker then never
    imports the translators)."""
    with _PLANNED_LOCK:
        if len(_PLANNED_CARDS) >= _PLANNED_AT_MOST:
            _PLANNED_CARDS.pop(next(iter(_PLANNED_CARDS)))
        _PLANNED_CARDS[str(path)] = (dict(cards), int(begin_ns), int(end_ns))


def _iso_tai_ns(value: Any) -> int | None:
    """ns since 1970 TAI of an ISO date without a zone (TAI: no leap seconds, so calendar arithmetic is exact to
    the microsecond); None when it is not one."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if t.tzinfo is not None:
        return None
    d = t - datetime(1970, 1, 1)
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def _planned_cards(header: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The registry's cards of the raw at ``path`` (:func:`remember_raw_cards`) when the header's own dates are its
    exposure's timespan (then the header needs no repair that the translation would make of them), else None."""
    known = _PLANNED_CARDS.get(path)
    if known is None or str(header.get("TIMESYS", "")).strip().upper() != "TAI":
        return None
    cards, begin, end = known
    b, e = _iso_tai_ns(header.get("DATE-BEG")), _iso_tai_ns(header.get("DATE-END"))
    if b is None or e is None or abs(b - begin) > 1000 or abs(max(b, e) - end) > 1000:
        return None
    out = dict(cards)
    for key in ("DATE-BEG", "DATE-END", "TIMESYS"):  # as normalized_cards copies them from the header
        if header.get(key) is not None:
            out[key] = header[key]
    return out


def _camera_from_header(header: Mapping[str, Any], path: str) -> Camera:
    inst = header.get("INSTRUME")
    scale = str(header.get("CAMSCALE", "full")).strip().lower()
    if not inst:
        raise FileFormatError(MSG_NOT_RAW.format(path=path, why="primary header has no INSTRUME"))
    return load_camera(str(inst).strip(), scale)


def detector_from_header(header: Mapping[str, Any], shape: tuple[int, int] | None = None) -> Detector | None:
    """The camera model's detector named by ``INSTRUME``, ``CAMSCALE`` and ``DETECTOR``.

    ``None`` when a key is missing, the camera or detector is unknown, or (with ``shape``)
    the detector's assembled shape is not ``shape``.
    """
    try:
        det = load_camera(str(header["INSTRUME"]), str(header.get("CAMSCALE", "full")).lower()).detector(
            int(header["DETECTOR"]))
    except (KeyError, UserInputError):
        return None
    return det if shape is None or det.shape == tuple(shape) else None


def amp_boxes(header: Mapping[str, Any], shape: tuple[int, int]) -> list[tuple[str, tuple[slice, slice]]]:
    """(amp name, bbox) of each amp of the header's detector; ``[("ALL", whole image)]`` without one."""
    det = detector_from_header(header, shape)
    if det is None:
        return [("ALL", (slice(0, shape[0]), slice(0, shape[1])))]
    return [(a.name, a.bbox) for a in det.amps]


def read_raw(path: str | os.PathLike, camera: Camera | None = None, segments: bool = True) -> RawExposure:
    """Read a ``fits-raw`` file.

    Parameters
    ----------
    path : path-like
        The raw file.
    camera : Camera, optional
        Camera model; by default from the ``INSTRUME`` and ``CAMSCALE`` keys.
    segments : bool
        False: read the headers only and check the segments' shapes from them (``segments``
        of the result is empty); the fused ISR then reads each amp with ``pread``.

    Raises
    ------
    FileFormatError
        Missing keys, missing segments, or segments of the wrong shape.
    """
    path = str(path)
    with warnings.catch_warnings():
        # astropy only warns about a truncated file; for a raw that is an error
        warnings.simplefilter("error", AstropyUserWarning)
        try:
            return _read_raw(path, camera, segments)
        except FileFormatError:
            raise
        except (OSError, ValueError, AstropyUserWarning) as err:
            raise FileFormatError(MSG_NOT_RAW.format(path=path, why=f"cannot be read as FITS: {err}")) from None


def _read_raw(path: str, camera: Camera | None, with_data: bool = True) -> RawExposure:
    hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    with hdul:
        header = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
        # Real-format raws carry no DETECTOR/EXPID: translate (cpframe.camera.raw_headers)
        # and work on cpframe's normalized cards; cpframe products written before the
        # translators existed already have them.
        if not header.get("INSTRUME"):
            raise FileFormatError(MSG_NOT_RAW.format(path=path, why="primary header has no INSTRUME"))
        if "DETECTOR" not in header or "EXPID" not in header:
            try:
                header.update(_planned_cards(header, path) or normalized_cards(header, filename=path))
            except ValueError as err:
                raise FileFormatError(MSG_NOT_RAW.format(path=path, why=str(err))) from None
        cam = camera or _camera_from_header(header, path)
        try:
            det = cam.detector(int(header["DETECTOR"]))
        except CameraError as err:
            raise FileFormatError(MSG_NOT_RAW.format(path=path, why=str(err))) from None
        by_name = {h.header.get("EXTNAME", ""): h for h in hdul[1:]}
        segments: dict[str, np.ndarray] = {}
        layout: dict[str, tuple[int, int, float, float, bool]] = {}
        for amp in det.amps:
            extname = "SEGMENT" + amp.name[1:]
            hdu = by_name.get(extname)
            if hdu is None:
                raise FileFormatError(MSG_NOT_RAW.format(path=path, why=f"no HDU {extname} for amp {amp.name}"))
            if not with_data:
                h = hdu.header
                shape = tuple(int(h.get(f"NAXIS{i}", 0)) for i in (2, 1)) if h.get("NAXIS") == 2 else None
                if shape != tuple(amp.raw_shape):
                    raise FileFormatError(
                        MSG_NOT_RAW.format(path=path, why=f"{extname} has shape {shape}, expected {amp.raw_shape}")
                    )
                # where the data is, as astropy found it (its header is not parsed a second time)
                layout[amp.name] = (int(hdu.fileinfo()["datLoc"]), int(h.get("BITPIX", 0)), float(h.get("BZERO", 0) or 0),
                                    float(h.get("BSCALE", 1)), isinstance(hdu, fits.CompImageHDU) or bool(h.get("ZIMAGE")))
                continue
            data = hdu.data
            if data is None or data.shape != amp.raw_shape:
                shape = None if data is None else data.shape
                raise FileFormatError(
                    MSG_NOT_RAW.format(path=path, why=f"{extname} has shape {shape}, expected {amp.raw_shape}")
                )
            segments[amp.name] = np.asarray(data, dtype=np.int32)
    return RawExposure(header=header, camera=cam, detector=det, segments=segments, path=path,
                       segment_layout=None if with_data else layout)


# --------------------------------------------------------------------------------------
# fits-masked
# --------------------------------------------------------------------------------------
@dataclass
class MaskedImage:
    """Image, mask and variance planes of one detector plus the primary header."""

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)
    """Primary-header cards (plain Python values)."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape


_PLANES = (("IMAGE", np.dtype(">f4")), ("MASK", np.dtype(">i4")), ("VARIANCE", np.dtype(">f4")))


@dataclass(frozen=True)
class MaskedLayout:
    """Where the planes of a ``fits-masked`` file start (bytes) and their shape."""

    path: str
    shape: tuple[int, int]
    offsets: tuple[int, int, int]
    """Byte offset of the IMAGE, MASK and VARIANCE data."""

    def offset(self, plane: str) -> int:
        return self.offsets[("IMAGE", "MASK", "VARIANCE").index(plane)]


_STRUCTURAL_KEYS = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT",
                    "EXTNAME", "BSCALE", "BZERO", "COMMENT", "HISTORY", "", "END"}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python; non-finite floats -> text (FITS cannot hold them)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def update_header(header: dict, values: Mapping[str, Any]) -> dict:
    """Set many cards in a header dict (plain Python values); returns ``header``."""
    for k, v in values.items():
        header[str(k)] = _plain(v)
    return header


def _card(key: str, value: Any) -> str:
    """astropy's image of one card (several 80-character chunks when a text needs CONTINUE)."""
    name = key if (len(key) <= 8 and key == key.upper() and " " not in key) else f"HIERARCH {key}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        return fits.Card(name, fits.card.UNDEFINED if value is None else value).image


def format_card(key: str, value: Any) -> str:
    """One 80-character FITS card (astropy ``fits.Card``); keys longer than 8 characters become
    HIERARCH cards.  A value too long for one card is shortened to fit: text ends in ``...``,
    a number keeps fewer significant digits (down to 6).

    >>> format_card("EXPTIME", 1.5).rstrip()
    'EXPTIME =                  1.5'
    >>> format_card("LSST ISR GAIN C10", 1.25).rstrip()
    'HIERARCH LSST ISR GAIN C10 = 1.25'
    """
    value = _plain(value)
    try:
        card = _card(key, value)
        if len(card) == 80:
            return card
    except (ValueError, VerifyWarning):
        pass
    if isinstance(value, str):
        # long text (informative cards such as lists of inputs): keep what fits on one card
        text = value
        while text:
            text = text[:-1]
            try:
                card = _card(key, text + "...")
            except (ValueError, VerifyWarning):
                continue
            if len(card) == 80:
                return card
    elif isinstance(value, float):
        # a long key leaves little room: fewer significant digits, down to 6
        for digits in range(15, 5, -1):
            try:
                card = _card(key, float(f"{value:.{digits}G}"))
            except (ValueError, VerifyWarning):
                continue
            if len(card) == 80:
                return card
    raise ValueError(f"FITS card for {key!r} is longer than 80 characters; use a shorter key")


def header_bytes(items: Iterable[tuple[str, Any]]) -> bytes:
    """A FITS header (cards + END, padded to 2880 bytes) from (key, value) pairs."""
    cards = [format_card(k, v) for k, v in items]
    cards.append("END".ljust(80))
    text = "".join(cards)
    text += " " * (_padded(len(text)) - len(text))
    return text.encode("ascii", errors="replace")


_DROPPED_KEYS = ("COMMENT", "HISTORY", "")


def parse_header(data: bytes) -> dict[str, Any]:
    """Parse FITS header bytes (up to END) into a dict with astropy (``fits.Header.fromstring``):
    COMMENT/HISTORY dropped, CONTINUE joined, HIERARCH keys without the prefix, undefined -> None.

    >>> parse_header(header_bytes([("EXPTIME", 2.5), ("LSST ISR UNITS", "adu")]))
    {'EXPTIME': 2.5, 'LSST ISR UNITS': 'adu'}
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # a non-standard card is read as it is
        header = fits.Header.fromstring(data.decode("ascii", errors="replace"))
    return {k: (None if isinstance(v, fits.card.Undefined) else v)
            for k, v in header.items() if k not in _DROPPED_KEYS}


def _read_header_at(f, offset: int) -> tuple[dict[str, Any], int]:
    """Parse the header starting at ``offset``; returns (header, offset of its data)."""
    chunks = []
    pos = offset
    while True:
        f.seek(pos)
        block = f.read(_FITS_BLOCK)
        if len(block) < _FITS_BLOCK:
            raise FileFormatError(f"{getattr(f, 'name', '?')}: FITS header without END card.")
        chunks.append(block)
        pos += _FITS_BLOCK
        text = block.decode("ascii", errors="replace")
        if any(text[i:i + 3] == "END" and not text[i + 3:i + 80].strip() for i in range(0, _FITS_BLOCK, 80)):
            break
    return parse_header(b"".join(chunks)), pos


def _data_bytes(h: Mapping[str, Any]) -> int:
    naxis = int(h.get("NAXIS", 0) or 0)
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= int(h.get(f"NAXIS{i}", 0))
    return abs(int(h.get("BITPIX", 8))) // 8 * (n + int(h.get("PCOUNT", 0) or 0)) * int(h.get("GCOUNT", 1) or 1)


def _hdu_headers(path: str) -> list[tuple[dict[str, Any], int]]:
    """(header, data offset) of every HDU, reading only the headers."""
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            h, data_pos = _read_header_at(f, pos)
            out.append((h, data_pos))
            pos = data_pos + _padded(_data_bytes(h))
    return out


def _plane_header(name: str, dtype: np.dtype, shape: tuple[int, int]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("XTENSION", "IMAGE"), ("BITPIX", -32 if dtype.kind == "f" else 32),
                                    ("NAXIS", 2), ("NAXIS1", shape[1]), ("NAXIS2", shape[0]), ("PCOUNT", 0),
                                    ("GCOUNT", 1), ("EXTNAME", name)]
    if name == "MASK":
        items += [(f"MP_{plane}", bit) for plane, bit in MASK_BITS.items()]
    return items


def _primary_header(header: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)]
    if header is not None:
        items += [(str(k), v) for k, v in header.items() if k not in _STRUCTURAL_KEYS]
    return items


def _padded(n: int) -> int:
    return -(-n // _FITS_BLOCK) * _FITS_BLOCK


def masked_header_bytes(header: Mapping[str, Any] | None) -> bytes:
    """The primary header :func:`write_masked` writes for ``header`` (read it with :func:`parse_header`): what a
    reader of the file gets, for a consumer of an image kept in memory instead (a fused verifyStats quantum).

    >>> parse_header(masked_header_bytes({"NAXIS": 2, "EXPTIME": 2.5}))
    {'SIMPLE': True, 'BITPIX': 8, 'NAXIS': 0, 'EXTEND': True, 'EXPTIME': 2.5}
    """
    return header_bytes(_primary_header(header))


class MaskedWriter:
    """Write a ``fits-masked`` file strip by strip (thread-safe ``pwrite`` at fixed offsets).

    The file is created under a temporary name with its final size; :meth:`commit`
    renames it into place, :meth:`abort` removes it.  Use as a context manager: an
    exception inside the block leaves nothing behind.

    Parameters
    ----------
    path : path-like
        Final file name.
    shape : (int, int)
        (rows, cols) of each plane.
    header : mapping or astropy Header
        Primary-header cards.  Known in full before any data is written (a FITS header
        precedes the data); use :func:`write_masked` when the header depends on the data.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], header: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _files.mkstemp(prefix="." + self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fd: int | None = fd
        blocks = [header_bytes(_primary_header(header))]
        offsets = []
        pos = len(blocks[0])
        nbytes = self.shape[0] * self.shape[1] * 4
        for name, dtype in _PLANES:
            hb = header_bytes(_plane_header(name, dtype, self.shape))
            blocks.append(hb)
            os.pwrite(fd, hb, pos)
            pos += len(hb)
            offsets.append(pos)
            pos += _padded(nbytes)
        os.pwrite(fd, blocks[0], 0)
        os.ftruncate(fd, pos)  # FITS pads with zeros: the sparse tail is valid padding
        self.offsets = tuple(offsets)
        #: The header blocks in file order (primary, then each plane's): what precedes each part of the data.
        self.header_blocks = tuple(blocks)
        #: Zero bytes after each plane's data (FITS pads to 2880-byte blocks).
        self.padding = _padded(nbytes) - nbytes

    def write_rows(self, r0: int, image: np.ndarray, mask: np.ndarray, variance: np.ndarray) -> None:
        """Write rows ``[r0, r0 + len(image))`` of the three planes."""
        for plane, arr in enumerate((image, mask, variance)):
            self.write_plane_rows(plane, r0, arr)

    def write_plane_rows(self, plane: int, r0: int, rows: np.ndarray) -> memoryview:
        """Write rows ``[r0, r0 + len(rows))`` of one plane (0 image, 1 mask, 2 variance); returns the bytes
        written (the big-endian copy, or ``rows`` itself when it is already big-endian and contiguous)."""
        if self._fd is None:
            raise ValueError("MaskedWriter is closed")
        row_bytes = self.shape[1] * 4
        data = np.ascontiguousarray(rows, dtype=(">f4", ">i4", ">f4")[plane])
        if data.ndim != 2 or data.shape[1] != self.shape[1] or r0 + data.shape[0] > self.shape[0]:
            raise ValueError(f"strip of shape {data.shape} at row {r0} does not fit {self.shape}")
        buf = memoryview(data).cast("B")
        done = 0
        off = self.offsets[plane] + r0 * row_bytes
        while done < len(buf):  # pwrite may write less than asked
            done += os.pwrite(self._fd, buf[done:], off + done)
        return buf

    def commit(self) -> Path:
        """Flush, close and rename into place; returns the final path."""
        if self._fd is not None:
            os.fsync(self._fd) if os.environ.get("CPFRAME_FSYNC") else None
            os.close(self._fd)
            self._fd = None
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MaskedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_masked(
    path: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray,
    variance: np.ndarray,
    header: Mapping[str, Any] | None = None,
) -> Path:
    """Write a whole ``fits-masked`` file (temporary name, then rename).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    if not (image.shape == mask.shape == variance.shape) or image.ndim != 2:
        raise ValueError(f"planes differ in shape: {image.shape}, {mask.shape}, {variance.shape}")
    # big-endian copies of 512 KiB at a time, not of whole planes: a chunk stays in the core's L2 cache from the copy
    # through the write to the digest (issue 14: 4 MiB chunks took 0.19-0.28 s for a full-size product, 512 KiB 0.12 s)
    rows = max(1, (512 * 1024) // (4 * max(1, image.shape[1])))
    digest = _files.Sha256InOrder(depth=8)  # at most eight chunks (4 MiB) waiting
    try:
        with MaskedWriter(path, image.shape, header) as w:
            digest.feed(w.header_blocks[0])
            # plane after plane, in file order, each part hashed as written (a thread of its own)
            for plane, arr in enumerate((image, mask, variance)):
                digest.feed(w.header_blocks[plane + 1])
                for r0 in range(0, image.shape[0], rows):
                    digest.feed(w.write_plane_rows(plane, r0, arr[r0:r0 + rows]))
                digest.feed(bytes(w.padding))
    finally:
        digest.close()
    # the file's sha256 without reading it back (cpframe.execution.graph_tasks.run_quantum takes it)
    _files.remember_sha256(path, digest.hexdigest())
    return Path(path)


def masked_layout(path: str | os.PathLike) -> MaskedLayout:
    """Locate the planes of a ``fits-masked`` file (reads only its headers).

    Raises
    ------
    FileFormatError
        Not a FITS file, missing planes, wrong types or shapes.
    """
    path = str(path)
    try:
        hdus = _hdu_headers(path)
    except (OSError, ValueError) as err:
        raise FileFormatError(MSG_NOT_MASKED.format(path=path, found=f"unreadable: {err}")) from None
    if not hdus or hdus[0][0].get("SIMPLE") is not True:
        raise FileFormatError(MSG_NOT_MASKED.format(path=path, found="no FITS primary header"))
    names = [str(h.get("EXTNAME", "")) for h, _ in hdus]
    offsets = []
    shape = None
    for plane, dtype in _PLANES:
        if plane not in names:
            raise FileFormatError(MSG_NOT_MASKED.format(path=path, found=", ".join(n or "PRIMARY" for n in names)))
        h, data_pos = hdus[names.index(plane)]
        bitpix = -32 if dtype.kind == "f" else 32
        this = (int(h.get("NAXIS2", 0)), int(h.get("NAXIS1", 0)))
        if h.get("BITPIX") != bitpix or h.get("NAXIS") != 2 or h.get("BZERO", 0) or h.get("BSCALE", 1) != 1:
            raise FileFormatError(f"{path}: plane {plane} must be an unscaled 2-d BITPIX={bitpix} image.")
        if shape is None:
            shape = this
        elif this != shape:
            raise FileFormatError(f"{path}: plane {plane} has shape {this}, IMAGE has {shape}.")
        if data_pos + this[0] * this[1] * 4 > os.path.getsize(path):
            raise FileFormatError(f"{path}: file is truncated in plane {plane}.")
        offsets.append(data_pos)
    return MaskedLayout(path=path, shape=shape, offsets=tuple(offsets))


def read_rows(layout: MaskedLayout, plane: str, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
    """Read rows ``[r0, r1)`` of one plane into native byte order.

    Opens and closes the file on each call (no handle survives), one ``pread``.

    Parameters
    ----------
    layout : MaskedLayout
    plane : {"IMAGE", "MASK", "VARIANCE"}
    r0, r1 : int
        Row range.
    out : numpy.ndarray, optional
        Contiguous float32 (IMAGE/VARIANCE) or int32 (MASK) array of shape ``(r1-r0, cols)``
        to fill in place.
    """
    rows, cols = layout.shape
    r0 = max(0, r0)
    r1 = min(rows, r1)
    dtype = np.int32 if plane == "MASK" else np.float32
    if out is None:
        out = np.empty((r1 - r0, cols), dtype=dtype)
    nbytes = (r1 - r0) * cols * 4
    buf = memoryview(out).cast("B")
    fd = os.open(layout.path, os.O_RDONLY)
    try:
        got = 0
        base = layout.offset(plane) + r0 * cols * 4
        while got < nbytes:
            n = os.preadv(fd, [buf[got:]], base + got)
            if n <= 0:
                raise FileFormatError(f"{layout.path}: file is truncated in plane {plane} at row {r0}.")
            got += n
    finally:
        os.close(fd)
    if np.little_endian:
        out.byteswap(inplace=True)
    return out


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Primary header of a FITS file as a dict (HIERARCH keys without the prefix)."""
    try:
        with open(str(path), "rb") as f:
            return _read_header_at(f, 0)[0]
    except OSError as err:
        raise FileFormatError(f"{path}: cannot be read: {err}") from None


def read_masked(path: str | os.PathLike) -> MaskedImage:
    """Read a whole ``fits-masked`` file into memory (native byte order)."""
    layout = masked_layout(path)
    rows = layout.shape[0]
    return MaskedImage(
        image=read_rows(layout, "IMAGE", 0, rows),
        mask=read_rows(layout, "MASK", 0, rows),
        variance=read_rows(layout, "VARIANCE", 0, rows),
        header=read_header(path),
    )


def open_masked(path: str | os.PathLike, strip_rows: int = 200):
    """A lazy ``xarray.Dataset`` (image, mask, variance) backed by dask arrays in row strips.

    Nothing is read until computed; each strip is one ``pread`` per plane.

    Parameters
    ----------
    path : path-like
        A ``fits-masked`` file.
    strip_rows : int
        Rows per dask chunk.
    """
    import dask.array as da
    import xarray as xr

    layout = masked_layout(path)
    rows, cols = layout.shape
    strip_rows = max(1, min(int(strip_rows), rows))

    def plane(name: str):
        dtype = np.int32 if name == "MASK" else np.float32
        proto = da.empty((rows, cols), chunks=(strip_rows, cols), dtype=np.uint8)

        def load(block, block_info=None):
            (r0, r1), _ = block_info[0]["array-location"]
            return read_rows(layout, name, r0, r1)

        return proto.map_blocks(load, dtype=dtype, name=f"read-{name.lower()}-{abs(hash((layout.path, name)))}")

    header = read_header(path)
    ds = xr.Dataset(
        {"image": (("y", "x"), plane("IMAGE")), "mask": (("y", "x"), plane("MASK")),
         "variance": (("y", "x"), plane("VARIANCE"))},
        attrs={"path": layout.path},
    )
    ds.attrs["header"] = header
    return ds


# --------------------------------------------------------------------------------------
# ecsv-defects
# --------------------------------------------------------------------------------------
def write_defects(
    path: str | os.PathLike,
    boxes: Sequence[tuple[int, int, int, int]],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ``ecsv-defects`` table of boxes ``(x0, y0, width, height)``."""
    from astropy.table import Table  # imported here: 0.08 s that most processes never need

    path = Path(path)
    arr = np.asarray(list(boxes), dtype=np.int64).reshape(-1, 4)
    t = Table([arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]], names=("x0", "y0", "width", "height"))
    t.meta.update({k: (v.item() if hasattr(v, "item") else v) for k, v in (meta or {}).items()})
    t.meta.setdefault("n_defects", int(len(arr)))
    t.meta.setdefault("n_pixels", int((arr[:, 2] * arr[:, 3]).sum()) if len(arr) else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _files.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        t.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_defects(path: str | os.PathLike) -> tuple[list[tuple[int, int, int, int]], dict[str, Any]]:
    """Read an ``ecsv-defects`` file -> (boxes, meta).

    A FITS table with the same columns (the Rubin stack's ``Defects`` layout, e.g. imported
    from a butler export) reads the same way.
    """
    from astropy.table import Table

    fmt = "fits" if str(path).lower().endswith((".fits", ".fits.gz", ".fit")) else "ascii.ecsv"
    try:
        t = Table.read(str(path), format=fmt)
    except Exception as err:  # astropy raises many types for malformed files
        raise FileFormatError(f"{path}: not an ecsv-defects table: {err}") from None
    missing = [c for c in ("x0", "y0", "width", "height") if c not in t.colnames]
    if missing:
        raise FileFormatError(f"{path}: defects table lacks column(s) {', '.join(missing)}.")
    boxes = [(int(r["x0"]), int(r["y0"]), int(r["width"]), int(r["height"])) for r in t]
    return boxes, dict(t.meta)


def boxes_to_mask(boxes: Iterable[tuple[int, int, int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean image, True inside any box (clipped to ``shape``)."""
    m = np.zeros(shape, dtype=bool)
    for x0, y0, w, h in boxes:
        m[max(0, y0):max(0, y0 + h), max(0, x0):max(0, x0 + w)] = True
    return m


# --------------------------------------------------------------------------------------
# fits-ptc
# --------------------------------------------------------------------------------------
_PTC_ARRAYS = ("raw_means", "raw_vars", "exp_times", "mask", "overscan_noise")
PTC_COLUMNS = ("amp", "gain", "gain_err", "noise", "noise_err", "turnoff", "a00", "n_pairs",
               "raw_means", "raw_vars", "exp_times", "mask", "overscan_noise")
#: Scalar columns written when every row has them (older files lack them).
PTC_OPTIONAL_COLUMNS = ("noise_intercept", "overscan_var_factor")
#: FULLCOVARIANCE arrays, in the optional ``PTCCOV`` table (one row per amp, flattened;
#: shapes from the table header: NPAIRS pairs, COVRANGE L, COVFITRANGE r).
PTC_COV_ARRAYS = {"covariances": ("n", "L", "L"), "n_pixels_cov": ("n",), "a_matrix": ("r", "r"),
                  "a_matrix_err": ("r", "r"), "b_matrix": ("r", "r"), "noise_matrix": ("r", "r"),
                  "cov_model": ("n", "r", "r")}


def _ptc_cov_hdu(rows: Sequence[Mapping[str, Any]], n: int):
    """The ``PTCCOV`` table, or None when the rows carry no covariances."""
    if not rows or not all("covariances" in r for r in rows):
        return None
    L = int(np.asarray(rows[0]["covariances"]).shape[-1])
    r = int(np.asarray(rows[0].get("a_matrix", np.zeros((1, 1)))).shape[-1])
    dims = {"n": n, "L": L, "r": r}
    cols = [fits.Column("amp", "8A", array=np.array([row["amp"] for row in rows]))]
    for key, shape in PTC_COV_ARRAYS.items():
        full = tuple(dims[k] for k in shape)
        size = int(np.prod(full))
        arr = np.full((len(rows), size), np.nan)
        for i, row in enumerate(rows):
            v = np.asarray(row.get(key, np.full(full[1:] if shape[0] == "n" else full, np.nan)), dtype=np.float64)
            if shape[0] == "n":
                pad = np.full(full, np.nan)
                pad[: v.shape[0]] = v.reshape((v.shape[0],) + full[1:])
                v = pad
            arr[i] = v.reshape(-1)
        cols.append(fits.Column(key, f"{size}D", array=arr))
    cols.append(fits.Column("cov_chi2_dof", "D", array=np.array([float(row.get("cov_chi2_dof", np.nan))
                                                                  for row in rows])))
    hdu = fits.BinTableHDU.from_columns(cols, name="PTCCOV")
    hdu.header["NPAIRS"] = n
    hdu.header["COVRANGE"] = L
    hdu.header["COVFITRANGE"] = r
    return hdu


def write_ptc(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> Path:
    """Write a ``fits-ptc`` file: one table row per amp (columns ``PTC_COLUMNS``)."""
    path = Path(path)
    n = max([len(r["raw_means"]) for r in rows] + [1])

    def arr(key, dtype, fill):
        out = np.full((len(rows), n), fill, dtype=dtype)
        for i, r in enumerate(rows):
            v = np.asarray(r[key], dtype=dtype)
            out[i, : len(v)] = v
        return out

    cols = [
        fits.Column("amp", "8A", array=np.array([r["amp"] for r in rows])),
        *[fits.Column(k, "D", array=np.array([float(r[k]) for r in rows])) for k in
          ("gain", "gain_err", "noise", "noise_err", "turnoff", "a00")],
        fits.Column("n_pairs", "J", array=np.array([int(r["n_pairs"]) for r in rows])),
        # optional (issue 16): the raw read-noise intercept and the overscan variance divided out
        *[fits.Column(k, "D", array=np.array([float(r[k]) for r in rows])) for k in PTC_OPTIONAL_COLUMNS
          if all(k in r for r in rows)],
        fits.Column("raw_means", f"{n}D", array=arr("raw_means", np.float64, np.nan)),
        fits.Column("raw_vars", f"{n}D", array=arr("raw_vars", np.float64, np.nan)),
        fits.Column("exp_times", f"{n}D", array=arr("exp_times", np.float64, np.nan)),
        fits.Column("mask", f"{n}L", array=arr("mask", bool, False)),
        fits.Column("overscan_noise", f"{n}D", array=arr("overscan_noise", np.float64, np.nan)),
    ]
    table = fits.BinTableHDU.from_columns(cols, name="PTC")
    ph = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        for k, v in _primary_header(meta)[4:]:
            ph[k] = _plain(v)
    primary = fits.PrimaryHDU(header=ph)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _files.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            cov = _ptc_cov_hdu(rows, n)
            fits.HDUList([primary, table] + ([cov] if cov is not None else [])).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_ptc(path: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Read a ``fits-ptc`` file -> ({amp: {column: value}}, primary header)."""
    try:
        with fits.open(str(path), memmap=False) as hdul:
            header = {k: v for k, v in hdul[0].header.items() if k not in ("COMMENT", "HISTORY", "")}
            data = hdul["PTC"].data
            out: dict[str, dict[str, Any]] = {}
            for r in data:
                amp = str(r["amp"]).strip()
                rec = {}
                for c in PTC_COLUMNS[1:]:
                    v = r[c]
                    if c in _PTC_ARRAYS:
                        rec[c] = np.atleast_1d(np.array(v))
                    else:
                        rec[c] = int(v) if c == "n_pairs" else float(v)
                finite = np.flatnonzero(np.isfinite(rec["raw_means"]))
                n_used = int(finite[-1]) + 1 if finite.size else 0
                for c in ("raw_means", "raw_vars", "exp_times", "mask", "overscan_noise"):
                    rec[c] = rec[c][:n_used]
                rec["mask"] = rec["mask"].astype(bool)
                for c in PTC_OPTIONAL_COLUMNS:
                    if c in data.columns.names:
                        rec[c] = float(r[c])
                out[amp] = rec
            if "PTCCOV" in hdul:
                cov = hdul["PTCCOV"]
                dims = {"n": int(cov.header["NPAIRS"]), "L": int(cov.header["COVRANGE"]),
                        "r": int(cov.header["COVFITRANGE"])}
                for r in cov.data:
                    rec = out[str(r["amp"]).strip()]
                    n_used = len(rec["raw_means"])
                    for key, shape in PTC_COV_ARRAYS.items():
                        v = np.array(r[key], dtype=np.float64).reshape(tuple(dims[k] for k in shape))
                        rec[key] = v[:n_used] if shape[0] == "n" else v
                    rec["cov_chi2_dof"] = float(r["cov_chi2_dof"])
    except (OSError, KeyError) as err:
        raise FileFormatError(f"{path}: not a fits-ptc file: {err}") from None
    return out, header
