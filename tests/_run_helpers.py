"""Helpers shared by the planning/execution tests (test_graph, test_execute, test_submit, Slurm).

They build real repositories from the data area's simulated mini ComCam data set
(``tests/fixtures/data.py``: ``mini_dataset``) with the real ingest, and certify
calibrations made *from the simulator truth* (PTC gains/noise, defects), so that the
bias, dark and flat templates can be submitted without first running the bootstrap chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

INSTRUMENT = "LSSTComCam"
RAW_RUN = "LSSTComCam/raw/all"
TICKET = "DM-TEST"
TRUTH_COLLECTION = "LSSTComCam/calib/DM-TEST/truth"
TRUTH_BEGIN = "2024-11-01T00:00:00"


def make_repo(root: Path, dataset: Any, *, files: Iterable[Path] | None = None, transfer: str = "direct") -> Any:
    """A new repository with the data set's raws (or ``files``) ingested into LSSTComCam/raw/all."""
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository

    repo = Repository.create(root)
    report = ingest_raws(repo, list(files) if files is not None else [dataset.root], run=RAW_RUN, transfer=transfer,
                         processes=1)
    assert not report.failed, report.summary()
    return repo


def put_certified(repo: Any, dataset_type: str, items: list[tuple[Path, dict]], run: str, collection: str,
                  begin: str = TRUTH_BEGIN, end: str | None = None) -> list:
    """Store files as ``dataset_type`` in ``run`` and certify them into ``collection`` from ``begin``."""
    from cpframe.core.model import CollectionType, Timespan

    repo.registry.register_collection(run, CollectionType.RUN)
    refs = repo.put_files([(p, dataset_type, did) for p, did in items], run, transfer="copy")
    repo.registry.certify(collection, refs, Timespan.from_text(begin, end))
    return refs


def write_truth_ptc(path: Path, truth: Any, detector: int, instrument: str = INSTRUMENT) -> Path:
    """A fits-ptc whose gains, read noise and turnoff are the simulator's injected values."""
    from cpframe.science.imageio import write_ptc

    det = truth.camera.detector(detector)
    rows = []
    for amp in det.amps:
        t = truth.amp(detector, amp.name)
        rows.append({"amp": amp.name, "gain": t.gain, "gain_err": 0.0, "noise": t.read_noise, "noise_err": 0.0,
                     "turnoff": t.saturation - t.bias_level, "a00": 0.0, "n_pairs": 0,
                     # two unused (NaN) points: a one-element vector column reads back as a scalar
                     "raw_means": [np.nan] * 2, "raw_vars": [np.nan] * 2, "exp_times": [np.nan] * 2,
                     "mask": [False] * 2, "overscan_noise": [np.nan] * 2})
    return write_ptc(path, rows, {"INSTRUME": instrument, "DETECTOR": detector, "DETNAME": det.name,
                                  "CAMSCALE": "mini", "OBSTYPE": "ptc"})


def write_truth_defects(path: Path, truth: Any, detector: int, instrument: str = INSTRUMENT) -> Path:
    """An ecsv-defects file listing the simulator's injected defects of ``detector``."""
    from cpframe.camera.curated import write_defects

    rects = [d[:4] for d in truth.detectors[detector].defects]
    return write_defects(path, rects, instrument, detector, TRUTH_BEGIN)


def truth_isr_calibs(work: Path, truth: Any, camera: Any, detectors: Iterable[int],
                     types: tuple[str, ...] = ("ptc", "defects", "bias", "dark")) -> dict[str, list]:
    """Per detector, the ISR calibrations a flat-family test certifies first (for :func:`put_certified`): the truth
    PTC and defects, and a zero bias (variance 1) and zero dark in electrons.  Dataset type -> [(path, data ID)]."""
    from cpframe.science.imageio import write_masked

    inst = camera.name
    items: dict[str, list] = {t: [] for t in types}
    for d in detectors:
        det = camera.detector(d)
        did = {"instrument": inst, "detector": d}
        z, zm = np.zeros(det.shape, np.float32), np.zeros(det.shape, np.int32)
        head = {"INSTRUME": inst, "DETECTOR": d, "DETNAME": det.name, "CAMSCALE": camera.scale,
                "LSST ISR UNITS": "electron"}
        make = {"ptc": lambda: write_truth_ptc(work / f"ptc{d}.fits", truth, d, inst),
                "defects": lambda: write_truth_defects(work / f"def{d}.ecsv", truth, d, inst),
                "bias": lambda: write_masked(work / f"bias{d}.fits", z, zm, z + 1.0, head),
                "dark": lambda: write_masked(work / f"dark{d}.fits", z, zm, z, head)}
        for t in types:
            items[t].append((make[t](), did))
    return items


def certify_truth_calibs(repo: Any, truth: Any, detectors: Iterable[int], work: Path,
                         types: tuple[str, ...] = ("ptc", "defects"), begin: str = TRUTH_BEGIN) -> str:
    """Certify truth PTCs and defects of ``detectors`` into :data:`TRUTH_COLLECTION`; returns its name."""
    work.mkdir(parents=True, exist_ok=True)
    writers = {"ptc": (write_truth_ptc, ".fits"), "defects": (write_truth_defects, ".ecsv")}
    for dt in types:
        write, ext = writers[dt]
        items = [(write(work / f"{dt}_{d}{ext}", truth, d), {"instrument": INSTRUMENT, "detector": d})
                 for d in detectors]
        put_certified(repo, dt, items, f"{TRUTH_COLLECTION}/{dt}-run", TRUTH_COLLECTION, begin=begin)
    return TRUTH_COLLECTION


def variables(repo_root: Path, scratch: Path, dataset: Any, **extra: str) -> dict[str, str]:
    """The DMTN-222 variable set for ``repo_root``, with the demo plan's selections."""
    env = {
        "USER_CALIB_PREFIX": "", "INSTRUMENT": INSTRUMENT, "TICKET": TICKET, "REPO": str(repo_root),
        "RAW_COLLECTION": RAW_RUN, "CALIB_COLLECTIONS": TRUTH_COLLECTION, "TAG": "test", "RERUN": "20241110a",
        "BOOTSTRAP_RUN_NUMBER": "1", "VERIFY_RERUN": "20241126a", "SCRATCH": str(scratch), "USER": "tester",
        "PATH": "/usr/bin:/bin",
    }
    env.update(dataset.plan.selections)
    env.update(extra)
    return env


def ticket_chain_add(repo: Any, collection: str) -> None:
    """Prepend ``collection`` to the ticket chain (DMTN-222: newer certified collections first)."""
    repo.registry.set_chain(f"{INSTRUMENT}/calib/{TICKET}", [collection], mode="prepend")


def certify_run(repo: Any, run: str, dataset_type: str, collection: str, begin: str = TRUTH_BEGIN) -> list:
    """certify-calibrations: every ``dataset_type`` of RUN ``run`` into ``collection``, open-ended."""
    from cpframe.core.model import Timespan

    refs = repo.registry.query_datasets(dataset_type, collections=[run])
    repo.registry.certify(collection, refs, Timespan.from_text(begin, None))
    return refs


def verify_and_report(repo: Any, template: Path, env: dict, client: Any, gen_run: str, product: str,
                      summary_type: str, report_dir: Path) -> tuple[Any, Any, str]:
    """Submit cpframe's verification ``template`` for the certified ``product``, assert its
    ``summary_type`` says SUCCESS and that the HTML report of it and ``gen_run`` gives ``product`` a
    passing verdict; returns (the verification's SubmitResult, the report, its index.html text)."""
    from cpframe.execution.submit import submit_template
    from cpframe.report.html import write_report
    from cpframe.verify import read_stats

    ver = submit_template(template, environ=env, client=client, argv=["cpframe", "submit"])
    (sref,) = repo.registry.query_datasets(summary_type, collections=[ver.run])
    assert read_stats(repo.get_path(sref))["SUCCESS"] is True, read_stats(repo.get_path(sref))
    rep = write_report(repo, [ver.run, gen_run], report_dir)
    assert rep.verdicts.get(product) is True, rep.verdicts
    return ver, rep, (rep.output_dir / "index.html").read_text()


def full_isr_setup(sim: Any, products: Any, crosstalk: float) -> tuple[Any, dict]:
    """(IsrConfig, calibrations) of an ISR with every step the fused path streams: electrons, gains, crosstalk
    (``crosstalk`` between every pair of amps; quadratic off), bias, dark, defects, saturation, linearity and a
    MEAN-scaled flat, from the mini simulation's products."""
    from dataclasses import replace

    from cpframe.science.isr import isr_config_for

    det = sim.detector
    xt = np.full((len(det.amps), len(det.amps)), crosstalk)
    np.fill_diagonal(xt, 0.0)
    p = products
    calibs = {"ptc": p.ptc.path, "bias": p.bias.path, "dark": p.dark.path, "defects": p.defects.path,
              "flat": p.flat.path, "crosstalk": xt, "linearizer": {a.name: -1e-7 for a in det.amps}}
    icfg = replace(isr_config_for("flat"), do_defect=True, do_saturation=True, do_crosstalk=True,
                   do_linearize=True, do_flat=True, flat_scaling_type="MEAN")
    return icfg, calibs
