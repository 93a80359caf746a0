"""cpframe processes skip the interpreter's final garbage collections at exit (cpframe/core/quickexit.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cpframe.core.config import Settings
from cpframe.execution.cluster import open_cluster

ROOT = Path(__file__).resolve().parents[1]

# an object left in a reference cycle: only the collector's last pass at exit finalizes it (imports first: an
# automatic collection during an import would finalize it before the exit)
_CYCLE = """
import os
from cpframe.core.quickexit import skip_final_gc
class C:
    def __del__(self):
        os.write(1, b"finalized by the exit collection\\n")
a = C(); a.me = a; del a
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_exit_handler_skips_the_last_collection():
    plain = _run(_CYCLE)
    assert plain.returncode == 0 and "finalized by the exit collection" in plain.stdout  # the control
    quick = _run(_CYCLE + "skip_final_gc()\nskip_final_gc()\n")
    assert quick.returncode == 0 and "finalized" not in quick.stdout, quick.stdout + quick.stderr


def test_a_command_registers_it_and_a_library_import_does_not():
    code = ("from click.testing import CliRunner\nimport cpframe.cli, cpframe.core.quickexit as q\n"
            "print('before', q._registered)\n"
            "r = CliRunner().invoke(cpframe.cli.main, ['cluster', 'job-script', '--site', "
            "'cluster/slurm-site-example.yaml'])\nprint('exit', r.exit_code, 'after', q._registered)\n")
    out = _run(code)
    assert "before False" in out.stdout and "exit 0 after True" in out.stdout, out.stdout + out.stderr


def test_local_workers_register_it_as_they_start():
    with open_cluster(Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30), kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        seen = oc.client.run(lambda: __import__("cpframe.core.quickexit", fromlist=["_registered"])._registered)
    assert list(seen.values()) == [True, True]
