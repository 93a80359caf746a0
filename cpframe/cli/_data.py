"""CLI commands of the data area: ``simulate``, ``plan-selections``, ``ingest-raws``,
``write-curated-calibrations``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cpframe.core.errors import IngestError, UserInputError
from cpframe.cli import catch_errors, main

MSG_BAD_EFFECT = "--effect {text!r}: write NAME=VALUE, e.g. --effect crosstalk=on or --effect cosmics=0.1"


def _parse_effects(texts: tuple[str, ...]) -> dict:
    effects = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise UserInputError(MSG_BAD_EFFECT.format(text=text))
        v = value.strip().lower()
        if v in ("on", "true", "yes"):
            effects[name.strip()] = True
        elif v in ("off", "false", "no"):
            effects[name.strip()] = False
        else:
            try:
                effects[name.strip()] = float(v)
            except ValueError:
                raise UserInputError(MSG_BAD_EFFECT.format(text=text)) from None
    return effects


def _parse_detectors(text: str | None) -> list[int | str] | None:
    if not text:
        return None
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ".." in part:
            a, _, b = part.partition("..")
            try:
                out += list(range(int(a), int(b) + 1))
            except ValueError:
                raise UserInputError(f"--detectors {text!r}: {part!r} is not a range like 0..8.") from None
        else:
            out.append(int(part) if part.isdigit() else part)
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


@main.command("simulate")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--instrument", "-i", default=None, help="Camera model (default: the plan's instrument).")
@click.option(
    "--plan",
    "plan",
    default="demo",
    show_default=True,
    help="Observing plan: a shipped name (demo, dmtn222) or a YAML file.",
)
@click.option(
    "--scale",
    type=click.Choice(["mini", "full"]),
    default="mini",
    show_default=True,
    help="Camera scale: mini (64 x 250 px per amp) or full (509 x 2000 for ITL).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Master random seed.")
@click.option(
    "--detectors", default=None, help="Detector ids or names, comma-separated (0,4 or 0..8); default all."
)
@click.option("--workers", type=int, default=None, help="Parallel workers (default: one per CPU).")
@click.option(
    "--executor",
    type=click.Choice(["thread", "process"]),
    default="thread",
    show_default=True,
    help="Pool that runs the workers.",
)
@click.option(
    "--effect",
    "effects",
    multiple=True,
    metavar="NAME=VALUE",
    help="Switch or tune an effect (repeatable): crosstalk=on, nonlinearity=-2e-7, cosmics=off ...",
)
@catch_errors
def simulate_command(outdir, instrument, plan, scale, seed, detectors, workers, executor, effects):
    """Write simulated raw files of an observing plan, plus the truth injected.

    Files go to OUTDIR/<day_obs>/<exposure_id>/<instrument>_<exposure_id>_<detname>.fits and the
    truth (gains, read noise, bias levels, dark current, defects, flat pattern...) to OUTDIR/truth/.
    """
    from cpframe.camera.models import load_camera
    from cpframe.camera.simulate import make_truth, plan_summary, read_plan, simulate

    p = read_plan(plan, instrument)
    camera = load_camera(p.instrument, scale)
    first = min(p.specs, key=lambda s: s.begin_ns).begin  # curated defects valid at the plan's start
    truth = make_truth(camera, seed, date=first, **_parse_effects(effects))
    dets = _parse_detectors(detectors)
    t0 = time.perf_counter()
    from cpframe.core.progress import progress_callback

    with progress_callback("simulate") as bar:
        paths = simulate(
            p.specs,
            outdir,
            p.instrument,
            scale=scale,
            seed=seed,
            detectors=dets,
            workers=workers,
            truth=truth,
            executor=executor,
            progress=bar,
        )
    dt = time.perf_counter() - t0
    total = sum(x.stat().st_size for x in paths)
    ndet = len(paths) // len(p.specs)  # one file per exposure x detector
    click.echo(
        f"plan {p.name} ({p.instrument}, scale {scale}, seed {seed}): {len(p.specs)} exposures x {ndet} "
        f"detector(s)"
    )
    for day, counts in plan_summary(p.specs).items():
        click.echo(f"  day_obs {day}: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
    click.echo(
        f"wrote {len(paths)} raw files, {_size(total)}, in {dt:.1f} s ({_size(total / max(dt, 1e-9))}/s)"
    )
    click.echo(f"  raws:  {Path(outdir).resolve()}")
    click.echo(f"  truth: {Path(outdir).resolve() / 'truth'}")
    click.echo(f"next: cpframe ingest-raws REPO {outdir}   (selections: cpframe plan-selections {plan})")


@main.command("plan-selections")
@click.argument("plan")
@click.option("--instrument", "-i", default=None, help="Instrument to fill in (default: the plan's).")
@catch_errors
def plan_selections_command(plan, instrument):
    """Print the SELECTION_* variables of an observing plan as shell `export` lines.

    PLAN is a shipped plan name (demo, dmtn222) or a YAML file.  Use with
    `eval "$(cpframe plan-selections demo)"` before rendering submission templates.
    """
    from cpframe.camera.simulate import read_plan

    p = read_plan(plan, instrument)
    for name, value in p.selections.items():
        click.echo(f'export {name}="{value}"')


@main.command("ingest-raws")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--run", default=None, help="RUN collection (default INSTRUMENT/raw/all).")
@click.option(
    "--transfer",
    type=click.Choice(["copy", "link", "symlink", "direct", "move"]),
    default="copy",
    show_default=True,
    help="How files reach the repository (direct = use them in place).",
)
@click.option(
    "--processes",
    "-j",
    type=int,
    default=None,
    help="Header-reading processes (default: one per CPU for large batches).",
)
@click.option(
    "--checksum/--no-checksum",
    default=False,
    show_default=True,
    help="Record a sha256 of every file (reads every byte; export computes missing ones anyway).",
)
@catch_errors
def ingest_raws_command(repo, files, run, transfer, processes, checksum):
    """Ingest raw files (or directories of them) into REPO.

    Reads the headers, records the exposures, and registers `raw` datasets in the RUN.
    Files already ingested are skipped; unreadable, truncated or header-incomplete files are
    reported with the reason and the rest is ingested (exit code 3 if any failed).
    """
    from cpframe.repository.ingest import ingest_raws
    from cpframe.repository.repo import Repository

    t0 = time.perf_counter()
    r = Repository.open(repo)
    try:
        from cpframe.core.progress import progress_callback

        with progress_callback("ingest: reading headers") as bar:
            report = ingest_raws(r, files, run=run, transfer=transfer, processes=processes, checksum=checksum,
                                 progress=bar)
    finally:
        r.close()
    click.echo(report.summary())
    click.echo(f"took {time.perf_counter() - t0:.1f} s")
    if report.failed:
        raise IngestError(
            f"{len(report.failed)} file(s) could not be ingested (listed above); the others were."
        )


@main.command("write-curated-calibrations")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("instrument")
@click.option(
    "--collection",
    required=True,
    help="CALIBRATION collection to certify into, e.g. INSTRUMENT/calib/DM-12345/curated "
    "(never INSTRUMENT/calib, which stays CHAINED).",
)
@click.option(
    "--scale",
    type=click.Choice(["mini", "full"]),
    default=None,
    help="Geometry of the defect rectangles (default: the CAMSCALE of the repository's raws, else full).",
)
@click.option("--curated-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder holding INSTRUMENT/curated.yaml and the text files (a git repository, like "
              "obs_lsst_data); default: the copy inside cpframe. Its git commit is recorded in provenance.")
@catch_errors
def write_curated_command(repo, instrument, collection, scale, curated_dir):
    """Write INSTRUMENT's curated calibrations (camera geometry, manual defects) into REPO.

    Each file becomes a dataset in RUN <collection>/<valid-from> and is certified into the
    CALIBRATION collection with its validity range; re-running skips what is already there.
    """
    from cpframe.camera.curated import write_curated_calibrations
    from cpframe.repository.repo import Repository

    if curated_dir is not None:
        from cpframe.campaign.curated_text import validate
        from cpframe.core.errors import UserInputError

        checked = validate(curated_dir, instrument)
        if not checked.ok:  # nothing is written from a folder with a bad file
            more = f" (and {len(checked.problems) - 1} more: cpframe curated validate {curated_dir})"
            raise UserInputError(checked.problems[0] + (more if len(checked.problems) > 1 else ""))
    r = Repository.open(repo)
    try:
        report = write_curated_calibrations(r, instrument, collection, scale=scale, root=curated_dir)
    finally:
        r.close()
    click.echo(report.summary().replace("REPO", repo))
