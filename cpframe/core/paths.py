"""Where the package's own data files are (``cpframe/data/...``).

``importlib.resources.files("cpframe")`` answers with the *first* directory named
``cpframe`` on ``sys.path``: run from the folder that holds a clone called ``cpframe``,
that is the clone's top level (a namespace package), not the package, and every data file
lookup failed (issue 16).  This module's own location does not depend on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["package_dir"]


def package_dir() -> Path:
    """The installed ``cpframe`` package directory.

    >>> (package_dir() / "data" / "cameras").is_dir()
    True
    """
    return Path(__file__).resolve().parent.parent
