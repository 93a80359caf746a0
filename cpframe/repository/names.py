"""The collection-name rule, shared by the registry and submission validation.

Small and pure: no database, no I/O.  The butler accepts nearly any name;
cpframe refuses names that would be ambiguous on the command line or in a
comma-separated ``inCollection`` list (spec registry.md §2).
"""

from __future__ import annotations

import re

from cpframe.core.errors import CollectionNameError, DatasetTypeNameError

__all__ = [
    "collection_name_problem",
    "validate_collection_name",
    "dataset_type_name_problem",
    "validate_dataset_type_name",
    "MAX_SEGMENT_BYTES",
]

#: Longest ``/``-separated segment of a collection name, in UTF-8 bytes: a RUN name becomes
#: folders of the datastore, and file systems refuse a path component over 255 bytes (NAME_MAX).
MAX_SEGMENT_BYTES = 255

#: The butler's dataset type name rule (``DatasetType.isValidName``): a Python-identifier-like
#: word, optionally with ``.component`` parts.  It keeps type names safe as folder names.
_DATASET_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

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
    for i, ch in enumerate(name):
        if ord(ch) < 32 or ord(ch) == 127:
            return f"contains the control character {ch!r} at position {i}"
    if "\\" in name:
        return "contains a backslash (a path separator on some systems)"
    if name.startswith("/"):
        return "starts with '/'"
    if name.endswith("/"):
        return "ends with '/'"
    segments = name.split("/")
    if ".." in segments:
        return "has a '..' path segment"
    if "." in segments:
        return "has a '.' path segment"
    if "" in segments:
        return "has an empty path segment ('//')"
    for seg in segments:
        if len(seg.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            return (f"has a segment of {len(seg.encode('utf-8', 'surrogatepass'))} bytes "
                    f"(at most {MAX_SEGMENT_BYTES}: each segment becomes a folder name)")
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
        Empty, ``,``, whitespace, control characters, a backslash, glob characters
        (``*?[]{}``), a ``..``, ``.`` or empty segment, a leading or trailing ``/``, or a
        segment over 255 bytes; the message shows the name and the reason.

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


def dataset_type_name_problem(name: object) -> str | None:
    """Say what is wrong with a dataset type name (the butler's rule), or ``None``.

    Examples
    --------
    >>> dataset_type_name_problem("flatBootstrap") is None
    True
    >>> dataset_type_name_problem("../bias")
    "is not a word of letters, digits and '_' (optionally with '.component' parts)"
    """
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not text"
    if not name:
        return "is empty"
    if len(name) > MAX_SEGMENT_BYTES - 64 or not _DATASET_TYPE_NAME.fullmatch(name):
        return "is not a word of letters, digits and '_' (optionally with '.component' parts)"
    return None


def validate_dataset_type_name(name: str) -> str:
    """Return ``name`` if it is a valid dataset type name, else raise.

    Raises
    ------
    DatasetTypeNameError
        The name does not match the butler's rule ``[A-Za-z_][A-Za-z0-9_]*(.[A-Za-z_][A-Za-z0-9_]*)*``.

    Examples
    --------
    >>> validate_dataset_type_name("bias")
    'bias'
    """
    problem = dataset_type_name_problem(name)
    if problem:
        raise DatasetTypeNameError(
            f"dataset type name {name!r} {problem}. Dataset type names follow the butler's rule, "
            "e.g. bias, flatBootstrap, cpPtcExtract."
        )
    return name
