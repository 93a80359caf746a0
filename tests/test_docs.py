"""Documentation that is executed: the README's step-by-step and docs/tutorial.md, command by command.

Every fenced ``bash`` block of the page (of one section for the README) is split into
commands (a line ending in ``\\`` continues), and the commands run in order in one shell, in
a fresh directory holding links to the clone's ``templates/`` and ``pipelines/``, with
``cpframe`` on PATH running this checkout (``python3 -m cpframe``).  A failing command is
named with its output.  ``python`` blocks of the section run after the shell blocks, in the
same directory and environment.

Cost (measured on the shared 2-core machine, `pytest tests/test_docs.py --durations=0`): the
README's step-by-step 223 s and the tutorial 198 s at load ~6, the tutorial 355 s at load ~9;
the README's 106 s on an idle machine (load ~1, 2026-12-03: the first three submissions 14-21 s each,
the later ones 6-13 s).
The log's ``@@CMD i <epoch>`` markers give each command's share: about 20 ``cpframe submit``
runs take nearly all of it, each mostly fixed cost (interpreter start, planning 1-7 s, the
local cluster's start 2-8 s, shutdown) rather than computation (3-15 s) on the mini data; the
simulation and ingest take under 10 s.  Nothing is shared between the two pages: each must
work from a fresh directory, as a new user's would.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)

pytestmark = [pytest.mark.slow]


def section(text: str, title: str | None) -> str:
    """The text of the ``##``/``###`` section called ``title`` (the whole text when None);
    ``#`` lines inside fenced blocks (shell comments) are not headings."""
    if title is None:
        return text
    lines, out, level, fence = text.splitlines(keepends=True), [], None, False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#+) (.*?)\s*$", line)
        if level is None:
            if m and m.group(2) == title:
                level = len(m.group(1))
            continue
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    assert level is not None, f"no section {title!r}"
    return "".join(out)


def blocks(text: str, lang: str) -> list[str]:
    """The fenced blocks of a language (``bash`` also matches ``sh`` and ``shell``)."""
    langs = {"bash", "sh", "shell"} if lang == "bash" else {lang}
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) in langs]


def commands(block: str) -> list[str]:
    """Logical shell commands of a block: continuation lines joined, comments and blanks dropped.

    >>> commands("a \\\\\\n  b  # x\\n\\n# c\\nd\\n")
    ['a \\\\\\n  b  # x', 'd']
    """
    out, cur = [], []
    for line in block.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur.append(line)
        if not line.rstrip().endswith("\\"):
            out.append("\n".join(cur))
            cur = []
    if cur:
        out.append("\n".join(cur))
    return out


def run_page(path: Path, tmp_path: Path, title: str | None = None, timeout: int = 2300) -> tuple[str, Path]:
    """Run the page's shell commands (then python blocks); returns (output, work directory)."""
    text = section(path.read_text(), title)
    cmds = [c for b in blocks(text, "bash") for c in commands(b)]
    assert cmds, f"{path.name}: no shell commands"
    work = tmp_path / "work"
    work.mkdir()
    for name in ("templates", "pipelines"):
        (work / name).symlink_to(ROOT / name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "cpframe"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m cpframe \"$@\"\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    script = ["set -eo pipefail"]
    for i, c in enumerate(cmds):  # each marker carries the time, so the log shows what each command cost
        script.append(f"echo \"@@CMD {i} $(date +%s.%N)\" >&2")
        script.append(c)
    for i, py in enumerate(blocks(text, "python")):
        script.append(f"echo \"@@CMD py{i} $(date +%s.%N)\" >&2")
        script.append(f"{sys.executable} - <<'PYTHON_BLOCK'\n{py}PYTHON_BLOCK")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    for k in [k for k in env if k.startswith("SELECTION_") or k in ("REPO", "TICKET", "WORK")]:
        del env[k]  # the page must set what it uses
    log = tmp_path / f"{path.stem}.log"  # the whole transcript, readable while it runs
    with open(log, "w") as f:
        p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
    out = log.read_text()
    if p.returncode != 0:
        marks = re.findall(r"^@@CMD (\w+) ", out, re.M)
        last = marks[-1] if marks else "?"
        failed = cmds[int(last)] if last.isdigit() else f"python block {last}"
        tail = "\n".join(out.splitlines()[-40:])
        pytest.fail(f"{path.name}: command failed (exit {p.returncode}):\n  {failed}\n--- output (tail) ---\n{tail}")
    return out, work


def test_section_and_command_parsing():
    text = "# A\n## One\n```bash\nx \\\n  y\n# c\nz\n```\n```python\nprint(1)\n```\n## Two\n```bash\nw\n```\n"
    one = section(text, "One")
    assert [c for b in blocks(one, "bash") for c in commands(b)] == ["x \\\n  y", "z"]
    assert blocks(one, "python") == ["print(1)\n"]
    assert commands(blocks(section(text, "Two"), "bash")[0]) == ["w"]


@pytest.mark.timeout(2400)  # ~4 min on an idle 2-core machine; shared CI machines are slower
def test_tutorial_runs_to_a_certified_chained_verified_set(tmp_path):
    out, work = run_page(ROOT / "docs" / "tutorial.md", tmp_path)
    assert "overall: PASS" in out, out[-3000:]
    assert out.count("verification: PASS") == 5, out[-3000:]
    assert (work / "tutorial" / "report" / "index.html").is_file()
    from cpframe.repository.repo import Repository

    with Repository.open(work / "tutorial" / "repo") as repo:
        chain = repo.registry.get_chain("LSSTComCam/calib/TUT-1")
        assert [c.rsplit("/", 1)[1] for c in chain] == [
            "flat-r.20241111a", "dark.20241111a", "bias.20241111a", "ptc.20241111a", "defects.20241111a"]


@pytest.mark.timeout(2400)
def test_readme_step_by_step_runs(tmp_path):
    out, work = run_page(ROOT / "README.md", tmp_path, "A calibration campaign, step by step")
    assert "verification: PASS" in out, out[-3000:]
    assert "bias" in out and "Traceback" not in out
