"""The shape of the code stays as docs/architecture.md draws it.

* the import-layer contract (pyproject.toml ``[tool.importlinter]``) holds, and fails on an
  upward import (shown on a copy of the package);
* no module is over ~800 lines without a reason written at its top;
* docs/architecture.md names only modules and paths that exist.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need_service

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 800
#: A long module says why at its top, in a line starting with this.
LONG_REASON = "# Long module:"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    need_service(exe is not None, "lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_import_layers_hold():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    copy = tmp_path / "proj"
    shutil.copytree(ROOT / "cpframe", copy / "cpframe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    model = copy / "cpframe" / "core" / "model.py"
    model.write_text(model.read_text() + "\n\nfrom cpframe.campaign import runner  # noqa: E402  (an upward import)\n")
    r = _lint_imports(copy)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and "cpframe.core.model -> cpframe.campaign.runner" in r.stdout


def _modules():
    return sorted(p for p in (ROOT / "cpframe").rglob("*.py") if "__pycache__" not in p.parts)


def test_no_long_module_without_a_reason():
    long = []
    for p in _modules():
        lines = p.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(line.startswith(LONG_REASON) for line in lines[:5]):
            long.append(f"{p.relative_to(ROOT)} ({len(lines)} lines)")
    assert not long, f"split these modules, or say why at their top with {LONG_REASON!r}: {', '.join(long)}"


def missing_names(text: str) -> list[str]:
    """Paths (``cpframe/...``, ``pipelines/...``...) and dotted modules (``cpframe.x.y``) in ``text``
    that do not exist in the project (a trailing attribute, ``cpframe.x.y.Name``, is allowed)."""
    missing = []
    for m in set(re.findall(r"\b((?:cpframe|pipelines|templates|docs|tests|cluster|benchmarks|\.ci)/[\w./<>*-]*\w)",
                            text)):
        if "<" in m or "*" in m:
            m = m.split("<")[0].split("*")[0].rstrip("/")
        if m and not (ROOT / m).exists():
            missing.append(m)
    for m in set(re.findall(r"(?<![/\w.])cpframe(?:\.[A-Za-z_]\w*)+", text)):
        parts = m.split(".")
        found = False
        for n in range(len(parts), 1, -1):
            base = ROOT.joinpath(*parts[:n])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                found = n == len(parts) or (n == len(parts) - 1 and hasattr(
                    importlib.import_module(".".join(parts[:n])), parts[-1]))
                break
        if not found:
            missing.append(m)
    return sorted(missing)


def test_architecture_doc_names_only_what_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert missing_names(text) == [], "docs/architecture.md names what does not exist"
    for pkg in sorted(p.parent.name for p in (ROOT / "cpframe").glob("*/__init__.py")):
        assert f"{pkg}/" in text, f"package cpframe/{pkg}/ is missing from docs/architecture.md"


def test_the_doc_check_catches_stale_names():
    stale = ("certify lives in `cpframe/certify.py`; see cpframe.repository.nosuch, "
             "cpframe.repository.base.Registry and cpframe/repository/query/parser.py")
    assert missing_names(stale) == ["cpframe.repository.nosuch", "cpframe/certify.py"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
