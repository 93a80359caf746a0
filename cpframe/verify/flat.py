"""Flat verification (stage ``FLAT``, spec verification.md §4.3; DMTN-101 §10).

The residual is a flat exposure processed by ISR with bias, dark and the flat under
test applied (electrons).  A good flat leaves a flat image whose pixel scatter is
photon noise.  Per amp: ``MEAN``, ``MEDIAN``, ``MEANCLIP``, ``NOISE`` (clipped
stdev), ``SAT_FRACTION`` (fraction of SAT-masked pixels) and the nominal
``READ_NOISE``.  Per detector, over the amp MEANs: ``MEAN`` and ``SCATTER`` (std).
Per exposure, over the detector MEANs: ``MEAN`` and ``SCATTER``.

Tests (cpframe's reading; docs/verification.md explains the differences):

* amp ``NOISE``: ``|NOISE / E - 1| <= 0.10`` with E = ``EXPECTED_NOISE``, the sqrt of
  the mean variance plane (photon + read noise + the flat's own noise, as the ISR
  propagates them), or sqrt(MEAN) without a variance plane -- photon-noise consistent,
  both ways (cp_verify: ``NOISE <= sqrt(MEAN)``, which read noise and the flat's own
  noise make fail on good data, and which a saturated flat -- no scatter -- passes);
* amp ``SATURATION``: ``SAT_FRACTION <= 0.001``;
* detector ``SCATTER``: ``SCATTER / MEAN <= 0.05``;
* exposure ``SCATTER``: ``std(detector MEANs) / mean(detector MEANs) <= 0.05``
  (cp_verify compares the absolute std with 0.05, the same for a flat near 1).
"""

from __future__ import annotations

import math

import numpy as np

from cpframe.camera.models import Detector
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage
from cpframe.verify.stats import (
    ResidualImage,
    clipped_stats,
    expected_noise,
    header_amp_value,
    header_value,
    mask_of,
)

__all__ = ["FLAT", "FLAT_ANAGLYPH", "FLAT_SINGLE_LED", "check_flat", "flat_exposure_group", "measure_flat"]


def measure_flat(residual: ResidualImage, detector: Detector, config: VerifyConfig) -> dict:
    """Statistics of the FLAT stage (module docstring)."""
    exclude = mask_of(residual, config.mask_names) | ~np.isfinite(residual.image)
    sat = mask_of(residual, ("SAT",))
    amps: dict[str, dict] = {}
    noises = {}
    for amp in detector.amps:
        ys, xs = amp.bbox
        vals = residual.image[ys, xs][~exclude[ys, xs]]
        clip = clipped_stats(vals, config.n_sigma_clip, config.clip_max_iter)
        rn = header_amp_value(residual.header, "LSST ISR READNOISE", amp.name, "LSST READNOISE")
        noises[amp.name] = rn
        mean = float(np.mean(vals)) if vals.size else math.nan
        expected = expected_noise(residual, amp, exclude)
        if not math.isfinite(expected):
            expected = math.sqrt(mean) if mean > 0 else math.nan
        amps[amp.name] = {
            "MEAN": mean,
            "MEDIAN": clip.median,
            "MEANCLIP": clip.mean,
            "NOISE": clip.stdev,
            "EXPECTED_NOISE": expected,
            "SAT_FRACTION": float(sat[ys, xs].mean()),
            "NMASKED": int(exclude[ys, xs].sum()),
            "READ_NOISE": rn,
        }
        for p in (0, 5, 16, 50, 84, 95, 100):
            v = header_value(residual.header, f"LSST CALIB FLAT {amp.name} DISTRIBUTION {p}-PCT")
            if v is not None:
                amps[amp.name][f"FLAT_DIST_{p}_PCT"] = float(v)
    means = np.array([s["MEAN"] for s in amps.values()], dtype=float)
    means = means[np.isfinite(means)]
    det = {
        "MEAN": float(np.mean(means)) if means.size else math.nan,
        "SCATTER": float(np.std(means)) if means.size else math.nan,
    }
    return {"METADATA": {"READ_NOISE": noises}, "AMP": amps, "DET": det}


def check_flat(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the FLAT stage (module docstring)."""
    amps = {}
    for amp, s in stats["AMP"].items():
        ratio = s["NOISE"] / s["EXPECTED_NOISE"]
        amps[amp] = {
            "NOISE": bool(math.isfinite(ratio) and abs(ratio - 1.0) <= config.flat_noise_tolerance),
            "SATURATION": bool(s["SAT_FRACTION"] <= config.flat_sat_fraction_threshold),
        }
    det = stats["DET"]
    rel = det["SCATTER"] / det["MEAN"] if det["MEAN"] else math.nan
    return {"AMP": amps, "DET": {"SCATTER": bool(math.isfinite(rel) and rel <= config.flat_det_scatter_threshold)}}


def flat_exposure_group(detector_stats: list[dict], config: VerifyConfig) -> dict:
    """Exposure-level group test: detector-to-detector scatter of the flat-fielded level."""
    means = np.array([s["DET"]["MEAN"] for s in detector_stats], dtype=float)
    means = means[np.isfinite(means)]
    mean = float(np.mean(means)) if means.size else math.nan
    scatter = float(np.std(means)) if means.size else math.nan
    rel = scatter / mean if mean else math.nan
    return {
        "stats": {"MEAN": mean, "SCATTER": scatter},
        "verify": {"SCATTER": bool(math.isfinite(rel) and rel <= config.flat_exp_scatter_threshold)},
    }


FLAT = register_stage(Stage(
    name="FLAT", type_name="Flat", kind="exposure", measure=measure_flat, check=check_flat,
    group=flat_exposure_group, by_filter=True,
))

#: The anaglyph flat (campaign product ``flat_anaglyph``; it is the band's ``flat``) under the flat's tests, as a
#: stage of its own so that its results (``verifyFlatAnaglyph*``) and its report section stay apart from a plain
#: flat's (pipelines/verifyFlatAnaglyph.yaml).
FLAT_ANAGLYPH = register_stage(Stage(
    name="FLAT_ANAGLYPH", type_name="FlatAnaglyph", kind="exposure", measure=measure_flat, check=check_flat,
    group=flat_exposure_group, by_filter=True,
))

#: One LED's flat (campaign product ``flat_single_led``, dataset type ``flat_<LED_NAME>``) under the flat's tests,
#: on that LED's own flats flat-fielded by it (pipelines/verifyFlatSingleLed.yaml: its ISR reads
#: ``flat_<LED_NAME>`` as the flat, renamed by the template as cp_verify renames connections).
FLAT_SINGLE_LED = register_stage(Stage(
    name="FLAT_SINGLE_LED", type_name="FlatSingleLed", kind="exposure", measure=measure_flat, check=check_flat,
    group=flat_exposure_group, by_filter=True,
))
