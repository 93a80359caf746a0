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

import sys

from cpframe.core.timeline import mark

mark("fork server: start")

import distributed  # noqa: E402,F401
import distributed.nanny  # noqa: E402,F401
from numba.core.registry import cpu_target  # noqa: E402

import cpframe.execution.worker_preload  # noqa: E402,F401

mark("fork server: imports done")


class _NoScipyLinalg:
    """An import finder that refuses scipy.linalg while numba's registries load.

    Loading them imports numba's ``np.arraymath``, whose import checks for a BLAS by importing
    ``scipy.linalg.cython_blas``: scipy.linalg, and through scipy's array-API shim numpy.f2py and numpy.testing,
    0.13-0.14 s of this process's start that every worker waits for (issue 14, seventh session).  The check's
    only use is to choose how numba's ``np.convolve`` / ``np.correlate`` take inner products (a plain loop then,
    not ``np.dot``); no cpframe kernel calls them, and numba's linear algebra (``np.dot``, ``np.linalg``) still
    imports scipy.linalg when a kernel first uses it, since the finder is gone by then."""

    def find_spec(self, name, path=None, target=None):
        if name == "scipy.linalg" or name.startswith("scipy.linalg."):
            raise ImportError(f"{name} is not imported while numba's registries load (cpframe fork server)")
        return None


_finder = _NoScipyLinalg()
sys.meta_path.insert(0, _finder)
try:
    cpu_target.target_context.refresh()
except Exception:  # noqa: BLE001 - an error here would stop every worker's start; the first kernel loads them
    pass
finally:
    sys.meta_path.remove(_finder)
mark("fork server: numba ready")
