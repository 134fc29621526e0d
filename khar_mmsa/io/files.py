"""Safe reading and atomic writing of the files khar-mmsa touches.

(Feature pickles are read by the restricted unpickler of :mod:`khar_mmsa.io.pickles`.)

* :func:`file_digest` is the content hash (SHA-256) of a file, computed once per process per
  file version; saved adapters and resume files are keyed by it instead of paths or mtimes.
* :func:`safe_torch_load` reads checkpoints with ``torch.load(weights_only=True)``.
* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_torch_save` and the
  :func:`atomic_open` context manager write to a temporary file in the target's directory, flush
  and fsync it, then ``os.replace`` it over the target: readers see the old file or the new one,
  never a truncated one, and the temporary file is removed if anything fails.

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
import errno
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
    "UnsafePathError", "check_writable_file", "new_file_mode",
    "append_whole", "truncate_back", "open_no_follow", "repair_torn_last_line", "NoFollowFileHandler",
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


def _existing(path: Path) -> Optional[os.stat_result]:
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
    st = _existing(Path(path))
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
    _refuse_unsafe_target(p, _existing(p))
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
    _refuse_unsafe_target(target, _existing(target))
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
        _refuse_unsafe_target(target, _existing(target))  # a link planted while we wrote
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


# --------------------------------------------------------------------------------------------
# appends: whole lines or nothing, never through a link
# --------------------------------------------------------------------------------------------
#: ``O_NOFOLLOW`` where the platform has it: a symbolic link as the file's last component is
#: refused by the kernel (``ELOOP``), never followed.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_no_follow(path: Path, flags: int, what: str) -> int:
    """``os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)``; a link there is :class:`UnsafePathError`
    (the link and its target untouched), a non-regular file too."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as exc:
        st = _existing(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{path} is a symbolic link; khar-mmsa does not {what} a file through a "
                                  f"link. Remove the link or point the run at the real path.") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file; refusing to {what} it.")
    return fd


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write is continued, a write of 0 bytes
    is an error (``ENOSPC``), never a silent half line."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write of {len(view)} bytes wrote none)")
        view = view[written:]


def append_whole(path: PathLike, data: bytes, own_line: bool = False) -> int:
    """Append ``data`` (whole lines, ending in a newline) to ``path``: all of it, or nothing.

    The file is opened with ``O_APPEND | O_CREAT | O_NOFOLLOW``: a symbolic link there (dangling
    or not) is refused with :class:`UnsafePathError` and left alone, a read-only existing file
    with :class:`PermissionError` (mode bits, so also as root).  The bytes go out in one
    ``os.write`` call, continued after a short write, then ``fsync``.  On any failure
    (``ENOSPC``, ``EIO``, an interrupt) the file is truncated back to its length before the
    append and the error is raised: the file holds the whole lines it held, never a half one.
    ``own_line=True``: when the file does not end with a newline (a partial line someone else
    left), a newline is written first, so that line cannot swallow ours.  Callers that share the
    file with other writers hold a lock around the call (the truncation assumes the end it saw is
    the end it appended to).  New files get :func:`new_file_mode`'s bits.  Returns the file's
    length before the append (what :func:`truncate_back` takes to undo it).
    """
    p = Path(path)
    fd = open_no_follow(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, "append to")  # read: the last byte
    try:
        st = os.fstat(fd)
        if not st.st_mode & stat.S_IWUSR:
            raise PermissionError(
                f"{p} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); khar-mmsa does not append "
                f"to it. Make it writable (chmod u+w) or write elsewhere.")
        start = st.st_size
        if own_line and start > 0 and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
    return start


def truncate_back(path: PathLike, length: int) -> None:
    """Undo an :func:`append_whole` that returned ``length`` (when a second file of the same
    record could not be written): the file is cut back to ``length`` bytes and fsynced."""
    fd = open_no_follow(Path(path), os.O_WRONLY, "truncate")
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


#: How much of a torn last line is quoted in the warning that removes it.
TORN_LINE_QUOTE_CHARS = 200


def repair_torn_last_line(path: PathLike, ours: Any, what: str) -> Optional[bytes]:
    """Cut a partial last line that khar-mmsa's own append left in ``path``; return its bytes.

    A file whose last byte is not a newline ends in a line an append did not finish (a kill or a
    power loss between the write and the disk).  When ``ours(head, tail)`` says the file and that
    line are of the kind we append (``head``: the file's first line, ``tail``: the partial line),
    the file is truncated after its last newline and a warning on the 'MMSA' logger names the
    file and quotes what was removed; otherwise nothing changes (None).  Callers hold the lock
    under which the file is appended.  A link at ``path`` is refused (:class:`UnsafePathError`).
    """
    p = Path(path)
    fd = open_no_follow(p, os.O_RDWR, "repair")
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        cut = size
        chunk = 4096  # read backwards in pages until the last newline
        while cut > 0:
            lo = max(cut - chunk, 0)
            block = os.pread(fd, cut - lo, lo)
            nl = block.rfind(b"\n")
            if nl >= 0:
                cut = lo + nl + 1
                break
            cut = lo
        tail = os.pread(fd, size - cut, cut)
        first = os.pread(fd, min(size, 65536), 0).split(b"\n", 1)[0] if cut > 0 else b""
        if not ours(first, tail):
            return None
        os.ftruncate(fd, cut)
        os.fsync(fd)
    finally:
        os.close(fd)
    quoted = tail.decode("utf-8", "replace")
    if len(quoted) > TORN_LINE_QUOTE_CHARS:
        quoted = quoted[:TORN_LINE_QUOTE_CHARS] + "..."
    logger.warning(f"{p}: its last line was cut off while it was appended (a kill or a full disk); removed "
                   f"that partial {what} ({size - cut} bytes: {quoted!r}); the lines before it are unchanged.")
    return tail


class NoFollowFileHandler(logging.FileHandler):
    """``logging.FileHandler`` in append mode whose file is opened with ``O_NOFOLLOW``: a link at
    the log's path is refused (:class:`UnsafePathError`) instead of appending to what it names."""

    def __init__(self, filename: PathLike, encoding: Optional[str] = "utf-8") -> None:
        super().__init__(filename, mode="a", encoding=encoding, delay=False)

    def _open(self) -> IO[str]:  # noqa: D401 - logging API
        fd = open_no_follow(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT, "log to")
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
