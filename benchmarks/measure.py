"""Run a command; print its wall time and the CPU time and largest RSS of every process it started.

Usage::

    python benchmarks/measure.py python3 -m cpframe demo DIR

``/usr/bin/time`` counts the processes the command waits for.  A local cluster's workers are forks of a fork
server (docs/submit.md), a process the command does not wait for: it exits with the command and is left to
init, so ``/usr/bin/time`` misses the workers' CPU (a submission showed 1.7 s instead of 13 s).  This wrapper
makes itself the tree's "child subreaper" (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): such orphans are left to
it instead, it waits for them, and their usage is added to its children's.  The wall time is the command's
alone (until it exits, what its user waits for); the last line of stderr is a JSON object: ``rc``,
``wall_s``, ``cpu_s`` (user + system of every process), ``max_rss_kib`` (the largest single process's).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed: the CPU of orphaned processes would be lost")
    t0 = time.perf_counter()
    rc = subprocess.Popen(argv).wait()
    wall = time.perf_counter() - t0
    while True:  # the orphans (the fork server exits with its parent)
        try:
            os.wait()
        except ChildProcessError:
            break
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write("\nMEASURED " + json.dumps({"rc": rc, "wall_s": round(wall, 3),
                                                 "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                                                 "max_rss_kib": ru.ru_maxrss}) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
