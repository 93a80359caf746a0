"""The verification stages and the per-detector driver.

A *stage* (``BIAS``, ``DARK``, ``FLAT``, ``DEFECTS``, ``SCIENCE``, ``PTC``) measures
statistics on a residual image (or on a calibration object, for ``PTC``) and turns
them into boolean tests.  :func:`verify_exposure` and :func:`verify_calib` return the
statistics dictionary of spec verification.md §3::

    {"STAGE": "BIAS",
     "DATA_ID": {"instrument": ..., "exposure": ..., "detector": 4, "detector_name": "R22_S11", ...},
     "METADATA": {"GAIN": {amp: g}, "READ_NOISE": {amp: rn}, ...},
     "AMP": {amp: {stat: value}},
     "DET": {stat: value},
     "VERIFY": {"AMP": {amp: {test: bool, ..., "SUCCESS": bool}}, "DET": {test: bool, ..., "SUCCESS": bool}},
     "SUCCESS": bool,
     "FAILURES": ["C10 NOISE", "SCATTER", ...]}

Values are plain Python (JSON-able; NaN is kept as ``float('nan')`` in memory and
written as ``null`` by :func:`cpframe.verify.results.write_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.stats import ResidualImage, header_value, read_residual, write_binned_residual

__all__ = [
    "STAGES",
    "UNKNOWN_STAGE_MESSAGE",
    "Stage",
    "dataset_type_name",
    "finish_stats",
    "get_stage",
    "verify_calib",
    "verify_exposure",
]

#: Message when a stage name is not known (tests check it).
UNKNOWN_STAGE_MESSAGE = "unknown verification stage"

Measure = Callable[..., dict]
Test = Callable[[dict, VerifyConfig], dict]


@dataclass(frozen=True)
class Stage:
    """One verification stage."""

    name: str
    """Stage name, upper case (column prefix), e.g. ``BIAS``."""
    type_name: str
    """CamelCase part of dataset type names, e.g. ``Bias`` -> ``verifyBiasStats``."""
    kind: str
    """``exposure`` (residual images, merged per exposure then run) or ``calib`` (a calibration object)."""
    measure: Measure
    """Statistics: ``measure(residual, detector, config, **extra) -> {"AMP", "DET", "METADATA"}``."""
    check: Test
    """Tests: ``check(stats, config) -> {"AMP": {amp: {test: bool}}, "DET": {test: bool}}``."""
    informational: tuple[str, ...] = ()
    """Tests recorded but not part of SUCCESS (e.g. READ_NOISE_CONSISTENT)."""
    group: Callable[[list[dict], VerifyConfig], dict] | None = None
    """Exposure-level group tests over detectors: ``-> {"stats": {...}, "verify": {test: bool}}``."""
    by_filter: bool = False
    """Rows and merges carry ``physical_filter`` (flats)."""
    calib_type: str = ""
    """``calib`` stages: the dataset type verified, when not the lower-case stage name
    (stage ``LINEARITY`` verifies ``linearizer``)."""

    @property
    def dataset_type(self) -> str:
        """The calibration dataset type a ``calib`` stage reads."""
        return self.calib_type or self.name.lower()


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add a stage to :data:`STAGES` (done by each stage module on import)."""
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    """The stage called ``name`` (case-insensitive).

    Raises
    ------
    UserInputError
        Unknown name; the message lists the known stages.
    """
    key = str(name).upper()
    if key not in STAGES:
        raise UserInputError(
            f"{UNKNOWN_STAGE_MESSAGE} {name!r}; use one of {', '.join(sorted(STAGES))}."
        )
    return STAGES[key]


def dataset_type_name(stage: str, what: str) -> str:
    """Dataset type name of a verification product.

    >>> dataset_type_name("bias", "Stats")
    'verifyBiasStats'
    """
    return f"verify{get_stage(stage).type_name}{what}"


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, recursively (keeps NaN)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


def finish_stats(stage: Stage, stats: dict, verify: dict) -> dict:
    """Add SUCCESS flags and the FAILURES list to ``stats`` (in place) and return it.

    Amp SUCCESS = AND of the amp's tests that are not informational; DET SUCCESS = AND
    of the detector tests; overall SUCCESS = all amps and the detector pass.
    Failure strings are ``"<amp> <test>"`` and ``"<test>"`` (detector tests).
    """
    failures: list[str] = []
    amp_verify: dict[str, dict] = {}
    for amp, tests in verify.get("AMP", {}).items():
        tests = {k: bool(v) for k, v in tests.items()}
        counted = {k: v for k, v in tests.items() if k not in stage.informational}
        tests["SUCCESS"] = all(counted.values())
        failures += [f"{amp} {k}" for k, v in counted.items() if not v]
        amp_verify[amp] = tests
    det = {k: bool(v) for k, v in verify.get("DET", {}).items()}
    det_counted = {k: v for k, v in det.items() if k not in stage.informational}
    det["SUCCESS"] = all(det_counted.values())
    failures += [k for k, v in det_counted.items() if not v]
    stats["VERIFY"] = {"AMP": amp_verify, "DET": det}
    stats["SUCCESS"] = bool(all(t["SUCCESS"] for t in amp_verify.values()) and det["SUCCESS"])
    stats["FAILURES"] = failures
    return plain(stats)


def _data_id(detector: Detector, header: Mapping[str, Any], data_id: Mapping[str, Any] | None) -> dict:
    """Data ID of the measurement: explicit values win over the residual's header."""
    did: dict[str, Any] = {
        "instrument": header_value(header, "INSTRUME"),
        "exposure": header_value(header, "EXPID"),
        "physical_filter": header_value(header, "FILTER"),
        "day_obs": header_value(header, "DAYOBS"),
    }
    did.update(dict(data_id or {}))
    did["detector"] = int(detector.id)
    did["detector_name"] = detector.name
    if did.get("exposure") is not None:
        did["exposure"] = int(did["exposure"])
    return {k: v for k, v in did.items() if v is not None}


def _mjd(header: Mapping[str, Any]) -> float:
    for key in ("MJD-AVG", "MJD-OBS", "MJD-BEG"):
        v = header_value(header, key)
        if v is not None:
            try:
                return float(v)
            except (TypeError, ValueError):
                continue
    return math.nan


def _as_residual(source: str | Path | ResidualImage) -> ResidualImage:
    return source if isinstance(source, ResidualImage) else read_residual(source)


def verify_exposure(
    stage: str,
    residual_path: str | Path | ResidualImage,
    detector: Detector,
    config: VerifyConfig | Mapping[str, Any] | None = None,
    *,
    uncorrected_path: str | Path | ResidualImage | None = None,
    data_id: Mapping[str, Any] | None = None,
    binned_path: str | Path | None = None,
) -> dict:
    """Measure and test one residual image (one exposure x detector).

    Parameters
    ----------
    stage : str
        ``bias``, ``dark``, ``flat``, ``defects`` or ``science`` (any case).
    residual_path : path or ResidualImage
        The ISR output (``fits-masked``) with the calibration under test applied.
    detector : cpframe.camera.models.Detector
        The detector (amp boxes, flips).
    config : VerifyConfig or mapping, optional
        Settings; a mapping overrides defaults by name.
    uncorrected_path : path or ResidualImage, optional
        ``defects`` only: the same exposure processed without defects.
    data_id : mapping, optional
        instrument / exposure / physical_filter; taken from the header when absent.
    binned_path : path, optional
        Also write the residual binned 8x8 (``verify<Type>Residual8``) there.

    Returns
    -------
    dict
        The statistics dictionary (module docstring).

    Raises
    ------
    UserInputError
        Unknown stage, unreadable file, wrong shape, missing header cards.
    """
    st = get_stage(stage)
    if st.kind != "exposure":
        raise UserInputError(
            f"stage {st.name} verifies a calibration object, not a residual image; "
            f"call verify_calib({st.name.lower()!r}, ...) instead."
        )
    cfg = config if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(config)
    residual = _as_residual(residual_path)
    residual.check_shape(detector)
    extra: dict[str, Any] = {}
    if st.name == "DEFECTS":
        if uncorrected_path is None:
            raise UserInputError(
                "stage DEFECTS compares the image processed with and without defects; "
                "pass uncorrected_path= (the ISR output without defects)."
            )
        unc = _as_residual(uncorrected_path)
        unc.check_shape(detector)
        extra["uncorrected"] = unc
    measured = st.measure(residual, detector, cfg, **extra)
    stats = {
        "STAGE": st.name,
        "DATA_ID": _data_id(detector, residual.header, data_id),
        "MJD": _mjd(residual.header),
        **measured,
    }
    if binned_path is not None:
        write_binned_residual(residual, binned_path, stats["DATA_ID"], cfg)
    return finish_stats(st, stats, st.check(stats, cfg))


def verify_calib(
    stage: str,
    calib_path: str | Path,
    detector: Detector,
    config: VerifyConfig | Mapping[str, Any] | None = None,
    *,
    nominal: Mapping[str, Mapping[str, float]] | None = None,
    data_id: Mapping[str, Any] | None = None,
    uncorrected: str | Path | None = None,
) -> dict:
    """Measure and test a calibration object of one detector (``ptc``).

    ``nominal`` maps amp name -> ``{"gain": e-/adu, "noise": e-}``: the camera model /
    curated values the PTC is compared with (docs/verification.md).  ``uncorrected`` (stage
    BFK) is the PTC of the same flats without the calibration under test, reported beside it.

    Raises
    ------
    UserInputError
        Unknown stage, an image stage, unreadable file, missing nominal values.
    """
    st = get_stage(stage)
    if st.kind != "calib":
        raise UserInputError(
            f"stage {st.name} verifies residual images; call verify_exposure({st.name.lower()!r}, ...) instead."
        )
    cfg = config if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(config)
    extra = {"uncorrected": uncorrected} if uncorrected is not None else {}
    measured = st.measure(calib_path, detector, cfg, nominal=nominal, **extra)
    header = measured.pop("HEADER", {})
    did = _data_id(detector, header, data_id)
    did.pop("exposure", None)
    stats = {"STAGE": st.name, "DATA_ID": did, "MJD": math.nan, **measured}
    return finish_stats(st, stats, st.check(stats, cfg))
