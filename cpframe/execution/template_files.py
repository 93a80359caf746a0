"""Where templates and pipelines are found: the project's folders and :func:`find_template`, without jinja2.

:mod:`cpframe.execution.templates` re-exports these.  They live apart so that ``cpframe submit`` can find its
template and read its ``computeSite`` line (:func:`cpframe.execution.submit.template_compute_site`) before it
imports jinja2 (0.03-0.05 s), and so start the local workers' fork server that much sooner (issue 14).
"""

from __future__ import annotations

import os
from pathlib import Path

from cpframe.core.errors import TemplateError

_PROJECT_DIR = Path(__file__).resolve().parents[2]


def default_pipelines_dir() -> Path:
    """The project's ``pipelines/`` folder (used when ``CPFRAME_PIPELINES`` is unset)."""
    return _PROJECT_DIR / "pipelines"


def default_templates_dir() -> Path:
    """The project's ``templates/`` folder."""
    return _PROJECT_DIR / "templates"


def find_template(name: str | os.PathLike) -> Path:
    """Find a template by path, or by bare name in the project's ``templates/``.

    ``bps_flat_g`` and ``bps_flat_g.yaml`` both name ``templates/bps_flat_g.yaml``.

    Raises
    ------
    TemplateError
        Neither a file nor a shipped template; the message lists the shipped ones.
    """
    p = Path(name)
    if p.is_file():
        return p
    for cand in (default_templates_dir() / p.name, default_templates_dir() / f"{p.name}.yaml"):
        if str(p) == p.name and cand.is_file():
            return cand
    shipped = sorted(t.stem for t in default_templates_dir().glob("bps_*.yaml"))
    raise TemplateError(
        f"template {str(name)!r} not found: no such file, and not a shipped template. "
        f"Shipped templates: {', '.join(shipped) or '(none)'}."
    )
