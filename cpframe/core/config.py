"""Settings: how cpframe runs.

Precedence (highest first): explicit arguments / CLI options > environment
variables ``DASK_CPFRAME__...`` and dask YAML files > packaged defaults in
``cpframe/core/cpframe.yaml``.  Settings are validated once by :func:`load_settings`
into a frozen :class:`Settings` that is passed down; nothing deeper reads config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Literal, Mapping

import dask.config
import yaml
from dask.utils import format_bytes as _dask_format_bytes
from dask.utils import parse_bytes as _dask_parse_bytes
from pydantic import Field

from cpframe.core.errors import ConfigError
from cpframe.core.schema import Schema, validate

__all__ = ["Settings", "load_settings", "parse_bytes", "format_bytes"]

_defaults = yaml.safe_load((resources.files("cpframe.core") / "cpframe.yaml").read_text())
dask.config.update_defaults(_defaults)

def parse_bytes(text: str | int, what: str = "memory") -> int:
    """Parse a memory size given as text, as dask and dask-jobqueue do (``dask.utils.parse_bytes``).

    Decimal units are powers of 10 and a bare letter is decimal too (``4G`` = ``4 GB`` =
    4e9 bytes, as dask-jobqueue reads the same string); binary units say ``i``.

    >>> parse_bytes("16 GiB")
    17179869184
    >>> parse_bytes("512MB"), parse_bytes("4G")
    (512000000, 4000000000)

    Raises
    ------
    ConfigError
        Not a size.
    """
    if isinstance(text, bool):
        raise ConfigError(f"{what} {text!r} is not a size; write e.g. '512 MiB' or '4 GiB'.")
    if isinstance(text, int):
        return text
    try:
        return int(_dask_parse_bytes(str(text)))
    except (ValueError, TypeError):
        raise ConfigError(f"{what} {text!r} is not a size; write e.g. '512 MiB' or '4 GiB'.") from None


def format_bytes(n: int) -> str:
    """A size for people (``dask.utils.format_bytes``).

    >>> format_bytes(3 * 2**30)
    '3.00 GiB'
    """
    return _dask_format_bytes(int(n))


# -- the settings file (cpframe.yaml, merged into dask.config["cpframe"]) ----------------------------


class _Registry(Schema):
    db_url: str | None = Field(alias="db-url")
    busy_timeout_s: float = Field(alias="busy-timeout-s", gt=0)


class _Combine(Schema):
    memory_budget: str | int = Field(alias="memory-budget")


class _Cluster(Schema):
    kind: Literal["local", "slurm"]
    n_workers: int = Field(alias="n-workers", ge=1)
    threads_per_worker: int = Field(alias="threads-per-worker", ge=1)
    worker_memory: str | int = Field(alias="worker-memory")
    site_file: str = Field(alias="site-file")
    minimum_jobs: int = Field(alias="minimum-jobs", ge=0)
    maximum_jobs: int = Field(alias="maximum-jobs", ge=1)


class _Execution(Schema):
    retries: int = Field(ge=0)
    progress: bool


class SettingsFile(Schema):
    """The ``cpframe:`` section of the settings (every key is documented in ``cpframe.yaml``)."""

    registry: _Registry
    combine: _Combine
    cluster: _Cluster
    execution: _Execution


def _dashed(d: Any) -> Any:
    """dask keeps ``DASK_CPFRAME__A__B_C`` as ``b_c``; the file spells keys ``b-c``."""
    if isinstance(d, Mapping):
        return {str(k).replace("_", "-"): _dashed(v) for k, v in d.items()}
    return d


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
    """Read dask.config["cpframe"], validate it (:class:`SettingsFile`), apply explicit overrides.

    Raises
    ------
    ConfigError
        Every wrong key or value, one line each, naming its key path (``cpframe.cluster.kind``).
    """
    dask.config.refresh()
    c = validate(_dashed(dask.config.get("cpframe", {})), SettingsFile,
                 "cpframe settings (cpframe.yaml, dask config files, DASK_CPFRAME__* variables)", prefix="cpframe")
    s = Settings(
        db_url=str(c.registry.db_url or ""),
        busy_timeout_s=c.registry.busy_timeout_s,
        combine_memory_bytes=parse_bytes(c.combine.memory_budget, "cpframe.combine.memory-budget"),
        cluster_kind=c.cluster.kind,
        n_workers=c.cluster.n_workers,
        threads_per_worker=c.cluster.threads_per_worker,
        worker_memory_bytes=parse_bytes(c.cluster.worker_memory, "cpframe.cluster.worker-memory"),
        site_file=c.cluster.site_file,
        minimum_jobs=c.cluster.minimum_jobs,
        maximum_jobs=c.cluster.maximum_jobs,
        retries=c.execution.retries,
        progress=c.execution.progress,
    )
    return s.with_overrides(**(overrides or {}))
