"""Header reading + translation per raw file (ingest's first step), for 200 mini LSSTComCam raws.

    PYTHONPATH=$PWD python3 benchmarks/bench_translate.py LABEL

Prints the best of 3 of ``read_raw_headers(paths, processes=1)`` in ms per header.
"""
import sys, time, tempfile
from pathlib import Path
from cpframe.camera.models import load_camera
from cpframe.camera.simulate import ExposureSpec, raw_path, write_raw
from cpframe.repository.ingest import read_raw_headers
import logging; logging.disable(logging.WARNING)
cam = load_camera("LSSTComCam", "mini")
root = Path(tempfile.mkdtemp(prefix="cpframe_bench_translate_"))
paths = []
for i in range(100):
    s = ExposureSpec(20241110, i + 1, "flat", "r_03", 5.0, 5.2, f"2024-11-11T01:{i // 60:02d}:{i % 60:02d}", "flat", "T", 10.0)
    for d in (0, 4):
        det = cam.detector(d)
        p = raw_path(root, cam.name, s, det)
        write_raw(p, cam, d, s, None, 1)
        paths.append(p)
best = 1e9
for _ in range(3):
    t = time.perf_counter(); infos, fails = read_raw_headers(paths, processes=1); best = min(best, time.perf_counter() - t)
assert not fails, fails[:2]
import shutil; shutil.rmtree(root, ignore_errors=True)
print(f"{sys.argv[1] if len(sys.argv) > 1 else 'now'}: {len(paths)} headers, best of 3: {best*1e3/len(paths):.2f} ms/header")
