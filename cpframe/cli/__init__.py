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


# Each module attaches its commands to ``main`` on import.
from cpframe.cli import _registry, _data, _submit, _verify, _campaign, _query, _run  # noqa: E402,F401
from cpframe.cli import _lifecycle  # noqa: E402,F401
