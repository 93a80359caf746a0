"""Direct calls of the calibration types built from ISR-processed exposures:
:func:`cp_linearizer`, :func:`cp_crosstalk`, :func:`cp_cti`, :func:`cp_bfk`, :func:`cp_illumination_correction`
(ISR of every raw with the type's switches, then the type's own extract/solve).

They live above :mod:`cpframe.science.isr`, :mod:`cpframe.science.tasks` and each type's module,
because the ISR applies those types' products (linearizer, crosstalk, CTI) and so imports their
modules: a driver inside a type's module would close an import cycle.  Pipelines run the same
steps as task kinds (``cpframe.execution.kinds``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from cpframe.core.errors import ConfigError
from cpframe.science.bfk import BfkCalib, BfkConfig, bfk_solve_task
from cpframe.science.crosstalk import (
    CrosstalkCalib,
    CrosstalkConfig,
    crosstalk_extract_task,
    crosstalk_solve_task,
)
from cpframe.science.cti import CtiCalib, CtiConfig, cti_solve_task, measure_cti
from cpframe.science.imageio import read_header
from cpframe.science.isr import IsrConfig, isr_config_for
from cpframe.science.linearity import LinearityConfig, Linearizer, linearity_solve_task
from cpframe.science.ptc import PtcConfig
from cpframe.science.tasks import _isr_config, _run_isr_all, _WorkDir, extract_pairs

__all__ = ["cp_linearizer", "cp_crosstalk", "cp_cti", "cp_bfk"]


def cp_linearizer(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
                  calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
                  isr_config: Any = None, config: LinearityConfig | Mapping[str, Any] | None = None,
                  ptc_config: Any = None, workers: int = 1) -> Linearizer:
    """cpLinearizer for one detector: bootstrap ISR of a flat-pair ramp (+ defects, crosstalk when
    given), pair extraction (PTC extract), per-amp solve -> linearizer json.

    Parameters
    ----------
    raw_paths : sequence of path-like
        Flat pairs of one detector (equal exposure times pair up).
    output_path : path-like
        The linearizer (json).
    calibs : mapping, optional
        ``defects``, ``crosstalk`` paths for the ISR.
    work_dir : path-like, optional
        Keep the ISR intermediates there (default: a scratch directory, removed).
    isr_config, ptc_config : optional
        Override the ISR (default: :func:`isr_config_for('linearizer')`) and extract settings.
    config : LinearityConfig or mapping
        Solve settings (default Spline).
    workers : int
        ISR runs in parallel (threads).
    """
    calibs = dict(calibs or {})
    icfg = (_isr_config(isr_config) if isr_config is not None else
            isr_config_for("linearizer", do_defect=bool(calibs.get("defects")),
                           do_crosstalk=bool(calibs.get("crosstalk"))))
    assert isinstance(icfg, IsrConfig)
    pcfg = ptc_config if isinstance(ptc_config, PtcConfig) else PtcConfig.from_dict(
        ptc_config if ptc_config is not None else {"numEdgeSuspect": 20})
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, None)
        meas, meta = extract_pairs(exposures, pcfg, workers, "cpLinearizer")
        return linearity_solve_task(meas, output_path, config, meta=meta)


def cp_crosstalk(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
                 calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
                 isr_config: Any = None, config: CrosstalkConfig | Mapping[str, Any] | None = None,
                 workers: int = 1) -> CrosstalkCalib:
    """cpCrosstalk for one detector: ISR (no crosstalk; gains when ``calibs['ptc']``; defects when
    given) of spot / bright-source exposures, extract, solve, filter -> crosstalk json."""
    calibs = dict(calibs or {})
    icfg = (_isr_config(isr_config) if isr_config is not None else
            isr_config_for("crosstalk", do_defect=bool(calibs.get("defects")),
                           do_apply_gains=bool(calibs.get("ptc")), do_bootstrap=not calibs.get("ptc")))
    cfg = config if isinstance(config, CrosstalkConfig) else CrosstalkConfig.from_dict(config)
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, None)
        meas = [crosstalk_extract_task(e.path, cfg) for e in exposures]
        h = read_header(exposures[0].path)
        meta = {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}
        return crosstalk_solve_task(meas, output_path, cfg, meta=meta)


def cp_cti(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
           calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
           isr_config: Any = None, config: CtiConfig | Mapping[str, Any] | None = None,
           workers: int = 1) -> CtiCalib:
    """cpCti for one detector: ISR with CTI statistics (gains and linearity from ``calibs['linearizer']``,
    as cp_pipe's ``useGainsFrom: LINEARIZER``; defects when given), read the statistics, solve -> cti json."""
    calibs = dict(calibs or {})
    icfg = (_isr_config(isr_config) if isr_config is not None else
            isr_config_for("cti", do_defect=bool(calibs.get("defects"))))
    if not icfg.do_cti_statistics:
        raise ConfigError("cpCti needs the ISR's CTI statistics; set doCtiStatistics: true.")
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, None)
        meas = []
        for e in exposures:
            h = read_header(e.path)
            meas.append(measure_cti(h, list(e.amp_stats), e.exposure_id))
        h = read_header(exposures[0].path)
        meta = {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}
        return cti_solve_task(meas, output_path, config, meta=meta)


def cp_bfk(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
           calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
           isr_config: Any = None, ptc_config: PtcConfig | Mapping[str, Any] | None = None,
           config: BfkConfig | Mapping[str, Any] | None = None, workers: int = 1) -> BfkCalib:
    """cpBfk for one detector: bootstrap ISR of a flat-pair ramp, a FULLCOVARIANCE PTC of its own
    (cp_pipe's ``bfkPtc``, written beside the output as ``<stem>_bfkPtc.fits``), then the kernel
    solve -> bfk json (cpframe/science/bfk.py).

    ``ptc_config`` overrides the PTC options (``ptcFitType`` defaults to FULLCOVARIANCE).
    """
    from pathlib import Path

    from cpframe.science.tasks import cp_ptc

    pcfg = ptc_config if isinstance(ptc_config, PtcConfig) else PtcConfig.from_dict(
        {"ptcFitType": "FULLCOVARIANCE", **dict(ptc_config or {})})
    icfg = (_isr_config(isr_config) if isr_config is not None else
            isr_config_for("bfk", do_defect=bool(calibs and calibs.get("defects"))))
    out = Path(output_path)
    ptc_path = out.with_name(out.stem + "_bfkPtc.fits")
    cp_ptc(raw_paths, ptc_path, calibs=calibs, work_dir=work_dir, isr_config=icfg, config=pcfg,
           workers=workers)
    return bfk_solve_task(ptc_path, output_path, config)


def cp_illumination_correction(raw_paths: Sequence[str | os.PathLike], output_path: str | os.PathLike, *,
                               calibs: Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
                               isr_config: Any = None, config: Any = None, workers: int = 1) -> dict:
    """cpIlluminationCorrection for one detector and filter: ISR of dithered science raws with the dome flat
    (``calibs``: ``flat``, ``ptc``, and bias/dark/defects when given), stars measured on each, the
    super-star fit -> ``illuminationCorrection`` (cpframe/science/illumination.py, docs/illumination.md)."""
    from pathlib import Path

    from cpframe.science.illumination import IlluminationConfig, illumination_task, measure_stars, write_catalog
    from cpframe.science.imageio import read_masked

    calibs = dict(calibs or {})
    cfg = config if isinstance(config, IlluminationConfig) else IlluminationConfig.from_dict(config)
    icfg = (_isr_config(isr_config) if isr_config is not None else
            isr_config_for("science", do_bias="bias" in calibs, do_dark="dark" in calibs,
                           do_defect="defects" in calibs))
    with _WorkDir(work_dir, output_path) as work:
        exposures = _run_isr_all(raw_paths, work, icfg, calibs, workers, None)
        cats = []
        for e in exposures:
            img = read_masked(e.path)
            cat = measure_stars(img, cfg, exposure=e.exposure_id, detector=int(img.header.get("DETECTOR", 0)),
                                physical_filter=str(img.header.get("FILTER", "")))
            cats.append(write_catalog(Path(work) / f"stars_{e.exposure_id}.json", cat))
        return illumination_task(cats, output_path, cfg)
