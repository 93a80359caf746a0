"""What a campaign is made of: the vocabulary (step kinds, products and what each needs,
variables), the shape of a campaign file (:class:`CampaignFile`, one schema per step kind)
and the parsed values :class:`Step` and :class:`Campaign`.  No I/O.

Reading a file into these is :mod:`cpframe.campaign.spec`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cpframe.core.errors import CampaignError
from cpframe.core.schema import Schema, Text

# -- vocabulary -------------------------------------------------------------------------------

#: Step kinds a campaign file may use.
STEP_KINDS = ("submit", "certify", "report", "deploy")

#: Calibration products cpframe builds and what each needs built (and certified) first
#: (spec dependencies.md §7, the minimal closed set, with defects before PTC as in §6).
PRODUCT_NEEDS: dict[str, tuple[str, ...]] = {
    "biasBootstrap": (),
    "darkBootstrap": ("biasBootstrap",),
    "flatBootstrap": ("biasBootstrap", "darkBootstrap"),
    "defects": ("biasBootstrap", "darkBootstrap", "flatBootstrap"),
    "ptc": ("defects",),
    "bias": ("ptc", "defects"),
    "dark": ("ptc", "bias", "defects"),
    "flat": ("ptc", "bias", "dark", "defects"),
    # issue 13 types (dependencies.md §6: linearizer and CTI after defects, CTI on the linearizer's gains;
    # crosstalk from bright sources with the PTC's gains).  bias/dark/flat/ptc use them when certified.
    "linearizer": ("defects",),
    "cti": ("linearizer", "defects"),
    "crosstalk": ("ptc", "defects"),
    # BFK (dependencies.md §6 step 8): its own PTC on a flat-pair ramp in bootstrap ISR with defects;
    # crosstalk, linearizer and CTI are applied when certified
    "bfk": ("defects",),
    # gain correction (dependencies.md §3): ISR like a flat (PTC gains, bias, dark, defects) of flats taken
    # after a restart, measured against the certified flat of the same filter
    "gain_correction": ("ptc", "bias", "dark", "defects", "flat"),
    # flat gradient reference per band (cp_pipe cpFlatGradientReferenceLSST.yaml): a flat's ISR and combine, then the
    # focal-plane fit with the defects masked
    "flat_gradient_reference": ("ptc", "bias", "dark", "defects"),
    # illumination correction (cp_pipe cpIlluminationCorrection): science exposures through the full ISR with
    # the certified flat (dependencies.md §3: IsrTaskLSST defaults), so after the flat of its band
    "illuminationCorrection": ("ptc", "bias", "dark", "flat", "defects"),
    # sky frames (cp_pipe cpSkyLSST.yaml: IsrTaskLSST defaults) and red-band fringe frames (cpFringe.yaml: ISR with
    # bias, dark, flat; dependencies.md §2): science exposures after the flat of their band
    "sky": ("ptc", "bias", "dark", "flat", "defects"),
    "fringe": ("ptc", "bias", "dark", "flat", "defects"),
    # electrostatic brighter-fatter distortion matrix (cp_pipe cpElectrostaticBFDistortionMatrixLSST.yaml): fitted to
    # the a matrix of the *certified* ptc (inputPtc, useBfPtc false; no ISR of its own), so after the PTC; that PTC
    # must be FULLCOVARIANCE (docs/campaign.md "The order": the campaign stops before the build with the fit type
    # found; bps_electrostaticBFDistortionMatrixBfPtc.yaml fits a FULLCOVARIANCE PTC of its own instead)
    "electroBfDistortionMatrix": ("ptc",),
    # anaglyph flat per band (cp_pipe cpFlatAnaglyphLSST.yaml, bps_flat_anaglyph_<band>.yaml): the flat's ISR (PTC
    # gains, bias, dark; defects masked in the gradient fits) of the band's single-LED flats, each LED's flat
    # gradient-corrected against the certified flat_gradient_reference of the band, then mixed; written and
    # certified as the band's ``flat`` (:data:`DATASET_TYPE_OF`)
    "flat_anaglyph": ("ptc", "bias", "dark", "defects", "flat_gradient_reference"),
    # single-LED flat (cp_pipe bps_flat_singleled_white.yaml: cpFlat.yaml with its output renamed flat_<LED_NAME>):
    # a flat's ISR and combine of one LED's flats
    "flat_single_led": ("ptc", "bias", "dark", "defects"),
}

#: Optional calibrations each product's ISR applies when they are certified (dependencies.md §3; ISR's
#: ``for_quantum`` switches a step off when its calibration is not found).  When a campaign builds both, the
#: certification of the used one comes first, so e.g. the flat is built with the certified linearizer and
#: crosstalk applied.  Only pairs that do not close a cycle with :data:`PRODUCT_NEEDS` (the PTC cannot use a
#: crosstalk measured with its gains).
USES_WHEN_CERTIFIED: dict[str, tuple[str, ...]] = {
    "ptc": ("linearizer", "cti"),
    "bias": ("linearizer", "crosstalk"),
    "dark": ("linearizer", "crosstalk"),
    "flat": ("linearizer", "crosstalk"),
    "bfk": ("linearizer", "cti", "crosstalk"),
    "gain_correction": ("linearizer", "cti", "crosstalk"),
    "flat_gradient_reference": ("linearizer", "crosstalk"),
    # the variant with a PTC of its own (bps_electrostaticBFDistortionMatrixBfPtc.yaml, cp_pipe's useBfPtc) runs the
    # BFK's ISR; the default one reads the certified ptc, already built with the certified linearizer and CTI
    "electroBfDistortionMatrix": ("linearizer", "cti", "crosstalk"),
    # cpFlatAnaglyphLSST.yaml's ISR: doLinearize, doDeferredCharge, doCrosstalk
    "flat_anaglyph": ("linearizer", "cti", "crosstalk"),
    "flat_single_led": ("linearizer", "crosstalk"),
}

#: Products built and certified per band (one generation and one CALIBRATION collection each).
PER_BAND = ("flat", "flat_gradient_reference", "flat_anaglyph")

#: Products that are certified (bootstraps are read straight from their RUNs).
CERTIFIABLE = ("defects", "ptc", "bias", "dark", "flat", "linearizer", "cti", "crosstalk", "bfk", "gain_correction",
               "flat_gradient_reference", "illuminationCorrection", "sky", "fringe", "electroBfDistortionMatrix",
               "flat_anaglyph", "flat_single_led")

#: What a verification submission may test.
VERIFY_TARGETS = ("bias", "dark", "flat", "defects", "ptc", "science", "linearizer", "cti", "crosstalk", "bfk",
                  "gain_correction", "flat_gradient_reference", "illuminationCorrection", "sky", "fringe",
                  "electroBfDistortionMatrix", "flat_anaglyph", "flat_single_led")

#: Template stems (``bps_<stem>.yaml``, ``bps_verify_<stem>.yaml``) that name a product differently: cp_pipe's
#: ``bps_electrostaticBFDistortionMatrix.yaml`` writes ``electroBfDistortionMatrix``, and so does cpframe's
#: variant with a PTC of its own, ``bps_electrostaticBFDistortionMatrixBfPtc.yaml``.
TEMPLATE_STEMS = {"electrostaticBFDistortionMatrix": "electroBfDistortionMatrix",
                  "electrostaticBFDistortionMatrixBfPtc": "electroBfDistortionMatrix",
                  # cp_pipe's single-LED template (the LED is the variable LED_NAME, the band always white)
                  "flat_singleled_white": "flat_single_led"}

#: Products whose datasets have another dataset type than the product's name (the registry's name; the
#: campaign certifies that type).  The anaglyph flat is the band's ``flat`` (as in Rubin: ISR reads it as the
#: flat); a single-LED flat is ``flat_<LED_NAME>`` (:meth:`Step.registry_type`).
DATASET_TYPE_OF = {"flat_anaglyph": "flat", "flat_single_led": "flat_{led}"}

#: Products that are per LED (the variable ``LED_NAME``, or ``led:`` on a certify step).
PER_LED = ("flat_single_led",)

#: The stem of a product's CALIBRATION collection (``<TAG_PREFIX>/<stem>[-<band>].<CERT_RERUN>``) when it is not
#: the product's name: the anaglyph flat of g is certified into ``flatAnaglyph-g.<CERT_RERUN>``, one LED's
#: flat into ``flat_<LED>.<CERT_RERUN>`` (its dataset type).
CERTIFIED_STEM = {"flat_anaglyph": "flatAnaglyph", "flat_single_led": "flat_{led}"}

#: Variables every campaign needs (DMTN-222 §7 exports them all).
REQUIRED_VARIABLES = (
    "USER_CALIB_PREFIX", "INSTRUMENT", "TICKET", "REPO", "RAW_COLLECTION", "CALIB_COLLECTIONS",
    "TAG", "RERUN", "CERT_RERUN", "VERIFY_RERUN", "START_DATE",
)

#: Variables ``cpframe deploy CAMPAIGN`` needs (passed on with --var in the record).
_DEPLOY_VARIABLES = (
    "REPO", "INSTRUMENT", "TICKET", "USER_CALIB_PREFIX", "RAW_COLLECTION", "CALIB_COLLECTIONS",
)

#: Names cpframe computes from the others; a campaign file may not set them.
DERIVED_VARIABLES = ("TICKET_CHAIN", "TAG_PREFIX")

#: The generation-collection stem of each product (templates.md §4/§5).
GEN_STEM = {
    "biasBootstrap": "biasBootstrapGen", "darkBootstrap": "darkBootstrapGen",
    "flatBootstrap": "flatBootstrapGen", "defects": "defectGen", "ptc": "ptcGen",
    "bias": "biasGen", "dark": "darkGen", "flat": "flatGen",
    "linearizer": "linearizerGen", "cti": "ctiGen", "crosstalk": "crosstalkGen", "bfk": "bfkGen",
    "gain_correction": "gainCorrectionGen", "flat_gradient_reference": "flatGradientReferenceGen",
    "illuminationCorrection": "illuminationCorrectionGen", "sky": "skyGen", "fringe": "fringeGen",
    "electroBfDistortionMatrix": "electroBFDistortionMatrixGen",  # cp_pipe's bps_electrostaticBFDistortionMatrix.yaml
    "flat_anaglyph": "flatAnaglyphGen",  # cp_pipe's bps_flat_anaglyph_<band>.yaml: flatAnaglyphGen-<band>
    # + "-<LED_NAME>": cpframe's bps_flat_single_led.yaml (cp_pipe's bps_flat_singleled_white.yaml writes every LED
    # to flatGen-white: the campaign takes the template's output, and refuses two LEDs sharing one)
    "flat_single_led": "flatGen-white",
}

#: Selection variable each product / verification reads (``{band}`` for flats).
SELECTION_OF_BUILD = {
    "biasBootstrap": "SELECTION_BIAS_BOOTSTRAP", "darkBootstrap": "SELECTION_DARK_BOOTSTRAP",
    "flatBootstrap": "SELECTION_FLAT_BOOTSTRAP", "defects": None, "ptc": "SELECTION_PTC",
    "bias": "SELECTION_BIAS", "dark": "SELECTION_DARK", "flat": "SELECTION_FLAT_{band}",
    "linearizer": "SELECTION_PTC_LINEARIZER", "cti": "SELECTION_PTC_CTI", "crosstalk": "SELECTION_CROSSTALK",
    "bfk": "SELECTION_PTC_BFK", "gain_correction": "SELECTION_GAIN_CORRECTION_FLAT",
    "flat_gradient_reference": "SELECTION_FLAT_{band}",
    "illuminationCorrection": "SELECTION_ILLUMINATION_CORRECTION",
    "sky": "SELECTION_SKY", "fringe": "SELECTION_FRINGE",
    "electroBfDistortionMatrix": "SELECTION_PTC_BF",
    "flat_anaglyph": "SELECTION_FLAT_{band}", "flat_single_led": "SELECTION_FLAT_white",
}
SELECTION_OF_VERIFY = {
    "bias": "SELECTION_BIAS_V", "dark": "SELECTION_DARK_V", "flat": "SELECTION_FLAT_{band}_V",
    "defects": "SELECTION_DEFECTS_V", "ptc": "SELECTION_PTC_V", "science": "SELECTION_SCIENCE_V",
    "linearizer": "SELECTION_PTC_LINEARIZER_V", "cti": "SELECTION_PTC_CTI_V", "crosstalk": "SELECTION_CROSSTALK_V",
    "bfk": "SELECTION_PTC_BFK_V", "gain_correction": "SELECTION_GAIN_CORRECTION_FLAT",
    "flat_gradient_reference": "SELECTION_FLAT_{band}_V",
    "illuminationCorrection": "SELECTION_ILLUMINATION_CORRECTION_V",
    "sky": "SELECTION_SKY_V", "fringe": "SELECTION_FRINGE_V",
    "electroBfDistortionMatrix": "SELECTION_PTC_BF_V",
    "flat_anaglyph": "SELECTION_FLAT_{band}_V",
    "flat_single_led": "SELECTION_FLAT_white_V",  # the LED's own flats (templates/bps_verify_flat_single_led.yaml)
}

_RERUN_RE = re.compile(r"^\d{8}[a-z]$")
_STEP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")

# -- the file's shape (cpframe.core.schema); the checks that need variables follow below -------------


class _StepFile(Schema):
    name: Text
    kind: str
    needs: Text | list[Text] = []
    doc: Text = ""


class _SubmitStepFile(_StepFile):
    template: Text | None = None
    builds: Text | None = None
    verifies: Text | None = None
    band: Text | None = None
    vars: dict[str, Text | None] = {}


class _CertifyStepFile(_StepFile):
    dataset_type: Text | None = None
    band: Text | None = None
    led: Text | None = None
    input: Text | None = None
    output: Text | None = None
    begin_date: Text | None = None
    end_date: Text | None = None
    chain: bool | Text | None = None
    search_all_inputs: bool = False


class _ReportStepFile(_StepFile):
    output: Text | None = None
    collections: Text | list[Text] = []


class _DeployStepFile(_StepFile):
    exposure: Text | None = None


#: The keys each step kind takes (schema per kind).
STEP_SCHEMAS: dict[str, type[_StepFile]] = {
    "submit": _SubmitStepFile, "certify": _CertifyStepFile, "report": _ReportStepFile, "deploy": _DeployStepFile,
}


class CampaignFile(Schema):
    """A campaign file: ``name``, ``description``, ``variables`` and ``steps`` (docs/campaign.md)."""

    name: Text | None = None
    description: Text = ""
    variables: dict[str, Text | None] | None = None
    steps: list[Any] | None = None

def sh_quote(text: str) -> str:
    """Quote for a POSIX shell, preferring double quotes around selections.

    >>> print(sh_quote("instrument='LSSTComCam' and detector=4"))
    "instrument='LSSTComCam' and detector=4"
    >>> sh_quote("plain")
    'plain'
    """
    q = shlex.quote(text)
    if q.startswith("'") and "'" in text and not re.search(r'[$`"\\!]', text):
        return f'"{text}"'
    return q


def sh_join(argv: Sequence[str]) -> str:
    """A command line as shell text (see :func:`sh_quote`)."""
    return " ".join(sh_quote(a) for a in argv)


# -- the file, parsed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a campaign, with its variables already substituted."""

    name: str
    """Unique name in the campaign (used by ``needs`` and ``--until``)."""
    kind: str
    """One of :data:`STEP_KINDS`."""
    index: int
    """Position in the campaign file (0-based)."""
    needs: tuple[str, ...] = ()
    """Names of steps that must run first (besides the derived dependencies)."""
    doc: str = ""
    template: str | None = None
    """submit: absolute path of the submission template."""
    builds: str | None = None
    """submit: product built (key of :data:`PRODUCT_NEEDS`)."""
    verifies: str | None = None
    """submit: calibration verified (one of :data:`VERIFY_TARGETS`)."""
    band: str | None = None
    """Flat band (submit builds/verifies flat, certify flat)."""
    led: str | None = None
    """LED of a single-LED flat (:data:`PER_LED`): the step's or the campaign's ``LED_NAME``, or certify ``led``."""
    vars: tuple[tuple[str, str], ...] = ()
    """submit: variables set for this step only."""
    dataset_type: str | None = None
    """certify: dataset type certified."""
    input: str | None = None
    """certify: generation collection holding the datasets (CHAINED: first child only)."""
    output: str | None = None
    """certify: CALIBRATION collection; report: output directory."""
    begin_date: str | None = None
    """certify: TAI start of the validity range (at or before 1970 = unbounded)."""
    end_date: str | None = None
    """certify: TAI end of the validity range (None = open, DMTN-222 policy)."""
    chain: str | None = None
    """certify: CHAINED collection to put ``output`` in (None = do not chain)."""
    search_all_inputs: bool = False
    collections: tuple[str, ...] = ()
    """report: collections to report on (verification first, then generation)."""
    exposure: int | None = None
    """deploy: exposure used by the self-check (default: chosen from the validity ranges)."""
    gen_output: str | None = None
    """submit: CHAINED output collection of the submission (``payload.output``)."""
    gen_run: str | None = None
    """submit: RUN name when it is fixed in advance (bootstraps), else None (timestamped)."""
    reads: tuple[tuple[str, str], ...] = ()
    """submit (builds): (task label, dataset type) of certified calibrations its pipeline reads beyond the product's
    :data:`PRODUCT_NEEDS` (LSSTCam's flat: ``flat_gradient_reference``); ordered after them like needs."""

    @property
    def product(self) -> str | None:
        """Calibration product this step builds or certifies (None for others)."""
        if self.kind == "submit":
            return self.builds
        if self.kind == "certify":
            return self.dataset_type
        return None

    @property
    def registry_type(self) -> str | None:
        """The dataset type this step writes or certifies in the registry (:data:`DATASET_TYPE_OF`): ``flat`` for
        ``flat_anaglyph``, ``flat_<led>`` for ``flat_single_led``, else the product's name."""
        p = self.product
        return DATASET_TYPE_OF.get(p, p).format(led=self.led) if p else None

    @property
    def label(self) -> str:
        """Short description for the plan."""
        band = f" ({self.band})" if self.band else (f" ({self.led})" if self.led else "")
        if self.kind == "submit" and self.builds:
            return f"build {self.builds}{band}"
        if self.kind == "submit":
            return f"verify {self.verifies}{band}"
        if self.kind == "certify":
            return f"certify {self.dataset_type}{band}"
        return self.kind


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: variables and steps in execution order."""

    name: str
    path: Path
    """Absolute path of the campaign file."""
    variables: Mapping[str, str]
    """All variables, overrides applied, derived names (``TICKET_CHAIN``, ``TAG_PREFIX``) added."""
    steps: tuple[Step, ...]
    """Steps in the order they run."""
    after: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """For each step, ``(earlier step, reason)`` pairs that forced its place."""
    sha256: str = ""
    """Checksum of the campaign file as read."""
    overrides: Mapping[str, str] = field(default_factory=dict)
    """The ``--var`` values given (they are part of how to run it again)."""

    def command(self, *extra: str) -> str:
        """The ``cpframe campaign`` command line for this campaign (with its ``--var``)."""
        argv = ["cpframe", "campaign", str(self.path)]
        for k, x in self.overrides.items():
            argv += ["--var", f"{k}={x}"]
        return sh_join(argv + list(extra))

    @property
    def repo(self) -> str:
        return self.variables["REPO"]

    @property
    def ticket_chain(self) -> str:
        return self.variables["TICKET_CHAIN"]

    @property
    def instrument(self) -> str:
        return self.variables["INSTRUMENT"]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise CampaignError(
            f"{self.path.name}: no step named {name!r}; steps are {', '.join(s.name for s in self.steps)}."
        )

    def chain_mode(self, step: Step) -> str:
        """``redefine`` for the first chaining certify step in run order, ``prepend`` after."""
        for s in self.steps:
            if s.kind == "certify" and s.chain == step.chain:
                return "redefine" if s.name == step.name else "prepend"
        return "prepend"

