"""Results tables and the files verification writes.

* ``verify<Type>Stats`` -- one statistics dictionary (JSON; NaN written as ``null``).
* ``verify<Type>Results`` -- an astropy Table, one row per amp (ECSV).  Columns:
  ``instrument``, ``exposure`` (image stages), ``detector``, ``detector_name``,
  ``amplifier``, ``mjd`` (+ ``physical_filter`` for flats), ``<STAGE>_<stat>`` and
  ``<STAGE>_VERIFY_<test>``.  A detector with detector-level statistics or tests adds
  one row with ``amplifier = ""`` and columns ``<STAGE>_DET_<stat>`` /
  ``<STAGE>_DET_VERIFY_<test>``; an exposure with group tests adds one row with no
  detector and ``<STAGE>_EXP_<stat>`` / ``<STAGE>_EXP_VERIFY_<test>``.  Cells that do
  not apply are NaN (floats), masked (ints, bools) or empty (text).
* ``verify<Type>Summary`` -- JSON with ``SUCCESS`` and ``FAILURES``.
* ``verify<Type>Residual8`` -- the residual image binned 8 x 8 (FITS, one image HDU),
  for the report's mosaics.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.core import files as _files
from cpframe.core.errors import UserInputError
from cpframe.verify.core import get_stage
from cpframe.verify.stats import ResidualImage, bin_image, mask_of, write_binned_residual  # noqa: F401

__all__ = [
    "atomic_write_text",
    "bin_image",
    "detector_rows",
    "read_results",
    "read_stats",
    "read_summary",
    "results_table",
    "rows_to_table",
    "write_binned_residual",
    "write_results",
    "write_stats",
    "write_summary",
]

BASE_COLUMNS = ("instrument", "exposure", "physical_filter", "detector", "detector_name", "amplifier", "mjd")


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str, np.bool_, np.integer, np.floating)) or v is None


def detector_rows(stats: Mapping[str, Any]) -> list[dict]:
    """Results rows of one detector's statistics: one per amp, plus a detector row if any."""
    st = get_stage(stats["STAGE"])
    did = stats.get("DATA_ID", {})
    base: dict[str, Any] = {"instrument": did.get("instrument", "")}
    if st.kind == "exposure":
        base["exposure"] = did.get("exposure")
    if st.by_filter or (st.kind == "calib" and did.get("physical_filter")):  # a per-filter calibration too
        base["physical_filter"] = did.get("physical_filter", "")
    base.update({"detector": did.get("detector"), "detector_name": did.get("detector_name", "")})
    mjd = stats.get("MJD")
    base["mjd"] = math.nan if mjd is None else float(mjd)
    p = st.name
    rows = []
    verify = stats.get("VERIFY", {})
    for amp, values in stats.get("AMP", {}).items():
        row = dict(base, amplifier=amp)
        row.update({f"{p}_{k}": v for k, v in values.items() if _scalar(v)})
        row.update({f"{p}_VERIFY_{k}": v for k, v in verify.get("AMP", {}).get(amp, {}).items() if k != "SUCCESS"})
        rows.append(row)
    det_stats = {k: v for k, v in stats.get("DET", {}).items() if _scalar(v)}
    det_tests = {k: v for k, v in verify.get("DET", {}).items() if k != "SUCCESS"}
    if det_stats or det_tests:
        row = dict(base, amplifier="")
        row.update({f"{p}_DET_{k}": v for k, v in det_stats.items()})
        row.update({f"{p}_DET_VERIFY_{k}": v for k, v in det_tests.items()})
        rows.append(row)
    return rows


def _column(values: list[Any]):
    from astropy.table import Column, MaskedColumn

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        data = [bool(v) if v is not None else False for v in values]
        mask = [v is None for v in values]
        return MaskedColumn(data, mask=mask, dtype=bool) if any(mask) else Column(data, dtype=bool)
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        data = [int(v) if v is not None else 0 for v in values]
        mask = [v is None for v in values]
        return MaskedColumn(data, mask=mask, dtype=np.int64) if any(mask) else Column(data, dtype=np.int64)
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        return Column([float(v) if v is not None else math.nan for v in values], dtype=np.float64)
    if not present:
        return Column([math.nan] * len(values), dtype=np.float64)
    return Column(["" if v is None else str(v) for v in values], dtype=str)


def rows_to_table(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None):
    """An astropy Table from row dicts with possibly different keys (NaN / masked / "" fill).

    Base columns come first, then the others in order of first appearance.
    """
    from astropy.table import Table

    names: list[str] = [c for c in BASE_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    table = Table()
    for n in names:
        table[n] = _column([r.get(n) for r in rows])
    table.meta.update(dict(meta or {}))
    return table


def results_table(stats_list: Iterable[Mapping[str, Any]]):
    """Results Table of several detectors' statistics (vstack of their rows)."""
    rows: list[dict] = []
    for s in stats_list:
        rows += detector_rows(s)
    return rows_to_table(rows)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _files.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_stats(stats: Mapping[str, Any], path: str | Path) -> Path:
    """Write a statistics (or summary) dictionary as strict JSON (NaN -> null)."""
    from cpframe.verify.core import plain

    text = json.dumps(_nan_to_none(plain(dict(stats))), indent=1, sort_keys=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_stats(path: str | Path) -> dict:
    """Read what :func:`write_stats` wrote.

    Raises
    ------
    UserInputError
        Missing or not JSON.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"verification file {p} does not exist.") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{p} is not a verification JSON file ({err}).") from None


write_summary = write_stats
read_summary = read_stats


def write_results(table, path: str | Path) -> Path:
    """Write a Results table as ECSV (atomically)."""
    import io

    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return atomic_write_text(path, buf.getvalue())


def read_results(path: str | Path):
    """Read a Results table (ECSV)."""
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"results table {p} does not exist.")
    return Table.read(p, format="ascii.ecsv")
