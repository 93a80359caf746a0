"""``cpframe campaign``, ``cpframe deploy`` and ``cpframe demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cpframe.core.errors import CampaignError, VerificationFailed
from cpframe.cli import catch_errors, main

DEPLOY_SELF_CHECK_FAILED = (
    "the deployed chain does not pick the new calibrations (see the table above). "
    "The chains were changed; to undo: "
    "cpframe collection-chain {repo} --mode remove {instrument}/calib {chain}"
)


def _repo_exists(root: str) -> bool:
    return (Path(root) / "cpframe-repo.yaml").exists()


#: Message when the campaign's input collections are not in the repository (tests check it).
MSG_MISSING_INPUTS = "{repo}: input collection(s) of the campaign missing: {missing}. Nothing was run."


def _missing_inputs(camp, repo) -> list[str]:
    """RAW_COLLECTION and CALIB_COLLECTIONS that the repository lacks, each with what creates it."""
    from cpframe.core.errors import CpframeError

    v = camp.variables
    wanted = [(v.get("RAW_COLLECTION", ""), f"`cpframe ingest-raws {camp.repo} RAW_FILES --run ...`")]
    wanted += [(c.strip(), f"`cpframe write-curated-calibrations {camp.repo} {camp.instrument} --collection {c.strip()}`")
               for c in str(v.get("CALIB_COLLECTIONS", "")).split(",") if c.strip()]
    out = []
    for name, fix in wanted:
        if not name:
            continue
        try:
            repo.registry.get_collection_type(name)
        except CpframeError:
            out.append(f"{name} (create it with {fix})")
    return out


@main.command("campaign")
@click.argument("campaign_file", type=click.Path(dir_okay=False))
@click.option(
    "--dry-run", is_flag=True, help="Validate and print the plan (with each step's status); run nothing."
)
@click.option(
    "--resume", is_flag=True, help="Continue a campaign started before; finished steps are skipped."
)
@click.option(
    "--restart", is_flag=True, help="Forget the previous state and run every step (needs new reruns)."
)
@click.option("--until", "until", metavar="STEP", help="Stop after this step (it runs).")
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set or override a campaign variable (repeatable).",
)
@click.option(
    "--deploy", "deploy_step", is_flag=True, help="Also run the campaign's deploy step (never automatic)."
)
@click.option("--workers", type=int, help="Dask workers of the local cluster (default: settings).")
@catch_errors
def campaign_command(campaign_file, dry_run, resume, restart, until, variables, deploy_step, workers):
    """Run a calibration campaign: every DMTN-222 step in dependency order, resumably.

    CAMPAIGN_FILE lists the variables (INSTRUMENT, TICKET, RERUN, SELECTION_*...) and the
    steps (submit, certify, report, deploy). cpframe orders them by the calibration
    dependencies, prints the plan, runs it and records every command in
    REPO/campaigns/TICKET/NAME/commands.sh. After a failure, fix the cause and run again
    with --resume: finished steps (checked in the registry) are not redone.

    \b
    Example:
      cpframe campaign templates/campaign_demo.yaml --var REPO=demo/repo --dry-run
    """
    from cpframe.campaign.runner import format_plan, load_campaign, parse_var_options, plan_status, run_campaign

    camp = load_campaign(campaign_file, parse_var_options(variables))
    if until:
        camp.step(until)
    repo = None
    if _repo_exists(camp.repo):
        from cpframe.campaign.runner import _open_repo

        repo = _open_repo(camp.repo)
    try:
        status = plan_status(camp, repo)
        missing = _missing_inputs(camp, repo) if repo is not None else []
    finally:
        if repo is not None:
            repo.close()
    click.echo(format_plan(camp, status, until))
    if missing:
        raise CampaignError(MSG_MISSING_INPUTS.format(repo=camp.repo, missing="; ".join(missing)))
    if dry_run:
        if repo is None:
            click.echo(f"(repository {camp.repo} does not exist yet: every step is pending)")
        click.echo("Dry run: nothing was run. Drop --dry-run to run the plan.")
        return
    if repo is None:
        raise CampaignError(
            f"repository {camp.repo!r} does not exist. Create it and ingest raws first "
            "(`cpframe create REPO`, `cpframe ingest-raws ...`), or try `cpframe demo`."
        )
    settings = None
    if workers:
        from cpframe.core.config import load_settings

        settings = load_settings({"n_workers": workers})
    click.echo("")
    result = run_campaign(
        camp,
        resume=resume,
        restart=restart,
        until=until,
        deploy_step=deploy_step,
        settings=settings,
        echo=click.echo,
        argv=["cpframe"] + sys.argv[1:],
    )
    click.echo("")
    click.echo(result.summary())
    if result.deploy is not None:
        click.echo(result.deploy.format())
    left = [o.name for o in result.outcomes if o.status == "not-run" and o.detail == "after --until"]
    if left:
        click.echo(f"Stopped after {until!r}; {len(left)} step(s) left: run again with --resume.")


@main.command("deploy")
@click.argument("campaign_file", required=False, type=click.Path(dir_okay=False))
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE", help="Override a campaign variable.")
@click.option("--repo", help="Repository root (default: the campaign's REPO).")
@click.option("--instrument", help="Instrument (default: the campaign's INSTRUMENT).")
@click.option(
    "--chain", "ticket_chain", help="Ticket-level CHAINED collection P (default: from the campaign)."
)
@click.option("--raw-collection", help="Raw collection for INSTRUMENT/defaults (default: RAW_COLLECTION).")
@click.option(
    "--exposure", type=int, help="Exposure id for the self-check (default: latest in the validity range)."
)
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--ticket", default="", help="Deployment ticket (DMTN-222's third ticket), recorded in the ledger.")
@click.option("--override-approval", "override", metavar="REASON",
              help="Deploy a set that is not approved; the reason and your name are recorded in the ledger.")
@click.option("--who", default=None, metavar="NAME", help="Who deploys (default: $CPFRAME_USER or the login name).")
@catch_errors
def deploy_command(
    campaign_file, variables, repo, instrument, ticket_chain, raw_collection, exposure, dry_run, yes,
    ticket, override, who
):
    """Deploy a campaign's calibrations: prepend its ticket chain to INSTRUMENT/calib.

    Only an approved set is deployed (`cpframe review`); --override-approval REASON deploys
    another one and records who and why in the ledger (docs/lifecycle.md). Also keeps INSTRUMENT/defaults (raws + INSTRUMENT/calib) pointing at it, then checks
    that one exposure in the validity range finds every new calibration through
    INSTRUMENT/defaults (DMTN-222's self-review). Never run automatically by a campaign.

    \b
    Examples:
      cpframe deploy templates/campaign_demo.yaml --var REPO=demo/repo
      cpframe deploy --repo demo/repo --instrument LSSTComCam --chain LSSTComCam/calib/DEMO-1 \\
          --raw-collection LSSTComCam/raw/all
    """
    from cpframe.campaign.runner import _open_repo, _split_collections, load_campaign, parse_var_options
    from cpframe.campaign.deploy import deploy, format_deploy_plan

    calib_collections: list[str] = []
    if campaign_file:
        camp = load_campaign(campaign_file, parse_var_options(variables))
        v = camp.variables
        repo = repo or v["REPO"]
        instrument = instrument or v["INSTRUMENT"]
        ticket_chain = ticket_chain or v["TICKET_CHAIN"]
        raw_collection = raw_collection or v["RAW_COLLECTION"]
        calib_collections = _split_collections(v["CALIB_COLLECTIONS"])
    missing = [
        o
        for o, x in (
            ("--repo", repo),
            ("--instrument", instrument),
            ("--chain", ticket_chain),
            ("--raw-collection", raw_collection),
        )
        if not x
    ]
    if missing:
        raise CampaignError(
            f"deploy needs a campaign file or {', '.join(missing)}; "
            "e.g. cpframe deploy templates/campaign_demo.yaml --var REPO=demo/repo"
        )
    if not _repo_exists(repo):
        raise CampaignError(f"repository {repo!r} does not exist (no cpframe-repo.yaml there).")
    args = dict(raw_collection=raw_collection, calib_collections=calib_collections, exposure=exposure)
    from cpframe.campaign.lifecycle import check_deployable, record_deployment

    with _open_repo(repo) as r:
        plan = deploy(r.registry, instrument, ticket_chain, **args, dry_run=True)
        if not dry_run:
            check_deployable(r, ticket_chain, override)
        click.echo(format_deploy_plan(instrument, ticket_chain, raw_collection))
        click.echo(plan.format())
        if dry_run:
            click.echo("Dry run: nothing changed.")
            return
        if not yes and not click.confirm("Deploy?", default=False):
            click.echo("Not deployed.")
            return
        res = deploy(r.registry, instrument, ticket_chain, **args)
        if res.ok:
            st = record_deployment(r, ticket_chain, res, who=who, ticket=ticket, override=override)
    click.echo(res.format())
    if res.ok:
        click.echo(f"ledger: {ticket_chain} is {st.state}" + (" (OVERRIDE recorded)" if st.override else "")
                   + f"; next: {st.next_step(repo)}")
    if not res.ok:
        raise VerificationFailed(
            DEPLOY_SELF_CHECK_FAILED.format(repo=repo, instrument=instrument, chain=ticket_chain)
        )


@main.command("demo")
@click.argument("directory", required=False, default="cpframe-demo", type=click.Path(file_okay=False))
@click.option("--full", is_flag=True, help="Real detector size (slow); default: mini detectors.")
@click.option("--workers", type=int, default=None, help="Dask workers of the local cluster (default: 2).")
@click.option("--bands", default=None, help="Flat bands, comma-separated (default: the demo plan's).")
@click.option("--detectors", default=None, help="Detector ids, comma-separated (default: the demo plan's).")
@click.option(
    "--broken",
    type=click.Choice(["none", "saturated", "saturated-flat", "light-leak", "noisy"]),  # demo.BROKEN_INPUTS
    default="none",
    help="Add a deliberately broken input, to see verification catch it: saturated (a flat over the full "
         "well: flat SATURATION fails), light-leak (a dark with light: dark MEAN), noisy (a bias with a raised "
         "read noise: bias READ_NOISE_CONSISTENT).",
)
@click.option("--full-set", "full_set", is_flag=True,
              help="Every calibration type cpframe builds (linearizer, CTI, crosstalk, BFK, gain correction, "
                   "flat gradient reference, illumination correction too), each with its simulator effect on; "
                   "the table is cpframe/campaign/fullset.py.")
@click.option("--force", is_flag=True, help="Delete DIRECTORY first if it exists.")
@catch_errors
def demo_command(directory, full, workers, bands, detectors, broken, full_set, force):
    """Simulate a ComCam-like camera, run the demo campaign and write the report.

    Creates DIRECTORY/repo (SQLite), simulates the demo plan's exposures, ingests them,
    runs templates/campaign_demo.yaml on a local Dask cluster, deploys the result and
    prints where the report is (under DIRECTORY/repo/reports/) with a pass/fail summary.

    \b
    Example:
      cpframe demo                 # mini detectors, a few minutes on 2 cores
      cpframe demo big --full      # real detector size
      cpframe demo all --full-set  # every calibration type, each with its simulator effect
    """
    from cpframe.campaign.demo import run_demo

    result = run_demo(
        directory,
        full=full,
        workers=workers,
        bands=[b.strip() for b in bands.split(",") if b.strip()] if bands else None,
        detectors=[int(d) for d in detectors.split(",") if d.strip()] if detectors else None,
        broken=None if broken == "none" else broken,
        force=force,
        echo=click.echo,
        full_set=full_set,
    )
    click.echo("")
    click.echo(result.summary())
    if not result.passed:
        raise VerificationFailed(f"the demo's verification found failing tests; see {result.report_index}")
    if result.broken_detected is False:
        raise VerificationFailed(
            f"verification did not catch the broken input ({broken}); see {result.broken.report_index}"
        )
