"""Moments of a run, for performance work: where the wall time of a submission goes (issue 14).

With ``CPFRAME_TIMELINE=/some/file`` in the environment, every cpframe process of a run (the command, the local
workers' fork server, each worker) appends one line per moment to that file::

    <pid> <wall clock, s since the epoch> <this process's CPU time, s> <label>

The moments: the command's start (``command``), the fork server's launch, the rendered template, the finished
plan, the workers ready, the start of the execution and the command's exit; the fork server's imports and numba's
registries done; each worker's start; each quantum's start and end (``quantum <kind> start|end``); the fused
combine's stream and QA done.  ``benchmarks/timeline.py`` reads the file into a table
(``python benchmarks/bench_pipeline.py --timeline`` does it for every submission).  Without the variable
:func:`mark` only reads the environment: nothing is written and nothing is kept.
"""

from __future__ import annotations

import os
import time

__all__ = ["ENV", "mark"]

#: The environment variable naming the file the moments are appended to.
ENV = "CPFRAME_TIMELINE"


def mark(label: str) -> None:
    """Append this moment to the file named by ``CPFRAME_TIMELINE`` (nothing without it; never raises).

    Each line is one ``write`` to a file opened for appending, so the processes' lines do not mix.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = f"{os.getpid()} {time.time():.6f} {time.process_time():.6f} {label}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass
