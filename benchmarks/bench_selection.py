"""Selection benchmark: parse + compile cost, and selections over 1,000,000 exposures.

Two measurements, each printed as ratios measured side by side in one run:

1. **parse + type + compile** of representative selections, uncached (caches cleared before
   every call) and cached, per selection; and that cost against the query it produces.
2. **selections over ``--exposures`` exposures** (default 1,000,000, one instrument, 1,000 per
   night) on SQLite (and PostgreSQL with ``--backends sqlite,postgres``): each DMTN-222-like
   selection through ``select_dimension_records`` / ``select_data_ids`` next to the same
   query written by hand in SQLAlchemy Core (the ratio is the cost of the selection layer:
   parsing, typing, compiling, building dicts and Timespans).

The exposure table is filled with ``executemany`` in chunks; the indexes are those of
``cpframe/registry/schema.py``.

Usage::

    python benchmarks/bench_selection.py                       # SQLite, 1,000,000 exposures
    python benchmarks/bench_selection.py --backends sqlite,postgres
    python benchmarks/bench_selection.py --exposures 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from cpframe.camera.models import load_camera  # noqa: E402
from cpframe.core.model import parse_tai  # noqa: E402
from cpframe.repository.query import compiler, parser, typed  # noqa: E402
from cpframe.repository import schema
from cpframe.repository.query import (  # noqa: E402
    compile_selection,
    parse_selection,
    select_data_ids,
    select_dimension_records,
)

INST = "LSSTComCam"
PER_NIGHT = 1000
TYPES = ("bias", "dark", "flat", "science")
FILTERS = ("u_02", "g_01", "r_03", "i_06", "z_03", "y_04")


def day_obs_of(night: int) -> int:
    import datetime as dt

    return int((dt.date(2022, 1, 1) + dt.timedelta(days=night)).strftime("%Y%m%d"))


def exposure_chunks(n: int, chunk: int = 50_000):
    """Exposure rows in chunks: ``PER_NIGHT`` per night from 2022-01-01, 40 s apart, 30 s long."""
    night0 = parse_tai("2022-01-01T22:00:00")
    rows = []
    for i in range(n):
        night, seq = divmod(i, PER_NIGHT)
        day_obs = day_obs_of(night)
        begin = night0 + night * 86_400 * 10**9 + seq * 40 * 10**9
        otype = TYPES[seq % 4]
        rows.append({
            "instrument": INST, "id": day_obs * 100000 + seq + 1, "obs_id": f"CC_O_{day_obs}_{seq + 1:06d}",
            "day_obs": day_obs, "seq_num": seq + 1, "physical_filter": FILTERS[(seq // 4) % 6],
            "observation_type": otype, "observation_reason": otype,
            "science_program": None if otype == "bias" else "BLOCK-T17", "exposure_time": 0.0 if otype == "bias" else 15.0,
            "dark_time": 0.2 if otype == "bias" else 15.2, "timespan_begin": begin, "timespan_end": begin + 30 * 10**9,
        })
        if len(rows) == chunk:
            yield rows
            rows = []
    if rows:
        yield rows


def fill(engine: sa.Engine, n: int) -> float:
    """Create the schema and insert the instrument, detectors, filters and ``n`` exposures."""
    t0 = time.perf_counter()
    schema.metadata.create_all(engine)
    cam = load_camera(INST)
    with engine.begin() as c:
        c.execute(schema.instrument.insert().values(name=INST, detector_max=max(cam.detector_ids) + 1,
                                                    amp_names=",".join(cam.amp_names)))
        c.execute(schema.detector.insert(), [
            dict(instrument=INST, id=d.id, full_name=d.name, raft=d.raft, name_in_raft=d.name_in_raft,
                 vendor=d.vendor, serial=d.serial) for d in cam.detectors])
        c.execute(schema.physical_filter.insert(), [dict(instrument=INST, name=pf, band=b) for pf, b in cam.filters])
    for rows in exposure_chunks(n):
        with engine.begin() as c:
            c.execute(schema.exposure.insert(), rows)  # executemany
    with engine.begin() as c:
        if engine.dialect.name == "sqlite":
            c.exec_driver_sql("ANALYZE")
        else:
            c.exec_driver_sql("ANALYZE exposure")
    return time.perf_counter() - t0


def hand_written(day: int):
    """The same queries written directly in SQLAlchemy Core (the baseline)."""
    ex, pf, det = schema.exposure, schema.physical_filter, schema.detector
    join = ex.join(pf, sa.and_(pf.c.instrument == ex.c.instrument, pf.c.name == ex.c.physical_filter))
    cols = [ex.c.id, ex.c.instrument, ex.c.obs_id, ex.c.day_obs, ex.c.seq_num, ex.c.physical_filter, pf.c.band,
            ex.c.observation_type, ex.c.observation_reason, ex.c.science_program, ex.c.exposure_time,
            ex.c.dark_time, ex.c.timespan_begin, ex.c.timespan_end]
    rec = sa.select(*cols).select_from(join)
    d = day_obs_of(day)
    d2 = day_obs_of(day + 5)
    t_begin = parse_tai(f"{str(d)[:4]}-{str(d)[4:6]}-{str(d)[6:]}T23:00:37")
    return {
        "bias of one night": rec.where(ex.c.instrument == INST, ex.c.observation_type == "bias", ex.c.day_obs == d),
        "seq_num ranges in one night": rec.where(
            ex.c.instrument == INST, ex.c.day_obs == d,
            sa.or_(ex.c.seq_num.between(10, 30), sa.and_(ex.c.seq_num.between(40, 65), (ex.c.seq_num - 40) % 5 == 0))),
        "exposure ids x detectors": sa.select(ex.c.instrument, ex.c.id, det.c.id).select_from(
            ex.join(det, det.c.instrument == ex.c.instrument)).where(
            ex.c.instrument == INST, sa.or_(ex.c.id.in_([d * 100000 + 43]),
                                            ex.c.id.between(d * 100000 + 50, d * 100000 + 55))).distinct(),
        "flats in g over 6 nights": rec.where(ex.c.instrument == INST, ex.c.observation_type == "flat",
                                              pf.c.band == "g", ex.c.day_obs.between(d, d2)),
        "timespan OVERLAPS 30 min": rec.where(ex.c.instrument == INST, ex.c.timespan_begin < t_begin + 1800 * 10**9,
                                              ex.c.timespan_end > t_begin),
        "seq_num alone (no index)": rec.where(ex.c.seq_num == 44),
    }


def selections(day: int):
    d, d2 = day_obs_of(day), day_obs_of(day + 5)
    iso = f"{str(d)[:4]}-{str(d)[4:6]}-{str(d)[6:]}"
    return {
        "bias of one night": ("records", f"instrument='{INST}' AND exposure.observation_type='bias' "
                                         f"AND exposure.day_obs={d}"),
        "seq_num ranges in one night": ("records", f"instrument='{INST}' AND exposure.day_obs={d} "
                                                   "AND exposure.seq_num IN (10..30, 40..65:5)"),
        "exposure ids x detectors": ("data_ids", f"instrument='{INST}' AND exposure IN ({d}00043, "
                                                 f"{d}00050..{d}00055)"),
        "flats in g over 6 nights": ("records", f"instrument='{INST}' AND exposure.observation_type='flat' "
                                                f"AND band='g' AND exposure.day_obs IN ({d}..{d2})"),
        # 23:00:00 UTC = 23:00:37 TAI
        "timespan OVERLAPS 30 min": ("records", f"instrument='{INST}' AND exposure.timespan OVERLAPS "
                                                f"(T'{iso} 23:00:00', T'{iso} 23:30:00')"),
        "seq_num alone (no index)": ("records", "exposure.seq_num = 44"),
    }


def timed(fn, repeat: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def bench_parse(repeat: int) -> list[str]:
    lines = ["| selection | parse+type+compile, uncached (µs) | cached (µs) | uncached / cached |",
             "|---|---:|---:|---:|"]
    scope = compiler._DimensionScope({"exposure", "physical_filter", "detector"})
    for name, (_, where) in selections(530).items():
        def cold():
            parser._parse_tree.cache_clear()
            typed._TYPED_CACHE.clear()
            return compile_selection(parse_selection(where), scope)

        def warm():
            return compile_selection(parse_selection(where), scope)

        cold()  # build the parser once
        c = statistics.median(timed(cold, 1)[0] for _ in range(repeat * 20))
        w = statistics.median(timed(warm, 1)[0] for _ in range(repeat * 20))
        lines.append(f"| {name} | {c * 1e6:.0f} | {w * 1e6:.0f} | {c / w:.1f} |")
    return lines


def bench_queries(engine: sa.Engine, n: int, repeat: int) -> tuple[list[str], dict]:
    day = min(n // PER_NIGHT // 2, 530)
    base = hand_written(day)
    lines = ["| selection | rows | cpframe best / median (ms) | hand-written SQLAlchemy best (ms) | cpframe / hand-written |",
             "|---|---:|---:|---:|---:|"]
    figures = {}
    with engine.connect() as conn:
        for name, (kind, where) in selections(day).items():
            if kind == "records":
                fn = lambda: select_dimension_records(conn, "exposure", where, None, None)  # noqa: E731
            else:
                fn = lambda: select_data_ids(conn, ["exposure", "detector"], where, None, None)  # noqa: E731
            stmt = base[name]
            fn()
            conn.execute(stmt).all()
            best, median, out = timed(fn, repeat)
            hb, _, hout = timed(lambda: conn.execute(stmt).all(), repeat)
            assert len(out) == len(hout), (name, len(out), len(hout))
            figures[name] = best
            lines.append(f"| {name} | {len(out)} | {best * 1e3:.1f} / {median * 1e3:.1f} | {hb * 1e3:.1f} "
                         f"| {best / hb:.3g} |")
    return lines, figures


def start_postgres():
    from tests.fixtures.registry import _pg_bin, _start

    bin_dir = _pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found in /usr/lib/postgresql/*/bin")
    server, run_as, top = _start(bin_dir)

    def stop():
        from tests.fixtures.registry import _as_owner

        subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "-w",
                                  "stop"], run_as), capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)

    return server.new_schema(), stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposures", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backends", default="sqlite")
    args = ap.parse_args()
    print(f"## Selections\n\nCommand: `python benchmarks/bench_selection.py --exposures {args.exposures} "
          f"--repeat {args.repeat} --backends {args.backends}`\n")
    print("### Parse + type-check + compile (per selection)\n")
    print("\n".join(bench_parse(args.repeat)))
    for backend in args.backends.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="cpframe-bench-sel-"))
        stop = None
        try:
            if backend == "sqlite":
                engine = sa.create_engine(f"sqlite:///{tmp / 'registry.sqlite3'}")
            else:
                url, stop = start_postgres()
                engine = sa.create_engine(url)
            fill_s = fill(engine, args.exposures)
            print(f"\n### {backend}: {args.exposures:,} exposures of {INST} (filled with executemany in "
                  f"{fill_s:.0f} s)\n")
            lines, _ = bench_queries(engine, args.exposures, args.repeat)
            print("\n".join(lines))
            engine.dispose()
        finally:
            if stop:
                stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
