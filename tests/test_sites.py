"""Site profiles named by ``computeSite``: Slurm, PBS, SGE, LSF, HTCondor or local.

The batch systems other than Slurm are tested through the job scripts dask-jobqueue generates
for them (nothing is submitted); Slurm itself runs for real in tests/test_cluster.py.
"""

from __future__ import annotations

import pytest

from cpframe.core.errors import ConfigError, SubmissionError
from cpframe.execution.cluster import (
    find_site_profile, job_script, list_sites, load_site, open_cluster, sized_for,
)
from cpframe.execution.submission import Resources, validate_submission

GiB = 2**30


@pytest.mark.parametrize("kind, lines", [
    ("pbs", ["#PBS -q workq", "#PBS -A calib", "#PBS -l select=1:ncpus=4:mem=16GB", "#PBS -l walltime=02:00:00",
             "#PBS -l place=scatter"]),
    ("sge", ["#$ -q all.q", "#$ -P calib", "#$ -l h_rt=02:00:00"]),
    ("lsf", ["#BSUB -q normal", '#BSUB -P "calib"', "#BSUB -n 4", "#BSUB -W 02:00"]),
    ("htcondor", ["RequestCpus = MY.DaskWorkerCores", "MY.DaskWorkerCores = 4",
                  f"MY.DaskWorkerMemory = {16 * GiB}", f"MY.DaskWorkerDisk = {10 * GiB}",
                  '+AccountingGroup = "calib"']),
])
def test_job_scripts_of_each_batch_system(kind, lines):
    site = load_site(find_site_profile(f"{kind}-example"))
    assert site.kind == kind
    script = job_script(site)
    for line in lines:
        assert line in script, (line, script)
    # two worker processes per job, each advertising half the job as Dask resources
    assert f"--resources MEMORY={8 * GiB},CPU=2" in script and "--nworkers 2" in script


def test_jobs_are_sized_for_the_largest_request():
    site = load_site(find_site_profile("pbs-example"))
    big = sized_for(site, {"cpIlluminationCorrectionFgcmFitCycle": Resources(memory_mib=32000, cpus=8),
                           "cpBiasIsr": Resources(memory_mib=1024)})
    assert big.memory_bytes == 2 * 32000 * 2**20 and big.cores == 16  # per process: 32000 MiB, 8 cores
    script = job_script(big)
    assert f"--resources MEMORY={32000 * 2**20},CPU=8" in script and "ncpus=16" in script
    assert sized_for(site, {"x": Resources(memory_mib=100)}) is site  # small requests: the site as it is


def test_request_walltime_sets_the_job_time_on_slurm(tmp_path):
    import dataclasses

    site = load_site(find_site_profile("slurm-site-example"))
    site = dataclasses.replace(site, walltime="01:00:00", worker_lifetime_s=None)
    assert "#SBATCH -t 01:00:00" in job_script(site)
    long = sized_for(site, {"cpPtcSolve": Resources(walltime_s=3 * 3600), "cpBiasIsr": Resources(walltime_s=600)})
    # the job outlives the longest quantum's requestWalltime by WALLTIME_MARGIN_S (300 s)
    assert long.walltime == "03:05:00" and "#SBATCH -t 03:05:00" in job_script(long)
    # with a worker --lifetime, the worker outlives the quantum and the job outlives the worker
    retiring = sized_for(dataclasses.replace(site, worker_lifetime_s=1800), {"t": Resources(walltime_s=7200)})
    assert retiring.worker_lifetime_s == 7500 and retiring.walltime == "02:10:00"
    assert "--lifetime 7500s" in job_script(retiring)
    assert sized_for(site, {"t": Resources(walltime_s=60)}) is site  # short enough already


def test_unknown_site_lists_the_known_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("CPFRAME_SITES", str(tmp_path))
    with pytest.raises(ConfigError, match=r"computeSite 'nowhere' is not a known site; known sites: "
                                          r"htcondor-example, local, lsf-example, pbs-example, sge-example, slurm"):
        open_cluster(kind="nowhere")
    cfg = {"pipelineYaml": "p.yaml", "computeSite": "nowhere",
           "payload": {"payloadName": "x", "butlerConfig": "/r", "inCollection": "a", "dataQuery": "q",
                       "output": "u/x", "outputRun": "u/x/1"}}
    with pytest.raises(SubmissionError, match="computeSite 'nowhere' is not a known site; known sites: "):
        validate_submission(cfg)


def test_every_listed_site_resolves(monkeypatch, tmp_path):
    """list_sites() names only sites find_site_profile resolves (``slurm`` once raised)."""
    monkeypatch.setenv("CPFRAME_SITES", str(tmp_path))
    from cpframe.core.config import Settings

    names = list_sites()
    assert {"local", "slurm"} <= set(names)
    kinds = {n: load_site(find_site_profile(n)).kind for n in names}
    assert kinds["local"] == "local" and kinds["slurm"] == "slurm"
    # slurm is the settings' Slurm site file
    assert find_site_profile("slurm", Settings(site_file="slurm-site-example.yaml")).name == "slurm-site-example.yaml"
    (tmp_path / "slurm.yaml").write_text("kind: slurm\nqueue: mine\n")
    assert find_site_profile("slurm") == tmp_path / "slurm.yaml"  # a user profile of that name wins


def test_user_profiles_come_first_and_local_profiles_open_a_local_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("CPFRAME_SITES", str(tmp_path))
    (tmp_path / "my-laptop.yaml").write_text("kind: local\n")
    (tmp_path / "pbs-example.yaml").write_text("kind: sge\nqueue: mine.q\n")
    assert "my-laptop" in list_sites()
    assert load_site(find_site_profile("pbs-example")).kind == "sge"  # the user's copy wins
    from cpframe.core.config import Settings

    with open_cluster(Settings(n_workers=1, threads_per_worker=1, worker_memory_bytes=GiB), kind="my-laptop") as oc:
        assert oc.kind == "local"
        (w,) = oc.client.scheduler_info()["workers"].values()
        assert w["resources"] == {"MEMORY": GiB, "CPU": 1}


def test_bad_site_kind_is_named(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("kind: torque\n")
    with pytest.raises(ConfigError, match="kind must be one of local, slurm, pbs, sge, lsf, htcondor, got 'torque'"):
        load_site(p)
