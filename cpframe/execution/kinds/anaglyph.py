"""The ``combineTwoFlats`` kind: an anaglyph flat, the weighted mix of two gradient-corrected flats of one detector
(cp_pipe ``CalibCombineTwoFlatsByFilterTask``; science and the differences in :mod:`cpframe.science.anaglyph`).

Inputs: the two flats (``flat_blue`` then ``flat_red`` in cpFlatAnaglyph.yaml), in that order.  Output: ``flat``.
"""

from __future__ import annotations

from types import MappingProxyType

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, output_path
from cpframe.science.configs import anaglyph as _an

MSG_INPUTS = ("combineTwoFlats {key}: needs one flat of each input ({types}) for the detector, got {got}; connect "
              "the two gradient-corrected flats.")


class CombineTwoFlats(TaskKind):
    name = "combineTwoFlats"
    summary = "Anaglyph flat: weightOne x the first flat + (1 - weightOne) x the second (one detector)."
    dimensions = (frozenset({"detector", "physical_filter"}),)
    config_class = _an.TwoFlatsConfig
    settings_key = "two_flats"
    task_classes = MappingProxyType({"lsst.cp.pipe.CalibCombineTwoFlatsByFilterTask": ClassMap(
        "combineTwoFlats", ("detector", "physical_filter"),
        (("inputFlatOneHandle", "flat_blue"), ("inputFlatTwoHandle", "flat_red")), ("outputData", "flat"),
        {"weightOne": "weightOne", "noGoodPixelsMask": "noGoodPixelsMask"},
        ("calibrationType", "combine", "subregionSize", "distributionPercentiles"))})
    options = MappingProxyType({
        "weightOne": Option(float, "weight_one", doc="cp_pipe: weightOne"),
        "noGoodPixelsMask": Option("plane", "no_good_pixels_mask", doc="cp_pipe: noGoodPixelsMask"),
    })

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import anaglyph as _an  # the science itself: only where quanta run
        types = list(spec.input_types) or list(groups)
        paths = [[getattr(v, "path", None) for v in groups.get(t, [])] for t in types]
        if len(paths) != 2 or any(len(p) != 1 or not p[0] for p in paths):
            raise UserInputError(MSG_INPUTS.format(key=spec.key, types=", ".join(types),
                                                   got=[len(p) for p in paths]))
        return _an.combine_two_flats_task(paths[0][0], paths[1][0], output_path(spec), spec.settings["two_flats"])
