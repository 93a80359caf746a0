"""How many threads a quantum may use on its node: its own plus those of the node's idle workers.

A fused combine quantum (:func:`cpframe.science.fused.isr_combine`) streams one detector on one
worker thread; when it starts, the detector's other quanta (the prepasses) are done, so on a small
run the node's other workers have nothing to do.  It asks the scheduler which workers on its host
are idle, with no task assigned and none waiting for a worker (queued or unrunnable), and uses their
threads as well.  On a busy cluster that is none, and it runs on its own thread, as before.  A
worker that gets a task later shares its cores with these threads until the quantum ends.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["idle_threads_here"]

log = logging.getLogger(__name__)


def _idle_threads_on_host(dask_scheduler, host: str, me: str) -> int:
    """Run on the scheduler: threads of the workers on ``host`` other than ``me`` that have nothing to do."""
    if len(getattr(dask_scheduler, "queued", ())) or len(getattr(dask_scheduler, "unrunnable", ())):
        return 0
    return sum(ws.nthreads for ws in dask_scheduler.workers.values()
               if ws.address != me and ws.host == host and not ws.processing)


def idle_threads_here(limit: int | None = None) -> int:
    """1 + the threads of the idle workers on this worker's host (1 outside a Dask worker or if the
    scheduler cannot be asked), at most ``limit``."""
    if "distributed" not in sys.modules:  # not a Dask worker (an isolated child: importing it would cost memory)
        return 1
    try:
        from distributed import get_client, get_worker
        from distributed.comm.addressing import get_address_host

        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    try:
        extra = int(get_client().run_on_scheduler(_idle_threads_on_host, host=get_address_host(worker.address),
                                                  me=worker.address))
    except Exception as err:  # noqa: BLE001 - a question about spare cores must never fail the quantum
        log.debug("could not ask the scheduler for idle workers (%r): one thread", err)
        extra = 0
    n = 1 + max(0, extra)
    return n if limit is None else max(1, min(n, int(limit)))
