"""Imported by every local Dask worker as it starts (``LocalCluster(preload=...)``): the task code and the
science stack (numpy, astropy, numba, through the fused ISR -> combine's modules: the kinds themselves import
their science modules only when a quantum runs, :mod:`cpframe.science.configs`), so that the first quantum of each
worker does not pay for them (the other kinds' science modules then take ~0.03 s more at their first quantum).  ``cpframe submit`` starts the local cluster while it plans (:mod:`cpframe.execution.submit`),
so these imports overlap the driver's own instead of delaying the first quanta.  It also makes the worker
process skip the interpreter's final garbage collections when it exits (:mod:`cpframe.core.quickexit`: 0.7-0.8 s
that closing the cluster waited for).

Local workers are forks of a fork server that imported this module once
(:mod:`cpframe.execution.forkserver_preload`); :func:`dask_setup` then runs in each worker and gives it the umask
of the submitting process as it is at the cluster's start.  A forked worker ends with multiprocessing's
``os._exit``, which skips the final collections anyway (and ``atexit`` handlers: :mod:`cpframe.core.quickexit`).
"""

from __future__ import annotations

import os

import cpframe.execution.graph_tasks  # noqa: F401
import cpframe.execution.kinds  # noqa: F401
import cpframe.science.fused_tasks  # noqa: F401
from cpframe.core.quickexit import skip_final_gc
from cpframe.core.timeline import mark

skip_final_gc()


def dask_setup(worker=None) -> None:
    """Dask's preload hook, in each worker: the submitting process's umask (``CPFRAME_WORKER_UMASK``, set by
    :func:`cpframe.execution.worker_start.worker_env`)."""
    mark("worker start")
    mask = os.environ.get("CPFRAME_WORKER_UMASK")
    if mask:
        os.umask(int(mask, 8))
