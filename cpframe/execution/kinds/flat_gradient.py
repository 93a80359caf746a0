"""The ``flatGradientFit`` and ``flatGradientApply`` kinds.

``flatGradientFit``: the focal-plane radial function and planar gradient of one physical filter's
flats (cp_pipe ``CpFlatFitGradientsTask``; science and the differences in :mod:`cpframe.science.flat_gradient`).

Inputs: every detector's combined flat of the filter (the pipeline's combine output) and, optionally, each
detector's certified ``defects`` (masked out of the bins).  Output: ``flat_gradient_reference`` with
``do_reference_gradient`` (bps_flat_gradient_reference_<band>), else ``flat_gradient``.

``flatGradientApply`` (cp_pipe ``CpFlatApplyGradientsTask``): one detector's new flat (``flat_uncorrected``) and
its filter's ``flat_gradient`` in, the certified ``flat_gradient_reference`` as calibration; writes the corrected
``flat`` (LSSTCam's cpFlat.yaml, cpGainCorrection.yaml: ``flat_gain_correction``, cpFlatAnaglyph.yaml:
``flat_blue`` / ``flat_red``).
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, detector_of, output_path
from cpframe.science.configs import flat_gradient as _fg

MSG_APPLY_INPUTS = ("flatGradientApply {key}: needs the new flat of the detector and the flat gradient of its filter "
                    "as inputs (got {got}); connect the combine and the flatGradientFit outputs.")
MSG_NO_REFERENCE = ("flatGradientApply {key}: no certified flat_gradient_reference for filter {filt}; build it with "
                    "bps_flat_gradient_reference_<band> and certify it into the input collections first.")
MSG_NO_FLATS = "flatGradientFit {key}: no flats to fit: connect the combined flats of the pipeline as the input."


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


_TYPES = {"int": int, "float": float, "bool": bool, "tuple[float, ...]": "floats"}
# cp_pipe's CpFlatFitGradientsConfig fields are snake_case; cpframe's options take camelCase
_FIELDS = {k: _camel(k) for k in _fg.FlatGradientConfig.__dataclass_fields__}


class FlatGradientFit(TaskKind):
    name = "flatGradientFit"
    summary = "Focal-plane radial spline and planar gradient of one filter's flats (all detectors) -> json."
    dimensions = (frozenset({"physical_filter"}),)
    config_class = _fg.FlatGradientConfig
    settings_key = "flat_gradient"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpFlatFitGradientsTask": ClassMap(
        "flatGradientFit", ("physical_filter",), (("input_flats", "flat_uncorrected"),),
        ("output_reference_gradient", "flat_gradient_reference"), _FIELDS, ("python", *_fg._IGNORED),
        extra_connections=("camera", "output_gradient", "model_residual_plot", "radial_model_plot"),
        calibrations=(("input_defects", "defects"),))})
    options = MappingProxyType({_camel(k): Option(_TYPES[str(f.type)], k, doc="cp_pipe: " + k)
                                for k, f in _fg.FlatGradientConfig.__dataclass_fields__.items()})

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import flat_gradient as _fg  # the science itself: only where quanta run
        from cpframe.science.imageio import read_defects

        flats = sorted({p for vs in groups.values() for v in vs if (p := getattr(v, "path", None))})
        if not flats:
            raise UserInputError(MSG_NO_FLATS.format(key=spec.key))
        defects = {}  # detector -> its defects file (ecsv meta 'detector')
        for p in spec.calib_paths.get("defects") or []:
            det = read_defects(p)[1].get("detector")
            if det is not None:
                defects[int(det)] = p
        return _fg.flat_gradient_task(flats, output_path(spec), spec.settings["flat_gradient"], defect_paths=defects)


class FlatGradientApply(TaskKind):
    name = "flatGradientApply"
    summary = ("A new flat with its planar gradient removed and its radial shape made the reference's "
               "(one detector).")
    dimensions = (frozenset({"detector", "physical_filter"}),)
    config_class = None
    task_classes = MappingProxyType({"lsst.cp.pipe.CpFlatApplyGradientsTask": ClassMap(
        "flatGradientApply", ("detector", "physical_filter"),
        (("input_flat", "flat_uncorrected"), ("gradient", "flat_gradient")), ("output_flat", "flat"), {}, (),
        extra_connections=("camera",), calibrations=(("reference_gradient", "flat_gradient_reference"),))})

    @classmethod
    def plan(cls, task, settings, explicit):
        # no options (cp_pipe's config has none); the reference's dataset type follows the connection
        return {"config": {}, "calibration": (task.calibrations or ("flat_gradient_reference",))[0]}, []

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import flat_gradient as _fg  # the science itself: only where quanta run
        values = [v for vs in groups.values() for v in vs]
        flats = [v.path for v in values if not isinstance(v, _fg.FlatGradient) and getattr(v, "path", None)]
        grads = [v.path for v in values if isinstance(v, _fg.FlatGradient)]
        if len(flats) != 1 or len(grads) != 1:
            raise UserInputError(MSG_APPLY_INPUTS.format(key=spec.key, got=f"{len(flats)} flat(s), "
                                                                            f"{len(grads)} gradient(s)"))
        refs = spec.calib_paths.get(spec.settings["calibration"]) or []
        if not refs:
            raise UserInputError(MSG_NO_REFERENCE.format(key=spec.key, filt=spec.data_id.get("physical_filter")))
        return _fg.flat_gradient_apply_task(flats[0], grads[0], refs[0], output_path(spec),
                                            detector=detector_of(flats[0], spec.data_id["detector"]))
