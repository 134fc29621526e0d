"""khar_mmsa.io.locks: the one file lock (filelock underneath) every lock of the library uses."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from khar_mmsa.io.locks import ExclusiveLock, LockHeld, check_lock_path
from khar_mmsa.io.files import UnsafePathError

#: Seconds a test waits for a thread before it fails.
WAIT_S = 30


def test_a_held_lock_names_its_holder_and_is_free_after_release(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with ExclusiveLock(path, wait=False, holder_note="pid 1 on host-a"):
        with pytest.raises(LockHeld) as held:
            with ExclusiveLock(path, wait=False):
                pass
        assert held.value.holder == "pid 1 on host-a"
    with ExclusiveLock(path, wait=False):  # released
        pass


@pytest.mark.parametrize("dangling", [True, False])
def test_a_link_at_the_lock_path_is_refused_and_never_followed(dangling: bool, tmp_path: Path) -> None:
    target = tmp_path / "journal.txt"
    if not dangling:
        target.write_text("the user's\n")
    link = tmp_path / "x.lock"
    link.symlink_to(target)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        check_lock_path(link)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        with ExclusiveLock(link):
            pass
    assert (not target.exists()) if dangling else target.read_text() == "the user's\n"
    check_lock_path(tmp_path / "absent.lock")  # nothing there: fine, and nothing is created
    assert not (tmp_path / "absent.lock").exists()


def test_a_lock_removed_on_release_is_never_held_twice(tmp_path: Path) -> None:
    """A holds (file removed on release); B waits on that file; when A releases, B gets a lock on
    the removed file -- it must see that and lock the path's new file, so C (who created that new
    file) and B never hold the lock together."""
    path = tmp_path / "results.csv.lock"
    b_holds, c_tried = threading.Event(), threading.Event()
    a = ExclusiveLock(path, remove_on_release=True).__enter__()

    def b() -> None:
        with ExclusiveLock(path, remove_on_release=True):
            b_holds.set()
            c_tried.wait(WAIT_S)

    thread = threading.Thread(target=b)
    thread.start()
    time.sleep(0.5)  # B has opened the file and waits for the lock
    a.__exit__(None, None, None)  # removes the file, then releases
    try:
        assert b_holds.wait(WAIT_S)
        with pytest.raises(LockHeld):  # C: the path's file is B's now
            with ExclusiveLock(path, wait=False):
                pass
    finally:
        c_tried.set()
        thread.join(WAIT_S)
    assert not path.exists()  # nothing left beside the user's files
