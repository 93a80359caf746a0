"""Distribution of an approved calibration set to every site (DMTN-222 §5, "central archive").

* :func:`archive_set` exports the set once (``export-calibs`` of its ticket chain) into a
  **central archive**, content-addressed: every file is stored once under
  ``objects/<2 hex>/<sha256>``; a manifest (``manifests/<id>.json``, ``id`` = SHA-256 of its
  canonical JSON) holds the export file and the checksum of every file;
  ``sets/<set>.json`` points at the set's newest manifest.
* :func:`rebuild_calib_chain` runs *at a site*: it materialises a manifest from an archive
  (checking every checksum), imports it, prepends the ticket chain to ``INSTRUMENT/calib``
  (``cpframe deploy``'s chain edits) and runs the deployment self-check when the site has
  raws.  ``cpframe rebuild-calib-chain REPO --from-archive DIR`` is the same at a new facility.
* :func:`distribute` reads a **sites file**, then for each site transfers what the site lacks,
  imports and checks, and records every step in the source repository's ledger (rows with the
  site's name).  It resumes: a site already ``checked`` for the same manifest is skipped, and
  objects already at a site are not sent again.  When every site is checked the set moves to
  ``distributed``.

Sites file (YAML)::

    archive: /data/calib-archive          # the central archive (a folder)
    raw_collection: LSSTComCam/raw/all    # default for the sites' self-check
    sites:
      - {name: usdf, repo: /sdf/group/rubin/repo/main}                      # a path (any registry: SQLite, PostgreSQL)
      - {name: frdf, repo: "sftp://cpframe@frdf.example.org:2222/repo/main",  # SSH: SFTP transfer, import run there
         key_filename: ~/.ssh/id_ed25519, command: "cpframe"}
      - {name: mirror, repo: "s3://bucket/calib"}                          # any other fsspec URL
      - {name: dtn, repo: "sftp://xfer@dtn.example.org/repo", import: site}  # SFTP only, no cpframe over SSH

An SSH site needs cpframe installed there (``command``).  A plain fsspec URL (or ``import:
site``) receives the archive objects in its inbox; the site runs ``rebuild-calib-chain REPO
--from-archive URL/.cpframe-inbox`` itself, which leaves a receipt (``receipts/<manifest>.json``)
that the next ``distribute`` records as the site's ``imported`` and ``checked`` rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

import yaml

from cpframe.core.errors import (
    CpframeError,
    ExportError,
    LifecycleError,
    ServiceError,
    UnknownCollectionError,
    UserInputError,
)
from cpframe.core.model import CollectionType

__all__ = ["Manifest", "Site", "SitesFile", "archive_set", "distribute", "load_sites", "rebuild_calib_chain"]

ARCHIVE_VERSION = 1
INBOX = ".cpframe-inbox"


def _escape(name: str) -> str:
    """Set name -> file name.

    >>> _escape("u/me/LSSTComCam/calib/DM-1")
    'u~me~LSSTComCam~calib~DM-1'
    """
    return name.replace("/", "~")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- sites file --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One site of a sites file."""

    name: str
    url: str
    kind: str
    """``local`` (a path: imported from here), ``ssh`` (sftp://...: SFTP transfer, import run over SSH) or
    ``fsspec`` (any other URL, or sftp with ``import: site``: transfer, then the site imports from its inbox
    and leaves a receipt that the next ``distribute`` records)."""
    path: str
    """Repository root (local or on the remote host); for other fsspec URLs the URL."""
    host: str = ""
    port: int = 22
    user: str = ""
    key_filename: str = ""
    command: str = "cpframe"
    """How cpframe is started at an SSH site."""
    raw_collection: str = ""
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SitesFile:
    archive: Path
    sites: tuple[Site, ...]
    raw_collection: str = ""


def load_sites(path: str | os.PathLike) -> SitesFile:
    """Read and check a sites file (every problem listed at once).  UserInputError when invalid."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise UserInputError(f"sites file {p} does not exist.") from None
    except yaml.YAMLError as err:
        raise UserInputError(f"sites file {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    problems = []
    if not isinstance(doc, dict):
        raise UserInputError(f"sites file {p}: expected a mapping with 'archive' and 'sites'.")
    unknown = sorted(set(doc) - {"archive", "sites", "raw_collection"})
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (use archive, raw_collection, sites)")
    if not doc.get("archive"):
        problems.append("'archive' (the central archive folder) is missing")
    sites, names = [], set()
    for i, s in enumerate(doc.get("sites") or []):
        if not isinstance(s, dict) or not s.get("name") or not s.get("repo"):
            problems.append(f"site {i + 1}: needs name and repo")
            continue
        bad = sorted(set(s) - {"name", "repo", "key_filename", "command", "raw_collection", "options", "import"})
        if bad:
            problems.append(f"site {s['name']}: unknown key(s) {', '.join(bad)}")
        if s.get("import") not in (None, "site"):
            problems.append(f"site {s['name']}: import {s['import']!r} is not known (leave it out, or 'site': the "
                            "site imports from its inbox itself)")
        if s["name"] in names:
            problems.append(f"site {s['name']}: name used twice")
        names.add(s["name"])
        sites.append(_site(s))
    if not sites and not problems:
        problems.append("no sites listed under 'sites'")
    if problems:
        raise UserInputError(f"sites file {p}: " + "; ".join(problems) + ".")
    archive = Path(os.path.expanduser(str(doc["archive"])))
    if not archive.is_absolute():
        archive = (p.parent / archive).resolve()
    return SitesFile(archive, tuple(sites), str(doc.get("raw_collection") or ""))


def _site(s: dict) -> Site:
    url = str(s["repo"])
    parts = urlsplit(url)
    common = dict(key_filename=os.path.expanduser(str(s.get("key_filename") or "")),
                  command=str(s.get("command") or "cpframe"), raw_collection=str(s.get("raw_collection") or ""),
                  options=dict(s.get("options") or {}))
    if parts.scheme in ("", "file"):
        return Site(s["name"], url, "local", unquote(parts.path) if parts.scheme else url, **common)
    if parts.scheme in ("sftp", "ssh"):
        # import: site -> only SFTP is needed there (no cpframe over SSH): the site imports and leaves a receipt
        return Site(s["name"], url, "fsspec" if s.get("import") == "site" else "ssh", unquote(parts.path),
                    host=parts.hostname or "", port=parts.port or 22, user=parts.username or "", **common)
    return Site(s["name"], url, "fsspec", url, **common)


# -- the central archive -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    id: str
    set_name: str
    instrument: str
    files: dict
    """Path inside the export -> SHA-256 hex."""
    export: str
    """The export file (YAML text)."""

    def object_path(self, sha: str) -> str:
        return f"objects/{sha[:2]}/{sha}"


def _manifest_doc(set_name: str, instrument: str, files: dict, export: str) -> dict:
    return {"cpframe_archive": ARCHIVE_VERSION, "set": set_name, "instrument": instrument, "files": files,
            "export": export}


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def archive_set(repo: Any, set_name: str, archive: str | os.PathLike) -> Manifest:
    """Export the set into the archive (files stored once by SHA-256).  Idempotent: same content, same id."""
    from cpframe.repository.transfer import export_calibs

    archive = Path(archive)
    instrument = set_name.split("/")[2] if set_name.startswith("u/") else set_name.split("/")[0]
    with tempfile.TemporaryDirectory(prefix="cpframe-export-") as tmp:
        export_file = export_calibs(repo, Path(tmp) / "export", [set_name])
        root = export_file.parent
        doc = yaml.safe_load(export_file.read_text())
        doc["description"] = f"calibration set {set_name}"  # not the source path: same content, same manifest
        export_text = yaml.safe_dump(doc, sort_keys=False)
        files = {}
        for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != export_file.name):
            sha = _sha256_file(f)
            rel = f.relative_to(root).as_posix()
            files[rel] = sha
            target = archive / "objects" / sha[:2] / sha
            if not (target.exists() and target.stat().st_size == f.stat().st_size):
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(f".{sha}.part")
                shutil.copyfile(f, part)
                os.replace(part, target)
    doc = _manifest_doc(set_name, instrument, files, export_text)
    mid = hashlib.sha256(_canonical(doc)).hexdigest()
    _write_atomic(archive / "manifests" / f"{mid}.json", _canonical(doc))
    _write_atomic(archive / "sets" / f"{_escape(set_name)}.json", _canonical({"set": set_name, "manifest": mid}))
    return Manifest(mid, set_name, instrument, files, export_text)


def _archive_fs(archive: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, root) of an archive given as a path or any fsspec URL."""
    text = os.fspath(archive)
    if "://" not in text and "::" not in text:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), str(Path(text).expanduser().absolute())
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as err:
        raise UserInputError(f"cannot open the archive {text} ({err}); give a path or an fsspec URL whose "
                             "filesystem is installed.") from None
    return fs, root.rstrip("/")


def _display(archive: str | os.PathLike) -> str:
    return os.fspath(archive)


def read_manifest(archive: str | os.PathLike, set_name: str | None = None, manifest_id: str | None = None) -> Manifest:
    """The manifest ``manifest_id``, or the newest of ``set_name`` (checked against its id).

    ``archive`` is a folder or any fsspec URL (a site's inbox on object storage, SFTP...).
    """
    fs, root = _archive_fs(archive)
    shown = _display(archive)
    try:
        if not fs.isdir(f"{root}/manifests"):
            raise UserInputError(f"{shown} is not a cpframe archive (no manifests/); write one with `cpframe distribute`.")
        if manifest_id is None:
            if not set_name:
                sets = sorted(p for p in fs.glob(f"{root}/sets/*.json"))
                if len(sets) != 1:
                    raise UserInputError(f"{shown} holds {len(sets)} sets; name one with --set.")
                pointer = sets[0]
            else:
                pointer = f"{root}/sets/{_escape(set_name)}.json"
            if not fs.isfile(pointer):
                raise UserInputError(f"the archive {shown} has no set {set_name!r}; `ls {shown}/sets` lists them.")
            manifest_id = json.loads(fs.cat_file(pointer))["manifest"]
        path = f"{root}/manifests/{manifest_id}.json"
        if not fs.isfile(path):
            raise UserInputError(f"the archive {shown} has no manifest {manifest_id}.")
        data = fs.cat_file(path)
    except OSError as err:
        raise ServiceError(f"cannot read the archive {shown} ({type(err).__name__}: {err}).") from None
    if hashlib.sha256(data).hexdigest() != manifest_id:
        raise ExportError(f"manifest {shown}/manifests/{manifest_id}.json does not match its id: the archive was "
                          "changed; distribute again.")
    doc = json.loads(data)
    return Manifest(manifest_id, doc["set"], doc["instrument"], doc["files"], doc["export"])


def _materialize(archive: str | os.PathLike, m: Manifest, dest: Path) -> Path:
    """Export directory of a manifest, every file checked against its SHA-256."""
    fs, root = _archive_fs(archive)
    bad = []
    for rel, sha in m.files.items():
        src = f"{root}/{m.object_path(sha)}"
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not fs.isfile(src):
                bad.append(f"{rel}: object {sha[:12]} missing")
                continue
            fs.get_file(src, str(target))
        except OSError as err:
            bad.append(f"{rel}: object {sha[:12]} unreadable ({type(err).__name__})")
            continue
        if _sha256_file(target) != sha:
            bad.append(f"{rel}: object {sha[:12]} damaged")
    if bad:
        raise ExportError(f"archive {_display(archive)}: {len(bad)} file(s) unusable ({'; '.join(bad[:5])}); nothing "
                          "was imported. Distribute again from the source to repair the archive.")
    (dest / "export.yaml").write_text(m.export)
    return dest


def _write_receipt(archive: str | os.PathLike, out: dict) -> None:
    """A site's answer in its inbox (``receipts/<manifest>.json``): what the import did, for the source
    to record on its next ``cpframe distribute`` (sites it cannot run cpframe at)."""
    fs, root = _archive_fs(archive)
    if root.rstrip("/").rsplit("/", 1)[-1] != INBOX:
        return  # the central archive itself, or a copy: nobody waits for an answer there
    path = f"{root}/receipts/{out['manifest']}.json"
    try:
        fs.makedirs(f"{root}/receipts", exist_ok=True)
        fs.pipe_file(f"{path}.part", _canonical(out))
        fs.mv(f"{path}.part", path)
    except OSError as err:
        raise ServiceError(f"imported, but the receipt {path} cannot be written ({err}); the source will not see "
                           "the import: make the inbox writable and run this command again.") from None


# -- at a site -----------------------------------------------------------------------------------------


def _already_imported(repo: Any, m: Manifest) -> bool:
    reg = repo.registry
    try:
        if reg.get_collection_type(m.set_name) != CollectionType.CHAINED:
            return False
    except UnknownCollectionError:
        return False
    doc = yaml.safe_load(m.export)
    ids = [r["id"] for d in doc.get("datasets") or [] for r in d["records"]]
    try:
        return len(reg.get_datasets(ids)) == len(ids)
    except CpframeError:
        return False


def rebuild_calib_chain(repo: Any, archive: str | os.PathLike, *, set_name: str | None = None,
                        manifest_id: str | None = None, raw_collection: str | None = None) -> dict:
    """Import a set from an archive and make ``INSTRUMENT/calib`` reach it (the site's deployment).

    Returns a JSON-able dict: ``set``, ``manifest``, ``imported`` (counts, or ``{}`` when it was
    already there), ``calib_chain``, ``self_check`` (headline, or why it was skipped), ``ok``.
    """
    from cpframe.campaign.deploy import deploy
    from cpframe.campaign.lifecycle import current_user, ledger

    m = read_manifest(archive, set_name, manifest_id)
    counts: dict = {}
    if not _already_imported(repo, m):
        from cpframe.repository.transfer import import_export

        with tempfile.TemporaryDirectory(prefix="cpframe-import-", dir=str(repo.root)) as tmp:
            counts = import_export(repo, _materialize(archive, m, Path(tmp) / "export"), transfer="move")
    reg = repo.registry
    raw = raw_collection or f"{m.instrument}/raw/all"
    try:
        reg.get_collection_type(raw)
        has_raws = True
    except UnknownCollectionError:
        has_raws = False
    if has_raws:
        res = deploy(reg, m.instrument, m.set_name, raw_collection=raw)
        check, ok = res.headline(), res.ok
    else:
        calib = f"{m.instrument}/calib"
        current = reg.get_chain(calib) if _exists(reg, calib) else ()
        if current[:1] != (m.set_name,):
            reg.set_chain(calib, [m.set_name], mode="prepend")
        check, ok = f"self-check skipped: no raw collection {raw} at this site", True
    detail = {"manifest": m.id, "archive": _display(archive), "imported": counts, "self_check": check}
    led = ledger(repo)
    seen = any(r.set_name == m.set_name and r.detail.get("manifest") == m.id and r.state == "deployed"
               for r in led.rows(m.set_name))
    if ok and not seen:  # running it again records nothing new
        led.append([{"set_name": m.set_name, "state": "deployed", "previous": "", "who": current_user(),
                              "why": f"imported from the central archive (manifest {m.id[:12]}); approved at the source",
                              "detail": detail}])
    out = {"set": m.set_name, "manifest": m.id, "imported": counts, "calib_chain": list(reg.get_chain(
        f"{m.instrument}/calib")), "self_check": check, "ok": ok}
    _write_receipt(archive, out)
    return out


def _exists(reg: Any, name: str) -> bool:
    try:
        reg.get_collection_type(name)
        return True
    except UnknownCollectionError:
        return False


# -- transfer to remote sites -------------------------------------------------------------------------


def _sftp(site: Site, timeout_s: float = 20.0):
    from fsspec.implementations.sftp import SFTPFileSystem

    kw: dict = {"port": site.port, "timeout": timeout_s, "allow_agent": False, "look_for_keys": not site.key_filename}
    if site.user:
        kw["username"] = site.user
    if site.key_filename:
        kw["key_filename"] = site.key_filename
    kw.update(site.options.get("ssh", {}))
    try:
        return SFTPFileSystem(site.host, skip_instance_cache=True, **kw)
    except Exception as err:  # noqa: BLE001 - paramiko/socket raise many types
        raise ServiceError(f"site {site.name}: cannot connect to {site.url} ({type(err).__name__}: "
                           f"{str(err).strip() or 'no detail'}); check the host, port, key and that sshd runs.") from None


def _remote_fs(site: Site):
    """(filesystem, inbox) of a remote site: SFTP for ``sftp://``/``ssh://`` URLs, fsspec for any other URL."""
    if urlsplit(site.url).scheme in ("sftp", "ssh"):
        fs = _sftp(site)
        return fs, site.path.rstrip("/") + "/" + INBOX
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(site.url, **site.options)
    except (ImportError, ValueError) as err:
        raise ServiceError(f"site {site.name}: cannot open {site.url} ({err}).") from None
    return fs, root.rstrip("/") + "/" + INBOX


def _upload(site: Site, archive: Path, m: Manifest, progress: Callable[[str], None]) -> dict:
    """Send the manifest's objects the site lacks, then the manifest and the set pointer (last).

    Each object is written under ``<name>.part`` and renamed; what arrived is checked (a file of
    the right size), so a rename that went astray is a failure, not a silent gap.
    """
    fs, inbox = _remote_fs(site)
    sent = skipped = 0
    try:
        for sha in sorted(set(m.files.values())):
            rel = m.object_path(sha)
            src = archive / rel
            dst = f"{inbox}/{rel}"
            size = src.stat().st_size
            try:
                if fs.isfile(dst) and fs.size(dst) == size:
                    skipped += 1
                    continue
            except OSError:
                pass
            fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            part = f"{dst}.part"
            fs.put_file(str(src), part)
            fs.mv(part, dst)
            if not (fs.isfile(dst) and fs.size(dst) == size):
                raise OSError(f"{dst} is not the {size}-byte object sent (something else is in its place)")
            sent += 1
            progress(f"  {site.name}: sent {rel}")
        for rel in (f"manifests/{m.id}.json", f"sets/{_escape(m.set_name)}.json"):
            fs.makedirs(f"{inbox}/{rel.rsplit('/', 1)[0]}", exist_ok=True)
            fs.put_file(str(archive / rel), f"{inbox}/{rel}")
    except (OSError, IOError) as err:
        raise ServiceError(f"site {site.name}: transfer to {site.url} failed after {sent} object(s) "
                           f"({type(err).__name__}: {str(err).strip() or 'no detail'}); run `cpframe distribute` "
                           "again to resume.") from None
    return {"sent": sent, "already_there": skipped, "inbox": inbox}


def _read_receipt(site: Site, m: Manifest) -> dict | None:
    """The site's answer to ``rebuild-calib-chain --from-archive INBOX`` for this manifest (None: not yet)."""
    fs, inbox = _remote_fs(site)
    path = f"{inbox}/receipts/{m.id}.json"
    try:
        if not fs.isfile(path):
            return None
        doc = json.loads(fs.cat_file(path))
    except (OSError, ValueError) as err:
        raise ServiceError(f"site {site.name}: cannot read its receipt {path} ({type(err).__name__}: {err}).") from None
    if not isinstance(doc, dict) or doc.get("manifest") != m.id or doc.get("set") != m.set_name \
            or not {"ok", "self_check", "imported", "calib_chain"} <= set(doc):
        raise ServiceError(f"site {site.name}: its receipt {path} is not an import of {m.set_name} (manifest "
                           f"{m.id[:12]}); run `cpframe rebuild-calib-chain` there again.")
    return doc


def _site_import_command(site: Site, raw: str | None) -> str:
    sftp = urlsplit(site.url).scheme in ("sftp", "ssh")
    repo, inbox = (site.path, f"{site.path.rstrip('/')}/{INBOX}") if sftp else ("REPO", f"{site.url.rstrip('/')}/{INBOX}")
    return (f"cpframe rebuild-calib-chain {repo} --from-archive {inbox}"
            + (f" --raw-collection {raw}" if raw else ""))


def _ssh_run(site: Site, argv: Sequence[str], timeout_s: float = 1800.0) -> tuple[int, str, str]:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - known_hosts: site option
    kw: dict = {"port": site.port, "timeout": 20, "allow_agent": False, "look_for_keys": not site.key_filename}
    if site.user:
        kw["username"] = site.user
    if site.key_filename:
        kw["key_filename"] = site.key_filename
    try:
        client.connect(site.host, **kw)
        cmd = site.command + " " + " ".join(shlex.quote(a) for a in argv)
        _stdin, stdout, stderr = client.exec_command(cmd, timeout=timeout_s)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out, err
    except Exception as err:  # noqa: BLE001
        raise ServiceError(f"site {site.name}: cannot run cpframe over SSH at {site.url} ({type(err).__name__}: "
                           f"{err})") from None
    finally:
        client.close()


def check_reachable(site: Site) -> None:
    """One-line ServiceError when a site cannot be reached (checked for every site before anything moves)."""
    if site.kind == "local":
        if not (Path(site.path) / "cpframe-repo.yaml").exists():
            raise ServiceError(f"site {site.name}: {site.path} is not a cpframe repository (no cpframe-repo.yaml); "
                               "create it there (`cpframe create`) or fix the sites file.")
        return
    fs, inbox = _remote_fs(site)
    root = inbox.rsplit("/", 1)[0]
    try:
        if site.kind == "ssh":
            ok = fs.exists(site.path.rstrip("/") + "/cpframe-repo.yaml")
        else:
            ok = fs.isdir(root)
    except Exception as err:  # noqa: BLE001 - each fsspec backend raises its own types (botocore, aiohttp...)
        raise ServiceError(f"site {site.name}: {site.url} is not reachable ({type(err).__name__}: "
                           f"{str(err).strip() or 'no detail'}).") from None
    if not ok and site.kind == "ssh":
        raise ServiceError(f"site {site.name}: {site.url} is not a cpframe repository (no cpframe-repo.yaml).")
    if not ok:
        raise ServiceError(f"site {site.name}: {site.url} does not exist; create the site's folder (or bucket) "
                           "or fix the sites file.")


# -- distribute -----------------------------------------------------------------------------------------


@dataclass
class DistributionResult:
    set_name: str
    manifest: str
    sites: dict = field(default_factory=dict)
    """Site -> (state, detail text)."""
    distributed: bool = False
    failures: list = field(default_factory=list)
    """One line per failed site (the others are done; running again resumes)."""

    def format(self) -> str:
        lines = [f"{self.set_name}: manifest {self.manifest[:16]} in the archive"]
        for s, (state, text) in self.sites.items():
            lines.append(f"  {'ok  ' if state == 'checked' else state.upper():<11} {s}: {text}")
        return "\n".join(lines)


def _site_state(rows: Sequence[Any], site: str, mid: str) -> str:
    states = [r.state for r in rows if r.site == site and r.detail.get("manifest") == mid]
    return states[-1] if states else ""


def distribute(repo: Any, set_name: str, sites_file: str | os.PathLike, *, who: str | None = None,
               progress: Callable[[str], None] | None = None) -> DistributionResult:
    """Export once, then transfer, import, chain and self-check at every site; resumable.

    Raises
    ------
    LifecycleError
        The set is not deployed at the source (approve and deploy it first).
    ServiceError
        A site cannot be reached (checked for all before anything moves).  A site failing
        later is recorded (``failed``) and listed in ``result.failures``; the others go on.
    """
    from cpframe.campaign.lifecycle import record_distributed, record_site, set_status

    progress = progress or (lambda _m: None)
    sites = load_sites(sites_file)
    st = set_status(repo, set_name)
    if st.state not in ("deployed", "distributed") or st.override:
        raise LifecycleError(f"cannot distribute {set_name!r}: it is {st.state or 'not built'!r}"
                             + (" (deployed by override)" if st.override else "")
                             + "; distribute approved, deployed sets (cpframe review approve, cpframe deploy).")
    for site in sites.sites:
        check_reachable(site)
    m = archive_set(repo, set_name, sites.archive)
    if not any(r.site == "archive" and r.detail.get("manifest") == m.id for r in st.rows):
        record_site(repo, set_name, "archive", "exported", who=who, why=f"{len(m.files)} file(s) in {sites.archive}",
                    detail={"manifest": m.id, "files": len(m.files)})
    result = DistributionResult(set_name, m.id)
    failures = []
    for site in sites.sites:
        rows = set_status(repo, set_name).rows
        if _site_state(rows, site.name, m.id) == "checked":
            result.sites[site.name] = ("checked", "already done (skipped)")
            continue
        raw = site.raw_collection or sites.raw_collection or None
        try:
            if site.kind == "local":
                from cpframe.repository.repo import Repository

                with Repository.open(site.path) as target:
                    out = rebuild_calib_chain(target, sites.archive, manifest_id=m.id, raw_collection=raw)
            else:
                if _site_state(rows, site.name, m.id) not in ("transferred", "imported"):
                    sent = _upload(site, sites.archive, m, progress)
                    record_site(repo, set_name, site.name, "transferred", who=who,
                                why=f"{sent['sent']} object(s) sent, {sent['already_there']} already there",
                                detail={"manifest": m.id, **sent})
            if site.kind == "fsspec":
                # nothing of cpframe runs there: the site imports from its inbox and leaves a receipt
                out = _read_receipt(site, m)
                if out is None:
                    text = (f"archive in {site.url.rstrip('/')}/{INBOX}; import it there "
                            f"(`{_site_import_command(site, raw)}`), then run this command again to record it")
                    result.sites[site.name] = ("waiting", text)
                    continue
            elif site.kind == "ssh":
                argv = ["rebuild-calib-chain", site.path, "--from-archive", f"{site.path.rstrip('/')}/{INBOX}",
                        "--manifest", m.id, "--json"] + (["--raw-collection", raw] if raw else [])
                code, out_text, err_text = _ssh_run(site, argv)
                if code != 0:
                    raise ServiceError(f"site {site.name}: rebuild-calib-chain exited with {code}: "
                                       f"{(err_text.strip() or out_text.strip())[-300:]}")
                out = json.loads(out_text.strip().splitlines()[-1])
            record_site(repo, set_name, site.name, "imported", who=who, why=f"imported: {out['imported'] or 'already there'}",
                        detail={"manifest": m.id, "imported": out["imported"]})
            if not out["ok"]:
                raise ServiceError(f"site {site.name}: deployment self-check failed: {out['self_check']}")
            record_site(repo, set_name, site.name, "checked", who=who, why=out["self_check"],
                        detail={"manifest": m.id, "calib_chain": out["calib_chain"]})
            result.sites[site.name] = ("checked", out["self_check"])
        except CpframeError as err:
            text = str(err).splitlines()[0]
            record_site(repo, set_name, site.name, "failed", who=who, why=text, detail={"manifest": m.id, "error": text})
            result.sites[site.name] = ("failed", text)
            failures.append(text)
    result.failures = failures
    if failures:
        return result
    if all(state == "checked" for state, _ in result.sites.values()):
        if set_status(repo, set_name).state == "deployed":
            record_distributed(repo, set_name, [s.name for s in sites.sites], who=who)
        result.distributed = True
    return result
