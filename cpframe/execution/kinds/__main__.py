"""``python -m cpframe.execution.kinds``: print docs/kinds.md."""

from cpframe.execution.kinds import kinds_markdown

print(kinds_markdown(), end="")
