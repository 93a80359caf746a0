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
