"""The verification kinds: ``verifyStats`` (statistics of one exposure or calibration) and
``verifyMerge`` (per exposure, then per run: the test results; cp_verify)."""

from __future__ import annotations

from types import MappingProxyType

from cpframe.execution.kinds.base import (
    ClassMap, Option, TaskKind, calib_path, detector_of, detector_of_header, enum, output_path,
)
from cpframe.science.configs.verify import VerifyConfig

STAGES = ("BIAS", "DARK", "FLAT", "DEFECTS", "PTC", "SCIENCE", "LINEARITY", "CROSSTALK", "CTI", "BFK", "GAIN_CORRECTION",
          "FLAT_GRADIENT", "ILLUMINATION",
          "BFK_STARS", "SKY", "FRINGE", "ELECTROSTATIC_BF", "FLAT_ANAGLYPH",
          "FLAT_SINGLE_LED")


# -- the real cp_verify classes (cpframe.execution.lsst_pipeline reads them) --
_VERIFY_IGNORED = ("doVignette", "useReadNoise", "useIsrStatistics", "hasMatrixCatalog", "hasInputResults",
                   "catalogStatKeywords", "mergeDimension", "stageName")


def _verify(kind: str, stage: str | None, dims: tuple[str, ...], inputs, output, optional=()) -> ClassMap:
    return ClassMap(kind, dims, inputs, output, {}, _VERIFY_IGNORED, fixed={"stage": stage} if stage else {},
                    extra_connections=("outputResults", "outputMatrix", "inputResults", "inputMatrix", "camera"),
                    optional_inputs=optional)


_DET = ("exposure", "detector")


class VerifyStats(TaskKind):
    name = "verifyStats"
    summary = "Verification statistics of one exposure x detector, or of one calibration per detector."
    # detector x physical_filter: a per-filter product of the run (verifyIlluminationCorrection)
    dimensions = (frozenset({"exposure", "detector"}), frozenset({"detector"}), frozenset({"detector", "physical_filter"}))
    config_class = VerifyConfig
    settings_key = "verify"
    registers_all_outputs = True
    task_classes = MappingProxyType({
        "lsst.cp.verify.CpVerifyBiasTask": _verify("verifyStats", "BIAS", _DET, (("inputExp", "postISRCCD"),),
                                               ("outputStats", "verifyBiasDetStats")),
        "lsst.cp.verify.CpVerifyDarkTask": _verify("verifyStats", "DARK", _DET, (("inputExp", "postISRCCD"),),
                                               ("outputStats", "verifyDarkDetStats")),
        "lsst.cp.verify.CpVerifyFlatTask": _verify("verifyStats", "FLAT", _DET, (("inputExp", "postISRCCD"),),
                                               ("outputStats", "verifyFlatDetStats")),
        "lsst.cp.verify.CpVerifyDefectsTask": _verify(
        "verifyStats", "DEFECTS", _DET, (("inputExp", "postISRCCD"), ("uncorrectedExp", "uncorrectedExp")),
        ("outputStats", "verifyDefectsDetStats"), optional=("uncorrectedExp",)),
        "lsst.cp.verify.CpVerifyPtcTask": _verify("verifyStats", "PTC", ("detector",), (("inputCalib", "ptc"),),
                                              ("outputStats", "verifyPtcDetStats")),
        # star sizes with and without the kernel (cpframe/verify/bfk_stars.py); the characterized image is not read
        "lsst.cp.verify.CpVerifyBfkTask": ClassMap(
            "verifyStats", _DET, (("inputCatalog", "icSrc"), ("uncorrectedCatalog", "uncorrectedSrc")),
            ("outputStats", "detectorStats"), {}, (*_VERIFY_IGNORED, "matchRadiusPix"),
            fixed={"stage": "BFK_STARS"}, extra_connections=("outputResults", "outputMatrix", "inputExp", "camera")),
        "lsst.cp.verify.CpVerifyLinearityTask": _verify(
        "verifyStats", "LINEARITY", ("detector",), (("inputCalib", "calib"),), ("outputStats", "verifyLinearityDetStats")),
    })
    options = MappingProxyType({
        "stage": Option(enum(*STAGES), required=True),
        "settings": Option("mapping", None, MappingProxyType({}),
                           doc="VerifyConfig field overrides (docs/verification.md)"),
        # the ISR quanta (of one raw) a quantum alone reads run in it, in memory, without ISR files
        # (execution/graph_fusion.py verify_fusion; docs/verification.md "Fused ISR")
        "fuseIsr": Option(bool, None, True, doc="run the ISR quanta it alone reads in memory, without ISR files"),
    })

    @classmethod
    def required_example(cls):
        return {"stage": "BIAS"}

    @classmethod
    def plan(cls, task, settings, explicit):
        cfg = task.config
        return {"stage": cfg["stage"], "verify": VerifyConfig.from_mapping(dict(cfg.get("settings") or {})),
                "fuse_isr": bool(cfg.get("fuseIsr", True))}, []

    @classmethod
    def run(cls, spec, groups):
        from cpframe.verify import get_stage, verify_calib, verify_exposure, write_stats

        stage = spec.settings["stage"]
        if get_stage(stage).kind == "calib":
            path = calib_path(spec, get_stage(stage).dataset_type)
            others: list[str] = []
            if path is None:  # a product of this pipeline (residual crosstalk) rather than a calibration
                found = [p for values in groups.values() for p in (getattr(v, "path", None) for v in values) if p]
                path, others = found[0], found[1:]
            extra = {"uncorrected": others[0]} if others else {}  # BFK, ELECTROSTATIC_BF: the PTC without it
            stats = verify_calib(stage, path, detector_of(path, spec.data_id["detector"]), spec.settings["verify"],
                                 data_id=dict(spec.data_id), **extra)
        elif stage == "BFK_STARS":  # two star catalogues (with and without the kernel), not an image
            from cpframe.verify.bfk_stars import verify_star_sizes

            cats = [v.path for values in groups.values() for v in values]
            did = {k: spec.data_id[k] for k in ("instrument", "exposure", "physical_filter") if k in spec.data_id}
            stats = verify_star_sizes(cats[0], cats[1], detector_of(cats[0], spec.data_id["detector"]),
                                      spec.settings["verify"], data_id=did)
        else:
            did = {k: spec.data_id[k] for k in ("instrument", "exposure", "physical_filter") if k in spec.data_id}
            if spec.fused_raws:  # the ISR quanta before they were fused away: their raw's ISR, in memory
                residual, uncorrected, preview_of = _fused_residuals(spec)
                det = detector_of_header(preview_of.header, spec.data_id["detector"])
            else:
                images = [v for values in groups.values() for v in values]
                det = detector_of(images[0].path, spec.data_id["detector"])
                residual = preview_of = images[0].path
                uncorrected = images[1].path if len(images) > 1 else None
            stats = verify_exposure(stage, residual, det, spec.settings["verify"], uncorrected_path=uncorrected,
                                    data_id=did)
            if len(spec.outputs) > 1:  # verify<Type>Preview: what the report draws of this exposure
                from cpframe.verify.preview import write_preview

                write_preview(preview_of, output_path(spec, 1))
        write_stats(stats, output_path(spec))
        return stats


def _fused_residuals(spec):
    """(residual under test, uncorrected residual or None, ISR image under test) of a fused verifyStats quantum:
    the images its ISR quanta would write, made in memory and read as from their files
    (:func:`cpframe.verify.stats.residual_in_memory`).  verifyDefects' second ISR image (without the defects, the
    ``uncorrected_path`` of :func:`cpframe.verify.verify_exposure`) is made first and kept without its
    variance plane, which stage DEFECTS does not read, so that one ISR image at a time is in memory.  The image
    under test is returned with the residual's planes: float64 / int64 copies of its float32 / int32 planes, which
    the preview reads back exactly, so that its own planes are not kept beside the residual while it is measured."""
    from dataclasses import replace

    from cpframe.verify.stats import residual_in_memory

    uncorrected = None
    if len(spec.fused_keys) > 1:
        uncorrected = residual_in_memory(_fused_isr_image(spec, 1), spec.fused_keys[1], variance=False)
    image = _fused_isr_image(spec, 0)
    residual = residual_in_memory(image, spec.fused_keys[0])
    return residual, uncorrected, replace(image, image=residual.image, mask=residual.mask, variance=residual.variance)


def _fused_isr_image(spec, i: int = 0):
    """The ISR image of the ``i``-th ISR quantum fused into a verifyStats quantum, made in memory as that ISR
    quantum would write it (:func:`cpframe.science.tasks.isr_image`: same settings, calibrations and detector
    check)."""
    from cpframe.science.tasks import isr_image

    try:
        _, image, _ = isr_image(spec.fused_raws[i], spec.fused_isrs[i], spec.fused_calibs[i],
                                detector=spec.data_id["detector"])
    except Exception as err:  # name the ISR quantum whose work failed, as the unfused graph would
        err.add_note(f"in ISR quantum {spec.fused_keys[i]}, fused into {spec.key} (fuseIsr: false keeps it apart)")
        raise
    return image


class VerifyMerge(TaskKind):
    name = "verifyMerge"
    summary = "Merge verification statistics per exposure, then per run into results + summary."
    dimensions = (frozenset({"exposure"}), frozenset())
    settings_key = "stage"
    registers_all_outputs = True
    task_classes = MappingProxyType({
        "lsst.cp.verify.CpVerifyExpMergeTask": _verify("verifyMerge", None, ("exposure",), (("inputStats", "detStats"),),
                                                   ("outputStats", "expStats")),
        "lsst.cp.verify.CpVerifyFlatExpMergeTask": _verify("verifyMerge", None, ("exposure",),
                                                       (("inputStats", "detStats"),), ("outputStats", "expStats")),
        "lsst.cp.verify.CpVerifyVisitExpMergeTask": _verify("verifyMerge", None, ("exposure",),
                                                        (("inputStats", "detStats"),), ("outputStats", "expStats")),
        "lsst.cp.verify.CpVerifyRunMergeTask": _verify("verifyMerge", None, (), (("inputStats", "expStats"),),
                                                   ("outputResults", "runResults")),
        "lsst.cp.verify.CpVerifyRunMergeByFilterTask": _verify("verifyMerge", None, (), (("inputStats", "expStats"),),
                                                           ("outputResults", "runResults")),
        "lsst.cp.verify.CpVerifyVisitRunMergeTask": _verify("verifyMerge", None, (), (("inputStats", "expStats"),),
                                                        ("outputResults", "runResults")),
        "lsst.cp.verify.CpVerifyCalibMergeTask": _verify("verifyMerge", None, (), (("inputStats", "detStats"),),
                                                     ("outputResults", "runResults")),
    })
    options = MappingProxyType({"stage": Option(enum(*STAGES), required=True)})

    @classmethod
    def required_example(cls):
        return {"stage": "BIAS"}

    @classmethod
    def direct_config(cls):
        return "BIAS"

    @classmethod
    def plan(cls, task, settings, explicit):
        return {"stage": task.config["stage"]}, []

    @classmethod
    def run(cls, spec, groups):
        from cpframe.verify import get_stage, merge_calibs, merge_exposure, merge_run, write_results, write_stats

        stage = spec.settings["stage"]
        if "exposure" in spec.data_id:
            merged = merge_exposure(stage, next(iter(groups.values())))
            write_stats(merged, output_path(spec))
            return merged
        if get_stage(stage).kind == "calib":
            table, summary = merge_calibs(stage, next(iter(groups.values())))
        else:
            values = list(groups.values())  # inputs: detector stats, then exposure merges
            table, summary = merge_run(stage, values[-1], detector_stats=values[0] if len(values) > 1 else None)
        write_results(table, output_path(spec, 0))
        if len(spec.outputs) > 1:
            write_stats(summary, output_path(spec, 1))
        return summary
