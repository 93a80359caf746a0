"""The ``cpframe`` command line.

One click group; each area's commands live in their own module
(``_registry``, ``_data``, ``_submit``, ``_verify``) and attach themselves to
``main``.  Every command parses options, calls one library function and prints
a summary.  :class:`cpframe.core.errors.CpframeError` is caught here, in one place,
printed without a traceback and mapped to its ``exit_code``
(table in ``cpframe/core/errors.py``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys

import click

from cpframe.core.errors import CpframeError

__all__ = ["main", "catch_errors"]


def catch_errors(func):
    """Decorator for command callbacks: CpframeError -> message on stderr + exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CpframeError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cpframe")
def main() -> None:
    """cpframe: build, verify, certify and distribute CCD calibration products.

    Start with `cpframe demo` (simulated camera, SQLite, local Dask cluster).

    \b
    Exit codes: 0 ok, 2 bad input, 3 registry, 4 template/submission,
    5 planning, 6 execution, 7 verification failed, 8 service unavailable
    or disk full, 130/143 stopped by SIGINT/SIGTERM (docs/guarantees.md).
    """
    from cpframe.core.quickexit import skip_final_gc
    from cpframe.core.timeline import mark

    mark("command")
    skip_final_gc()  # a command's process exits without the interpreter's last collections (0.4 s)


# Each module attaches its commands to ``main`` on import.
from cpframe.cli import _registry, _data, _submit, _verify, _campaign, _query, _run  # noqa: E402,F401
from cpframe.cli import _lifecycle  # noqa: E402,F401

#: Levels ``--log-level`` accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _set_log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        import logging

        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("cpframe").setLevel(value.upper())


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from cpframe.core.progress import set_quiet

        set_quiet(True)


def _add_common_options(group: click.Group) -> None:
    """``--log-level`` and ``--quiet`` on every command (issue 16), unless it has its own."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            _add_common_options(cmd)
            continue
        names = {p.name for p in cmd.params}
        if "log_level" not in names:
            cmd.params.append(click.Option(
                ["--log-level"], type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
                expose_value=False, is_eager=True, callback=_set_log_level,
                help="Log messages of cpframe at this level and above on stderr (default: warnings)."))
        if "quiet" not in names:
            cmd.params.append(click.Option(
                ["--quiet"], is_flag=True, expose_value=False, callback=_set_quiet,
                help="No progress bar (bars are drawn only on a terminal anyway)."))


_add_common_options(main)
