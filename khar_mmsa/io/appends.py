"""Appends of whole lines or nothing, and files opened without following a link.

:func:`append_whole` appends one record to a table or a manifest so that a kill leaves the old
file or the old file plus the whole record, never half of it (:func:`truncate_back` undoes an
append, :func:`repair_torn_last_line` removes a last line of ours that a killed writer cut);
:func:`open_no_follow` opens a file refusing a symbolic link as its last component, as
:class:`NoFollowFileHandler` does for log files.  Links in the folders leading to a file are
followed (the user made the folders so), as in :mod:`khar_mmsa.io.files`.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path
from typing import IO, Any, Optional

from khar_mmsa.io.files import PathLike, UnsafePathError, lstat_or_none

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["append_whole", "truncate_back", "open_no_follow", "repair_torn_last_line", "NoFollowFileHandler"]

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
        st = lstat_or_none(path)
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
