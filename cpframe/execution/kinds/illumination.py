"""The ``starMeasure`` and ``illuminationSolve`` kinds: the illumination correction from repeated star
photometry (cp_pipe ``cpIlluminationCorrection``; cp_verify ``verifyIlluminationCorrection``).

cp_pipe runs ``CalibrateImageTask`` (stars per exposure x detector), source-table transforms,
isolated-star association and FGCM (build, fit cycle, output).  cpframe runs ``starMeasure`` on each
ISR image and one ``illuminationSolve`` per detector x physical filter; the table, association
and FGCM build steps are folded into the solve (``chained_classes``: consumers of their output read
their input), and ``FgcmOutputIlluminationCorrectionTask`` names the solve's product.  Science
and differences: :mod:`cpframe.science.illumination`, docs/illumination.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, accepted, calib_path, output_path
from cpframe.science.configs import illumination as _il

#: Dataset type of the product (fgcmcal ``illumination_corrections`` connection).
PRODUCT = "illuminationCorrection"

# CalibrateImageTask: the star measurement (do_illumination_correction is cp_verify's switch)
_CALIBRATE = ClassMap(
    "starMeasure", ("exposure", "detector"), (("exposures", "post_isr_image"),),
    ("stars", "single_visit_star_unstandardized"),
    {"do_illumination_correction": "doIlluminationCorrection"},
    ("do_calibrate_pixels", "psf_*", "star_*", "astrometry*", "photometry*", "do_*", "run_sattle",
     "useButlerCamera", "background_flat*"),
    extra_connections=("initial_stars_schema", "stars_footprints", "exposure", "background", "psf_stars",
                       "psf_stars_footprints", "astrometry_matches", "photometry_matches", "applied_photo_calib",
                       "mask", "illumination_correction", "background_flat", "summary_stats"))
# CharacterizeImageTask (cp_verify verifyBfk): the same star measurement, with adaptive second moments (sizes)
_CHARACTERIZE = ClassMap(
    "starMeasure", ("exposure", "detector"), (("exposure", "postISRCCD"),), ("sourceCat", "icSrc"), {},
    ("do*", "psf*", "measurement*", "detection*", "background*", "repair*", "deblend*", "measurePsf*",
     "measureApCorr*", "applyApCorr*", "catalogCalculation*", "normalizedCalibrationFlux*", "useSimplePsf",
     "checkUnitsParseStrict", "maxUnNormPsfEllipticity*", "refObjLoader*", "ref_match*", "installSimplePsf*"),
    extra_connections=("characterized", "backgroundModel", "outputSchema"))
# FgcmFitCycleTask: the super-star fit (its input is the associated stars; FGCM's own products are not made)
_FIT = ClassMap(
    "illuminationSolve", ("detector", "physical_filter"), (("fgcm_star_observations", "fgcm_star_observations"),),
    ("fgcm_fit_parameters", "fgcm_Cycle5_Parameters"),
    {"superStarSubCcdChebyshevOrder": "superStarSubCcdChebyshevOrder",
     "superStarForceZeroMean": "superStarForceZeroMean"},
    # FGCM's cycle and atmosphere settings: accepted, listed in the plan's notes, not implemented
    ("doMultipleCycles", "multipleCyclesFinalCycleNumber", "cycleNumber", "maxIterBeforeFinalCycle", "outfileBase",
     "bands", "fitBands", "requiredBands", "physicalFilterMap", "superStarSubCcdTriangular", "superStarSigmaClip",
     "superStarPlotCcdResiduals", "nCore", "doPlots", "focalPlaneSigmaClip", "instrumentParsPerBand",
     "approxThroughputs", "expGrayPhotometricCutDict", "expGrayHighCutDict", "aperCorrFitNBins",
     "sedboundaryterms", "sedterms", "starColorCuts", "colorSplitBands", "refStarColorCuts"),
    extra_connections=("cycleNumber", "fgcm_lookup_table", "fgcm_visit_catalog", "fgcm_star_ids",
                       "fgcm_reference_stars", "fgcm_flagged_stars", "fgcm_fit_parameters_input"))

#: Classes folded into the solve: (input connection, its default, output connection, its default, how).
#: ``input``: whoever reads the output reads the input instead; ``output``: the producer of the input
#: writes the output's name (the product's dataset type).
CHAIN = {
    "lsst.pipe.tasks.postprocess.TransformSourceTableTask":
        ("inputCatalog", "single_visit_star_unstandardized", "outputCatalog", "single_visit_star_detector", "input"),
    "lsst.pipe.tasks.postprocess.ConsolidateSourceTableTask":
        ("inputCatalogs", "single_visit_star_detector", "outputCatalog", "single_visit_star", "input"),
    "lsst.pipe.tasks.postprocess.ConsolidateVisitSummaryTask":
        ("calexp", "preliminary_visit_image", "visitSummary", "preliminary_visit_summary", "input"),
    "lsst.pipe.tasks.isolatedStarAssociation.IsolatedStarAssociationTask":
        ("source_table_visit", "single_visit_star", "isolated_star_cat", "isolated_star_association", "input"),
    "lsst.fgcmcal.fgcmBuildFromIsolatedStars.FgcmBuildFromIsolatedStarsTask":
        ("isolated_star_cats", "isolated_star_association", "fgcm_star_observations", "fgcm_star_observations",
         "input"),
    "lsst.fgcmcal.fgcmOutputIlluminationCorrection.FgcmOutputIlluminationCorrectionTask":
        ("fgcm_fit_parameters", "fgcm_Cycle5_Parameters", "illumination_corrections", PRODUCT, "output"),
}


@dataclass(frozen=True)
class StarResult:
    """What a ``starMeasure`` quantum passes to the solve."""

    path: str
    exposure_id: int
    n_stars: int


@dataclass(frozen=True)
class SolveResult:
    """What an ``illuminationSolve`` quantum passes on (verification reads ``path``)."""

    path: str
    n_stars: int
    rms_deviation: float
    success: bool | None


class StarMeasure(TaskKind):
    name = "starMeasure"
    summary = ("Isolated stars, their aperture fluxes and adaptive sizes on one ISR image (CalibrateImageTask's / "
               "CharacterizeImageTask's stars).")
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = _il.IlluminationConfig
    settings_key = "illumination"
    task_classes = MappingProxyType({"lsst.pipe.tasks.calibrateImage.CalibrateImageTask": _CALIBRATE,
                                     "lsst.pipe.tasks.characterizeImage.CharacterizeImageTask": _CHARACTERIZE})
    options = MappingProxyType({
        "doIlluminationCorrection": Option(bool, "do_illumination_correction",
                                             doc="divide by the illuminationCorrection found first (cp_verify)"),
        "detectionThreshold": Option(float, "detection_threshold"),
        "apertureRadius": Option(float, "aperture_radius"),
    })

    @classmethod
    def calibrations(cls, config):
        return (PRODUCT,) if config.get("doIlluminationCorrection") else (), ()

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import illumination as _il  # the science itself: only where quanta run
        from cpframe.science.imageio import read_masked

        src = next(iter(groups.values()))[0]
        img = read_masked(src.path)
        cfg = spec.settings["illumination"]
        corr = None
        if cfg.do_illumination_correction:
            corr = read_masked(calib_path(spec, PRODUCT)).image.astype("float64")
        cat = _il.measure_stars(img, cfg, exposure=int(spec.data_id.get("exposure", 0)),
                                detector=int(spec.data_id["detector"]),
                                physical_filter=str(img.header.get("FILTER", "")), correction=corr)
        path = _il.write_catalog(output_path(spec), cat)
        return StarResult(path, int(spec.data_id.get("exposure", 0)), len(cat.x))


class IlluminationSolve(TaskKind):
    name = "illuminationSolve"
    summary = "Super-star flat of one detector x filter from its stars on dithered exposures -> illuminationCorrection."
    dimensions = (frozenset({"detector", "physical_filter"}),)
    config_class = _il.IlluminationConfig
    settings_key = "illumination"
    task_classes = MappingProxyType({"lsst.fgcmcal.fgcmFitCycle.FgcmFitCycleTask": _FIT})
    folded_classes = MappingProxyType({c: "chain" for c in CHAIN})
    options = MappingProxyType({
        "superStarSubCcdChebyshevOrder": Option(int, "chebyshev_order"),
        "superStarForceZeroMean": Option(bool, "force_zero_mean"),
        "fitExposureZeroPoints": Option(bool, "fit_exposure_zero_points"),
        "matchRadius": Option(float, "match_radius"),
        "verifyMaxDeviation": Option(float, "verify_max_deviation",
                                     doc="verification product: largest |c - 1| after correction"),
    })

    @classmethod
    def plan(cls, task, settings, explicit):
        keep, notes = accepted(task.label, dict(task.config), _il.IlluminationConfig.from_dict, explicit)
        # the verification product (cp_verify writes verifyIlluminationCorrection) carries a verdict
        return {"illumination": _il.IlluminationConfig.from_dict(keep),
                "verify": task.output != PRODUCT and task.output.startswith("verify")}, notes

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science import illumination as _il  # the science itself: only where quanta run
        stars = sorted(next(iter(groups.values())), key=lambda s: s.exposure_id)
        meta: dict[str, Any] = {"FILTER": str(spec.data_id.get("physical_filter", ""))}
        for i, s in enumerate(stars):
            meta[f"CPP_INPUT_{i}"] = s.exposure_id
        res = _il.illumination_task([s.path for s in stars], output_path(spec), spec.settings["illumination"],
                                    meta=meta, verify=bool(spec.settings.get("verify")))
        return SolveResult(res["path"], res["n_stars"], res["rms_deviation"], res["success"])
