"""Checks a campaign makes on the repository before a submission step runs, where a product needs
more of a certified input than its existence (which the submission's planning checks itself).

* ``electroBfDistortionMatrix`` is fitted to the ``a`` matrix of the certified ``ptc``
  (cp_pipe's ``inputPtc``; unless its pipeline builds a PTC of its own, ``useBfPtc``), which only a
  FULLCOVARIANCE PTC has.  The campaign's own PTC step builds
  an EXPAPPROXIMATION PTC unless told otherwise, so without this check the build would fail in every
  quantum; :func:`check_before_submit` stops first and names the fit type found and what to do
  (docs/campaign.md, "The order").
* A pipeline may read a certified calibration beyond what its product needs in every pipeline
  (:data:`~cpframe.campaign.model.PRODUCT_NEEDS`): LSSTCam's ``cpFlat.yaml`` (cp_pipe
  ``cpFlatCorrectedLSST.yaml``, since cp_pipe efa90dd7, 2025-08) corrects each new flat's large-scale
  shape against the certified ``flat_gradient_reference`` of its band (``cpFlatApplyGradients``, a
  prerequisite input); cpframe's own and LSSTComCam's flat pipelines do not.  :func:`certified_reads`
  finds those reads in the pipeline a step will run, so the campaign orders the step after the
  certification of what it reads (:func:`cpframe.campaign.spec.order_steps`), and
  :func:`check_before_submit` stops with the step to add when the campaign does not make it and
  none is certified in the step's input collections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpframe.campaign.model import PER_BAND, Step
from cpframe.core.errors import CampaignError, CpframeError

__all__ = ["MSG_CERTIFIED_READ_MISSING", "MSG_PTC_NOT_FULLCOVARIANCE", "certified_ptc_reader", "certified_reads",
           "check_before_submit"]

#: Message when the certified PTC an electrostatic step reads is not FULLCOVARIANCE (tests check it).
MSG_PTC_NOT_FULLCOVARIANCE = (
    "step {step!r} builds electroBfDistortionMatrix from the a matrix of the certified ptc, which needs "
    "ptcFitType FULLCOVARIANCE; the certified ptc found has {found}. Build the campaign's ptc with "
    "ptcFitType FULLCOVARIANCE (a copy of templates/bps_ptc.yaml with extraQgraphOptions: "
    "\"--config cpPtcSolve:ptcFitType=FULLCOVARIANCE --config cpPtcExtractPair:maximumRangeCovariancesAstier=10 "
    "--config cpPtcSolve:maximumRangeCovariancesAstier=10\"), certify it, then resume the campaign; or build the "
    "matrix with templates/bps_electrostaticBFDistortionMatrixBfPtc.yaml, which fits a FULLCOVARIANCE PTC of its own."
)


#: Message when a pipeline reads a certified calibration that no input collection holds (tests check it).
MSG_CERTIFIED_READ_MISSING = (
    "step {step!r} builds {builds} with a pipeline whose task {task!r} reads the certified {dataset}{band}, and "
    "none is certified in the step's input collections ({collections}). {remedy}"
)


def _pipeline(template: str, variables: Mapping[str, str]) -> tuple[Any, Any] | None:
    """(submission, pipeline) of ``template`` rendered with ``variables`` (also its environment), None when it
    does not render or validate (the submission reports that itself)."""
    from cpframe.execution.submit import render_stage, validate_stage

    try:
        return validate_stage(render_stage(template, variables, allow_unset=True, environ=dict(variables)))
    except CpframeError:
        return None


def certified_reads(template: str, variables: Mapping[str, str], builds: str) -> tuple[tuple[str, str], ...]:
    """(task label, dataset type) of each certified calibration the pipeline of ``template`` reads that a
    ``builds`` product does not read in every pipeline (not in its :data:`PRODUCT_NEEDS` or
    :data:`USES_WHEN_CERTIFIED`); () when the template does not render or validate."""
    from cpframe.campaign.model import CERTIFIABLE, PRODUCT_NEEDS, USES_WHEN_CERTIFIED

    found = _pipeline(template, variables)
    if found is None:
        return ()
    known = {builds, *PRODUCT_NEEDS.get(builds, ()), *USES_WHEN_CERTIFIED.get(builds, ())}
    out: list[tuple[str, str]] = []
    for t in found[1].tasks:
        for dt in t.calibrations:
            if dt in CERTIFIABLE and dt not in known and dt not in [d for _, d in out]:
                out.append((t.label, dt))
    return tuple(out)


def certified_ptc_reader(template: str, variables: Mapping[str, str]) -> list[str] | None:
    """The input collections of ``template`` when its pipeline fits the certified ``ptc`` (an
    ``electrostaticBfSolve`` task listing ``ptc`` among its calibrations, cp_pipe's ``inputPtc``), else None:
    a pipeline with a PTC of its own (``useBfPtc``), or a template that does not render or validate (the
    submission then reports that itself)."""
    found = _pipeline(template, variables)
    if found is None:
        return None
    sub, pipe = found
    if not any(t.kind == "electrostaticBfSolve" and "ptc" in t.calibrations for t in pipe.tasks):
        return None
    return [c for c in sub.in_collections if "$" not in c]


def _certifications(registry: Any, collections: list[str], dataset_type: str) -> list[tuple[Any, str]]:
    """(ref, collection) of every certified ``dataset_type`` in the CALIBRATION collections of ``collections``,
    in search order; a collection that does not exist (the submission's planning names it) adds none."""
    from cpframe.core.errors import UnknownCollectionError, UnknownDatasetTypeError
    from cpframe.core.model import CollectionType

    found: list[tuple[Any, str]] = []
    for name in collections:  # one at a time: a missing one (planning names it) does not hide the others
        try:
            leaves = registry.flatten([name])
            found += [(ref, c) for c in leaves if registry.get_collection_type(c) == CollectionType.CALIBRATION
                      for ref in registry.query_certifications(c, dataset_type)]
        except (UnknownCollectionError, UnknownDatasetTypeError):  # or none of that type was ever stored
            continue
    return found


def _certified_ptcs(registry: Any, collections: list[str]) -> dict[int, tuple[Any, str]]:
    """Detector -> (ref, collection) of the first certified ptc in search order."""
    found: dict[int, tuple[Any, str]] = {}
    for ref, c in _certifications(registry, collections, "ptc"):
        found.setdefault(int(ref.data_id["detector"]), (ref, c))
    return found


def _of_band(ref: Any, band: str | None, instrument: str) -> bool:
    """Whether a certified ref is of ``band`` (its physical_filter's band; any ref when no band is asked)."""
    pf = ref.data_id.get("physical_filter")
    if band is None or pf is None:
        return True
    from cpframe.camera.models import load_camera

    try:
        return load_camera(instrument).band_of(str(pf)) == band
    except CpframeError:
        return str(pf).split("_")[0] == band


def _check_certified_reads(step: Step, variables: Mapping[str, str], repo: Any,
                           makers: Mapping[str, list[str]]) -> None:
    """The certified calibrations ``step.reads`` are in the step's input collections (module docstring)."""
    found = _pipeline(step.template, variables) if step.reads else None
    if found is None:
        return
    collections = [c for c in found[0].in_collections if "$" not in c]
    for task, dt in step.reads:
        band = step.band if dt in PER_BAND else None
        if any(_of_band(ref, band, variables.get("INSTRUMENT", "")) for ref, _ in
               _certifications(repo.registry, collections, dt)):
            continue
        tail = f" of band {band}" if band else ""
        made_by = makers.get(dt, [])
        if made_by:
            remedy = (f"The campaign's step(s) {', '.join(repr(m) for m in made_by)} make it and run before "
                      f"{step.name!r}: run them (without --from past them), or check that the certify step's "
                      "collection is in this step's inputs.")
        else:
            template = f"bps_{dt}_{band}.yaml" if band else f"bps_{dt}.yaml"
            remedy = (f"The campaign has no step making it: add a submit step with template {template} and a certify "
                      f"step with dataset_type: {dt}{f', band: {band}' if band else ''} (cpframe runs them before "
                      f"{step.name!r}), or certify one into {collections[0] if collections else 'its inputs'} first.")
        raise CampaignError(MSG_CERTIFIED_READ_MISSING.format(
            step=step.name, builds=step.builds + (f" ({step.band})" if step.band else ""), task=task, dataset=dt,
            band=tail, collections=", ".join(collections) or "none", remedy=remedy))


def check_before_submit(step: Step, variables: Mapping[str, str], repo: Any,
                        makers: Mapping[str, list[str]] | None = None) -> None:
    """Raise :class:`CampaignError` when ``step`` cannot work with the certified inputs it will read.

    ``makers``: dataset type -> names of the campaign's steps that build or certify it (for the message).

    Raises
    ------
    CampaignError
        A certified calibration the step's pipeline reads beyond its product's needs (``step.reads``, e.g.
        LSSTCam's flat: ``flat_gradient_reference`` of its band) is not certified in the step's input
        collections: the message names the task, the dataset and band, and the steps to add (or the campaign's
        steps that make it).
        ``electroBfDistortionMatrix`` fitted to the certified ptc: a certified ptc in the step's input
        collections is not FULLCOVARIANCE (every such detector and fit type named).  No certified ptc at all
        is left to the submission, whose planning lists missing calibrations; a pipeline with a PTC of its
        own (``useBfPtc``) is not checked.
    """
    if step.template and step.reads:
        _check_certified_reads(step, variables, repo, makers or {})
    if step.builds != "electroBfDistortionMatrix" or not step.template:
        return
    collections = certified_ptc_reader(step.template, variables)
    if not collections:  # a PTC of its own (bps_electrostaticBFDistortionMatrixBfPtc.yaml)
        return
    from cpframe.science.imageio import read_header

    bad = []
    for det, (ref, coll) in sorted(_certified_ptcs(repo.registry, collections).items()):
        fit_type = str(read_header(repo.get_path(ref)).get("PTCFITTYPE") or "no ptcFitType")
        if not fit_type.startswith("FULLCOVARIANCE"):
            bad.append(f"detector {det}: {fit_type} (in {coll})")
    if bad:
        raise CampaignError(MSG_PTC_NOT_FULLCOVARIANCE.format(step=step.name, found="; ".join(bad)))
