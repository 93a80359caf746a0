"""The datastore: dataset files under a root directory, written atomically.

One file per dataset at ``ROOT/<run>/<datasetType>/<datasetType>_<instrument>_<dataId values>.<ext>``
(:func:`dataset_file_name`), written as ``.<name>.tmp`` beside its final place and renamed.
:class:`FileDatastore` knows paths and files only; it never touches the registry.  Keeping a
file and its registry row together (the ``pending_file`` journal) is
:class:`cpframe.repository.repo.Repository`'s job, which owns one registry and one datastore.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from cpframe.core.errors import CpframeError, DatastoreError, DiskFullError
from cpframe.core.model import DataId, DatasetRef, DatasetType

__all__ = ["FileDatastore", "TRANSFER_MODES", "sha256_file", "dataset_file_name", "storage_error"]

#: How files reach the datastore (``direct`` records the absolute source path, no copy).
TRANSFER_MODES = ("copy", "link", "symlink", "direct", "move")
_EXT = {"fits-raw": ".fits", "fits-masked": ".fits", "fits-ptc": ".fits", "ecsv-defects": ".ecsv",
        "ecsv": ".ecsv", "json": ".json"}


def sha256_file(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _safe(part: object) -> str:
    return re.sub(r"[^A-Za-z0-9.+=~-]", "-", str(part))


def dataset_file_name(dt: DatasetType, data_id: Mapping[str, object], suffix: str = "") -> str:
    """File name of a dataset in the datastore (without the ``<run>/<datasetType>/`` folders).

    >>> raw = DatasetType("raw", ("instrument", "detector", "exposure"), False, "fits-raw")
    >>> dataset_file_name(raw, DataId(instrument="LATISS", detector=0, exposure=2024111000044), ".fits")
    'raw_LATISS_0_2024111000044.fits'
    """
    values = [data_id[d] for d in dt.dimensions if d != "instrument"]
    suffix = suffix or _EXT.get(dt.storage_format, "")
    return "_".join(_safe(p) for p in [dt.name, data_id["instrument"], *values]) + suffix


def file_suffix(path: Path) -> str:
    """The extension a stored copy keeps (``.fits``, ``.fits.fz``, ``.ecsv``...)."""
    return "".join(path.suffixes[-2:]) if path.suffix in (".fz", ".gz") else path.suffix


def _tmp_of(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def _unlink(p: Path) -> bool:
    """Remove a file if it is there; never raises (a clean-up must not crash half-way)."""
    try:
        p.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as err:
        log.warning("could not remove %s: %s", p, err.strerror or err)
        return False


def storage_error(err: OSError, what: str, tail: str = "") -> CpframeError:
    """An OSError of the file system -> a one-line cpframe error saying what to do.

    A full disk, a read-only file system or a missing permission are the user's to fix;
    the message says so instead of blaming the database server.
    """
    hint = {
        errno.ENOSPC: "the file system is full: free space (or move the repository), then run the command again",
        errno.EDQUOT: "the disk quota is exhausted: free space, then run the command again",
        errno.EROFS: "the file system is read-only: writes need a writable repository",
        errno.EACCES: "permission denied: check the owner and mode of the repository folders",
        errno.EPERM: "operation not permitted: check the owner and mode of the repository folders",
        errno.ENAMETOOLONG: "a file name is too long (at most 255 bytes per path segment): use shorter names",
    }.get(err.errno or 0, "check the path and the file system")
    cls = DiskFullError if err.errno in (errno.ENOSPC, errno.EDQUOT) else DatastoreError
    return cls(f"{what}: {err.strerror or err}; {hint}. {tail}".rstrip())


log = logging.getLogger(__name__)


class FileDatastore:
    """Dataset files under :attr:`root`.

    Parameters
    ----------
    root : pathlib.Path
        Absolute directory holding the files.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileDatastore({str(self.root)!r})"

    def relative_path(self, run: str, dt: DatasetType, data_id: DataId, src: Path) -> str:
        """Where a dataset of ``run`` goes, relative to :attr:`root` (keeps ``src``'s extension)."""
        return f"{run}/{dt.name}/{dataset_file_name(dt, data_id, file_suffix(src))}"

    def path_of(self, ref: DatasetRef) -> Path:
        """Absolute path of a dataset's file.

        Raises
        ------
        DatastoreError
            The ref has no file.
        """
        if not ref.path:
            raise DatastoreError(f"dataset {ref.id} ({ref.dataset_type} {ref.data_id}) has no file in the datastore.")
        p = Path(ref.path)
        return p if p.is_absolute() else self.root / p

    def inside(self, rel: str) -> Path:
        """The absolute path of datastore path ``rel``, proven to lie inside :attr:`root`.

        Called before anything is written or removed (issue 11): a crafted name or path can
        never make cpframe touch a file outside the repository.

        Raises
        ------
        DatastoreError
            ``rel`` is absolute, has a ``..``, ``.`` or empty segment, a segment over 255 bytes,
            or resolves (through a symbolic link) outside :attr:`root`.
        """
        pure = PurePosixPath(rel)
        why = None
        if pure.is_absolute() or "\\" in rel:
            why = "is absolute or has a backslash"
        elif any(part in ("..", ".", "") for part in rel.split("/")):
            why = "has a '..', '.' or empty segment"
        elif any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in pure.parts):
            why = "has a segment longer than 255 bytes"
        else:
            root = Path(os.path.realpath(self.root))
            final = self.root / pure
            real_parent = Path(os.path.realpath(final.parent))
            if real_parent != root and root not in real_parent.parents:
                why = f"resolves outside it (to {real_parent / final.name})"
        if why:
            raise DatastoreError(
                f"datastore path {rel!r} {why}; cpframe writes and removes files only inside "
                f"{self.root}. Nothing was changed."
            )
        return self.root / pure

    def place(self, src: Path, final: Path, transfer: str, clobber: bool = True) -> Path:
        """Put ``src`` at ``final`` (copy, link, symlink or move) through a temporary name.

        With ``clobber=False`` an existing file at ``final`` is never replaced (checked
        atomically with link(2)), so a caller's rollback deletes only files it created.

        Raises
        ------
        DatastoreError
            The file system refused, or (``clobber=False``) a file is already there; nothing
            is left at ``final``.
        DiskFullError
            No space left.
        """
        tmp = _tmp_of(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            _unlink(tmp)
            if not clobber and (final.exists() or final.is_symlink()):
                raise FileExistsError(errno.EEXIST, "a file is already there", str(final))
            if transfer == "symlink":
                os.symlink(src.resolve(), tmp)
            elif transfer in ("link", "move"):
                try:
                    os.link(src, tmp)
                except OSError:
                    if transfer == "link":
                        raise
                    shutil.copyfile(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            if clobber:
                os.replace(tmp, final)
            else:
                try:  # link(2) fails if ``final`` appeared meanwhile: never replaces anything
                    os.link(tmp, final, follow_symlinks=False)
                except FileExistsError:
                    raise
                except OSError:  # a file system without hard links: check, then rename
                    if final.exists() or final.is_symlink():
                        raise FileExistsError(errno.EEXIST, "a file is already there", str(final)) from None
                    os.replace(tmp, final)
                _unlink(tmp)
        except FileExistsError:
            _unlink(tmp)
            raise DatastoreError(
                f"cannot {transfer} {src} to {final}: a file is already there and cpframe never replaces a "
                "file of the datastore. If no dataset uses it, it is a leftover of an interrupted write: "
                "remove it by hand. Nothing was stored."
            ) from None
        except OSError as err:
            _unlink(tmp)
            raise storage_error(err, f"cannot {transfer} {src} to {final}", "Nothing was stored.") from err
        return final

    def discard(self, rels: Iterable[str], *, with_tmp: bool = True) -> list[Path]:
        """Delete the files at ``rels`` (and their ``.tmp`` siblings); returns what was deleted."""
        removed = []
        for rel in rels:
            final = self.root / rel
            removed += [p for p in ((final, _tmp_of(final)) if with_tmp else (final,)) if _unlink(p)]
        return removed

    def prune(self, dirs: Iterable[Path]) -> None:
        """Remove empty folders up to (not including) :attr:`root`."""
        root = self.root
        for d in sorted(set(dirs), key=lambda p: -len(p.parts)):
            while d != root and root in d.parents:
                try:
                    d.rmdir()
                except OSError:
                    break
                d = d.parent

    def verify_checksums(self, refs: Iterable[DatasetRef]) -> list[str]:
        """Problems found re-hashing the files of ``refs`` (empty list when all match)."""
        problems = []
        for ref in refs:
            p = self.path_of(ref)
            if not p.is_file():
                problems.append(f"{ref.dataset_type} {ref.data_id}: file {p} is missing")
            elif ref.checksum and sha256_file(p) != ref.checksum:
                problems.append(f"{ref.dataset_type} {ref.data_id}: {p} does not match its checksum")
        return problems
