"""BPS job limits enforced on Dask (issue 12): requestWalltime, retryUnlessExit/numberOfRetries,
memoryMultiplier/requestMemoryMax with a real out-of-memory failure, and ``cluster.<label>`` grouping.

Everything runs for real: quanta of a limited task run in a child process
(:mod:`cpframe.execution.isolate`) with a real ``RLIMIT_DATA`` and a real stop at the walltime;
the bias template runs on a real LocalCluster and a real SQLite repository.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from cpframe.core.errors import ExecutionError
from cpframe.execution.isolate import (
    EXIT_WALLTIME, QuantumExitError, QuantumLimits, QuantumOutOfMemory, WalltimeExceeded, call_limited,
    call_with_retries,
)
from cpframe.execution.submit import submit_template
from cpframe.execution.templates import default_templates_dir

from tests._run_helpers import TICKET, TRUTH_COLLECTION, INSTRUMENT, certify_truth_calibs, make_repo, variables


def test_walltime_stops_a_quantum_that_runs_past_it():
    t0 = time.monotonic()
    with pytest.raises(WalltimeExceeded, match=r"q1: stopped after \d+ s, past its requestWalltime of 2 s "
                                               r"\(exit code 124\); not retried") as info:
        call_with_retries("time:sleep", (60,), QuantumLimits(walltime_s=2, retries=3), label="q1")
    assert time.monotonic() - t0 < 30  # stopped, not waited for (the sleep is 60 s)
    assert info.value.quantum_exit_code == EXIT_WALLTIME and info.value.attempts == 1


def _fail_and_count(path: str, code: int) -> None:
    with open(path, "a") as fh:
        fh.write("x")
    raise SystemExit(code)


def test_retry_unless_exit_is_honoured(tmp_path):
    target = "tests.test_bps_limits:_fail_and_count"
    listed, other = tmp_path / "listed", tmp_path / "other"
    lim = QuantumLimits(retries=2, retry_unless_exit=(3, 20))
    with pytest.raises(QuantumExitError, match=r"exit code 3 after 1 attempt\(s\) \(exit code 3 is in "
                                               r"retryUnlessExit \[3, 20\]: not retried\)"):
        call_with_retries(target, (str(listed), 3), lim)
    with pytest.raises(QuantumExitError, match=r"exit code 4 after 3 attempt\(s\) \(numberOfRetries 2 used up\)"):
        call_with_retries(target, (str(other), 4), lim)
    assert listed.read_text() == "x" and other.read_text() == "xxx"  # each attempt is a real process


def test_memory_limit_is_real():
    lim = QuantumLimits(memory_bytes=64 * 2**20)
    with pytest.raises(QuantumOutOfMemory, match="out of memory .limit 64 MiB"):
        call_limited("numpy:ones", (256 * 2**20 // 8,), lim)  # 256 MiB > 64 MiB
    assert call_limited("numpy:ones", (16 * 2**20 // 8,), lim).nbytes == 16 * 2**20


_FILL_SOURCE = """
def fill_and_hold():
    held = []
    chunk = 1 << 16
    while chunk >= 8:  # to the last few bytes: the heap is full when it raises
        try:
            while True:
                held.append(bytearray(chunk))
        except MemoryError:
            chunk //= 2
    raise MemoryError("the heap is full")
"""


def test_a_quantum_that_fills_its_memory_is_reported_with_its_traceback(tmp_path, monkeypatch):
    """The failed frames hold every byte of the limit when the child formats their traceback, which reads
    the source files: in CI (and 1 run in 3 locally) that read spun at 100 % CPU instead of reporting.
    The quantum's module here has 2 MiB of source, so reading it needs memory the full heap does not
    have; the child frees the failed frames' locals first and reports the traceback."""
    module = tmp_path / "cpframe_fill_probe.py"
    module.write_text(_FILL_SOURCE + "".join(f"# {i:07d} {'.' * 90}\n" for i in range(20000)))
    assert module.stat().st_size > 2 * 10**6
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    t0 = time.monotonic()
    with pytest.raises(QuantumOutOfMemory) as info:
        call_limited("cpframe_fill_probe:fill_and_hold", (), QuantumLimits(memory_bytes=16 * 2**20, walltime_s=120))
    text = str(info.value)
    assert "out of memory (limit 16 MiB); it needs a larger requestMemory" in text, text
    assert 'cpframe_fill_probe.py", line 11, in fill_and_hold' in text  # read from the 2 MiB source:
    assert 'raise MemoryError("the heap is full")' in text and "MemoryError: the heap is full" in text
    assert time.monotonic() - t0 < 60


def _die_writing_the_report() -> None:
    """As a child that ran out of memory while writing its report: an empty report file, MemoryError on stderr."""
    import sys

    open(sys.argv[2], "wb").close()  # the child's report file (cpframe.execution.isolate's argv)
    sys.stderr.write("MemoryError\n")
    sys.stderr.flush()
    os._exit(1)


def test_a_report_cut_short_is_no_report():
    """Seen in a combine under 16 MiB: the child died writing its report, and the worker failed reading it
    (EOFError, an ordinary error, not retried with more memory). An empty report is read as none: the exit
    code and stderr say what happened."""
    with pytest.raises(QuantumOutOfMemory, match=r"out of memory \(limit 16 MiB\), its process stopped with code 1"):
        call_limited("tests.test_bps_limits:_die_writing_the_report", (), QuantumLimits(memory_bytes=16 * 2**20))
    with pytest.raises(QuantumExitError, match=r"its process exited with code 1"):
        call_limited("tests.test_bps_limits:_die_writing_the_report", (), QuantumLimits(walltime_s=60))


def _native_alloc_or_abort(n_bytes: int) -> int:
    """As a native library does: malloc, and on failure abort at once, printing nothing."""
    import ctypes
    import os

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    ptr = libc.malloc(ctypes.c_size_t(n_bytes))
    if not ptr:
        os.abort()
    libc.memset(ctypes.c_void_p(ptr), 1, ctypes.c_size_t(n_bytes))  # touch it: the memory is really used
    libc.free(ctypes.c_void_p(ptr))
    return n_bytes


def test_a_silent_abort_under_a_memory_limit_counts_as_out_of_memory():
    """In CI a combine under 16 MiB died by SIGABRT without printing why; it was retried at the same limit
    (an ordinary crash) instead of with more memory. Under a limit an abort is out of memory; without one
    it stays a crash with its signal."""
    target = "tests.test_bps_limits:_native_alloc_or_abort"
    with pytest.raises(QuantumOutOfMemory, match=r"out of memory \(limit 16 MiB\), its process aborted \(SIGABRT\)"):
        call_with_retries(target, (128 * 2**20,), QuantumLimits(memory_bytes=16 * 2**20, retries=2))
    assert call_limited(target, (128 * 2**20,), QuantumLimits(memory_bytes=256 * 2**20)) == 128 * 2**20
    with pytest.raises(QuantumExitError, match=r"killed by signal 6 \(exit code 134\) after 1 attempt"):
        call_with_retries("os:abort", (), QuantumLimits(walltime_s=60))


def _numba_modules_imported_under_the_limit() -> list[str]:
    """Run inside a limited child: compile a kernel (numba loads its typing registries on the first
    compile or cache load) and return the numba modules that had to be imported for it."""
    import sys

    import numba

    before = set(sys.modules)

    @numba.njit(cache=False)
    def twice(x):
        return 2 * x

    assert twice(3) == 6
    return sorted(m for m in set(sys.modules) - before if m.startswith("numba."))


def test_a_limited_child_loads_numbas_registries_before_its_limit():
    """The registries are imported before RLIMIT_DATA is set (cpframe.execution.isolate): in CI an import of
    numba.cpython.charseq that ran out of memory under the limit spun at 100 % CPU until the test timed out,
    instead of raising MemoryError for the retry to act on."""
    lim = QuantumLimits(memory_bytes=256 * 2**20)
    late = call_limited("tests.test_bps_limits:_numba_modules_imported_under_the_limit", (), lim,
                        preload=("cpframe.science",))  # what the graph's limited quanta preload imports numba
    assert not [m for m in late if m.startswith(("numba.cpython", "numba.np", "numba.misc"))], late


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mini_dataset):
    root = tmp_path_factory.mktemp("bpslimits")
    r = make_repo(root / "repo", mini_dataset)
    certify_truth_calibs(r, mini_dataset.truth, mini_dataset.detectors, root / "calibs")
    r.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [TRUTH_COLLECTION], mode="redefine")
    yield r
    r.close()


def _template(tmp_path, extra: str, as_name: str = "bps_bias.yaml"):
    t = tmp_path / as_name
    shutil.copy(default_templates_dir() / "bps_bias.yaml", t)
    with open(t, "a") as fh:
        fh.write("\n" + extra)
    return t


def _env(repo, tmp_path, mini_dataset, rerun):
    return variables(repo.root, tmp_path / "scratch", mini_dataset, CALIB_COLLECTIONS="", RERUN=rerun)


def test_out_of_memory_is_retried_with_more_memory_and_succeeds(tmp_path, repo, mini_dataset, local_dask):
    """16 MiB is too little for a combine (a real MemoryError under RLIMIT_DATA); 16 * 32 = 512 MiB is enough.

    (At 256 MiB a combine whose process compiles the numba kernels itself, instead of loading them from
    numba's cache, can still run out: LLVM's compilation needs it; seen on a quiet machine in CI.)"""
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestMemory: 16\n    memoryMultiplier: 32\n"
                            "    requestMemoryMax: 512\n    numberOfRetries: 2\n")
    res = submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241111a"), client=local_dask.client)
    combine = [k for k in res.plan.quanta if k.startswith("cpBiasCombine")]
    assert combine and res.execution.retried == {k: 1 for k in combine}  # each ran out once, then had 512 MiB
    assert res.counts == {"bias": len(mini_dataset.detectors)} and res.execution.ok
    # without room to grow (requestMemoryMax = requestMemory) the same quantum fails, reported as out of memory
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestMemory: 16\n    memoryMultiplier: 32\n"
                            "    requestMemoryMax: 16\n    numberOfRetries: 2\n", as_name="bps_bias_capped.yaml")
    with pytest.raises(ExecutionError, match="out of memory .limit 16 MiB"):
        submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241111b"), client=local_dask.client)


def test_request_walltime_stops_the_quanta_and_reports_them(tmp_path, repo, mini_dataset, local_dask):
    """A 1 s walltime: each combine (the whole job, process start included, as on Slurm) is stopped."""
    t = _template(tmp_path, "pipetask:\n  cpBiasCombine:\n    requestWalltime: 1\n    numberOfRetries: 3\n")
    with pytest.raises(ExecutionError, match=r"2 quantum/quanta stopped at their requestWalltime: cpBiasCombine-"):
        submit_template(t, environ=_env(repo, tmp_path, mini_dataset, "20241111c"), client=local_dask.client)


def test_cluster_groups_quanta_into_fewer_dask_tasks_with_the_same_products(tmp_path, repo, mini_dataset,
                                                                           local_dask):
    """bps_bias's ``cluster.cpBiasIsrByExposure`` (cpBiasIsr by exposure) with ISR not fused into the combine:
    12 ISR quanta run as 6 Dask tasks (one per exposure); the bias is the same, pixel for pixel."""
    from cpframe.science.imageio import read_masked

    unfused = "extraQgraphOptions: --config cpBiasCombine:fuseIsr=False\n"
    grouped_t = _template(tmp_path, unfused)
    alone_t = tmp_path / "bps_bias_alone.yaml"
    text = grouped_t.read_text()
    alone_t.write_text(text[:text.index("\ncluster:")] + "\n" + text[text.index("\npayload:"):])
    assert "cpBiasIsrByExposure" in text and "\ncluster:" not in alone_t.read_text()
    grouped = submit_template(grouped_t, environ=_env(repo, tmp_path, mini_dataset, "20241111d"),
                              client=local_dask.client)
    alone = submit_template(alone_t, environ=_env(repo, tmp_path, mini_dataset, "20241111e"),
                            client=local_dask.client)
    n_isr = sum(1 for q in grouped.plan.quanta.values() if q.task == "cpBiasIsr")
    n_exp = len({q.data_id["exposure"] for q in grouped.plan.quanta.values() if q.task == "cpBiasIsr"})
    n_det = len(mini_dataset.detectors)
    assert n_isr == n_exp * n_det and n_det > 1
    assert alone.execution.dask_tasks == n_isr + n_det  # one per quantum
    assert grouped.execution.dask_tasks == n_exp + n_det  # one per exposure, plus the combines
    assert grouped.counts == alone.counts == {"bias": n_det}

    def pixels(res):
        refs = sorted(repo.registry.query_datasets("bias", collections=[res.run]), key=lambda r: r.data_id["detector"])
        return [read_masked(repo.get_path(r)).image for r in refs]

    for a, b in zip(pixels(grouped), pixels(alone), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_quantum_process_does_not_outlive_its_worker():
    """A worker killed (run cancelled, node lost) takes its quanta's processes with it, even when it is killed
    while its quantum's process is still starting (then already left to init: flaky in CI under load)."""
    import os
    import signal
    import subprocess
    import sys

    code = ("from cpframe.execution.isolate import call_limited, QuantumLimits; "
            "call_limited('time:sleep', (600,), QuantumLimits())")
    caller = subprocess.Popen([sys.executable, "-c", code])
    kids: list[str] = []
    try:
        for _ in range(12000):  # the caller imports cpframe first: slow on a busy machine
            kids = subprocess.run(["pgrep", "-P", str(caller.pid)], capture_output=True, text=True).stdout.split()
            if kids:
                break
            time.sleep(0.01)
        assert kids, "the quantum's process did not start"
    finally:  # killed at once: the quantum's process is most likely still importing
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()

    def running(pid: str) -> bool:  # an exited orphan nobody reaps stays a zombie (state Z): not running
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(running(k) for k in kids):
            time.sleep(0.5)
        assert not any(running(k) for k in kids)
    finally:  # a failing run leaves no 600 s orphan behind
        for k in kids:
            if running(k):
                os.kill(int(k), signal.SIGKILL)
