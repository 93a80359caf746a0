"""Open a Dask cluster: ``distributed.LocalCluster`` or ``dask_jobqueue.SLURMCluster``.

The only module importing ``dask_jobqueue``.  A Slurm *site file* (YAML, see
``cluster/slurm-site-example.yaml``) says how jobs are shaped; the
:class:`~cpframe.core.config.Settings` say which kind of cluster and the default
limits.  The job script is printable without any cluster (:func:`job_script`,
``cpframe cluster job-script``).

``open_cluster`` returns an :class:`OpenCluster`, a context manager that closes
the client and the cluster and then makes sure no Slurm job of this cluster is
left in the queue (every job carries a unique ``#SBATCH -J`` name, so leftovers
are found with ``squeue -n`` and cancelled by id).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from cpframe.core import yamlsafe
from cpframe.core.config import Settings, parse_bytes
from cpframe.core.errors import ConfigError, ServiceError, SubprocessError
from cpframe.execution.worker_start import (
    PRELOAD_MODULE, SPAWN_ENV_KEY, WORKER_MALLOC_ENV, fork_server_config, worker_env, worker_malloc_config,
)

log = logging.getLogger(__name__)

__all__ = [
    "OpenCluster",
    "SlurmSite",
    "default_cluster_dir",
    "find_site_profile",
    "job_class",
    "list_sites",
    "user_sites_dir",
    "job_script",
    "load_site",
    "open_cluster",
    "parse_duration",
    "resolve_site_path",
    "slurm_job_kwargs",
]

#: Batch systems a site profile may name (dask-jobqueue classes), besides ``local``.
JOBQUEUE_KINDS = ("slurm", "pbs", "sge", "lsf", "htcondor")
SITE_KINDS = ("local", *JOBQUEUE_KINDS)
_JOB_CLASSES = {"slurm": ("dask_jobqueue.slurm", "SLURMJob", "SLURMCluster"),
                "pbs": ("dask_jobqueue.pbs", "PBSJob", "PBSCluster"),
                "sge": ("dask_jobqueue.sge", "SGEJob", "SGECluster"),
                "lsf": ("dask_jobqueue.lsf", "LSFJob", "LSFCluster"),
                "htcondor": ("dask_jobqueue.htcondor", "HTCondorJob", "HTCondorCluster")}

SITE_KEYS = {
    "kind": "batch system: slurm (default), pbs, sge, lsf, htcondor, or local",
    "disk": "HTCondor only: disk per job, text with unit (default: the memory)",
    "queue": "Slurm partition (#SBATCH -p)",
    "account": "Slurm account (#SBATCH -A)",
    "walltime": "job time limit HH:MM:SS (#SBATCH -t)",
    "cores": "cores per job",
    "processes": "Dask worker processes per job",
    "memory": "memory per job, text with unit ('4 GiB')",
    "interface": "network interface for scheduler and workers ('lo' on the single-node test Slurm)",
    "job-extra-directives": "extra #SBATCH lines, e.g. ['--export=ALL', '--qos=normal']",
    "job-script-prologue": "shell lines run before the worker starts (module load, source ...)",
    "worker-lifetime": "a worker retires after this long ('25m'), before the walltime kills it",
    "worker-lifetime-stagger": "random spread of the lifetime ('2m') so workers do not retire together",
    "death-timeout": "seconds a worker waits for the scheduler before giving up",
    "log-directory": "where sbatch writes worker .out/.err files",
    "local-directory": "worker scratch / spill directory",
    "python": "python on the compute nodes (default: this python)",
    "adapt": "{minimum-jobs, maximum-jobs}: adaptive scaling limits (default: the settings)",
}

MSG_NO_SLURM = (
    "Slurm is not reachable: {detail}. Start the test cluster with cluster/start-local-slurm.sh and "
    "`source <state dir>/env.sh` (it sets SLURM_CONF), or run on a login node of a Slurm site."
)

_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:d|h|hr|m|min|s|sec)?\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|hr|h|min|m|sec|s)?")
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2})(?::(\d{2}))?$")


def default_cluster_dir() -> Path:
    """The project's ``cluster/`` folder (site files, Slurm scripts)."""
    return Path(__file__).resolve().parents[2] / "cluster"


def parse_duration(text: str | int | float, what: str = "duration") -> int:
    """Seconds from ``'90s'``, ``'25m'``, ``'3h45m'``, ``'1d'``, ``'01:30:00'`` or a number of seconds.

    >>> parse_duration("25m"), parse_duration("3h45m"), parse_duration("01:30:00"), parse_duration(45)
    (1500, 13500, 5400, 45)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    s = str(text)
    m = _WALLTIME.match(s.strip())
    if m:
        d, h, mi, sec = m.groups()
        return int(d or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + int(sec or 0)
    if not s.strip() or not _DURATION.match(s.strip()):
        raise ConfigError(f"{what} {text!r} is not a duration; write e.g. '25m', '3h45m' or '01:30:00'.")
    mult = {"s": 1, "sec": 1, None: 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}
    return int(sum(float(n) * mult[u] for n, u in _DURATION_PART.findall(s.strip()) if n) + 0.5)


@dataclass(frozen=True)
class SlurmSite:
    """A validated Slurm site file."""

    path: str
    """The site file."""
    queue: str | None = None
    """Partition (``#SBATCH -p``)."""
    account: str | None = None
    """Account (``#SBATCH -A``)."""
    walltime: str = "01:00:00"
    """Job time limit, Slurm syntax."""
    cores: int = 1
    """Cores per job."""
    processes: int = 1
    """Dask worker processes per job."""
    memory_bytes: int = 2 * 2**30
    """Memory per job, bytes."""
    interface: str | None = None
    """Network interface for scheduler and workers."""
    job_extra_directives: tuple[str, ...] = ()
    """Extra ``#SBATCH`` arguments."""
    job_script_prologue: tuple[str, ...] = ()
    """Shell lines before the worker command."""
    worker_lifetime_s: int | None = None
    """Worker ``--lifetime``, seconds."""
    worker_lifetime_stagger_s: int | None = None
    """Worker ``--lifetime-stagger``, seconds."""
    death_timeout_s: float = 60.0
    """Worker ``--death-timeout``, seconds."""
    log_directory: str | None = None
    """Directory of the job .out/.err files."""
    local_directory: str | None = None
    """Worker scratch directory."""
    python: str = field(default_factory=lambda: sys.executable)
    """Python used on the compute nodes."""
    minimum_jobs: int | None = None
    """Adaptive lower limit (None: settings)."""
    maximum_jobs: int | None = None
    """Adaptive upper limit (None: settings)."""
    kind: str = "slurm"
    """Batch system (:data:`SITE_KINDS`); ``local`` runs a LocalCluster from the settings."""
    disk_bytes: int | None = None
    """HTCondor: disk per job, bytes (None: the memory)."""

    def adapt_limits(self, settings: Settings) -> tuple[int, int]:
        """(minimum, maximum) jobs of adaptive scaling: the site's limits, else the settings'."""
        minimum = self.minimum_jobs if self.minimum_jobs is not None else settings.minimum_jobs
        maximum = self.maximum_jobs if self.maximum_jobs is not None else settings.maximum_jobs
        return minimum, max(maximum, minimum)


def resolve_site_path(name: str | os.PathLike) -> Path:
    """A site file by path, else by name in the project's ``cluster/`` folder.

    Raises
    ------
    ConfigError
        Not found; lists the site files shipped in ``cluster/``.
    """
    p = Path(os.path.expandvars(str(name))).expanduser()
    if p.is_file():
        return p
    cand = default_cluster_dir() / p
    if not p.is_absolute() and cand.is_file():
        return cand
    shipped = sorted(x.name for x in default_cluster_dir().glob("*.yaml"))
    raise ConfigError(f"Slurm site file {str(name)!r} not found (also looked in {default_cluster_dir()}). "
                      f"Shipped site files: {', '.join(shipped) or '(none)'}.")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_site(path: str | os.PathLike) -> SlurmSite:
    """Read and validate a Slurm site file (every problem at once).

    ``${VAR}`` in values is expanded from the environment.

    Raises
    ------
    ConfigError
        Missing file, bad YAML, unknown keys, wrong values.
    """
    p = resolve_site_path(path)
    try:
        data = yamlsafe.load(p.read_text(), str(p), max_nodes=100_000) or {}  # bounded aliases (issue 11)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: a site file must be a mapping of keys ({', '.join(SITE_KEYS)}).")
    data = {k: _expand(v) for k, v in data.items()}
    problems: list[str] = []
    unknown = [k for k in data if k not in SITE_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(SITE_KEYS)}")
    kind = data.get("kind", "slurm")
    if kind not in SITE_KINDS:
        problems.append(f"kind must be one of {', '.join(SITE_KINDS)}, got {kind!r}")
    kw: dict[str, Any] = {"path": str(p), "kind": kind if kind in SITE_KINDS else "slurm"}
    if "disk" in data:
        try:
            kw["disk_bytes"] = parse_bytes(data["disk"], "disk")
        except ConfigError as err:
            problems.append(str(err))

    def text(key: str, attr: str) -> None:
        v = data.get(key)
        if v is None:
            return
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            problems.append(f"{key} must be text, got {v!r}")
        else:
            kw[attr] = str(v)

    def integer(key: str, attr: str, minimum: int) -> None:
        v = data.get(key)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            problems.append(f"{key} must be a whole number >= {minimum}, got {v!r}")
        else:
            kw[attr] = v

    def lines(key: str, attr: str) -> None:
        v = data.get(key)
        if v is None:
            return
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            problems.append(f"{key} must be a list of text lines, got {v!r}")
        else:
            kw[attr] = tuple(v)

    def duration(key: str, attr: str) -> None:
        v = data.get(key)
        if v is None:
            return
        try:
            kw[attr] = parse_duration(v, key)
        except ConfigError as err:
            problems.append(str(err))

    for key, attr in (("queue", "queue"), ("account", "account"), ("interface", "interface"),
                      ("log-directory", "log_directory"), ("local-directory", "local_directory"),
                      ("python", "python")):
        text(key, attr)
    wt = data.get("walltime")
    if wt is not None:
        if not isinstance(wt, str) or not _WALLTIME.match(wt.strip()):
            problems.append(f"walltime must be Slurm time text such as '01:00:00' or '1-00:00:00', got {wt!r}")
        else:
            kw["walltime"] = wt.strip()
    integer("cores", "cores", 1)
    integer("processes", "processes", 1)
    if "memory" in data:
        try:
            kw["memory_bytes"] = parse_bytes(data["memory"], "memory")
        except ConfigError as err:
            problems.append(str(err))
    lines("job-extra-directives", "job_extra_directives")
    lines("job-script-prologue", "job_script_prologue")
    duration("worker-lifetime", "worker_lifetime_s")
    duration("worker-lifetime-stagger", "worker_lifetime_stagger_s")
    duration("death-timeout", "death_timeout_s")
    adapt = data.get("adapt")
    if adapt is not None:
        if not isinstance(adapt, Mapping) or set(adapt) - {"minimum-jobs", "maximum-jobs"}:
            problems.append(f"adapt must be a mapping with minimum-jobs and/or maximum-jobs, got {adapt!r}")
        else:
            for key, attr in (("minimum-jobs", "minimum_jobs"), ("maximum-jobs", "maximum_jobs")):
                v = adapt.get(key)
                if v is not None:
                    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                        problems.append(f"adapt.{key} must be a whole number >= 0, got {v!r}")
                    else:
                        kw[attr] = v
    if kw.get("processes", 1) > kw.get("cores", 1):
        problems.append(f"processes ({kw.get('processes')}) cannot exceed cores ({kw.get('cores', 1)})")
    lifetime, wall = kw.get("worker_lifetime_s"), kw.get("walltime")
    if lifetime and wall and lifetime >= parse_duration(wall):
        problems.append(f"worker-lifetime ({data.get('worker-lifetime')}) must be shorter than the walltime "
                        f"({wall}) so workers retire before Slurm kills them")
    if (kw.get("minimum_jobs") or 0) > (kw.get("maximum_jobs") if kw.get("maximum_jobs") is not None else 10**9):
        problems.append("adapt.minimum-jobs is larger than adapt.maximum-jobs")
    if problems:
        items = "\n".join(f"  - {x}" for x in problems)
        raise ConfigError(f"{p}: the Slurm site file has {len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}:\n{items}")
    return SlurmSite(**kw)


def _site(site: SlurmSite | str | os.PathLike | None, settings: Settings | None) -> SlurmSite:
    if isinstance(site, SlurmSite):
        return site
    if site is None:
        site = (settings or Settings()).site_file
    return load_site(site)


def _fmt_duration(seconds: int) -> str:
    return f"{seconds}s"


def slurm_job_kwargs(site: SlurmSite, job_name: str = "cpframe-worker") -> dict[str, Any]:
    """Keyword arguments for ``SLURMCluster`` / ``SLURMJob`` from a site."""
    worker_args: list[str] = []
    if site.worker_lifetime_s:
        worker_args += ["--lifetime", _fmt_duration(site.worker_lifetime_s)]
        if site.worker_lifetime_stagger_s:
            worker_args += ["--lifetime-stagger", _fmt_duration(site.worker_lifetime_stagger_s)]
    # every worker process advertises its share of the job as Dask resources (requestMemory/requestCpus)
    per_mem, per_cpu = site.memory_bytes // site.processes, max(1, site.cores // site.processes)
    worker_args += ["--resources", f"MEMORY={per_mem},CPU={per_cpu}"]
    # as local workers: the task code imported before the first task, the quick exit (worker_preload)
    worker_args += ["--preload", PRELOAD_MODULE]
    kw: dict[str, Any] = {
        "cores": site.cores,
        "processes": site.processes,
        "memory": f"{site.memory_bytes}B",
        "walltime": site.walltime,
        "job_extra_directives": list(site.job_extra_directives),
        # the workers' malloc settings (WORKER_MALLOC_ENV) unless the job's environment has its own
        "job_script_prologue": [f"export {k}=${{{k}:-{v}}}" for k, v in WORKER_MALLOC_ENV.items()]
        + list(site.job_script_prologue),
        "worker_extra_args": worker_args,
        "death_timeout": site.death_timeout_s,
        "python": site.python,
        "job_name": job_name,
    }
    for key in ("queue", "account", "interface", "log_directory", "local_directory"):
        v = getattr(site, key)
        if v is not None:
            kw[key] = v
    if site.kind in ("sge", "lsf") and "account" in kw:
        kw["project"] = kw.pop("account")  # their name for it
    if site.kind == "lsf":
        kw["walltime"] = ":".join(site.walltime.split("-")[-1].split(":")[:2])  # bsub -W HH:MM
    if site.kind == "htcondor":
        for key in ("queue", "account", "walltime"):  # HTCondor has no queue, account or time limit per job
            kw.pop(key, None)
        kw["disk"] = f"{site.disk_bytes or site.memory_bytes}B"
        # HTCondor submit-description lines "Key = Value" (dask-jobqueue takes them as a mapping)
        kw["job_extra_directives"] = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in site.job_extra_directives))
    return kw


def job_class(kind: str, what: str = "job") -> Any:
    """dask-jobqueue's Job (``what="job"``) or Cluster class for a batch system."""
    import importlib

    module, job, cluster = _JOB_CLASSES[kind]
    return getattr(importlib.import_module(module), job if what == "job" else cluster)


def job_script(site: SlurmSite | str | os.PathLike | None = None, settings: Settings | None = None,
               scheduler_address: str = "tcp://<scheduler-address>:8786") -> str:
    """The sbatch script a worker job would run, without starting anything.

    Parameters
    ----------
    site : SlurmSite, path or None
        Site file (None: ``settings.site_file``).
    settings : Settings, optional
    scheduler_address : str
        Shown in the worker command (the real one is known only once the cluster runs).

    Returns
    -------
    str
        The script text (``#SBATCH`` header, prologue, worker command).
    """
    s = _site(site, settings)
    if s.kind == "local":
        raise ConfigError(f"{s.path}: a local site has no job script (it runs a LocalCluster).")
    return job_class(s.kind)(scheduler_address, name="dummy-name", **slurm_job_kwargs(s)).job_script()


def _run(cmd: list[str], what: str, timeout_s: float = 30.0, env: Mapping[str, str] | None = None) -> str:
    """Run a Slurm client command; failures keep command, exit code and stderr."""
    if shutil.which(cmd[0]) is None:
        raise ServiceError(MSG_NO_SLURM.format(detail=f"{cmd[0]!r} is not on PATH"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as err:
        raise SubprocessError(f"{what}: timed out after {timeout_s:.0f} s", cmd, -1,
                              (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or ""))
    if proc.returncode != 0:
        raise SubprocessError(f"{what} failed", cmd, proc.returncode, proc.stderr)
    return proc.stdout


def squeue_ids(job_name: str | None = None) -> set[str]:
    """Ids of queued or running jobs (optionally only those called ``job_name``)."""
    cmd = ["squeue", "-h", "-o", "%i"] + (["-n", job_name] if job_name else [])
    return set(_run(cmd, "listing Slurm jobs (squeue)").split())


def _preflight(site: SlurmSite, kwargs: Mapping[str, Any]) -> None:
    """Check Slurm answers and accepts our job script (``sbatch --test-only``) before starting."""
    _run(["sinfo", "-h", "-o", "%P"], "asking Slurm for its partitions (sinfo)")
    from dask_jobqueue.slurm import SLURMJob

    script = SLURMJob("tcp://127.0.0.1:8786", name="preflight", **kwargs).job_script()
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(script)
    try:
        _run(["sbatch", "--test-only", fh.name],
             f"Slurm refused the job script of site file {site.path} (sbatch --test-only)")
    finally:
        os.unlink(fh.name)


@dataclass
class OpenCluster:
    """A running cluster and its client; use as a context manager (closing is idempotent)."""

    kind: str
    """``local`` or ``slurm``."""
    cluster: Any
    """The ``LocalCluster`` / ``SLURMCluster``."""
    client: Any
    """A ``distributed.Client`` connected to it."""
    site: SlurmSite | None = None
    """The Slurm site (None for local)."""
    job_name: str | None = None
    """``#SBATCH -J`` name of this cluster's jobs (Slurm only)."""
    closed: bool = False
    """True once :meth:`close` ran."""

    @property
    def dashboard_link(self) -> str:
        """URL of the Dask dashboard."""
        return self.client.dashboard_link

    def job_ids(self) -> set[str]:
        """Ids of this cluster's Slurm jobs still in the queue (empty for local)."""
        if self.kind != "slurm" or self.job_name is None:
            return set()
        return squeue_ids(self.job_name)

    def job_resources(self) -> dict[str, float] | None:
        """Resources of one worker a batch cluster can still start (None for local: all are there)."""
        if self.kind not in JOBQUEUE_KINDS or self.site is None:
            return None
        from cpframe.execution.resources import worker_resources

        return worker_resources(self.site.memory_bytes // self.site.processes,
                                max(1, self.site.cores // self.site.processes))

    def summary(self) -> str:
        """One line for people: kind, workers, dashboard."""
        n = len(self.client.scheduler_info().get("workers", {}))
        extra = f", jobs named {self.job_name} (site {self.site.path})" if self.site else ""
        return f"{self.kind} cluster: {n} worker(s) connected{extra}; dashboard {self.dashboard_link}"

    def close(self, timeout_s: float = 30.0) -> None:
        """Close client and cluster; for Slurm, cancel and wait for any job of ours still queued.

        Raises
        ------
        SubprocessError
            ``scancel``/``squeue`` failed; the exception keeps command, exit code and stderr.
        ExecutionError
            Jobs still queued ``timeout_s`` after cancelling.
        """
        if self.closed:
            return
        self.closed = True
        try:
            if self.kind == "local":
                _quiet_worker_shutdown(self.client)
                _close_nannies(self.cluster, timeout_s)
            self.client.close()
        finally:
            self.cluster.close()
        if self.kind != "slurm":
            return
        left = self.job_ids()
        if left:
            _run(["scancel", *sorted(left)], f"cancelling Slurm jobs {', '.join(sorted(left))}")
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = self.job_ids()
        if left:
            from cpframe.core.errors import ExecutionError

            raise ExecutionError(f"Slurm jobs {', '.join(sorted(left))} are still queued {timeout_s:.0f} s after "
                                 f"scancel; check `squeue -n {self.job_name}` and cancel them by id.")

    def __enter__(self) -> "OpenCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _silence_heartbeat_errors() -> None:
    """On a worker: log only critical messages of ``distributed.worker`` from now on (see below)."""
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def _quiet_worker_shutdown(client: Any) -> None:
    """Before the workers close, silence their heartbeat errors: a worker closing its own
    connections while a heartbeat is in flight logs "Failed to communicate with scheduler
    during heartbeat" with a traceback (seen in CI in a normal ``cpframe submit``), although
    the run's results are in and nothing failed (issue 16: a normal shutdown prints nothing)."""
    try:
        client.run(_silence_heartbeat_errors)
    except Exception:  # noqa: BLE001 - the shutdown goes on; at worst the message is printed
        log.debug("could not quiet the workers' shutdown", exc_info=True)


def _close_nannies(cluster: Any, timeout_s: float) -> None:
    """Stop a LocalCluster's worker processes, all at once, giving each ``timeout_s`` to exit.

    ``LocalCluster.close`` gives a worker 4 s and then logs "Worker process still alive
    after 4.0 seconds, killing"; on a loaded machine a worker's exit takes longer, so a
    normal shutdown printed that warning (issue 16).  Closing the nannies first, with
    room, lets them exit cleanly; the cluster's own close then has nothing left to kill.
    They close concurrently: one after the other, each worker's exit (0.3-0.8 s) added up.
    """
    import asyncio

    nannies = list(getattr(cluster, "workers", {}).values())

    async def close_all() -> None:
        results = await asyncio.gather(*(n.close(timeout=timeout_s) for n in nannies), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):  # the cluster's own close still stops whatever is left
                log.debug("closing a worker nanny failed (%r); LocalCluster.close will stop it", r)

    try:
        cluster.sync(close_all)
    except Exception:  # noqa: BLE001 - as above
        log.debug("closing the worker nannies failed; LocalCluster.close will stop them", exc_info=True)


def _open_local(settings: Settings) -> OpenCluster:
    from distributed import Client, LocalCluster

    from cpframe.execution.resources import worker_resources

    import dask

    malloc = worker_malloc_config()
    config = {**malloc, **fork_server_config(malloc[SPAWN_ENV_KEY])}
    with dask.config.set(config):  # read by the nannies as they start their workers
        cluster = LocalCluster(
            n_workers=settings.n_workers, threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.worker_memory_bytes, dashboard_address=":0", processes=True,
            resources=worker_resources(settings.worker_memory_bytes, settings.threads_per_worker),
            preload=[PRELOAD_MODULE], env=worker_env(),
        )
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return OpenCluster("local", cluster, client)


def _open_slurm(settings: Settings, site: SlurmSite, jobs: int | None) -> OpenCluster:
    from distributed import Client

    job_name = f"cpframe-{uuid.uuid4().hex[:8]}"
    kwargs = slurm_job_kwargs(site, job_name)
    for d in (site.log_directory, site.local_directory):
        if d:
            Path(d).mkdir(parents=True, exist_ok=True)
    if site.kind == "slurm":
        _preflight(site, kwargs)
    scheduler_options = {"dashboard_address": ":0"}
    cluster = job_class(site.kind, "cluster")(scheduler_options=scheduler_options, **kwargs)
    try:
        if jobs is not None:
            cluster.scale(jobs=jobs)
        else:
            minimum, maximum = site.adapt_limits(settings)
            cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return OpenCluster(site.kind, cluster, client, site=site, job_name=job_name)


def sized_for(site: SlurmSite, requests: Mapping[str, Any] | None) -> SlurmSite:
    """The site with jobs large enough for every task's request (one worker process per job share).

    BPS sizes each job from its ``requestMemory``/``requestCpus``/``requestWalltime``; cpframe's
    workers are shared by all tasks, so a job gets at least the largest request per worker process,
    and a walltime (Slurm ``--time``, also the worker's ``--lifetime`` if the site sets one) longer
    than the largest ``requestWalltime`` by :data:`WALLTIME_MARGIN_S`.
    """
    if not requests:
        return site
    mem = max((r.memory_mib or 0) for r in requests.values()) * 2**20
    cpus = max((r.cpus or 0) for r in requests.values())
    new_mem = max(site.memory_bytes, mem * site.processes)
    new_cores = max(site.cores, cpus * site.processes)
    changes: dict[str, Any] = {}
    if (new_mem, new_cores) != (site.memory_bytes, site.cores):
        changes.update(memory_bytes=new_mem, cores=new_cores)
    # requestWalltime: a job (its --time, and its worker's --lifetime) must outlast the longest quantum, plus
    # WALLTIME_MARGIN_S for the worker to start and hand results back; BPS gives each job its requestWalltime
    longest = max((r.walltime_s or 0) for r in requests.values())
    if longest and site.kind != "htcondor":
        need = longest + WALLTIME_MARGIN_S
        wall_need = need + (WALLTIME_MARGIN_S if site.worker_lifetime_s else 0)  # lifetime < walltime
        if parse_duration(site.walltime) < wall_need:
            changes["walltime"] = _slurm_time(wall_need)
        if site.worker_lifetime_s and site.worker_lifetime_s < need:
            changes["worker_lifetime_s"] = need
    return dataclasses.replace(site, **changes) if changes else site


#: Seconds a job lives beyond its longest quantum's requestWalltime (worker start, results, retirement).
WALLTIME_MARGIN_S = 300


def _slurm_time(seconds: int) -> str:
    """Slurm time text.

    >>> _slurm_time(3900), _slurm_time(90000)
    ('01:05:00', '1-01:00:00')
    """
    d, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def open_cluster(settings: Settings | None = None, site: SlurmSite | str | os.PathLike | None = None,
                 kind: str | None = None, jobs: int | None = None,
                 requests: Mapping[str, Any] | None = None) -> OpenCluster:
    """Start a cluster and connect a client.

    Parameters
    ----------
    settings : Settings, optional
        ``cluster_kind``, local worker counts and memory, the default site file and
        the adaptive limits (default: :func:`cpframe.core.config.load_settings`).
    site : SlurmSite or path, optional
        Slurm site file; overrides ``settings.site_file``.  Only used for Slurm.
    kind : {"local", "slurm"}, optional
        Overrides ``settings.cluster_kind`` (e.g. a submission's ``computeSite``).
    jobs : int, optional
        Slurm only: a fixed number of jobs instead of adaptive scaling between the
        site's (else the settings') ``minimum-jobs`` and ``maximum-jobs``.
    requests : mapping, optional
        Task label -> requested resources (:func:`cpframe.execution.resources.task_requests`):
        Slurm jobs are made large enough for the largest (:func:`sized_for`).

    Returns
    -------
    OpenCluster
        Context manager; ``with open_cluster(s) as oc: oc.client.submit(...)``.

    Raises
    ------
    ConfigError
        Unknown kind, bad site file.
    ServiceError, SubprocessError
        Slurm not reachable, or it refuses the job script (``sbatch --test-only``).
    """
    if settings is None:
        from cpframe.core.config import load_settings

        settings = load_settings()
    kind = kind or settings.cluster_kind
    if kind == "local":
        return _open_local(settings)
    if kind == "slurm":
        return _open_slurm(settings, sized_for(_site(site, settings), requests), jobs)
    profile = load_site(find_site_profile(kind))  # a site profile named by computeSite
    if profile.kind == "local":
        return _open_local(settings)
    return _open_slurm(settings, sized_for(profile, requests), jobs)


def user_sites_dir() -> Path:
    """The user's site profiles: ``$CPFRAME_SITES`` or ``$XDG_CONFIG_HOME/cpframe/sites``."""
    if os.environ.get("CPFRAME_SITES"):
        return Path(os.environ["CPFRAME_SITES"])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cpframe" / "sites"


def list_sites() -> list[str]:
    """Names ``computeSite`` accepts: local, slurm (the settings' site file) and every profile.

    Every name listed resolves with :func:`find_site_profile`.
    """
    names = {"local", "slurm"}
    for d in (user_sites_dir(), default_cluster_dir()):
        if d.is_dir():
            names |= {p.stem for p in d.glob("*.yaml")}
    return sorted(names)


def find_site_profile(name: str, settings: Settings | None = None) -> Path:
    """The site profile ``name``: the user's first, then the project's ``cluster/``.

    ``slurm`` without a profile of that name is the settings' Slurm site file
    (``cluster.site-file``, default ``cluster/slurm-local.yaml``); ``local`` is the shipped
    ``cluster/local.yaml`` unless the user has one.

    Raises
    ------
    ConfigError
        Unknown site; lists the known ones.
    """
    for d in (user_sites_dir(), default_cluster_dir()):
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    if name == "slurm":
        if settings is None:
            from cpframe.core.config import load_settings

            settings = load_settings()
        return resolve_site_path(settings.site_file)
    raise ConfigError(f"computeSite {name!r} is not a known site; known sites: {', '.join(list_sites())} "
                      f"(site profiles are YAML files in {user_sites_dir()} or {default_cluster_dir()}).")
