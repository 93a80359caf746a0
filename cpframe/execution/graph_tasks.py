"""The worker side of a plan: what one Dask task runs for one quantum.

:func:`cpframe.execution.graph.build_graph` wraps :func:`run_quantum` once per quantum.  A worker
gets a small picklable :class:`QuantumSpec` (paths, settings built at plan time) and the
results of the quanta it reads, calls the science function of the task kind
(:mod:`cpframe.science.tasks`, :mod:`cpframe.verify`), writes its outputs to the scratch paths
named in the spec (every writer there writes a temporary file and renames it, so a file
that exists is complete), and returns a small :class:`QuantumResult`.  Workers never
touch the registry: the driver registers the files (:mod:`cpframe.execution.execute`).

A worker killed half-way leaves at most a temporary file; Dask runs the quantum again
elsewhere and the rerun writes the same paths.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cpframe.core.errors import ExecutionError

__all__ = ["QuantumSpec", "QuantumResult", "run_quantum"]


@dataclass(frozen=True)
class QuantumSpec:
    """Everything a worker needs for one quantum (built by the driver; no registry objects)."""

    key: str
    """The quantum's Dask key."""
    kind: str
    """Task kind."""
    task: str
    """Task label."""
    data_id: Mapping[str, Any]
    """Quantum data ID (plain dict)."""
    raw_path: str | None
    """Raw file (ISR)."""
    calib_paths: Mapping[str, Sequence[str]]
    """Calibration type -> absolute file paths."""
    outputs: tuple[tuple[str, str, Mapping[str, Any], bool], ...]
    """(scratch path, dataset type, data ID, registered) per output."""
    settings: Mapping[str, Any]
    """Science-side settings built at plan time."""
    input_types: tuple[str, ...] = ()
    """Dataset type of each input group, in order."""
    input_counts: tuple[int, ...] = ()
    """Number of upstream results in each input group."""
    fused_raws: tuple[str, ...] = ()
    """Kind ``isrCombine``: the raws of the ISR quanta fused into this combine, by exposure."""
    fused_calibs: tuple[Mapping[str, str], ...] = ()
    """Kind ``isrCombine``: each raw's ISR calibrations (type -> path)."""
    fused_isr: Any = None
    """Kind ``isrCombine``: the ISR settings (one IsrConfig for every raw)."""
    fused_keys: tuple[str, ...] = ()
    """Kind ``isrCombine``: the keys of the fused ISR quanta (same order as ``fused_raws``)."""


@dataclass
class QuantumResult:
    """What a quantum returns to the driver (small)."""

    key: str
    """The quantum's key."""
    value: Any
    """Passed to the quanta that read this one (stats, measurements, scales)."""
    outputs: list[tuple[str, str, dict]]
    """(scratch path, dataset type, data ID) of the outputs to register."""
    elapsed_s: float = 0.0
    """Seconds the science function took."""
    where: str = ""
    """Host and Slurm job (if any) that ran it."""
    worker: str = ""
    """Name of the Dask worker that ran it."""


def _groups(spec: QuantumSpec, upstream: Sequence[QuantumResult]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    i = 0
    for dt, n in zip(spec.input_types, spec.input_counts):
        out[dt] = [r.value for r in upstream[i:i + n]]
        i += n
    return out


def _out(spec: QuantumSpec, index: int = 0) -> str:
    p = spec.outputs[index][0]
    Path(p).parent.mkdir(parents=True, exist_ok=True)
    return p


def _one(spec: QuantumSpec, name: str) -> str | None:
    paths = spec.calib_paths.get(name) or []
    return paths[0] if paths else None


def _detector(path: str, detector_id: int):
    from cpframe.camera.models import load_camera
    from cpframe.science.imageio import read_header

    h = read_header(path)
    return load_camera(str(h["INSTRUME"]), str(h.get("CAMSCALE", "full")).lower()).detector(int(detector_id))


# -- one function per task kind ---------------------------------------------------------------
def _isr(spec, groups):
    from cpframe.science.tasks import isr_task

    # bootstrap products are applied as the ISR's bias/dark/flat (spec algorithms.md §7)
    calibs = {c.removesuffix("Bootstrap"): paths[0] for c, paths in spec.calib_paths.items()
              if paths and c != "manual_defects"}
    return isr_task(spec.raw_path, _out(spec), spec.settings["isr"], calibs, detector=spec.data_id["detector"])


def _dark_cr(spec, groups):
    from cpframe.science.tasks import dark_cr_task

    (exp,) = next(iter(groups.values()))
    res = dark_cr_task(exp.path, _out(spec), spec.settings["cr"])
    return replace(exp, path=res.path)


def _flat_measure(spec, groups):
    from cpframe.science.tasks import flat_measure_task

    (exp,) = next(iter(groups.values()))
    return flat_measure_task(exp.path, clip=spec.settings["clip"], n_iter=spec.settings["n_iter"])


def _flat_normalize(spec, groups):
    from cpframe.science.tasks import flat_normalize_task

    return flat_normalize_task(next(iter(groups.values())), max_iter=spec.settings["max_iter"])


def _combine(spec, groups):
    from cpframe.science.tasks import FlatScales, combine_task

    exposures, scales_obj = [], None
    for values in groups.values():
        for v in values:
            if isinstance(v, FlatScales):
                scales_obj = v
            else:
                exposures.append(v)
    exposures.sort(key=lambda e: e.exposure_id)
    cfg = spec.settings["combine"]
    scales = None
    if cfg.exposure_scaling == "InputList":
        if scales_obj is None:
            raise ExecutionError(f"{spec.key}: exposureScaling InputList needs a normalisation input.")
        exposures = [e for e in exposures if e.exposure_id in scales_obj.exp_scale]
        scales = [scales_obj.exp_scale[e.exposure_id] for e in exposures]
    return combine_task([e.path for e in exposures], _out(spec), cfg, scales=scales,
                        memory_bytes=spec.settings["memory_bytes"], threads=1)


def _isr_combine(spec, groups):
    """ISR quanta fused into their combine (:mod:`cpframe.science.fused`): no ISR files."""
    from cpframe.science.tasks import fused_combine_task

    try:
        res = fused_combine_task(spec.fused_raws, _out(spec), spec.fused_isr, spec.settings["combine"],
                                 list(spec.fused_calibs), memory_bytes=spec.settings.get("fused_memory_bytes"))
    except Exception as err:
        # name the ISR quantum whose raw failed, as the unfused graph would
        text = str(err)
        bad = [(k, p) for k, p in zip(spec.fused_keys, spec.fused_raws) if p in text]
        if not bad:
            raise
        raise ExecutionError(f"ISR quantum {bad[0][0]} (fused into {spec.key}) failed: {text}") from err
    return res.combine


def _fused_away(spec, groups):
    """An ISR quantum whose work its combine does (kept so progress and failure accounting see it)."""
    return None


def _defects(spec, groups):
    from cpframe.science.tasks import cp_defects

    meta = {"instrument": spec.data_id["instrument"], "detector": spec.data_id["detector"]}
    return cp_defects(spec.calib_paths.get("biasBootstrap", []), spec.calib_paths.get("darkBootstrap", []),
                      spec.calib_paths.get("flatBootstrap", []), _out(spec), config=spec.settings["defects"],
                      manual_defects_path=_one(spec, "manual_defects"), meta=meta)


def _ptc_extract(spec, groups):
    from cpframe.science.imageio import read_header
    from cpframe.science.tasks import ptc_extract_task

    a, b = next(iter(groups.values()))
    noise = {amp: 0.5 * (a.amp_stats[amp]["overscan_noise_adu"] + b.amp_stats[amp]["overscan_noise_adu"])
             for amp in a.amp_stats}
    m = ptc_extract_task(a.path, b.path, spec.settings["ptc"], overscan_noise=noise)
    h = read_header(a.path)
    meta = {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}
    return (m, meta)


def _ptc_solve(spec, groups):
    from cpframe.science.tasks import ptc_solve_task

    pairs = next(iter(groups.values()))
    return ptc_solve_task([m for m, _ in pairs], _out(spec), spec.settings["ptc"], meta=pairs[0][1])


def _verify_stats(spec, groups):
    from cpframe.verify import get_stage, verify_calib, verify_exposure, write_stats

    stage = spec.settings["stage"]
    if get_stage(stage).kind == "calib":
        path = _one(spec, get_stage(stage).dataset_type)
        if path is None:  # a product of this pipeline (residual crosstalk) rather than a calibration
            path = next(getattr(v, "path", None) for values in groups.values() for v in values)
        stats = verify_calib(stage, path, _detector(path, spec.data_id["detector"]), spec.settings["verify"],
                             data_id=dict(spec.data_id))
    else:
        images = [v for values in groups.values() for v in values]
        did = {k: spec.data_id[k] for k in ("instrument", "exposure", "physical_filter") if k in spec.data_id}
        stats = verify_exposure(stage, images[0].path, _detector(images[0].path, spec.data_id["detector"]),
                                spec.settings["verify"],
                                uncorrected_path=images[1].path if len(images) > 1 else None, data_id=did)
    write_stats(stats, _out(spec))
    return stats


def _verify_merge(spec, groups):
    from cpframe.verify import get_stage, merge_calibs, merge_exposure, merge_run, write_results, write_stats

    stage = spec.settings["stage"]
    if "exposure" in spec.data_id:
        merged = merge_exposure(stage, next(iter(groups.values())))
        write_stats(merged, _out(spec))
        return merged
    if get_stage(stage).kind == "calib":
        table, summary = merge_calibs(stage, next(iter(groups.values())))
    else:
        values = list(groups.values())  # inputs: detector stats, then exposure merges
        table, summary = merge_run(stage, values[-1], detector_stats=values[0] if len(values) > 1 else None)
    write_results(table, _out(spec, 0))
    if len(spec.outputs) > 1:
        write_stats(summary, _out(spec, 1))
    return summary


def _meta_of(path):
    from cpframe.science.imageio import read_header

    h = read_header(path)
    return {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in h}


def _linearity_solve(spec, groups):
    from cpframe.science.linearity import linearity_solve_task

    pairs = next(iter(groups.values()))
    return linearity_solve_task([m for m, _ in pairs], _out(spec), spec.settings["linearity"], meta=pairs[0][1])


def _crosstalk_extract(spec, groups):
    from cpframe.science.crosstalk import crosstalk_extract_task

    (exp,) = next(iter(groups.values()))
    return (crosstalk_extract_task(exp.path, spec.settings["crosstalk"]), _meta_of(exp.path))


def _crosstalk_solve(spec, groups):
    from cpframe.science.crosstalk import crosstalk_solve_task

    values = next(iter(groups.values()))
    return crosstalk_solve_task([m for m, _ in values], _out(spec), spec.settings["crosstalk"], meta=values[0][1])


def _cti_solve(spec, groups):
    from cpframe.science.cti import cti_solve_task, measure_cti
    from cpframe.science.imageio import read_header

    exposures = sorted(next(iter(groups.values())), key=lambda e: e.exposure_id)
    meas = [measure_cti(read_header(e.path), list(e.amp_stats), e.exposure_id) for e in exposures]
    return cti_solve_task(meas, _out(spec), spec.settings["cti"], meta=_meta_of(exposures[0].path))


_RUNNERS: dict[str, Callable[[QuantumSpec, dict], Any]] = {
    "linearitySolve": _linearity_solve, "crosstalkExtract": _crosstalk_extract, "crosstalkSolve": _crosstalk_solve,
    "ctiSolve": _cti_solve,
    "isr": _isr, "darkCr": _dark_cr, "flatMeasure": _flat_measure, "flatNormalize": _flat_normalize,
    "combine": _combine, "isrCombine": _isr_combine, "fusedAway": _fused_away, "defects": _defects, "ptcExtract": _ptc_extract, "ptcSolve": _ptc_solve,
    "verifyStats": _verify_stats, "verifyMerge": _verify_merge,
}


def run_quantum(spec: QuantumSpec, upstream: Sequence[QuantumResult]) -> QuantumResult:
    """Run one quantum on a worker.

    Raises
    ------
    ExecutionError
        A registered output was not written.
    Exception
        Whatever the science function raises (Dask retries it, then reports it).
    """
    t0 = time.perf_counter()
    value = _RUNNERS[spec.kind](spec, _groups(spec, upstream))
    outputs = [(p, dt, dict(did)) for p, dt, did, reg in spec.outputs if reg]
    absent = [p for p, _, _ in outputs if not os.path.isfile(p)]
    if absent:
        raise ExecutionError(f"{spec.key}: the task finished but did not write {', '.join(absent)}.")
    job = os.environ.get("SLURM_JOB_ID")
    where = socket.gethostname() + (f" (Slurm job {job})" if job else "")
    try:
        from distributed import get_worker

        worker = str(get_worker().name)
    except ValueError:  # run outside a worker (tests calling it directly)
        worker = ""
    return QuantumResult(key=spec.key, value=value, outputs=outputs, elapsed_s=time.perf_counter() - t0, where=where,
                         worker=worker)
