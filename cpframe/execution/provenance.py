"""Provenance of a RUN: what was run, on which data, with which software, by whom, how long.

``cpframe submit`` stores one *record* per submission into the RUN with
``Registry.set_run_info`` (a RUN extended with ``--extend-run`` gets a second
record; records are kept in order).  ``cpframe provenance RUN`` reads them back
with :func:`load_provenance` and prints them with :func:`format_provenance`.

A record is plain JSON-able data::

    {
      "record_version": 1,
      "status": "complete" | "failed" | "interrupted" | "running" (still running, or killed),
      "token": "<plan token>",                           # one record per submission
      "command_line": ["cpframe", "submit", ...],
      "template": {"path": ..., "text": ...},
      "submission": {...fully rendered keys...},
      "environment": {"INSTRUMENT": "LSSTComCam", ...},   # variables the template reads
      "selection": "instrument='LSSTComCam' and ...",
      "data_ids": ["instrument=LSSTComCam,detector=0,exposure=...", ...],
      "collections": {"inputs": [...], "output": ..., "run": ..., "output_chain": [...]},
      "outputs": [{"dataset_type": "bias", "data_id": "...", "id": "<uuid>",
                   "inputs": ["raw <uuid> ...", "ptc <uuid>", ...]}, ...],
      "missing": [...outputs not produced...],
      "versions": {"cpframe": ..., "dask": ..., ...},
      "host": {"hostname": ..., "user": ..., "platform": ..., "python": ...},
      "timings": {"started": ISO UTC, "render_s": ..., "plan_s": ..., ...},
      "submit_dir": "/path/to/submit/dir",
    }
"""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import platform
import socket
import sys
from typing import Any, Iterable, Mapping

import yaml

from cpframe.core.errors import MissingDatasetError
from cpframe.core.model import CollectionType
from cpframe.repository.base import Registry

__all__ = [
    "RECORD_VERSION",
    "SOFTWARE_PACKAGES",
    "software_versions",
    "host_info",
    "add_record",
    "load_provenance",
    "resolve_run",
    "format_provenance",
]

#: Version of the record layout described in the module docstring.
RECORD_VERSION = 1

#: Distributions whose versions are recorded (missing ones are recorded as ``None``).
SOFTWARE_PACKAGES = (
    "cpframe", "numpy", "scipy", "astropy", "xarray", "dask", "distributed", "dask-jobqueue",
    "sqlalchemy", "numba", "jinja2", "lark",
)

NO_PROVENANCE = (
    "RUN {run!r} has no provenance record: it was not written by `cpframe submit` "
    "(ingest, import and curated RUNs have none). `cpframe query-collections REPO` lists the RUNs."
)

def software_versions(packages: Iterable[str] = SOFTWARE_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` plus the Python version.

    >>> software_versions(["no-such-distribution"])["no-such-distribution"] is None
    True
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict[str, Any]:
    """Where the driver ran: host name, user, platform, Python executable, process id, cwd."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = os.environ.get("USER", "")
    return {
        "hostname": socket.gethostname(),
        "user": user,
        "platform": platform.platform(),
        "python": sys.executable,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
    }


def add_record(registry: Registry, run: str, record: Mapping[str, Any]) -> None:
    """Append ``record`` to the provenance records stored with RUN ``run``.

    A record with a ``token`` replaces the earlier record of the same token: a submission
    writes a ``running`` record when it starts writing and updates it as outputs are
    registered, so even a submission killed with ``kill -9`` leaves its provenance
    (status ``running``, the outputs registered so far).

    The record must be JSON-able (it is checked here so a bad value fails before anything is written).
    """
    json.dumps(record)  # fail early on a non-JSON value
    with registry.transaction():
        info = registry.get_run_info(run) or {}
        records = list(info.get("records", []))
        new = dict(record, record_version=RECORD_VERSION)
        token = record.get("token")
        same = [i for i, r in enumerate(records) if token and r.get("token") == token]
        if same:
            records[same[-1]] = new
        else:
            records.append(new)
        registry.set_run_info(run, {"records": records})


def resolve_run(registry: Registry, name: str) -> str:
    """``name`` itself when it is a RUN; the first child of an output chain (the newest RUN) otherwise.

    Raises
    ------
    UnknownCollectionError
    CollectionTypeError
        A CALIBRATION/TAGGED collection, or a chain whose first child is not a RUN.
    """
    from cpframe.core.errors import CollectionTypeError

    ctype = registry.get_collection_type(name)
    if ctype == CollectionType.CHAINED:
        chain = registry.get_chain(name)
        if chain and registry.get_collection_type(chain[0]) == CollectionType.RUN:
            return chain[0]
    if ctype != CollectionType.RUN and ctype != CollectionType.CHAINED:
        raise CollectionTypeError(f"{name!r} is a {ctype.name} collection; provenance is kept per RUN "
                                  "(give the RUN or the output chain of a submission).")
    return name


def load_provenance(registry: Registry, run: str) -> list[dict[str, Any]]:
    """Provenance records of RUN ``run``, oldest first.

    Raises
    ------
    UnknownCollectionError
        No collection of that name.
    CollectionTypeError
        The collection is not a RUN.
    MissingDatasetError
        The RUN has no record (it was not written by ``cpframe submit``).
    """
    from cpframe.core.errors import CollectionTypeError

    ctype = registry.get_collection_type(run)
    if ctype != CollectionType.RUN:
        hint = ""
        if ctype == CollectionType.CHAINED:
            chain = registry.get_chain(run)
            if chain:
                hint = f" Its first child is {chain[0]!r}; try `cpframe provenance {chain[0]}`."
        raise CollectionTypeError(f"{run!r} is a {ctype.name} collection; provenance is kept per RUN.{hint}")
    records = (registry.get_run_info(run) or {}).get("records") or []
    if not records:
        raise MissingDatasetError(NO_PROVENANCE.format(run=run))
    return list(records)


def _indent(text: str, n: int = 4) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in str(text).rstrip().splitlines())


def format_provenance(run: str, records: list[Mapping[str, Any]], max_ids: int = 20) -> str:
    """Human-readable text of the provenance records of ``run`` (what ``cpframe provenance`` prints).

    ``max_ids`` caps the number of data IDs and outputs listed per record (0 = all).
    """
    out = [f"RUN {run}: {len(records)} submission record(s)"]
    for i, rec in enumerate(records, 1):
        t = rec.get("timings", {})
        out.append("")
        out.append(f"== record {i}/{len(records)}: {rec.get('status', '?')}, started {t.get('started', '?')} ==")
        out.append("command line: " + " ".join(rec.get("command_line", [])))
        host = rec.get("host", {})
        out.append(f"host: {host.get('hostname', '?')}  user: {host.get('user', '?')}  "
                   f"platform: {host.get('platform', '?')}")
        if rec.get("submit_dir"):
            out.append(f"submit directory: {rec['submit_dir']}")
        cols = rec.get("collections", {})
        out.append(f"output chain: {cols.get('output', '')} = {', '.join(cols.get('output_chain', []))}")
        out.append(f"input collections: {', '.join(cols.get('inputs', []))}")
        out.append(f"selection: {rec.get('selection', '')}")
        ids = rec.get("data_ids", [])
        shown = ids if not max_ids else ids[:max_ids]
        out.append(f"resolved data IDs ({len(ids)}):")
        out.extend("    " + d for d in shown)
        if len(shown) < len(ids):
            out.append(f"    ... {len(ids) - len(shown)} more (--all lists them)")
        outputs = rec.get("outputs", [])
        shown_o = outputs if not max_ids else outputs[:max_ids]
        out.append(f"outputs and their inputs ({len(outputs)}):")
        for o in shown_o:
            out.append(f"    {o['dataset_type']} {o['data_id']}  ({o.get('id', '')})")
            out.extend("        <- " + x for x in o.get("inputs", []))
        if len(shown_o) < len(outputs):
            out.append(f"    ... {len(outputs) - len(shown_o)} more (--all lists them)")
        if rec.get("missing"):
            out.append(f"missing outputs ({len(rec['missing'])}):")
            out.extend("    " + m for m in rec["missing"])
        env = rec.get("environment", {})
        out.append("environment variables used:")
        out.extend(f"    {k}={'(unset)' if v is None else v}" for k, v in env.items())
        out.append("timings:")
        out.extend(f"    {k}: {v:.2f} s" if isinstance(v, float) else f"    {k}: {v}" for k, v in t.items())
        out.append("software versions:")
        out.append("    " + ", ".join(f"{k} {v}" for k, v in rec.get("versions", {}).items() if v))
        tmpl = rec.get("template", {})
        out.append(f"template {tmpl.get('path', '')}:")
        out.append(_indent(tmpl.get("text", "")))
        out.append("rendered submission:")
        out.append(_indent(yaml.safe_dump(rec.get("submission", {}), sort_keys=False)))
    return "\n".join(out)
