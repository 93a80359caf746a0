"""Issue 11 item 6: YAML alias bombs and runaway Jinja are refused quickly with one clear error.

Each case is rendered for real through ``cpframe render`` (a child process, so a hang or a
traceback would show) and through the library; the limits are those of
``cpframe/execution/limits.py`` and ``cpframe/core/yamlsafe.py``.  No timing assertion: the
suite's timeout catches a hang, and the time-budget case checks the *message* of the limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpframe.core import yamlsafe
from cpframe.core.errors import ExportError, PipelineError, TemplateError

ROOT = Path(__file__).resolve().parents[1]

BOMB = "\n".join(
    [f"{c}: &{c} [" + ",".join(['"lol"'] * 9) + "]" if i == 0 else
     f"{c}: &{c} [" + ",".join([f"*{chr(ord(c) - 1)}"] * 9) + "]" for i, c in enumerate("abcdefghi")]) + "\n"

JINJA_CASES = {
    "string times a billion": "x: \"{{ 'a' * 10**9 }}\"\n",
    "list times a billion": "x: \"{{ [1] * 10**9 }}\"\n",
    "huge power": "x: \"{{ 10**(10**9) }}\"\n",
    "nested loops": "x: \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\"\n",
    "method with a huge size": "x: \"{{ 'a'.ljust(10**9) }}\"\n",
    "filter with a huge size": "x: \"{{ 'a'|center(10**9) }}\"\n",
    "indent bomb": "x: \"{{ 'a\\nb'|indent(10**9) }}\"\n",
    "replace amplification": "x: \"{{ ('a' * 5000000)|replace('a', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa') }}\"\n",
    "huge output": "x: \"{% for i in range(100000) %}" + "a" * 200 + "{% endfor %}\"\n",
    "loops over strings": "x: \"{% for c in 'a' * 1000000 %}{% for d in 'b' * 1000000 %}{% endfor %}{% endfor %}\"\n",
}


def _render_cli(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cpframe", "render", str(path), "--allow-unset"],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("name", sorted(JINJA_CASES))
def test_runaway_jinja_is_refused(name, tmp_path):
    from cpframe.execution.templates import render

    p = tmp_path / "t.yaml"
    p.write_text(JINJA_CASES[name])
    with pytest.raises(TemplateError, match=r"cpframe\.execution\.limits"):
        render(str(p), {}, allow_unset=True)
    res = _render_cli(p)
    assert res.returncode == 4 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and str(p) in lines[0] and "limit" in lines[0], res.stderr


def test_ordinary_jinja_still_works(tmp_path):
    from cpframe.execution.templates import render

    p = tmp_path / "t.yaml"
    p.write_text("bands: \"{% for b in 'ugrizy' %}{{ b }}{% endfor %}\"\n"
                 "n: \"{{ 2 ** 10 }}\"\nrule: \"{{ '-' * 20 }}\"\nloops: \"{{ range(1000)|sum }}\"\n")
    cfg = render(str(p), {}, allow_unset=True).config
    assert (cfg["bands"], cfg["n"], cfg["rule"], cfg["loops"]) == ("ugrizy", "1024", "-" * 20,
                                                                    str(sum(range(1000))))


def test_billion_laughs_in_a_template_is_refused(tmp_path):
    from cpframe.execution.templates import render

    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    with pytest.raises(TemplateError, match="alias bomb"):
        render(str(p), {}, allow_unset=True)
    res = _render_cli(p)
    assert res.returncode == 4 and "Traceback" not in res.stderr and "alias bomb" in res.stderr, res.stderr


def test_billion_laughs_in_a_pipeline_and_an_export_is_refused(tmp_path):
    from cpframe.execution.pipeline import load_pipeline
    from cpframe.repository.transfer import _load_export

    p = tmp_path / "cpBomb.yaml"
    p.write_text(BOMB)
    with pytest.raises(PipelineError, match="alias bomb"):
        load_pipeline(str(p))
    e = tmp_path / "export.yaml"
    e.write_text("cpframe_export: 1\n" + BOMB)
    with pytest.raises(ExportError, match="alias bomb"):
        _load_export(e)


def test_yaml_loader_matches_safe_load_on_ordinary_documents():
    for text in ["a: &x {k: [1, 2.5, 'z']}\nb: *x\nc: null\n", "- 1\n- [2, 3]\n- {a: b}\n", "", "x"]:
        assert yamlsafe.load(text) == yaml.safe_load(text)
    with pytest.raises(yamlsafe.YamlBombError, match="recursive"):
        yamlsafe.load("&a [*a]")
