"""Chunked combine of detector images: MEAN, MEDIAN and MEANCLIP over row strips.

The N inputs (``fits-masked`` files) are never held whole.  The output is an
``xarray.Dataset`` whose planes are dask arrays chunked in row strips; computing one
strip reads the same rows of every input (one ``pread`` per plane and input), runs a
compiled per-pixel kernel and drops the strip.  The strip height comes from the memory
budget through one helper, :func:`strip_rows_for_budget`, so the peak memory of a
combine depends on the budget, not on N.

Algorithm (spec algorithms.md §4.2, cp_pipe ``CalibCombineTask``): each input is divided
by its scale (variance by scale²); per pixel, inputs whose mask has a bit of
``CombineConfig.mask`` or a non-finite value are dropped; then

* ``MEAN``: the mean; ``MEDIAN``: the median (numpy's linear interpolation);
* ``MEANCLIP``: keep values within median ± clip·0.7413·IQR, then ``n_iter`` passes keep
  the values within mean ± clip·stdev (ddof=1) of the previous pass's kept values; as in
  afw, every pass tests every valid input (a value rejected early can come back), and
  passes stop early when the kept set no longer changes.  The value is the final mean.

Output variance is the squared error of the statistic: stdev²/n from the scatter when
there are at least ``max_visits_to_calc_error_from_input_variance`` inputs, else
Σvar/n² from the inputs' variance planes (MEDIAN: times π/2).  Pixels with no surviving
input, or a non-finite value or variance, get the median of the good pixels (variance:
the median good variance) and the ``BAD`` bit.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from astropy.time import Time, TimeDelta

from cpframe.core.errors import ConfigError, UserInputError
from cpframe.science.imageio import (
    MASK_BITS,
    MaskedImage,
    MaskedLayout,
    detector_from_header,
    mask_value,
    masked_layout,
    read_header,
    read_rows,
    update_header,
    write_masked,
)
from cpframe.science.configs.combine import (  # noqa: F401 (defined there, importable without the science stack)
    CLIP_METHODS,
    CombineConfig,
    MSG_BAD_VALUE,
    MSG_UNKNOWN_KEYS,
    SCALINGS,
    STATISTICS,
)

__all__ = [
    "CombineConfig",
    "CombineResult",
    "CombineError",
    "STATISTICS",
    "SCALINGS",
    "strip_rows_for_budget",
    "combine_lazy",
    "combine_images",
    "combine_files",
    "clipped_stats",
    "combine_config_for",
]


class CombineError(UserInputError):
    """Inputs that cannot be combined (none, different shapes, missing scales, NO_DATA)."""


MSG_NO_INPUTS = "combine of {what}: no inputs. Give at least one ISR-processed fits-masked file."
MSG_SHAPES = ("combine of {what}: inputs differ in shape: {detail}. All inputs must come from the same "
              "detector at the same camera scale.")
MSG_SCALES = ("combine of {what}: got {n_scales} scale(s) for {n_inputs} input(s). Give one scale per input "
              "(exposureScaling={scaling}).")
MSG_BAD_SCALE = "combine of {what}: scale {value!r} for input {path} is not a finite non-zero number."
MSG_NO_DATA = ("combine of {what}: {count} output pixel(s) carry NO_DATA. Mask them in the inputs "
               "(add NO_DATA to 'mask') or set checkNoData: false.")


#: Bytes of stack memory per input pixel: image float32 + mask int32 (+ variance float32),
#: plus the native-order copies the kernel works on are the same buffers (read in place).
_BYTES_IMAGE_MASK = 8
_BYTES_WITH_VARIANCE = 12

from cpframe.science.kernels import (  # noqa: E402,F401  (kernels live in kernels.py)
    CLIP_ASTROPY,
    CLIP_CP_PIPE,
    IQ_TO_STDEV,
    STAT_MEAN,
    STAT_MEANCLIP,
    STAT_MEDIAN,
    _sorting_network,
    clipped_stack_pixel,
    combine_block,
    combine_strip,
    combine_strip_mean,
    combine_strip_sorted,
    sorting_network,
)

# --------------------------------------------------------------------------------------
# configuration (CombineConfig and its names: cpframe.science.configs.combine)
# --------------------------------------------------------------------------------------


def combine_config_for(product: str, **overrides: Any) -> CombineConfig:
    """The cp_pipe LSST combine settings of a product (spec §4.1, §7).

    ``product`` is one of ``bias``, ``dark``, ``flat``, ``biasBootstrap``,
    ``darkBootstrap``, ``flatBootstrap``.

    >>> combine_config_for("dark").mask
    ('SAT', 'DETECTED', 'INTRP', 'CR')
    """
    table = {
        "bias": dict(calibration_type="bias", exposure_scaling="Unity", mask=("DETECTED", "INTRP")),
        "biasBootstrap": dict(calibration_type="bias", exposure_scaling="Unity", mask=("DETECTED", "INTRP")),
        "dark": dict(calibration_type="dark", exposure_scaling="DarkTime", mask=("SAT", "DETECTED", "INTRP", "CR")),
        "darkBootstrap": dict(calibration_type="dark", exposure_scaling="DarkTime", mask=("DETECTED", "INTRP")),
        "flat": dict(calibration_type="flat", exposure_scaling="InputList"),
        "flatBootstrap": dict(calibration_type="flat", exposure_scaling="InputList"),
    }
    if product not in table:
        raise ConfigError(f"no combine settings for product {product!r}; known: {', '.join(table)}.")
    return replace(CombineConfig(dataset_type=product, **table[product]), **overrides)


# --------------------------------------------------------------------------------------
# memory budget -> strip height
# --------------------------------------------------------------------------------------
def strip_rows_for_budget(memory_bytes: int, n_inputs: int, n_cols: int, threads: int = 1,
                          with_variance: bool = False, n_rows: int | None = None) -> int:
    """Rows per strip so that ``threads`` strips of ``n_inputs`` inputs fit in ``memory_bytes``.

    Each input pixel in a strip costs 8 bytes (image + mask), 12 with the variance plane.

    >>> strip_rows_for_budget(512 * 2**20, 20, 4072)
    824
    >>> strip_rows_for_budget(1, 20, 4072)
    1
    """
    per_row = max(1, int(n_inputs)) * int(n_cols) * (_BYTES_WITH_VARIANCE if with_variance else _BYTES_IMAGE_MASK)
    rows = int(memory_bytes) // (per_row * max(1, int(threads)))
    rows = max(1, rows)
    if n_rows is not None:
        rows = min(rows, int(n_rows))
    return rows


# --------------------------------------------------------------------------------------
# small robust statistics (numpy, for whole images / regions)
# --------------------------------------------------------------------------------------
def clipped_stats(values: np.ndarray, clip: float = 3.0, n_iter: int = 3) -> tuple[float, float, int]:
    """MEANCLIP mean, clipped stdev (ddof=1) and count of the finite values (the combine's rule).

    >>> clipped_stats(np.array([1.0, 2.0, 3.0, 100.0]))[0]
    2.0
    """
    from cpframe.science.robust import clipped_stats_1d

    v = np.asarray(values)
    if v.dtype.kind not in "fiu":
        v = v.astype(np.float64)
    return clipped_stats_1d(v.ravel(), clip, n_iter, IQ_TO_STDEV)


# --------------------------------------------------------------------------------------
# the combine
# --------------------------------------------------------------------------------------
@dataclass
class CombineResult:
    """What a combine returns (small; the planes are in the file)."""

    path: str
    """Output file (empty when not written)."""
    n_inputs: int
    shape: tuple[int, int]
    strip_rows: int
    n_bad: int
    """Pixels flagged BAD (no surviving input or NaN repair)."""
    scales: list[float]
    amp_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per amp: median, mean, stdev (clipped) and BADPIX-NUM of the product."""


def _clip_code(name: str) -> int:
    return {"cp_pipe": CLIP_CP_PIPE, "astropy": CLIP_ASTROPY}[name]


def _stat_code(name: str) -> int:
    return {"MEAN": STAT_MEAN, "MEDIAN": STAT_MEDIAN, "MEANCLIP": STAT_MEANCLIP}[name]


class _StripBuffers:
    """Input strip buffers reused by each thread within one combine (no page faults per strip).

    Owned by one :func:`combine_lazy` graph, so nothing outlives the combine.
    """

    def __init__(self):
        self._local = threading.local()

    def get(self, shape: tuple[int, int, int], with_var: bool):
        # exact shapes only: a sliced buffer would be non-contiguous (another numba specialisation)
        cached = getattr(self._local, "bufs", None)
        if cached is None or cached[0].shape != shape:
            cached = (np.empty(shape, np.float32), np.empty(shape, np.int32),
                      np.empty(shape, np.float32) if with_var else np.zeros((1, 1, 1), np.float32))
            self._local.bufs = cached
        return cached

    def __dask_tokenize__(self):
        return id(self)


def _read_strip(layouts: Sequence[MaskedLayout], r0: int, r1: int, with_var: bool, pool: "_StripBuffers | None" = None):
    n = len(layouts)
    cols = layouts[0].shape[1]
    if pool is not None:
        data, masks, var = pool.get((n, r1 - r0, cols), with_var)
    else:
        data = np.empty((n, r1 - r0, cols), np.float32)
        masks = np.empty((n, r1 - r0, cols), np.int32)
        var = np.empty((n, r1 - r0, cols), np.float32) if with_var else np.zeros((1, 1, 1), np.float32)
    for i, lay in enumerate(layouts):
        read_rows(lay, "IMAGE", r0, r1, out=data[i])
        read_rows(lay, "MASK", r0, r1, out=masks[i])
        if with_var:
            read_rows(lay, "VARIANCE", r0, r1, out=var[i])
    return data, masks, var


def _combine_one_strip(layouts, r0, r1, scales, ignore_bits, stat, clip, n_iter, use_var, pool=None, method=0):
    data, masks, var = _read_strip(layouts, r0, r1, use_var, pool)
    return combine_block(data, masks, var, scales, ignore_bits, stat, clip, n_iter, use_var, method)


def _check_inputs(paths: Sequence[str | os.PathLike], what: str) -> list[MaskedLayout]:
    if len(paths) == 0:
        raise CombineError(MSG_NO_INPUTS.format(what=what))
    layouts = [masked_layout(p) for p in paths]
    shapes = {lay.shape for lay in layouts}
    if len(shapes) > 1:
        detail = ", ".join(f"{Path(lay.path).name}: {lay.shape}" for lay in layouts)
        raise CombineError(MSG_SHAPES.format(what=what, detail=detail))
    return layouts


def _header_float(header, key: str, default: float = math.nan) -> float:
    try:
        return float(header.get(key, default))
    except (TypeError, ValueError):
        return default


def resolve_scales(paths: Sequence[str | os.PathLike], config: CombineConfig,
                   scales: Sequence[float] | None = None, headers: Sequence[Any] | None = None) -> list[float]:
    """One scale per input following ``config.exposure_scaling`` (spec §4.2 step 2).

    Raises
    ------
    CombineError
        Missing, miscounted or non-finite/zero scales.
    """
    what = config.dataset_type or config.calibration_type
    n = len(paths)
    if scales is not None:
        out = [float(s) for s in scales]
        if len(out) != n:
            raise CombineError(MSG_SCALES.format(what=what, n_scales=len(out), n_inputs=n,
                                                 scaling=config.exposure_scaling))
    elif config.exposure_scaling == "Unity":
        out = [1.0] * n
    elif config.exposure_scaling in ("ExposureTime", "DarkTime"):
        key = "EXPTIME" if config.exposure_scaling == "ExposureTime" else "DARKTIME"
        headers = headers or [read_header(p) for p in paths]
        out = [_header_float(h, key) for h in headers]
    elif config.exposure_scaling == "MeanStats":
        ignore = mask_value(("DETECTED", "BAD", "NO_DATA"))
        out = []
        for p in paths:
            lay = masked_layout(p)
            img = read_rows(lay, "IMAGE", 0, lay.shape[0])
            msk = read_rows(lay, "MASK", 0, lay.shape[0])
            out.append(clipped_stats(img[(msk & ignore) == 0])[0])
    else:
        raise CombineError(MSG_SCALES.format(what=what, n_scales=0, n_inputs=n, scaling=config.exposure_scaling))
    for p, s in zip(paths, out):
        if not math.isfinite(s) or s == 0:
            raise CombineError(MSG_BAD_SCALE.format(what=what, value=s, path=p))
    return out


def combine_lazy(paths: Sequence[str | os.PathLike], config: CombineConfig, scales: Sequence[float],
                 memory_bytes: int, threads: int = 1):
    """The combined planes as a lazy ``xarray.Dataset`` chunked in row strips.

    Variables ``image`` (float32), ``variance`` (float32), ``mask`` (int32: OR of the masks
    of the inputs used) and ``n_used`` (int16).  No NaN repair and no censoring yet: those
    need the whole image (:func:`combine_images`).

    Parameters
    ----------
    paths : sequence of path-like
        ``fits-masked`` inputs of one detector.
    config : CombineConfig
    scales : sequence of float
        One per input (:func:`resolve_scales`).
    memory_bytes : int
        Budget for the strips being combined at once (all threads).
    threads : int
        Strips combined concurrently when computed with ``num_workers=threads``.
    """
    import dask
    import dask.array as da
    import xarray as xr

    what = config.dataset_type or config.calibration_type
    layouts = _check_inputs(paths, what)
    n = len(layouts)
    rows, cols = layouts[0].shape
    use_var = n < config.max_visits_to_calc_error_from_input_variance
    strip = strip_rows_for_budget(memory_bytes, n, cols, threads, with_variance=use_var, n_rows=rows)
    sc = np.asarray(scales, dtype=np.float64)
    if sc.shape != (n,):
        raise CombineError(MSG_SCALES.format(what=what, n_scales=sc.size, n_inputs=n,
                                             scaling=config.exposure_scaling))
    ignore = mask_value(config.mask)
    stat = _stat_code(config.combine)
    planes: dict[str, list] = {"image": [], "variance": [], "mask": [], "n_used": []}
    dtypes = {"image": np.float32, "variance": np.float32, "mask": np.int32, "n_used": np.int16}
    token = dask.base.tokenize([lay.path for lay in layouts], list(sc), config, strip)
    pool = _StripBuffers()
    for r0 in range(0, rows, strip):
        r1 = min(rows, r0 + strip)
        part = dask.delayed(_combine_one_strip, pure=True, name=f"combine-strip-{r0}-{token}")(
            layouts, r0, r1, sc, ignore, stat, float(config.clip), int(config.n_iter), use_var, pool,
            _clip_code(config.clip_method))
        for k, name in enumerate(("image", "variance", "mask", "n_used")):
            planes[name].append(da.from_delayed(part[k], shape=(r1 - r0, cols), dtype=dtypes[name]))
    ds = xr.Dataset({k: (("y", "x"), da.concatenate(v, axis=0)) for k, v in planes.items()})
    ds.attrs.update(strip_rows=strip, n_inputs=n, use_input_variance=bool(use_var))
    return ds


#: Rows per chunk of the whole-product passes (NaN repair, censoring): bounded temporaries.
_CHUNK_ROWS = 256


def _repair_and_censor(image, variance, mask, n_used, config: CombineConfig) -> int:
    """Censor the mask planes, flag pixels nobody covered and repair non-finite ones; count BAD.

    Runs in row chunks, so its temporaries are a few MB whatever the detector size; only
    when a pixel needs repairing are the medians of the good pixels taken over the whole
    product (as before).
    """
    bad_bit = 1 << MASK_BITS[config.no_good_pixels_mask]
    what = config.dataset_type or config.calibration_type
    rows = image.shape[0]
    chunks = [(a, min(rows, a + _CHUNK_ROWS)) for a in range(0, rows, _CHUNK_ROWS)]
    if config.check_no_data:
        nd_bit = 1 << MASK_BITS["NO_DATA"]
        nd = sum(int(np.count_nonzero(mask[a:b] & nd_bit)) for a, b in chunks)
        if nd:
            raise CombineError(MSG_NO_DATA.format(what=what, count=nd))
    n_broken = 0
    for a, b in chunks:
        m = mask[a:b]
        if config.censor_mask_planes:
            m &= bad_bit
        m[n_used[a:b] == 0] |= bad_bit
        n_broken += int(np.count_nonzero(~(np.isfinite(image[a:b]) & np.isfinite(variance[a:b]))))
    if n_broken:
        good = np.isfinite(image) & np.isfinite(variance)
        fill_i = np.median(image[good]) if good.any() else 0.0
        fill_v = np.median(variance[good]) if good.any() else 0.0
        del good
        for a, b in chunks:
            broken = ~(np.isfinite(image[a:b]) & np.isfinite(variance[a:b]))
            if broken.any():
                image[a:b][broken] = fill_i
                variance[a:b][broken] = fill_v
                mask[a:b][broken] |= bad_bit
    return sum(int(np.count_nonzero(mask[a:b] & bad_bit)) for a, b in chunks)


def combine_images(paths: Sequence[str | os.PathLike], config: CombineConfig,
                   scales: Sequence[float] | None = None, memory_bytes: int = 512 * 2**20,
                   threads: int = 1) -> tuple[MaskedImage, CombineResult]:
    """Combine inputs into an in-memory :class:`MaskedImage` with the product header.

    Only the output planes are held whole; the inputs are streamed in strips.

    Returns
    -------
    (MaskedImage, CombineResult)
    """
    import dask.array as da

    paths = [str(p) for p in paths]
    what = config.dataset_type or config.calibration_type
    if not paths:
        raise CombineError(MSG_NO_INPUTS.format(what=what))
    headers = [read_header(p) for p in paths]
    sc = resolve_scales(paths, config, scales, headers)
    ds = combine_lazy(paths, config, sc, memory_bytes, threads)
    shape = ds["image"].shape
    out = {k: np.empty(shape, ds[k].dtype) for k in ("image", "variance", "mask", "n_used")}
    with warnings.catch_warnings():
        # the kernel returns NaN on purpose for pixels without inputs; repaired below
        warnings.simplefilter("ignore", RuntimeWarning)
        da.store([ds[k].data for k in out], list(out.values()), lock=False, scheduler="threads",
                 num_workers=max(1, int(threads)))
    n_bad = _repair_and_censor(out["image"], out["variance"], out["mask"], out["n_used"], config)
    header = product_header(headers, config, sc)
    amp_stats = _amp_qa(header, out["image"], out["mask"], config)
    img = MaskedImage(out["image"], out["mask"], out["variance"], header)
    res = CombineResult(path="", n_inputs=len(paths), shape=tuple(shape), strip_rows=int(ds.attrs["strip_rows"]),
                        n_bad=n_bad, scales=sc, amp_stats=amp_stats)
    return img, res


def combine_files(paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, config: CombineConfig,
                  scales: Sequence[float] | None = None, memory_bytes: int = 512 * 2**20,
                  threads: int = 1, extra_header: Mapping[str, Any] | None = None) -> CombineResult:
    """Combine inputs and write the ``fits-masked`` product (temporary name, then rename).

    Parameters
    ----------
    paths : sequence of path-like
        ISR-processed ``fits-masked`` inputs of one detector.
    output_path : path-like
        Product file to write.
    config : CombineConfig
    scales : sequence of float, optional
        One per input; required with ``exposure_scaling='InputList'``.
    memory_bytes : int
        Memory budget of the stack of strips (``Settings.combine_memory_bytes``).
    threads : int
        Strips combined concurrently.
    extra_header : mapping, optional
        More primary-header cards (e.g. the RUN name).
    """
    img, res = combine_images(paths, config, scales, memory_bytes, threads)
    if extra_header:
        update_header(img.header, extra_header)
    write_masked(output_path, img.image, img.mask, img.variance, img.header)
    res.path = str(output_path)
    return res


# --------------------------------------------------------------------------------------
# product header (spec §4.3)
# --------------------------------------------------------------------------------------
_PER_EXPOSURE_KEYS = {"EXPID", "OBSID", "SEQNUM", "CPFSEED", "DATE-BEG", "DATE-END", "MJD-BEG", "MJD-END",
                      "DATE-OBS", "MJD-OBS", "DATE-AVG", "MJD-AVG", "EXPTIME", "DARKTIME", "CALIBDATE"}
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "COMMENT", "HISTORY", ""}


def product_header(headers: Sequence[Mapping[str, Any]], config: CombineConfig,
                   scales: Sequence[float]) -> dict[str, Any]:
    """Header of a combined product from its inputs' headers (spec §4.3)."""
    common: dict[str, Any] = {}
    if headers:
        first = headers[0]
        for k, v in first.items():
            if k in _STRUCTURAL or k in _PER_EXPOSURE_KEYS or k.startswith("CPP_INPUT"):
                continue
            if all(k in h and h[k] == v for h in headers[1:]):
                common[k] = v
    h: dict[str, Any] = {}
    update_header(h, common)
    now = datetime.now(timezone.utc)
    local = now.astimezone()
    update_header(h, {
        "OBSTYPE": config.calibration_type,
        "CALIB_CREATION_DATETIME": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "CALIB_CREATION_DATE": local.strftime("%Y-%m-%d"),
        "CALIB_CREATION_TIME": local.strftime("%H:%M:%S %Z"),
    })
    expts = [_header_float(hd, "EXPTIME", 0.0) for hd in headers]
    timed = [i for i, hd in enumerate(headers) if hd.get("DATE-BEG")]
    mids: dict[int, str] = {}
    if timed:
        # each input's begin, end and middle (TAI), as Time arrays: one parse for all inputs, not two per input
        # (astropy's Time is ~1 ms per object; the same arithmetic element by element)
        begins = Time([str(headers[i]["DATE-BEG"]) for i in timed], scale="tai", format="isot")
        ends = begins + TimeDelta([expts[i] for i in timed], format="sec")
        with_end = [k for k, i in enumerate(timed) if headers[i].get("DATE-END")]
        if with_end:
            ends[with_end] = Time([str(headers[timed[k]]["DATE-END"]) for k in with_end], scale="tai", format="isot")
        mids = dict(zip(timed, (begins + (ends - begins) * 0.5).isot))
    for i, (hd, s) in enumerate(zip(headers, scales)):
        update_header(h, {
            f"CPP_INPUT_{i}": int(hd.get("EXPID", -1)),
            f"CPP_INPUT_DATE_{i}": mids.get(i) or "",
            f"CPP_INPUT_EXPT_{i}": expts[i],
            f"CPP_INPUT_SCALE_{i}": float(s),
        })
    if timed:
        tb = begins[int(np.argmin(begins.jd))]  # the first of equal ones, as min() would
        te = ends[int(np.argmax(ends.jd))]
        tm = tb + (te - tb) * 0.5
        update_header(h, {
            "TIMESYS": "TAI",
            "DATE-BEG": tb.isot, "MJD-BEG": float(tb.mjd),
            "DATE-END": te.isot, "MJD-END": float(te.mjd),
            "DATE-AVG": tm.isot, "MJD-AVG": float(tm.mjd),
            "DATE-OBS": tm.isot, "MJD-OBS": float(tm.mjd),
            "CALIBDATE": tm.isot,
        })
    t_visit = 0.0 if config.dataset_type == "bias" else 1.0
    update_header(h, {"EXPTIME": t_visit, "DARKTIME": t_visit})
    if config.calibration_type == "flat":
        update_header(h, {"FLATSRC": config.flat_source})
    if config.dataset_type:
        update_header(h, {"CPF_DATASET_TYPE": config.dataset_type})
    update_header(h, {"CPF_COMBINE": config.combine, "CPF_NINPUTS": len(headers)})
    if config.combine == "MEANCLIP":
        update_header(h, {"CPF_CLIP_METHOD": config.clip_method})
    return h


def _amp_qa(header, image: np.ndarray, mask: np.ndarray, config: CombineConfig, threads: int = 1
            ) -> dict[str, dict[str, float]]:
    """Per-amp QA statistics into ``header`` (DISTRIBUTION percentiles, BADPIX-NUM); the amps shared between
    ``threads`` threads (numpy's partition and the clipped statistics release the GIL; the same numbers)."""
    det = detector_from_header(header, image.shape)
    if det is None:
        return {}
    # Bootstrap products use their base type in the QA keys ("DARK", not "DARKBOOTSTRAP"):
    # a HIERARCH card must fit in 80 characters, and the longer key does not.
    from cpframe.science.robust import clipped_stats_unmasked, count_bits, percentiles

    typ = config.calibration_type.upper().replace("BOOTSTRAP", "")
    bad_bit = 1 << MASK_BITS["BAD"]
    want = sorted(set(float(p) for p in config.distribution_percentiles) | {50.0})

    def one(amp) -> tuple[dict[str, Any], dict[str, float]]:
        view, mview = image[amp.bbox], mask[amp.bbox]
        nbad = count_bits(mview, bad_bit)
        # numpy.percentile's numbers, in half its time (finite after the NaN repair; the copy is its work array)
        pct = dict(zip(want, percentiles(np.array(view, dtype=np.float32).ravel(), want, overwrite_input=True)))
        cards = {f"LSST CALIB {typ} {amp.name} DISTRIBUTION {p:g}-PCT": float(np.float32(pct[float(p)]))
                 for p in config.distribution_percentiles}
        cards[f"LSST CALIB {typ} {amp.name} BADPIX-NUM"] = nbad
        # the clipped statistics of the pixels not BAD, gathered in one pass (clipped_stats of them)
        v32 = view if view.dtype == np.float32 else np.asarray(view, np.float32)
        mean, std, _ = clipped_stats_unmasked(v32, mview, bad_bit, 3.0, 3, IQ_TO_STDEV)
        return cards, {"median": float(pct[50.0]), "mean": mean, "stdev": std, "badpix": nbad}

    if threads > 1 and len(det.amps) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, len(det.amps)), thread_name_prefix="cpframe-qa") as pool:
            done = list(pool.map(one, det.amps))
    else:
        done = [one(amp) for amp in det.amps]
    cards: dict[str, Any] = {}
    stats: dict[str, dict[str, float]] = {}
    for amp, (c, st) in zip(det.amps, done):  # amp order, as one thread writes them
        cards.update(c)
        stats[amp.name] = st
    update_header(header, cards)
    return stats
