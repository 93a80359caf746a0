"""Registry benchmark: selections, certify and find-first on a large registry, SQLite and PostgreSQL.

Populates (bulk inserts through the registry's own batched methods):

* LSSTCam (189 detectors), ``--exposures`` exposures (default 1,000,000) over many nights,
* ``raw`` datasets for enough exposures x 189 detectors to reach ``--datasets`` (default 200,000),
* 10,000 datasets of a calibration type with an exposure dimension (``benchCalib``), to certify
  10,000 distinct data IDs in one call,
* 20 RUNs of 189 ``bias`` each, certified into 20 CALIBRATION collections with successive
  validity ranges, chained in order (only the last one covers the test exposure, so the
  lookup walks the whole chain).

Then times (best of ``--repeat``):

* two DMTN-222-like selections (``query_dimension_records`` / ``query_data_ids``),
* certifying the 10,000 datasets in one call,
* find-first of ``bias`` for 189 detectors x 1 exposure through the 20-collection chain, batched
  (one call) and, side by side, one call per detector.

Usage::

    python benchmarks/bench_registry.py                      # SQLite and PostgreSQL, full size
    python benchmarks/bench_registry.py --backends sqlite --exposures 100000 --datasets 20000

PostgreSQL: a throwaway server is started with the test-suite helper (``tests/fixtures/registry.py``)
unless ``--pg-url`` names an empty database.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.core.model import CollectionType, DataId, DatasetRef, DatasetType, Timespan, parse_tai  # noqa: E402
from cpframe.repository.repo import Repository  # noqa: E402

INST = "LSSTCam"
SEL_RECORDS = ("instrument='LSSTCam' AND exposure.observation_type='bias' AND exposure.day_obs={day_obs} "
               "AND exposure.seq_num IN (10..90)")
SEL_IDS = "instrument='LSSTCam' AND exposure IN ({ids}) AND detector IN (0..188)"


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def exposures(n: int, per_night: int = 1000):
    """``n`` exposure records of LSSTCam, ``per_night`` per night from 2022-01-01 on (TAI)."""
    import datetime as dt

    start = dt.date(2022, 1, 1)
    types = ("bias", "dark", "flat", "science")
    night0 = parse_tai("2022-01-01T12:00:00")
    for i in range(n):
        night, seq = divmod(i, per_night)
        day = start + dt.timedelta(days=night)
        day_obs = int(day.strftime("%Y%m%d"))
        begin = night0 + night * 86_400 * 10**9 + seq * 40 * 10**9
        yield {"instrument": INST, "id": day_obs * 100000 + seq + 1, "obs_id": f"MC_O_{day_obs}_{seq + 1:06d}",
               "day_obs": day_obs, "seq_num": seq + 1, "physical_filter": "r_57", "observation_type": types[seq % 4],
               "observation_reason": types[seq % 4], "science_program": "BLOCK-T1", "exposure_time": 15.0,
               "dark_time": 15.0, "timespan": Timespan(begin, begin + 30 * 10**9)}


def populate(repo: Repository, n_exposures: int, n_datasets: int) -> dict:
    reg = repo.registry
    cam = load_camera(INST)
    reg.register_instrument(cam)
    filters = [pf for pf, _ in cam.filters]
    recs = list(exposures(n_exposures))
    for r in recs:
        r["physical_filter"] = "r_03" if "r_03" in filters else filters[0]
    t = time.perf_counter()
    reg.insert_exposures(recs)
    t_exp = time.perf_counter() - t
    dets = list(cam.detector_ids)
    reg.register_collection("bench/raw", CollectionType.RUN)
    n_exp_raw = -(-n_datasets // len(dets))
    raw_refs = [DatasetRef(str(uuid.uuid4()), "raw", DataId(instrument=INST, detector=d, exposure=r["id"]),
                           "bench/raw", None, None) for r in recs[:n_exp_raw] for d in dets][:n_datasets]
    t = time.perf_counter()
    reg.insert_datasets(raw_refs)
    t_ds = time.perf_counter() - t
    reg.register_dataset_type(DatasetType("benchCalib", ("instrument", "detector", "exposure"), True, "json"))
    reg.register_collection("bench/calibrun", CollectionType.RUN)
    cal_refs = reg.insert_datasets([
        DatasetRef(str(uuid.uuid4()), "benchCalib", DataId(instrument=INST, detector=d, exposure=r["id"]),
                   "bench/calibrun", None, None) for r in recs[-60:] for d in dets][:10_000])
    chain = []
    for i in range(20):
        run = f"bench/bias/run{i:02d}"
        reg.register_collection(run, CollectionType.RUN)
        refs = reg.insert_datasets([DatasetRef(str(uuid.uuid4()), "bias", DataId(instrument=INST, detector=d), run,
                                               None, None) for d in dets])
        begin = parse_tai(f"{2010 + i // 12}-{i % 12 + 1:02d}-01")
        end = None if i == 19 else parse_tai(f"{2010 + (i + 1) // 12}-{(i + 1) % 12 + 1:02d}-01")
        reg.certify(f"bench/calib/c{i:02d}", refs, Timespan(begin, end))
        chain.append(f"bench/calib/c{i:02d}")
    reg.set_chain("bench/calib", chain)
    return {"exposures_s": t_exp, "datasets_s": t_ds, "cal_refs": cal_refs, "exposure": recs[-1]["id"],
            "raw_exposures": [r["id"] for r in recs[:30]], "n_raw": len(raw_refs),
            "day_obs": recs[len(recs) // 2]["day_obs"]}


def measure(repo: Repository, info: dict, repeat: int) -> dict:
    reg = repo.registry
    out = {}
    out["sel_records_s"], recs = best(lambda: reg.query_dimension_records("exposure", SEL_RECORDS.format(day_obs=info["day_obs"])), repeat)
    out["sel_records_n"] = len(recs)
    where = SEL_IDS.format(ids=", ".join(map(str, info["raw_exposures"])))
    out["sel_ids_s"], ids = best(lambda: reg.query_data_ids(["exposure", "detector"], where), repeat)
    out["sel_ids_n"] = len(ids)
    out["sel_datasets_s"], ds = best(lambda: reg.query_datasets("raw", ["bench/raw"], where=where), repeat)
    out["sel_datasets_n"] = len(ds)
    t = time.perf_counter()
    reg.certify("bench/calib/certify10k", info["cal_refs"], Timespan(parse_tai("2024-01-01"), None))
    out["certify_s"] = time.perf_counter() - t
    out["certify_n"] = len(info["cal_refs"])
    dids = [{"instrument": INST, "detector": d, "exposure": info["exposure"]} for d in load_camera(INST).detector_ids]
    out["find_batch_s"], found = best(lambda: reg.find_calibrations("bias", dids, ["bench/calib"]), repeat)
    assert all(f is not None and f.run == "bench/bias/run19" for f in found), "lookup found the wrong bias"
    out["find_loop_s"], _ = best(lambda: [reg.find_calibration("bias", d, ["bench/calib"], info["exposure"])
                                          for d in dids], max(1, repeat // 2))
    return out


def run_backend(backend: str, args, workdir: Path, pg_url: str | None) -> dict:
    root = workdir / backend
    repo = Repository.create(root, db_url=pg_url if backend == "postgres" else None)
    try:
        t = time.perf_counter()
        info = populate(repo, args.exposures, args.datasets)
        info["populate_s"] = time.perf_counter() - t
        res = measure(repo, info, args.repeat)
        res.update({k: info[k] for k in ("exposures_s", "datasets_s", "populate_s", "n_raw")})
        return res
    finally:
        repo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exposures", type=int, default=1_000_000)
    ap.add_argument("--datasets", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg-url", default=None, help="empty PostgreSQL database (default: start a throwaway server)")
    args = ap.parse_args()
    backends = args.backends.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="cpframe-bench-"))
    server = None
    pg_url = args.pg_url
    try:
        if "postgres" in backends and pg_url is None:
            from tests.fixtures.registry import _as_owner, _pg_bin, _start

            server, run_as, top = _start(_pg_bin())
            pg_url = server.new_schema()
        results = {}
        for b in backends:
            print(f"[{b}] populating {args.exposures:,} exposures and {args.datasets:,} raw datasets ...", flush=True)
            results[b] = run_backend(b, args, workdir, pg_url)
            print(f"[{b}] done", flush=True)
    finally:
        if server is not None:
            subprocess.run(_as_owner([str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "fast",
                                      "stop"], run_as), capture_output=True)
            shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        ("insert exposures (bulk)", "exposures_s", "s"), ("insert raw datasets (bulk)", "datasets_s", "s"),
        ("selection: exposure records (day_obs+type+seq range)", "sel_records_s", "ms"),
        ("selection: data IDs exposure x detector (30 ids x 189)", "sel_ids_s", "ms"),
        ("selection: query_datasets raw --where (same)", "sel_datasets_s", "ms"),
        ("certify 10,000 datasets in one call", "certify_s", "ms"),
        ("find-first 189 det x 1 exp, chain of 20 (batched)", "find_batch_s", "ms"),
        ("find-first same, one call per detector", "find_loop_s", "ms"),
    ]
    head = f"| measurement | {' | '.join(backends)} |" + (" PostgreSQL / SQLite |" if len(backends) == 2 else "")
    print("\n" + head)
    print("|---" * (len(backends) + 1 + (len(backends) == 2)) + "|")
    for label, key, unit in rows:
        scale = 1000 if unit == "ms" else 1
        cells = [f"{results[b][key] * scale:,.1f} {unit}" for b in backends]
        ratio = f" {results['postgres'][key] / results['sqlite'][key]:.2f} |" if len(backends) == 2 else ""
        print(f"| {label} | {' | '.join(cells)} |{ratio}")
    for b in backends:
        r = results[b]
        print(f"\n[{b}] rows: selection records {r['sel_records_n']}, data IDs {r['sel_ids_n']}, datasets "
              f"{r['sel_datasets_n']}; certified {r['certify_n']}; raw datasets {r['n_raw']:,}; "
              f"batched find-first is {r['find_loop_s'] / r['find_batch_s']:.0f}x faster than one call per detector")


if __name__ == "__main__":
    main()
