"""``cpframe demo``: simulated camera -> repository -> the demo campaign -> report.

:func:`run_demo` does, in ``DIR``:

1. simulate the simulator's ``demo`` plan for a ComCam-like camera (``mini`` detectors by
   default, ``full`` with ``--full``) into ``DIR/raw`` (truth in ``DIR/raw/truth``);
2. create ``DIR/repo`` (SQLite), register the instrument, ingest the raws into
   ``LSSTComCam/raw/all`` and write the curated calibrations into ``CALIB_COLLECTIONS``;
3. run ``templates/campaign_demo.yaml`` (with the plan's ``SELECTION_*`` values) on one
   local Dask cluster, including its deploy step;
4. print where the report is and a pass/fail line per verified product.

Running it again in the same ``DIR`` with the same options resumes: nothing finished is
redone.  Options that change the data (size, detectors, bands, broken input, seed) need a
new ``DIR`` or ``--force``.

``full_set=True`` (``--full-set``) switches on every simulator effect of
:data:`cpframe.campaign.fullset.FULL_SET` (with truth), adds each type's exposures to the plan
and its build, certify and verify steps to the campaign: linearizer, CTI, crosstalk, BFK, gain
correction, flat gradient reference and illumination correction are built, certified and
verified with the demo's products, in the dependency order, and used downstream (the bias,
dark and flat are built with the certified linearizer and crosstalk applied).  The summary has
one line per type (built, certified, verdict); types that cannot run say why.

``broken=KIND`` also simulates one bad exposure and, after the demo campaign, runs a small
second campaign (ticket ``DEMO-1-<KIND>``) that rebuilds, certifies and verifies the product
it belongs to with the exposure added to its construction and verification selections.  Its
verification must fail *the named test* for that exposure (:data:`BROKEN_KINDS`), and its
report shows it in red, while the demo's own calibrations stay as they were:

* ``saturated`` (``saturated-flat``): a flat 30x over the full well -> flat ``SATURATION``
  (DMTN-222 §Verification: saturated flats "do not flat-field well");
* ``light-leak``: a dark taken with light reaching the sensor -> dark ``MEAN``;
* ``noisy``: a bias whose amplifier C04 read noise rose by half on every detector -> bias
  ``READ_NOISE_CONSISTENT`` (``NOISE``, measured against the same exposure's overscan,
  cannot see a raised read noise).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from cpframe.campaign.model import sh_join
from cpframe.core.errors import CampaignError, CpframeError, UserInputError

__all__ = [
    "DemoResult", "BrokenInput", "TypeStatus", "type_statuses", "run_demo", "demo_campaign", "broken_campaign", "plan_bands",
    "DEMO_INSTRUMENT", "DEFAULT_DETECTORS", "BROKEN_INPUTS", "BROKEN_KINDS", "BrokenKind",
]

DEMO_INSTRUMENT = "LSSTComCam"
#: Detectors simulated by default: three of the nine keep the demo within a few minutes on 2 cores.
DEFAULT_DETECTORS = (0, 4, 8)
#: Deliberately broken inputs ``--broken`` can add.
BROKEN_INPUTS = ("saturated", "saturated-flat", "light-leak", "noisy")


@dataclass(frozen=True)
class BrokenKind:
    """A deliberately broken input: which product it enters and the test that must catch it."""

    product: str
    """``flat``, ``dark`` or ``bias``."""
    test: str
    """The verification test that must fail for the bad exposure."""
    what: str
    """What was broken, for a person."""
    tag: str
    """TAG and ticket suffix of the broken campaign."""


#: ``--broken`` kind -> what it breaks and the test that must catch it (issue 16).
BROKEN_KINDS = {
    "saturated": BrokenKind("flat", "SATURATION", "a flat 30x over the full well", "SAT"),
    "light-leak": BrokenKind("dark", "MEAN", "a dark with light reaching the sensor (2 e-/s)", "LEAK"),
    "noisy": BrokenKind("bias", "READ_NOISE_CONSISTENT", "a bias whose amp C04 read noise rose by 50 %", "NOISY"),
}
BROKEN_KINDS["saturated-flat"] = BROKEN_KINDS["saturated"]
#: Light of the light-leaked dark, e-/s/pixel: 30 s of it is far above the read noise.
LEAK_FLUX = 2.0
#: Read-noise factor of amp C04 in the noisy bias.
NOISY_FACTOR = 1.5
NOISY_AMP = "C04"
#: Flux of the broken flat, e-/s/pixel: 10 s of it is many times the full well.
SATURATED_FLUX = 60000.0

MSG_OPTIONS_CHANGED = (
    "{directory} holds a demo made with other options ({old}); this run asks for {new}. "
    "Use another directory, or --force to delete it and start again."
)


@dataclass
class DemoResult:
    """What :func:`run_demo` did and found."""

    directory: Path
    repo_root: Path
    report_index: Path | None
    campaign: Any = None
    """The :class:`cpframe.campaign.runner.CampaignResult`."""
    deploy: Any = None
    """The :class:`cpframe.campaign.deploy.DeployResult` (None if deployment did not run)."""
    verdicts: dict = field(default_factory=dict)
    """Verified product (``bias``, ``flat-g``...) -> (passed, list of failures)."""
    timings_s: dict = field(default_factory=dict)
    """Stage -> wall time, seconds."""
    broken: "BrokenInput | None" = None
    """What the broken campaign found, when ``broken`` was asked."""
    ledger: Any = None
    """The set's :class:`cpframe.campaign.lifecycle.SetStatus` after the demo (docs/lifecycle.md)."""
    types: list | None = None
    """``--full-set``: one :class:`TypeStatus` per calibration type (None for the plain demo)."""

    @property
    def broken_detected(self) -> bool | None:
        """True when the broken campaign's flat verification failed (None without ``broken``)."""
        if self.broken is None:
            return None
        kind = BROKEN_KINDS[self.broken.kind]
        return any(not ok and any(f.endswith(f" {kind.test}") for f in fails)
                   for name, (ok, fails) in self.broken.verdicts.items()
                   if name == kind.product or name.startswith(kind.product + "-"))

    @property
    def passed(self) -> bool:
        """Every verified product passed and the deployment self-check passed."""
        ok = bool(self.verdicts) and all(v[0] for v in self.verdicts.values())
        ok = ok and all(t.ok for t in self.types or () if not t.not_run)
        return ok and (self.deploy is None or self.deploy.ok)

    def summary(self) -> str:
        """The lines a person acts on: verdicts, report, record, times."""
        lines = ["Verification:", *_verdict_lines(self.verdicts)]
        if self.types is not None:
            lines += ["Calibration types (full set):", *(t.line() for t in self.types)]
        if self.deploy is not None:
            lines.append(f"Deployment: {self.deploy.headline()}")
        lines.append(f"Repository: {self.repo_root}")
        if self.campaign is not None:
            lines.append(f"Construction record: {self.campaign.directory / 'commands.sh'}")
        if self.timings_s:
            lines.append("Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.timings_s.items())
                         + f" (total {sum(self.timings_s.values()):.0f} s)")
        lines.append(f"Report: {self.report_index}" if self.report_index else "Report: not written")
        lines.append("RESULT: " + ("all products pass verification" if self.passed
                                   else "some verification tests FAIL (red in the report)"))
        if self.ledger is not None:
            st = self.ledger
            lines.append(f"Ledger: {st.name} is {st.state}" + (" (deployed by the demo as an explicit override, "
                                                               "not reviewed)" if st.override else ""))
            lines.append(f"Next step: {st.next_step(str(self.repo_root))}")
        if self.broken is not None:
            b = self.broken
            kind = BROKEN_KINDS[b.kind]
            where = f"the {b.band} flat" if kind.product == "flat" else f"the {kind.product}"
            lines.append(f"With the broken input ({b.kind}: {kind.what}, exposure {b.exposure_id} "
                         f"added to {where}):")
            lines += _verdict_lines(b.verdicts)
            lines.append(f"  report: {b.report_index}")
            lines.append("  " + (f"verification caught it: {kind.product} {kind.test} failed (red in that report)"
                                 if self.broken_detected else
                                 f"verification did NOT catch it ({kind.product} {kind.test} should fail)"))
        return "\n".join(lines)


def _verdict_lines(verdicts: dict) -> list[str]:
    """One line per verified product: PASS/FAIL, name and the first failures.

    >>> _verdict_lines({"bias": (True, []), "flat-r": (False, ["a", "b", "c", "d"])})
    ['  PASS  bias', '  FAIL  flat-r  (4 failing: a, b, c, ...)']
    """
    lines = []
    for name, (ok, failures) in sorted(verdicts.items()):
        more = ", ..." if len(failures) > 3 else ""
        shown = f"  ({len(failures)} failing: {', '.join(failures[:3])}{more})" if failures else ""
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}{shown}")
    return lines


@dataclass(frozen=True)
class TypeStatus:
    """One calibration type of ``--full-set``: built, certified, verified."""

    name: str
    """Product (``flat-g``, ``flat_gradient_reference-r``...)."""
    built: int = 0
    """Datasets in the certified CALIBRATION collection."""
    certified: str = ""
    """That collection, when it is in the ticket chain (else "")."""
    verdict: bool | None = None
    """Verification passed / failed; None when no verification step ran."""
    failures: tuple[str, ...] = ()
    truth: str = ""
    """What the verification compares with the simulator's truth."""
    not_run: str = ""
    """Why the type is not in this run."""

    @property
    def ok(self) -> bool:
        return self.built > 0 and bool(self.certified) and self.verdict is True

    def line(self) -> str:
        """``  PASS  linearizer  (3 datasets certified in .../linearizer.20241111a; verified)``.

        >>> TypeStatus("cti", not_run="needs stars").line()
        '  --    cti  not run: needs stars'
        """
        if self.not_run:
            return f"  --    {self.name}  not run: {self.not_run}"
        word = "PASS" if self.ok else "FAIL"
        verdict = {True: "verified", False: "verification FAILS", None: "not verified"}[self.verdict]
        where = f"certified in {self.certified}" if self.certified else "NOT certified in the ticket chain"
        fails = f"; failing: {', '.join(self.failures[:3])}" if self.failures else ""
        return f"  {word}  {self.name}  ({self.built} datasets {where}; {verdict}{fails})"


def type_statuses(camp: Any, repo: Any, verdicts: dict, types: Sequence[Any] = ()) -> list[TypeStatus]:
    """Per certified type of ``camp``: datasets certified, whether in the ticket chain, verdict.

    ``types`` (:data:`cpframe.campaign.fullset.FULL_SET` entries) add the truth each
    verification checks, and a row for each type that does not run (its ``not_run``), or whose
    steps the campaign left out (e.g. a band not asked for).
    """
    truth = {t.name: t.truth for t in types}
    try:
        chain = set(repo.registry.get_chain(camp.ticket_chain))
    except CpframeError:  # the campaign has not certified anything yet
        chain = set()
    out = []
    seen = set()
    for s in camp.steps:
        if s.kind != "certify":
            continue
        name = s.dataset_type + (f"-{s.band}" if s.band else "")
        seen.add(name)
        try:
            n = len(repo.registry.query_datasets(s.registry_type, collections=[s.output]))
        except CpframeError:  # the step has not run
            n = 0
        ok, fails = verdicts.get(name, (None, []))
        out.append(TypeStatus(name, n, s.output if s.output in chain else "", ok, tuple(fails), truth.get(name, "")))
    for t in types:
        if t.name not in seen:
            out.append(TypeStatus(t.name, truth=t.truth,
                                  not_run=t.not_run or "left out of this campaign (its band was not asked for)"))
    return out


@dataclass
class BrokenInput:
    """The deliberately broken input of ``--broken`` and what verification made of it."""

    kind: str
    """A key of :data:`BROKEN_KINDS`."""
    exposure_id: int
    """The exposure added."""
    band: str
    """Band of the flat it was added to (saturated), else ""."""
    verdicts: dict = field(default_factory=dict)
    """Product -> (passed, failures) of the broken campaign."""
    report_index: Path | None = None


def _options(full: bool, detectors: Sequence[int], bands: Sequence[str], broken: str | None,
             seed: int, full_set: bool = False) -> dict:
    out = {"scale": "full" if full else "mini", "detectors": sorted(int(d) for d in detectors),
           "bands": sorted(bands), "broken": broken, "seed": int(seed)}
    if full_set:  # only then: a plain demo's directory keeps its marker
        out["full_set"] = True
    return out


def _full_set_plan(directory: Path) -> Any:
    """The demo plan with every full-set type's exposures (written to ``directory/plan-full-set.yaml``)."""
    from cpframe.camera.plan import read_plan
    from cpframe.campaign.fullset import full_set_plan
    from cpframe.core.paths import package_dir

    base = yaml.safe_load((package_dir() / "data" / "plans" / "demo.yaml").read_text())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plan-full-set.yaml"
    path.write_text("# cpframe demo --full-set: the demo plan plus every type's exposures "
                    "(cpframe/campaign/fullset.py)\n" + yaml.safe_dump(full_set_plan(base), sort_keys=False))
    return read_plan(path)


def plan_bands(plan: Any) -> list[str]:
    """Bands the plan has flat selections for (``SELECTION_FLAT_<band>``)."""
    return sorted(k.rsplit("_", 1)[1] for k in plan.selections if re.fullmatch(r"SELECTION_FLAT_[a-z]", k))


def broken_band(bands: Sequence[str]) -> str:
    """Band of the saturated flat: g when the demo has it, else its first band.

    >>> broken_band(["i", "r"]), broken_band(["g", "r"])
    ('i', 'g')
    """
    return "g" if "g" in bands else sorted(bands)[0]


def _demo_specs(plan: Any, bands: Sequence[str], broken: str | None) -> tuple[list, dict, dict, Any]:
    """The plan's exposures for the chosen bands (+ the broken one), the selections, the
    selections of the broken campaign (empty without ``broken``) and the broken exposure."""
    from cpframe.camera.models import load_camera

    cam = load_camera(plan.instrument)
    flat_bands = plan_bands(plan)
    unknown = [b for b in bands if b not in flat_bands]
    if unknown:
        raise UserInputError(
            f"--bands {','.join(unknown)}: the demo plan has flats in {', '.join(flat_bands)} only."
        )
    # exposures meant only for the flats of bands left out are not simulated
    unwanted = {f"SELECTION_FLAT_{b}{v}" for b in set(flat_bands) - set(bands) for v in ("", "_V")}
    elsewhere = {e for sel, ids in plan.intended.items() if sel not in unwanted for e in ids}
    drop = {e for sel in unwanted for e in plan.intended.get(sel, ())} - elsewhere
    specs = [s for s in plan.specs if s.exposure_id not in drop]
    selections = dict(plan.selections)
    bad_selections: dict[str, str] = {}
    bad = None
    if broken is not None:
        kind = BROKEN_KINDS[broken]
        if kind.product == "flat":
            band = broken_band(bands)
            sels = (f"SELECTION_FLAT_{band}", f"SELECTION_FLAT_{band}_V")
            meant = set(plan.intended.get(sels[0], ()))
            like = [s for s in plan.specs if s.exposure_id in meant
                    and s.observation_type == "flat" and cam.band_of(s.physical_filter) == band]
            changes = {"flux": SATURATED_FLUX}
        else:
            sels = (f"SELECTION_{kind.product.upper()}", f"SELECTION_{kind.product.upper()}_V")
            meant = set(plan.intended.get(sels[0], ()))
            like = [s for s in plan.specs if s.exposure_id in meant and s.observation_type == kind.product]
            changes = {"flux": LEAK_FLUX} if broken == "light-leak" else {}
        last = max((s for s in plan.specs if s.day_obs == like[0].day_obs), key=lambda s: s.end_ns)
        from cpframe.core.model import ns_to_iso

        bad = replace(like[0], seq_num=max(s.seq_num for s in plan.specs if s.day_obs == last.day_obs) + 1,
                      begin=ns_to_iso(last.end_ns + 3 * 10**9), **changes)
        if broken != "noisy":  # the noisy bias is simulated apart, with its own truth (_simulate)
            specs.append(bad)
        extra = (f" or (instrument='{plan.instrument}' and exposure.day_obs={bad.day_obs} "
                 f"and exposure.seq_num={bad.seq_num})")
        bad_selections = {sel: f"({selections[sel]}){extra}" for sel in sels}
    return specs, selections, bad_selections, bad


def _needs_flat_of(plan: Any) -> dict[str, set[str]]:
    """Verify step -> bands of the flats its exposures need (science and defects verification)."""
    from cpframe.camera.models import load_camera

    cam = load_camera(plan.instrument)
    by_id = {s.exposure_id: s for s in plan.specs}
    out = {}
    for step, sel in (("verify-science", "SELECTION_SCIENCE_V"), ("verify-defects", "SELECTION_DEFECTS_V")):
        out[step] = {cam.band_of(by_id[e].physical_filter) for e in plan.intended.get(sel, ()) if e in by_id}
    return out


def demo_campaign(repo_root: Path, bands: Sequence[str], selections: dict[str, str],
                  detectors: Sequence[int] | None = None, flat_needs: dict[str, set[str]] | None = None,
                  extra_steps: Sequence[dict] = (), templates: dict | None = None):
    """The demo campaign (``templates/campaign_demo.yaml``) for ``repo_root``, ``bands`` and ``detectors``.

    When only some detectors were simulated, every selection is narrowed to them, and so is
    the defects step's ``dataQuery`` (its template selects every detector of the instrument,
    ``instrument='X'``, as cp_pipe's does) with a command-line key override, as ``bps submit``
    allows.
    Verify steps whose exposures need the flat of a band left out (``flat_needs``) are dropped.
    ``extra_steps`` (campaign-file form, ``--full-set``) are added before the verification steps;
    the campaign orders them by the calibration dependencies.  ``templates`` (name -> path) replaces
    the shipped templates of the demo's own steps (``--full-set``: copies with mini-detector options).
    """
    from cpframe.camera.models import load_camera
    from cpframe.campaign.runner import parse_campaign
    from cpframe.execution.templates import default_templates_dir

    path = default_templates_dir() / "campaign_demo.yaml"
    doc = yaml.safe_load(path.read_text())
    if extra_steps:
        first_verify = next(i for i, s in enumerate(doc["steps"]) if s["name"].startswith("verify-"))
        doc["steps"][first_verify:first_verify] = [dict(s) for s in extra_steps]
        doc["name"] = "demo-full-set"
        doc["description"] = "The demo's products and every other type cpframe builds (cpframe demo --full-set)"
    for s in doc["steps"]:
        if s.get("template") in (templates or {}):
            s["template"] = str(templates[s["template"]])
    doc["steps"] = [s for s in doc["steps"] if s.get("band", _band_of_step(s)) in (None, *bands)
                    and (flat_needs or {}).get(s["name"], set()) <= set(bands)]
    if detectors is not None and set(detectors) != set(load_camera(DEMO_INSTRUMENT).detector_ids):
        dets = f"detector in ({', '.join(str(d) for d in sorted(detectors))})"
        # per-detector pipelines (defects, PTC verification) plan every detector the query allows
        selections = {k: f"({v}) and {dets}" for k, v in selections.items()}
        for s in doc["steps"]:
            if s["name"] == "defects":
                s["vars"] = {**s.get("vars", {}), "dataQuery": f"instrument='{DEMO_INSTRUMENT}' and {dets}"}
    overrides = {"REPO": str(repo_root), **selections}
    return parse_campaign(yaml.safe_dump(doc, sort_keys=False), path, overrides)


def broken_campaign(repo_root: Path, good: Any, selections: dict[str, str], broken: str = "saturated"):
    """A small campaign that rebuilds and verifies one product with the broken exposure included.

    It reads the good campaign's calibrations (its ticket chain, then the curated ones) and
    writes under its own ticket (``<TICKET>-<tag>``), so the good calibrations stay as they are.
    """
    from cpframe.campaign.runner import parse_campaign
    from cpframe.execution.templates import default_templates_dir

    path = default_templates_dir() / "campaign_demo.yaml"
    doc = yaml.safe_load(path.read_text())
    kind = BROKEN_KINDS[broken]
    if kind.product == "flat":
        band = next(k.split("_")[2] for k in selections if k.startswith("SELECTION_FLAT_"))
        name = f"flat-{band}"
    else:
        name = kind.product
    keep = (name, f"certify-{name}", f"verify-{name}", "report")
    doc["name"] = f"demo-{'saturated-flat' if kind.product == 'flat' else broken}"
    doc["steps"] = [s for s in doc["steps"] if s["name"] in keep]
    v = good.variables
    tag = "saturatedFlat" if kind.product == "flat" else {"light-leak": "lightLeak"}.get(broken, broken)
    overrides = {**good.overrides, **selections, "TICKET": f"{v['TICKET']}-{kind.tag}", "TAG": tag,
                 "CALIB_COLLECTIONS": f"{good.ticket_chain},{v['CALIB_COLLECTIONS']}", "REPO": str(repo_root)}
    return parse_campaign(yaml.safe_dump(doc, sort_keys=False), path, overrides)


def _band_of_step(step: dict) -> str | None:
    from cpframe.campaign.spec import _infer_from_template

    if "template" in step:
        return _infer_from_template(str(step["template"]))[2]
    return None


def run_demo(
    directory: str | Path = "cpframe-demo",
    *,
    full: bool = False,
    workers: int | None = None,
    bands: Sequence[str] | None = None,
    detectors: Sequence[int] | None = None,
    broken: str | None = None,
    seed: int = 1,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
    client: Any = None,
    full_set: bool = False,
) -> DemoResult:
    """Simulate, ingest, run the demo campaign, deploy and summarise (see the module docstring).

    Parameters
    ----------
    directory : path
        Where everything goes (``raw/``, ``repo/``, the report under ``repo/reports``).
    full : bool
        Real detector size instead of mini.
    workers : int, optional
        Dask workers of the local cluster (and simulator processes); default: settings.
    bands : sequence of str, optional
        Flat bands (default: every band of the demo plan).
    detectors : sequence of int, optional
        Detector ids (default :data:`DEFAULT_DETECTORS`).
    broken : {"saturated", "saturated-flat", "light-leak", "noisy"}, optional
        Add a deliberately broken input.
    seed : int
        Simulator seed.
    force : bool
        Delete ``directory`` first.
    echo : callable, optional
        Progress lines.
    client : distributed.Client, optional
        Use this Dask client instead of starting a local cluster.
    full_set : bool
        Every calibration type (:data:`cpframe.campaign.fullset.FULL_SET`), each with its simulator effect.

    Returns
    -------
    DemoResult

    Raises
    ------
    UserInputError
        Bad option values, or ``directory`` holds a demo made with other options.
    CampaignError
        A campaign step failed (the message says how to resume).
    """
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import read_plan
    from cpframe.core.config import load_settings

    echo = echo or (lambda _m: None)
    if broken is not None and broken not in BROKEN_INPUTS:
        raise UserInputError(f"--broken {broken!r}: use one of {', '.join(BROKEN_INPUTS)}.")
    if broken is not None and full_set:
        raise UserInputError("--broken and --full-set: use one at a time (the broken input is a plain-demo check).")
    d = Path(directory).absolute()
    plan = read_plan("demo")
    cam = load_camera(plan.instrument)
    bands = list(bands) if bands else plan_bands(plan)
    detectors = list(detectors) if detectors is not None else list(DEFAULT_DETECTORS)
    for det in detectors:
        cam.detector(det)  # CameraError names the valid ids
    opts = _options(full, detectors, bands, broken, seed, full_set)
    specs, selections, bad_selections, bad_spec = _demo_specs(plan, bands, broken)  # validates bands first
    if force and d.exists():
        shutil.rmtree(d)
    marker = d / "demo.json"
    if marker.exists():
        old = json.loads(marker.read_text())
        if old != opts:
            raise UserInputError(MSG_OPTIONS_CHANGED.format(directory=d, old=old, new=opts))
    elif d.exists() and any(d.iterdir()):
        raise UserInputError(
            f"{d} exists and is not a cpframe demo directory; choose another one or --force."
        )
    d.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(opts, indent=2))
    extra_steps: list[dict] = []
    templates: dict = {}
    effects: dict = {}
    types: tuple = ()
    if full_set:
        from cpframe.campaign.fullset import FULL_SET, full_set_effects, full_set_steps, full_set_templates

        types = FULL_SET
        plan = _full_set_plan(d)
        specs, selections, _, _ = _demo_specs(plan, bands, None)
        effects = full_set_effects(types)
        templates = full_set_templates(d / "templates", types)
        extra_steps = full_set_steps(types, templates)
        for t in types:
            if t.not_run:
                echo(f"(--full-set: {t.name} not run: {t.not_run})")
    settings = load_settings({"n_workers": workers} if workers else None)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    raw_dir = d / "raw"
    files = _simulate(specs, raw_dir, opts, settings.n_workers, echo,
                      noisy=bad_spec if broken == "noisy" else None, effects=effects)
    timings["simulate"] = time.monotonic() - t0

    t0 = time.monotonic()
    repo_root = d / "repo"
    flat_needs = _needs_flat_of(plan)
    if full_set:  # a type whose ISR applies the flat of a band left out is left out too (and said so below)
        from cpframe.campaign.fullset import full_set_flat_needs

        flat_needs.update(full_set_flat_needs(types))
    camp = demo_campaign(repo_root, bands, selections, detectors, flat_needs, extra_steps, templates)
    for step, need in flat_needs.items():
        if not need <= set(bands):
            echo(f"({step} left out: its exposures need the {', '.join(sorted(need))} flat; "
                 "add it with --bands)")
    repo = _prepare_repo(repo_root, camp, files, opts["scale"], echo)
    timings["ingest"] = time.monotonic() - t0

    from cpframe.campaign.runner import CampaignState, campaign_dir, format_plan, plan_status, run_campaign

    echo(format_plan(camp, plan_status(camp, repo)))
    argv = ["cpframe", "demo", str(directory), *_cli_options(opts, plan_bands(plan))]
    again = sh_join(argv)
    t0 = time.monotonic()
    own = None
    if client is None:
        from cpframe.execution.cluster import open_cluster

        own = open_cluster(replace(settings, cluster_kind="local"))
        client = own.client
        echo(own.summary())
    bad = None
    try:
        repo.close()
        result = run_campaign(camp, resume=CampaignState.load(campaign_dir(camp)).exists, deploy_step=True,
                              client=client, settings=settings, echo=echo, argv=argv,
                              resume_hint=again)
        timings["campaign"] = time.monotonic() - t0
        if bad_selections:
            t0 = time.monotonic()
            bad = broken_campaign(repo_root, camp, bad_selections, broken)
            kind = BROKEN_KINDS[broken]
            echo("")
            echo(f"Now the {broken_band(bands) + ' flat' if kind.product == 'flat' else kind.product} again, "
                 f"with {kind.what} added to its selections ({kind.test} must fail):")
            echo(format_plan(bad))
            bad_result = run_campaign(bad, resume=CampaignState.load(campaign_dir(bad)).exists, client=client,
                                      settings=settings, echo=echo, argv=argv, resume_hint=again)
            timings["broken campaign"] = time.monotonic() - t0
    finally:
        if own is not None:
            own.close()
    out = DemoResult(d, repo_root, result.report_index, result, result.deploy, timings_s=timings)
    from cpframe.campaign.deploy import deploy
    from cpframe.campaign.runner import _open_repo, _split_collections

    r = _open_repo(camp.repo)
    try:
        out.verdicts = verification_verdicts(camp, r)
        if full_set:
            out.types = type_statuses(camp, r, out.verdicts, types)
        if out.deploy is None:
            # deployed by an earlier run of the demo: show the self-check again (changes nothing)
            out.deploy = deploy(r.registry, camp.instrument, camp.ticket_chain,
                                raw_collection=camp.variables["RAW_COLLECTION"],
                                calib_collections=_split_collections(camp.variables["CALIB_COLLECTIONS"]))
        from cpframe.campaign.lifecycle import record_observed

        out.ledger = record_observed(r, camp.ticket_chain)
        if bad is not None:
            band = broken_band(bands) if BROKEN_KINDS[broken].product == "flat" else ""
            out.broken = BrokenInput(broken, bad_spec.exposure_id, band,
                                     verification_verdicts(bad, r), bad_result.report_index)
    finally:
        r.close()
    return out


def _cli_options(opts: dict, default_bands: Sequence[str]) -> list[str]:
    """The ``cpframe demo`` options that reproduce ``opts``.

    >>> opts = {"scale": "mini", "detectors": [4], "bands": ["g"], "broken": None, "seed": 1}
    >>> _cli_options(opts, ["g", "r"])
    ['--detectors', '4', '--bands', 'g']
    """
    args = ["--full"] if opts["scale"] == "full" else []
    if opts["detectors"] != sorted(DEFAULT_DETECTORS):
        args += ["--detectors", ",".join(map(str, opts["detectors"]))]
    if opts["bands"] and opts["bands"] != sorted(default_bands):
        args += ["--bands", ",".join(opts["bands"])]
    if opts["broken"]:
        args += ["--broken", opts["broken"]]
    if opts.get("full_set"):
        args += ["--full-set"]
    return args


def _simulate(specs: list, raw_dir: Path, opts: dict, workers: int,
              echo: Callable[[str], None], noisy: Any = None, effects: dict | None = None) -> list[Path]:
    """Simulate once; a finished simulation (marker file) is reused.

    ``noisy``: one more exposure, simulated into ``raw_dir/noisy`` with a truth whose amp
    :data:`NOISY_AMP` has :data:`NOISY_FACTOR` times the read noise on every detector.
    ``effects``: simulator effects switched on (``make_truth`` keywords, ``--full-set``).
    """
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import make_truth, simulate

    done = raw_dir / ".complete"
    if done.exists():
        files = sorted(p for p in raw_dir.rglob("*.fits"))
        echo(f"simulation: reusing {len(files)} raw files in {raw_dir}")
        return files
    echo(f"simulating {len(specs)} exposures x {len(opts['detectors'])} detectors ({opts['scale']}) "
         f"into {raw_dir} ...")
    truth = make_truth(load_camera(DEMO_INSTRUMENT, opts["scale"]), opts["seed"], **effects) if effects else None
    if effects:
        echo("simulator effects on: " + ", ".join(f"{k}={v}" for k, v in effects.items()))
    files = simulate(specs, raw_dir, DEMO_INSTRUMENT, scale=opts["scale"], seed=opts["seed"],
                     detectors=opts["detectors"], workers=workers, truth=truth) if specs else []
    if noisy is not None:
        truth = make_truth(load_camera(DEMO_INSTRUMENT, opts["scale"]), opts["seed"])
        for d in truth.detectors.values():
            a = d.amps[NOISY_AMP]
            d.amps[NOISY_AMP] = replace(a, read_noise=NOISY_FACTOR * a.read_noise)
        files = list(files) + list(simulate([noisy], raw_dir / "noisy", DEMO_INSTRUMENT, scale=opts["scale"],
                                            seed=opts["seed"], detectors=opts["detectors"], workers=workers,
                                            truth=truth))
    done.write_text(f"{len(files)} files\n")
    return files


def _prepare_repo(root: Path, camp: Any, files: list[Path], scale: str, echo: Callable[[str], None]):
    """Create (or open) the repository, register the camera, ingest raws, write curated calibrations."""
    from cpframe.repository.repo import Repository

    repo = Repository.open(root) if (root / "cpframe-repo.yaml").exists() else Repository.create(root)
    try:
        repo.register_instrument(DEMO_INSTRUMENT, scale=scale)
        n = _ingest(repo, files, camp.variables["RAW_COLLECTION"])
        echo(f"ingest: {n} raw files in {camp.variables['RAW_COLLECTION']}")
        curated = [c for c in camp.variables["CALIB_COLLECTIONS"].split(",") if c.strip()]
        if curated:
            _write_curated(repo, curated[0].strip(), scale, echo)
    except BaseException:
        repo.close()
        raise
    return repo


def _ingest(repo: Any, files: list[Path], run: str) -> int:
    """Ingest raws with the data area's ingest (adapter)."""
    from cpframe.repository import ingest
    report = ingest.ingest_raws(repo, files, run=run, transfer="symlink")
    if report.failed:
        raise CampaignError("ingest of the simulated raws failed:\n" + report.summary(max_lines=10))
    return len(report.ingested) + len(report.skipped)


def _write_curated(repo: Any, collection: str, scale: str, echo: Callable[[str], None]) -> None:
    from cpframe.camera.curated import list_curated, write_curated_calibrations

    if not list_curated(DEMO_INSTRUMENT):
        return
    rep = write_curated_calibrations(repo, DEMO_INSTRUMENT, collection, scale=scale)
    echo(f"curated calibrations: {len(rep.written)} written, {len(rep.skipped)} already there, "
         f"certified in {rep.collection} (the campaign reads them through CALIB_COLLECTIONS)")


def _flatten_failures(failures: Any) -> list[str]:
    """FAILURES of a summary (a list, or exposure/detector -> list) as flat strings.

    >>> _flatten_failures({"2024112600027": ["R22_S11 C10 NOISE"], "x": []})
    ['2024112600027: R22_S11 C10 NOISE']
    """
    if isinstance(failures, dict):
        return [f"{k}: {f}" for k, fs in failures.items() for f in (fs if isinstance(fs, list) else [fs])]
    return [str(f) for f in failures or []]


def _summary_type(repo: Any, output: str) -> str | None:
    """The ``verify...Summary`` dataset type written into ``output`` (None when there is none)."""
    try:
        refs = repo.registry.query_datasets(None, collections=[output])
    except CpframeError:  # the step has not run
        return None
    names = sorted({r.dataset_type for r in refs if r.dataset_type.startswith("verify")
                    and r.dataset_type.endswith("Summary")})
    return names[0] if names else None


def verification_verdicts(camp: Any, repo: Any) -> dict[str, tuple[bool, list[str]]]:
    """Product -> (passed, failures), read from the ``verify<Type>Summary`` of each verify step.

    The summary is looked up find-first through the step's output chain (its newest RUN).
    A verify step without a summary counts as failed ("no summary").
    """
    from cpframe.campaign.runner import expected_outputs
    from cpframe.verify.core import dataset_type_name
    from cpframe.verify.results import read_summary

    out: dict[str, tuple[bool, list[str]]] = {}
    for s in camp.steps:
        if s.kind != "submit" or not s.verifies:
            continue
        name = s.verifies + (f"-{s.band}" if s.band else "")
        output = expected_outputs(camp, s)["output"] or s.gen_output
        try:
            dtype = dataset_type_name(s.verifies, "Summary")
        except UserInputError:  # a target whose stage is named otherwise (linearizer: verifyLinearitySummary)
            dtype = _summary_type(repo, output) or f"verify<{s.verifies}>Summary"
        try:
            refs = repo.registry.query_datasets(dtype, collections=[output], find_first=True)
        except CpframeError:  # e.g. UnknownCollectionError: the step has not run
            refs = []
        if not refs:
            out[name] = (False, [f"no {dtype} in {output}"])
            continue
        summary = read_summary(repo.get_path(refs[0]))
        out[name] = (bool(summary.get("SUCCESS")), _flatten_failures(summary.get("FAILURES")))
    return out
