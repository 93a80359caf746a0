"""Settings: how cpframe runs.

Precedence (highest first): explicit arguments / CLI options > environment
variables ``DASK_CPFRAME__...`` and dask YAML files > packaged defaults in
``cpframe/core/cpframe.yaml``.  Settings are validated once by :func:`load_settings`
into a frozen :class:`Settings` that is passed down; nothing deeper reads config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Mapping

import dask.config
import yaml

from cpframe.core.errors import ConfigError

__all__ = ["Settings", "load_settings", "parse_bytes", "format_bytes"]

_defaults = yaml.safe_load((resources.files("cpframe.core") / "cpframe.yaml").read_text())
dask.config.update_defaults(_defaults)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_bytes(text: str | int, what: str = "memory") -> int:
    """Parse a memory size given as text.

    >>> parse_bytes("16 GiB")
    17179869184
    >>> parse_bytes("512MB")
    512000000
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{what} {text!r} is not a size; write e.g. '512 MiB' or '4 GiB'.")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int) -> str:
    """>>> format_bytes(3 * 2**30)
    '3.0 GiB'
    """
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Settings:
    """Validated settings (see cpframe.yaml for each key's meaning)."""

    db_url: str = ""
    """Registry SQLAlchemy URL; empty = SQLite inside the repository."""
    busy_timeout_s: float = 60.0
    combine_memory_bytes: int = 512 * 2**20
    """Memory budget of one combine task, bytes."""
    cluster_kind: str = "local"
    n_workers: int = 2
    threads_per_worker: int = 1
    worker_memory_bytes: int = 4 * 2**30
    site_file: str = "slurm-local.yaml"
    minimum_jobs: int = 1
    maximum_jobs: int = 4
    retries: int = 2
    progress: bool = True

    def with_overrides(self, **kw: Any) -> "Settings":
        """Copy with explicit (CLI) values; None values are ignored."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read dask.config["cpframe"], validate, apply explicit overrides."""
    dask.config.refresh()
    c = dask.config.get("cpframe", {})

    def g(section: str, key: str):
        return (c.get(section) or {}).get(key, _defaults["cpframe"][section][key])

    kind = str(g("cluster", "kind"))
    if kind not in ("local", "slurm"):
        raise ConfigError(f"cpframe.execution.cluster.kind is {kind!r}; use 'local' or 'slurm'.")
    s = Settings(
        db_url=str(g("registry", "db-url") or ""),
        busy_timeout_s=float(g("registry", "busy-timeout-s")),
        combine_memory_bytes=parse_bytes(g("combine", "memory-budget"), "cpframe.science.combine.memory-budget"),
        cluster_kind=kind,
        n_workers=int(g("cluster", "n-workers")),
        threads_per_worker=int(g("cluster", "threads-per-worker")),
        worker_memory_bytes=parse_bytes(g("cluster", "worker-memory"), "cpframe.execution.cluster.worker-memory"),
        site_file=str(g("cluster", "site-file")),
        minimum_jobs=int(g("cluster", "minimum-jobs")),
        maximum_jobs=int(g("cluster", "maximum-jobs")),
        retries=int(g("execution", "retries")),
        progress=bool(g("execution", "progress")),
    )
    return s.with_overrides(**(overrides or {}))
