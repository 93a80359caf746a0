"""Focal-plane normalisation of a linearity ramp (cp_pipe ``LinearityNormalizeTask``) and linearity
inputs read from a PTC (cp_pipe ``LinearitySolveTask`` / cp_verify ``CpvLinearitySolveTask``).

**Normalisation.**  A flat ramp's abscissa is the exposure time; if the lamp's flux changes from one
exposure to the next, every detector sees the same relative change.  After a first (unnormalised)
linearity solve of each detector, the residuals of each amp's corrected means about its linear fit
carry that change.  For each pair, the median over the configured detectors' amps of
``1 + residual`` (times the normalisation the solve already applied) is the lamp's flux relative
to the linear model; the values are scaled so their median over the ramp is 1.  A second solve with
``useFocalPlaneNormalization`` multiplies each pair's exposure time by it, and a second
normalisation refines it (cp_pipe runs solve, normalise, solve, normalise, solve).

Deliberate differences from cp_pipe: cp_pipe normalises with the absolute reference amp of each
detector (its double spline's ``absoluteReferenceAmplifier``) and one point per exposure; cpframe's
linearizer fits every amp absolutely and has one point per pair (the pair mean), so the median runs
over every valid amp of the detectors, per pair, and the value is given to both exposures of the pair.
A pair whose valid amps are fewer than ``minValidFraction`` of those expected gets NaN (the next solve
drops it), as cp_pipe does.

The product is a ``json`` document (``exposure``, ``normalization`` lists), per instrument.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any, Mapping, Sequence

import numpy as np

from cpframe.core.errors import UserInputError
from cpframe.core.files import json_ready, write_json
from cpframe.science.configs.linearity_normalize import (  # noqa: F401 (defined there, importable without the science stack)
    MSG_UNKNOWN_KEYS,
    NormalizeConfig,
    _ALIASES,
)

__all__ = ["NormalizeConfig", "linearity_normalization", "measurements_from_ptc", "read_normalization",
           "normalize_task"]

FORMAT = "cpframe-linearity-normalization"
VERSION = 1
MSG_NO_REFERENCE = ("linearity normalisation: reference detector {ref} is not among the linearizers given "
                    "(detectors {have}); include it in the selection or set referenceDetector to one of them.")


assert set(_ALIASES.values()) == {f.name for f in fields(NormalizeConfig)}


def linearity_normalization(linearizers: Sequence[Any], config: NormalizeConfig | Mapping[str, Any] | None = None
                            ) -> dict[str, list]:
    """The per-exposure normalisation from the linearizers of several detectors (see the module docstring).

    Parameters
    ----------
    linearizers : sequence of Linearizer
        One per detector (``meta['DETECTOR']``), solved with exposure ids per point.

    Returns
    -------
    dict
        ``exposure`` (ids) and ``normalization`` (floats, NaN where too few amps had a residual).

    Raises
    ------
    UserInputError
        No linearizer of the configured detectors, or the reference detector missing.
    """
    cfg = config if isinstance(config, NormalizeConfig) else NormalizeConfig.from_dict(config)
    by_det = {int(lin.meta.get("DETECTOR", -1)): lin for lin in linearizers}
    use = [d for d in sorted(by_det) if not cfg.normalize_detectors or d in cfg.normalize_detectors]
    if not use:
        raise UserInputError(f"linearity normalisation: none of the linearizers given (detectors "
                             f"{sorted(by_det)}) is one of normalizeDetectors {list(cfg.normalize_detectors)}.")
    if cfg.reference_detector is not None and cfg.reference_detector not in by_det:
        raise UserInputError(MSG_NO_REFERENCE.format(ref=cfg.reference_detector, have=sorted(by_det)))
    ratios: dict[tuple[int, ...], list[float]] = {}
    n_amps = 0
    for d in use:
        for rec in by_det[d].amps.values():
            n_amps += 1
            if rec.note or not rec.exposure_ids:
                continue
            norm = rec.input_normalization or [1.0] * len(rec.exposure_ids)
            for pair, r, m, n in zip(rec.exposure_ids, rec.residuals, rec.mask, norm):
                if m and r is not None and math.isfinite(r) and math.isfinite(n):
                    ratios.setdefault(tuple(int(e) for e in pair), []).append(float(n) * (1.0 + float(r)))
    if not ratios:
        raise UserInputError("linearity normalisation: the linearizers carry no per-exposure residuals; "
                             "rebuild them with this cpframe (it records each point's exposure ids).")
    pairs = sorted(ratios)
    values = np.array([float(np.median(ratios[p])) if len(ratios[p]) >= cfg.min_valid_fraction * n_amps
                       else math.nan for p in pairs])
    if np.isfinite(values).any():
        values /= np.nanmedian(values)
    exposures, norms = [], []
    for p, v in zip(pairs, values):
        for e in p:
            exposures.append(int(e))
            norms.append(float(v))
    return {"exposure": exposures, "normalization": norms, "detectors": use}


def write_normalization(path: str | os.PathLike, doc: Mapping[str, Any], meta: Mapping[str, Any] | None = None):
    """Write the normalisation json (atomically)."""
    return write_json(path, json_ready({"format": FORMAT, "version": VERSION, "meta": dict(meta or {}), **doc}))


def read_normalization(doc: Mapping[str, Any]) -> dict[int, float]:
    """Exposure id -> normalisation from a normalisation document (as written or returned)."""
    return {int(e): (math.nan if v is None else float(v)) for e, v in zip(doc["exposure"], doc["normalization"])}


def normalize_task(linearizers: Sequence[Any], output_path: str | os.PathLike,
                   config: NormalizeConfig | Mapping[str, Any] | None = None,
                   meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """cpLinearizerNormalize: linearizers of several detectors -> normalisation json; returns the document."""
    doc = linearity_normalization(linearizers, config)
    write_normalization(output_path, doc, meta)
    return {**doc, "path": str(output_path)}


def measurements_from_ptc(path: str | os.PathLike) -> tuple[list[Any], dict[str, Any]]:
    """The pair measurements a PTC was solved from (means, exposure times and ids per pair),
    for a linearity solve that reads a PTC (cp_pipe ``LinearitySolveTask``'s ``inputPtc``)."""
    from cpframe.science.imageio import read_ptc
    from cpframe.science.ptc import PtcPairMeasurement

    rows, header = read_ptc(path)
    amps = list(rows)
    n = len(np.atleast_1d(rows[amps[0]]["raw_means"]))
    out = []
    for i in range(n):
        ids = (int(header.get(f"CPP_INPUT_{2 * i}", 0)), int(header.get(f"CPP_INPUT_{2 * i + 1}", 0)))
        t = float(np.atleast_1d(rows[amps[0]]["exp_times"])[i])
        out.append(PtcPairMeasurement(exposure_ids=ids, exposure_time=t, amps={
            a: {"mean": float(np.atleast_1d(rows[a]["raw_means"])[i])} for a in amps}))
    out = [m for m in out if math.isfinite(m.exposure_time)]
    meta = {k: header[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE") if k in header}
    return out, meta
