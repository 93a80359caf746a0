"""Illumination correction verification (stage ``ILLUMINATION``; cpframe's check).

cp_verify's ``verifyIlluminationCorrection`` pipeline re-measures the illumination correction on
science exposures processed *with* the correction under test (``do_illumination_correction``)
and writes it as ``verifyIlluminationCorrection``; it has no test task yet (DM-49192).  cpframe
tests that product: once the correction is applied, the correction measured again must be
flat.  Per detector x filter: ``RMS_DEVIATION`` and ``MAX_DEVIATION`` of ``c − 1`` over the
detector, ``N_STARS``, ``FIT_RMS_MMAG`` (residual scatter of the star magnitudes).  Test
``FLAT``: ``RMS_DEVIATION`` below ``illumination_max_rms`` (0.5 %; the peak is reported, not
tested: the fit's own noise grows in corners few stars reach).
"""

from __future__ import annotations

import math
from pathlib import Path

from cpframe.camera.models import Detector
from cpframe.core.errors import UserInputError
from cpframe.verify.config import VerifyConfig
from cpframe.verify.core import Stage, register_stage

__all__ = ["ILLUMINATION", "check_illumination", "measure_illumination"]


def measure_illumination(path: str | Path, detector: Detector, config: VerifyConfig, nominal=None) -> dict:
    """Statistics of the ILLUMINATION stage (module docstring)."""
    from cpframe.science.imageio import read_header

    if not Path(path).is_file():
        raise UserInputError(f"{path}: no illumination correction file; run the verifyIlluminationCorrection "
                             "pipeline first.")
    h = read_header(path)
    if "LSST ILLUM RMS DEVIATION" not in h:
        raise UserInputError(f"{path}: not an illumination correction made by cpframe (no LSST ILLUM keys).")
    det = {"RMS_DEVIATION": float(h["LSST ILLUM RMS DEVIATION"]), "MAX_DEVIATION": float(h["LSST ILLUM MAX DEVIATION"]),
           "N_STARS": int(h.get("LSST ILLUM NSTARS", 0)), "FIT_RMS_MMAG": float(h.get("LSST ILLUM RMS MMAG", math.nan))}
    meta = {k: h[k] for k in ("INSTRUME", "DETECTOR", "DETNAME", "FILTER") if k in h}
    return {"METADATA": {"N_EXPOSURES": h.get("LSST ILLUM NEXP")}, "AMP": {}, "DET": det, "HEADER": meta}


def check_illumination(stats: dict, config: VerifyConfig) -> dict:
    """Tests of the ILLUMINATION stage (module docstring)."""
    rms = stats["DET"]["RMS_DEVIATION"]
    return {"AMP": {}, "DET": {"FLAT": bool(math.isfinite(rms) and rms < config.illumination_max_rms)}}


ILLUMINATION = register_stage(Stage(name="ILLUMINATION", type_name="IlluminationCorrection", kind="calib",
                                    measure=measure_illumination, check=check_illumination,
                                    calib_type="illuminationCorrection"))
