"""The ``gainCorrection`` kind: per-amp gain adjustments of one detector from a new flat divided by the
certified flat of the same filter (cp_pipe ``CpMeasureGainCorrectionTask``; science and the differences in
:mod:`cpframe.science.gain_correction`).

Inputs: the combined new flat (``flat_gain_correction``, one per detector and filter), the certified
``flat`` (every filter found; the one of the new flat's filter is used, as cp_pipe's ``adjustQuantum``)
and the certified ``ptc`` (the fixed amp).
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, detector_of, output_path
from cpframe.science.configs import gain_correction as _gc

MSG_NO_FLAT = ("gainCorrection {key}: no new flat to measure: connect the combined flat of the pipeline "
               "(flat_gain_correction) as the input.")
MSG_NO_CALIB = ("gainCorrection {key}: no certified {what} found for the detector; certify it in the input "
                "collections (CALIB_COLLECTIONS) first.")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


# cp_pipe's CpMeasureGainCorrectionConfig fields are snake_case; cpframe's options take camelCase
_FIELDS = {k: _camel(k) for k in _gc.GainCorrectionConfig.__dataclass_fields__}


class GainCorrection(TaskKind):
    name = "gainCorrection"
    summary = "Per-amp gain adjustments (x PTC gain) of one detector from a new flat / the certified flat."
    dimensions = (frozenset({"detector"}),)
    config_class = _gc.GainCorrectionConfig
    settings_key = "gain_correction"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpMeasureGainCorrectionTask": ClassMap(
        "gainCorrection", ("detector",), (("input_flat", "flat_gain_correction"),),
        ("output_gain_correction", "gain_correction"), _FIELDS, ("python",),
        extra_connections=("output_flat_ratio_plot",),
        calibrations=(("input_reference_flat", "flat"), ("input_reference_ptc", "ptc")))})
    options = MappingProxyType({_camel(k): Option({"int": int, "float": float, "bool": bool}[str(f.type)], k,
                                                  doc="cp_pipe: " + k)
                                for k, f in _gc.GainCorrectionConfig.__dataclass_fields__.items()})

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import gain_correction as _gc  # the science itself: only where quanta run
        flats = sorted((getattr(v, "path", None) for vs in groups.values() for v in vs), key=str)
        flats = [f for f in flats if f]
        if not flats:
            raise UserInputError(MSG_NO_FLAT.format(key=spec.key))
        refs = list(spec.calib_paths.get("flat") or [])
        ptc = (spec.calib_paths.get("ptc") or [None])[0]
        for what, found in (("flat", refs), ("ptc", ptc)):
            if not found:
                raise UserInputError(MSG_NO_CALIB.format(key=spec.key, what=what))
        det = detector_of(flats[0], spec.data_id["detector"])
        # one filter per selection; with several, the first (sorted) is used, as cp_pipe's input_flat[0]
        return _gc.gain_correction_task(flats[0], refs, ptc, output_path(spec), spec.settings["gain_correction"],
                                        detector=det)
