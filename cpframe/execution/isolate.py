"""Run one quantum in its own process with BPS's job limits: walltime, memory, exit codes, retries.

BPS runs every quantum (or cluster of quanta) as a batch job: the batch system stops a job at its
``requestWalltime``, holds or kills it when it uses more than its ``requestMemory``, and BPS
retries it ``numberOfRetries`` times unless it exited with a code listed in ``retryUnlessExit``.
cpframe normally runs a quantum as a thread of a Dask worker, where none of this can be enforced
(a thread cannot be stopped).  A quantum of a task that asks for one of these limits is therefore
run by :func:`call_limited` in a child process of the worker (``python -m
cpframe.execution.isolate``), which:

* is stopped (SIGTERM, then SIGKILL 5 s later) when it runs longer than ``walltime_s`` --
  :class:`WalltimeExceeded`, exit code 124 as GNU ``timeout``; never retried (the same
  walltime would run out again);
* has its data segment limited (``RLIMIT_DATA``: heap and private writable mappings, i.e.
  the arrays a task allocates) to its start-up size plus ``memory_bytes``, so a quantum that
  needs more gets a real ``MemoryError`` -- :class:`QuantumOutOfMemory`; a child killed by
  SIGKILL that we did not send (the kernel's OOM killer), or one that aborted (SIGABRT: a
  native library such as numba's LLVM that could not allocate, with or without saying so) or
  printed that it is out of memory, counts as out of memory too.  The
  driver (:mod:`cpframe.execution.execute`) then runs it again with ``requestMemory *
  memoryMultiplier**n`` (capped at ``requestMemoryMax``), as BPS does;
* exits with a code: 0 done, the ``exit_code`` of a cpframe error (2 user input, 3 registry,
  4 planning, ... as the CLI: :mod:`cpframe.core.errors`), 1 any other exception, ``128 +
  signal`` when killed by a signal.  A failure whose code is in ``retry_unless_exit`` is
  reported at once; others are retried in a fresh process up to ``retries`` times
  (:func:`call_with_retries`) -- :class:`QuantumExitError`.

The child inherits the worker's environment (so the submission's ``environment`` section applies)
and writes only the files the quantum writes plus two pickles in a private temporary folder.
"""

from __future__ import annotations

import gc
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Sequence

from cpframe.core.errors import ExecutionError

__all__ = ["EXIT_WALLTIME", "QuantumExitError", "QuantumLimits", "QuantumOutOfMemory", "WalltimeExceeded",
           "call_limited", "call_with_retries", "exit_code_of"]

#: Exit code of a quantum stopped at its walltime (as GNU ``timeout``).
EXIT_WALLTIME = 124
#: What a native library prints when it cannot allocate (then aborts instead of raising MemoryError);
#: ``bad_alloc`` also matches the mangled ``St9bad_alloc`` printed when demangling cannot allocate either.
_OOM_TEXT = re.compile(r"out of memory|Cannot allocate memory|bad_alloc|allocation failed|MemoryError",
                       re.IGNORECASE)
#: Seconds between SIGTERM and SIGKILL when a quantum is stopped.
_KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class QuantumLimits:
    """What BPS would enforce on the job of one quantum (None: not enforced)."""

    walltime_s: float | None = None
    """``requestWalltime``: longest run, seconds (counted from the start of the child process)."""
    memory_bytes: int | None = None
    """``requestMemory`` for this attempt, bytes above the child's start-up data size (enforced only
    when the task sets ``memoryMultiplier``: it asks for retry-with-more-memory)."""
    retries: int = 0
    """``numberOfRetries``: extra attempts after a failure whose exit code is not listed below."""
    retry_unless_exit: tuple[int, ...] = ()
    """``retryUnlessExit``: exit codes never retried."""


class QuantumExitError(ExecutionError):
    """A quantum's process failed; ``exit_code``, ``attempts`` and the child's ``detail`` are kept."""

    def __init__(self, headline: str, exit_code: int, attempts: int = 1, detail: str = ""):
        # the child's error first, the summary last (failure reports show an error's last line)
        quoted = "".join(f"  | {line}\n" for line in detail.splitlines())
        super().__init__(f"{quoted}{headline}")
        self.headline = headline
        self.quantum_exit_code = int(exit_code)
        self.attempts = attempts
        self.detail = detail

    def __reduce__(self):  # keep the attributes when Dask sends the error to the driver
        return (type(self), (self.headline, self.quantum_exit_code, self.attempts, self.detail))


class WalltimeExceeded(QuantumExitError):
    """A quantum stopped because it ran longer than its ``requestWalltime``."""


class QuantumOutOfMemory(MemoryError):
    """A quantum that needed more memory than its limit (``MemoryError`` in it, or killed by the kernel)."""


def exit_code_of(exc: BaseException) -> int:
    """The exit code a failed quantum reports: a cpframe error's own code, else 1.

    >>> from cpframe.core.errors import UserInputError
    >>> exit_code_of(UserInputError("x")), exit_code_of(ValueError("y")), exit_code_of(SystemExit(3))
    (2, 1, 3)
    """
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else 1


def call_limited(target: str, args: Sequence[Any], limits: QuantumLimits, label: str = "quantum",
                 preload: Sequence[str] = ()) -> Any:
    """Call ``module:function(*args)`` once in a child process under ``limits``; return its value.

    ``preload`` names packages whose every module the child imports before its memory is limited
    (the limit is meant for the quantum's data: an import that cannot allocate may hang).

    Raises
    ------
    WalltimeExceeded
        Still running after ``limits.walltime_s``: the child was stopped.
    QuantumOutOfMemory
        ``MemoryError`` in the child, the child killed by SIGKILL (out of memory), or, under a memory
        limit, aborted (SIGABRT) or saying it could not allocate.
    QuantumExitError
        Any other failure; ``quantum_exit_code`` as in the module docstring.
    """
    with tempfile.TemporaryDirectory(prefix="cpframe-quantum-") as tmp:
        job, out = os.path.join(tmp, "in.pickle"), os.path.join(tmp, "out.pickle")
        with open(job, "wb") as fh:
            pickle.dump((target, tuple(args), limits.memory_bytes, tuple(preload)), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "cpframe.execution.isolate", job, out, str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=limits.walltime_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            raise WalltimeExceeded(
                f"{label}: stopped after {time.monotonic() - t0:.0f} s, past its requestWalltime of "
                f"{limits.walltime_s:g} s (exit code {EXIT_WALLTIME}); not retried. Raise requestWalltime "
                f"(pipetask.<label>.requestWalltime) if it needs longer.", EXIT_WALLTIME,
                detail=_tail(err, 40)) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        result = None
        if os.path.exists(out):
            try:
                with open(out, "rb") as fh:
                    result = pickle.load(fh)
            except (EOFError, pickle.UnpicklingError):  # the child died writing it (out of memory?): no report
                result = None
        rc = proc.returncode
        if rc == 0 and result is not None and result[0] == "ok":
            return result[1]
        if result is not None and result[0] == "error":
            _, type_name, text, code = result
            if type_name == "MemoryError":
                limit = f"{limits.memory_bytes / 2**20:.0f} MiB" if limits.memory_bytes else "the machine's"
                quoted = "".join(f"  | {line}\n" for line in text.splitlines())
                raise QuantumOutOfMemory(f"{quoted}{label}: out of memory (limit {limit}); it needs a larger "
                                         "requestMemory (memoryMultiplier / requestMemoryMax)")
            raise QuantumExitError(f"{label}: failed with exit code {code}", code, detail=text)
        if limits.memory_bytes and (rc == -signal.SIGABRT or _OOM_TEXT.search((err or b"").decode(errors="replace"))):
            # a native library that could not allocate under the limit aborts (numba/LLVM, C++ new: SIGABRT),
            # sometimes without a word (printing the reason needs memory too; seen in CI): under a memory limit
            # an abort counts as out of memory, so the driver retries it with more (memoryMultiplier)
            quoted = "".join(f"  | {line}\n" for line in _tail(err, 3).splitlines())
            how = "aborted (SIGABRT)" if rc == -signal.SIGABRT else f"stopped with code {rc}"
            raise QuantumOutOfMemory(f"{quoted}{label}: out of memory (limit {limits.memory_bytes / 2**20:.0f} MiB), "
                                     f"its process {how}")
        if rc < 0:
            if -rc == signal.SIGKILL:
                raise QuantumOutOfMemory(f"{label}: killed by SIGKILL (out of memory?): {_tail(err)}")
            code = 128 - rc
            raise QuantumExitError(f"{label}: killed by signal {-rc} (exit code {code})", code, detail=_tail(err))
        raise QuantumExitError(f"{label}: its process exited with code {rc}", rc, detail=_tail(err))


def call_with_retries(target: str, args: Sequence[Any], limits: QuantumLimits, label: str = "quantum",
                      preload: Sequence[str] = ()) -> Any:
    """:func:`call_limited`, tried again after a failure unless its exit code is in ``retry_unless_exit``.

    Out of memory and walltime are never retried here: the driver retries the first with more
    memory, and the second would run out again.  The error raised last says how many attempts ran.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return call_limited(target, args, limits, label, preload)
        except (WalltimeExceeded, QuantumOutOfMemory):
            raise
        except QuantumExitError as err:
            code = err.quantum_exit_code
            listed = code in limits.retry_unless_exit
            if listed or attempt > limits.retries:
                why = (f"exit code {code} is in retryUnlessExit {list(limits.retry_unless_exit)}: not retried"
                       if listed else f"numberOfRetries {limits.retries} used up")
                raise QuantumExitError(f"{err.headline} after {attempt} attempt(s) ({why})", code, attempt,
                                       err.detail) from None


def _tail(err: bytes | None, n: int = 5) -> str:
    text = (err or b"").decode(errors="replace").strip().splitlines()
    return "\n".join(text[-n:]) if text else "(no output)"


def _data_size_bytes() -> int:
    """This process's data segment now (``VmData`` of /proc/self/status)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover - Linux always has VmData


def _die_with_parent(parent: int) -> None:
    """Exit when the worker ``parent`` that started this process is gone (killed, cancelled run): no orphan
    runs on.  ``parent`` is passed by the worker, not read here: a worker killed while this process was
    still starting (Python's start-up is slow on a busy machine) has already left it to init, and
    ``os.getppid()`` would then name init as the parent to watch."""
    import threading

    if os.getppid() != parent:
        os._exit(128 + signal.SIGHUP)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(128 + signal.SIGHUP)

    threading.Thread(target=watch, name="cpframe-parent-watch", daemon=True).start()


#: Memory a limited child sets aside before its limit, freed to write the report of an out-of-memory failure.
_REPORT_RESERVE_BYTES = 2**20
_reserve: list[bytearray] = []


def _free_for_report(exc: BaseException) -> None:
    """Free what a quantum that ran out of memory still holds, before its traceback is formatted.

    The traceback keeps the failed frames, and with them their locals (the quantum's arrays): formatting it
    reads the source files (``linecache``), which needs memory.  With none left, CPython spun in that read
    at 100 % CPU instead of raising (seen in CI and locally: test_bps_limits, a combine under 16 MiB).
    The frames' locals are cleared (their code and line numbers, all the report needs, stay), then collected,
    and the reserve set aside before the limit is given back.
    """
    _reserve.clear()
    traceback.clear_frames(exc.__traceback__)
    gc.collect()


def _child(job: str, out: str, parent: int) -> int:
    import faulthandler
    import importlib
    import resource

    # stopped at the walltime: say where it was (the parent shows the end of stderr)
    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)

    _die_with_parent(parent)
    with open(job, "rb") as fh:
        target, args, memory_bytes, preload = pickle.load(fh)
    module, _, name = target.partition(":")
    func = getattr(importlib.import_module(module), name)
    if memory_bytes:
        import pkgutil

        for pkg in preload:
            mod = importlib.import_module(pkg)
            for info in pkgutil.walk_packages(getattr(mod, "__path__", []), f"{pkg}."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)
        if "numba" in sys.modules:
            # numba imports its typing and lowering registries (numba.cpython.unicode, charseq...) on the
            # first compile or cache load: do it now, outside the limit. Seen in CI: that import, run
            # out of memory under the limit, spun at 100 % CPU instead of raising MemoryError.
            from numba.core.registry import cpu_target

            cpu_target.target_context.refresh()
        _reserve.append(bytearray(_REPORT_RESERVE_BYTES))  # outside the limit: room for the report, freed for it
        limit = _data_size_bytes() + int(memory_bytes)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        value = func(*args)
        payload: tuple = ("ok", value)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent with its code
        code = exit_code_of(exc)
        name = "MemoryError" if isinstance(exc, MemoryError) else type(exc).__name__
        if name == "MemoryError":
            _free_for_report(exc)
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except MemoryError:
            text = f"{name}: {exc} (no memory left to format its traceback)\n"
        payload = ("error", name, text, code)
        del exc
    try:
        with open(out, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:  # the report without its traceback (the parent reads a file it cannot load as no report)
        with open(out, "wb") as fh:
            pickle.dump(("error", "MemoryError", "MemoryError (no memory left to report it)\n", 1), fh)
    return code


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else os.getppid()))
