"""Clusters: site files, the job script as a string, a real LocalCluster."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.execution.cluster import (
    _run,
    default_cluster_dir,
    job_script,
    load_site,
    open_cluster,
    parse_duration,
    slurm_job_kwargs,
)
from cpframe.core.config import Settings
from cpframe.core.errors import ConfigError, ServiceError, SubprocessError


def _header(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_local_site_job_script():
    script = job_script("slurm-local.yaml")
    head = _header(script)
    assert "#SBATCH -p debug" in head
    assert "#SBATCH -t 00:30:00" in head
    assert "#SBATCH --mem=2G" in head
    assert "#SBATCH --cpus-per-task=1" in head
    assert "#SBATCH --export=ALL" in head
    assert "#SBATCH -o /tmp/cpframe-slurm-logs/cpframe-worker-%J.out" in head
    worker = script.strip().splitlines()[-1]
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker ")
    assert "--lifetime 1500s --lifetime-stagger 60s" in worker
    assert "--interface lo" in worker and "--death-timeout 60" in worker


def test_example_site_job_script(monkeypatch):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    monkeypatch.setenv("TMPDIR", "/local/tmp")
    monkeypatch.setenv("HOME", "/home/me")
    site = load_site(default_cluster_dir() / "slurm-site-example.yaml")
    assert site.memory_bytes == 32 * 2**30 and site.worker_lifetime_s == 3 * 3600 + 45 * 60
    assert (site.minimum_jobs, site.maximum_jobs) == (1, 20)
    script = job_script(site)
    head = _header(script)
    for line in ("-p normal", "-A rubin", "-t 04:00:00", "--cpus-per-task=8", "--mem=32G", "--qos=normal",
                 "--constraint=cpu", "-e /scratch/me/cpframe/slurm-logs/cpframe-worker-%J.err"):
        assert f"#SBATCH {line}" in head, line
    assert "source /home/me/cpframe-env/bin/activate" in script
    worker = script.strip().splitlines()[-1]
    assert "--nworkers 2" in worker and "--nthreads 4" in worker and "--local-directory /local/tmp" in worker
    assert "--interface ib0" in worker and "--lifetime 13500s" in worker


def test_site_errors_all_at_once(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("queue: q\nwalltime: 2 hours\ncores: 0\nmemory: lots\nworker-lifetime: soon\n"
                 "adapt: {minimum-jobs: 3, maximum-jobs: 1}\nqueu: typo\n")
    with pytest.raises(ConfigError) as ei:
        load_site(f)
    msg = str(ei.value)
    assert "the Slurm site file has 6 problems" in msg
    for words in ("unknown key(s) 'queu'", "walltime must be Slurm time text", "cores must be a whole number >= 1",
                  "memory 'lots' is not a size", "worker-lifetime 'soon' is not a duration",
                  "adapt.minimum-jobs is larger than adapt.maximum-jobs"):
        assert words in msg, words
    f.write_text("walltime: '00:20:00'\nworker-lifetime: 30m\ncores: 1\nprocesses: 2\n")
    msg = str(pytest.raises(ConfigError, load_site, f).value)
    assert "must be shorter than the walltime" in msg and "processes (2) cannot exceed cores (1)" in msg
    with pytest.raises(ConfigError, match="'nosuch.yaml' not found .*slurm-local.yaml"):
        load_site("nosuch.yaml")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("25m", 1500), ("2h", 7200), ("1d", 86400),
                                           ("3h45m", 13500), ("01:30:00", 5400), ("1-00:00:00", 86400),
                                           (45, 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_job_kwargs_name_and_lifetime():
    kw = slurm_job_kwargs(load_site("slurm-local.yaml"), "cpframe-abc")
    assert kw["job_name"] == "cpframe-abc" and kw["python"] == sys.executable
    site = load_site("slurm-local.yaml")
    per_process = site.memory_bytes // site.processes
    assert kw["worker_extra_args"] == ["--lifetime", "1500s", "--lifetime-stagger", "60s", "--resources",
                                       f"MEMORY={per_process},CPU={max(1, site.cores // site.processes)}",
                                       "--preload", "cpframe.execution.worker_preload"]


def test_adapt_limits_site_first_then_settings():
    site = load_site("slurm-local.yaml")
    assert site.adapt_limits(Settings(minimum_jobs=1, maximum_jobs=4)) == (0, 2)
    bare = dataclasses.replace(site, minimum_jobs=None, maximum_jobs=None)
    assert bare.adapt_limits(Settings(minimum_jobs=1, maximum_jobs=4)) == (1, 4)
    assert bare.adapt_limits(Settings(minimum_jobs=3, maximum_jobs=1)) == (3, 3)  # maximum never below minimum


def test_cli_job_script():
    res = CliRunner().invoke(main, ["cluster", "job-script", "--site", "slurm-local.yaml"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH -p debug" in res.stdout and "Nothing was submitted" in res.stderr
    assert "adaptive 0..2 job(s)" in res.stderr
    res = CliRunner().invoke(main, ["cluster", "check", "--kind", "slurm", "--site", "slurm-local.yaml", "--jobs",
                                    "3", "--dry-run"])
    assert res.exit_code == 0 and "#SBATCH -t 00:30:00" in res.stdout and "would submit 3 job(s)" in res.stderr
    res = CliRunner().invoke(main, ["cluster", "check", "--kind", "local", "--dry-run"])
    assert res.exit_code == 0 and "would start a LocalCluster of 2 worker process(es)" in res.stderr
    res = CliRunner().invoke(main, ["cluster", "job-script", "--site", "nothere.yaml"])
    assert res.exit_code == 2 and "not found" in res.output and "Traceback" not in res.output


def test_subprocess_failure_keeps_command_code_and_stderr():
    with pytest.raises(SubprocessError) as ei:
        _run(["sh", "-c", "echo partition bogus >&2; exit 3"], "asking the shell")
    err = ei.value
    assert err.cmd[:2] == ["sh", "-c"] and err.returncode == 3 and "partition bogus" in err.stderr
    assert "exit code: 3" in str(err)
    with pytest.raises(ServiceError, match="'no-such-sbatch' is not on PATH.*start-local-slurm.sh"):
        _run(["no-such-sbatch"], "x")


def test_unknown_kind():
    with pytest.raises(ConfigError, match="computeSite 'k8s' is not a known site; known sites: .*local.*slurm"):
        open_cluster(Settings(), kind="k8s")


def test_local_cluster_opens_computes_and_closes():
    import dask.array as da

    rng = np.random.default_rng(5)
    data = rng.normal(size=(400, 300))
    with open_cluster(Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30), kind="local") as oc:
        assert oc.kind == "local" and oc.job_ids() == set()
        oc.client.wait_for_workers(2, timeout=60)
        info = oc.client.scheduler_info()["workers"]
        assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
        assert all(w["memory_limit"] == 2**30 for w in info.values())
        got = da.from_array(data, chunks=(100, 100)).mean(axis=0).compute()
        np.testing.assert_allclose(got, data.mean(axis=0), rtol=1e-12)
        assert oc.dashboard_link.startswith("http://")
        assert "local cluster: 2 worker(s)" in oc.summary()
        client, cluster = oc.client, oc.cluster
    assert oc.closed and client.status == "closed" and cluster.status.name == "closed"
    oc.close()  # idempotent


def test_local_workers_import_the_task_code_as_they_start():
    # the preload runs in each worker before it joins the cluster, so no task has run yet
    with open_cluster(Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30), kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        seen = oc.client.run(lambda: [m for m in ("cpframe.execution.worker_preload", "cpframe.science.fused_tasks",
                                                  "cpframe.execution.kinds") if m in sys.modules])
    assert len(seen) == 2
    assert all(mods == ["cpframe.execution.worker_preload", "cpframe.science.fused_tasks",
                        "cpframe.execution.kinds"] for mods in seen.values()), seen


def _start_facts() -> dict:
    import numba

    return {"ppid": os.getppid(), "registries": "numba.np.arraymath" in sys.modules, "numba": numba.__name__}


def test_local_workers_are_forks_of_a_server_that_did_their_imports_once(monkeypatch):
    """Workers forked from one fork server that imported the task code and numba's registries (the first
    compiled kernel's 0.45 s); CPFRAME_WORKER_START=spawn gives the fresh interpreters of Dask's default."""
    settings = Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30)
    with open_cluster(settings, kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        facts = list(oc.client.run(_start_facts).values())
    assert len(facts) == 2 and facts[0]["ppid"] == facts[1]["ppid"] != os.getpid(), facts  # one server, not us
    assert all(f["registries"] for f in facts), facts  # before any task ran
    monkeypatch.setenv("CPFRAME_WORKER_START", "spawn")
    with open_cluster(settings, kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        facts = list(oc.client.run(_start_facts).values())
    assert all(f["ppid"] == os.getpid() and not f["registries"] for f in facts), facts


def _blas_facts() -> dict:
    import numba
    import numpy as np

    before = "scipy.linalg" in sys.modules

    @numba.njit
    def products(a, b, c):
        return np.convolve(a, b), np.correlate(a, b), np.dot(b, c)

    a, b, c = np.linspace(-1.5, 2.0, 7), np.linspace(3.0, -0.5, 5), np.linspace(0.25, 4.0, 5)
    conv, corr, dot = products(a, b, c)
    return {"scipy.linalg before": before, "scipy.linalg after": "scipy.linalg" in sys.modules,
            "convolve": bool(np.allclose(conv, np.convolve(a, b), rtol=1e-12, atol=0)),
            "correlate": bool(np.allclose(corr, np.correlate(a, b), rtol=1e-12, atol=0)),
            "dot": bool(np.isclose(dot, np.dot(b, c), rtol=1e-12, atol=0))}


def test_forked_workers_skip_scipy_linalg_at_start_and_numba_linear_algebra_still_works():
    """numba's registries import scipy.linalg only for a BLAS check (0.13-0.14 s of the fork server's start):
    the fork server loads them without it; a kernel that uses np.dot then imports it, and np.convolve /
    np.correlate (the check's only users) give numpy's results."""
    settings = Settings(n_workers=1, threads_per_worker=1, worker_memory_bytes=2**30)
    with open_cluster(settings, kind="local") as oc:
        oc.client.wait_for_workers(1, timeout=60)
        (facts,) = oc.client.run(_blas_facts).values()
    assert facts == {"scipy.linalg before": False, "scipy.linalg after": True, "convolve": True, "correlate": True,
                     "dot": True}, facts


#: (in the scripts below) the command lines of this process's children
_CHILDREN = """
def children():
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
                out.append(open(f"/proc/{p}/cmdline").read())
        except OSError:
            pass
    return out
"""

_EARLY = """
import json, os, sys
from cpframe.execution.worker_start import SPAWN_ENV_KEY, spawn_env_before_distributed, worker_malloc_config, \\
    start_fork_server_early
start_fork_server_early()
early = spawn_env_before_distributed()
imported = "distributed" in sys.modules
""" + _CHILDREN + """
kids = children()
late = worker_malloc_config()[SPAWN_ENV_KEY]
print(json.dumps([imported, early == late, early, any("forkserver" in k for k in kids)]))
"""


@pytest.mark.parametrize("site", [None, '{"MALLOC_TRIM_THRESHOLD_": 1000, "CPFRAME_SITE_VAR": "x"}'])
def test_the_fork_server_starts_before_distributed_is_imported_with_the_nannies_environment(site):
    """``cpframe submit`` starts the fork server first thing (its imports overlap the driver's own): the
    variables it is started with, computed without importing distributed, are those the nannies use, a
    site's Dask config (here through DASK_* environment) included."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "MALLOC_", "CPFRAME_WORKER"))}
    if site:
        env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"] = site
    out = subprocess.run([sys.executable, "-c", _EARLY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    imported, same, early, server = json.loads(out.stdout.splitlines()[-1])
    assert not imported and same and server, out.stdout
    assert early["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
    if site:
        assert early["MALLOC_TRIM_THRESHOLD_"] == 1000 and early["CPFRAME_SITE_VAR"] == "x", early
    else:
        assert early["MALLOC_TRIM_THRESHOLD_"] == str(64 * 2**20) and early["OMP_NUM_THREADS"] == 1, early


def _what_a_worker_sees() -> dict:
    import importlib

    mask = os.umask(0)
    os.umask(mask)
    return {"umask": mask, "env": os.environ.get("CPFRAME_TEST_WORKER_ENV"),
            "module": importlib.import_module("cpframe_worker_probe_mod").VALUE}


def test_forked_workers_see_the_umask_environment_and_path_of_the_submitting_process_now(tmp_path, monkeypatch):
    """The fork server keeps the state of its own start; a later cluster's workers still get the submitting
    process's umask (files a team shares), environment and sys.path as they are when that cluster starts."""
    settings = Settings(n_workers=1, threads_per_worker=1, worker_memory_bytes=2**30)
    with open_cluster(settings, kind="local") as oc:  # the fork server exists from here on
        oc.client.wait_for_workers(1, timeout=60)
    (tmp_path / "cpframe_worker_probe_mod.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CPFRAME_TEST_WORKER_ENV", "seen")
    old = os.umask(0o027)
    try:
        with open_cluster(settings, kind="local") as oc:
            oc.client.wait_for_workers(1, timeout=60)
            seen = list(oc.client.run(_what_a_worker_sees).values())
    finally:
        os.umask(old)
    assert seen == [{"umask": 0o027, "env": "seen", "module": 42}], seen


def _faults_of_big_arrays(n: int = 40, nbytes: int = 8 * 2**20) -> int:
    """Minor page faults of this process while it makes and drops ``n`` arrays of ``nbytes``, one at a time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = np.ones(nbytes // 4, np.float32)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_local_workers_reuse_freed_memory_instead_of_faulting_it_in_again():
    """Dask's nanny gives its workers MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold at
    128 KiB: every large array is mapped afresh and faulted in again (an 8 MiB array made and dropped 40 times:
    about 20,000 faults here, 500 faults per array with the kernel's fault-around).  cpframe's workers get
    WORKER_MALLOC_ENV instead: the freed memory is reused, fewer faults than one array's pages in all."""
    import os

    from cpframe.execution.cluster import WORKER_MALLOC_ENV

    with open_cluster(Settings(n_workers=2, threads_per_worker=1, worker_memory_bytes=2**30), kind="local") as oc:
        oc.client.wait_for_workers(2, timeout=60)
        env = oc.client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
        faults = oc.client.run(_faults_of_big_arrays)
    assert all(e == WORKER_MALLOC_ENV for e in env.values()), env
    pages = 8 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert len(faults) == 2 and all(f < pages for f in faults.values()), (faults, pages)


def test_job_script_prologue_sets_the_worker_malloc_unless_the_job_has_its_own():
    """The prologue lines of every batch site, run by sh as the job runs them: cpframe's values, or the value
    the job's environment already had."""
    import os
    import subprocess

    from cpframe.execution.cluster import WORKER_MALLOC_ENV

    lines = slurm_job_kwargs(load_site("slurm-local.yaml"))["job_script_prologue"]
    script = "; ".join([*lines, "echo T=$MALLOC_TRIM_THRESHOLD_ M=$MALLOC_MMAP_THRESHOLD_"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [f"T={WORKER_MALLOC_ENV['MALLOC_TRIM_THRESHOLD_']}", f"M={WORKER_MALLOC_ENV['MALLOC_MMAP_THRESHOLD_']}"]
    out = subprocess.run(["sh", "-c", script], env={**env, "MALLOC_TRIM_THRESHOLD_": "123"}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["T=123", f"M={WORKER_MALLOC_ENV['MALLOC_MMAP_THRESHOLD_']}"]


def test_a_site_dask_config_for_the_worker_malloc_is_kept():
    import dask

    from cpframe.execution.worker_start import worker_malloc_config

    key = "distributed.nanny.pre-spawn-environ"
    assert worker_malloc_config()[key]["MALLOC_TRIM_THRESHOLD_"] == str(64 * 2**20)
    with dask.config.set({key: {**dask.config.get(key), "MALLOC_TRIM_THRESHOLD_": 1000}}):
        got = worker_malloc_config()[key]
    assert got["MALLOC_TRIM_THRESHOLD_"] == 1000 and got["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
    assert got["OMP_NUM_THREADS"] == dask.config.get(key)["OMP_NUM_THREADS"]  # Dask's others stay


def _hold(path: str, seconds: float) -> int:
    """A task that says it started (a file) and keeps its worker busy."""
    import time
    from pathlib import Path

    Path(path).write_text("started")
    time.sleep(seconds)
    return 0


def test_a_process_without_dask_counts_one_thread_without_importing_it():
    """An isolated quantum's child (RLIMIT_DATA) asked for its threads: importing distributed there ran the
    combine out of memory under a 16 MiB limit (test_bps_limits). Not imported means not a worker: 1."""
    import subprocess
    import sys

    code = ("import sys; from cpframe.execution.idle import idle_threads_here; "
            "print(idle_threads_here(), 'distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["1", "False"], out


def test_a_quantum_counts_the_threads_of_the_idle_workers_on_its_node(tmp_path):
    import time

    from cpframe.execution.idle import idle_threads_here

    assert idle_threads_here() == 1  # not in a worker: its own thread only
    with open_cluster(Settings(n_workers=3, threads_per_worker=1, worker_memory_bytes=2**30), kind="local") as oc:
        oc.client.wait_for_workers(3, timeout=60)
        a, b, c = sorted(oc.client.scheduler_info()["workers"])

        def ask(limit=None):
            return oc.client.submit(idle_threads_here, limit, workers=[a], pure=False).result(timeout=60)

        assert ask() == 3  # its own + the two idle workers of this host
        assert ask(2) == 2 and ask(1) == 1
        started = tmp_path / "started"
        busy = oc.client.submit(_hold, str(started), 8.0, workers=[b], pure=False)
        for _ in range(200):
            if started.exists():
                break
            time.sleep(0.05)
        assert started.exists()
        assert ask() == 2  # b has a task: only c is idle
        busy.result(timeout=60)
        assert ask() == 3


_BEFORE_RENDERING = """
import json, os, sys
import cpframe.execution.submit as sub
""" + _CHILDREN + """
seen = []
def plan_template(*a, **k):  # the rendering's first step: what is running by then
    seen.append(any("forkserver" in c for c in children()))
    raise SystemExit(0)
sub.plan_template = plan_template
try:
    sub.submit_template(sys.argv[1], compute_site=sys.argv[2] or None, quiet=True)
except SystemExit:
    pass
print(json.dumps(seen))
"""


_BEFORE_SETTINGS = """
import json, os, sys
import cpframe.core.config as config
from cpframe.cli import main
""" + _CHILDREN + """
seen = []
def load_settings(*a, **k):  # the command's settings: what is running by the time they are read
    seen.append(any("forkserver" in c for c in children()))
    raise SystemExit(0)
config.load_settings = load_settings
try:
    main(["submit", sys.argv[1]], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(seen))
"""


@pytest.mark.parametrize("text, started", [("computeSite: local\n", True), ("computeSite: slurm\n", False)])
def test_the_submit_command_starts_the_fork_server_before_reading_its_settings(tmp_path, text, started):
    """``cpframe submit`` starts the workers' fork server before it even reads and validates its settings
    (pydantic and the settings file: 0.1-0.2 s of the start), when the run will be local."""
    import json
    import subprocess

    template = tmp_path / "t.yaml"
    template.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CPFRAME_WORKER", "CPFRAME_CLUSTER"))}
    out = subprocess.run([sys.executable, "-c", _BEFORE_SETTINGS, str(template)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [started], out.stdout


@pytest.mark.parametrize("text, flag, kind, started", [
    ("computeSite: local\n", "", "", True), ("a: 1\n", "", "", True), ("computeSite: slurm\n", "", "", False),
    ("computeSite: '{site}'\n", "", "", False), ("computeSite: slurm\n", "local", "", True),
    ("a: 1\n", "slurm", "", False), ("a: 1\n", "", "slurm", False), ("a: 1\n", "", "local", True),
    ("computeSite: local\n", "", "slurm", True), ("a: 1\n", "", "nonsense", False),
])
def test_a_local_submission_starts_the_fork_server_before_rendering(tmp_path, text, flag, kind, started):
    """The workers' fork server is the local start's longest path: ``cpframe submit`` starts it before the
    settings are validated and the template rendered when the run will be local (the flag, else the template's own
    ``computeSite`` line, else the settings' cluster kind, here from ``DASK_CPFRAME__CLUSTER__KIND``), and not when
    the template, the flag or the settings say otherwise or leave it to a variable (a kind the settings refuse is
    their ConfigError, before any planning)."""
    import json
    import subprocess

    from cpframe.execution.submit import template_compute_site

    template = tmp_path / "t.yaml"
    template.write_text(text)
    assert template_compute_site(template) == (None if text.startswith("a:") else text.split(":", 1)[1].strip().strip("'"))
    assert template_compute_site(tmp_path / "missing.yaml") == "?"  # a user error: no fork server for it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "CPFRAME_WORKER", "CPFRAME_CLUSTER"))}
    if kind:
        env["DASK_CPFRAME__CLUSTER__KIND"] = kind
    out = subprocess.run([sys.executable, "-c", _BEFORE_RENDERING, str(template), flag], env=env,
                         capture_output=True, text=True, timeout=120)
    if kind == "nonsense":  # the settings refuse it before anything is planned
        assert out.returncode != 0 and "cpframe.cluster.kind" in out.stderr, out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [started], out.stdout


def test_the_template_peek_before_the_fork_server_needs_no_jinja2():
    """``cpframe submit`` finds its template and reads its ``computeSite`` line before it imports jinja2 (0.03-0.05 s
    sooner to the fork server's start); the renderer's ``find_template`` is the same function."""
    import subprocess

    code = ("import sys; from cpframe.execution.submit import template_compute_site; "
            "print(template_compute_site('bps_biasBootstrap'), template_compute_site('no_such_template'), "
            "'jinja2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "?", "False"], out.stdout
    from cpframe.execution import template_files, templates

    assert templates.find_template is template_files.find_template
    assert templates.find_template("bps_biasBootstrap").name == "bps_biasBootstrap.yaml"
