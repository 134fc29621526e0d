"""Safe reading and atomic writing of the files khar-mmsa touches.

(Feature pickles are read by the restricted unpickler of :mod:`khar_mmsa.io.pickles`.)

* :func:`file_digest` is the content hash (SHA-256) of a file, computed once per process per
  file version; saved adapters and resume files are keyed by it instead of paths or mtimes.
* :func:`safe_torch_load` reads checkpoints with ``torch.load(weights_only=True)``.
* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_torch_save` and the
  :func:`atomic_open` context manager write to a temporary file in the target's directory, flush
  and fsync it, then ``os.replace`` it over the target: readers see the old file or the new one,
  never a truncated one, and the temporary file is removed if anything fails.
* Whole appends and reads that never follow a link: :mod:`khar_mmsa.io.appends`.

Links and modes.  Links in the folders leading to a file are followed (the user made the
folders so); the files themselves are never opened through a link: the temporary file is created
with ``O_CREAT | O_EXCL`` (which never follows one), a target that is a symbolic link (dangling or
not) is refused with :class:`UnsafePathError` -- the link and what it points to stay untouched --
and lock files are opened with ``O_NOFOLLOW`` (:mod:`khar_mmsa.io.locks`).  An existing target keeps its
permission bits (0600 stays 0600); a new one gets ``0o666 & ~umask`` (0644 under the usual umask),
whatever wrote it (results, checkpoints, curves, logs: :func:`new_file_mode`).  An existing target
without its owner's write bit is read-only: writing it raises :class:`PermissionError`, and
:func:`check_writable_file` says so before any work is done.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

from khar_mmsa.io.pickles import UnsafePickleError

logger = logging.getLogger(f"MMSA.{__name__}")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "file_digest",
    "safe_torch_load", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
    "UnsafePathError", "check_writable_file", "new_file_mode", "lstat_or_none",
]

# --------------------------------------------------------------------------------------------
# content identity
# --------------------------------------------------------------------------------------------
_DIGESTS: dict = {}
#: A file modified this recently (ns) before its hashing is hashed again next time (see file_digest).
DIGEST_RACY_NS = 2_000_000_000
_DIGEST_LOCK = threading.Lock()


def file_digest(path: PathLike) -> str:
    """SHA-256 (hex) of the file's bytes: what identifies a feature file, wherever it lies.

    Computed once per process for each version of a file (same inode, size and mtime); a file
    rewritten with the same bytes (a new mtime) gets the same digest.  A digest is remembered only
    when the file's mtime lies :data:`DIGEST_RACY_NS` before the hashing began: a file's clock
    ticks coarsely (milliseconds), so a rewrite of the same size within the same tick would
    otherwise keep the old digest.  SHA-256 runs at ~570 MB/s on the project's shared 2-core
    machine, ~2 s per GB once per run (benchmarks/loading.py).
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    started_ns = time.time_ns()
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if st.st_mtime_ns < started_ns - DIGEST_RACY_NS:
        with _DIGEST_LOCK:
            _DIGESTS[key] = digest
    return digest


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------
def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with clear errors.

    A checkpoint that needs arbitrary globals raises :class:`UnsafePickleError` naming the file;
    a missing file raises :class:`FileNotFoundError` with the path.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafePickleError(
            f"{p}: refused by torch.load(weights_only=True): the checkpoint references objects "
            f"other than tensors and plain containers ({first}). khar-mmsa checkpoints are "
            f"plain state_dicts; re-save this one with torch.save(model.state_dict(), path), or "
            f"load it yourself with weights_only=False only if you trust the file.") from exc


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class UnsafePathError(OSError):
    """A file we would write is a symbolic link (or not a regular file): refused, untouched."""


def lstat_or_none(path: Path) -> Optional[os.stat_result]:
    """``lstat`` of ``path`` (the link itself, not what it points to); None when absent."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_unsafe_target(path: Path, st: Optional[os.stat_result]) -> None:
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}); khar-mmsa does not write "
            f"files through links. Remove the link or point the run at the real path.")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a regular file; refusing to replace it.")
    if not st.st_mode & stat.S_IWUSR:
        raise PermissionError(
            f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); khar-mmsa does not "
            f"overwrite it. Make it writable (chmod u+w) or write elsewhere.")


def new_file_mode(path: PathLike) -> int:
    """The permission bits a file written to ``path`` gets: an existing regular file's own bits,
    else ``0o666 & ~umask`` (0644 under umask 022)."""
    st = lstat_or_none(Path(path))
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_UMASK


def check_writable_file(path: PathLike) -> None:
    """Raise now, before any work, if a file could not be written at ``path`` later.

    Refused with :class:`UnsafePathError`: ``path`` is a symbolic link (dangling or not) or not a
    regular file.  :class:`PermissionError`: an existing file without its owner's write bit
    (checked on the mode bits, so also when running as root), or a folder that is not writable.
    A missing folder is fine (it is created when the file is written)."""
    p = Path(path)
    _refuse_unsafe_target(p, lstat_or_none(p))
    folder = p.parent if str(p.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir():
        st = os.stat(folder)
        if not (st.st_mode & stat.S_IWUSR and os.access(folder, os.W_OK | os.X_OK)):
            raise PermissionError(f"{p}: its folder {folder} is not writable.")
    else:
        raise UnsafePathError(f"{p}: {folder} is not a folder.")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``'wb'`` or ``'w'`` (text, ``encoding`` defaults to UTF-8).  If the body raises,
    the temporary file is removed and an existing ``path`` is left untouched.  The new file gets
    the old file's permission bits, or the usual ``0o666 & ~umask`` for a new file
    (:func:`new_file_mode`).  A ``path`` that is a symbolic link is refused
    (:class:`UnsafePathError`), and so is a read-only existing file (:class:`PermissionError`),
    before anything is written; the target is checked again just before the rename.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    target = Path(path)
    _refuse_unsafe_target(target, lstat_or_none(target))
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT | O_EXCL: it never follows a link planted at the temporary name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        perms = new_file_mode(target)
        os.fchmod(fd, perms)
        if mode == "wb":
            f: IO = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        fd = -1  # owned by f now
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _refuse_unsafe_target(target, lstat_or_none(target))  # a link planted while we wrote
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


class _HashingWriter:
    """A write-only file object that passes bytes on and hashes them (SHA-256) on the way."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: PathLike) -> str:
    """``torch.save(obj, path)`` atomically: a crash or a failing ``torch.save`` leaves any
    existing checkpoint intact and no partial file behind.  Returns the SHA-256 (hex) of the bytes
    written, hashed as they are written (what :func:`file_digest` of the file gives)."""
    import torch

    with atomic_open(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
    return writer.sha256.hexdigest()
