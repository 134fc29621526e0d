"""Tests for khar_mmsa.io.pickles: the restricted unpickler (globals, declared sizes, shared references)."""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from khar_mmsa.io.pickles import (PickleReadError, PickleSizeError, UnsafePickleError, load_pickle,
                                  load_pickle_stream)


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
        "meta": {"scale": np.float32(0.5), "names": ("a", "b"), "c": 1 + 2j, "flag": True,
                 "none": None, "big": 2 ** 63, "neg": -2 ** 40, "obj": np.array(["x", 1, None], dtype=object),
                 "fortran": np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)),
                 "strided": np.arange(12.0).reshape(3, 4)[:, ::2], "empty": np.zeros((0, 3), np.float32),
                 "u8": np.arange(3, dtype=np.uint8), "b": np.array([True, False]), "s": np.array([b"ab", b"c"])},
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
    raw = b"\x80\x02c__builtin__\ncomplex\nG?\xf0\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00\x86R."
    assert load_pickle_stream(io.BytesIO(raw)) == 1 + 2j


@pytest.mark.parametrize("value,refused", [
    (collections.OrderedDict(a=1), "collections.OrderedDict"), ({1, 2}, "'builtins.set'|EMPTY_SET"),
    (frozenset({3}), "'builtins.frozenset'|FROZENSET"),
    (b"\x00\x01", "puts a bytes"), (bytearray(b"ab"), "puts a bytearray"), (np.dtype("f4"), "puts a numpy dtype"),
    (np.array([1 + 2j, 3], dtype="c8").view("V8"), "asks for dtype 'V8'"),
    (np.zeros(2, dtype=[("a", "f4")]), "asks for dtype 'V4'"),
    (np.array(["2020-01-01"], dtype="M8[D]"), "asks for dtype 'M8'"),
])
@pytest.mark.parametrize("protocol", [2, 5])
def test_values_outside_the_grammar_are_refused(value, refused: str, protocol: int) -> None:
    """The grammar is what feature pickles hold: sets, ordered dicts, bytes, dtypes as values and
    dtypes other than bool/(u)int/float/complex/str/object are refused, naming what."""
    raw = pickle.dumps({"train": {"x": value}}, protocol=protocol)
    raised, peak = _peak_of(lambda: load_pickle_stream(io.BytesIO(raw), source="g.pkl"))
    assert isinstance(raised, UnsafePickleError) and re.search(refused, str(raised)), repr(raised)
    assert str(raised).startswith("g.pkl: ") and peak < MiB and "\n" not in str(raised)


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
    (_Reduces(_reconstruct, (np.ndarray, (TERA,), b"b")), "declares an array of shape (1000000000000,) and dtype b'b' before any data"),
    # ndarray.__setstate__ of an object array allocates `shape` before it reads the list
    (_Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (TERA,), np.dtype("O"), False, [1])),
     "gives an object array of shape (1000000000000,) a list of length 1"),
    (_Reduces(_reconstruct, (np.ndarray, (0,), b"b"), (1, (TERA, 8), np.dtype("f8"), False, b"\0" * 8)),
     "shape (1000000000000, 8) and dtype float64 (64000000000000 bytes) but gives 8 bytes of data"),
    (_Reduces(_frombuffer, (b"\0" * 8, np.dtype("f8"), (TERA,), "C")),
     "shape (1000000000000,) and dtype float64 (8000000000000 bytes) but gives 8 bytes of data"),
])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_array_larger_than_file_is_refused_before_allocation(tmp_path: Path, payload, declared: str,
                                                             protocol: int) -> None:
    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps({"train": {"audio": payload}}, protocol=protocol))
    assert path.stat().st_size < 1000
    raised, peak = _peak_of(lambda: load_pickle(path))
    assert isinstance(raised, PickleSizeError), repr(raised)
    msg = str(raised)
    assert msg.startswith(f"{path}: ") and declared in msg and "refusing to allocate" in msg, msg
    assert peak < MiB


@pytest.mark.parametrize("name", ["bytes", "bytearray"])
def test_huge_byte_string_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "tiny.pkl"
    import builtins
    path.write_bytes(pickle.dumps([_Reduces(getattr(builtins, name), (TERA,))], protocol=2))
    with pytest.raises(PickleSizeError, match=rf"calls {name}\(1000000000000,\); feature pickles make byte strings only from bytes already read"):
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


class UnsizedStream(io.RawIOBase):
    """A readable stream that cannot tell its size (a pipe): ``tell`` raises."""

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


def test_unsized_stream_loads() -> None:
    data = pickle.dumps(np.arange(10))
    assert load_pickle_stream(io.BufferedReader(UnsizedStream(data))).tolist() == list(range(10))


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
    with pytest.raises(PickleSizeError, match=r"APPENDS at byte \d+: a list that stacks \(np.asarray\) to [\d.]+ MiB, more than 32x") as ei:
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


# --- every allocation budgeted before it happens (round 4) ------------------------------------
import pickletools  # noqa: E402
import struct  # noqa: E402
import tracemalloc  # noqa: E402

from khar_mmsa.io.pickles import MAX_NESTING  # noqa: E402

MiB = 2 ** 20


def _peak_of(call) -> tuple:
    tracemalloc.start()
    try:
        try:
            call()
            raised = None
        except Exception as exc:  # noqa: BLE001
            raised = exc
        return raised, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name,ops", [
    ("BINBYTES8", b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 40)),
    ("BINUNICODE8", b"\x80\x04\x8d" + struct.pack("<Q", 2 ** 40)),
    ("BYTEARRAY8", b"\x80\x05\x96" + struct.pack("<Q", 2 ** 33)),
    ("BINBYTES", b"\x80\x03B" + struct.pack("<I", 2 ** 31)),
    ("BINUNICODE", b"\x80\x02X" + struct.pack("<I", 2 ** 31)),
    ("BINSTRING", b"\x80\x02T" + struct.pack("<i", 2 ** 31 - 1)),
    ("LONG4", b"\x80\x02\x8b" + struct.pack("<i", 2 ** 31 - 1)),
    ("FRAME", b"\x80\x04\x95" + struct.pack("<Q", 2 ** 40)),
])
def test_declared_lengths_beyond_the_file_are_refused_before_reading(tmp_path: Path, name: str, ops: bytes) -> None:
    path = tmp_path / "len.pkl"
    path.write_bytes(ops + b"\0" * 16)
    raised, peak = _peak_of(lambda: load_pickle(path))
    assert isinstance(raised, PickleSizeError), repr(raised)
    assert str(raised).startswith(f"{path}: {name} at byte 2 declares ") and "refusing to allocate" in str(raised)
    assert peak < MiB


def test_error_names_the_opcode_and_its_offset(tmp_path: Path) -> None:
    """A list of one 64 KiB array and 2,000 DUPs: refused at the APPENDS that adds them, named by
    its byte offset, before anything stacks them (125 MiB)."""
    block = pickle.dumps(np.ones(16384, np.float32), protocol=2)[2:-1]
    raw = b"\x80\x02](" + block + b"2" * 2000 + b"e."
    at = next(pos for op, _, pos in pickletools.genops(raw) if op.name == "APPENDS")
    raised, peak = _peak_of(lambda: load_pickle_stream(io.BytesIO(raw), source="dups.pkl"))
    assert isinstance(raised, PickleSizeError), repr(raised)
    assert str(raised).startswith(f"dups.pkl: APPENDS at byte {at}: a list that stacks (np.asarray) to 125.1 MiB")
    assert peak < MiB


@pytest.mark.parametrize("ops,fragment", [
    (b"\x80\x02cnumpy\nndarray\n((J\x00\x00\x00\x40tX\x02\x00\x00\x00f4tR.", "REDUCE at byte 33 calls numpy.ndarray"),
    (b"\x80\x02cnumpy\nndarray\n((J\x00\x00\x00\x40tX\x02\x00\x00\x00f4t\x81.", "NEWOBJ at byte 33: feature pickles never use this opcode"),
    (b"(cnumpy\nndarray\n(J\x00\x00\x00\x40to.", "OBJ at byte 23: feature pickles never use this opcode"),
    (b"(J\x00\x00\x00\x40inumpy\nndarray\n.", "INST at byte 6: feature pickles never use this opcode"),
])
def test_calling_ndarray_itself_is_refused(ops: bytes, fragment: str) -> None:
    raised, peak = _peak_of(lambda: load_pickle_stream(io.BytesIO(ops), source="nd.pkl"))
    assert isinstance(raised, UnsafePickleError) and fragment in str(raised), repr(raised)
    assert peak < MiB


def test_structured_object_dtype_is_refused(tmp_path: Path) -> None:
    """One object field beside a 4 MiB void field (round 4: 16 elements are 64 MiB): structured and
    void dtypes are not in the grammar, refused before any array."""
    from numpy._core.multiarray import _reconstruct
    dt = np.dtype([("o", "O"), ("v", f"V{4 * MiB}")])
    path = tmp_path / "struct.pkl"
    path.write_bytes(pickle.dumps(_Reduces(_reconstruct, (np.ndarray, (16,), dt)), protocol=4))
    assert path.stat().st_size > 16  # one byte per element would fit
    raised, peak = _peak_of(lambda: load_pickle(path))
    assert isinstance(raised, UnsafePickleError) and "asks for dtype 'V4194312'" in str(raised), repr(raised)
    assert peak < MiB


def test_shape_that_is_not_integers_is_refused() -> None:
    from numpy._core.multiarray import _reconstruct
    raw = pickle.dumps(_Reduces(_reconstruct, (np.ndarray, ("3",), b"b")), protocol=4)
    with pytest.raises(UnsafePickleError, match="is not a tuple of integers"):
        load_pickle_stream(io.BytesIO(raw), source="s.pkl")


def test_a_container_changed_after_it_was_referenced_is_refused() -> None:
    """Reference an empty list 1,000 times, then fill it (round 4): refused at the first reference
    (no list or dict is ever referenced again)."""
    raw = (b"\x80\x02]q\x00" + b"](" + b"h\x00" * 1000 + b"e" + b"0" + b"h\x00(" + b"G?\xe0\x00\x00\x00\x00\x00\x00" * 200
           + b"e0.")
    with pytest.raises(PickleSizeError, match=r"fill.pkl: BINGET at byte 7: a second reference to a list of 0 item\(s\)"):
        load_pickle_stream(io.BytesIO(raw), source="fill.pkl")


def test_build_on_anything_but_numpy_state_is_refused() -> None:
    raw = b"\x80\x02]}X\x01\x00\x00\x00a\x88sb."  # BUILD {'a': True} on a list
    with pytest.raises(UnsafePickleError, match="BUILD at byte 12 sets the state of a list"):
        load_pickle_stream(io.BytesIO(raw), source="b.pkl")


def test_codecs_encode_is_latin1_only() -> None:
    ok = pickle.dumps(np.arange(3, dtype=np.int16), protocol=2)  # the data: _codecs.encode(text, 'latin1')
    assert load_pickle_stream(io.BytesIO(ok)).tolist() == [0, 1, 2]
    bad = ok.replace(b"X\x06\x00\x00\x00latin1", b"X\x08\x00\x00\x00utf_32le")
    assert bad != ok
    with pytest.raises(UnsafePickleError, match=r"c.pkl: REDUCE at byte \d+ calls _codecs.encode\('b', 'utf_32le'\)"):
        load_pickle_stream(io.BytesIO(bad), source="c.pkl")


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    deep: list = []
    for _ in range(MAX_NESTING - 1):
        deep = [deep]  # MAX_NESTING lists, one in the other
    assert load_pickle_stream(io.BytesIO(pickle.dumps(deep))) == deep
    with pytest.raises(PickleSizeError, match=f"nest more than {MAX_NESTING} deep"):
        load_pickle_stream(io.BytesIO(pickle.dumps([deep])), source="deep.pkl")
    tuple_chain = b"\x80\x02N" + b"\x85" * (MAX_NESTING + 1) + b"."  # TUPLE1 around TUPLE1 ...
    with pytest.raises(PickleSizeError, match="nest more than"):
        load_pickle_stream(io.BytesIO(tuple_chain), source="t.pkl")


def test_labels_drawn_from_a_few_strings_load(tmp_path: Path) -> None:
    """Real files hold thousands of references to a few short strings: each counts one byte."""
    labels = ["Positive", "Negative", "Neutral"]
    data = {"train": {"annotations": [labels[i % 3] for i in range(5000)]}}
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_pickle(path) == data


def test_a_long_string_referenced_again_counts_in_full() -> None:
    """3,000 references to one 4096-character string: np.asarray makes 4 bytes a character each."""
    text = "x" * 4096
    raw = pickle.dumps([text] * 3000, protocol=4)
    with pytest.raises(PickleSizeError, match=r"a list that stacks \(np.asarray\) to 15.6 MiB"):
        load_pickle_stream(io.BytesIO(raw), source="s.pkl")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_benchmark_shaped_pickle_loads_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    from benchmarks.loading import make_pickle
    path = tmp_path / "bench.pkl"
    make_pickle(path, (40, 10, 10), 8, (10, 5), (12, 20))
    data = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    _assert_same(data, load_pickle(path))
