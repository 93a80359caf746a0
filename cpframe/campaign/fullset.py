"""``cpframe demo --full-set``: every calibration type cpframe builds, on one simulated camera.

:data:`FULL_SET` is the table: one :class:`FullSetType` per type beyond the plain demo's
bias, dark, defects, PTC and flats.  Each entry says which simulator effects it needs switched
on (with truth), which exposures it needs (observing-plan blocks and ``SELECTION_*`` values),
which templates build and verify it and how it is certified.  :func:`full_set_plan`,
:func:`full_set_effects` and :func:`full_set_steps` turn the table into the simulator plan,
the truth switches and the campaign steps; :mod:`cpframe.campaign.demo` runs them with the
demo's own steps, and the campaign orders everything by the calibration dependencies
(:data:`cpframe.campaign.model.PRODUCT_NEEDS` and ``USES_WHEN_CERTIFIED``: the flat is built
after the linearizer and crosstalk are certified, so its ISR applies them).

Adding a type to the full set is one more entry in :data:`FULL_SET` (no code in the demo).
A type that cannot run in the full set stays in the table with ``not_run`` saying why: the
demo prints the reason and the docs list it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FULL_SET", "RESTART_DAY_OBS", "FullSetType", "full_set_effects", "full_set_flat_needs", "full_set_plan",
           "full_set_steps", "full_set_templates", "step_names"]

_I = "instrument='{instrument}'"
#: A ramp of flat pairs below the full well (as tests/test_bfk.py and tests/test_linearity.py take): 4 short pairs
#: (300-3 000 e-) and 14 from 6 000 to 90 000 e- at the focal-plane centre, so that even the amp with the lowest
#: full well (~100 000 e-) and the brightest illumination stays below it.  The demo's PTC ramp goes past the full
#: well on purpose (the PTC turnoff); a linearizer spline or a covariance fit fed with those pairs is not.  The
#: linearizer, the CTI and the BFK share it: the plan holds identical blocks once.
_RAMP_BLOCK = {"day_obs": 20241110, "observation_type": "flat", "seq_start": 300, "physical_filter": "r_03",
               "flux": 3000, "observation_reason": "ptc",
               "pair_exposure_times": [0.1, 0.215, 0.464, 1.0, 2.0, 4.154, 6.308, 8.462, 10.615, 12.769, 14.923,
                                       17.077, 19.231, 21.385, 23.538, 25.692, 27.846, 30.0]}
_RAMP = f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (300..335)"
#: Its pairs up to 50 000 e- (the BFK verification: tests/test_bfk.py).
_RAMP_LOW = f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (300..321)"
#: Night of the camera restart after which the gains drift (gain correction).
RESTART_DAY_OBS = 20241128


@dataclass(frozen=True)
class FullSetType:
    """One calibration type of the full set: simulator effects, exposures, templates, certification."""

    product: str
    """Dataset type built and certified (a key of :data:`cpframe.campaign.model.PRODUCT_NEEDS`)."""
    build: str
    """Template that builds it (``templates/``)."""
    verify: str
    """Template that verifies it."""
    truth: str
    """What its verification compares with the simulator's truth, and the tolerance (for a person)."""
    effects: Mapping[str, Any] = field(default_factory=dict)
    """Simulator effects switched on for it (``make_truth`` keywords)."""
    blocks: tuple[Mapping[str, Any], ...] = ()
    """Observing-plan blocks (docs/simulator.md) it needs beyond the demo plan's; ``day_obs`` names the night."""
    selections: Mapping[str, str] = field(default_factory=dict)
    """``SELECTION_*`` values its templates read (``{instrument}`` is filled in)."""
    band: str | None = None
    """Band, for per-band products."""
    certify: Mapping[str, Any] = field(default_factory=dict)
    """Extra keys of its certify step (e.g. ``begin_date``)."""
    config: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Template -> ``--config label:field=value`` overrides for mini detectors (``extraQgraphOptions``)."""
    vars: Mapping[str, str] = field(default_factory=dict)
    """Template variables of its build step only (campaign ``vars``)."""
    flat_band: str | None = None
    """Band of the flat its ISR applies (science or flat exposures of that band): without that band in the demo's
    ``--bands`` its steps are left out, and the demo says so."""
    led: str | None = None
    """LED of a per-LED product (``flat_single_led``): ``LED_NAME`` of its build and verify steps, ``led`` of its
    certify step."""
    not_run: str = ""
    """Why it cannot run in the full set (then nothing of it is simulated or built; the demo says why)."""

    @property
    def name(self) -> str:
        """Product name as the summary and the verdicts show it (``flat_gradient_reference-r``)."""
        return self.product + (f"-{self.band}" if self.band else "")


#: The full set, beyond the demo's bias, dark, defects, PTC and flats (docs/demo.md "Full set").
FULL_SET: tuple[FullSetType, ...] = (
    FullSetType(
        "linearizer", "bps_linearizer.yaml", "bps_verify_linearizer.yaml",
        "per-amp non-linearity of the truth: residual after correction < 0.1 % (verifyLinearizer)",
        effects={"nonlinearity": True}, blocks=(_RAMP_BLOCK,),
        selections={"SELECTION_PTC_LINEARIZER": _RAMP, "SELECTION_PTC_LINEARIZER_V": _RAMP},
    ),
    FullSetType(
        "cti", "bps_cti.yaml", "bps_verify_cti.yaml",
        "serial CTI and trap of the truth: CTI within 10 %, trap size within 20 % (verifyCti)",
        effects={"cti": True}, blocks=(_RAMP_BLOCK,),
        selections={"SELECTION_PTC_CTI": _RAMP, "SELECTION_PTC_CTI_V": _RAMP},
    ),
    FullSetType(
        "crosstalk", "bps_crosstalk.yaml", "bps_verify_crosstalk.yaml",
        "crosstalk matrix of the truth: coefficients within max(2e-6, 2 %); residual matrix after correction "
        "below threshold (verifyCrosstalk)",
        effects={"crosstalk": True},
        # each spot exposure lights one amp past its full well (cpframe/camera/spots.py); every amp 4 times, as
        # tests/test_crosstalk.py takes for its tolerance
        blocks=({"day_obs": 20241110, "observation_type": "spot", "count": 64, "seq_start": 100,
                 "physical_filter": "r_03", "exposure_time": 10, "flux": 50000, "observation_reason": "crosstalk",
                 "selections": ["SELECTION_CROSSTALK"]},),
        selections={"SELECTION_CROSSTALK": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (100..163)",
                    "SELECTION_CROSSTALK_V": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (100..163)"},
    ),
    FullSetType(
        "bfk", "bps_bfk.yaml", "bps_verify_bfk.yaml",
        "pixel-area truth a00: kernel from the FULLCOVARIANCE PTC; BF-corrected flats' PTC linear to < 1 % "
        "(verifyBfk NONLINEARITY)",
        effects={"brighter_fatter": True}, blocks=(_RAMP_BLOCK,),
        selections={"SELECTION_PTC_BFK": _RAMP, "SELECTION_PTC_BFK_V": _RAMP_LOW},
        config={"bps_bfk.yaml": ("cpBfkPtcExtractPair:maximumRangeCovariancesAstier=5",
                                 "cpBfkPtcExtractPair:numEdgeSuspect=6",
                                 "cpBfkPtcExtractPair:minNumberGoodPixelsForCovariance=10000",
                                 "cpBfkPtcSolve:ptcFitType=FULLCOVARIANCE_NO_B",
                                 "cpBfkPtcSolve:maximumRangeCovariancesAstier=5",
                                 "cpBfkPtcSolve:maximumRangeCovariancesAstierFullCovFit=4"),
                "bps_verify_bfk.yaml": ("verifyBfkPtcExtractPair:numEdgeSuspect=6",
                                        "verifyUncorrectedBfkPtcExtractPair:numEdgeSuspect=6"),
                # the demo's PTC sees the brighter-fatter variance loss (~12 % at 60 000 e-): its initial outlier
                # fit (cp_pipe default: points up to 50 000 e-) then cuts the top of the curve as outliers and the
                # turnoff falls to ~40 000 e-; up to 80 000 e- the EXPAPPROXIMATION a00 fits the loss instead
                "bps_ptc.yaml": ("cpPtcSolve:maxSignalInitialPtcOutlierFit=80000",)},
    ),
    FullSetType(
        "electroBfDistortionMatrix", "bps_electrostaticBFDistortionMatrixBfPtc.yaml",
        "bps_verify_electrostaticBFDistortionMatrix.yaml",
        "pixel-area truth a matrix: electrostatic model fitted to a FULLCOVARIANCE PTC's a matrix; ASTIER23-corrected "
        "flats' PTC linear to < 1 % (ELECTROSTATIC_BF)",
        # the demo's certified PTC is EXPAPPROXIMATION (its ramp goes past the full well for the turnoff, which a
        # covariance fit cannot take): the build fits a FULLCOVARIANCE PTC of its own on the ramp below the full
        # well (cp_pipe's useBfPtc), with the BFK's mini-detector settings
        effects={"brighter_fatter": True}, blocks=(_RAMP_BLOCK,),
        selections={"SELECTION_PTC_BF": _RAMP, "SELECTION_PTC_BF_V": _RAMP_LOW},
        config={"bps_electrostaticBFDistortionMatrixBfPtc.yaml": (
                    "cpBfPtcExtractPair:maximumRangeCovariancesAstier=5", "cpBfPtcExtractPair:numEdgeSuspect=6",
                    "cpBfPtcExtractPair:minNumberGoodPixelsForCovariance=10000",
                    "cpBfPtcSolve:ptcFitType=FULLCOVARIANCE_NO_B", "cpBfPtcSolve:maximumRangeCovariancesAstier=5",
                    "cpBfPtcSolve:maximumRangeCovariancesAstierFullCovFit=4", "cpBfSolve:fitRange=4"),
                "bps_verify_electrostaticBFDistortionMatrix.yaml": (
                    "verifyElectrostaticBfPtcExtractPair:numEdgeSuspect=6",
                    "verifyUncorrectedElectrostaticBfPtcExtractPair:numEdgeSuspect=6")},
    ),
    FullSetType(
        "gain_correction", "bps_gain_correction.yaml", "bps_verify_gain_correction.yaml",
        f"per-amp gain drift after the restart of {RESTART_DAY_OBS}: adjustments within tolerance of the truth "
        "(verifyGainCorrection)",
        effects={"gain_drift": True, "gain_drift_day_obs": RESTART_DAY_OBS},
        blocks=({"day_obs": RESTART_DAY_OBS, "observation_type": "flat", "count": 8, "seq_start": 10,
                 "physical_filter": "r_03", "exposure_time": 10, "flux": 2000, "observation_reason": "flat",
                 "selections": ["SELECTION_GAIN_CORRECTION_FLAT"]},),
        selections={"SELECTION_GAIN_CORRECTION_FLAT":
                    f"{_I} and exposure.day_obs={RESTART_DAY_OBS} and exposure.seq_num in (10..17)"},
        # valid from the restart on: exposures before it keep the PTC gains
        flat_band="r",
        certify={"begin_date": f"{str(RESTART_DAY_OBS)[:4]}-{str(RESTART_DAY_OBS)[4:6]}-"
                               f"{str(RESTART_DAY_OBS)[6:]}T12:00:00"},
    ),
    FullSetType(
        "flat_gradient_reference", "bps_flat_gradient_reference_r.yaml",
        "bps_verify_flat_gradient_reference_r.yaml",
        "focal-plane radial fall-off of the truth: fit residual <= 1 %, gradient <= 10 % (FLAT_GRADIENT)",
        # vignetting off (as tests/test_flat_gradient.py): the simulator's generic vignetting x planar gradient is
        # not the radial-spline x plane model the gradient reference fits (with it on: 1.2-1.3 % residual on the
        # centre detector, over the 1 % of FLAT_GRADIENT); the focal-plane fall-off of `flat_gradient` replaces it
        effects={"flat_gradient": True, "vignetting": False}, band="r",
    ),
    FullSetType(
        "illuminationCorrection", "bps_illuminationCorrection.yaml", "bps_verify_illuminationCorrection.yaml",
        "dome-flat-only pattern of the truth: re-measured correction flat within verifyMaxDeviation (ILLUMINATION)",
        # 1 % rather than the default 4 %: the dome-flat pattern is in every flat, and the flat gradient reference's
        # focal-plane model (residual <= 1 %) cannot describe a per-detector pattern of 4 %
        effects={"illumination_correction": 0.01},
        # a fixed star field, dithered: the same stars measured on different pixels
        blocks=({"day_obs": 20241110, "observation_type": "science", "count": 12, "seq_start": 200,
                 "physical_filter": "r_03", "exposure_time": 30, "flux": 50, "observation_reason": "science",
                 "science_program": "BLOCK-T0ILLUM", "selections": ["SELECTION_ILLUMINATION_CORRECTION"]},),
        # the real template reads only RAW_COLLECTION and CALIB_COLLECTIONS: the ticket chain goes first there
        vars={"CALIB_COLLECTIONS": "${TICKET_CHAIN},${CALIB_COLLECTIONS}"}, flat_band="r",
        selections={"SELECTION_ILLUMINATION_CORRECTION":
                    f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (200..211)",
                    "SELECTION_ILLUMINATION_CORRECTION_V":
                    f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (200..211)"},
    ),
    FullSetType(
        "sky", "bps_sky.yaml", "bps_verify_sky.yaml",
        "static sky pattern of the truth (`sky_frame`, 2 % rms): sky frame within 5 % of the pattern's rms in 32 px "
        "bins (docs/sky.md); per-bin noise < 0.3 % of the sky (SKY)",
        effects={"sky_frame": True},
        # six r-band science exposures of one field (tests/test_sky.py takes the same); the pattern is in every
        # science exposure of the full set, as the night sky is
        blocks=({"day_obs": 20241110, "observation_type": "science", "count": 6, "seq_start": 220,
                 "physical_filter": "r_03", "exposure_time": 30, "flux": 200, "observation_reason": "science",
                 "science_program": "BLOCK-T0SKY", "selections": ["SELECTION_SKY"]},),
        # as cp_pipe's bps_sky.yaml, the template reads only RAW_COLLECTION and CALIB_COLLECTIONS
        vars={"CALIB_COLLECTIONS": "${TICKET_CHAIN},${CALIB_COLLECTIONS}"}, flat_band="r",
        selections={"SELECTION_SKY": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (220..225)",
                    "SELECTION_SKY_V": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (220..225)"},
    ),
    FullSetType(
        "fringe", "bps_fringe.yaml", "bps_verify_fringe.yaml",
        "fringes of the truth (`fringe`, 2 % of the sky, i band): frame = k x pattern with the residual in 4 x 4 px "
        "block means < 10 % of its rms (docs/fringe.md); fringe SNR >= 3 (FRINGE)",
        effects={"fringe": True},
        # eight i-band science exposures (tests/test_fringe.py takes eight z-band ones); the fringe needs the i flat
        blocks=({"day_obs": 20241110, "observation_type": "science", "count": 8, "seq_start": 230,
                 "physical_filter": "i_06", "exposure_time": 30, "flux": 200, "observation_reason": "science",
                 "science_program": "BLOCK-T0FRINGE", "selections": ["SELECTION_FRINGE"]},),
        flat_band="i",
        selections={"SELECTION_FRINGE": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (230..237)",
                    "SELECTION_FRINGE_V": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (230..237)"},
    ),
    FullSetType(
        "flat_single_led", "bps_flat_single_led.yaml", "bps_verify_flat_single_led.yaml",
        f"one LED's colour and plane (`led_flats`, s = 0.02): the flat's colour beta within 3 % of s of s t_led "
        f"(cpframe/camera/led_flats.py); the flat's tests on the LED's other flats, ISR with it (FLAT_SINGLE_LED)",
        effects={"led_flats": True},
        # white-band flats of one LED (cp_pipe's m455l4): three build it, two verify it
        blocks=({"day_obs": 20241110, "observation_type": "flat", "count": 5, "seq_start": 240,
                 "physical_filter": "empty", "exposure_time": 10, "flux": 2000,
                 "observation_reason": "single_led_flat_m455l4", "selections": ["SELECTION_FLAT_white"]},),
        selections={"SELECTION_FLAT_white": f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (240..242)",
                    "SELECTION_FLAT_white_V":
                    f"{_I} and exposure.day_obs=20241110 and exposure.seq_num in (243..244)"},
        led="m455l4",
    ),
    FullSetType(
        "flat_anaglyph", "bps_flat_anaglyph_g.yaml", "bps_verify_flat_anaglyph_g.yaml",
        "the mix's colour s (w t_blue + (1 - w) t_red) within 3 % of s (tests/test_anaglyph_campaign.py)", band="g",
        not_run="the demo builds a plain flat per band (both would be the band's flat in one chain) and its only "
                "flat gradient reference is r's; tests/test_anaglyph_campaign.py runs it in a campaign of its own",
    ),
)


def _run(types: Sequence[FullSetType]) -> list[FullSetType]:
    return [t for t in types if not t.not_run]


def full_set_effects(types: Sequence[FullSetType] = FULL_SET) -> dict[str, Any]:
    """Simulator effects of every type that runs (``make_truth`` keywords).

    >>> full_set_effects()["nonlinearity"], full_set_effects()["gain_drift_day_obs"]
    (True, 20241128)
    """
    out: dict[str, Any] = {}
    for t in _run(types):
        out.update(t.effects)
    return out


def full_set_plan(base: Mapping[str, Any], types: Sequence[FullSetType] = FULL_SET) -> dict[str, Any]:
    """The demo plan document ``base`` with every type's blocks and selections added.

    Blocks go to the night of their ``day_obs`` (a new night, starting at 20:00 TAI, when the
    plan has none); selections are added to the plan's ``selections``.
    """
    doc = {**base, "nights": [dict(n, blocks=list(n.get("blocks", []))) for n in base["nights"]],
           "selections": dict(base.get("selections", {}))}
    for t in _run(types):
        for block in t.blocks:
            if any(block == u.blocks[k] for u in _run(types)[:_run(types).index(t)] for k in range(len(u.blocks))):
                continue  # shared with an earlier type (the ramp)
            b = dict(block)
            day = int(b.pop("day_obs"))
            night = next((n for n in doc["nights"] if int(n["day_obs"]) == day), None)
            if night is None:
                ds = str(day)
                night = {"day_obs": day, "start": f"{ds[:4]}-{ds[4:6]}-{ds[6:]}T20:00:00", "blocks": []}
                doc["nights"].append(night)
            night["blocks"].append(b)
        doc["selections"].update(t.selections)
    doc["name"] = f"{base.get('name', 'demo')}-full-set"
    return doc


def step_names(t: FullSetType) -> tuple[str, str, str]:
    """(build, certify, verify) step names of a type.

    >>> step_names(FULL_SET[0])
    ('linearizer', 'certify-linearizer', 'verify-linearizer')
    """
    return t.name, f"certify-{t.name}", f"verify-{t.name}"


def full_set_flat_needs(types: Sequence[FullSetType] = FULL_SET) -> dict[str, set[str]]:
    """Step name -> the band of the flat its ISR applies, for each type that runs and has one.

    >>> full_set_flat_needs()["verify-fringe"]
    {'i'}
    """
    return {s: {t.flat_band} for t in _run(types) if t.flat_band for s in step_names(t)}


def full_set_templates(directory: Path, types: Sequence[FullSetType] = FULL_SET) -> dict[str, Path]:
    """Templates with mini-detector overrides, written to ``directory``: template name -> path.

    The shipped template is copied with its ``--config`` overrides added as ``extraQgraphOptions``
    (as ``bps submit`` takes them); templates without overrides are not copied.
    """
    from cpframe.execution.templates import default_templates_dir

    out: dict[str, Path] = {}
    for t in _run(types):
        for name, opts in t.config.items():
            text = (default_templates_dir() / name).read_text()
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.rstrip("\n") + "\nextraQgraphOptions: \""
                            + " ".join(f"--config {o}" for o in opts) + "\"\n")
            out[name] = path
    return out


def full_set_steps(types: Sequence[FullSetType] = FULL_SET,
                   templates: Mapping[str, Path] | None = None) -> list[dict[str, Any]]:
    """Campaign steps (campaign-file form) building, certifying and verifying each type that runs.

    The campaign orders them by the calibration dependencies, whatever their place here.
    """
    templates = templates or {}
    steps: list[dict[str, Any]] = []
    for t in _run(types):
        build, cert, verify = step_names(t)
        band = {"band": t.band} if t.band else {}
        led = {"LED_NAME": t.led} if t.led else {}
        bvars = {**dict(t.vars), **led}
        steps.append({"name": build, "kind": "submit", "template": str(templates.get(t.build, t.build)),
                      "builds": t.product, **band, **({"vars": bvars} if bvars else {})})
        steps.append({"name": cert, "kind": "certify", "dataset_type": t.product, **band, **t.certify,
                      **({"led": t.led} if t.led else {})})
        steps.append({"name": verify, "kind": "submit", "template": str(templates.get(t.verify, t.verify)),
                      "verifies": t.product, **band, **({"vars": led} if led else {})})
    return steps
