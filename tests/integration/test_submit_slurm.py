"""``cpframe submit`` of the bias, dark and flat templates on a real Slurm (cluster/start-local-slurm.sh).

Each template is submitted twice with the same inputs: on the session LocalCluster (RERUN
...a) and with ``computeSite: slurm`` (RERUN ...s, workers started by ``sbatch`` through
``dask_jobqueue.SLURMCluster``).  The products must be the same pixels, the quanta must have
run inside Slurm jobs, and no job of ours may be left in the queue.  The bias submission
opens (and closes) its own SLURMCluster from ``--compute-site slurm``; dark and flat share one
SLURMCluster passed as the client, to keep the test short (each new cluster pays the workers'
start-up and JIT compilation).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cpframe.execution.cluster import load_site, open_cluster, squeue_ids
from cpframe.core.config import Settings
from cpframe.science.imageio import read_masked
from cpframe.execution.provenance import load_provenance
from cpframe.execution.submit import submit_template

from tests._run_helpers import (
    INSTRUMENT, TICKET, TRUTH_COLLECTION, certify_run, certify_truth_calibs, make_repo, ticket_chain_add, variables,
)

pytestmark = pytest.mark.slurm

P = f"{INSTRUMENT}/calib/{TICKET}"


def test_bias_dark_flat_on_slurm_match_local(tmp_path, mini_dataset, local_dask, local_slurm):
    repo = make_repo(tmp_path / "repo", mini_dataset)
    shared = None
    try:
        certify_truth_calibs(repo, mini_dataset.truth, mini_dataset.detectors, tmp_path / "calibs")
        repo.registry.set_chain(P, [TRUTH_COLLECTION], mode="redefine")
        site = dataclasses.replace(load_site("slurm-local.yaml"), queue=local_slurm.partition,
                                   log_directory=str(tmp_path / "slurm-logs"), local_directory=str(tmp_path / "work"),
                                   walltime="00:10:00", worker_lifetime_s=None, worker_lifetime_stagger_s=None)
        for name, dtype in (("bias", "bias"), ("dark", "dark"), ("flat_g", "flat")):
            local = submit_template(f"bps_{name}", environ=variables(repo.root, tmp_path / "s", mini_dataset,
                                                                    CALIB_COLLECTIONS="", RERUN="20241110a"),
                                    client=local_dask.client)
            env = variables(repo.root, tmp_path / "s", mini_dataset, CALIB_COLLECTIONS="", RERUN="20241110s")
            if name == "bias":
                slurm = submit_template(f"bps_{name}", environ=env, compute_site="slurm", site=site)
                assert squeue_ids() == set()  # the submission cancelled its jobs
                shared = open_cluster(Settings(), site=site, kind="slurm", jobs=2)
            else:
                slurm = submit_template(f"bps_{name}", environ=env, client=shared.client)
            assert slurm.counts == local.counts == {dtype: len(mini_dataset.detectors)}
            (rec,) = load_provenance(repo.registry, slurm.run)
            assert rec["where"] and all("Slurm job" in w for w in rec["where"]), rec["where"]
            assert sum(rec["where"].values()) == len(slurm.plan.quanta)
            a = {r.data_id["detector"]: r for r in repo.registry.query_datasets(dtype, collections=[local.run])}
            b = {r.data_id["detector"]: r for r in repo.registry.query_datasets(dtype, collections=[slurm.run])}
            assert a.keys() == b.keys()
            for d in a:
                x, y = read_masked(repo.get_path(a[d])), read_masked(repo.get_path(b[d]))
                np.testing.assert_array_equal(x.image, y.image)
                np.testing.assert_array_equal(x.mask, y.mask)
                np.testing.assert_array_equal(x.variance, y.variance)
            if dtype != "flat":  # the next step reads the certified local product, for both runs
                cert = f"{P}/{dtype}.20241110a"
                certify_run(repo, local.run, dtype, cert)
                ticket_chain_add(repo, cert)
        shared.close()
        assert squeue_ids() == set()
    finally:
        if shared is not None:
            shared.close()
        repo.close()
