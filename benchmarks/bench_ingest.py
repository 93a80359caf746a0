"""Raw ingest of many files against plain astropy header reads of the same files, in one run.

Writes N mini-scale LSSTComCam raw files (headers real, pixels left as holes of sparse files so
10 000 files take ~0.7 GB of disk instead of 26 GB), then times, on the same files:

1. plain ``astropy.io.fits.getheader(path)`` of every file, serially (the reference);
2. cpframe's header reading and checking (``read_raw_headers``) with 1 and with 2 processes;
3. ``cpframe ingest-raws``' library call ``ingest_raws(repo, [dir], transfer="direct")`` into a
   fresh SQLite repository (headers in 2 processes, exposure records, registry rows; no
   whole-file checksum, the default since ingest stopped hashing every byte);
4. a second ``ingest_raws`` of the same files (everything skipped);
5. ``cpframe.repository.repo.sha256_file`` of every file, serially: what ``ingest-raws --checksum`` adds
   (it reads every byte).

    python benchmarks/bench_ingest.py [--files 10000] [--dir SCRATCH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from astropy.io import fits

from cpframe.camera.models import load_camera
from cpframe.repository.ingest import ingest_raws, read_raw_headers
from cpframe.repository.repo import Repository
from cpframe.camera.simulate import ExposureSpec, raw_path, write_raw

from _control import parallel_control  # benchmarks/ is on sys.path when run as a script


def make_files(root: Path, n: int) -> list[Path]:
    cam = load_camera("LSSTComCam", "mini")
    paths = []
    per_night = 900 * len(cam.detectors)
    i = 0
    while len(paths) < n:
        night, k = divmod(i, 900)
        day = 20241101 + night
        spec = ExposureSpec(
            day,
            k + 1,
            "flat",
            "r_03",
            5.0,
            5.3,
            f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}T{18 + k // 60 // 60:02d}:"
            f"{k // 60 % 60:02d}:{k % 60:02d}",
            "flat",
            "BENCH",
            1000.0,
        )
        for det in cam.detectors:
            if len(paths) == n:
                break
            paths.append(write_raw(raw_path(root, cam.name, spec, det), cam, det.id, spec, None, 0))
        i += 1
    assert per_night
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="cpframe-bench-ingest-"))
    try:
        t0 = time.perf_counter()
        paths = make_files(root / "raw", a.files)
        print(
            f"cpu count {os.cpu_count()}; wrote {len(paths)} sparse mini raw files in "
            f"{time.perf_counter() - t0:.1f} s ({paths[0].stat().st_size / 1e6:.1f} MB apparent size each)"
        )
        # warm the page cache for everyone alike
        for p in paths:
            fits.getheader(p)
        t0 = time.perf_counter()
        for p in paths:
            fits.getheader(p)
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        infos, failed = read_raw_headers(paths, processes=1)
        cp1 = time.perf_counter() - t0
        assert len(infos) == len(paths) and not failed
        t0 = time.perf_counter()
        infos, failed = read_raw_headers(paths, processes=2)
        cp2 = time.perf_counter() - t0
        repo = Repository.create(root / "repo")
        try:
            t0 = time.perf_counter()
            report = ingest_raws(repo, [root / "raw"], transfer="direct", processes=2)
            ingest = time.perf_counter() - t0
            assert len(report.ingested) == len(paths), report.summary()
            t0 = time.perf_counter()
            again = ingest_raws(repo, [root / "raw"], transfer="direct", processes=2)
            reingest = time.perf_counter() - t0
            assert len(again.skipped) == len(paths)
        finally:
            repo.close()
        from cpframe.repository.repo import sha256_file

        t0 = time.perf_counter()
        for p in paths:
            sha256_file(p)
        hashing = time.perf_counter() - t0
        n = len(paths)
        print(f"control: a CPU loop runs {parallel_control():.2f}x faster on 2 processes than on 1 right now")
        print(
            f"plain astropy getheader, serial          : {plain:7.2f} s  {n / plain:7.0f} files/s  ratio 1.00"
        )
        print(
            f"cpframe read_raw_headers, 1 process      : {cp1:7.2f} s  {n / cp1:7.0f} files/s  "
            f"ratio {cp1 / plain:.2f}"
        )
        print(
            f"cpframe read_raw_headers, 2 processes    : {cp2:7.2f} s  {n / cp2:7.0f} files/s  "
            f"ratio {cp2 / plain:.2f}"
        )
        print(
            f"ingest_raws (direct, new SQLite repo)    : {ingest:7.2f} s  {n / ingest:7.0f} files/s  "
            f"ratio {ingest / plain:.2f}"
        )
        print(
            f"ingest_raws again (all skipped)          : {reingest:7.2f} s  {n / reingest:7.0f} files/s  "
            f"ratio {reingest / plain:.2f}"
        )
        print(
            f"sha256 of every file (--checksum adds)   : {hashing:7.2f} s  {n / hashing:7.0f} files/s  "
            f"ratio {hashing / plain:.2f}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
