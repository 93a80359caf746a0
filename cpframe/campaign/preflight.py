"""Checks a campaign makes on the repository before a submission step runs, where a product needs
more of a certified input than its existence (which the submission's planning checks itself).

* ``electroBfDistortionMatrix`` is fitted to the ``a`` matrix of the certified ``ptc``
  (cp_pipe's ``inputPtc``; unless its pipeline builds a PTC of its own, ``useBfPtc``), which only a
  FULLCOVARIANCE PTC has.  The campaign's own PTC step builds
  an EXPAPPROXIMATION PTC unless told otherwise, so without this check the build would fail in every
  quantum; :func:`check_before_submit` stops first and names the fit type found and what to do
  (docs/campaign.md, "The order").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpframe.campaign.model import Step
from cpframe.core.errors import CampaignError, CpframeError

__all__ = ["MSG_PTC_NOT_FULLCOVARIANCE", "certified_ptc_reader", "check_before_submit"]

#: Message when the certified PTC an electrostatic step reads is not FULLCOVARIANCE (tests check it).
MSG_PTC_NOT_FULLCOVARIANCE = (
    "step {step!r} builds electroBfDistortionMatrix from the a matrix of the certified ptc, which needs "
    "ptcFitType FULLCOVARIANCE; the certified ptc found has {found}. Build the campaign's ptc with "
    "ptcFitType FULLCOVARIANCE (a copy of templates/bps_ptc.yaml with extraQgraphOptions: "
    "\"--config cpPtcSolve:ptcFitType=FULLCOVARIANCE --config cpPtcExtractPair:maximumRangeCovariancesAstier=10 "
    "--config cpPtcSolve:maximumRangeCovariancesAstier=10\"), certify it, then resume the campaign; or build the "
    "matrix with templates/bps_electrostaticBFDistortionMatrixBfPtc.yaml, which fits a FULLCOVARIANCE PTC of its own."
)


def certified_ptc_reader(template: str, variables: Mapping[str, str]) -> list[str] | None:
    """The input collections of ``template`` when its pipeline fits the certified ``ptc`` (an
    ``electrostaticBfSolve`` task listing ``ptc`` among its calibrations, cp_pipe's ``inputPtc``), else None:
    a pipeline with a PTC of its own (``useBfPtc``), or a template that does not render or validate (the
    submission then reports that itself)."""
    from cpframe.execution.submit import render_stage, validate_stage

    try:
        sub, pipe = validate_stage(render_stage(template, variables, allow_unset=True, environ=dict(variables)))
    except CpframeError:
        return None
    if not any(t.kind == "electrostaticBfSolve" and "ptc" in t.calibrations for t in pipe.tasks):
        return None
    return [c for c in sub.in_collections if "$" not in c]


def _certified_ptcs(registry: Any, collections: list[str]) -> dict[int, tuple[Any, str]]:
    """Detector -> (ref, collection) of the first certified ptc in search order."""
    from cpframe.core.errors import UnknownCollectionError
    from cpframe.core.model import CollectionType

    try:
        leaves = registry.flatten(collections)
    except UnknownCollectionError:
        return {}  # the submission's planning names the missing collection
    found: dict[int, tuple[Any, str]] = {}
    for c in leaves:
        if registry.get_collection_type(c) != CollectionType.CALIBRATION:
            continue
        for ref in registry.query_certifications(c, "ptc"):
            found.setdefault(int(ref.data_id["detector"]), (ref, c))
    return found


def check_before_submit(step: Step, variables: Mapping[str, str], repo: Any) -> None:
    """Raise :class:`CampaignError` when ``step`` cannot work with the certified inputs it will read.

    Raises
    ------
    CampaignError
        ``electroBfDistortionMatrix`` fitted to the certified ptc: a certified ptc in the step's input
        collections is not FULLCOVARIANCE (every such detector and fit type named).  No certified ptc at all
        is left to the submission, whose planning lists missing calibrations; a pipeline with a PTC of its
        own (``useBfPtc``) is not checked.
    """
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
