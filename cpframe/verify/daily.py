"""Daily calibration check: verify one night's bias, dark and flat exposures against the current calibrations.

For every bias, dark and flat exposure of ``day_obs`` and every detector with a raw,
:func:`verify_daily` finds the calibrations valid at the exposure's time in the given
collections (``Registry.find_calibration``: ``ptc`` for gains, ``defects`` if any, and
``bias`` / ``dark`` / ``flat`` as the stage needs), runs the ISR of the science area
(``cpframe.science.tasks.isr_task``) into a scratch directory, measures the stage's statistics
and tests (:func:`cpframe.verify.verify_exposure`), merges per exposure and per stage,
and appends one row per amp to a history table.  It runs serially in this process (no
cluster): a night of a few dozen exposures takes minutes, and a daily monitor has time.

It is a monitor of camera stability: a test that starts failing night after night
(bias level, read noise, flat response) shows up in the history and in the exit code.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpframe.camera.models import Camera, load_camera
from cpframe.core.errors import PlanningError, UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import verify_exposure
from cpframe.verify.merge import merge_exposure, merge_run
from cpframe.verify.results import atomic_write_text

__all__ = [
    "HISTORY_FORMATS",
    "MISSING_CALIBS_MESSAGE",
    "STAGE_OF_TYPE",
    "DailyResult",
    "append_history",
    "format_daily",
    "verify_daily",
]

#: observation_type -> verification stage.
STAGE_OF_TYPE = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT"}
#: Calibrations each stage needs (ptc for the gains); defects are used when found.
NEEDED = {"BIAS": ("ptc", "bias"), "DARK": ("ptc", "bias", "dark"), "FLAT": ("ptc", "bias", "dark", "flat")}
#: History file formats by suffix.
HISTORY_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv"}
#: Message when calibrations are missing (tests check it).
MISSING_CALIBS_MESSAGE = "no calibration found"
#: Statistics copied into the history (when the stage has them).
HISTORY_STATS = ("MEAN", "MEDIAN", "NOISE", "EXPECTED_NOISE", "CR_NOISE", "READ_NOISE", "READ_NOISE_OVERSCAN",
                 "AMP_CORNER", "SAT_FRACTION")


@dataclass
class DailyResult:
    """What :func:`verify_daily` found."""

    day_obs: int
    stages: dict[str, tuple[Any, dict]] = field(default_factory=dict)
    """Stage -> (Results table, summary) of the night."""
    n_exposures: int = 0
    n_detectors: int = 0
    failures: list[str] = field(default_factory=list)
    """``"<STAGE> <exposure> <detector> <amp> <test>"`` (or ``<detector> <test>`` / ``<test>``)."""
    history: Path | None = None
    n_history_rows: int = 0

    @property
    def success(self) -> bool:
        return not self.failures


def _isr_config(stage: str, has_defects: bool):
    from cpframe.science.tasks import isr_config_for

    if stage == "BIAS":
        return isr_config_for("bias", do_bias=True, do_defect=has_defects)
    if stage == "DARK":
        return isr_config_for("dark", do_dark=True, do_defect=has_defects)
    return isr_config_for("flat", do_flat=True, do_defect=has_defects)


def _camera(instrument: str, raw_path: Path, cache: dict) -> Camera:
    from cpframe.science.imageio import read_header

    scale = str(read_header(raw_path).get("CAMSCALE", "full"))
    if scale not in cache:
        cache[scale] = load_camera(instrument, scale)
    return cache[scale]


def verify_daily(
    repo: Any, instrument: str, day_obs: int, collections: Sequence[str], *,
    raw_collections: Sequence[str] | None = None, history: str | Path | None = None,
    config: VerifyConfig | Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> DailyResult:
    """Verify the night's bias/dark/flat exposures; append the metrics to ``history``.

    Parameters
    ----------
    repo : cpframe.repository.repo.Repository
    instrument : str
    day_obs : int
        Night, ``YYYYMMDD``.
    collections : sequence of str
        Where the current calibrations are found (e.g. ``LSSTComCam/calib``), in order.
    raw_collections : sequence of str, optional
        Where the raws are; default ``<instrument>/raw/all``.
    history : path, optional
        ``.ecsv`` or ``.csv`` file the per-amp metrics are appended to (created if missing;
        rows of the same exposures from an earlier check are replaced).
    config : VerifyConfig or mapping, optional
    progress : callable, optional
        Called with a short text after each exposure x detector.

    Raises
    ------
    UserInputError
        Bad history suffix or day_obs.
    PlanningError
        Calibrations missing for some exposure x detector (all are listed; nothing was run).
    """
    from cpframe.science.tasks import isr_task

    hist = Path(history) if history is not None else None
    if hist is not None and hist.suffix.lower() not in HISTORY_FORMATS:
        raise UserInputError(
            f"history file {hist}: unknown format {hist.suffix!r}; use a .ecsv or .csv file name.")
    if not (19000101 <= int(day_obs) <= 29991231):
        raise UserInputError(f"--day-obs {day_obs} is not a YYYYMMDD night, e.g. 20241126.")
    cfg = config if isinstance(config, VerifyConfig) else VerifyConfig.from_mapping(config)
    registry = repo.registry
    result = DailyResult(int(day_obs), history=hist)
    records = registry.query_dimension_records(
        "exposure", where=f"exposure.day_obs = {int(day_obs)}", instrument=instrument)
    records = {int(r["id"]): r for r in records if str(r.get("observation_type", "")).lower() in STAGE_OF_TYPE}
    if not records:
        return result
    raws = registry.query_datasets(
        "raw", list(raw_collections or [f"{instrument}/raw/all"]),
        where=f"instrument = '{instrument}' and exposure.day_obs = {int(day_obs)}", find_first=True)
    raws = [r for r in raws if int(r.data_id["exposure"]) in records]
    # plan everything first: a missing calibration stops the check before any work
    jobs, missing = [], []
    for ref in sorted(raws, key=lambda r: (int(r.data_id["exposure"]), int(r.data_id["detector"]))):
        rec = records[int(ref.data_id["exposure"])]
        stage = STAGE_OF_TYPE[str(rec["observation_type"]).lower()]
        did = {"instrument": instrument, "detector": int(ref.data_id["detector"]),
               "physical_filter": rec.get("physical_filter")}
        calibs: dict[str, str] = {}
        ids: list[str] = []
        for ctype in NEEDED[stage] + ("defects",):
            found = registry.find_calibration(ctype, did, list(collections), rec)
            if found is None:
                if ctype != "defects":
                    missing.append(f"{ctype} for exposure {rec['id']} detector {did['detector']}"
                                   + (f" ({did['physical_filter']})" if ctype == "flat" else ""))
                continue
            calibs[ctype] = str(repo.get_path(found))
            ids.append(f"{ctype}:{found.id[:8]}")
        jobs.append((ref, rec, stage, calibs, ids))
    if missing:
        shown = "; ".join(missing[:12]) + (f"; ... ({len(missing)} in all)" if len(missing) > 12 else "")
        raise PlanningError(
            f"{MISSING_CALIBS_MESSAGE} in {', '.join(collections)} valid on day_obs {day_obs}: {shown}. "
            "Check --collections (the calibration chain) and the validity ranges (cpframe query-datasets)."
        )
    cameras: dict[str, Camera] = {}
    per_exposure: dict[tuple[str, int], list[dict]] = {}
    used: dict[tuple[int, int], str] = {}
    with tempfile.TemporaryDirectory(prefix="cpframe-verify-daily-") as scratch:
        for ref, rec, stage, calibs, ids in jobs:
            raw_path = repo.get_path(ref)
            cam = _camera(instrument, raw_path, cameras)
            det = cam.detector(int(ref.data_id["detector"]))
            out = Path(scratch) / f"{stage}_{rec['id']}_{det.id}.fits"
            isr_task(raw_path, out, _isr_config(stage, "defects" in calibs), calibs, camera=cam, detector=det.id)
            stats = verify_exposure(stage, out, det, cfg, data_id={
                "instrument": instrument, "exposure": int(rec["id"]), "physical_filter": rec.get("physical_filter"),
                "day_obs": int(day_obs)})
            out.unlink()
            per_exposure.setdefault((stage, int(rec["id"])), []).append(stats)
            used[(int(rec["id"]), det.id)] = " ".join(ids)
            if progress:
                progress(f"{stage} {rec['id']} {det.name}: {'PASS' if stats['SUCCESS'] else 'FAIL'}")
    result.n_exposures = len({e for _, e in per_exposure})
    result.n_detectors = len({d for _, d in used})
    history_rows: list[dict] = []
    checked = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for stage in ("BIAS", "DARK", "FLAT"):
        exps = [merge_exposure(stage, v, cfg) for (s, _), v in sorted(per_exposure.items()) if s == stage]
        if not exps:
            continue
        table, summary = merge_run(stage, exps)
        result.stages[stage] = (table, summary)
        for exp, fails in summary["FAILURES"].items():
            result.failures += [f"{stage} {exp} {f}" for f in fails]
        for (s, _), dets in sorted(per_exposure.items()):
            if s == stage:
                for st in dets:
                    history_rows += _history_rows(st, checked, used)
    if hist is not None:
        result.n_history_rows = append_history(hist, history_rows)
    return result


def _history_rows(stats: Mapping[str, Any], checked: str, used: Mapping[tuple[int, int], str]) -> list[dict]:
    did = stats["DATA_ID"]
    rows = []
    det_fail = [f for f in stats["FAILURES"] if " " not in f]
    for amp, values in stats["AMP"].items():
        tests = stats["VERIFY"]["AMP"][amp]
        failed = [t for t, ok in tests.items() if t != "SUCCESS" and not ok] + det_fail
        row = {
            "day_obs": int(did.get("day_obs", 0)), "exposure": int(did["exposure"]), "stage": stats["STAGE"],
            "physical_filter": str(did.get("physical_filter", "")), "detector": int(did["detector"]),
            "detector_name": did.get("detector_name", ""), "amplifier": amp,
            "mjd": float("nan") if stats.get("MJD") is None else float(stats["MJD"]),
        }
        for k in HISTORY_STATS:
            v = values.get(k)
            row[k] = float(v) if isinstance(v, (int, float)) and v is not None else float("nan")
        row["SUCCESS"] = bool(tests["SUCCESS"] and not det_fail)
        row["FAILED_TESTS"] = ";".join(failed)
        row["calibrations"] = used.get((int(did["exposure"]), int(did["detector"])), "")
        row["checked_at"] = checked
        rows.append(row)
    return rows


def append_history(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append rows to an ECSV/CSV history (rows of the same exposure, detector, amp and stage are replaced).

    Returns the number of rows written for this call.  The file is rewritten atomically.
    """
    import io

    from astropy.table import Table, vstack

    p = Path(path)
    fmt = HISTORY_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise UserInputError(f"history file {p}: use a .ecsv or .csv file name.")
    new = Table(rows=[dict(r) for r in rows]) if rows else None
    if p.exists():
        try:
            old = Table.read(p, format=fmt)
        except Exception as err:  # noqa: BLE001 - astropy raises many types for a malformed table
            raise UserInputError(f"history file {p} cannot be read as {fmt} ({err}); move it away or fix it.") from None
        if new is not None and len(old):
            keys = {(int(r["exposure"]), int(r["detector"]), str(r["amplifier"]), str(r["stage"])) for r in new}
            keep = [i for i, r in enumerate(old)
                    if (int(r["exposure"]), int(r["detector"]), str(r["amplifier"]), str(r["stage"])) not in keys]
            old = old[keep]
        table = vstack([old, new], join_type="outer") if new is not None else old
    elif new is not None:
        table = new
    else:
        return 0
    buf = io.StringIO()
    table.write(buf, format=fmt)
    atomic_write_text(p, buf.getvalue())
    return 0 if new is None else len(new)


def format_daily(result: DailyResult) -> list[str]:
    """Summary lines a person can act on."""
    lines = [f"day_obs {result.day_obs}: {result.n_exposures} exposure(s), {result.n_detectors} detector(s)"]
    for stage, (_, summary) in result.stages.items():
        n = len(summary["EXPOSURES"])
        n_bad = summary["N_FAILED"]
        lines.append(f"  {stage:<5} {n} exposure(s): " + ("PASS" if summary["SUCCESS"] else f"FAIL in {n_bad}"))
    if result.history is not None:
        lines.append(f"history: {result.history} (+{result.n_history_rows} rows)")
    return lines
