"""The moments of a run (``CPFRAME_TIMELINE``, cpframe.core.timeline) and their table (benchmarks/timeline.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from cpframe.core.timeline import ENV, mark

ROOT = Path(__file__).resolve().parent.parent


def _timeline_tool():
    spec = importlib.util.spec_from_file_location("bench_timeline", ROOT / "benchmarks" / "timeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mark_writes_only_when_asked(tmp_path, monkeypatch):
    """Without the variable nothing is written; with it each moment is one line: pid, wall clock, CPU, label."""
    path = tmp_path / "t.txt"
    monkeypatch.delenv(ENV, raising=False)
    mark("nothing")
    assert not path.exists()
    monkeypatch.setenv(ENV, str(path))
    mark("first moment")
    mark("second")
    lines = path.read_text().splitlines()
    assert [ln.split(" ", 3)[3] for ln in lines] == ["first moment", "second"]
    pid, wall, cpu, _ = lines[0].split(" ", 3)
    assert int(pid) == os.getpid() and float(wall) <= float(lines[1].split()[1]) and float(cpu) >= 0


def test_processes_append_whole_lines(tmp_path):
    """Several processes writing at once leave whole lines (one write each, opened for appending)."""
    path = tmp_path / "t.txt"
    code = "from cpframe.core.timeline import mark\nfor i in range(300): mark(f'moment {i} ' + 'x' * 40)\n"
    env = dict(os.environ, **{ENV: str(path)})
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 1200
    assert all(ln.endswith("x" * 40) and len(ln.split(" ")) == 6 for ln in lines)
    assert len({ln.split()[0] for ln in lines}) == 4


def test_the_table_names_the_processes_and_groups_the_quanta(tmp_path):
    """benchmarks/timeline.py: moments in seconds from the command's start with their process and CPU; a kind's
    many quanta as one line (count, first start, last end, median wall and CPU), a single quantum as its span."""
    path = tmp_path / "t.txt"
    t = 1000.0
    rows = [(10, t, 0.1, "command"), (10, t + 0.2, 0.2, "fork server launched"), (11, t + 0.3, 0.05, "fork server: start"),
            (11, t + 1.2, 1.0, "fork server: numba ready"), (12, t + 1.3, 0.0, "worker start"),
            (13, t + 1.3, 0.0, "worker start"), (12, t + 1.5, 0.1, "quantum isrPrepass start"),
            (13, t + 1.5, 0.1, "quantum isrPrepass start"), (12, t + 1.6, 0.18, "quantum isrPrepass end"),
            (13, t + 1.8, 0.3, "quantum isrPrepass end"), (12, t + 1.9, 0.2, "quantum isrCombine start"),
            (12, t + 4.0, 4.2, "quantum isrCombine end"), (10, t + 4.1, 1.5, "exit")]
    path.write_text("".join(f"{p} {w:.6f} {c:.6f} {lab}\n" for p, w, c, lab in reversed(rows)))
    table = _timeline_tool().summary(str(path)).splitlines()
    assert table[0].split()[:4] == ["0.00", "s", "command", "command"]
    assert any(ln.split()[:4] == ["0.30", "s", "fork", "server"] and "fork server: start" in ln for ln in table)
    assert sum("worker start" in ln for ln in table) == 2
    assert {ln.split()[2] + " " + ln.split()[3] for ln in table if "worker start" in ln} == {"worker 1", "worker 2"}
    pre = next(ln for ln in table if "isrPrepass" in ln)
    assert "2 x isrPrepass" in pre and "ends at 1.80 s" in pre and "wall 0.200 s" in pre and "the longest 0.300 s" in pre
    comb = next(ln for ln in table if "isrCombine" in ln)
    assert "1.90 -> 4.00 s (wall 2.10 s, CPU 4.00 s)" in comb
    assert table[-1].split()[:4] == ["4.10", "s", "command", "exit"]
    assert _timeline_tool().summary(str(path), t0=t - 1.0).splitlines()[0].startswith("   1.00 s")
