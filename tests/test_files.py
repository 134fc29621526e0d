"""Tests for khar_mmsa.io.files: weights-only torch loads, content digests, atomic writes, links and modes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from khar_mmsa.io.pickles import UnsafePickleError
from khar_mmsa.io.files import (atomic_open, atomic_torch_save, atomic_write_bytes, atomic_write_text,
                                  file_digest, safe_torch_load)


class _CreatesFile:
    """Unpickling calls open(path, 'w'), which creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- torch ------------------------------------------------------------------------------------
def test_safe_torch_load_refuses_malicious_pt(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    pt = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _CreatesFile(str(target))}, pt)
    with pytest.raises(UnsafePickleError) as ei:
        safe_torch_load(pt)
    assert str(pt) in str(ei.value) and "weights_only" in str(ei.value)
    assert not target.exists()


def test_safe_torch_load_reads_state_dict(tmp_path: Path) -> None:
    sd = {"Model.w": torch.arange(3.0), "Model.b": torch.ones(1)}
    pt = tmp_path / "ok.pth"
    atomic_torch_save(sd, pt)
    out = safe_torch_load(pt)
    assert set(out) == set(sd) and torch.equal(out["Model.w"], sd["Model.w"])


# --- atomic writes ----------------------------------------------------------------------------
def _leftovers(directory: Path) -> list:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"abc")
    assert p.read_bytes() == b"abc"
    atomic_write_bytes(p, b"xy")
    assert p.read_bytes() == b"xy"
    t = tmp_path / "r.csv"
    atomic_write_text(t, "a,b\n1,2\n")
    assert t.read_text() == "a,b\n1,2\n"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_atomic_write_keeps_old_content_when_writer_raises(tmp_path: Path) -> None:
    p = tmp_path / "results.csv"
    p.write_text("old content\n")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_open(p, "w") as f:
            f.write("new partial")
            f.flush()
            raise RuntimeError("crash midway")
    assert p.read_text() == "old content\n"
    assert _leftovers(tmp_path) == []


def test_atomic_torch_save_keeps_old_checkpoint_on_failure(tmp_path: Path) -> None:
    p = tmp_path / "khar-mosi.pth"
    atomic_torch_save({"w": torch.ones(2)}, p)
    before = p.read_bytes()
    with pytest.raises(Exception):
        atomic_torch_save({"w": torch.zeros(1000), "bad": lambda: 0}, p)  # unpicklable midway
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_write_preserves_permissions(tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("x")
    os.chmod(p, 0o640)
    atomic_write_text(p, "y")
    assert p.stat().st_mode & 0o777 == 0o640


# --- content digests --------------------------------------------------------------------------
def test_file_digest_is_content_based(tmp_path: Path) -> None:
    import hashlib
    a, b = tmp_path / "a.pkl", tmp_path / "sub" / "b.pkl"
    b.parent.mkdir()
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert file_digest(a) == file_digest(b) == hashlib.sha256(b"same bytes").hexdigest()
    os.utime(b, ns=(1, 1))  # another mtime, same content
    assert file_digest(b) == file_digest(a)
    b.write_bytes(b"other bytes")
    os.utime(b, ns=(2, 2))
    assert file_digest(b) == hashlib.sha256(b"other bytes").hexdigest()


# --- links and modes ---------------------------------------------------------------------------
from khar_mmsa.io.locks import open_lock_file  # noqa: E402
from khar_mmsa.io.files import UnsafePathError, check_writable_file, new_file_mode  # noqa: E402


def test_atomic_write_refuses_a_symlink_target_and_leaves_both_untouched(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("user,password\n")
    link = tmp_path / "results.csv"
    link.symlink_to(secret)
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        atomic_write_text(link, "Model,Acc\n")
    assert link.is_symlink() and secret.read_text() == "user,password\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "created.csv"
    link = tmp_path / "results.csv"
    link.symlink_to(outside)
    with pytest.raises(UnsafePathError):
        atomic_write_text(link, "x")
    assert not outside.exists() and not outside.parent.exists()


def test_atomic_write_follows_a_linked_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    atomic_write_text(tmp_path / "linked" / "r.csv", "ok")
    assert (real / "r.csv").read_text() == "ok"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_existing_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old")
    os.chmod(path, mode)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == mode


def test_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "new.png"
    assert new_file_mode(path) == 0o666 & ~mask
    atomic_write_bytes(path, b"png")
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_read_only_results_file_is_an_error_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("kept")
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="read-only \\(mode 0444\\)"):
        check_writable_file(path)
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write_text(path, "new")
    assert path.read_text() == "kept" and (path.stat().st_mode & 0o777) == 0o444


def test_check_writable_file(tmp_path: Path) -> None:
    check_writable_file(tmp_path / "absent" / "deeper" / "results.csv")  # created when written
    (tmp_path / "ok.csv").write_text("x")
    check_writable_file(tmp_path / "ok.csv")
    (tmp_path / "link.csv").symlink_to(tmp_path / "ok.csv")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        check_writable_file(tmp_path / "link.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        check_writable_file(tmp_path / "dir.csv")


def test_lock_file_is_never_opened_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.lock"
    lock = tmp_path / "results.csv.lock"
    lock.symlink_to(outside)  # dangling
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_lock_file(lock)
    assert not outside.exists()
    lock.unlink()
    fd = open_lock_file(lock)
    try:
        assert os.path.isfile(lock) and not os.path.islink(lock)
    finally:
        os.close(fd)


def test_a_link_planted_while_writing_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("user,password\n")
    target = tmp_path / "results.csv"
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        with atomic_open(target, "w") as f:
            f.write("Model,Acc\n")
            target.symlink_to(secret)  # appears between the first check and the rename
    assert target.is_symlink() and secret.read_text() == "user,password\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
