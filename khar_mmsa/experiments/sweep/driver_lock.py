"""One driver per sweep folder: :class:`SweepLock` on ``<folder>/sweep.lock``."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional

from khar_mmsa.io.locks import ExclusiveLock, LockHeld, check_lock_path
from khar_mmsa.io.files import UnsafePathError

LOCK_NAME = "sweep.lock"


class SweepLocked(RuntimeError):
    """Another driver holds the sweep folder's lock (or the lock file is a link, never followed)."""


class SweepLock:
    """``with SweepLock(folder):`` -- an exclusive lock (:class:`~khar_mmsa.io.locks.ExclusiveLock`)
    on ``<folder>/sweep.lock`` held for the sweep, or :class:`SweepLocked` at once when another
    driver holds it.

    The file is never followed through a link (a link planted there is refused before anything
    else happens) and records the holder's pid and host for the second driver's message.  The
    kernel drops the lock when the holder exits, killed or not, so a stale file never blocks a sweep.
    """

    def __init__(self, folder: os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._lock: Optional[ExclusiveLock] = None

    def check(self) -> None:
        """:class:`SweepLocked` now when the lock file is a link (or not a regular file)."""
        try:
            check_lock_path(self.path)
        except UnsafePathError as exc:
            raise SweepLocked(f"{exc} (the sweep's lock file is never followed through a link)") from None

    def __enter__(self) -> "SweepLock":
        self.check()
        lock = ExclusiveLock(self.path, wait=False, holder_note=f"pid {os.getpid()} on {socket.gethostname()}")
        try:
            lock.__enter__()
        except UnsafePathError as exc:  # a link planted since check()
            raise SweepLocked(f"{exc} (the sweep's lock file is never followed through a link)") from None
        except LockHeld as held:
            raise SweepLocked(f"another sweep driver ({held.holder}) is running on {self.path.parent}; wait for "
                              f"it to finish or stop it, or give this sweep another --out") from None
        self._lock = lock
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None
