"""Where a campaign keeps its state and its construction record (DMTN-222).

:func:`campaign_dir` (``REPO/campaigns/<TICKET>/<name>``), :class:`CampaignState`
(``state.json``, a cache of per-step status) and :class:`CommandRecord`
(``commands.sh`` + ``record.json``), plus the shell quoting they use.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from cpframe.campaign.model import DERIVED_VARIABLES, Campaign, Step, sh_join, sh_quote
from cpframe.core.errors import CampaignError

# -- state and record ---------------------------------------------------------------------------


def campaign_dir(campaign: Campaign) -> Path:
    """Where the state file and the construction record live: ``REPO/campaigns/<TICKET>/<name>``."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", campaign.name)
    return Path(campaign.repo) / "campaigns" / campaign.variables["TICKET"] / safe



def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CampaignState:
    """Per-step status, saved atomically after every change (``state.json``).

    The file is a cache: a step counts as done only when the registry confirms its
    outputs (:func:`run_campaign` checks).
    """

    def __init__(self, path: Path, data: dict | None = None):
        self.path = Path(path)
        self.data = data or {"steps": {}}

    @classmethod
    def load(cls, directory: Path) -> "CampaignState":
        p = Path(directory) / "state.json"
        if p.exists():
            try:
                return cls(p, json.loads(p.read_text()))
            except json.JSONDecodeError as err:
                raise CampaignError(
                    f"{p} is not valid JSON ({err}); move it away and run with --resume: "
                    "finished steps are found from the registry."
                ) from None
        return cls(p)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def get(self, step: str) -> dict:
        return self.data["steps"].get(step, {})

    def set(self, step: str, **info: Any) -> None:
        self.data["steps"].setdefault(step, {}).update(info)
        self.save()

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=2, sort_keys=True))

    def archive(self) -> Path | None:
        if not self.path.exists():
            return None
        dest = self.path.with_name(f"state.{_now().replace(':', '')}.json")
        os.replace(self.path, dest)
        self.data = {"steps": {}}
        return dest


class CommandRecord:
    """The construction record DMTN-222 asks for: ``commands.sh`` (shell-like) and ``record.json``.

    Each entry is the equivalent cpframe command line of what the campaign ran, with
    its start time, duration and outcome; sessions (first run, resumes) are appended.
    """

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.sh = self.dir / "commands.sh"
        self.json = self.dir / "record.json"
        self.entries: list[dict] = json.loads(self.json.read_text()) if self.json.exists() else []

    def start_session(self, campaign: Campaign, mode: str, argv: Sequence[str] | None = None) -> None:
        """Write the session header: how cpframe was called and the exported variables."""
        lines = [
            "",
            f"# ==== {_now()}  cpframe campaign {campaign.path} ({mode})",
            f"# campaign {campaign.name!r}, file sha256 {campaign.sha256[:16]}",
        ]
        if argv:
            lines.append(f"# invoked as: {sh_join(argv)}")
        for k in sorted(campaign.variables):
            if k not in DERIVED_VARIABLES:
                lines.append(f"export {k}={sh_quote(campaign.variables[k])}")
        if "SCRATCH" not in campaign.variables:
            scratch = os.environ.get("SCRATCH") or str(campaign_dir(campaign))
            lines.append(f"export SCRATCH={sh_quote(scratch)}  # where submissions keep their files")
        self._append_sh(lines)
        self.entries.append({"session": _now(), "mode": mode, "campaign": str(campaign.path),
                             "sha256": campaign.sha256, "variables": dict(campaign.variables)})
        self._save_json()

    def note(self, text: str) -> None:
        """A comment line in the record (something cpframe did that has no command of its own)."""
        self._append_sh([f"# [{_now()}] {text}"])
        self.entries.append({"note": text, "time": _now()})
        self._save_json()

    def add(self, step: Step, commands: Sequence[Sequence[str]], started: str, duration_s: float,
            outcome: str, message: str = "", outputs: Mapping[str, Any] | None = None) -> None:
        """Record one step: its equivalent command lines, times and outcome."""
        lines = [f"# [{started}] step {step.name} ({step.label})"]
        prefix = "" if outcome == "ok" else "# "
        lines += [prefix + sh_join(c) for c in commands]
        tail = f"# -> {outcome} in {duration_s:.1f} s"
        if message:
            tail += f": {message.splitlines()[0][:300]}"
        lines.append(tail)
        self._append_sh(lines)
        self.entries.append({
            "step": step.name, "kind": step.kind, "commands": [list(c) for c in commands],
            "shell": [sh_join(c) for c in commands], "started": started, "duration_s": round(duration_s, 3),
            "outcome": outcome, "message": message, "outputs": dict(outputs or {}),
        })
        self._save_json()

    def _append_sh(self, lines: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        new = not self.sh.exists()
        with open(self.sh, "a") as f:
            if new:
                f.write("#!/bin/sh\n"
                        "# cpframe construction record (DMTN-222): the commands of this campaign.\n")
            f.write("\n".join(lines) + "\n")

    def _save_json(self) -> None:
        _atomic_write(self.json, json.dumps(self.entries, indent=2))


