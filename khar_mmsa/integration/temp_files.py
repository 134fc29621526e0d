"""Private temporary folders that a killed run cannot leave behind for good.

Each folder is made in the system temporary directory as ``<prefix>-<pid>-<random>``
(``mmsa-results-*``: MMSA's CSV of one ``MMSA_run`` call; ``khar-mmsa-*``: merged config files).
A process removes its own when done; one killed with SIGKILL cannot, so :func:`sweep` removes the
folders of processes that no longer exist, at the next registration and the next ``MMSA_run``.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIXES = ("mmsa-results", "khar-mmsa")


def make_private_dir(prefix: str) -> Path:
    """A new folder ``<tmp>/<prefix>-<pid>-<random>``."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep() -> None:
    """Remove our private folders whose process is gone (never another live process's)."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, PREFIXES))})-(\d+)-")
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or int(match.group(2)) == os.getpid() or _alive(int(match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
            shutil.rmtree(entry, ignore_errors=True)
