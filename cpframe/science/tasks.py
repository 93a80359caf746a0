"""Science tasks on files: what the submit area's Dask graph calls (docs/algorithms.md "Task API").

Every task is a plain function of paths and small values that returns a small,
picklable result; none touches the registry or a cluster.  Units of work follow spec
algorithms.md §11:

=====================================  ===============================================
task                                   unit of work
=====================================  ===============================================
:func:`isr_task`                       exposure x detector (writes an ISR intermediate)
:func:`dark_cr_task`                   exposure x detector (CpDark: CR mask, clear BAD)
:func:`flat_measure_task`              exposure x detector (background level + count)
:func:`flat_normalize_task`            instrument x physical_filter (a reduce)
:func:`combine_task`                   detector (x physical_filter)
:func:`defects_measure_task`           detector (x physical_filter), one combined calib
:func:`defects_merge_task`             detector (OR over bias/dark/flat)
:func:`ptc_extract_task`               one flat pair x detector
:func:`ptc_solve_task`                 detector
=====================================  ===============================================

The drivers (:func:`cp_bias`, :func:`cp_dark`, :func:`cp_flat`, the three bootstraps,
:func:`cp_defects`, :func:`cp_ptc`) chain these for one detector from lists of raw
paths, which documents the whole flow and is what the tests and benchmarks use.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.camera.models import Camera
from cpframe.core.errors import UserInputError
from cpframe.science.combine import (
    CombineConfig,
    CombineError,
    CombineResult,
    combine_config_for,
    combine_files,
)
from cpframe.science.defects import (
    DefectMeasurement,
    DefectsConfig,
    DefectsResult,
    measure_defects,
    merge_defects,
)
from cpframe.science.flat_measure import (
    FlatMeasureConfig,
    FlatMeasurement,
    FlatNormalizeConfig,
    FlatScales,
    flat_measure_task,
    flat_normalize_task,
    flat_scales,
    prepass_flat_measure,
)
from cpframe.science.imageio import (
    MASK_BITS,
    read_header,
    read_masked,
    read_raw,
    write_masked,
)
from cpframe.science.isr import IsrConfig, isr_config_for, load_calibs, run_isr
from cpframe.science.ptc import (
    PtcConfig,
    PtcPairMeasurement,
    PtcResult,
    extract_pair,
    pair_exposures,
    solve_ptc,
)
from cpframe.science.configs.tasks import (  # noqa: F401 (defined there, importable without the science stack)
    CrConfig,
    DEFAULT_FUSED_MEMORY_BYTES,
)

__all__ = [
    "extract_pairs",
    "ExposureStats",
    "CrResult",
    "CrConfig",
    "FlatMeasurement",
    "FlatMeasureConfig",
    "FlatNormalizeConfig",
    "FlatScales",
    "ProductResult",
    "isr_task",
    "dark_cr_task",
    "flat_measure_task",
    "flat_normalize_task",
    "combine_task",
    "fused_combine_task",
    "defects_measure_task",
    "defects_merge_task",
    "ptc_pairs",
    "ptc_extract_task",
    "ptc_solve_task",
    "cp_bias",
    "cp_dark",
    "cp_flat",
    "cp_bias_bootstrap",
    "cp_dark_bootstrap",
    "cp_flat_bootstrap",
    "cp_defects",
    "cp_ptc",
    "IsrConfig",
    "CombineConfig",
    "DefectsConfig",
    "PtcConfig",
    "isr_config_for",
    "combine_config_for",
]

DEFAULT_MEMORY_BYTES = 512 * 2**20


# --------------------------------------------------------------------------------------
# result types (small, picklable)
# --------------------------------------------------------------------------------------
@dataclass
class ExposureStats:
    """What :func:`isr_task` returns for one exposure x detector."""

    path: str
    """The ISR intermediate written (fits-masked)."""
    raw_path: str
    instrument: str
    detector: int
    exposure_id: int
    observation_type: str
    """Header IMGTYPE: bias, dark, flat, science..."""
    physical_filter: str
    exposure_time: float
    """Seconds."""
    dark_time: float
    """Seconds."""
    date_beg: str
    """ISO TAI."""
    date_end: str
    units: str
    """``adu`` or ``electron``."""
    amp_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per amp: gain, read_noise, overscan_noise_adu, overscan_median_adu, mean, median, stdev, n_sat, n_bad."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CrResult:
    """What :func:`dark_cr_task` returns."""

    path: str
    exposure_id: int
    n_cr_pixels: int
    """Pixels flagged CR after growing."""
    n_cosmic_rays: int
    """Connected CR groups found before growing."""


@dataclass
class ProductResult:
    """What a driver (:func:`cp_bias`...) returns."""

    path: str
    n_inputs: int
    combine: CombineResult | None = None
    exposures: list[ExposureStats] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# ISR
# --------------------------------------------------------------------------------------
def _isr_config(config: IsrConfig | Mapping[str, Any] | None) -> IsrConfig:
    if config is None:
        return IsrConfig()
    if isinstance(config, IsrConfig):
        return config
    return IsrConfig.from_dict(config)


def isr_task(raw_path: str | os.PathLike, output_path: str | os.PathLike,
             config: IsrConfig | Mapping[str, Any] | None = None,
             calibs: Mapping[str, Any] | None = None, *,
             camera: Camera | None = None, detector: int | None = None) -> ExposureStats:
    """ISR of one raw file -> an uncompressed fits-masked intermediate at ``output_path``.

    Parameters
    ----------
    raw_path : path-like
        A ``fits-raw`` file.
    output_path : path-like
        Where to write the intermediate (temporary name, then rename).
    config : IsrConfig or mapping, optional
        ISR switches; a mapping is read with :meth:`IsrConfig.from_dict` (``doBias``...).
    calibs : mapping, optional
        Calibration file paths: ``bias``, ``dark``, ``flat`` (fits-masked), ``defects``
        (ecsv-defects), ``ptc`` (fits-ptc), ``crosstalk``, ``linearizer``.
    camera : Camera, optional
        Camera model; by default from the raw header (``INSTRUME``, ``CAMSCALE``).
    detector : int, optional
        Expected detector id; checked against the raw header when given.

    Returns
    -------
    ExposureStats

    Raises
    ------
    IsrError, FileFormatError, ConfigError
    """
    cfg = _isr_config(config)
    raw, img, stats = isr_image(raw_path, cfg, calibs, camera=camera, detector=detector)
    write_masked(output_path, img.image, img.mask, img.variance, img.header)
    return _exposure_stats(str(output_path), str(raw_path), img.header, raw.camera.name, cfg.units, stats)


def isr_image(raw_path: str | os.PathLike, config: IsrConfig, calibs: Mapping[str, Any] | None = None, *,
              camera: Camera | None = None, detector: int | None = None) -> tuple[Any, Any, dict]:
    """(raw, ISR image in memory, per-amp statistics) of one raw file: what :func:`isr_task` writes, unwritten
    (a fused verifyStats quantum measures it in memory); raises as :func:`isr_task`."""
    raw = read_raw(raw_path, camera)
    if detector is not None and int(detector) != raw.detector.id:
        raise UserInputError(f"{raw_path}: raw is for detector {raw.detector.id}, the task was asked for "
                             f"detector {detector}. Check the raw paths given for this detector.")
    img, stats = run_isr(raw, config, load_calibs(calibs))
    return raw, img, stats


def _exposure_stats(path: str, raw_path: str, h: Mapping[str, Any], camera_name: str, units: str,
                    stats: Mapping[str, Any]) -> ExposureStats:
    return ExposureStats(
        path=path, raw_path=raw_path, instrument=str(h.get("INSTRUME", camera_name)),
        detector=int(h.get("DETECTOR", -1)), exposure_id=int(h.get("EXPID", 0)),
        observation_type=str(h.get("IMGTYPE", "")),
        physical_filter=str(h.get("FILTER", "")), exposure_time=_f(h.get("EXPTIME")),
        dark_time=_f(h.get("DARKTIME")), date_beg=str(h.get("DATE-BEG", "")), date_end=str(h.get("DATE-END", "")),
        units=units, amp_stats={a: asdict(s) for a, s in stats.items()},
    )


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------
# CpDark: cosmic rays
# --------------------------------------------------------------------------------------


def cr_config_of(value: CrConfig | Mapping[str, Any] | bool | None) -> CrConfig:
    """CpDark settings from a :class:`CrConfig`, a mapping of its fields, or True / None (the defaults)."""
    if isinstance(value, CrConfig):
        return value
    return CrConfig(**dict(value)) if isinstance(value, Mapping) else CrConfig()


def dark_cr_task(input_path: str | os.PathLike, output_path: str | os.PathLike | None = None,
                 config: CrConfig | Mapping[str, Any] | None = None) -> CrResult:
    """CpDark per exposure: mask cosmic rays (``CR``, grown), clear ``BAD``; rewrite the file.

    ``output_path`` defaults to ``input_path`` (replaced atomically).
    """
    from cpframe.science.defects import find_cosmic_rays

    cfg = cr_config_of(config)
    img = read_masked(input_path)
    cr, n_groups = find_cosmic_rays(img.image, img.variance, img.mask, cfg)
    img.mask |= np.where(cr, np.int32(1 << MASK_BITS["CR"]), np.int32(0))
    img.mask &= ~np.int32(1 << MASK_BITS["BAD"])
    out = str(output_path or input_path)
    write_masked(out, img.image, img.mask, img.variance, img.header)
    return CrResult(path=out, exposure_id=int(img.header.get("EXPID", 0)), n_cr_pixels=int(cr.sum()),
                    n_cosmic_rays=int(n_groups))


# --------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------
def combine_task(input_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike,
                 config: CombineConfig | Mapping[str, Any], scales: Sequence[float] | None = None,
                 memory_bytes: int | None = None, threads: int = 1,
                 extra_header: Mapping[str, Any] | None = None) -> CombineResult:
    """Combine ISR intermediates of one detector into a fits-masked product.

    Parameters
    ----------
    input_paths : sequence of path-like
        fits-masked inputs (ISR intermediates) of one detector (and filter).
    output_path : path-like
        Product file.
    config : CombineConfig or mapping
        A mapping is read with :meth:`CombineConfig.from_dict` (``calibrationType``, ``nIter``...).
    scales : sequence of float, optional
        One per input; required for ``exposureScaling: InputList`` (flats: E[e] from
        :func:`flat_normalize_task`).
    memory_bytes : int, optional
        Memory budget for the strips (``Settings.combine_memory_bytes``; default 512 MiB).
    threads : int
        Strips combined concurrently (keep 1 inside a one-thread Dask worker).
    extra_header : mapping, optional
        More primary-header cards.
    """
    cfg = config if isinstance(config, CombineConfig) else CombineConfig.from_dict(config)
    return combine_files(input_paths, output_path, cfg, scales=scales,
                         memory_bytes=int(memory_bytes or DEFAULT_MEMORY_BYTES), threads=threads,
                         extra_header=extra_header)


# --------------------------------------------------------------------------------------
# defects
# --------------------------------------------------------------------------------------
def defects_measure_task(calib_path: str | os.PathLike, config: DefectsConfig | Mapping[str, Any] | None = None,
                         gains: Mapping[str, float] | None = None) -> DefectMeasurement:
    """Measure hot/cold pixels on one combined calibration (bias, dark or flat; spec §8).

    The image type comes from the header ``IMGTYPE``/``OBSTYPE``.  ``gains`` (e-/adu per
    amp) convert the dark-current threshold; default: the header's ``LSST ISR GAIN``.
    """
    cfg = config if isinstance(config, DefectsConfig) else DefectsConfig.from_dict(config)
    return measure_defects(read_masked(calib_path), cfg, gains=gains, path=str(calib_path))


def defects_merge_task(measurements: Sequence[DefectMeasurement], output_path: str | os.PathLike,
                       config: DefectsConfig | Mapping[str, Any] | None = None,
                       manual_defects_path: str | os.PathLike | None = None,
                       meta: Mapping[str, Any] | None = None) -> DefectsResult:
    """OR-merge measurements over bias/dark/flat (+ manual defects, edges) -> ecsv-defects file."""
    cfg = config if isinstance(config, DefectsConfig) else DefectsConfig.from_dict(config)
    return merge_defects(measurements, output_path, cfg, manual_defects_path=manual_defects_path, meta=meta)


# --------------------------------------------------------------------------------------
# PTC
# --------------------------------------------------------------------------------------
def ptc_pairs(exposures: Sequence[ExposureStats]) -> list[tuple[ExposureStats, ExposureStats]]:
    """Pair flat exposures of one detector by equal exposure time (first two of each time)."""
    return pair_exposures(exposures, key=lambda e: (e.exposure_time, e.exposure_id))


def ptc_extract_task(path1: str | os.PathLike, path2: str | os.PathLike,
                     config: PtcConfig | Mapping[str, Any] | None = None,
                     overscan_noise: Mapping[str, float] | None = None) -> PtcPairMeasurement:
    """PTC extract for one pair of ISR intermediates (bootstrap ISR, adu).

    ``overscan_noise`` (adu per amp) defaults to the mean of the two headers'
    ``LSST ISR OVERSCAN RESIDUAL SERIAL STDEV`` values.
    """
    cfg = config if isinstance(config, PtcConfig) else PtcConfig.from_dict(config)
    return extract_pair(read_masked(path1), read_masked(path2), cfg, overscan_noise=overscan_noise)


def ptc_solve_task(measurements: Sequence[PtcPairMeasurement], output_path: str | os.PathLike,
                   config: PtcConfig | Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None) -> PtcResult:
    """Fit gain, read noise and turnoff per amp (EXPAPPROXIMATION) -> fits-ptc file."""
    cfg = config if isinstance(config, PtcConfig) else PtcConfig.from_dict(config)
    return solve_ptc(measurements, output_path, cfg, meta=meta)


# --------------------------------------------------------------------------------------
# drivers: one detector, lists of raws -> product
# --------------------------------------------------------------------------------------
class _WorkDir:
    """A scratch directory for ISR intermediates, removed afterwards unless given by the caller."""

    def __init__(self, work_dir: str | os.PathLike | None, output_path: str | os.PathLike):
        self.given = work_dir is not None
        if self.given:
            self.path = Path(work_dir)
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            parent = Path(output_path).parent
            parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=".cpframe-isr-", dir=parent))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.given:
            shutil.rmtree(self.path, ignore_errors=True)


def _isr_item(item) -> ExposureStats:
    """One ISR (+ optional CpDark CR step) of a driver; module level so process pools can run it."""
    raw_path, out_path, config, calibs, cr_config = item
    st = isr_task(raw_path, out_path, config, calibs)
    if cr_config is not None:
        dark_cr_task(st.path, None, cr_config)
    return st


def _run_isr_all(raw_paths: Sequence[str | os.PathLike], work: Path, config: IsrConfig,
                 calibs: Mapping[str, Any] | None, workers: int, cr_config: CrConfig | Mapping | bool | None = None,
                 executor: str = "thread") -> list[ExposureStats]:
    """ISR of every raw into ``work``; ``workers`` at a time in threads or (``executor='process'``) processes."""
    if not raw_paths:
        raise CombineError("no raw exposures given; select at least one raw of this detector.")
    if cr_config is not None:
        cr_config = cr_config_of(cr_config)
    calibs = {k: (str(v) if isinstance(v, (str, os.PathLike)) else v) for k, v in (calibs or {}).items()}
    items = [(str(p), str(work / f"isr_{i:05d}_{Path(p).stem}.fits"), config, calibs, cr_config)
             for i, p in enumerate(raw_paths)]
    return _per_raw(_isr_item, [(x,) for x in items], workers, executor)


def _per_raw(fn, items: Sequence[tuple], workers: int, executor: str) -> list:
    """``fn(*item)`` of every item in order; ``workers`` at a time in threads or (``executor='process'``)
    processes.  ``fn`` is a module-level function (a process pool sends it by name)."""
    if executor not in ("thread", "process"):
        raise UserInputError(f"executor {executor!r}: use 'thread' or 'process'.")
    if workers > 1 and len(items) > 1:
        if executor == "process":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["cpframe.science.tasks"])
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
                return list(ex.map(fn, *zip(*items)))
        with ThreadPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(fn, *zip(*items)))
    return [fn(*x) for x in items]


def fused_combine_task(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike,
                       isr_config: IsrConfig | Mapping[str, Any] | None, combine_config: CombineConfig | Mapping[str, Any],
                       calibs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                       scales: Sequence[float] | None = None, memory_bytes: int | None = None,
                       extra_header: Mapping[str, Any] | None = None,
                       prepasses: Sequence[Mapping[str, Any]] | None = None, threads: int = 1) -> ProductResult:
    """ISR of every raw + combine in one streamed pass (:mod:`cpframe.science.fused`): no intermediates.

    ``calibs`` is one mapping for every raw or one per raw; ``prepasses``, one
    :func:`cpframe.science.fused_tasks.prepass_task` result per raw when they were made elsewhere
    (the raws' ISR quanta); ``threads``: threads streaming the blocks.  The exposures returned have
    ``path=""`` (nothing was written for them).

    Raises
    ------
    FusedUnsupported
        Settings the fused path does not implement (:func:`cpframe.science.fused.fused_unsupported`).
    """
    from cpframe.science.fused import isr_combine

    icfg = _isr_config(isr_config)
    ccfg = combine_config if isinstance(combine_config, CombineConfig) else CombineConfig.from_dict(combine_config)
    if isinstance(calibs, Mapping) or calibs is None:
        cp = _str_calibs(calibs)
    else:
        cp = [_str_calibs(c) for c in calibs]
    _, res, exps = isr_combine(raw_paths, output_path, icfg, ccfg, cp, scales=scales,
                               memory_bytes=int(memory_bytes or DEFAULT_FUSED_MEMORY_BYTES), extra_header=extra_header,
                               prepasses=prepasses, threads=threads)
    exposures = [_exposure_stats("", e.raw_path, e.header, "", e.units, e.stats) for e in exps]
    return ProductResult(path=str(output_path), n_inputs=len(exposures), combine=res, exposures=exposures,
                         extra={"fused": True})


def _str_calibs(calibs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, (str, os.PathLike)) else v) for k, v in (calibs or {}).items()
            if v is not None}


def _product(product: str, raw_paths, output_path, *, calibs, work_dir, isr_config, combine_config,
             memory_bytes, threads, workers, executor="thread", cr_config=None, measure_flats=False,
             fused=None) -> ProductResult:
    """ISR of the raws, CpDark's cosmic rays (``cr_config``) or the flat measurement and normalisation
    (``measure_flats``), and the combine: streamed without ISR files (fused) unless ``work_dir`` is given,
    ``fused=False``, or the settings need the unfused path."""
    icfg = _isr_config(isr_config) if isr_config is not None else isr_config_for(product)
    ccfg = (combine_config if isinstance(combine_config, CombineConfig)
            else CombineConfig.from_dict(combine_config) if combine_config is not None
            else combine_config_for(product))
    if fused is None:  # the fused path unless intermediates are wanted (work_dir)
        from cpframe.science.fused import fused_unsupported

        fused = work_dir is None and not fused_unsupported(icfg, ccfg)
    if fused:
        if not raw_paths:
            raise CombineError("no raw exposures given; select at least one raw of this detector.")
        per_raw = list(calibs) if isinstance(calibs, (list, tuple)) else [calibs] * len(raw_paths)
        # CpDark's cosmic rays or CpFlatMeasure: on each raw's ISR in memory, raws in parallel as the
        # unfused ISR runs them; the combine then streams the raws with their prepasses
        items = [(str(p), icfg, _str_calibs(c)) for p, c in zip(raw_paths, per_raw)]
        prepasses = scales = None
        if measure_flats:
            measured = _per_raw(prepass_flat_measure, items, workers, executor)
            keep, scales = flat_scales(measured)  # the exposures the normalisation keeps, as unfused
            raw_paths, per_raw = [raw_paths[i] for i in keep], [per_raw[i] for i in keep]
            prepasses = [measured[i].prepass for i in keep]
        elif cr_config is not None:
            from cpframe.science.fused import prepass_cosmic_rays

            cr = cr_config_of(cr_config)
            prepasses = _per_raw(prepass_cosmic_rays, [(*x, cr) for x in items], workers, executor)
        return fused_combine_task(raw_paths, output_path, icfg, ccfg, per_raw, scales=scales,
                                  memory_bytes=memory_bytes, prepasses=prepasses,
                                  threads=ccfg.fused_threads or threads)
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, cr_config, executor)
        scales = None
        if measure_flats:
            keep, scales = flat_scales([flat_measure_task(e.path) for e in exposures])
            exposures = [exposures[i] for i in keep]
        res = combine_task([e.path for e in exposures], output_path, ccfg, scales=scales,
                           memory_bytes=memory_bytes, threads=threads)
    return ProductResult(path=str(output_path), n_inputs=len(exposures), combine=res, exposures=exposures)


def cp_bias(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
            calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
            isr_config: IsrConfig | Mapping[str, Any] | None = None,
            combine_config: CombineConfig | Mapping[str, Any] | None = None,
            memory_bytes: int | None = None, threads: int = 1, workers: int = 1,
            executor: str = "thread", fused: bool | None = None) -> ProductResult:
    """cpBias for one detector: ISR (gains from ``calibs['ptc']``) + MEANCLIP combine -> ``bias``.

    Parameters
    ----------
    raw_paths : sequence of path-like
        Bias raws of one detector.
    output_path : path-like
        Product file (fits-masked).
    calibs : mapping, optional
        Calibration paths for ISR (``ptc``; ``crosstalk``/``linearizer`` when switched on).
    work_dir : path-like, optional
        Where ISR intermediates go (kept); default: a scratch directory next to the
        output, removed afterwards.
    isr_config, combine_config : optional
        Override the product's defaults (:func:`isr_config_for`, :func:`combine_config_for`).
    memory_bytes : int, optional
        Combine memory budget.
    threads : int
        Combine threads.
    workers : int
        ISR runs in parallel.
    executor : {"thread", "process"}
        How ISR runs in parallel: threads (default) or processes (forkserver; pays the
        start-up of each process, wins on many full-size raws because ISR holds the GIL
        part of the time).
    fused : bool, optional
        ISR and combine in one streamed pass without intermediates
        (:func:`fused_combine_task`).  Default (None): fused unless ``work_dir`` is given
        (intermediates wanted) or the settings need the unfused path; ``False`` forces the
        unfused path (ISR files, then the combine), ``True`` requires the fused one.
    """
    return _product("bias", raw_paths, output_path, calibs=calibs, work_dir=work_dir, isr_config=isr_config,
                    combine_config=combine_config, memory_bytes=memory_bytes, threads=threads, workers=workers,
                    executor=executor, fused=fused)


def cp_bias_bootstrap(raw_paths, output_path, *, calibs=None, work_dir=None, isr_config=None, combine_config=None,
                      memory_bytes=None, threads=1, workers=1, executor="thread", fused=None) -> ProductResult:
    """biasBootstrap: bootstrap ISR (overscan, adu) + MEANCLIP combine; no calibrations needed."""
    return _product("biasBootstrap", raw_paths, output_path, calibs=calibs, work_dir=work_dir,
                    isr_config=isr_config, combine_config=combine_config, memory_bytes=memory_bytes,
                    threads=threads, workers=workers, executor=executor, fused=fused)


def cp_dark(raw_paths, output_path, *, calibs=None, work_dir=None, isr_config=None, combine_config=None,
            memory_bytes=None, threads=1, workers=1, cr_config: CrConfig | Mapping | None = None,
            executor="thread", fused=None) -> ProductResult:
    """cpDark: ISR (gains, bias, defects) + CpDark CR masking + DarkTime-scaled combine -> e-/s.

    ``calibs`` needs ``ptc``, ``bias`` and ``defects``.
    """
    return _product("dark", raw_paths, output_path, calibs=calibs, work_dir=work_dir, isr_config=isr_config,
                    combine_config=combine_config, memory_bytes=memory_bytes, threads=threads, workers=workers,
                    executor=executor, cr_config=cr_config if cr_config is not None else True, fused=fused)


def cp_dark_bootstrap(raw_paths, output_path, *, calibs=None, work_dir=None, isr_config=None,
                      combine_config=None, memory_bytes=None, threads=1, workers=1, executor="thread", fused=None) -> ProductResult:
    """darkBootstrap: bootstrap ISR minus ``calibs['bias']`` (the biasBootstrap), no CR step -> adu/s."""
    return _product("darkBootstrap", raw_paths, output_path, calibs=calibs, work_dir=work_dir,
                    isr_config=isr_config, combine_config=combine_config, memory_bytes=memory_bytes,
                    threads=threads, workers=workers, executor=executor, fused=fused)


def cp_flat(raw_paths, output_path, *, calibs=None, work_dir=None, isr_config=None, combine_config=None,
            memory_bytes=None, threads=1, workers=1, executor="thread", fused=None) -> ProductResult:
    """cpFlat (one detector, one filter): ISR (gains, bias, dark) + measure + normalise + combine.

    With one detector the normalisation makes the flat average about 1.  For a whole focal
    plane run :func:`flat_measure_task` on every exposure x detector, one
    :func:`flat_normalize_task` over all of them, then :func:`combine_task` per detector.
    """
    return _product("flat", raw_paths, output_path, calibs=calibs, work_dir=work_dir, isr_config=isr_config,
                    combine_config=combine_config, memory_bytes=memory_bytes, threads=threads, workers=workers,
                    executor=executor, measure_flats=True, fused=fused)


def cp_flat_bootstrap(raw_paths, output_path, *, calibs=None, work_dir=None, isr_config=None,
                      combine_config=None, memory_bytes=None, threads=1, workers=1, executor="thread", fused=None) -> ProductResult:
    """flatBootstrap: bootstrap ISR minus bias/dark bootstraps + measure + normalise + combine (adu)."""
    return _product("flatBootstrap", raw_paths, output_path, calibs=calibs, work_dir=work_dir,
                    isr_config=isr_config, combine_config=combine_config, memory_bytes=memory_bytes,
                    threads=threads, workers=workers, executor=executor, measure_flats=True, fused=fused)


def cp_defects(bias_paths: Sequence[str | os.PathLike], dark_paths: Sequence[str | os.PathLike],
               flat_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
               config: DefectsConfig | Mapping[str, Any] | None = None,
               manual_defects_path: str | os.PathLike | None = None,
               gains: Mapping[str, float] | None = None, meta: Mapping[str, Any] | None = None) -> DefectsResult:
    """cpDefects for one detector from combined bootstrap calibrations (any of the lists may be empty).

    Measures each combined bias/dark/flat (spec §8), keeps per type the one made from the
    most exposures, OR-merges them (+ manual defects, + edges) and writes ecsv-defects.
    """
    cfg = config if isinstance(config, DefectsConfig) else DefectsConfig.from_dict(config)
    meas = [defects_measure_task(p, cfg, gains) for p in [*bias_paths, *dark_paths, *flat_paths]]
    return defects_merge_task(meas, output_path, cfg, manual_defects_path=manual_defects_path, meta=meta)


def cp_ptc(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
           calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
           isr_config: IsrConfig | Mapping[str, Any] | None = None,
           config: PtcConfig | Mapping[str, Any] | None = None, workers: int = 1,
           executor: str = "thread") -> PtcResult:
    """cpPtc for one detector: bootstrap ISR (+ defects if given) of flat pairs, extract, solve -> fits-ptc."""
    icfg = _isr_config(isr_config) if isr_config is not None else isr_config_for(
        "ptc", do_defect=bool(calibs and calibs.get("defects")))
    pcfg = config if isinstance(config, PtcConfig) else PtcConfig.from_dict(config)
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, None, executor)
        meas, meta = extract_pairs(exposures, pcfg, workers, "cpPtc")
        return ptc_solve_task(meas, output_path, pcfg, meta=meta)


def extract_pairs(exposures: Sequence[ExposureStats], config: PtcConfig, workers: int,
                  product: str) -> tuple[list[PtcPairMeasurement], dict[str, Any]]:
    """The PTC measurement of every pair of equal exposure time among ISR-processed ``exposures``
    (``workers`` threads), and the header cards a product's metadata keeps (cpPtc, cpLinearizer).

    Raises
    ------
    UserInputError
        No pair (``product`` names the calibration being built).
    """
    pairs = ptc_pairs(exposures)
    if not pairs:
        raise UserInputError(f"{product}: no pair of flats with equal exposure time among {len(exposures)} "
                             "exposure(s); take the flats in pairs.")

    def one(pair):
        a, b = pair
        noise = {amp: 0.5 * (a.amp_stats[amp]["overscan_noise_adu"] + b.amp_stats[amp]["overscan_noise_adu"])
                 for amp in a.amp_stats}
        return ptc_extract_task(a.path, b.path, config, overscan_noise=noise)

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            meas = list(ex.map(one, pairs))
    else:
        meas = [one(p) for p in pairs]
    h = read_header(exposures[0].path)
    return meas, {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}
