"""YAML loading with bounded alias expansion (no "billion laughs").

``yaml.safe_load`` shares aliased nodes, so loading a "billion laughs" document is quick, but
everything that then walks the result (Jinja context, BPS substitution, ``copy.deepcopy``,
``json.dumps``) expands every alias and hangs or exhausts memory (issue 11).  :func:`load`
composes the document first, counts the nodes the document *expands* to (each alias counted
in full, computed once per node so the count itself is linear), refuses recursive aliases,
and only then constructs Python objects.  Ordinary files are far below the limits.
"""

from __future__ import annotations

from typing import Any

import yaml

from cpframe.core.errors import UserInputError

__all__ = ["load", "MAX_EXPANDED_NODES", "MAX_YAML_BYTES", "YamlBombError"]

#: Most nodes a document may expand to (aliases counted in full); a large export file of
#: 10,000 datasets is ~200,000 nodes.
MAX_EXPANDED_NODES = 5_000_000
#: Largest YAML text accepted (bytes).
MAX_YAML_BYTES = 256 * 1024 * 1024


#: libyaml's parser when PyYAML was built with it (the same documents, nodes and objects as the pure-Python
#: ``SafeLoader``, 6x faster: a camera description 85 -> 14 ms, read by the driver and every worker).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlBombError(UserInputError):
    """A YAML document that would expand beyond the limits (alias bomb, recursive alias)."""


def _expanded_size(root: yaml.Node, limit: int, source: str) -> int:
    """Nodes ``root`` expands to; raises beyond ``limit`` or on a recursive alias (iterative DFS)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            if isinstance(node, yaml.SequenceNode):
                total = 1 + sum(size[id(k)] for k in node.value)
            elif isinstance(node, yaml.MappingNode):
                total = 1 + sum(size[id(k)] + size[id(v)] for k, v in node.value)
            else:
                total = 1
            if total > limit:
                raise YamlBombError(
                    f"{source}: the YAML expands to more than {limit:,} nodes through its aliases (*name); "
                    "this looks like an alias bomb. Write the values out instead of nesting aliases."
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlBombError(f"{source}: a YAML alias refers to a node that contains it (recursive alias); "
                                "remove the recursion.")
        on_path.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((k, False) for k in node.value if id(k) not in size)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((x, False) for x in (k, v) if id(x) not in size)
    return size[id(root)]


def load(text: str | bytes, source: str = "YAML", max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """``yaml.safe_load`` with bounded expansion.

    Parameters
    ----------
    text : str or bytes
        The document.
    source : str
        Named in error messages (a path).
    max_nodes : int
        Most nodes the document may expand to.

    Raises
    ------
    YamlBombError
        Too large, an alias bomb or a recursive alias (a ``UserInputError``: exit code 2).
    yaml.YAMLError
        Not valid YAML (callers turn it into their own error).

    Examples
    --------
    >>> load("a: &x [1, 2]\\nb: *x")
    {'a': [1, 2], 'b': [1, 2]}
    """
    if len(text) > MAX_YAML_BYTES:
        raise YamlBombError(f"{source}: {len(text):,} bytes of YAML is more than the {MAX_YAML_BYTES:,} accepted.")
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, max_nodes, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()
