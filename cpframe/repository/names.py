"""The collection-name rule, shared by the registry and submission validation.

Small and pure: no database, no I/O.  The butler accepts nearly any name;
cpframe refuses names that would be ambiguous on the command line or in a
comma-separated ``inCollection`` list (spec registry.md §2).
"""

from __future__ import annotations

import re

from cpframe.core.errors import CollectionNameError

__all__ = ["collection_name_problem", "validate_collection_name"]

#: Characters that would make a name a glob pattern (``query-collections``) or a brace expansion.
GLOB_CHARACTERS = "*?[]{}"

_WHITESPACE = re.compile(r"\s")


def collection_name_problem(name: object) -> str | None:
    """Say what is wrong with a collection name, or ``None`` if it is acceptable.

    Parameters
    ----------
    name : object
        The candidate name (anything; non-strings are refused).

    Returns
    -------
    str or None
        A short reason naming the bad character or segment.

    Examples
    --------
    >>> collection_name_problem("LSSTComCam/calib/DM-48520/newCalibs/biasGen.20250207a") is None
    True
    >>> collection_name_problem("a,b")
    "contains ',' (inCollection lists are split on commas)"
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name:
        return "is empty"
    if "," in name:
        return "contains ',' (inCollection lists are split on commas)"
    m = _WHITESPACE.search(name)
    if m:
        return f"contains whitespace {m.group()!r} at position {m.start()}"
    for ch in GLOB_CHARACTERS:
        if ch in name:
            return f"contains the glob character {ch!r}"
    if name.startswith("/"):
        return "starts with '/'"
    if ".." in name.split("/"):
        return "has a '..' path segment"
    return None


def validate_collection_name(name: str) -> str:
    """Return ``name`` if it is a valid collection name, else raise.

    Parameters
    ----------
    name : str
        Candidate collection name.

    Returns
    -------
    str
        The same name.

    Raises
    ------
    CollectionNameError
        Empty, ``,``, whitespace, glob characters (``*?[]{}``), a ``..`` segment or a
        leading ``/``; the message shows the name and the reason.

    Examples
    --------
    >>> validate_collection_name("LSSTComCam/raw/all")
    'LSSTComCam/raw/all'
    """
    problem = collection_name_problem(name)
    if problem:
        raise CollectionNameError(
            f"collection name {name!r} {problem}. Use letters, digits and '/._-' "
            "(e.g. LSSTComCam/calib/DM-48520/newCalibs/biasGen.20250207a)."
        )
    return name
