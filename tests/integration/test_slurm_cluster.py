"""A real Slurm (cluster/start-local-slurm.sh) driven through open_cluster -> SLURMCluster.

Checks that Dask workers run inside Slurm jobs (SLURM_JOB_ID on the workers equals
the job ids squeue lists for this cluster), that work computes there, that the jobs
are cancelled when the cluster closes, and that a job script Slurm refuses is
reported with command, exit code and stderr before anything starts.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

import numpy as np
import pytest

from cpframe.execution.cluster import WORKER_MALLOC_ENV, load_site, open_cluster, squeue_ids
from cpframe.core.config import Settings
from cpframe.core.errors import SubprocessError

pytestmark = pytest.mark.slurm


@pytest.fixture
def site(local_slurm, tmp_path):
    base = load_site("slurm-local.yaml")
    return dataclasses.replace(base, queue=local_slurm.partition, log_directory=str(tmp_path / "logs"),
                               local_directory=str(tmp_path / "work"), walltime="00:10:00",
                               worker_lifetime_s=None, worker_lifetime_stagger_s=None)


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return out.split("JobState=")[1].split()[0] if "JobState=" in out else "GONE"


def test_workers_run_in_slurm_jobs_and_are_cancelled(site):
    import dask.array as da

    with open_cluster(Settings(), site=site, kind="slurm", jobs=2) as oc:
        oc.client.wait_for_workers(2, timeout=120)
        queued = oc.job_ids()
        submitted = {job.job_id for job in oc.cluster.workers.values()}
        on_workers = set(oc.client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        # the job script's prologue gives the workers cpframe's malloc settings (cluster.WORKER_MALLOC_ENV)
        mmap = set(oc.client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_")).values())
        assert mmap == {WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]}
        # and the worker preload (task code imported, quick exit) as local workers have
        preloaded = oc.client.run(lambda: "cpframe.execution.worker_preload" in __import__("sys").modules)
        assert list(preloaded.values()) == [True, True]
        assert len(submitted) == 2
        assert on_workers == submitted == queued
        assert queued <= squeue_ids()
        data = np.random.default_rng(3).normal(size=(600, 500))
        got = da.from_array(data, chunks=(150, 250)).std(axis=1).compute()
        np.testing.assert_allclose(got, data.std(axis=1), rtol=1e-12)
        name = oc.job_name
    assert squeue_ids(name) == set()
    assert {_job_state(j) for j in submitted} <= {"CANCELLED", "COMPLETED", "GONE"}
    assert "CANCELLED" in {_job_state(j) for j in submitted}


def test_adaptive_cluster_starts_a_job_for_work(site):
    site = dataclasses.replace(site, minimum_jobs=0, maximum_jobs=1)
    with open_cluster(Settings(), site=site, kind="slurm") as oc:
        job = oc.client.submit(lambda: os.environ.get("SLURM_JOB_ID"), pure=False).result(timeout=120)
        assert job in oc.job_ids() | {j.job_id for j in oc.cluster.workers.values()}
        name = oc.job_name
    assert squeue_ids(name) == set()


def test_refused_job_script_is_reported_before_starting(site):
    bad = dataclasses.replace(site, queue="no-such-partition")
    with pytest.raises(SubprocessError) as ei:
        open_cluster(Settings(), site=bad, kind="slurm", jobs=1)
    err = ei.value
    assert err.cmd[:2] == ["sbatch", "--test-only"] and err.returncode != 0
    assert "partition" in err.stderr.lower()
    assert "Slurm refused the job script" in str(err)
