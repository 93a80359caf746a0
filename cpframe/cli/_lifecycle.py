"""``cpframe review submit|approve|reject`` and ``cpframe ledger`` (docs/lifecycle.md)."""

from __future__ import annotations

import click

from cpframe.cli import catch_errors, main

_WHO = click.option("--who", default=None, metavar="NAME",
                    help="Who does this (recorded; default: $CPFRAME_USER or the login name).")


def _open(repo: str):
    from cpframe.cli._registry import _open as open_repo

    return open_repo(repo)


def _history(st) -> str:
    from cpframe.campaign.lifecycle import dumps_detail
    from cpframe.cli._registry import format_table

    return format_table(["ROW", "AT (UTC)", "SITE", "STATE", "FROM", "WHO", "TICKET", "WHY", "DETAIL"],
                        [[r.id, r.at, r.site, r.state, r.previous, r.who, r.ticket, r.why[:70],
                          dumps_detail(r.detail)[:90]] for r in st.rows])


def _done(st, repo: str) -> None:
    last = st.last
    click.echo(f"{st.name}: {last.previous or 'new'} -> {st.state} by {last.who} at {last.at}"
               + (f" (ticket {last.ticket})" if last.ticket else ""))
    click.echo(f"next: {st.next_step(repo)}")


@main.group("review")
def review_group() -> None:
    """Review a calibration set: submit it, then a second person approves or rejects it.

    A set is a construction ticket's chain (INSTRUMENT/calib/TICKET). Every step is
    recorded in the repository's ledger (`cpframe ledger REPO`); docs/lifecycle.md has the
    states and who may move a set between them.
    """


@review_group.command("submit")
@click.argument("repo")
@click.argument("set_name", metavar="SET")
@click.option("--report", metavar="PATH", help="Report judged on (default: newest REPO/reports/TICKET/*/index.html).")
@click.option("--why", default="", help="Note for the reviewer.")
@_WHO
@catch_errors
def review_submit(repo, set_name, report, why, who):
    """Submit a certified SET for review, with the report it is to be judged on.

    Records the report's SHA-256 and the failing verification tests (each will need a
    waiver to be approved).

    \b
    Example:
      cpframe review submit demo/repo LSSTComCam/calib/DEMO-1
    """
    from cpframe.campaign.lifecycle import submit

    with _open(repo) as r:
        st = submit(r, set_name, who=who, why=why, report=report)
        failing = st.last.detail.get("failing_tests", [])
    _done(st, repo)
    click.echo(f"report: {st.report}")
    if failing:
        click.echo(f"failing tests (each needs --waive TEST=reason to approve): {', '.join(failing)}")


@review_group.command("approve")
@click.argument("repo")
@click.argument("set_name", metavar="SET")
@click.option("--ticket", required=True, help="Approval ticket (DMTN-222's second ticket), e.g. DM-48521.")
@click.option("--waive", "waivers", multiple=True, metavar="PRODUCT:TEST=REASON",
              help="Accept a failing test, with the reason (one per failing test; repeatable).")
@click.option("--why", default="", help="Reviewer's note.")
@_WHO
@catch_errors
def review_approve(repo, set_name, ticket, waivers, why, who):
    """Approve a SET under review (not by its submitter).

    \b
    Example:
      cpframe review approve demo/repo LSSTComCam/calib/DEMO-1 --ticket DM-2 \\
          --waive 'flat-r:NOISE=amp C10 known noisy, DM-3'
    """
    from cpframe.campaign.lifecycle import approve, parse_waivers

    parsed = parse_waivers(waivers)
    with _open(repo) as r:
        st = approve(r, set_name, ticket=ticket, who=who, why=why, waivers=parsed)
    _done(st, repo)


@review_group.command("reject")
@click.argument("repo")
@click.argument("set_name", metavar="SET")
@click.option("--why", required=True, help="What is wrong and what to do (recorded).")
@_WHO
@catch_errors
def review_reject(repo, set_name, why, who):
    """Reject a SET under review (not by its submitter); the reason is recorded."""
    from cpframe.campaign.lifecycle import reject

    with _open(repo) as r:
        st = reject(r, set_name, why=why, who=who)
    _done(st, repo)


@main.command("ledger")
@click.argument("repo")
@click.argument("set_name", metavar="[SET]", required=False)
@click.option("--html", "html_out", metavar="PATH", help="Also write the summary page (a .html file or a directory).")
@click.option("--verify", "verify_only", is_flag=True, help="Only check the hash chain and print its head.")
@catch_errors
def ledger_command(repo, set_name, html_out, verify_only):
    """Every calibration set of REPO with its state, report and sites; or SET's full history.

    The ledger's hash chain is checked first: an edited row is reported and nothing is
    written. Sets the ledger does not know yet get their observed states (generated,
    verified, certified) recorded.

    \b
    Examples:
      cpframe ledger demo/repo
      cpframe ledger demo/repo LSSTComCam/calib/DEMO-1
      cpframe ledger demo/repo --html demo/repo/reports/ledger.html
    """
    from cpframe.campaign.lifecycle import ledger, record_observed, summary_rows
    from cpframe.cli._registry import format_table

    with _open(repo) as r:
        led = ledger(r)
        n = led.verify()
        if verify_only:
            click.echo(f"ledger OK: {n} rows, hash chain intact; head {led.head()}")
            return
        if set_name:
            st = record_observed(r, set_name)
            click.echo(_history(st))
            click.echo(f"state: {st.state or 'not built'}" + (" (deployed by OVERRIDE)" if st.override else ""))
            click.echo(f"next: {st.next_step(repo)}")
            statuses = None
        else:
            statuses = summary_rows(r)
            click.echo(format_table(
                ["SET", "STATE", "SINCE (UTC)", "BY", "REPORT", "DISTRIBUTED TO"],
                [[s.name, (s.state or "not built") + (" (override)" if s.override else ""),
                  s.last.at if s.last else "", s.last.who if s.last else "", s.report or "-",
                  ", ".join(f"{k}:{v}" for k, v in s.sites.items()) or "-"] for s in statuses]))
        if html_out:
            from cpframe.campaign.ledger_page import write_ledger_page

            path = write_ledger_page(r, html_out, statuses)
            click.echo(f"summary page: {path}")
        click.echo(f"ledger: {led.verify()} rows, head {led.head()[:16]}")


@main.group("curated")
def curated_group() -> None:
    """Curated calibrations as text (defects, gains, linearity, crosstalk) in a git-versioned folder.

    The folder holds one sub-folder per instrument (curated.yaml + files), like
    obs_lsst_data; `cpframe write-curated-calibrations --curated-dir DIR` writes it into a
    repository with the git commit in provenance. docs/lifecycle.md describes the formats.
    """


@curated_group.command("validate")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--instrument", help="Only this instrument's sub-folder.")
@catch_errors
def curated_validate(folder, instrument):
    """Check schema, geometry (inside the detector, real amps) and overlaps of every curated file."""
    from cpframe.campaign.curated_text import validate
    from cpframe.core.errors import UserInputError

    report = validate(folder, instrument)
    if not report.ok:
        if len(report.problems) == 1:
            raise UserInputError(report.problems[0])
        raise UserInputError(report.summary() + ":\n  - " + "\n  - ".join(report.problems))
    click.echo(report.summary())


@curated_group.command("extract")
@click.argument("kind", type=click.Choice(["defects", "gain"]))
@click.option("--from", "run", required=True, metavar="RUN", help="RUN (or chain) holding the built product.")
@click.option("--repo", required=True, help="Repository root.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Curated folder to write into.")
@click.option("--valid-from", help="Start of validity (ISO TAI) used in the file names (default: today).")
@click.option("--instrument", help="Only this instrument's products.")
@catch_errors
def curated_extract(kind, run, repo, out, valid_from, instrument):
    """Turn a built product of RUN into editable text files (defects -> manual_defects, ptc -> gain).

    \b
    Example:
      cpframe curated extract defects --repo demo/repo --out curated \\
          --from LSSTComCam/calib/DEMO-1/demo/defectGen.20241111a
    """
    from cpframe.campaign.curated_text import extract

    with _open(repo) as r:
        files = extract(r, kind, run, out, instrument=instrument, valid_from=valid_from)
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(f"{len(files)} file(s); check them with: cpframe curated validate {out}")


@curated_group.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@catch_errors
def curated_diff(a, b):
    """What changed from A to B (two files or two folders), by content: rectangles, per-amp values."""
    from cpframe.campaign.curated_text import diff

    lines = diff(a, b)
    click.echo("\n".join(lines) if lines else "no differences in content")


def monitor_options(func):
    """Options shared by ``cpframe monitor`` and ``cpframe verify-daily``."""
    opts = [
        click.option("--trend", "trend_dir", type=click.Path(file_okay=False),
                     help="Write the trend report (metric vs night per detector/amp, plots) into this folder."),
        click.option("--metrics", "metrics_file", type=click.Path(dir_okay=False),
                     help="Export the night's metrics: .prom (Prometheus text) or .lp (InfluxDB line protocol)."),
        click.option("--notify-command", help="Shell command run when there are alarms (alarms as JSON on stdin)."),
        click.option("--notify-url", help="URL the alarms are POSTed to as JSON when there are any."),
        click.option("--drift-sigma", type=float, default=5.0, show_default=True,
                     help="Drift alarm: newest night beyond this many robust sigma of the earlier nights."),
        click.option("--min-nights", type=int, default=3, show_default=True,
                     help="Earlier nights needed before drift alarms are raised."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def run_monitor(history, *, instrument="", day_obs=None, trend_dir=None, metrics_file=None, notify_command=None,
                notify_url=None, drift_sigma=5.0, min_nights=3) -> list:
    """Alarms, trend report, metrics and notification from a history file; prints what it did."""
    from cpframe.verify.monitor import drift_alarms, export_metrics, load_history, notify, write_trend_report

    table = load_history(history)
    alarms = drift_alarms(table, n_sigma=drift_sigma, min_nights=min_nights, day_obs=day_obs)
    drift = [a for a in alarms if a.kind == "drift"]
    click.echo(f"monitor: {len(drift)} drift alarm(s), {len(alarms) - len(drift)} threshold failure(s)")
    for a in alarms[:20]:
        click.secho(f"  {a.text()}", fg="red")
    if trend_dir:
        rep = write_trend_report(table, trend_dir, alarms=alarms, n_sigma=drift_sigma)
        click.echo(f"trend report: {rep.index} ({len(rep.plots)} plots)")
    if metrics_file:
        click.echo(f"metrics: {export_metrics(table, metrics_file, instrument=instrument, day_obs=day_obs, alarms=alarms)}")
    for line in notify(alarms, command=notify_command, url=notify_url,
                       context={"instrument": instrument, "history": str(history)}):
        click.echo(f"notified: {line}")
    return alarms


@main.command("monitor")
@click.argument("history", type=click.Path(dir_okay=False))
@click.option("--day-obs", type=int, help="Night to judge (default: the newest in the history).")
@click.option("--instrument", default="", help="Instrument label for the exported metrics.")
@monitor_options
@catch_errors
def monitor_command(history, day_obs, instrument, trend_dir, metrics_file, notify_command, notify_url, drift_sigma,
                    min_nights):
    """Drift alarms, trend report, metrics export and notification from a verify-daily HISTORY.

    Exit code 7 when the night has drift alarms or threshold failures.

    \b
    Example (cron, after the night's verify-daily):
      cpframe monitor daily.ecsv --trend trends/ --metrics /var/lib/node_exporter/cpframe.prom \\
          --notify-url https://alerts.example.org/cpframe
    """
    from cpframe.core.errors import VerificationFailed

    alarms = run_monitor(history, instrument=instrument, day_obs=day_obs, trend_dir=trend_dir,
                         metrics_file=metrics_file, notify_command=notify_command, notify_url=notify_url,
                         drift_sigma=drift_sigma, min_nights=min_nights)
    if alarms:
        raise VerificationFailed(f"{len(alarms)} alarm(s) in {history}; see the lines above"
                                 + (f" and {trend_dir}/index.html" if trend_dir else "") + ".")


@main.command("distribute")
@click.argument("repo")
@click.argument("set_name", metavar="SET")
@click.option("--sites", "sites_file", required=True, type=click.Path(dir_okay=False),
              help="Sites file: the central archive and the sites' repositories (docs/lifecycle.md).")
@_WHO
@catch_errors
def distribute_command(repo, set_name, sites_file, who):
    """Send an approved, deployed SET to every site of the sites file; resumable.

    Exports once into the central archive (content-addressed, checksummed), transfers what
    each site lacks, imports, rebuilds the chain, runs the self-check there and records each
    step in the ledger. After a failure, run the same command again: finished sites are skipped.
    A site given as a plain fsspec URL (s3://, gs://...; or sftp with `import: site`) only
    receives the archive and is listed WAITING with the command to run there; its import
    leaves a receipt that the next run of this command records.

    \b
    Example:
      cpframe distribute demo/repo LSSTComCam/calib/DEMO-1 --sites sites.yaml
    """
    from cpframe.campaign.distribute import distribute
    from cpframe.core.errors import ServiceError

    with _open(repo) as r:
        res = distribute(r, set_name, sites_file, who=who, progress=click.echo)
    click.echo(res.format())
    if res.failures:
        raise ServiceError(f"{len(res.failures)} site(s) failed: {res.failures[0]}"
                           + (f" (and {len(res.failures) - 1} more)" if len(res.failures) > 1 else "")
                           + "; the others are done. Fix it and run the same command again: it resumes.")
    waiting = [s for s, (state, _) in res.sites.items() if state == "waiting"]
    click.echo(f"{set_name} is distributed to every site." if res.distributed else
               f"{len(waiting)} site(s) ({', '.join(waiting)}) received the archive and wait for their import (the "
               "command is above); run this command again afterwards: it records their receipts.")


@main.command("rebuild-calib-chain")
@click.argument("repo")
@click.option("--from-archive", "archive", required=True,
              help="Central archive, or a site's inbox (REPO/.cpframe-inbox), as a path or any fsspec URL.")
@click.option("--set", "set_name", help="Calibration set (default: the archive's only set).")
@click.option("--manifest", help="Manifest id (default: the set's newest).")
@click.option("--raw-collection", help="Raws for the self-check (default: INSTRUMENT/raw/all, skipped if absent).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line (for distribute over SSH).")
@catch_errors
def rebuild_calib_chain_command(repo, archive, set_name, manifest, raw_collection, as_json):
    """Import a calibration set from the central archive and make INSTRUMENT/calib reach it.

    For a new data facility: every file is checked against its SHA-256, imported, the ticket
    chain is prepended to INSTRUMENT/calib, and the deployment self-check runs when the site
    has raws. Running it again changes nothing. Importing from a site's inbox leaves a receipt
    there (receipts/MANIFEST.json) that the source's next `cpframe distribute` records.
    """
    import json as _json

    from cpframe.campaign.distribute import rebuild_calib_chain

    with _open(repo) as r:
        out = rebuild_calib_chain(r, archive, set_name=set_name, manifest_id=manifest, raw_collection=raw_collection)
    if as_json:
        click.echo(_json.dumps(out))
        return
    click.echo(f"{out['set']} from manifest {out['manifest'][:16]}: "
               + (f"imported {out['imported']}" if out["imported"] else "already imported"))
    click.echo(f"  calib chain: {', '.join(out['calib_chain'])}")
    click.echo(f"  {out['self_check']}")
    if not out["ok"]:
        from cpframe.core.errors import VerificationFailed

        raise VerificationFailed(f"the self-check failed at {repo}: {out['self_check']}")
