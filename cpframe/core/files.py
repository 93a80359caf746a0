"""Writing files the way any other Unix writer does: honouring the umask.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, so a product written
to a temporary file and renamed into place (the only way to never leave a half-written file)
ends up readable by its owner alone: a web server cannot serve the report and the team cannot
read the certified calibrations (issue 11, item 10).  :func:`mkstemp` here is the drop-in
replacement every writer of cpframe uses; it gives the file ``0666 & ~umask``, exactly what
``open(path, "w")`` would have given.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["current_umask", "file_mode", "mkstemp", "json_ready", "write_json", "read_json_product", "Sha256InOrder",
           "remember_sha256", "take_remembered_sha256"]

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux ``/proc``).

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _LOCK:  # elsewhere: set and restore at once (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (``0o644`` for umask 022)."""
    return 0o666 & ~current_umask()


def mkstemp(suffix: str | None = None, prefix: str | None = None, dir: str | os.PathLike | None = None) -> tuple[int, str]:
    """Like :func:`tempfile.mkstemp`, but the file gets the umask's mode instead of 0600.

    Returns
    -------
    (int, str)
        An open descriptor and the absolute path, as ``tempfile.mkstemp``.
    """
    fd, path = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=dir)
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path


def json_ready(value: Any) -> Any:
    """``value`` with NumPy scalars made Python values, tuples made lists and NaN/inf made None
    (JSON has no NaN; cpframe's JSON products write a missing number as null).

    >>> json_ready({"a": (1.0, float("nan")), "b": np.float32(2.5)})
    {'a': [1.0, None], 'b': 2.5}
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_ready(x) for x in value]
    if isinstance(value, dict):
        return {k: json_ready(x) for k, x in value.items()}
    return value


def write_json(path: str | os.PathLike, doc: Any) -> Path:
    """Write ``doc`` as indented JSON, atomically (a temporary file renamed into place, umask honoured).

    Raises ``ValueError`` on a NaN left in ``doc`` (pass it through :func:`json_ready` first).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_json_product(path: str | os.PathLike, fmt: str, version: int, what: str, error: type[Exception],
                      name: str | None = None) -> dict:
    """The document of a cpframe JSON product, checked to be format ``fmt`` at ``version``.

    Raises
    ------
    error
        Unreadable, not JSON, another format or another version (``what`` names the product,
        ``name`` its files and versions; default ``what``).
    """
    p, name = str(path), name or what
    try:
        doc = json.loads(Path(p).read_text())
    except (OSError, ValueError) as err:
        raise error(f"{p}: cannot read the {what}: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{p}: not a cpframe {name} file (format {fmt!r}).")
    if doc.get("version") != version:
        raise error(f"{p}: {name} version {doc.get('version')!r}; this cpframe reads version {version}.")
    return doc


class Sha256InOrder:
    """``sha256:<hex>`` of bytes fed in file order, hashed in a thread of its own (hashlib releases the GIL for
    large buffers): a writer that feeds what it writes knows its file's digest when it is done, without reading
    the file back, and the hashing overlaps the writing.  Buffers fed must not change afterwards."""

    def __init__(self, depth: int = 8):
        import hashlib
        import queue

        self._h = hashlib.sha256()
        self._q: Any = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="cpframe-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            block = self._q.get()
            if block is None:
                return
            self._h.update(block)

    def feed(self, block: Any) -> None:
        self._q.put(block)

    def close(self) -> None:
        """Stop the thread (the digest so far is kept)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return "sha256:" + self._h.hexdigest()


_REMEMBERED: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_REMEMBERED_LOCK = threading.Lock()
_REMEMBER_AT_MOST = 1024


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remember_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record the digest of a file this process has just written (of the bytes it wrote), for
    :func:`take_remembered_sha256`; tied to the file's device, inode, size and modification time."""
    key = os.path.abspath(path)
    try:
        ident = _identity(os.stat(key))
    except OSError:  # gone already: nothing to remember (the reader hashes whatever is there)
        return
    with _REMEMBERED_LOCK:
        _REMEMBERED[key] = (ident, digest)
        while len(_REMEMBERED) > _REMEMBER_AT_MOST:  # files written outside a quantum are never taken
            del _REMEMBERED[next(iter(_REMEMBERED))]


def take_remembered_sha256(path: str | os.PathLike) -> str | None:
    """The digest :func:`remember_sha256` recorded for ``path`` if the file is still the one written then (same
    device, inode, size and modification time), else None; forgotten either way (used once)."""
    key = os.path.abspath(path)
    with _REMEMBERED_LOCK:
        entry = _REMEMBERED.pop(key, None)
    if entry is None:
        return None
    try:
        return entry[1] if _identity(os.stat(key)) == entry[0] else None
    except OSError:
        return None
