"""Skip the interpreter's final garbage collections when a cpframe process exits (issue 14).

After its ``atexit`` handlers, CPython tears the interpreter down and runs the cyclic garbage collector over
every object still alive: with numpy, astropy, distributed and the compiled numba kernels loaded that took
0.74-0.86 s in a process that had run one quantum, 0.08 s with the objects frozen first (``gc.freeze``), and
0.43 s in the driver of ``cpframe submit`` after its last handler (benchmarks/RESULTS.md).  The Dask nanny waits
for its worker process to be gone, so each submission paid it twice in a row.  :func:`skip_final_gc` registers a
handler that disables the collector and freezes what it tracks; the ``atexit`` handlers themselves (logging's
flush, Dask's and ``weakref.finalize``'s clean-ups, temporary directories) still run, and so does every
finalizer that reference counting triggers.  What is lost is the ``__del__`` of objects left in reference
cycles at exit: cpframe closes its files and registries explicitly, so none of its output depends on them.

Called by the command line (:func:`cpframe.cli.main`) and by each worker as it starts
(:mod:`cpframe.execution.worker_preload`); never by library calls.  A local worker forked from the fork server
(:mod:`cpframe.execution.worker_start`) ends with multiprocessing's ``os._exit``: neither the final collections
nor any ``atexit`` handler run there (cpframe's worker code cleans up with context managers, and Dask removes the
worker's directory when it closes; checked: none is left), so the handler matters for spawned workers.
"""

from __future__ import annotations

import atexit
import gc

__all__ = ["skip_final_gc"]

_registered = False


def skip_final_gc() -> None:
    """Register, once per process, the exit handler that freezes the garbage collector's objects."""
    global _registered
    if not _registered:
        atexit.register(_freeze)
        _registered = True


def _freeze() -> None:
    from cpframe.core.timeline import mark

    mark("exit")
    gc.disable()
    gc.freeze()
