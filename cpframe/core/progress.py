"""Progress bars for long steps (simulate, ingest, report...), silent when not wanted.

A bar is drawn (with rich, on stderr) only when stderr is a terminal and the user did not ask
for quiet (``--quiet`` on any command, or :func:`set_quiet`); in a log file, a pipe or a
test, :func:`progress` yields a bar object whose methods do nothing.  Library code calls
it the same way in both cases::

    with progress("simulate", total=len(tasks)) as bar:
        for t in tasks:
            ...
            bar.advance()
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["progress", "progress_callback", "progress_enabled", "set_quiet"]

_STATE = {"quiet": False}


def set_quiet(quiet: bool = True) -> None:
    """Switch progress bars off (``--quiet``) or back on for this process."""
    _STATE["quiet"] = bool(quiet)


def progress_enabled(stream: Any = None) -> bool:
    """True when a bar would be drawn: not quiet and ``stream`` (stderr) is a terminal.

    >>> set_quiet(True); progress_enabled(); set_quiet(False)
    False
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not _STATE["quiet"] and bool(isatty and isatty())


class _NoBar:
    """What :func:`progress` yields when no bar is drawn."""

    def advance(self, n: float = 1) -> None:
        """Nothing to draw."""

    def update(self, **_: Any) -> None:
        """Nothing to draw."""


class _Bar:
    def __init__(self, prog: Any, task: Any):
        self._prog, self._task = prog, task

    def advance(self, n: float = 1) -> None:
        self._prog.advance(self._task, n)

    def update(self, **fields: Any) -> None:
        self._prog.update(self._task, **fields)


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Any]:
    """A progress bar (rich, transient, on stderr) for ``total`` units of work, or a silent stand-in.

    Inside another bar (a campaign's steps around a plan or a report) it is silent: the outer bar
    is the one drawn (rich draws one live display at a time).
    """
    if not progress_enabled() or _STATE.get("active"):
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _STATE["active"] = True
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as prog:
            yield _Bar(prog, prog.add_task(description, total=total))
    finally:
        _STATE["active"] = False


@contextlib.contextmanager
def progress_callback(description: str) -> Iterator[Any]:
    """A ``callback(done, total)`` for library functions that report their progress that way
    (``simulate``, ``ingest_raws``), drawing a bar as :func:`progress` does."""
    with progress(description) as bar:
        yield lambda done, total: bar.update(completed=done, total=total)
