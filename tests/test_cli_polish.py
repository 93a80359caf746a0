"""The command line a new user meets (issue 16): common options, progress, strict names,
campaign inputs, a clean Dask shutdown, ``python3 -m cpframe`` next to the clone."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cpframe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def test_every_command_has_log_level_and_quiet():
    cmds = dict(_commands(main))
    assert len(cmds) >= 25
    for name, cmd in cmds.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--log-level", "--quiet"} <= opts, name


def test_log_level_shows_cpframe_info_messages(tmp_path):
    r = CliRunner().invoke(main, ["create", str(tmp_path / "repo"), "--log-level", "debug"])
    assert r.exit_code == 0, r.output
    import logging

    assert logging.getLogger("cpframe").getEffectiveLevel() == logging.DEBUG
    logging.getLogger("cpframe").setLevel(logging.NOTSET)
    bad = CliRunner().invoke(main, ["create", str(tmp_path / "r2"), "--log-level", "LOUD"])
    assert bad.exit_code == 2 and "LOUD" in bad.output


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal_and_not_quiet():
    from cpframe.core import progress as p

    assert not p.progress_enabled(io.StringIO())  # a log file or a pipe: silent
    assert p.progress_enabled(_Tty())
    p.set_quiet(True)
    try:
        assert not p.progress_enabled(_Tty())
    finally:
        p.set_quiet(False)
    with p.progress("x", total=3) as bar:  # pytest's stderr is not a terminal: a silent stand-in
        bar.advance()
        bar.update(completed=3, total=3)


def test_a_bar_inside_a_bar_is_silent(monkeypatch):
    """A campaign's bar around a plan's or a report's: only the outer one draws (rich allows one)."""
    from cpframe.core import progress as p

    for k in ("TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich's overrides of what a terminal is
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(sys, "stderr", _Tty())
    with p.progress("outer", total=2) as outer:
        with p.progress("inner", total=1) as inner:
            inner.advance()
        outer.advance()
    with p.progress("again", total=1) as again:  # the outer bar ended: bars draw again
        again.advance()
    assert type(outer).__name__ == type(again).__name__ == "_Bar" and type(inner).__name__ == "_NoBar"
    drawn = sys.stderr.getvalue()
    monkeypatch.undo()
    assert "outer" in drawn and "again" in drawn and "inner" not in drawn


def test_simulate_in_a_log_prints_no_progress_bar(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cpframe", "simulate", str(tmp_path / "raw"), "--detectors", "4",
                        "--workers", "1"], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "━" not in r.stderr and "wrote 74 raw files" in r.stdout


@pytest.mark.parametrize("env, words", [
    ({"TICKET": ""}, "TICKET is set but empty"),
    ({"USER_CALIB_PREFIX": "u/someone"}, "does not end with '/'"),
])
def test_strict_rendering_rejects_an_empty_ticket_and_a_prefix_without_slash(monkeypatch, env, words):
    from cpframe.core.errors import TemplateError
    from cpframe.execution.templates import render

    base = {"USER_CALIB_PREFIX": "", "INSTRUMENT": "LSSTComCam", "TICKET": "DM-1", "TAG": "t", "RERUN": "r",
            "REPO": "/tmp/repo", "RAW_COLLECTION": "LSSTComCam/raw/all",
            "CALIB_COLLECTIONS": "LSSTComCam/calib/DM-1/curated", "SCRATCH": "/tmp/s", "SELECTION_BIAS": "x",
            "BOOTSTRAP_RUN_NUMBER": "1"}
    for k, v in {**base, **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(TemplateError, match=words):
        render(ROOT / "templates" / "bps_bias.yaml")
    r = CliRunner().invoke(main, ["render", str(ROOT / "templates" / "bps_bias.yaml")])
    assert r.exit_code == 4 and words in r.output and "Traceback" not in r.output


def test_campaign_dry_run_checks_the_input_collections(tmp_path):
    repo = tmp_path / "repo"
    assert CliRunner().invoke(main, ["create", str(repo)]).exit_code == 0
    r = CliRunner().invoke(main, ["campaign", str(ROOT / "templates" / "campaign_demo.yaml"), "--var",
                                  f"REPO={repo}", "--dry-run"])
    assert r.exit_code != 0, r.output
    assert "input collection(s) of the campaign missing: LSSTComCam/raw/all" in r.output
    assert "LSSTComCam/calib/DEMO-1/curated" in r.output and "write-curated-calibrations" in r.output
    assert "Dry run: nothing was run" not in r.output


def test_local_cluster_closes_without_killing_workers(tmp_path):
    code = ("from cpframe.execution.cluster import open_cluster\n"
            "from cpframe.core.config import load_settings\n"
            "if __name__ == '__main__':\n"
            "    oc = open_cluster(load_settings({'n_workers': 2, 'cluster_kind': 'local'}))\n"
            "    assert oc.client.submit(sum, [1, 2]).result() == 3\n"
            "    oc.close()\n"
            "    print('closed')\n")
    script = tmp_path / "close.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and "closed" in r.stdout, r.stderr[-2000:]
    assert "killing" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_python_m_cpframe_next_to_a_clone_named_cpframe(tmp_path):
    """Run from a folder holding the clone as ``cpframe/``: that folder is a namespace package
    found before the installed package (as with an editable install's finder), and data files
    must still be the package's."""
    (tmp_path / "cpframe").symlink_to(ROOT)
    finder = (
        "import importlib.abc, importlib.machinery, importlib.util, os, runpy, sys\n"
        f"PKG = {str(ROOT / 'cpframe')!r}\n"
        "class Editable(importlib.abc.MetaPathFinder):  # what pip install -e puts after PathFinder\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cpframe':\n"
        "            return importlib.util.spec_from_file_location(name, PKG + '/__init__.py',\n"
        "                                                          submodule_search_locations=[PKG])\n"
        "        if name.startswith('cpframe.'):\n"
        "            d = os.path.join(PKG, *name.split('.')[1:-1])\n"
        "            return importlib.machinery.PathFinder.find_spec(name, [d])\n"
        "# this checkout only: drop the installed editable finder and its namespace path hook\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]\n"
        "sys.path[:] = [p for p in sys.path if '__editable__' not in p]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if 'Editable' not in repr(h)]\n"
        "sys.path_importer_cache.clear()\n"
        "sys.meta_path.append(Editable())\n"
        "sys.argv = ['cpframe', 'simulate', 'raw', '--detectors', '4', '--workers', '1']\n"
        "runpy.run_module('cpframe', run_name='__main__', alter_sys=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", finder], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 74 raw files" in r.stdout
