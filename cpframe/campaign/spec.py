"""A campaign file, read and validated: the vocabulary, :class:`Step`, :class:`Campaign`,
:func:`load_campaign` / :func:`parse_campaign` and the dependency order (:func:`order_steps`).

Pure: reads the file and the templates it names, never the registry.  Running the
parsed campaign is :mod:`cpframe.campaign.runner`; its state and construction record
are :mod:`cpframe.campaign.state`.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cpframe.campaign.model import (
    _RERUN_RE,
    _STEP_NAME_RE,
    _VAR_RE,
    CERTIFIABLE,
    CERTIFIED_STEM,
    DERIVED_VARIABLES,
    GEN_STEM,
    PER_BAND,
    PER_LED,
    PRODUCT_NEEDS,
    REQUIRED_VARIABLES,
    SELECTION_OF_BUILD,
    SELECTION_OF_VERIFY,
    STEP_KINDS,
    STEP_SCHEMAS,
    TEMPLATE_STEMS,
    USES_WHEN_CERTIFIED,
    VERIFY_TARGETS,
    Campaign,
    CampaignFile,
    Step,
)
from cpframe.core.errors import CampaignError, CpframeError
from cpframe.core.schema import check, read_yaml
from cpframe.repository.names import collection_name_problem


def parse_var_options(items: Iterable[str]) -> dict[str, str]:
    """Parse ``--var NAME=VALUE`` options.

    >>> parse_var_options(["RERUN=20250207b", "USER_CALIB_PREFIX="])
    {'RERUN': '20250207b', 'USER_CALIB_PREFIX': ''}
    """
    out: dict[str, str] = {}
    bad = []
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            bad.append(item)
            continue
        out[name] = value
    if bad:
        raise CampaignError(
            f"--var expects NAME=VALUE; got {', '.join(repr(b) for b in bad)}. "
            "Example: --var RERUN=20250207b"
        )
    return out


def _substitute(text: str, variables: Mapping[str, str], missing: set[str]) -> str:
    """Replace ``${NAME}`` / ``$NAME``; unknown names are collected in ``missing``.

    >>> _substitute("${A}/x/$B", {"A": "1", "B": "2"}, set())
    '1/x/2'
    """

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in variables:
            return variables[name]
        missing.add(name)
        return m.group(0)

    return _VAR_RE.sub(repl, text)


def _resolve_variables(raw: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """Expand references between variables (``SELECTION_PTC_BFK: ${SELECTION_PTC}``)."""
    resolved: dict[str, str] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> str:
        if name in resolved:
            return resolved[name]
        if name in stack:
            problems.append(f"variables refer to each other in a loop: {' -> '.join(stack + (name,))}")
            resolved[name] = raw[name]
            return raw[name]

        def repl(m: re.Match) -> str:
            ref = m.group(1) or m.group(2)
            if ref in raw:
                return resolve(ref, stack + (name,))
            return m.group(0)  # left for the step-level check (may be an env-style literal)

        value = _VAR_RE.sub(repl, raw[name])
        resolved[name] = value
        return value

    for n in raw:
        resolve(n, ())
    return resolved


def _check_variables(v: Mapping[str, str], steps_raw: list, problems: list[str]) -> None:
    """Value checks of the DMTN-222 variables (each problem appended, none raised)."""
    for name in ("RERUN", "CERT_RERUN", "VERIFY_RERUN"):
        if name in v and not _RERUN_RE.match(v[name]):
            problems.append(
                f"{name}={v[name]!r} is not a rerun; use YYYYMMDD plus one letter, e.g. 20250207a"
            )
    prefix = v.get("USER_CALIB_PREFIX")
    if prefix and not prefix.endswith("/"):
        problems.append(
            f"USER_CALIB_PREFIX={prefix!r} must end with '/' (e.g. 'u/{prefix.strip('/')}/'), "
            "or be empty for official calibrations"
        )
    if "START_DATE" in v:
        from cpframe.core.model import parse_tai

        try:
            parse_tai(v["START_DATE"], "START_DATE")
        except CpframeError as err:
            problems.append(str(err))
    if "BOOTSTRAP_RUN_NUMBER" in v and not re.fullmatch(r"[1-9][0-9]*", v["BOOTSTRAP_RUN_NUMBER"]):
        problems.append(
            f"BOOTSTRAP_RUN_NUMBER={v['BOOTSTRAP_RUN_NUMBER']!r} must be a positive integer, e.g. 1"
        )
    if "INSTRUMENT" in v:
        from cpframe.camera.models import list_instruments

        if v["INSTRUMENT"] not in list_instruments():
            problems.append(
                f"INSTRUMENT={v['INSTRUMENT']!r} is not a camera cpframe knows; "
                f"use one of {', '.join(list_instruments())}"
            )
    for name in ("RAW_COLLECTION", "TICKET_CHAIN", "TAG_PREFIX"):
        if name in v:
            bad = collection_name_problem(v[name])
            if bad:
                problems.append(f"{name} gives the collection name {v[name]!r}, which {bad}")
    for c in _split_collections(v.get("CALIB_COLLECTIONS", "")):
        bad = collection_name_problem(c)
        if bad:
            problems.append(f"CALIB_COLLECTIONS entry {c!r} {bad}")


def _split_collections(text: str) -> list[str]:
    """Split a comma-separated collection list, dropping empty entries.

    >>> _split_collections("a, b,,c")
    ['a', 'b', 'c']
    """
    return [c.strip() for c in str(text).split(",") if c.strip()]


_TEMPLATE_NAME_RE = re.compile(r"^bps_(verify_)?([A-Za-z]+?)(?:_([a-z]+))?\.ya?ml$")


def _infer_from_template(path: str) -> tuple[str | None, str | None, str | None]:
    """Guess (builds, verifies, band) from a DMTN-222 template file name.

    >>> _infer_from_template("templates/bps_flat_g.yaml")
    ('flat', None, 'g')
    >>> _infer_from_template("bps_verify_bias.yaml")
    (None, 'bias', None)
    >>> _infer_from_template("bps_gain_correction.yaml"), _infer_from_template("bps_verify_gain_correction.yaml")
    (('gain_correction', None, None), (None, 'gain_correction', None))
    >>> _infer_from_template("bps_flat_gradient_reference_r.yaml")
    ('flat_gradient_reference', None, 'r')
    >>> _infer_from_template("bps_electrostaticBFDistortionMatrix.yaml")
    ('electroBfDistortionMatrix', None, None)
    >>> _infer_from_template("bps_verify_electrostaticBFDistortionMatrix.yaml")
    (None, 'electroBfDistortionMatrix', None)
    >>> _infer_from_template("bps_flat_anaglyph_g.yaml"), _infer_from_template("bps_verify_flat_anaglyph_g.yaml")
    (('flat_anaglyph', None, 'g'), (None, 'flat_anaglyph', 'g'))
    >>> _infer_from_template("bps_flat_singleled_white.yaml"), _infer_from_template("bps_flat_single_led.yaml")
    (('flat_single_led', None, None), ('flat_single_led', None, None))
    >>> _infer_from_template("bps_verify_flat_single_led.yaml")
    (None, 'flat_single_led', None)
    """
    stem = Path(path).stem.removeprefix("bps_")
    verify = stem.startswith("verify_")
    if stem.removeprefix("verify_") in TEMPLATE_STEMS:  # cp_pipe's name differs from the product's
        product = TEMPLATE_STEMS[stem.removeprefix("verify_")]
        return (None, product, None) if verify else (product, None, None)
    if stem in PRODUCT_NEEDS:  # names with '_' (gain_correction)
        return stem, None, None
    if stem[:-2] in PRODUCT_NEEDS and stem[-2] == "_":  # flat_gradient_reference_<band>
        return stem[:-2], None, stem[-1]
    if stem.startswith("verify_") and stem.removeprefix("verify_") in VERIFY_TARGETS:
        return None, stem.removeprefix("verify_"), None
    if stem.startswith("verify_") and stem[7:-2] in PER_BAND and stem[-2] == "_" and stem[7:-2] != "flat":
        return None, stem[7:-2], stem[-1]  # verify_flat_gradient_reference_<band>
    m = _TEMPLATE_NAME_RE.match(Path(path).name)
    if not m:
        return None, None, None
    verify, what, band = m.groups()
    if verify:
        return None, what, band
    return what, None, band


def _find_template(name: str, base: Path) -> Path | None:
    """Resolve a template: absolute, relative to the campaign file, then the project's templates/."""
    p = Path(name).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for root in (base, base / "templates", Path(__file__).resolve().parents[2] / "templates", Path.cwd()):
        if (root / p).exists():
            return (root / p).resolve()
    return None


def _gen_names(builds: str, band: str | None, v: Mapping[str, str], led: str | None = None) -> tuple[str, str | None]:
    """Conventional generation chain and fixed RUN (bootstraps) of a product (templates.md §4)."""
    stem = GEN_STEM[builds] + (f"-{band}" if band else "") + (f"-{led}" if led else "")
    out = f"{v['TAG_PREFIX']}/{stem}.{v['RERUN']}"
    run = f"{out}/run{v.get('BOOTSTRAP_RUN_NUMBER', '1')}" if builds.endswith("Bootstrap") else None
    return out, run


def _rendered_output(path: Path, variables: Mapping[str, str]) -> str | None:
    """``payload.output`` of a template rendered with the campaign's variables (None when it cannot be)."""
    from cpframe.execution.templates import render

    try:
        r = render(path, variables, environ={**os.environ, **variables}, allow_unset=True)
    except CpframeError:
        return None
    out = (r.config.get("payload") or {}).get("output")
    return str(out) if out and "$" not in str(out) else None


def _verify_output(target: str, band: str | None, v: Mapping[str, str]) -> str:
    stem = f"verify{target[0].upper()}{target[1:]}" + (f"-{band}" if band else "")
    return f"{v['TAG_PREFIX']}/{stem}.{v['VERIFY_RERUN']}"


def _calibration_name_problem(step_name: str, output: str, dataset_type: str, band: str | None,
                              v: Mapping[str, str]) -> str | None:
    """Is ``output`` a plausible CALIBRATION collection name for this certification (``dataset_type``: the stem
    of :data:`CERTIFIED_STEM`)?"""
    last = output.rsplit("/", 1)[-1]
    expect = dataset_type + (f"-{band}" if band else "")
    example = f"{v.get('TAG_PREFIX', 'T')}/{expect}.{v.get('CERT_RERUN', 'YYYYMMDDa')}"
    calib = _split_collections(v.get("CALIB_COLLECTIONS", ""))
    taken = {v.get("TICKET_CHAIN"), v.get("RAW_COLLECTION"), *calib}
    why = None
    if output in taken:
        why = "is the ticket chain, the raw collection or an input calibration collection"
    elif "Gen" in last or re.search(r"/run\d+$", output) or re.search(r"/\d{8}T\d{6}Z$", output):
        why = "names a generation (RUN or CHAINED) collection"
    elif last.startswith("verify"):
        why = "names a verification collection"
    elif not re.fullmatch(re.escape(expect) + r"\.\d{8}[a-z]", last):
        why = f"does not end with {expect}.<CERT_RERUN>"
    if why is None:
        return None
    return (
        f"step {step_name!r}: certify output {output!r} is not a CALIBRATION collection name: it {why}. "
        f"Certified collections are named T/<type>.<CERT_RERUN>, flats T/flat-<band>.<CERT_RERUN>; "
        f"here: {example}"
    )


def parse_campaign(text: str, path: Path, overrides: Mapping[str, str] | None = None) -> Campaign:
    """Validate a campaign file's text and order its steps.

    Parameters
    ----------
    text : str
        The YAML text.
    path : pathlib.Path
        Where it was read from (names in messages; base for relative template paths).
    overrides : mapping, optional
        ``--var`` values; they win over the file's ``variables``.

    Returns
    -------
    Campaign

    Raises
    ------
    CampaignError
        Every problem found, listed in one message: bad YAML, unknown step kind or key,
        missing or invalid variable, unknown ``needs``, dependency cycle, certify into a
        name that is not a CALIBRATION collection, missing template...
    """
    path = Path(path).resolve()
    doc = read_yaml(path, text=text, error=CampaignError)
    if not isinstance(doc, dict):
        raise CampaignError(f"{path}: a campaign file is a mapping with 'variables' and 'steps'.")
    problems: list[str] = []
    top = check(doc, CampaignFile, problems)
    raw_vars = (top.variables if top is not None else None) or {}
    raw_vars = {str(k): "" if val is None else str(val) for k, val in raw_vars.items()}
    raw_vars.update({k: str(val) for k, val in (overrides or {}).items()})
    for d in DERIVED_VARIABLES:
        if d in raw_vars:
            problems.append(
                f"variable {d} is computed by cpframe "
                "(from USER_CALIB_PREFIX, INSTRUMENT, TICKET, TAG); remove it"
            )
            del raw_vars[d]
    v = _resolve_variables(raw_vars, problems)
    missing_required = [n for n in REQUIRED_VARIABLES if n not in v]
    if missing_required:
        problems.append(
            f"missing variable(s) {', '.join(missing_required)}: set them under 'variables:' "
            "or pass --var NAME=VALUE (docs/campaign.md lists them)"
        )
    if v.get("REPO"):
        # relative repository paths are relative to where cpframe runs; recorded absolute
        v["REPO"] = os.path.abspath(os.path.expanduser(v["REPO"]))
    if all(n in v for n in ("USER_CALIB_PREFIX", "INSTRUMENT", "TICKET")):
        v["TICKET_CHAIN"] = f"{v['USER_CALIB_PREFIX']}{v['INSTRUMENT']}/calib/{v['TICKET']}"
        if "TAG" in v:
            v["TAG_PREFIX"] = f"{v['TICKET_CHAIN']}/{v['TAG']}"
    _check_variables(v, doc.get("steps") or [], problems)

    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append("'steps' must be a non-empty list of steps (each with name and kind)")
        raw_steps = []
    steps: list[Step] = []
    seen: set[str] = set()
    for i, rs in enumerate(raw_steps):
        step = _parse_step(i, rs, v, path, problems)
        if step is None:
            continue
        if step.name in seen:
            problems.append(f"step name {step.name!r} is used twice; names must be unique")
            continue
        seen.add(step.name)
        steps.append(step)

    if not problems:
        steps = _fill_certify_inputs(steps, v)
        steps = _fill_report_collections(steps)
        problems += _flat_combination_problems(steps)
        for s in steps:
            for n in s.needs:
                if n not in seen:
                    problems.append(f"step {s.name!r} needs {n!r}, which is not a step of this campaign")
    ordered: list[Step] = []
    after: dict[str, tuple[tuple[str, str], ...]] = {}
    if not problems:
        try:
            ordered, after = order_steps(steps)
        except CampaignError as err:
            problems.append(str(err))
    if problems:
        raise CampaignError(
            f"{path}: {len(problems)} problem(s) in the campaign file:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    name = str(doc.get("name") or path.stem)
    return Campaign(
        name=name, path=path, variables=v, steps=tuple(ordered), after=after,
        sha256=hashlib.sha256(text.encode()).hexdigest(), overrides=dict(overrides or {}),
    )


def load_campaign(path: str | os.PathLike, overrides: Mapping[str, str] | None = None) -> Campaign:
    """Read and validate a campaign file (see :func:`parse_campaign`).

    Raises
    ------
    CampaignError
        The file is missing or invalid (every problem listed).
    """
    p = Path(path)
    if not p.is_file():
        raise CampaignError(
            f"campaign file {str(path)!r} does not exist. Start from templates/campaign_demo.yaml "
            "or templates/campaign_dp1_example.yaml."
        )
    return parse_campaign(p.read_text(), p, overrides)


def _parse_step(i: int, rs: Any, v: Mapping[str, str], path: Path, problems: list[str]) -> Step | None:
    where = f"step {i + 1}"
    if not isinstance(rs, dict):
        problems.append(f"{where}: a step is a mapping with at least 'name' and 'kind'; got {rs!r}")
        return None
    name = rs.get("name")
    if not isinstance(name, str) or not _STEP_NAME_RE.match(name):
        problems.append(f"{where}: 'name' {name!r} must be text of letters, digits and '_.-'")
        return None
    where = f"step {name!r}"
    kind = rs.get("kind")
    if kind not in STEP_KINDS:
        problems.append(f"steps[{i}].kind: {kind!r} is not allowed; use one of {', '.join(STEP_KINDS)}")
        return None
    if check(rs, STEP_SCHEMAS[kind], problems, prefix=f"steps[{i}]") is None:
        return None
    missing: set[str] = set()

    def sub(key: str, default: str | None = None) -> str | None:
        val = rs.get(key, default)
        if val is None:
            return None
        return _substitute(str(val), v, missing)

    needs = rs.get("needs") or []
    if isinstance(needs, str):
        needs = [needs]
    step = Step(name=name, kind=kind, index=i, needs=tuple(map(str, needs)), doc=str(rs.get("doc") or ""))
    if kind == "submit":
        step = _parse_submit(step, rs, v, path, sub, problems)
    elif kind == "certify":
        step = _parse_certify(step, rs, v, sub, problems)
    elif kind == "report":
        cols = rs.get("collections") or []
        if isinstance(cols, str):
            cols = _split_collections(cols)
        out = sub("output", "${REPO}/reports/${TICKET}/${TAG}.${VERIFY_RERUN}")
        step = replace(step, output=out, collections=tuple(_substitute(str(c), v, missing) for c in cols))
    elif kind == "deploy":
        exp = rs.get("exposure")
        if exp is not None and not re.fullmatch(r"\d+", str(exp)):
            problems.append(f"{where}: exposure {exp!r} must be an exposure id (integer)")
            exp = None
        step = replace(step, exposure=int(exp) if exp is not None else None)
    if missing:
        problems.append(
            f"{where}: missing variable(s) {', '.join(sorted(missing))}; set them under 'variables:' "
            "or pass --var NAME=VALUE"
        )
    return step


def _parse_submit(step: Step, rs: dict, v: Mapping[str, str], path: Path, sub, problems: list[str]) -> Step:
    where = f"step {step.name!r}"
    tname = sub("template")
    if not tname:
        problems.append(f"{where}: a submit step needs 'template' (a submission template file)")
        return step
    tpath = _find_template(tname, path.parent)
    if tpath is None:
        problems.append(
            f"{where}: template {tname!r} not found (looked next to {path.name}, in its templates/ "
            "and in the project's templates/)"
        )
    builds, verifies, band = _infer_from_template(tname)
    builds = rs.get("builds", builds if "verifies" not in rs else None)
    verifies = rs.get("verifies", verifies if "builds" not in rs else None)
    band = rs.get("band", band)
    if builds is not None and builds not in PRODUCT_NEEDS:
        problems.append(
            f"{where}: builds {builds!r} is not a product cpframe makes; "
            f"use one of {', '.join(PRODUCT_NEEDS)}"
        )
        builds = None
    if verifies is not None and verifies not in VERIFY_TARGETS:
        problems.append(f"{where}: verifies {verifies!r} is unknown; use one of {', '.join(VERIFY_TARGETS)}")
        verifies = None
    if builds and verifies:
        problems.append(f"{where}: give either 'builds' or 'verifies', not both")
    if not builds and not verifies:
        problems.append(
            f"{where}: say what template {tname!r} makes: 'builds: <product>' "
            f"({', '.join(PRODUCT_NEEDS)}) or 'verifies: <type>' ({', '.join(VERIFY_TARGETS)})"
        )
        return step
    what = builds or verifies
    if what in PER_BAND and not band:
        problems.append(f"{where}: a {what} step needs 'band' (u, g, r, i, z or y)")
    if what not in PER_BAND and band:
        problems.append(f"{where}: 'band' applies only to {' and '.join(PER_BAND)}, not {what}")
        band = None
    if band and "INSTRUMENT" in v:
        from cpframe.camera.models import load_camera

        try:
            load_camera(v["INSTRUMENT"]).filter_for_band(band)
        except CpframeError as err:
            problems.append(f"{where}: {err}")
    step_vars = rs.get("vars") or {}
    if not isinstance(step_vars, dict):
        problems.append(f"{where}: 'vars' must be a mapping NAME: value")
        step_vars = {}
    # ${NAME} of a campaign variable is its campaign value (CALIB_COLLECTIONS: ${TICKET_CHAIN},${CALIB_COLLECTIONS});
    # other names are left for the template
    step_vars = {str(k): _substitute(str(x), v, set()) for k, x in step_vars.items()}
    allv = {**v, **step_vars}
    led = _led_of(where, what, allv.get("LED_NAME"), problems) if what in PER_LED else None
    sel = (SELECTION_OF_BUILD.get(builds) if builds else SELECTION_OF_VERIFY.get(verifies))
    if sel:
        sel = sel.format(band=band or "")
        if sel not in allv:
            problems.append(
                f"{where}: missing variable {sel} (the selection this {what} step reads); "
                f"add it under 'variables:', e.g. {sel}: \"instrument='{v.get('INSTRUMENT', 'X')}' and ...\""
            )
    if builds and builds.endswith("Bootstrap") and "BOOTSTRAP_RUN_NUMBER" not in allv:
        problems.append(
            f"{where}: missing variable BOOTSTRAP_RUN_NUMBER (bootstrap RUNs are named .../run<N>)"
        )
    gen_out = gen_run = None
    if all(k in allv for k in ("TAG_PREFIX", "RERUN", "VERIFY_RERUN")):
        if builds in PER_LED:  # cp_pipe's template writes every LED to one chain: the template's own name
            gen_out = (_rendered_output(tpath, allv) if tpath else None) or _gen_names(builds, band, allv, led)[0]
        elif builds:
            gen_out, gen_run = _gen_names(builds, band, allv)
        else:
            # the template's own name when it renders (verifyLinearizer.${RERUN}, verifyGainCorrection...)
            gen_out = (_rendered_output(tpath, allv) if tpath else None) or _verify_output(verifies, band, allv)
    reads: tuple[tuple[str, str], ...] = ()
    if builds and tpath:
        from cpframe.campaign.preflight import certified_reads

        # the pipeline this step will run (as the runner renders it): e.g. LSSTCam's flat reads the certified
        # flat_gradient_reference of its band (docs/campaign.md "The order")
        reads = certified_reads(str(tpath), {**os.environ, **allv}, builds)
    return replace(
        step, template=str(tpath) if tpath else tname, builds=builds, verifies=verifies, band=band, led=led,
        vars=tuple(sorted((str(k), str(x)) for k, x in step_vars.items())),
        gen_output=gen_out, gen_run=gen_run, reads=reads,
    )


_LED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


def _led_of(where: str, what: str, led: str | None, problems: list[str], certify: bool = False) -> str | None:
    """The LED name of a per-LED step (``LED_NAME`` or certify ``led``), checked; None (and a problem) when missing."""
    if not led:
        how = ("'led: <name>' on the step or LED_NAME under the campaign's 'variables:'" if certify else
               "LED_NAME under the step's 'vars:' or the campaign's 'variables:'")
        problems.append(f"{where}: a {what} step needs the LED's name: set {how}, e.g. m455l4")
        return None
    if not _LED_RE.match(str(led)):
        problems.append(f"{where}: LED name {led!r} must be letters, digits and '_' (it names the dataset type "
                        f"flat_<LED>), e.g. m455l4")
        return None
    return str(led)


def _parse_certify(step: Step, rs: dict, v: Mapping[str, str], sub, problems: list[str]) -> Step:
    where = f"step {step.name!r}"
    dt = rs.get("dataset_type")
    if dt not in CERTIFIABLE:
        problems.append(
            f"{where}: dataset_type {dt!r} cannot be certified by a campaign; "
            f"use one of {', '.join(CERTIFIABLE)}"
            + (" (bootstrap products are read from their RUNs, never certified)"
               if str(dt).endswith("Bootstrap") else "")
        )
        return step
    band = rs.get("band")
    if dt in PER_BAND and not band:
        problems.append(f"{where}: certifying {'flats' if dt == 'flat' else dt} needs 'band' (one CALIBRATION "
                        "collection per band)")
    if dt not in PER_BAND and band:
        problems.append(f"{where}: 'band' applies only to {' and '.join(PER_BAND)}, not {dt}")
        band = None
    led = None
    if dt in PER_LED:
        led = _led_of(where, dt, sub("led") or v.get("LED_NAME"), problems, certify=True)
    elif rs.get("led"):
        problems.append(f"{where}: 'led' applies only to {' and '.join(PER_LED)}, not {dt}")
    cstem = CERTIFIED_STEM.get(dt, dt).format(led=led)
    stem = cstem + (f"-{band}" if band else "")
    output = sub("output", f"${{TAG_PREFIX}}/{stem}.${{CERT_RERUN}}")
    chain = rs.get("chain", "${TICKET_CHAIN}")
    chain = None if chain in (False, None, "") else _substitute(str(chain), v, set())
    begin = sub("begin_date", "${START_DATE}")
    end = sub("end_date")
    from cpframe.core.model import parse_tai

    for label, d in (("begin_date", begin), ("end_date", end)):
        if d and "$" not in d:
            try:
                parse_tai(d, f"{where} {label}")
            except CpframeError as err:
                problems.append(str(err))
    if output and "$" not in output:
        bad = collection_name_problem(output) or _calibration_name_problem(step.name, output, cstem, band, v)
        if bad:
            problems.append(bad if bad.startswith("step") else f"{where}: output {output!r} {bad}")
    if chain and chain in (output,):
        problems.append(f"{where}: chain {chain!r} is the certified collection itself")
    return replace(
        step, dataset_type=dt, band=band, led=led, input=sub("input"), output=output, begin_date=begin,
        end_date=end, chain=chain, search_all_inputs=bool(rs.get("search_all_inputs", False)),
    )


def _fill_certify_inputs(steps: list[Step], v: Mapping[str, str]) -> list[Step]:
    """A certify step without ``input`` reads the generation chain of the step building that product."""
    out = []
    for s in steps:
        if s.kind == "certify" and not s.input:
            builders = [b for b in steps if b.kind == "submit" and b.builds == s.dataset_type
                        and b.band == s.band and b.led == s.led]
            if builders:
                s = replace(s, input=builders[-1].gen_output)
            else:
                s = replace(s, input=_gen_names(s.dataset_type, s.band, v, s.led)[0])
        out.append(s)
    return out


def _fill_report_collections(steps: list[Step]) -> list[Step]:
    """A report without ``collections`` covers every verification output, then every generation output."""
    verify = [s.gen_output for s in steps if s.kind == "submit" and s.verifies and s.gen_output]
    gen = [s.gen_output for s in steps if s.kind == "submit" and s.builds and s.gen_output]
    return [replace(s, collections=tuple(verify + gen)) if s.kind == "report" and not s.collections else s
            for s in steps]


def _flat_combination_problems(steps: Sequence[Step]) -> list[str]:
    """Combinations of flat products a campaign refuses (docs/campaign.md "Anaglyph and single-LED flats").

    * A plain flat and an anaglyph flat of one band certified into one chain: both are the band's ``flat``, and
      ISR would read whichever CALIBRATION collection comes first in the chain.
    * Two single-LED flats built into one output chain (cp_pipe's ``bps_flat_singleled_white.yaml`` writes every
      LED to ``flatGen-white``): each certification reads the first RUN of its input chain only.
    """
    problems = []
    flats: dict[tuple[str | None, str | None], list[Step]] = {}
    for s in steps:
        if s.kind == "certify" and s.dataset_type in ("flat", "flat_anaglyph"):
            flats.setdefault((s.band, s.chain), []).append(s)
    for (band, chain), group in flats.items():
        kinds = {s.dataset_type for s in group}
        if chain and kinds == {"flat", "flat_anaglyph"}:
            names = ", ".join(repr(s.name) for s in group)
            problems.append(
                f"steps {names} certify both a flat and an anaglyph flat of band {band} into {chain}: both are "
                f"the band's 'flat', and ISR would read whichever comes first in the chain. Build one of them per "
                f"band in a campaign, or give one certify step 'chain: false' (certified into its own CALIBRATION "
                f"collection only)")
    outputs: dict[str, list[Step]] = {}
    for s in steps:
        if s.kind == "submit" and s.builds in PER_LED and s.gen_output:
            outputs.setdefault(s.gen_output, []).append(s)
    for out, group in outputs.items():
        if len({s.led for s in group}) > 1:
            problems.append(
                f"steps {', '.join(repr(s.name) for s in group)} build single-LED flats of LEDs "
                f"{', '.join(sorted({str(s.led) for s in group}))} into one output chain {out}; each certification "
                f"reads the first RUN of that chain only. Use cpframe's templates/bps_flat_single_led.yaml (its "
                f"output names the LED, flatGen-white-${{LED_NAME}}) or one LED per campaign")
    return problems


# -- order --------------------------------------------------------------------------------------


def _derived_edges(steps: Sequence[Step]) -> list[tuple[str, str, str]]:
    """(before, after, reason) edges from the calibration dependencies."""
    edges: list[tuple[str, str, str]] = []
    makers: dict[str, list[Step]] = {}
    for s in steps:
        if s.product and s.kind in ("submit", "certify"):
            makers.setdefault(s.product, []).append(s)
    certifies = [s for s in steps if s.kind == "certify"]
    builds = [s for s in steps if s.kind == "submit" and s.builds]
    for s in steps:
        if s.kind == "submit" and s.builds:
            for need in PRODUCT_NEEDS[s.builds]:
                for m in makers.get(need, []):
                    edges.append((m.name, s.name, f"{s.builds} needs {need}"))
            for used in USES_WHEN_CERTIFIED.get(s.builds, ()):
                for m in makers.get(used, []):
                    if m.kind == "certify":
                        edges.append((m.name, s.name, f"{s.builds} applies the certified {used}"))
            for task, dt in s.reads:  # what this step's pipeline reads (preflight.certified_reads)
                for m in makers.get(dt, []):
                    if not (dt in PER_BAND and s.band and m.band and m.band != s.band):
                        edges.append((m.name, s.name, f"{s.builds}'s pipeline reads the certified {dt} "
                                                      f"(task {task})"))
        elif s.kind == "certify":
            for m in makers.get(s.dataset_type, []):
                if m.kind == "submit" and m.band == s.band and m.led == s.led:
                    edges.append((m.name, s.name, f"certifies what {m.name} builds"))
        elif s.kind == "submit" and s.verifies:
            for c in certifies + builds:
                edges.append((c.name, s.name, "verification runs after certification"))
        if s.kind == "report":
            for o in steps:
                if o.kind in ("submit", "certify"):
                    edges.append((o.name, s.name, "the report comes last"))
        if s.kind == "deploy":
            for o in steps:
                if o.kind != "deploy":
                    edges.append((o.name, s.name, "deployment comes after everything"))
    for s in steps:
        for n in s.needs:
            edges.append((n, s.name, "declared in needs"))
    return edges


def order_steps(steps: Sequence[Step]) -> tuple[list[Step], dict[str, tuple[tuple[str, str], ...]]]:
    """Order steps so that every dependency runs first; ties keep the file order.

    Returns
    -------
    ordered : list of Step
    after : dict
        step name -> ((earlier step, reason), ...), the constraints that placed it.

    Raises
    ------
    CampaignError
        The dependencies form a cycle (the message shows it, with each edge's reason).
    """
    by_name = {s.name: s for s in steps}
    edges = _derived_edges(steps)
    succ: dict[str, dict[str, str]] = {s.name: {} for s in steps}
    indeg = {s.name: 0 for s in steps}
    for a, b, why in edges:
        if a == b:
            raise CampaignError(f"dependency cycle: step {a!r} needs itself")
        if b not in succ[a]:
            succ[a][b] = why
            indeg[b] += 1
    heap = [(by_name[n].index, n) for n, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    ordered: list[Step] = []
    while heap:
        _, n = heapq.heappop(heap)
        ordered.append(by_name[n])
        for m in succ[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                heapq.heappush(heap, (by_name[m].index, m))
    if len(ordered) < len(steps):
        left = {n for n, d in indeg.items() if d > 0}
        raise CampaignError("dependency cycle: " + _describe_cycle(left, succ))
    after: dict[str, list[tuple[str, str]]] = {s.name: [] for s in steps}
    for a, targets in succ.items():
        for b, why in targets.items():
            after[b].append((a, why))
    return ordered, {k: tuple(x) for k, x in after.items()}


def _describe_cycle(left: set[str], succ: Mapping[str, Mapping[str, str]]) -> str:
    """Walk from any unfinished node until a node repeats; show that loop with reasons."""
    start = sorted(left)[0]
    path = [start]
    while True:
        nxt = sorted(m for m in succ[path[-1]] if m in left)[0]
        if nxt in path:
            loop = path[path.index(nxt):] + [nxt]
            parts = [f"{a} -> {b} ({succ[a][b]})" for a, b in zip(loop, loop[1:])]
            return "; ".join(parts) + ". Remove one of these 'needs' (or fix the step kinds)."
        path.append(nxt)


