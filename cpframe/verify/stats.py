"""Per-amplifier statistics of a residual image, with mask exclusion and sigma clipping.

The clipping follows afw's ``MEANCLIP``/``STDEVCLIP`` (the statistics cp_verify uses):
the first pass keeps pixels within ``median +- n_sigma * 0.7413 * IQR``; every later
pass keeps pixels within ``mean +- n_sigma * stdev`` of the previous pass; the
result is the mean and the sample standard deviation (``ddof=1``) of the last kept
set.  Non-finite pixels are always excluded.

Everything here works on plain numpy arrays; :func:`read_residual` reads a
``fits-masked`` file (docs/architecture.md) into a :class:`ResidualImage`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.camera.models import Amplifier, Detector
from cpframe.core import files as _files
from cpframe.core.errors import UserInputError
from cpframe.science.combine import IQ_TO_STDEV
from cpframe.science.combine import clipped_stats as _clip
from cpframe.science.imageio import MASK_BITS
from cpframe.verify.config import VerifyConfig

__all__ = [
    "DEFAULT_MASK_BITS",
    "ClipResult",
    "ResidualImage",
    "amp_corner_box",
    "clipped_stats",
    "expected_noise",
    "header_amp_value",
    "header_value",
    "mask_of",
    "read_residual",
    "repair_cosmic_rays",
    "residual_in_memory",
    "truncated_std_factor",
]

#: Bit numbers of the mask planes (docs/architecture.md "Mask bits"); a file's own
#: ``MP_<NAME>`` cards win over these.
DEFAULT_MASK_BITS: dict[str, int] = dict(MASK_BITS)

#: 1 / (2 * 0.6745): converts an inter-quartile range into a Gaussian sigma (the combine's constant).
IQR_TO_SIGMA = IQ_TO_STDEV


@dataclass
class ResidualImage:
    """An assembled detector image (after ISR) with its mask, variance and header."""

    image: np.ndarray
    """float image, shape = detector.shape (rows, cols)."""
    mask: np.ndarray
    """int bit flags, same shape."""
    variance: np.ndarray | None = None
    """float variance, same shape (optional)."""
    header: Mapping[str, Any] = field(default_factory=dict)
    """Header cards (astropy ``Header`` or a dict); ISR keys such as ``LSST ISR GAIN C10``."""
    mask_bits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_BITS))
    """Mask plane name -> bit number."""
    path: str = ""
    """File it was read from (for messages)."""

    def check_shape(self, detector: Detector) -> None:
        """Raise :class:`UserInputError` if the planes do not match ``detector.shape``."""
        where = self.path or "residual image"
        if self.image.shape != tuple(detector.shape):
            raise UserInputError(
                f"{where}: image shape {self.image.shape} does not match detector {detector.name} "
                f"shape {tuple(detector.shape)}; give the residual of this detector at the same scale "
                "(full or mini)."
            )
        if self.mask.shape != self.image.shape:
            raise UserInputError(f"{where}: mask shape {self.mask.shape} differs from image shape {self.image.shape}.")


def read_residual(path: str | Path) -> ResidualImage:
    """Read a ``fits-masked`` file (primary header, IMAGE, MASK, VARIANCE HDUs).

    Raises
    ------
    UserInputError
        The file is missing or is not ``fits-masked``.
    """
    from astropy.io import fits

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"residual image {p} does not exist; check the path given to verification.")
    try:
        with fits.open(p, memmap=False) as hdul:
            names = [h.name for h in hdul]
            missing = [n for n in ("IMAGE", "MASK") if n not in names]
            if missing:
                raise UserInputError(
                    f"{p}: not a fits-masked file (HDUs {names}; missing {', '.join(missing)}). "
                    "Verification reads ISR outputs written by cpframe.science.imageio."
                )
            header = hdul[0].header.copy()
            image = np.asarray(hdul["IMAGE"].data, dtype=np.float64)
            mask_hdu = hdul["MASK"]
            mask = np.asarray(mask_hdu.data, dtype=np.int64)
            bits = dict(DEFAULT_MASK_BITS)
            for key, value in mask_hdu.header.items():
                if key.startswith("MP_"):
                    bits[key[3:]] = int(value)
            variance = np.asarray(hdul["VARIANCE"].data, dtype=np.float64) if "VARIANCE" in names else None
    except OSError as err:
        raise UserInputError(f"{p}: cannot read as FITS ({err}); is it a fits-masked file?") from None
    return ResidualImage(image=image, mask=mask, variance=variance, header=header, mask_bits=bits, path=str(p))


def residual_in_memory(image: Any, label: str = "", variance: bool = True) -> ResidualImage:
    """The :class:`ResidualImage` that :func:`read_residual` reads from the file :func:`write_masked
    <cpframe.science.imageio.write_masked>` would write of ``image`` (a
    :class:`cpframe.science.imageio.MaskedImage`), without writing it: planes through the file's float32 / int32,
    the header through its FITS cards, the mask planes the writer declares.  A fused verifyStats quantum measures
    its raw's ISR image so (docs/algorithms.md "Fused ISR -> combine"); ``label`` names it in messages.
    ``variance=False`` leaves the variance plane out (None), for an image whose variance is not read (verifyDefects'
    uncorrected image).
    """
    from astropy.io import fits

    from cpframe.science.imageio import masked_header_bytes

    header = fits.Header.fromstring(masked_header_bytes(image.header).decode("ascii"))
    return ResidualImage(image=np.asarray(image.image, dtype=np.float32).astype(np.float64),
                         mask=np.asarray(image.mask, dtype=np.int32).astype(np.int64),
                         variance=None if image.variance is None or not variance else
                         np.asarray(image.variance, dtype=np.float32).astype(np.float64),
                         header=header, mask_bits={**DEFAULT_MASK_BITS, **MASK_BITS}, path=label)


def mask_of(residual: ResidualImage, names: Iterable[str]) -> np.ndarray:
    """Boolean array: pixels with any of the named mask planes set.  Unknown names are ignored
    (a plane that a file does not define cannot be set in it)."""
    bits = 0
    for n in names:
        if n in residual.mask_bits:
            bits |= 1 << int(residual.mask_bits[n])
    return (residual.mask & bits) != 0


@dataclass(frozen=True)
class ClipResult:
    """Result of :func:`clipped_stats`."""

    mean: float
    """MEANCLIP."""
    stdev: float
    """STDEVCLIP (ddof=1)."""
    n_used: int
    """Pixels kept in the last pass."""
    n_clipped: int
    """Valid pixels outside the last pass's window (NCLIPPED)."""
    low: float
    """Lower edge of the last window."""
    high: float
    """Upper edge of the last window."""
    median: float = float("nan")
    """Median of the valid values (before clipping)."""


def clipped_stats(values: np.ndarray, n_sigma: float = 5.0, n_iter: int = 3) -> ClipResult:
    """Clipped mean and standard deviation (afw MEANCLIP / STDEVCLIP): ``n_iter`` passes in all,
    the first centred on the median with a width from the IQR.

    The clipping itself is the combine's (:func:`cpframe.science.combine.clipped_stats`, whose
    ``n_iter`` counts the mean/stdev passes after the median/IQR one); this adds the median,
    the number clipped and the final window.

    >>> r = clipped_stats(np.array([1.0, 2.0, 3.0, 4.0, 1000.0]), n_sigma=3.0)
    >>> round(r.mean, 6), r.n_clipped
    (2.5, 1)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return ClipResult(np.nan, np.nan, 0, 0, np.nan, np.nan)
    mean, std, n_used = _clip(x, n_sigma, max(int(n_iter), 1) - 1)
    return ClipResult(mean, std, n_used, int(x.size - n_used), mean - n_sigma * std, mean + n_sigma * std,
                      float(np.median(x)))


def expected_noise(residual: ResidualImage, amp: Amplifier, exclude: np.ndarray | None) -> float:
    """Noise the ISR expects in one amp: sqrt of the mean variance plane over valid pixels.

    The ISR's variance holds the read noise, the photon noise and the propagated noise of
    the calibrations applied (a bias combined from N exposures adds RN^2 / N).  NaN when
    the residual has no usable variance plane.
    """
    if residual.variance is None:
        return float("nan")
    ys, xs = amp.bbox
    var = residual.variance[ys, xs]
    ok = np.isfinite(var) & np.isfinite(residual.image[ys, xs])
    if exclude is not None:
        ok &= ~exclude[ys, xs]
    if not ok.any():
        return float("nan")
    mean_var = float(np.mean(var[ok]))
    return float(np.sqrt(mean_var)) if mean_var > 0 else float("nan")


def overscan_correction_variance(amp: Amplifier, skip_cols: int, parallel: bool = True) -> float:
    """Variance, in units of the read noise squared, that overscan subtraction adds to each pixel.

    The ISR subtracts a per-row median of the serial overscan (``serial_overscan_cols -
    skip_cols`` values) and, with a parallel overscan, a per-column median
    (``parallel_overscan_rows - skip_cols`` values).  The median of n Gaussian values has
    variance (pi / 2) sigma^2 / n.

    >>> from cpframe.camera.models import load_camera
    >>> amp = load_camera("LSSTComCam").detectors[0].amps[0]
    >>> round(overscan_correction_variance(amp, 6), 4)
    0.0645
    """
    import math

    n_serial = amp.serial_overscan_cols - skip_cols
    k = (math.pi / 2) / n_serial if n_serial > 0 else 0.0
    if parallel:
        n_par = amp.parallel_overscan_rows - skip_cols
        k += (math.pi / 2) / n_par if n_par > 0 else 0.0
    return k


def truncated_std_factor(n_sigma: float) -> float:
    """Standard deviation of a unit Gaussian truncated at +- ``n_sigma`` (what clipping measures).

    >>> round(truncated_std_factor(3.0), 5)
    0.98658
    """
    import math

    mass = math.erf(n_sigma / math.sqrt(2.0))
    pdf = math.exp(-0.5 * n_sigma * n_sigma) / math.sqrt(2.0 * math.pi)
    return float(math.sqrt(1.0 - 2.0 * n_sigma * pdf / mass))


def amp_corner_box(amp: Amplifier, size: int) -> tuple[slice, slice]:
    """Box of ``size`` x ``size`` (cut to the amp) at the amp's read-out corner, in detector pixels.

    The first pixel read is raw ``[0, prescan]``; after the flips it lands at the high-x
    edge of the amp box when ``flip_x`` and at the high-y edge when ``flip_y``.
    """
    ys, xs = amp.bbox
    ny, nx = min(size, amp.data_rows), min(size, amp.data_cols)
    yb = slice(ys.stop - ny, ys.stop) if amp.flip_y else slice(ys.start, ys.start + ny)
    xb = slice(xs.stop - nx, xs.stop) if amp.flip_x else slice(xs.start, xs.start + nx)
    return yb, xb


_NEIGHBOURS_8 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_WINDOW_5 = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]


def _gather(padded: np.ndarray, ys: np.ndarray, xs: np.ndarray, offsets, pad: int) -> np.ndarray:
    return np.stack([padded[ys + pad + dy, xs + pad + dx] for dy, dx in offsets], axis=1)


def repair_cosmic_rays(
    data: np.ndarray, bad: np.ndarray, center: float, sigma: float,
    n_sigma: float = 6.0, sharp_n_sigma: float = 3.0, neighbour_n_sigma: float = 3.0, n_iter: int = 3,
    psf_fwhm: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Find and repair cosmic rays in a copy of one amp's image.

    A pixel is a cosmic ray when it is more than ``n_sigma`` sigma above ``center`` and
    sharper than the PSF allows: above ``(m - center) / r + center + sharp_n_sigma *
    sigma``, where ``m`` is the median of its 8 neighbours (cosmic-ray pixels found
    so far left out) and ``r = exp(-1 / (2 s^2))`` the value one pixel from the peak of
    a Gaussian PSF of width ``s`` (FWHM ``psf_fwhm``, 3 px as in cp_verify).  Stars and
    smooth sources are never sharper than the PSF; a pixel hit by a cosmic ray is.
    Pixels touching a cosmic ray need only ``neighbour_n_sigma`` sigma.  Found pixels
    are replaced by the median of the good pixels in the surrounding 5x5 window
    (``center`` if there are none).

    Parameters
    ----------
    data : 2-d array
        The amp image (not modified).
    bad : 2-d bool array
        Pixels excluded from statistics (masked or non-finite); never used for repair.
    center, sigma : float
        Clipped mean and standard deviation of the amp.

    Returns
    -------
    repaired : 2-d array
    cr : 2-d bool array
        The cosmic-ray pixels found.
    """
    work = np.array(data, dtype=np.float64, copy=True)
    cr = np.zeros(work.shape, dtype=bool)
    if not np.isfinite(sigma) or sigma <= 0 or work.size == 0:
        return work, cr
    s = psf_fwhm / 2.3548
    ratio = float(np.exp(-1.0 / (2.0 * s * s)))
    pad = 2
    for _ in range(n_iter):
        touch = np.zeros_like(cr)
        touch[1:, :] |= cr[:-1, :]
        touch[:-1, :] |= cr[1:, :]
        touch[:, 1:] |= cr[:, :-1]
        touch[:, :-1] |= cr[:, 1:]
        level = np.where(touch, neighbour_n_sigma, n_sigma) * sigma
        ys, xs = np.nonzero((work - center > level) & ~bad & ~cr)
        if ys.size == 0:
            break
        padded = np.pad(np.where(bad | cr, np.nan, work), pad, constant_values=np.nan)
        with warnings.catch_warnings():  # all-NaN neighbourhoods give NaN, handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            neigh = np.nanmedian(_gather(padded, ys, xs, _NEIGHBOURS_8, pad), axis=1)
        neigh = np.where(np.isfinite(neigh), neigh, center)
        sharp = work[ys, xs] - center > (neigh - center) / ratio + sharp_n_sigma * sigma
        if not sharp.any():
            break
        cr[ys[sharp], xs[sharp]] = True
    if cr.any():
        ys, xs = np.nonzero(cr)
        padded = np.pad(np.where(bad | cr, np.nan, work), pad, constant_values=np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmedian(_gather(padded, ys, xs, _WINDOW_5, pad), axis=1)
        work[ys, xs] = np.where(np.isfinite(fill), fill, center)
    return work, cr


def header_value(header: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A header value looked up as ``key`` or ``HIERARCH key``; ``default`` if absent."""
    for k in (key, f"HIERARCH {key}"):
        try:
            if k in header:
                return header[k]
        except (KeyError, ValueError):
            continue
    return default


def header_amp_value(header: Mapping[str, Any], key: str, amp: str, fallback_key: str | None = None) -> float:
    """Per-amp numeric header value ``"<key> <amp>"`` (fallback: scalar ``fallback_key``), NaN if absent."""
    v = header_value(header, f"{key} {amp}")
    if v is None and fallback_key:
        v = header_value(header, fallback_key)
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


# -- binned residual images (the report shows them) -------------------------------------------
def bin_image(image: np.ndarray, exclude: np.ndarray | None, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks over valid pixels (NaN where a block has none).

    >>> bin_image(np.arange(16.0).reshape(4, 4), None, 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    data = np.array(image[:ny, :nx], dtype=np.float64)
    ok = np.isfinite(data)
    if exclude is not None:
        ok &= ~exclude[:ny, :nx]
    data = np.where(ok, data, 0.0)
    shape = (ny // factor, factor, nx // factor, factor)
    sums = data.reshape(shape).sum(axis=(1, 3))
    counts = ok.reshape(shape).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def write_binned_residual(
    residual: ResidualImage, path: str | Path, data_id: Mapping[str, Any], config: VerifyConfig | None = None,
    factor: int = 8,
) -> Path:
    """Write the residual binned ``factor`` x ``factor`` (masked pixels left out) as a one-HDU FITS file."""
    from astropy.io import fits

    cfg = config or VerifyConfig()
    binned = bin_image(residual.image, mask_of(residual, cfg.mask_names), factor).astype(np.float32)
    hdu = fits.PrimaryHDU(binned)
    for k, v in data_id.items():
        if v is not None:
            hdu.header[f"HIERARCH CPF {k.upper()}"] = v
    hdu.header["BINNING"] = (factor, "pixels per side of each binned pixel")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _files.mkstemp(prefix=f".{p.name}.", suffix=".fits", dir=p.parent)
    os.close(fd)
    try:
        hdu.writeto(tmp, overwrite=True)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
