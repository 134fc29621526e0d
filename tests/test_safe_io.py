"""Tests for khar_mmsa.io.safe_io: restricted unpickling, weights-only torch loads, atomic writes."""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from khar_mmsa.io.safe_io import (PickleReadError, PickleSizeError, UnsafePickleError, atomic_open,
                               atomic_torch_save, file_digest,
                               atomic_write_bytes, atomic_write_text, load_pickle,
                               load_pickle_stream, safe_torch_load)


# --- malicious payloads (module level so that pickle can reference them by name) -------------
class _CreatesFile:
    """Unpickling calls open(path, 'w'), which creates the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsCommand:
    """Unpickling calls os.system(cmd)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Custom:
    """A harmless user class: loadable only with trusted=True."""

    def __init__(self, x: int) -> None:
        self.x = x


def _mmsa_like() -> dict:
    """A small MMSA-style feature dict: float32 features, int lengths, strings, lists."""
    rng = np.random.default_rng(0)
    split = lambda n: {  # noqa: E731
        "text_bert": rng.integers(0, 100, size=(n, 3, 6)).astype(np.float64),
        "text": rng.standard_normal((n, 6, 8)).astype(np.float32),
        "audio": rng.standard_normal((n, 5, 4)).astype(np.float32),
        "vision": rng.standard_normal((n, 7, 3)).astype(np.float32),
        "audio_lengths": [int(x) for x in rng.integers(1, 6, size=n)],
        "vision_lengths": np.full(n, 7, dtype=np.int64),
        "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
        "id": np.array([f"vid{i}$_$1" for i in range(n)]),
        "raw_text": [f"sentence {i}" for i in range(n)],
        "meta": collections.OrderedDict(scale=np.float32(0.5), names=("a", "b"), tags={1, 2},
                                        frozen=frozenset({3}), c=1 + 2j, raw=b"\x00\x01",
                                        empty=b"", obj=np.array(["x", 1], dtype=object)),
    }
    return {"train": split(4), "valid": split(2), "test": split(3)}


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert (a == b).all()
    else:
        assert type(a) is type(b) and a == b


# --- restricted unpickling --------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_file_creating_pickle_refused_and_file_not_created(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": _CreatesFile(str(target))}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as ei:
        load_pickle(evil)
    msg = str(ei.value)
    assert str(evil) in msg and "open" in msg and "trust_pickle" in msg and "trusted=True" in msg
    assert not target.exists()


def test_command_running_pickle_refused(tmp_path: Path) -> None:
    target = tmp_path / "ran.txt"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps([_RunsCommand(f"touch {target}")]))
    with pytest.raises(UnsafePickleError) as ei:
        load_pickle(evil)
    assert "system" in str(ei.value) and str(evil) in str(ei.value)
    assert not target.exists()


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",            # builtins.eval
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'x'\ntR.",
    b"cnumpy\nload\n(S'x.npy'\ntR.",              # numpy, but not an allowed name
    b"cnumpy.core.multiarray\nfromfile\n(S'x'\ntR.",
    b"ccopyreg\n_reconstructor\n(tR.",
])
def test_other_globals_refused(payload: bytes) -> None:
    with pytest.raises(UnsafePickleError):
        load_pickle_stream(io.BytesIO(payload), source="x.pkl")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_mmsa_style_dict_round_trips(tmp_path: Path, protocol: int) -> None:
    data = _mmsa_like()
    path = tmp_path / "feat.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, load_pickle(path))


def test_numpy1_global_names_load() -> None:
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5)}
    raw = pickle.dumps(data, protocol=2)
    if b"numpy._core" in raw:  # written by numpy 2: rewrite as numpy 1 would have
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw and b"numpy._core" not in raw
    out = load_pickle_stream(io.BytesIO(raw))
    _assert_same(data, out)


def test_numpy2_global_names_load() -> None:
    data = {"a": np.arange(4, dtype=np.int32)}
    raw = pickle.dumps(data, protocol=2)
    raw = raw.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    assert b"numpy._core.multiarray" in raw
    _assert_same(data, load_pickle_stream(io.BytesIO(raw)))


def test_python2_builtin_names_load() -> None:
    raw = b"\x80\x02c__builtin__\nset\n]q\x00(K\x01K\x02e\x85q\x01Rq\x02."
    assert load_pickle_stream(io.BytesIO(raw)) == {1, 2}


def test_trusted_loads_custom_class_and_warns(tmp_path: Path, caplog) -> None:
    path = tmp_path / "custom.pkl"
    path.write_bytes(pickle.dumps({"obj": _Custom(7)}))
    with pytest.raises(UnsafePickleError):
        load_pickle(path)
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        out = load_pickle(path, trusted=True)
    assert isinstance(out["obj"], _Custom) and out["obj"].x == 7
    assert any("trust" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_truncated_pickle_is_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(_mmsa_like())[:200])
    with pytest.raises(PickleReadError, match="cut.pkl"):
        load_pickle(path)


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_pickle(tmp_path / "nope.pkl")


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


# --- declared sizes the file cannot hold -------------------------------------
from numpy._core.multiarray import _reconstruct  # noqa: E402  (numpy 2; pickled by name)
from numpy._core.numeric import _frombuffer  # noqa: E402

TERA = 10 ** 12


class _Reduces:
    """Pickles as whatever ``__reduce__`` tuple it is given (a crafted payload)."""

    def __init__(self, *reduce_value) -> None:
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


@pytest.mark.parametrize("payload,declared", [
    # numpy's _reconstruct(ndarray, shape, dtype) allocates `shape` at once
    (_Reduces(_reconstruct, (np.ndarray, (TERA,), b"b")), "shape (1000000000000,) and dtype int8"),
    # ndarray.__setstate__ of an object array allocates `shape` before it reads the list
    (_Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (TERA,), np.dtype("O"), False, [1])),
     "shape (1000000000000,) and dtype object"),
    (_Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (TERA, 8), np.dtype("f8"), False, b"\0" * 8)),
     "shape (1000000000000, 8) and dtype float64 (58.2 TiB)"),
    (_Reduces(_frombuffer, (b"\0" * 8, np.dtype("f8"), (TERA,), "C")), "dtype float64 (7.3 TiB)"),
])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_array_larger_than_file_is_refused_before_allocation(tmp_path: Path, payload, declared: str,
                                                             protocol: int) -> None:
    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps({"train": {"audio": payload}}, protocol=protocol))
    assert path.stat().st_size < 1000
    with pytest.raises(PickleSizeError) as ei:
        load_pickle(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and declared in msg and "refusing to allocate" in msg, msg
    assert f"the file holds only {path.stat().st_size} bytes" in msg, msg


@pytest.mark.parametrize("name", ["bytes", "bytearray"])
def test_huge_byte_string_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "tiny.pkl"
    import builtins
    path.write_bytes(pickle.dumps([_Reduces(getattr(builtins, name), (TERA,))], protocol=2))
    with pytest.raises(PickleSizeError, match=rf"{name}\(1000000000000\) \(931.3 GiB\)"):
        load_pickle(path)


def test_size_error_is_a_pickle_read_error_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps(_Reduces(_reconstruct, (np.ndarray, (TERA,), b"b"))))
    with pytest.raises(PickleReadError, match=str(path)):
        load_pickle(path)


def test_object_array_of_many_small_elements_still_loads(tmp_path: Path) -> None:
    """One byte of pickle per element is enough: an object array is not held to 8 bytes each."""
    path = tmp_path / "nones.pkl"
    arr = np.array([None] * 20000, dtype=object)
    path.write_bytes(pickle.dumps(arr, protocol=4))
    assert path.stat().st_size < arr.size * 8  # the pointers numpy allocates exceed the file
    out = load_pickle(path)
    assert out.shape == (20000,) and out.dtype == object and out[-1] is None


def test_declared_size_equal_to_file_data_loads(tmp_path: Path) -> None:
    path = tmp_path / "exact.pkl"
    arr = np.arange(1000, dtype=np.float64)
    path.write_bytes(pickle.dumps(arr, protocol=5))
    assert np.array_equal(load_pickle(path), arr)


def test_stream_size_counted_from_current_position(tmp_path: Path) -> None:
    """Two pickles in one file: the second is checked against what is left after the first."""
    path = tmp_path / "two.pkl"
    big = np.zeros(5000)
    with open(path, "wb") as f:
        pickle.dump(big, f, protocol=4)
        pickle.dump(_Reduces(_reconstruct, (np.ndarray, (1000,), b"d")), f, protocol=4)  # 8000 bytes
    with open(path, "rb") as f:
        assert load_pickle_stream(f).shape == (5000,)
        with pytest.raises(PickleSizeError):
            load_pickle_stream(f, source=str(path))


def test_unsized_stream_is_not_size_checked() -> None:
    class NoSize(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self.buf.read(len(b))
            b[:len(chunk)] = chunk
            return len(chunk)

        def tell(self) -> int:
            raise OSError("not seekable")

    data = pickle.dumps(np.arange(10))
    assert load_pickle_stream(io.BufferedReader(NoSize(data))).tolist() == list(range(10))


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


# --- shared references count against the file's budget --------------------------------------
def _shared_reference_pickle(path: Path, refs: int = 200) -> np.ndarray:
    """A small pickle whose 'audio' list references one 256 KiB array ``refs`` times: a loader that
    stacks the list (validation's np.asarray) would allocate refs x 256 KiB."""
    block = np.ones((64, 1024), dtype=np.float32)
    data = {split: {"audio": [block] * refs, "regression_labels": np.zeros(refs, np.float32)}
            for split in ("train", "valid", "test")}
    path.write_bytes(pickle.dumps(data, protocol=4))
    return block


def test_shared_references_count_against_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "shared.pkl"
    block = _shared_reference_pickle(path)
    size = path.stat().st_size
    assert size < 2 * block.nbytes  # the file holds the array once ...
    assert 3 * 200 * block.nbytes > 100 * size  # ... but declares it 600 times
    with pytest.raises(PickleSizeError, match="each shared reference counted again") as ei:
        load_pickle(path)
    assert str(path) in str(ei.value)
    assert load_pickle(path, trusted=True)["train"]["audio"][5] is not None  # the user's choice


def test_one_shared_reference_within_the_budget_loads(tmp_path: Path) -> None:
    small = np.arange(10, dtype=np.float32)
    data = {"a": small, "b": small, "pad": np.zeros(1000, np.float32)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data))
    out = load_pickle(path)
    assert out["b"] is out["a"] and out["pad"].shape == (1000,)


# --- links and modes ---------------------------------------------------------------------------
from khar_mmsa.io.locks import open_lock_file  # noqa: E402
from khar_mmsa.io.safe_io import UnsafePathError, check_writable_file, new_file_mode  # noqa: E402


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
