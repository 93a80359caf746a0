"""A local cluster started in the background while ``cpframe submit`` plans.

Planning (rendering, the pipeline's and the task kinds' imports, the registry queries) takes the driver
one to two seconds; starting a LocalCluster takes about as long now that its workers import the task code
and the science stack as they start (:data:`cpframe.execution.worker_start.PRELOAD_MODULE`).  Started from a
thread as soon as the rendered template says the run is local, the two overlap.  If planning fails, or the
run turns out not to be local after all, the cluster is closed and nothing else changes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["EarlyCluster"]

log = logging.getLogger(__name__)


class EarlyCluster:
    """:func:`cpframe.execution.cluster.open_cluster` of a local cluster, running in a thread."""

    def __init__(self, settings: Any, kind: str = "local"):
        self.kind = kind
        self._settings = settings
        self._oc: Any = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._open, name="cpframe-early-cluster", daemon=True)
        log.info("starting a %s cluster while planning", kind)
        self._thread.start()

    def _open(self) -> None:
        from cpframe.execution.cluster import open_cluster
        from cpframe.execution.worker_start import start_fork_server_early

        if self.kind == "local":
            start_fork_server_early()  # first: its imports run while this thread imports distributed
        try:
            self._oc = open_cluster(self._settings, kind=self.kind)
        except BaseException as err:  # noqa: BLE001 - re-raised by take() in the submitting thread
            self._error = err

    def take(self) -> Any:
        """The :class:`cpframe.execution.cluster.OpenCluster` (waits for it); the caller closes it.

        Raises what starting the cluster raised.
        """
        self._thread.join()
        self._taken = True
        if self._error is not None:
            raise self._error
        return self._oc

    def close(self) -> None:
        """Close the cluster unless :meth:`take` handed it over (waits for a start in progress)."""
        self._thread.join()
        if not self._taken and self._oc is not None:
            log.info("closing the %s cluster started while planning: the run did not use it", self.kind)
            try:
                self._oc.close()
            except Exception:  # noqa: BLE001 - a cluster nobody used: its close must not hide the real error
                log.warning("closing the unused local cluster failed", exc_info=True)
        self._taken = True
