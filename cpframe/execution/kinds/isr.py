"""The ``isr`` kind: instrument signature removal of one raw (ip_isr ``IsrTaskLSST``).

Its calibrations follow from the ``do*`` switches (spec dependencies.md §1, §7), not from a
list in the pipeline file.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from cpframe.execution.kinds.base import ClassMap, Option, TaskKind, accepted, enum, output_path
from cpframe.science.configs import isr as _isr

#: ip_isr switches cpframe accepts in pipeline files but does not implement (run off; a note says so).
_NOT_IMPLEMENTED = tuple(k for k in ("doCorrectGains", "doDeferredCharge", "doBrighterFatter", "doInterpolate",
                                      "doCalculateStatistics") if k not in _isr._ALIASES)


def _field(key: str) -> str:
    return _isr._ALIASES[key]


# -- the real ip_isr classes (cpframe.execution.lsst_pipeline reads them) --
# ip_isr IsrTaskLSSTConfig defaults for the switches cpframe reads (ip_isr d2a69bf).
_ISR_LSST_DEFAULTS = {
    "doBootstrap": False, "doAssembleCcd": True, "doBias": True, "doDeferredCharge": True, "doLinearize": True,
    "doCorrectGains": True, "doApplyGains": True, "useGainsFrom": "PTC", "doVariance": True, "doSaturation": True,
    "defaultSaturationSource": "PTCTURNOFF", "doSuspect": True, "doCrosstalk": True, "doDefect": True,
    "doNanMasking": True, "doInterpolate": True, "doBrighterFatter": True, "doDark": True, "doFlat": True,
    "doStandardStatistics": True, "doCalculateStatistics": True, "crosstalk.doQuadraticCrosstalkCorrection": False,
}
_ISR_FIELDS = {k: k for k in (
    "doBootstrap", "doOverscan", "doAssembleCcd", "doSaturation", "doSuspect", "defaultSaturationSource",
    "doApplyGains", "useGainsFrom", "doCorrectGains", "doCrosstalk", "doLinearize", "doDeferredCharge", "doBias",
    "doDark", "doDefect", "doFlat", "doBrighterFatter", "doNanMasking", "doVariance", "doInterpolate",
    "doStandardStatistics", "doCalculateStatistics", "doIlluminationCorrection", "doFringe")}
for _k in ("filters", "small", "large", "iterations", "clip"):  # legacy IsrTask's FringeTask (cpframe/science/fringe.py)
    _ISR_FIELDS[f"fringe.{_k}"] = f"fringe{_k.title()}"
_ISR_FIELDS["crosstalk.doQuadraticCrosstalkCorrection"] = "doQuadraticCrosstalkCorrection"
_ISR_FIELDS["doQuadraticCrosstalkCorrection"] = "doQuadraticCrosstalkCorrection"
_ISR_FIELDS["isrStats.doCtiStatistics"] = "doCtiStatistics"  # the EPER statistics cpCti reads
_ISR_IGNORED = (
    "bssVoltageMinimum", "doCheckUnprocessableData", "doDiffNonLinearCorrection", "serialOverscanMedianShiftSigmaThreshold",
    "ampNoiseThreshold", "expectWcs", "doE2VEdgeBleedMask", "doITLSatSagMask", "doITLEdgeBleedMask", "doITLDipMask",
    "badAmps", "doWidenSaturationTrails", "maskNegativeVariance", "doSaveInterpPixels", "doSetBadRegions",
    "doAmpOffset", "ampOffset.*", "doBinnedExposures", "binFactor1", "binFactor2", "isrStats.*", "fringe.*",
    "doStrayLight", "doWrite", "growSaturationFootprintSize", "doSaturationInterpolation", "doHeaderProvenance",
    "doRaiseOnCalibMismatch")
_ISR_EXTRA = ("bias", "dark", "flat", "defects", "crosstalk", "linearizer", "ptc", "deferredChargeCalib", "bfKernel",
              "outputBin1Exposure", "outputBin2Exposure", "outputStatistics", "camera", "gainCorrection")
_ISR = ClassMap("isr", ("exposure", "detector"), (("ccdExposure", "raw"),), ("outputExposure", "postISRCCD"),
                _ISR_FIELDS, _ISR_IGNORED, _ISR_LSST_DEFAULTS, extra_connections=_ISR_EXTRA)


class Isr(TaskKind):
    name = "isr"
    summary = "ISR of one raw exposure x detector -> an ISR intermediate (fits-masked)."
    dimensions = (frozenset({"exposure", "detector"}),)
    config_class = _isr.IsrConfig
    settings_key = "isr"
    reads_raw = True
    task_classes = MappingProxyType({
        "lsst.ip.isr.IsrTaskLSST": _ISR,
        "lsst.ip.isr.IsrTask": _ISR,
    })
    options = MappingProxyType({
        "doBootstrap": Option(bool, _field("doBootstrap"), doc="no PTC: gain 1, output in adu"),
        "doOverscan": Option(bool, _field("doOverscan")),
        "overscanFitType": Option(enum(*_isr.OVERSCAN_FIT_TYPES), _field("overscanFitType")),
        "doParallelOverscan": Option(bool, _field("doParallelOverscan")),
        "doAssembleCcd": Option(bool, _field("doAssembleCcd"), doc="always true in cpframe"),
        "integerDitherMode": Option(enum(*_isr.DITHER_MODES), _field("integerDitherMode")),
        "doSaturation": Option(bool, _field("doSaturation")),
        "doSuspect": Option(bool, _field("doSuspect")),
        "defaultSaturationSource": Option(enum(*_isr.SATURATION_SOURCES), _field("defaultSaturationSource")),
        "doApplyGains": Option(bool, _field("doApplyGains"), doc="output in electrons"),
        "useGainsFrom": Option(enum("PTC", "LINEARIZER"), _field("useGainsFrom"), doc="only PTC is implemented"),
        "doCorrectGains": Option(bool, _field("doCorrectGains"),
                                 doc="optional input: PTC gains x gain_correction; off when none is found"),
        "doCrosstalk": Option(bool, _field("doCrosstalk"), doc="optional input: off when no crosstalk is found"),
        "doQuadraticCrosstalkCorrection": Option(bool, _field("doQuadraticCrosstalkCorrection")),
        "doLinearize": Option(bool, _field("doLinearize"), doc="optional input: off when no linearizer is found"),
        "doBias": Option(bool, _field("doBias")),
        "doDark": Option(bool, _field("doDark")),
        "doDefect": Option(bool, _field("doDefect")),
        "doFlat": Option(bool, _field("doFlat")),
        "doIlluminationCorrection": Option(bool, _field("doIlluminationCorrection"),
                                           doc="divide by the illuminationCorrection after the flat"),
        "doFringe": Option(bool, _field("doFringe"), doc="optional input: fit and subtract the fringe after the flat"),
        "fringeFilters": Option("strings", _field("fringeFilters"),
                                doc="physical filters or bands to defringe (ip_isr fringe.filters)"),
        "fringeSmall": Option(int, _field("fringeSmall")),
        "fringeLarge": Option(int, _field("fringeLarge")),
        "fringeIterations": Option(int, _field("fringeIterations")),
        "fringeClip": Option(float, _field("fringeClip")),
        "doNanMasking": Option(bool, _field("doNanMasking")),
        "doVariance": Option(bool, _field("doVariance")),
        "doStandardStatistics": Option(bool, _field("doStandardStatistics")),
        **{k: Option(bool, _field(k), doc="optional input: off when no cti is found")
           for k in ("doDeferredCharge",) if k in _isr._ALIASES},
        "doCtiStatistics": Option(bool, _field("doCtiStatistics"), doc="overscan statistics for cpCti"),
        **{k: Option(bool, _field(k), doc="optional input: off when no bfk is found")
           for k in ("doBrighterFatter",) if k in _isr._ALIASES},
        **{k: Option(t, _field(k)) for k, t in (
            ("brighterFatterCorrectionMethod", enum("COULTON18", "ASTIER23")), ("brighterFatterLevel", enum("DETECTOR")),
            ("brighterFatterMaxIter", int), ("brighterFatterThreshold", float)) if k in _isr._ALIASES},
        **{k: Option(bool, None, False, doc="not implemented by cpframe; accepted when false")
           for k in _NOT_IMPLEMENTED},
    })

    @classmethod
    def calibrations(cls, config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Calibrations an ISR task reads, from its switches (spec dependencies.md §1, §7).

        With ``doBootstrap`` the bias/dark/flat inputs are the bootstrap products.  Linearizer,
        CTI, crosstalk and BFK are optional (applied when found), except a linearizer used as
        the source of gains.

        >>> Isr.calibrations(Isr.filled({"doApplyGains": True}))
        (('ptc',), ())
        >>> Isr.calibrations(Isr.filled({"doBootstrap": True, "doBias": True}))
        (('biasBootstrap',), ())
        """
        c = config
        boot = bool(c["doBootstrap"])
        gains_from_lin = bool(c["doApplyGains"]) and c["useGainsFrom"] == "LINEARIZER"
        req: list[str] = []
        opt: list[str] = []
        if not boot and not gains_from_lin:
            req.append("ptc")
        if gains_from_lin:
            req.append("linearizer")
        elif c["doLinearize"]:
            opt.append("linearizer")
        for flag, name in (("doBias", "bias"), ("doDark", "dark"), ("doFlat", "flat")):
            if c[flag]:
                req.append(f"{name}Bootstrap" if boot else name)
        if c["doDefect"]:
            req.append("defects")
        if c.get("doIlluminationCorrection"):
            req.append("illuminationCorrection")
        bf = "electroBfDistortionMatrix" if c.get("brighterFatterCorrectionMethod") == "ASTIER23" else "bfk"
        for flag, name in (("doCrosstalk", "crosstalk"), ("doDeferredCharge", "cti"), ("doBrighterFatter", bf)):
            if c[flag]:
                opt.append(name)
        if c.get("doFringe"):
            opt.append("fringe")
        if c.get("doCorrectGains") and not boot and not gains_from_lin:
            opt.append("gain_correction")
        return tuple(req), tuple(opt)

    @classmethod
    def plan(cls, task, settings, explicit):
        keep, notes = accepted(task.label, dict(task.config), _isr.IsrConfig.from_dict, explicit)
        # renamed calibration inputs (cp_verify's connections.flat=flat_<LED_NAME>): dataset type -> connection
        renamed = {dt: conn for conn, dt in getattr(task, "calibration_connections", ())}
        return ({"isr": keep, "renamed": renamed} if renamed else {"isr": keep}), notes

    @classmethod
    def for_quantum(cls, shared, found):
        """Optional steps whose calibration was not found for this quantum are switched off."""
        cfg = dict(shared["isr"])
        bf = "electroBfDistortionMatrix" if cfg.get("brighterFatterCorrectionMethod") == "ASTIER23" else "bfk"
        for flag, calib in (("doCrosstalk", "crosstalk"), ("doLinearize", "linearizer"), ("doDeferredCharge", "cti"),
                            ("doBrighterFatter", bf), ("doCorrectGains", "gain_correction"), ("doFringe", "fringe")):
            if cfg.get(flag) and calib not in found:
                cfg[flag] = False
                if flag == "doCrosstalk":
                    cfg.pop("doQuadraticCrosstalkCorrection", None)
        return {**shared, "isr": _isr.IsrConfig.from_dict(cfg)}

    @classmethod
    def run(cls, spec, groups):
        from cpframe.science.tasks import isr_task

        return isr_task(spec.raw_path, output_path(spec), spec.settings["isr"],
                        isr_calibs(spec.calib_paths, spec.settings.get("renamed")), detector=spec.data_id["detector"])


def isr_calibs(calib_paths: Mapping[str, Any], renamed: Mapping[str, str] | None = None) -> dict[str, str]:
    """The calibrations an ISR quantum applies, as :func:`cpframe.science.tasks.isr_task` names them, from its
    calibration type -> paths (also used by a verifyStats quantum that runs its ISR in memory).

    Bootstrap products are applied as the ISR's bias/dark/flat (spec algorithms.md §7).

    >>> isr_calibs({"biasBootstrap": ["/b.fits"], "illuminationCorrection": ["/i.fits"], "manual_defects": ["/m"]})
    {'bias': '/b.fits', 'illumination': '/i.fits'}
    """
    renamed = renamed or {}
    calibs = {renamed.get(c, c).removesuffix("Bootstrap"): str(paths[0]) for c, paths in calib_paths.items()
              if paths and c != "manual_defects"}
    if "illuminationCorrection" in calibs:
        calibs["illumination"] = calibs.pop("illuminationCorrection")
    if "electroBfDistortionMatrix" in calibs:
        calibs["electro_bf"] = calibs.pop("electroBfDistortionMatrix")
    return calibs
