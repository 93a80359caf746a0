"""Science configurations from plain dicts: cp_pipe names (``nSigmaBright``) or field names.

Every science configuration dataclass (``CombineConfig``, ``DefectsConfig``, ``PtcConfig``...)
reads a mapping the same way: each key is an alias from its module's table or a field name,
and every unknown key is named at once with the known ones.  The kinds of
:mod:`cpframe.execution.kinds` rely on these names.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Mapping

from cpframe.core.errors import ConfigError

__all__ = ["alias_kwargs"]


def alias_kwargs(cls: type, values: Mapping[str, Any] | None, aliases: Mapping[str, str], message: str,
                 *, extra_known: tuple[str, ...] = (), camel_case: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments of dataclass ``cls`` from ``values`` (aliases or field names).

    Returns the keyword arguments and the keys that are neither (keys in ``extra_known`` are
    left to the caller: they are returned as unknown but not counted as errors).  With
    ``camel_case`` a key that is not an alias is also read in snake case (``binFactor`` ->
    ``bin_factor``), for configurations whose fields are cp_pipe's names.

    Raises
    ------
    ConfigError
        ``message`` formatted with ``keys`` (the unknown ones) and ``known``.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     n_iter: int = 3
    >>> alias_kwargs(C, {"nIter": 5}, {"nIter": "n_iter"}, "unknown {keys}; known {known}")
    ({'n_iter': 5}, [])
    """
    names = {f.name for f in fields(cls)}
    kw: dict[str, Any] = {}
    rest: list[str] = []
    unknown: list[str] = []
    for k, v in dict(values or {}).items():
        key = aliases.get(k, _snake(k) if camel_case else k)
        if key in names:
            kw[key] = v
        elif k in extra_known or key in extra_known:
            rest.append(k)
        else:
            unknown.append(k)
    if unknown:
        known = sorted(set(aliases) | names | set(extra_known))
        raise ConfigError(message.format(keys=", ".join(map(repr, unknown)), known=", ".join(known)))
    return kw, rest


def _snake(name: str) -> str:
    """``binFactor`` -> ``bin_factor`` (a snake-case name is returned unchanged)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
