"""Exposure and run merges (spec verification.md §5).

``merge_exposure`` gathers the detector statistics of one exposure: SUCCESS is the
AND over detectors and the exposure's group tests (flat detector-to-detector
scatter).  ``merge_run`` gathers exposures: SUCCESS is the AND over exposures, and
``FAILURES`` maps each failed exposure id (as text) to ``"<detector> <amp> <test>"``
strings (``"<detector> <test>"`` for detector tests, ``"<test>"`` for group tests).
For calibration-object stages (PTC) :func:`merge_calibs` keys FAILURES by detector
name with ``"<amp> <test>"`` strings.  Both return the run's Results table and the
summary dictionary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import get_stage, plain
from cpframe.verify.results import detector_rows, rows_to_table

__all__ = ["MIXED_INPUT_MESSAGE", "merge_calibs", "merge_exposure", "merge_run"]

#: Message when a merge is given statistics of different stages / exposures (tests check it).
MIXED_INPUT_MESSAGE = "cannot merge"


def _check_same(stage: str, stats: Sequence[Mapping[str, Any]], key: str | None, what: str) -> None:
    bad = [s.get("STAGE") for s in stats if s.get("STAGE") != stage]
    if bad:
        raise UserInputError(f"{MIXED_INPUT_MESSAGE} {what}: expected stage {stage}, got {sorted(set(map(str, bad)))}.")
    if key:
        values = sorted({str(s.get("DATA_ID", {}).get(key)) for s in stats})
        if len(values) > 1:
            raise UserInputError(
                f"{MIXED_INPUT_MESSAGE} {what}: statistics of several {key}s ({', '.join(values)}); "
                f"merge one {key} at a time."
            )


def merge_exposure(
    stage: str, detector_stats: Sequence[Mapping[str, Any]], config: VerifyConfig | Mapping | None = None,
) -> dict:
    """Merge the detector statistics of one exposure.

    Returns
    -------
    dict
        ``STAGE``, ``DATA_ID`` (instrument, exposure, physical_filter), ``DET`` {detector name:
        {SUCCESS, FAILURES}}, ``EXP`` (group statistics and their ``VERIFY``, if the stage has
        group tests), ``SUCCESS``, ``FAILURES`` (``"<detector> <amp> <test>"``), and
        ``RESULTS`` (the Results rows of this exposure, for :func:`merge_run`).

    Raises
    ------
    UserInputError
        No statistics, or statistics of other stages / several exposures.
    """
    st = get_stage(stage)
    cfg = config if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(config)
    if not detector_stats:
        raise UserInputError(f"{MIXED_INPUT_MESSAGE} exposure: no detector statistics were given.")
    _check_same(st.name, detector_stats, "exposure", "exposure")
    ordered = sorted(detector_stats, key=lambda s: s["DATA_ID"].get("detector", 0))
    first = ordered[0]["DATA_ID"]
    did = {k: first[k] for k in ("instrument", "exposure", "physical_filter", "day_obs") if k in first}
    det: dict[str, dict] = {}
    failures: list[str] = []
    rows: list[dict] = []
    for s in ordered:
        name = s["DATA_ID"].get("detector_name", str(s["DATA_ID"].get("detector")))
        det[name] = {"SUCCESS": bool(s["SUCCESS"]), "FAILURES": list(s["FAILURES"])}
        failures += [f"{name} {f}" for f in s["FAILURES"]]
        rows += detector_rows(s)
    success = all(d["SUCCESS"] for d in det.values())
    out: dict[str, Any] = {"STAGE": st.name, "DATA_ID": did, "DET": det}
    if st.group is not None:
        group = st.group(list(ordered), cfg)
        verify = {k: bool(v) for k, v in group["verify"].items()}
        verify["SUCCESS"] = all(verify.values())
        out["EXP"] = {**group["stats"], "VERIFY": verify}
        failures += [k for k, v in verify.items() if k != "SUCCESS" and not v]
        success = success and verify["SUCCESS"]
        exp_row: dict[str, Any] = {"instrument": did.get("instrument", ""), "exposure": did.get("exposure")}
        if st.by_filter:
            exp_row["physical_filter"] = did.get("physical_filter", "")
        exp_row["amplifier"] = ""
        exp_row.update({f"{st.name}_EXP_{k}": v for k, v in group["stats"].items()})
        exp_row.update({f"{st.name}_EXP_VERIFY_{k}": v for k, v in group["verify"].items()})
        rows.append(exp_row)
    out.update({"SUCCESS": bool(success), "FAILURES": failures, "RESULTS": rows})
    return plain(out)


def _summary(stage: str, instrument: str, success: bool, failures: dict, children: dict, what: str) -> dict:
    return {
        "STAGE": stage,
        "INSTRUMENT": instrument,
        "SUCCESS": bool(success),
        "FAILURES": failures,
        what: children,
        "N_FAILED": sum(1 for v in children.values() if not v),
    }


def merge_run(
    stage: str, exposure_stats: Sequence[Mapping[str, Any]],
    detector_stats: Sequence[Mapping[str, Any]] | None = None,
):
    """Merge exposure merges into the run's Results table and summary.

    The table rows come from each exposure merge's ``RESULTS``; for a merge written
    without them, from ``detector_stats`` of that exposure (optional).

    Returns
    -------
    (astropy.table.Table, dict)
        The Results table (every amp row of every detector and exposure, plus detector and
        exposure rows) and the summary: ``STAGE``, ``INSTRUMENT``, ``SUCCESS``, ``FAILURES``
        {exposure id: [...]}, ``EXPOSURES`` {exposure id: SUCCESS}, ``N_FAILED``.

    Raises
    ------
    UserInputError
        No exposures, or merges of other stages.
    """
    st = get_stage(stage)
    if not exposure_stats:
        raise UserInputError(f"{MIXED_INPUT_MESSAGE} run: no exposure merges were given.")
    _check_same(st.name, exposure_stats, "instrument", "run")
    ordered = sorted(exposure_stats, key=lambda s: (s["DATA_ID"].get("exposure") or 0))
    failures = {str(s["DATA_ID"].get("exposure")): list(s["FAILURES"]) for s in ordered if not s["SUCCESS"]}
    children = {str(s["DATA_ID"].get("exposure")): bool(s["SUCCESS"]) for s in ordered}
    by_exposure: dict[Any, list] = {}
    for d in detector_stats or ():
        by_exposure.setdefault(d.get("DATA_ID", {}).get("exposure"), []).append(d)
    rows: list[dict] = []
    for s in ordered:
        if "RESULTS" in s:
            rows += s["RESULTS"]
        else:
            for d in sorted(by_exposure.get(s["DATA_ID"].get("exposure"), []), key=lambda d: d["DATA_ID"]["detector"]):
                rows += detector_rows(d)
    instrument = ordered[0]["DATA_ID"].get("instrument", "")
    summary = _summary(st.name, instrument, all(children.values()), failures, children, "EXPOSURES")
    table = rows_to_table(rows, meta={"stage": st.name, "instrument": instrument, "success": summary["SUCCESS"]})
    return table, summary


#: Data ID keys that name a detector, not one of several calibrations of it.
_DETECTOR_KEYS = ("instrument", "detector", "detector_name")


def _other_keys(stats: Mapping[str, Any]) -> tuple[str, ...]:
    """The data ID's values beyond the detector (physical_filter...), as text, in key order."""
    did = stats.get("DATA_ID", {})
    return tuple(f"{did[k]}" for k in sorted(did) if k not in _DETECTOR_KEYS and did[k] not in (None, ""))


def _calib_names(ordered: Sequence[Mapping[str, Any]]) -> list[str]:
    """Detector names, extended by the other data ID values where one detector has several calibrations.

    >>> _calib_names([{"DATA_ID": {"detector": 0, "detector_name": "R22_S00"}}])
    ['R22_S00']
    >>> _calib_names([{"DATA_ID": {"detector": 0, "detector_name": "S00", "physical_filter": f}} for f in "gr"])
    ['S00 g', 'S00 r']
    """
    base = [s["DATA_ID"].get("detector_name", str(s["DATA_ID"].get("detector"))) for s in ordered]
    names = [" ".join((b, *_other_keys(s))) if base.count(b) > 1 else b for b, s in zip(base, ordered)]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserInputError(f"{MIXED_INPUT_MESSAGE} run: several statistics of the same calibration ({', '.join(dup)}); "
                             "merge each calibration's statistics once.")
    return names


def merge_calibs(stage: str, detector_stats: Sequence[Mapping[str, Any]]):
    """Merge per-detector statistics of a calibration-object stage (PTC) into Results + summary.

    ``FAILURES`` maps detector names to ``"<amp> <test>"``; ``DETECTORS`` maps names to SUCCESS.
    A detector with several calibrations in the run (one per filter: illumination correction, flat
    gradient...) has one entry per calibration, named ``"<detector> <filter>"``: none hides another.
    """
    st = get_stage(stage)
    if not detector_stats:
        raise UserInputError(f"{MIXED_INPUT_MESSAGE} run: no detector statistics were given.")
    _check_same(st.name, detector_stats, "instrument", "run")
    ordered = sorted(detector_stats, key=lambda s: (s["DATA_ID"].get("detector", 0), _other_keys(s)))
    names = _calib_names(ordered)
    failures = {n: list(s["FAILURES"]) for n, s in zip(names, ordered) if not s["SUCCESS"]}
    children = {n: bool(s["SUCCESS"]) for n, s in zip(names, ordered)}
    rows: list[dict] = []
    for s in ordered:
        rows += detector_rows(s)
    instrument = ordered[0]["DATA_ID"].get("instrument", "")
    summary = _summary(st.name, instrument, all(children.values()), failures, children, "DETECTORS")
    table = rows_to_table(rows, meta={"stage": st.name, "instrument": instrument, "success": summary["SUCCESS"]})
    return table, summary
