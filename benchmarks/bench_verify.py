"""Verification and report costs, measured side by side.

A. per-amp clipped statistics: cpframe.verify.clipped_stats vs astropy sigma_clipped_stats
   (same 5 sigma / 3 iterations) on one amp;
B. one detector through each verification stage, from a fits-masked file, vs reading the
   file alone (how much of verification is I/O);
C. report images: a 9-detector focal-plane mosaic and one detector image (matplotlib Agg).

Usage::

    python benchmarks/bench_verify.py --scale full --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="full", choices=("full", "mini"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from astropy.stats import sigma_clipped_stats

    from cpframe.camera.models import load_camera
    from cpframe.science.imageio import MASK_BITS, write_masked
    from cpframe.verify import clipped_stats, read_residual, verify_exposure
    from cpframe.verify.plots import render_image_png, render_mosaic_png

    cam = load_camera("LSSTComCam", args.scale)
    det = cam.detector(4)
    rng = np.random.default_rng(1)
    amp = det.amps[0]
    pix = rng.normal(0.0, 6.0, (amp.data_rows, amp.data_cols))
    pix.ravel()[:: 997] += 5000.0  # outliers
    print(f"# bench_verify --scale {args.scale} --repeat {args.repeat}  (detector {det.shape}, amp {pix.shape})")

    a_cp = best(lambda: clipped_stats(pix, 5.0, 3), args.repeat)
    a_ap = best(lambda: sigma_clipped_stats(pix, sigma=5, maxiters=3, cenfunc="median", stdfunc="std"), args.repeat)
    print("\n## A. clipped statistics of one amp")
    print("| implementation | best (ms) | median (ms) | / cpframe |")
    print("|---|---:|---:|---:|")
    print(f"| cpframe clipped_stats | {a_cp[0]*1e3:.1f} | {a_cp[1]*1e3:.1f} | 1.00 |")
    print(f"| astropy sigma_clipped_stats | {a_ap[0]*1e3:.1f} | {a_ap[1]*1e3:.1f} | {a_ap[0]/a_cp[0]:.2f} |")

    with tempfile.TemporaryDirectory() as tmp:
        header = {"INSTRUME": "LSSTComCam", "EXPID": 2024112600021, "FILTER": "r_03", "LSST ISR UNITS": "electron"}
        for a in det.amp_names:
            header[f"LSST ISR GAIN {a}"] = 1.6
            header[f"LSST ISR READNOISE {a}"] = 6.0
            header[f"LSST ISR OVERSCAN RESIDUAL SERIAL STDEV {a}"] = 3.7
        mask = np.zeros(det.shape, np.int32)
        mask[100:110, 200:260] = 1 << MASK_BITS["BAD"]
        files = {}
        for stage, signal in (("bias", 0.0), ("flat", 20000.0), ("science", 800.0)):
            img = rng.normal(signal, np.sqrt(36.0 + signal), det.shape).astype(np.float32)
            var = np.full(det.shape, 36.0 + signal, np.float32)
            files[stage] = write_masked(Path(tmp) / f"{stage}.fits", img, mask, var, header)
        unc = files["science"]
        read_t = best(lambda: read_residual(files["bias"]), args.repeat)
        print("\n## B. one detector through verification (file -> statistics dictionary)")
        print("| stage | best (s) | median (s) | / reading the file |")
        print("|---|---:|---:|---:|")
        print(f"| read fits-masked only | {read_t[0]:.3f} | {read_t[1]:.3f} | 1.00 |")
        for stage in ("bias", "dark", "flat", "defects", "science"):
            f = files.get(stage, files["bias"])
            kw = {"uncorrected_path": unc} if stage == "defects" else {}
            src = files["science"] if stage == "defects" else f
            t = best(lambda: verify_exposure(stage, src, det, **kw), args.repeat)
            print(f"| {stage} | {t[0]:.3f} | {t[1]:.3f} | {t[0]/read_t[0]:.1f} |")

        images = {d.id: rng.normal(0, 1, d.shape).astype(np.float32) for d in cam.detectors}
        one = best(lambda: render_image_png(images[4], Path(tmp) / "one.png", "bias R22_S11", "e-"), args.repeat)
        mos = best(lambda: render_mosaic_png(images, cam, Path(tmp) / "mosaic.png", "bias", "e-"), args.repeat)
        print("\n## C. report images (matplotlib Agg, PNG)")
        print("| image | best (s) | median (s) | / one detector |")
        print("|---|---:|---:|---:|")
        print(f"| one detector, with colour bar | {one[0]:.3f} | {one[1]:.3f} | 1.00 |")
        print(f"| focal-plane mosaic of {len(images)} detectors | {mos[0]:.3f} | {mos[1]:.3f} | {mos[0]/one[0]:.2f} |")


if __name__ == "__main__":
    main()
