"""The ``defects`` kind: hot, cold and bad pixels from the bootstrap bias, dark and flats
(cp_pipe ``MeasureDefectsCombinedTask`` + ``MergeDefectsCombinedTask``)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import UNSET, Option, TaskKind, calib_path, enum, output_path
from cpframe.science.configs import defects as _defects


def _field(key: str) -> str:
    return _defects._ALIASES[key]


#: cp_pipe's defect measure/merge config fields cpframe reads, and those accepted but not implemented
#: (cpframe.execution.lsst_pipeline folds the measure tasks and the merge into one defects task).
LSST_FIELDS = {k: k for k in (
    "thresholdType", "darkCurrentThreshold", "biasThreshold", "fracThresholdFlat", "nSigmaBright", "nSigmaDark",
    "nPixBorderLeftRight", "nPixBorderUpDown", "edgesAsDefects", "badOnAndOffPixelColumnThreshold",
    "goodPixelColumnGapThreshold", "badPixelsToFillColumnThreshold", "saturatedPixelsToFillColumnThreshold",
    "saturatedColumnDilationRadius", "combinationMode", "combinationFraction", "fitAmpGradient")}
LSST_IGNORED = ("doVampirePixels", "vampirePixels*")


class Defects(TaskKind):
    name = "defects"
    summary = "Defects of one detector from its bootstrap bias, dark and flats (+ manual defects)."
    dimensions = (frozenset({"detector"}),)
    config_class = _defects.DefectsConfig
    settings_key = "defects"
    folded_classes = MappingProxyType({
        "lsst.cp.pipe.MeasureDefectsCombinedTask": "measure",
        "lsst.cp.pipe.MeasureDefectsCombinedWithFilterTask": "measure",
        "lsst.cp.pipe.MeasureDefectsTask": "measure",
        "lsst.cp.pipe.MergeDefectsCombinedTask": "merge",
        "lsst.cp.pipe.MergeDefectsTask": "merge",
    })
    options = MappingProxyType({
        "thresholdType": Option(enum(*_defects.THRESHOLD_TYPES), None, UNSET,
                                doc="sets all three image types; unset: bias VALUE, dark STDEV, flat STDEV"),
        **{k: Option(t, _field(k)) for k, t in (
            ("darkCurrentThreshold", float), ("biasThreshold", float), ("fracThresholdFlat", float),
            ("nSigmaBright", float), ("nSigmaDark", float), ("nPixBorderLeftRight", int),
            ("nPixBorderUpDown", int), ("edgesAsDefects", bool), ("badOnAndOffPixelColumnThreshold", int),
            ("goodPixelColumnGapThreshold", int), ("badPixelsToFillColumnThreshold", int),
            ("saturatedPixelsToFillColumnThreshold", int), ("saturatedColumnDilationRadius", int),
        )},
        "combinationMode": Option(enum(*_defects.COMBINATION_MODES), _field("combinationMode")),
        "combinationFraction": Option(float, _field("combinationFraction")),
        "fitAmpGradient": Option(bool, _field("fitAmpGradient")),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import cp_defects

        meta = {"instrument": spec.data_id["instrument"], "detector": spec.data_id["detector"]}
        return cp_defects(spec.calib_paths.get("biasBootstrap", []), spec.calib_paths.get("darkBootstrap", []),
                          spec.calib_paths.get("flatBootstrap", []), output_path(spec),
                          config=spec.settings["defects"], manual_defects_path=calib_path(spec, "manual_defects"),
                          meta=meta)
