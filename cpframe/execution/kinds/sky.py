"""The sky-frame kinds ``skyImage``, ``skyScaleMeasure``, ``skySubtractBackground`` and ``skyCombine``
(cp_pipe ``cpSky``: ``CpSkyImageTask``, ``CpSkyScaleMeasureTask``, ``CpSkySubtractBackgroundTask``,
``CpSkyCombineTask``), one kind per cp_pipe task with the same connections.

The exposure's scale travels inside the ``cpSkyExpBackground`` product (``cpSkyExpScale`` is written
too, for a reader that wants it alone); the alternate-type background is part of that product
(``includeAlternateBackground``), and the combine reads the residual backgrounds only (the masked
images' headers reach it through them).  Science and differences: :mod:`cpframe.science.sky`, docs/sky.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cpframe.core.errors import UserInputError
from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, output_path
from cpframe.science.configs import sky as _sky

#: Dataset type of the product.
PRODUCT = "sky"

_CARDS = ("INSTRUME", "DETECTOR", "DETNAME", "CAMSCALE", "FILTER")

_IMAGE = ClassMap(
    "skyImage", ("exposure", "detector"), (("inputExp", "cpSkyIsrExp"),), ("maskedExp", "cpSkyMaskedIsrExp"),
    {"maskThresh": "maskThresh", "maskList": "maskList", "largeScaleBackground.xSize": "largeScaleBackground.xSize",
     "largeScaleBackground.ySize": "largeScaleBackground.ySize"},
    ("maskTask.*", "largeScaleBackground.*"), extra_connections=("camera",),
    extra_outputs=(("maskedBkg", "cpSkyDetectorBackground"),))
_SCALE = ClassMap(
    "skyScaleMeasure", ("exposure",), (("inputBkgs", "cpSkyDetectorBackground"),), ("outputBkg", "cpSkyExpBackground"),
    {"includeAlternateBackground": "includeAlternateBackground"}, (),
    extra_connections=("camera", "outputBkgAlternate"), extra_outputs=(("outputScale", "cpSkyExpScale"),))
_SKY_FIELDS = {k: k for k in ("sky.background.xBinSize", "sky.background.yBinSize", "sky.skyIter", "sky.skyRej")}
_SUBTRACT = ClassMap(
    "skySubtractBackground", ("exposure", "detector"),
    (("inputExp", "cpSkyMaskedIsrExp"), ("inputBkg", "cpSkyExpBackground")),
    ("outputBkg", "cpSkyExpResidualBackground"), {**_SKY_FIELDS, "includeAlternateBackground": "includeAlternateBackground"},
    ("sky.*",), extra_connections=("inputScale", "inputBkgAlternate"))
_COMBINE = ClassMap(
    "skyCombine", ("detector", "physical_filter"), (("inputBkgs", "cpSkyExpResidualBackground"),),
    ("outputCalib", PRODUCT), dict(_SKY_FIELDS), ("sky.*",), extra_connections=("inputExpHandles",))


@dataclass(frozen=True)
class SkyImageResult:
    """What a ``skyImage`` quantum passes on: the masked image and the detector's superpixels."""

    path: str
    background: dict
    meta: dict


@dataclass(frozen=True)
class ScaleResult:
    """What a ``skyScaleMeasure`` quantum passes on (one exposure's focal-plane background and scale)."""

    path: str
    background: dict


@dataclass(frozen=True)
class ResidualResult:
    """What a ``skySubtractBackground`` quantum passes on."""

    path: str
    residual: dict
    exposure_id: int
    meta: dict


@dataclass(frozen=True)
class SkyResult:
    """What a ``skyCombine`` quantum passes on."""

    path: str
    n_exposures: int
    noise: float
    rms: float


_OPTIONS = {
    "maskThresh": Option(float, "mask_thresh"),
    "maskList": Option("planes", "mask_list"),
    "largeScaleBackground.xSize": Option(float, "x_size_mm", doc="superpixel width, mm"),
    "largeScaleBackground.ySize": Option(float, "y_size_mm", doc="superpixel height, mm"),
    "includeAlternateBackground": Option(bool, "include_alternate_background",
                                         doc="one focal-plane background per physical sensor type"),
    "sky.background.xBinSize": Option(int, "x_bin_size"),
    "sky.background.yBinSize": Option(int, "y_bin_size"),
    "sky.skyIter": Option(int, "sky_iter"),
    "sky.skyRej": Option(float, "sky_rej"),
    "verifyMaxNoise": Option(float, "verify_max_noise", doc="product card LSST SKY VERIFY SUCCESS: largest per-bin "
                                                            "standard error, relative to the sky"),
}


def _options(*keys: str) -> MappingProxyType:
    return MappingProxyType({k: _OPTIONS[k] for k in keys})


def _camera_detector(header: dict, detector_id: int):
    from cpframe.camera.models import load_camera

    cam = load_camera(str(header["INSTRUME"]), str(header.get("CAMSCALE", "full")).lower())
    return cam, cam.detector(int(detector_id))


def _first(groups: dict, key: str, what: str, spec) -> list:
    values = groups.get(key) or []
    if not values:
        raise UserInputError(f"{spec.key}: no {what} to read; connect the previous cpSky step's output as {key}.")
    return values


class SkyImage(TaskKind):
    name = "skyImage"
    summary = "Sources masked on one ISR image, and its detector's focal-plane background superpixels."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = _sky.SkyConfig
    settings_key = "sky"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpSkyImageTask": _IMAGE})
    options = _options("maskThresh", "maskList", "largeScaleBackground.xSize", "largeScaleBackground.ySize")

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import sky as _sky  # the science itself: only where quanta run
        from cpframe.core.files import json_ready, write_json
        from cpframe.science.imageio import read_masked, write_masked

        src = next(iter(groups.values()))[0]
        img = read_masked(src.path)
        cam, det = _camera_detector(img.header, spec.data_id["detector"])
        masked, bg = _sky.sky_image(img, cam, det, spec.settings["sky"])
        path = str(write_masked(output_path(spec), masked.image, masked.mask, masked.variance, masked.header))
        if len(spec.outputs) > 1:
            write_json(output_path(spec, 1), json_ready(bg))
        meta = {k: img.header[k] for k in _CARDS if k in img.header}
        return SkyImageResult(path, bg, meta)


class SkyScaleMeasure(TaskKind):
    name = "skyScaleMeasure"
    summary = "One exposure's focal-plane background (a plane in mm over every detector's superpixels) and scale."
    dimensions = (frozenset({"exposure"}),)
    config_class = _sky.SkyConfig
    settings_key = "sky"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpSkyScaleMeasureTask": _SCALE})
    options = _options("includeAlternateBackground")

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import sky as _sky  # the science itself: only where quanta run
        from cpframe.core.files import json_ready, write_json

        values = _first(groups, next(iter(groups), "inputBkgs"), "detector backgrounds", spec)
        res = _sky.scale_measure([v.background for v in values], spec.settings["sky"])
        path = str(write_json(output_path(spec), json_ready(res)))
        if len(spec.outputs) > 1:  # cpSkyExpScale: the scale alone (cp_pipe's PropertyList 'scale')
            scales = sorted(res["backgrounds"].items())
            doc = {"scale": scales[0][1]["scale"]}
            if len(scales) > 1:
                doc.update(detectorType=scales[0][0], scaleAlternate=scales[1][1]["scale"],
                           detectorTypeAlternate=scales[1][0])
            write_json(output_path(spec, 1), json_ready(doc))
        return ScaleResult(path, res)


class SkySubtractBackground(TaskKind):
    name = "skySubtractBackground"
    summary = "One detector's residual background bins after the exposure's focal-plane background, / scale."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = _sky.SkyConfig
    settings_key = "sky"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpSkySubtractBackgroundTask": _SUBTRACT})
    options = _options("sky.background.xBinSize", "sky.background.yBinSize", "sky.skyIter", "sky.skyRej",
                       "includeAlternateBackground")

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import sky as _sky  # the science itself: only where quanta run
        from cpframe.core.files import json_ready, write_json
        from cpframe.science.imageio import read_masked

        images = [v for vs in groups.values() for v in vs if isinstance(v, SkyImageResult)]
        scales = [v for vs in groups.values() for v in vs if isinstance(v, ScaleResult)]
        if not images or not scales:
            raise UserInputError(f"{spec.key}: needs the masked image (cpSkyMaskedIsrExp) and the exposure's "
                                 "background (cpSkyExpBackground) of the previous cpSky steps.")
        img = read_masked(images[0].path)
        cam, det = _camera_detector(img.header, spec.data_id["detector"])
        res = _sky.subtract_background(img, cam, det, scales[0].background, spec.settings["sky"])
        exp = int(spec.data_id.get("exposure", 0))
        path = str(write_json(output_path(spec), json_ready({**res, "exposure": exp, "meta": images[0].meta})))
        return ResidualResult(path, res, exp, images[0].meta)


class SkyCombine(TaskKind):
    name = "skyCombine"
    summary = "Residual backgrounds of one detector x filter averaged over the exposures -> sky (binned)."
    dimensions = (frozenset({"detector", "physical_filter"}),)
    config_class = _sky.SkyConfig
    settings_key = "sky"
    task_classes = MappingProxyType({"lsst.cp.pipe.CpSkyCombineTask": _COMBINE})
    options = _options("sky.skyIter", "sky.skyRej", "verifyMaxNoise")

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import sky as _sky  # the science itself: only where quanta run
        values = sorted((v for vs in groups.values() for v in vs if isinstance(v, ResidualResult)),
                        key=lambda v: v.exposure_id)
        if not values:
            raise UserInputError(f"{spec.key}: no residual backgrounds (cpSkyExpResidualBackground) to combine.")
        header: dict[str, Any] = dict(values[0].meta)
        header["FILTER"] = str(spec.data_id.get("physical_filter", header.get("FILTER", "")))
        for i, v in enumerate(values):
            header[f"CPP_INPUT_{i}"] = v.exposure_id
        res = _sky.combine_sky([v.residual for v in values], output_path(spec), spec.settings["sky"], header)
        return SkyResult(res["path"], res["n_exposures"], res["noise"], res["rms"])
