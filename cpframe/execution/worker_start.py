"""How a worker process of cpframe starts: its malloc settings, its preload, the local workers' fork server.

Split from :mod:`cpframe.execution.cluster` (which opens the clusters).  Nothing here imports distributed at
module level: :func:`start_fork_server_early` must run before the submitting process imports it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping

import yaml

__all__ = ["FORKSERVER_PRELOAD_MODULE", "PRELOAD_MODULE", "SPAWN_ENV_KEY", "WORKER_MALLOC_ENV", "fork_server_config",
           "settings_cluster_kind_peek", "spawn_env_before_distributed", "start_fork_server_early", "worker_env",
           "worker_malloc_config"]

log = logging.getLogger(__name__)

#: What a local worker imports as it starts (the task code and the science stack).
PRELOAD_MODULE = "cpframe.execution.worker_preload"

#: glibc malloc settings of every worker process (issue 14).  Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``
#: for its workers; any explicit setting also freezes glibc's mmap threshold at 128 KiB, so every array of more
#: than 128 KiB is mapped fresh and returned at once: a fused prepass of a full-size raw then page-faults about
#: 38,000 times (its row buffers, again and again) and takes 1.4-1.8x as long as in a plain process
#: (benchmarks/RESULTS.md).  These values are what glibc's own adjustment converges to on 64-bit (mmap above
#: 32 MiB, trim above twice that); a value already in the environment of the worker's start is kept.
WORKER_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(64 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


SPAWN_ENV_KEY = "distributed.nanny.pre-spawn-environ"


def worker_malloc_config() -> dict[str, Any]:
    """``distributed.nanny.pre-spawn-environ`` with :data:`WORKER_MALLOC_ENV` (a site's own Dask config setting
    these variables to something other than Dask's default is kept; the nanny prefers the environment's)."""
    import dask
    import distributed  # noqa: F401 (its config defaults, Dask's other pre-spawn variables among them)

    return {SPAWN_ENV_KEY: _with_worker_malloc(dask.config.get(SPAWN_ENV_KEY, default={}) or {})}


def _with_worker_malloc(spawn_env: Mapping[str, Any]) -> dict[str, Any]:
    env = dict(spawn_env)
    for k, v in WORKER_MALLOC_ENV.items():
        if env.get(k) in (None, 65536, "65536"):
            env[k] = v
    return env


def spawn_env_before_distributed() -> dict[str, Any]:
    """:func:`worker_malloc_config`'s variables without importing distributed (0.3-0.5 s): its defaults read from
    its ``distributed.yaml``, under the site's Dask config as distributed merges them."""
    import importlib.util

    import dask

    if "distributed" in sys.modules:
        return worker_malloc_config()[SPAWN_ENV_KEY]
    defaults: dict[str, Any] = {}
    spec = importlib.util.find_spec("distributed")
    for d in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(d, "distributed.yaml")
        if os.path.isfile(path):
            with open(path) as fh:
                doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
            defaults = dict(((doc.get("distributed") or {}).get("nanny") or {}).get("pre-spawn-environ") or {})
            break
    return _with_worker_malloc({**defaults, **(dask.config.get(SPAWN_ENV_KEY, default=None) or {})})


#: What the fork server of local workers imports once (:func:`fork_server_config`).
FORKSERVER_PRELOAD_MODULE = "cpframe.execution.forkserver_preload"


def _fork_server_wanted() -> bool:
    """Whether local workers start as forks of a fork server (:func:`fork_server_config`); distributed not imported."""
    import multiprocessing

    import dask

    return (sys.platform.startswith("linux") and os.environ.get("CPFRAME_WORKER_START", "") != "spawn"
            and dask.config.get("distributed.worker.multiprocessing-method", "spawn") == "spawn"
            and "forkserver" in multiprocessing.get_all_start_methods())


def _start_fork_server(spawn_env: Mapping[str, Any]) -> None:
    """Start the fork server (once per process) with the environment the nannies give a spawned worker:
    ``spawn_env``, Dask's pre-spawn variables (the malloc settings, one BLAS thread), which a nanny also sets in
    this process before each start."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([FORKSERVER_PRELOAD_MODULE])
    os.environ.update({k: str(v) for k, v in spawn_env.items() if v is not None and k not in os.environ})
    if os.environ.get("PYTHONHASHSEED") in (None, "0"):
        os.environ["PYTHONHASHSEED"] = "6640"  # as a nanny does: one hash seed for all workers
    forkserver.ensure_running()


def start_fork_server_early() -> bool:
    """Start the local workers' fork server now, before distributed is imported here (``cpframe submit``'s
    early cluster, :mod:`cpframe.execution.cluster_early`): its imports then overlap the driver's own from the
    start (0.2-0.3 s sooner).  Does nothing when the workers will be spawned or the server runs already; never
    raises.  Returns whether this call started it."""
    global _early_started
    try:
        if not _early_started and _fork_server_wanted():
            _start_fork_server(spawn_env_before_distributed())
            _early_started = True
            return True
    except Exception:  # noqa: BLE001 - the cluster's own start still starts it, or spawns
        log.debug("could not start the fork server early", exc_info=True)
    return False


_early_started = False


def settings_cluster_kind_peek() -> str:
    """The cluster kind the settings will give (``cpframe.cluster.kind`` in Dask's config: cpframe.yaml's default
    ``local``, a site's Dask config files or ``DASK_CPFRAME__CLUSTER__KIND``), read without importing and validating
    the settings (:func:`cpframe.core.config.load_settings`: pydantic, 0.1-0.2 s), so that the fork server can start
    before them; a value the settings would refuse is "?" (they then report it)."""
    import dask

    kind = dask.config.get("cpframe.cluster.kind", default="local")
    return kind if kind in ("local", "slurm") else "?"


def fork_server_config(spawn_env: Mapping[str, Any]) -> dict[str, Any]:
    """Dask config that starts local workers as forks of one fork server holding their imports, or {} to spawn.

    Forks of one process that imported distributed, the task code and numba's registries once, instead of one
    fresh interpreter per worker that imports them all (:mod:`cpframe.execution.forkserver_preload`).  Only on
    Linux, only when the site's Dask config leaves Dask's default (``spawn``), and not with
    ``CPFRAME_WORKER_START=spawn`` in the environment (the way back, should a site need it).  The server is
    started once per process (here, before the scheduler, if :func:`start_fork_server_early` did not), with that
    moment's environment and umask; a worker gets the submitting process's as they are at its cluster's start
    (:func:`worker_env`; ``sys.path`` and the working directory multiprocessing hands over itself).
    """
    import distributed.utils

    if not _fork_server_wanted() or not hasattr(distributed.utils, "_forkserver_preload_set"):
        return {}  # (a Dask without that flag: one we have not seen, spawn)
    # set, Dask's own preload list is not imported in this process (pandas and more); the server imports ours
    distributed.utils._forkserver_preload_set = True
    _start_fork_server(spawn_env)
    return {"distributed.worker.multiprocessing-method": "forkserver"}


def worker_env() -> dict[str, str]:
    """What a forked worker must take from the submitting process as it is now, not as it was when the fork
    server started: its environment and its umask (set by :mod:`cpframe.execution.worker_preload`)."""
    from cpframe.core.files import current_umask  # (numpy: not before the fork server's start)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # malloc: read at exec only
    env["CPFRAME_WORKER_UMASK"] = oct(current_umask())
    return env
