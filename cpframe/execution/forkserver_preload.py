"""Imported once, by the fork server that starts a local cluster's worker processes (issue 14, start-up).

Each worker process used to be a fresh interpreter (multiprocessing's ``spawn``) that imported distributed and
the task code, then loaded numba's typing and lowering registries at its first compiled kernel (scipy's BLAS
among them) and the header translators at its first raw: about 1.4 s of CPU before the worker joined and
0.5-0.65 s more in its first quantum, paid by every worker, on the same cores as the driver's own start.  With a
fork server these are done once, in this process, and each worker is a fork of it
(:func:`cpframe.execution.worker_start.fork_server_config`).  Nothing here may start a thread: a fork copies only the
forking thread.

The header translators (astro_metadata_translator, with astropy.coordinates, pydantic and lsst.resources: 0.2-0.3 s
of this process's start, which every worker waits for) are not imported: a planned quantum carries its raws'
translated cards from the registry (:func:`cpframe.science.imageio.remember_raw_cards`), and a raw read without
them imports the translators then.
"""

from __future__ import annotations

from cpframe.core.timeline import mark

mark("fork server: start")

import distributed  # noqa: E402,F401
import distributed.nanny  # noqa: E402,F401
from numba.core.registry import cpu_target  # noqa: E402

import cpframe.execution.worker_preload  # noqa: E402,F401

mark("fork server: imports done")
try:
    cpu_target.target_context.refresh()
except Exception:  # noqa: BLE001 - an error here would stop every worker's start; the first kernel loads them
    pass
mark("fork server: numba ready")
