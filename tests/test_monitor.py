"""Daily monitoring (cpframe.verify.monitor): drift alarms, trend report, metrics export, notification.

Histories are verify-daily tables with known values (seeded); drift statistics are checked
against astropy's ``mad_std``; notifications go to a real HTTP listener on 127.0.0.1 and a
real shell command; the trend page is loaded in headless Chromium.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import subprocess
import threading

import numpy as np
import pytest
from astropy.stats import mad_std
from astropy.table import Table
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.core.errors import ServiceError
from cpframe.verify.daily import append_history
from cpframe.verify.monitor import drift_alarms, export_metrics, load_history, notify, write_trend_report

NIGHTS = [20241101 + i for i in range(8)]
AMPS = ["C10", "C11", "C12"]


def _rows(seed=1, drift_amp="C11", drift=0.3):
    """BIAS NOISE ~ 7.0 +- 0.02 e- per night for 3 amps of detector 4; the last night C11 is +drift e-
    (still within the 5 % NOISE threshold of 7.35 e-)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, night in enumerate(NIGHTS):
        for e in range(2):
            for amp in AMPS:
                noise = 7.0 + rng.normal(0, 0.02) + (drift if amp == drift_amp and night == NIGHTS[-1] else 0.0)
                rows.append({"day_obs": night, "exposure": night * 100000 + e, "stage": "BIAS", "physical_filter": "",
                             "detector": 4, "detector_name": "R22_S11", "amplifier": amp, "mjd": 60615.0 + k,
                             "MEAN": rng.normal(0, 0.05), "NOISE": noise, "EXPECTED_NOISE": 7.0, "CR_NOISE": noise,
                             "SUCCESS": True, "FAILED_TESTS": "", "calibrations": "bias:abcd", "checked_at": "x"})
    return rows


@pytest.fixture
def history(tmp_path):
    path = tmp_path / "daily.ecsv"
    append_history(path, _rows())
    return path


def test_drift_alarm_below_the_threshold(history):
    table = load_history(history)
    alarms = drift_alarms(table)
    drift = [a for a in alarms if a.kind == "drift"]
    assert [(a.stage, a.detector, a.amplifier, a.metric) for a in drift] == [("BIAS", 4, "C11", "NOISE"),
                                                                              ("BIAS", 4, "C11", "CR_NOISE")]
    a = drift[0]
    # the reference statistics, computed independently from the table
    per_night = {}
    for r in table:
        if r["amplifier"] == "C11":
            per_night.setdefault(int(r["day_obs"]), []).append(float(r["NOISE"]))
    earlier = np.array([np.median(per_night[n]) for n in NIGHTS[:-1]])
    assert a.median == pytest.approx(np.median(earlier), rel=1e-12)
    assert a.sigma == pytest.approx(max(mad_std(earlier), 0.005 * np.median(earlier)), rel=1e-9)
    assert a.value == pytest.approx(np.median(per_night[NIGHTS[-1]])) and a.value < 7.0 * 1.05
    assert a.n_nights == 7 and "DRIFT BIAS det 4 C11 NOISE on 20241108" in a.text()
    # no alarm without enough earlier nights, nor for a night without drift
    assert [x for x in drift_alarms(table, min_nights=8) if x.kind == "drift"] == []
    assert [x for x in drift_alarms(table, day_obs=NIGHTS[-2]) if x.kind == "drift"] == []


def test_threshold_failures_are_alarms_too(tmp_path):
    rows = _rows(drift=0.0)
    rows[-1].update(SUCCESS=False, FAILED_TESTS="NOISE;MEAN")
    t = Table(rows=rows)
    alarms = drift_alarms(t)
    assert [(a.kind, a.amplifier, a.metric) for a in alarms] == [("threshold", "C12", "NOISE"),
                                                                ("threshold", "C12", "MEAN")]


def test_metrics_export_prometheus_and_influx(history, tmp_path):
    table = load_history(history)
    alarms = drift_alarms(table)
    prom = export_metrics(table, tmp_path / "m.prom", instrument="LSSTComCam", alarms=alarms).read_text()
    sample = re.compile(r'^cpframe_daily_metric\{instrument="LSSTComCam",stage="BIAS",detector="4",amp="(C1\d)",'
                        r'metric="(\w+)"\} (\S+) (\d+)$')
    values = {(m.group(1), m.group(2)): float(m.group(3)) for m in map(sample.match, prom.splitlines()) if m}
    last = [r for r in table if r["day_obs"] == NIGHTS[-1] and r["amplifier"] == "C11"]
    assert values[("C11", "NOISE")] == pytest.approx(np.median([float(r["NOISE"]) for r in last]))
    assert len(values) == 3 * 3  # 3 amps x MEAN, NOISE, CR_NOISE
    ts = int(datetime.datetime(2024, 11, 8, tzinfo=datetime.timezone.utc).timestamp())  # the night, 00:00 UTC
    assert re.search(rf'^cpframe_daily_alarms\{{kind="drift"\}} 2 {ts * 1000}$', prom, re.M), prom
    assert "# TYPE cpframe_daily_metric gauge" in prom
    lp = export_metrics(table, tmp_path / "m.lp", instrument="LSSTComCam", alarms=alarms).read_text().splitlines()
    line = re.compile(r"^cpframe_daily,instrument=LSSTComCam,stage=BIAS,detector=4,amp=(C1\d) "
                      rf"CR_NOISE=(\S+),MEAN=(\S+),NOISE=(\S+) {ts * 10**9}$")
    parsed = {m.group(1): float(m.group(4)) for m in map(line.match, lp) if m}
    assert parsed["C11"] == values[("C11", "NOISE")] and len(parsed) == 3
    assert lp[-1] == f"cpframe_daily_alarms,instrument=LSSTComCam drift=2i,threshold=0i {ts * 10**9}"


class _Listener(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    _Listener.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alarms", _Listener.received
    server.shutdown()
    server.server_close()


def test_notify_posts_and_runs_a_command(history, listener, tmp_path):
    url, received = listener
    out = tmp_path / "hook.json"
    res = CliRunner().invoke(main, ["monitor", str(history), "--instrument", "LSSTComCam", "--notify-url", url,
                                    "--notify-command", f"cat > {out}; echo $CPFRAME_ALARMS > {out}.n"])
    assert res.exit_code == 7, res.output
    assert "2 drift alarm(s), 0 threshold failure(s)" in res.output and "POSTed 2 alarm(s)" in res.output
    (ctype, payload), = received
    assert ctype == "application/json" and payload["n_alarms"] == 2 and payload["instrument"] == "LSSTComCam"
    assert {a["amplifier"] for a in payload["alarms"]} == {"C11"} and payload["alarms"][0]["metric"] == "NOISE"
    assert json.loads(out.read_text()) == payload and (tmp_path / "hook.json.n").read_text().strip() == "2"
    # no alarm: nothing is sent
    assert notify([], url=url) == [] and len(received) == 1


def test_unreachable_listener_and_failing_command_are_one_line_errors(history, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    res = CliRunner().invoke(main, ["monitor", str(history), "--notify-url", f"http://127.0.0.1:{port}/x"])
    assert res.exit_code == 8 and f"could not POST the alarms to http://127.0.0.1:{port}/x" in res.output
    alarms = drift_alarms(load_history(history))
    with pytest.raises(ServiceError, match="exit code 3"):
        notify(alarms, command="exit 3")
    res = CliRunner().invoke(main, ["monitor", str(tmp_path / "none.ecsv")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.browser
def test_trend_report_renders_in_headless_chromium(history, chromium, tmp_path):
    table = load_history(history)
    rep = write_trend_report(table, tmp_path / "trend", alarms=drift_alarms(table))
    assert {p.name for p in rep.plots} == {"bias_mean.png", "bias_noise.png", "bias_cr_noise.png"}
    assert rep.n_series == 9
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
            "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom", rep.index.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-plots="3"' in body and 'data-images-ok="3"' in body, body
    assert dom.stdout.count('<li class="drift">') == 2 and "C11 NOISE" in dom.stdout
