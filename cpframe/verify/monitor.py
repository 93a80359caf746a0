"""Daily monitoring on top of ``verify-daily``'s history: trends, drift alarms, notifications, metrics.

The history (:func:`cpframe.verify.daily.append_history`, one row per exposure x detector x amp)
is the input.  From it:

* :func:`drift_alarms` -- per (stage, detector, amp, metric), the newest night's value is
  compared with the nights before it: an alarm when it lies more than ``n_sigma`` robust
  standard deviations (1.4826 x MAD, with a floor of ``rel_floor`` x |median|) from their
  median, once ``min_nights`` earlier nights exist.  A metric can drift while every
  threshold test still passes; the threshold failures themselves are reported too.
* :func:`write_trend_report` -- a static HTML page with one plot per stage and metric: the
  metric per night for every detector/amp, the history's median and drift band, the
  threshold (when the stage has one) and the certified calibration's reference (the
  ``EXPECTED_<metric>`` column, e.g. the read noise the PTC predicts).
* :func:`notify` -- run a command (the alarms as JSON on stdin) and/or POST them as JSON.
* :func:`export_metrics` -- the newest night's metrics as Prometheus text exposition or
  InfluxDB line protocol, for a dashboard.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cpframe.core.errors import ServiceError, UserInputError
from cpframe.verify.daily import HISTORY_FORMATS

__all__ = ["Alarm", "MONITORED", "drift_alarms", "export_metrics", "load_history", "notify",
           "write_trend_report"]

#: Metrics followed per stage (history columns).
MONITORED = {"BIAS": ("MEAN", "NOISE", "CR_NOISE"), "DARK": ("MEAN", "NOISE"),
             "FLAT": ("MEAN", "NOISE")}
#: Threshold lines drawn on the plots: metric -> (kind, value); "rel_expected" = (value - E)/E.
THRESHOLDS = {("BIAS", "NOISE"): ("rel_expected", 0.05), ("DARK", "NOISE"): ("rel_expected", 0.05)}


@dataclass(frozen=True)
class Alarm:
    """One metric of one amp beyond its history's spread (or a threshold failure)."""

    kind: str
    """``drift`` or ``threshold``."""
    stage: str
    detector: int
    amplifier: str
    metric: str
    day_obs: int
    value: float
    median: float = float("nan")
    """Median of the earlier nights."""
    sigma: float = float("nan")
    """Robust standard deviation of the earlier nights (after the floor)."""
    n_nights: int = 0

    def text(self) -> str:
        where = f"{self.stage} det {self.detector} {self.amplifier} {self.metric} on {self.day_obs}"
        if self.kind == "threshold":
            return f"THRESHOLD {where}: the {self.metric} test failed"
        dev = (self.value - self.median) / self.sigma if self.sigma > 0 else float("inf")
        return (f"DRIFT {where}: {self.value:.4g} is {dev:+.1f} sigma from the median {self.median:.4g} "
                f"of {self.n_nights} earlier nights (sigma {self.sigma:.3g})")


def load_history(path: str | os.PathLike):
    """The history table (astropy), nights as int.  UserInputError for a missing or unreadable file."""
    from astropy.table import Table

    p = Path(path)
    fmt = HISTORY_FORMATS.get(p.suffix.lower())
    if fmt is None or not p.exists():
        raise UserInputError(f"history file {p} does not exist or is not .ecsv/.csv; "
                             "write it with `cpframe verify-daily ... --history FILE`.")
    try:
        t = Table.read(p, format=fmt)
    except Exception as err:  # noqa: BLE001 - astropy raises many types for a malformed table
        raise UserInputError(f"history file {p} cannot be read ({str(err)[:200]}); move it away or fix it.") from None
    missing = [c for c in ("day_obs", "stage", "detector", "amplifier") if c not in t.colnames]
    if missing:
        raise UserInputError(f"history file {p} lacks column(s) {', '.join(missing)}; is it a verify-daily history?")
    return t


def _nightly(table, stage: str, metric: str) -> dict[tuple[int, str], dict[int, float]]:
    """(detector, amp) -> {night: median of the night's exposures}."""
    out: dict[tuple[int, str], dict[int, list[float]]] = {}
    if metric not in table.colnames:
        return {}
    for r in table:
        if str(r["stage"]) != stage:
            continue
        v = float(r[metric]) if r[metric] is not np.ma.masked else float("nan")
        if math.isfinite(v):
            out.setdefault((int(r["detector"]), str(r["amplifier"])), {}).setdefault(int(r["day_obs"]), []).append(v)
    return {k: {n: float(np.median(vs)) for n, vs in nights.items()} for k, nights in out.items()}


def drift_alarms(table, *, n_sigma: float = 5.0, min_nights: int = 3, rel_floor: float = 0.005,
                 day_obs: int | None = None) -> list[Alarm]:
    """Alarms for ``day_obs`` (default: the newest night of the history).

    A drift alarm: ``|x - median(earlier)| > n_sigma * max(1.4826 * MAD(earlier), rel_floor * |median|)``
    with at least ``min_nights`` earlier nights.  Threshold alarms: rows of that night whose
    ``SUCCESS`` is false, one per failed test.
    """
    if len(table) == 0:
        return []
    night = int(day_obs) if day_obs is not None else int(max(int(d) for d in table["day_obs"]))
    alarms: list[Alarm] = []
    for stage, metrics in MONITORED.items():
        for metric in metrics:
            for (det, amp), by_night in sorted(_nightly(table, stage, metric).items()):
                if night not in by_night:
                    continue
                earlier = np.array([v for n, v in by_night.items() if n < night])
                if len(earlier) < min_nights:
                    continue
                med = float(np.median(earlier))
                sigma = max(1.4826 * float(np.median(np.abs(earlier - med))), rel_floor * abs(med))
                x = by_night[night]
                if sigma > 0 and abs(x - med) > n_sigma * sigma or sigma == 0 and x != med:
                    alarms.append(Alarm("drift", stage, det, amp, metric, night, x, med, sigma, len(earlier)))
    if "SUCCESS" in table.colnames:
        seen = set()
        for r in table:
            if int(r["day_obs"]) != night or bool(r["SUCCESS"]):
                continue
            for test in str(r["FAILED_TESTS"] if "FAILED_TESTS" in table.colnames else "").split(";") or [""]:
                key = (str(r["stage"]), int(r["detector"]), str(r["amplifier"]), test or "?")
                if key not in seen:
                    seen.add(key)
                    alarms.append(Alarm("threshold", key[0], key[1], key[2], key[3], night, float("nan")))
    return alarms


# -- metrics export ------------------------------------------------------------------------------------


def _night_ns(day_obs: int) -> int:
    d = datetime.datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
    return int(d.timestamp()) * 10**9


def _prom_label(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _influx_tag(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") or "none"


def export_metrics(table, path: str | os.PathLike, *, instrument: str = "", day_obs: int | None = None,
                   alarms: Sequence[Alarm] = ()) -> Path:
    """Write the night's per-amp metrics (median over its exposures) for a dashboard.

    ``*.prom`` / ``*.txt``: Prometheus text exposition (``cpframe_daily_metric{...} value timestamp_ms``,
    plus ``cpframe_daily_alarms``), e.g. for node_exporter's textfile collector;
    ``*.lp`` / ``*.influx``: InfluxDB line protocol (``cpframe_daily,tags fields timestamp_ns``).
    """
    p = Path(path)
    kind = {".prom": "prom", ".txt": "prom", ".lp": "influx", ".influx": "influx"}.get(p.suffix.lower())
    if kind is None:
        raise UserInputError(f"metrics file {p}: use .prom (Prometheus text) or .lp (InfluxDB line protocol).")
    night = int(day_obs) if day_obs is not None else int(max(int(d) for d in table["day_obs"]))
    ts = _night_ns(night)
    lines: list[str] = []
    if kind == "prom":
        lines += ["# HELP cpframe_daily_metric Per-amp verify-daily statistic (median of the night's exposures).",
                  "# TYPE cpframe_daily_metric gauge"]
    per_amp: dict[tuple[str, int, str], dict[str, float]] = {}
    for stage, metrics in MONITORED.items():
        for metric in metrics:
            for (det, amp), by_night in sorted(_nightly(table, stage, metric).items()):
                if night in by_night:
                    per_amp.setdefault((stage, det, amp), {})[metric] = by_night[night]
    for (stage, det, amp), values in sorted(per_amp.items()):
        if kind == "prom":
            for metric, v in sorted(values.items()):
                labels = (f'instrument="{_prom_label(instrument)}",stage="{stage}",detector="{det}",'
                          f'amp="{_prom_label(amp)}",metric="{metric}"')
                lines.append(f"cpframe_daily_metric{{{labels}}} {v!r} {ts // 10**6}")
        else:
            fields = ",".join(f"{m}={v!r}" for m, v in sorted(values.items()))
            lines.append(f"cpframe_daily,instrument={_influx_tag(instrument)},stage={stage},detector={det},"
                         f"amp={_influx_tag(amp)} {fields} {ts}")
    n_drift = sum(a.kind == "drift" for a in alarms)
    n_thr = sum(a.kind == "threshold" for a in alarms)
    if kind == "prom":
        lines += ["# HELP cpframe_daily_alarms Alarms of the night by kind.", "# TYPE cpframe_daily_alarms gauge",
                  f'cpframe_daily_alarms{{kind="drift"}} {n_drift} {ts // 10**6}',
                  f'cpframe_daily_alarms{{kind="threshold"}} {n_thr} {ts // 10**6}']
    else:
        lines.append(f"cpframe_daily_alarms,instrument={_influx_tag(instrument)} drift={n_drift}i,threshold={n_thr}i {ts}")
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, p)
    return p


# -- notification --------------------------------------------------------------------------------------


def notify(alarms: Sequence[Alarm], *, command: str | None = None, url: str | None = None,
           context: Mapping[str, Any] | None = None, timeout_s: float = 30.0) -> list[str]:
    """Send the alarms: run ``command`` (shell; JSON on stdin, ``CPFRAME_ALARMS`` = count) and/or POST JSON to ``url``.

    Returns one line per hook (what was done).  Nothing is sent when there are no alarms.

    Raises
    ------
    ServiceError
        The command failed or the URL could not be reached (the message names which).
    """
    if not alarms:
        return []
    payload = {"alarms": [asdict(a) | {"text": a.text()} for a in alarms], "n_alarms": len(alarms),
               **dict(context or {})}
    body = json.dumps(_clean(payload), allow_nan=False, default=str).encode()
    done = []
    if command:
        env = dict(os.environ, CPFRAME_ALARMS=str(len(alarms)))
        try:
            r = subprocess.run(command, shell=True, input=body, capture_output=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"notification command {command!r} did not finish in {timeout_s:.0f} s.") from None
        if r.returncode != 0:
            raise ServiceError(f"notification command {command!r} failed with exit code {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        done.append(f"ran {command!r}")
    if url:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                status = resp.status
        except (urllib.error.URLError, OSError) as err:
            raise ServiceError(f"could not POST the alarms to {url}: {getattr(err, 'reason', err)}; "
                               "check --notify-url and that the listener runs.") from None
        done.append(f"POSTed {len(alarms)} alarm(s) to {url} (HTTP {status})")
    return done


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# -- trend report --------------------------------------------------------------------------------------


@dataclass
class TrendReport:
    """What :func:`write_trend_report` wrote."""

    index: Path
    plots: list[Path] = field(default_factory=list)
    n_series: int = 0


def write_trend_report(table, out_dir: str | os.PathLike, *, alarms: Sequence[Alarm] = (),
                       n_sigma: float = 5.0, title: str = "verify-daily trends") -> TrendReport:
    """One PNG per stage x metric (metric vs night, every detector/amp) and an ``index.html``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = TrendReport(out / "index.html")
    sections = []
    for stage, metrics in MONITORED.items():
        for metric in metrics:
            series = _nightly(table, stage, metric)
            if not series:
                continue
            expected = _nightly(table, stage, f"EXPECTED_{metric}")
            fig, ax = plt.subplots(figsize=(8, 4.2), dpi=90)
            all_nights = sorted({n for s in series.values() for n in s})
            xpos = {n: i for i, n in enumerate(all_nights)}
            for (det, amp), by_night in sorted(series.items()):
                ns = sorted(by_night)
                ax.plot([xpos[n] for n in ns], [by_night[n] for n in ns], marker="o", ms=3, lw=0.8, alpha=0.7)
            vals = np.array([v for s in series.values() for v in s.values()])
            med = float(np.median(vals))
            sig = 1.4826 * float(np.median(np.abs(vals - med)))
            ax.axhline(med, color="k", lw=1, label="median of history")
            if sig > 0:
                ax.axhspan(med - n_sigma * sig, med + n_sigma * sig, color="0.85", alpha=0.5,
                           label=f"±{n_sigma:g} sigma (robust)")
            ref = [v for s in expected.values() for v in s.values()]
            if ref:
                r = float(np.median(ref))
                ax.axhline(r, color="tab:green", ls="--", lw=1.2, label=f"certified calibration: EXPECTED_{metric}")
                thr = THRESHOLDS.get((stage, metric))
                if thr and thr[0] == "rel_expected":
                    ax.axhline(r * (1 + thr[1]), color="tab:red", ls=":", lw=1.2, label=f"threshold (+{thr[1]:.0%})")
            if metric == "MEAN" and stage in ("BIAS", "DARK"):
                ax.axhline(0.0, color="tab:green", ls="--", lw=1.0, label="reference 0")
            bad = [a for a in alarms if a.stage == stage and a.metric == metric and a.kind == "drift"]
            for a in bad:
                if a.day_obs in xpos:
                    ax.plot([xpos[a.day_obs]], [a.value], marker="x", ms=12, color="red")
            ax.set_xticks(range(len(all_nights)))
            ax.set_xticklabels([str(n) for n in all_nights], rotation=45, ha="right", fontsize=7)
            ax.set_xlabel("night (day_obs)")
            ax.set_ylabel(metric)
            ax.set_title(f"{stage} {metric}: {len(series)} detector/amp series")
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            png = out / f"{stage.lower()}_{metric.lower()}.png"
            fig.savefig(png)
            plt.close(fig)
            report.plots.append(png)
            report.n_series += len(series)
            rows = "".join(f"<li>{html.escape(a.text())}</li>" for a in bad)
            sections.append(f'<section class="trend" data-stage="{stage}" data-metric="{metric}" '
                            f'data-series="{len(series)}"><h2>{stage} {metric}</h2>'
                            f'<img class="plot" src="{png.name}" alt="{stage} {metric} vs night">'
                            + (f'<ul class="alarms">{rows}</ul>' if rows else "") + "</section>")
    alarm_items = "".join(f'<li class="{a.kind}">{html.escape(a.text())}</li>' for a in alarms) or "<li>none</li>"
    nights = sorted({int(d) for d in table["day_obs"]}) if len(table) else []
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}} img{{max-width:100%}} li.drift,li.threshold{{color:#a00}}</style>
</head><body data-plots="{len(report.plots)}" data-alarms="{len(alarms)}">
<h1>{html.escape(title)}</h1>
<p>{len(nights)} night(s): {nights[0] if nights else '-'} .. {nights[-1] if nights else '-'}; {len(table)} history rows.</p>
<h2>Alarms of the newest night</h2><ul id="alarms">{alarm_items}</ul>
{''.join(sections)}
<script>
window.addEventListener("load", () => {{
  let ok = 0;
  for (const img of document.images) {{ if (img.complete && img.naturalWidth > 0) ok++; }}
  document.body.dataset.imagesOk = ok;
}});
</script>
</body></html>
"""
    tmp = report.index.with_name(".index.html.tmp")
    tmp.write_text(text)
    os.replace(tmp, report.index)
    return report


