"""Pure list arithmetic of ``collection-chain`` modes (spec registry.md §5).

No database here: :class:`cpframe.repository.sql.SqlRegistry` checks existence,
types and cycles, then calls :func:`edit_chain` to compute the new child list.
:func:`walk_collections` walks chains through any :class:`~cpframe.repository.base.Registry`
(export and butler export use it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cpframe.core.errors import UserInputError
from cpframe.core.model import CollectionType

if TYPE_CHECKING:
    from cpframe.core.model import DatasetRef, DatasetType, Timespan
    from cpframe.repository.base import Registry

__all__ = ["edit_chain", "dedupe", "split_children", "walk_collections", "ExportSelection", "select_export", "export_target"]


def dedupe(names: Sequence[str]) -> list[str]:
    """Drop repeated names, keeping the first occurrence.

    >>> dedupe(["a", "b", "a", "c", "b"])
    ['a', 'b', 'c']
    """
    seen: set[str] = set()
    out = []
    for n in names:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def split_children(items: Sequence[str]) -> list[str]:
    """Split CLI child arguments on commas, dropping empty pieces.

    >>> split_children(["a,b", "c"])
    ['a', 'b', 'c']
    """
    out = []
    for item in items:
        out.extend(p.strip() for p in str(item).split(",") if p.strip())
    return out


def edit_chain(
    current: Sequence[str], children: Sequence[str], mode: str, pop_indices: Sequence[int] = ()
) -> list[str]:
    """New child list of a chain edited with ``mode``.

    Parameters
    ----------
    current : sequence of str
        The chain's children now (empty for a new chain).
    children : sequence of str
        The children given by the user (already flattened if asked).
    mode : str
        ``redefine``, ``prepend``, ``extend``, ``remove`` or ``pop``.
    pop_indices : sequence of int
        Indices for ``pop`` (negative allowed; default ``[0]``).

    Returns
    -------
    list of str

    Raises
    ------
    UserInputError
        Unknown mode or a pop index out of range.

    Examples
    --------
    >>> edit_chain(["c1", "c2", "c3"], ["c3", "c0"], "prepend")
    ['c3', 'c0', 'c1', 'c2']
    >>> edit_chain(["c1", "c2", "c3"], ["c1"], "extend")
    ['c2', 'c3', 'c1']
    >>> edit_chain(["c1", "c2", "c3"], [], "pop", [0, -1])
    ['c2']
    """
    new = dedupe(children)
    if mode == "redefine":
        return new
    if mode == "prepend":
        return new + [c for c in current if c not in new]
    if mode == "extend":
        return [c for c in current if c not in new] + new
    if mode == "remove":
        return [c for c in current if c not in new]
    if mode == "pop":
        indices = list(pop_indices) or [0]
        n = len(current)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise UserInputError(
                f"pop index {', '.join(map(str, bad))} is out of range for a chain of {n} "
                f"children ({', '.join(current) or 'empty'}); use 0..{n - 1} or -{n}..-1."
            )
        drop = {i % n for i in indices}
        return [c for i, c in enumerate(current) if i not in drop]
    raise UserInputError(
        f"unknown chain mode {mode!r}; use one of redefine, prepend, extend, remove, pop."
    )


def walk_collections(registry: "Registry", names: Sequence[str]) -> tuple[list[tuple[str, list[str]]],
                                                                         list[tuple[str, CollectionType]]]:
    """Chains (children before parents) and leaf collections reached from ``names``, depth-first."""
    chains: list[tuple[str, list[str]]] = []
    leaves: list[tuple[str, CollectionType]] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        ctype = registry.get_collection_type(name)
        if ctype == CollectionType.CHAINED:
            kids = list(registry.get_chain(name))
            for k in kids:
                visit(k)
            chains.append((name, kids))
        else:
            leaves.append((name, ctype))

    for n in names:
        visit(n)
    return chains, leaves


@dataclass
class ExportSelection:
    """What an export of some collections holds (both export formats start from it)."""

    chains: list[tuple[str, list[str]]]
    """CHAINED collections reached, children before parents, with their children."""
    leaves: list[tuple[str, CollectionType]]
    """RUN and CALIBRATION collections reached."""
    types: dict[str, "DatasetType"]
    """Every dataset type of the repository, by name."""
    wanted: set[str]
    """Dataset types exported."""
    refs: dict[str, "DatasetRef"] = field(default_factory=dict)
    """Datasets exported, by id."""
    runs: list[str] = field(default_factory=list)
    """RUNs holding them (named ones first, then the runs of certified datasets)."""
    certifications: list[tuple[str, list[tuple["Timespan", str]]]] = field(default_factory=list)
    """Per CALIBRATION collection: (validity range, dataset id) of each exported certification."""


def select_export(registry: "Registry", collections: Sequence[str],
                  dataset_types: Sequence[str] | None) -> ExportSelection:
    """The datasets, runs and certifications an export of ``collections`` holds.

    ``dataset_types`` default to every calibration type.

    Raises
    ------
    UserInputError
        No collection named.
    ExportError
        A TAGGED collection is reached (not exportable yet).
    UnknownDatasetTypeError, UnknownCollectionError
    """
    from cpframe.core.errors import ExportError

    if not collections:
        raise UserInputError("name at least one collection to export (e.g. LSSTComCam/calib).")
    chains, leaves = walk_collections(registry, collections)
    types = {t.name: t for t in registry.query_dataset_types()}
    wanted = set(dataset_types) if dataset_types else {n for n, t in types.items() if t.is_calibration}
    unknown = sorted(wanted - set(types))
    if unknown:
        registry.get_dataset_type(unknown[0])  # raises UnknownDatasetTypeError with the list
    tagged = [n for n, t in leaves if t == CollectionType.TAGGED]
    if tagged:
        raise ExportError(f"TAGGED collections cannot be exported yet ({', '.join(tagged)}); export their RUNs.")
    sel = ExportSelection(chains, leaves, types, wanted)
    for name, ctype in leaves:
        if ctype == CollectionType.RUN:
            sel.runs.append(name)
            for ref in registry.query_datasets(sorted(wanted), [name]):
                sel.refs[ref.id] = ref
        elif ctype == CollectionType.CALIBRATION:
            links = []
            for ref in registry.query_certifications(name):
                if ref.dataset_type in wanted:
                    sel.refs.setdefault(ref.id, ref)
                    links.append((ref.extra["timespan"], ref.id))
            sel.certifications.append((name, links))
    for ref in sel.refs.values():
        if ref.run not in sel.runs:
            sel.runs.append(ref.run)
    return sel


def export_target(directory: str | os.PathLike, transfer: str) -> Path:
    """The absolute path of a new export directory, checked before anything is read or written.

    Raises
    ------
    ExportError
        ``directory`` exists already.
    UserInputError
        ``transfer`` is not copy, link or symlink.
    """
    from cpframe.core.errors import ExportError

    dest = Path(directory).absolute()
    if dest.exists() or dest.is_symlink():
        raise ExportError(f"export directory {dest} already exists; give a new directory name.")
    if transfer not in ("copy", "link", "symlink"):
        raise UserInputError(f"export transfer {transfer!r}: use copy, link or symlink.")
    return dest
