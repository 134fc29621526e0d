"""Exclusive file locks: every lock khar-mmsa takes, as one small wrapper of the ``filelock`` library.

``filelock`` (``flock`` on POSIX) does the locking; the kernel drops a lock when its holder
exits, killed or not, so a stale lock file never blocks anyone.  Around it this module adds what
the callers promise:

* the lock file is never opened through a link: it is opened first with ``O_NOFOLLOW`` (a link
  there, dangling or not, is refused with :class:`~khar_mmsa.io.files.UnsafePathError` and
  nothing is created where it points), and after ``filelock`` has the lock the path must still
  be that very file (same device and inode), else it tries again.  :func:`check_lock_path` makes
  the same refusal before any work, without creating anything;
* ``wait=False``: a held lock raises :class:`LockHeld` at once, naming the holder from the note the
  holder wrote into the lock file (``holder_note``), read before ``filelock`` opens the file (and
  put back if that open emptied it, as ``filelock`` before 4.0 does with ``O_TRUNC``);
* ``remove_on_release=True``: the lock file is removed while still held, so nothing is left next to
  the user's files; a waiter that then gets the lock on the removed file sees that the path is no
  longer its file and locks the new one instead.

Callers: the sweep driver's ``sweep.lock`` (:mod:`khar_mmsa.experiments.sweep.driver_lock`) and the
results tables' ``<file>.lock`` (:mod:`khar_mmsa.runs.results_files`).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional, Union

from khar_mmsa.io.files import UnsafePathError, new_file_mode

PathLike = Union[str, "os.PathLike[str]"]

#: Bytes of the holder's note read for :class:`LockHeld`'s message (a pid and a host name fit).
NOTE_MAX_BYTES = 200


class LockHeld(RuntimeError):
    """Another process holds the lock (raised only with ``wait=False``); ``holder`` is its note."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def check_lock_path(path: PathLike) -> None:
    """Refuse now, before any work, a lock path that is a symbolic link (dangling or not) or not a
    regular file (:class:`UnsafePathError`); an absent path is fine and is not created."""
    p = Path(path)
    st = _lstat(p)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{p} is a symbolic link; refusing to use it as a lock file. Remove it.")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{p} is not a regular file; refusing to use it as a lock file.")


def open_lock_file(path: PathLike) -> int:
    """Open (or create) the lock file ``path`` and return its descriptor.

    ``O_NOFOLLOW``: a symbolic link at ``path`` (a dangling one too) is refused with
    :class:`UnsafePathError` instead of creating a file wherever it points.  New lock files get
    :func:`~khar_mmsa.io.files.new_file_mode`'s bits."""
    p = Path(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags, new_file_mode(p))
    except OSError as exc:
        check_lock_path(p)  # a link: UnsafePathError naming it
        raise exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{p} is not a regular file; refusing to use it as a lock file.")
    return fd


class ExclusiveLock:
    """``with ExclusiveLock(path):`` -- an exclusive lock on the file ``path`` (see the module
    docstring for ``wait``, ``holder_note`` and ``remove_on_release``)."""

    def __init__(self, path: PathLike, *, wait: bool = True, holder_note: Optional[str] = None,
                 remove_on_release: bool = False) -> None:
        self.path = Path(path)
        self.wait, self.holder_note, self.remove_on_release = wait, holder_note, remove_on_release
        self._fd: Optional[int] = None
        self._lock: Any = None

    def _same_file(self, fd: int) -> bool:
        now, held = _lstat(self.path), os.fstat(fd)
        return now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def __enter__(self) -> "ExclusiveLock":
        import filelock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            # Our own descriptor keeps the file's inode alive while filelock opens the path itself,
            # so "the path is still the file we opened" below cannot be fooled by inode reuse.
            fd = open_lock_file(self.path)
            note = os.pread(fd, NOTE_MAX_BYTES, 0).decode("utf-8", "replace").strip()
            lock = filelock.FileLock(str(self.path), timeout=-1 if self.wait else 0)
            try:
                lock.acquire()
            except filelock.Timeout:
                if note and os.fstat(fd).st_size == 0:  # filelock < 4 opens with O_TRUNC: put the note back
                    os.pwrite(fd, f"{note}\n".encode(), 0)
                os.close(fd)
                raise LockHeld(self.path, note or "another process") from None
            except BaseException:
                os.close(fd)
                raise
            if self._same_file(fd):
                break
            lock.release()  # the holder before us removed (or someone replaced) the file: lock the new one
            os.close(fd)
        if self.holder_note is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.holder_note}\n".encode(), 0)
        self._fd, self._lock = fd, lock
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is None:
            return
        try:
            if self.remove_on_release and self._same_file(self._fd):
                self.path.unlink()  # while held: a waiter on this file sees it gone and retries
        finally:
            self._lock.release()
            os.close(self._fd)
            self._fd, self._lock = None, None
