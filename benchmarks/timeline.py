"""Where the wall time of a run went: the moments ``CPFRAME_TIMELINE`` recorded, as a table.

Every cpframe process of a run appends its moments to the file named by ``CPFRAME_TIMELINE``
(:mod:`cpframe.core.timeline`); this reads them back: each moment in seconds from the command's start (or from
``--t0``, seconds since the epoch), the process it happened in (the command, the fork server, worker 1, 2, ...)
and that process's CPU seconds by then; the quanta of a kind that ran many times as one line (how many, first
start, last end, median wall and CPU of one); a kind's single quantum as its start and end.

Usage::

    CPFRAME_TIMELINE=/tmp/t.txt cpframe submit templates/bps_biasBootstrap.yaml
    python benchmarks/timeline.py /tmp/t.txt
    python benchmarks/bench_pipeline.py --timeline          # each submission's table
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict


def read(path: str) -> list[tuple[int, float, float, str]]:
    """The moments of a timeline file: (pid, wall clock, CPU time, label), in time order."""
    rows = []
    with open(path) as fh:
        for line in fh:
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) == 4:
                rows.append((int(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
    return sorted(rows, key=lambda r: r[1])


def roles(rows: list[tuple[int, float, float, str]]) -> dict[int, str]:
    """Which process each pid was: the command, the fork server, worker 1, 2, ... (in their start order)."""
    out: dict[int, str] = {}
    for pid, _t, _c, label in rows:
        if label == "command":
            out.setdefault(pid, "command")
        elif label.startswith("fork server"):
            out.setdefault(pid, "fork server")
    n = 0
    for pid, _t, _c, _label in rows:
        if pid not in out:
            n += 1
            out[pid] = f"worker {n}"
    return out


def summary(path: str, t0: float | None = None) -> str:
    """The table of a timeline file (module docstring)."""
    rows = read(path)
    if not rows:
        return f"{path}: no moments recorded"
    who = roles(rows)
    if t0 is None:
        t0 = next((t for _p, t, _c, label in rows if label == "command"), rows[0][1])
    lines = []
    open_q: dict[int, tuple[str, float, float]] = {}
    done: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)  # kind -> (start, end, wall, cpu)
    for pid, t, c, label in rows:
        words = label.split()
        if words[0] == "quantum" and len(words) == 3:
            kind, edge = words[1], words[2]
            if edge == "start":
                open_q[pid] = (kind, t, c)
            elif pid in open_q and open_q[pid][0] == kind:
                _k, ts, cs = open_q.pop(pid)
                done[kind].append((ts - t0, t - t0, t - ts, c - cs))
            continue
        lines.append(f"{t - t0:7.2f} s  {who[pid]:<11} {label:<28} CPU {c:5.2f} s")
    for kind, qs in done.items():
        if len(qs) == 1:
            s, e, w, c = qs[0]
            lines.append(f"{s:7.2f} s  quantum     {kind} {s:.2f} -> {e:.2f} s (wall {w:.2f} s, CPU {c:.2f} s)")
        else:
            lines.append(f"{min(q[0] for q in qs):7.2f} s  quanta      {len(qs)} x {kind}, the last ends at "
                         f"{max(q[1] for q in qs):.2f} s; one: wall {statistics.median(q[2] for q in qs):.3f} s, "
                         f"CPU {statistics.median(q[3] for q in qs):.3f} s (median), the longest "
                         f"{max(q[2] for q in qs):.3f} s")
    return "\n".join(sorted(lines, key=lambda s: float(s.split()[0])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--t0", type=float, default=None, help="seconds since the epoch to count from")
    args = ap.parse_args(argv)
    print(summary(args.path, args.t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
