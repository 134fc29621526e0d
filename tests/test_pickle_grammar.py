"""The restricted loader's grammar (issue 31): every key of MMSA's layouts loads as ``pickle.load``
reads it, under numpy 1 and numpy 2 module paths and protocols 2-5; hostile shapes beyond the
issue's are refused with one line, within the stated memory multiple of the bytes read."""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
import tracemalloc
from typing import Any, Callable

import numpy as np
import pytest

from khar_mmsa.data.planted import planted_data
from test_pickles import UnsizedStream
from khar_mmsa.io.pickles import (FLOOR_BYTES, MEMORY_MULTIPLE, PickleReadError, PickleSizeError,
                                  UnsafePickleError, load_pickle, load_pickle_stream)

MiB = 2 ** 20


def _peak(call: Callable[[], Any]) -> tuple:
    tracemalloc.start()
    try:
        try:
            call()
            raised = None
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            raised = exc
        return raised, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _same(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    else:
        assert a == b or (a != a and b != b), where


def as_numpy1(raw: bytes) -> bytes:
    """The same pickle as numpy 1 writes it: ``numpy.core.*`` module paths (frames dropped: they
    are optional, and the lengths change)."""
    ops = list(pickletools.genops(raw))
    ends = [pos for _, _, pos in ops[1:]] + [len(raw)]
    out = bytearray()
    for (op, arg, pos), end in zip(ops, ends):
        if op.name == "FRAME":
            continue
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE") and arg.startswith("numpy._core."):
            text = arg.replace("numpy._core.", "numpy.core.").encode()
            out += b"\x8c" + bytes([len(text)]) + text
        elif op.name == "GLOBAL" and arg.startswith("numpy._core."):
            out += b"c" + arg.replace("numpy._core.", "numpy.core.").replace(" ", "\n").encode() + b"\n"
        else:
            out += raw[pos:end]
    return bytes(out)


def mmsa_layout(dataset: str, aligned: bool) -> dict:
    """Every key of MMSA's feature pickle for ``dataset`` (planted data at the real widths), with
    the value types real files use: ids and texts as lists, str arrays and object arrays, lengths
    as lists of ints, labels float32/float64."""
    data, _ = planted_data(dataset, sizes=(3, 2, 2), seq_lens=(6, 5, 5) if aligned else (6, 7, 8),
                           text_feature_dim=8)
    out = {}
    for i, split in enumerate(("train", "valid", "test")):
        d = dict(data[split])
        if aligned:  # aligned_50.pkl: one sequence length, no *_lengths keys
            d.pop("audio_lengths")
            d.pop("vision_lengths")
        else:
            d["audio_lengths"] = [int(x) for x in d["audio_lengths"]]  # MMSA's own files: lists
        d["raw_text"] = [d["raw_text"], np.asarray(d["raw_text"], dtype=object), np.asarray(d["raw_text"])][i]
        d["id"] = np.asarray(d["id"], dtype=object) if i else list(d["id"])
        d["regression_labels"] = d["regression_labels"].astype(np.float64 if i else np.float32)
        out[split] = d
    return out


@pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")  # plain pickle imports numpy.core
@pytest.mark.parametrize("numpy_paths", ["numpy 2", "numpy 1"])
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("layout", ["unaligned", "aligned"])
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_every_key_of_mmsa_layouts_loads_as_pickle_reads_it(dataset, layout, protocol, numpy_paths):
    data = mmsa_layout(dataset, layout == "aligned")
    raw = pickle.dumps(data, protocol=protocol)
    if numpy_paths == "numpy 1":
        raw = as_numpy1(raw)
        assert b"numpy._core" not in raw and b"numpy.core." in raw
    keys = set(data["train"])
    assert {"raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels",
            "classification_labels", "annotations"} <= keys
    assert ({"audio_lengths", "vision_lengths"} <= keys) == (layout == "unaligned")
    assert ("regression_labels_T" in keys) == dataset.startswith("sims")
    _same(pickle.loads(raw), load_pickle_stream(io.BytesIO(raw), source="f.pkl"))


def test_a_python2_array_with_str_data_loads():
    """Python 2 wrote an array's bytes as a str (SHORT_BINSTRING); read with latin-1 as numpy does."""
    raw = _state(b"K\x03\x85", _dtype(b"u1", b"|"), b"U\x03\x01\x02\xff")
    out = load_pickle_stream(io.BytesIO(P2 + raw + b"."), source="py2.pkl")
    assert out.dtype == np.uint8 and out.tolist() == [1, 2, 255]
    assert out.tolist() == pickle.loads(P2 + raw + b".", encoding="latin1").tolist()


def test_loaded_arrays_are_writable_as_pickle_makes_them(tmp_path):
    """MMSA zeroes -inf in place (``audio[audio == -np.inf] = 0``): arrays must be writable."""
    for protocol in (2, 4, 5):
        path = tmp_path / f"a{protocol}.pkl"
        path.write_bytes(pickle.dumps({"audio": np.full((300, 100), -np.inf, np.float32)}, protocol=protocol))
        audio = load_pickle(path)["audio"]
        audio[audio == -np.inf] = 0
        assert not audio.any()


# --- hostile shapes beyond the issue's ------------------------------------------------------------
P2, P4 = b"\x80\x02", b"\x80\x04"
F8 = b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
REC = b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
SCALAR = b"cnumpy._core.multiarray\nscalar\n"


def _dtype(code: bytes, order: bytes = b"<", elsize: bytes = b"J\xff\xff\xff\xff") -> bytes:
    return (b"cnumpy\ndtype\nX" + struct.pack("<I", len(code)) + code + b"\x89\x88\x87R(K\x03X\x01\x00\x00\x00"
            + order + b"NNN" + elsize + b"J\xff\xff\xff\xffK\x00tb")


def _state(shape: bytes, dtype: bytes, data: bytes) -> bytes:
    """``REC`` then BUILD with ``(1, shape, dtype, False, data)``."""
    return REC + b"(K\x01" + shape + dtype + b"\x89" + data + b"tb"


HOSTILE = {
    # memo games
    "BINPUT skipping ahead": (P2 + b"Nq\x05.", UnsafePickleError, "stores memo entry 5 with 0 stored"),
    "LONG_BINPUT 2**32-1": (P2 + b"Nr\xff\xff\xff\xff.", UnsafePickleError, "stores memo entry 4294967295"),
    "BINGET never stored": (P2 + b"h\x03.", PickleReadError, "fetches memo entry 3, which was never stored"),
    "MEMOIZE a pending array, fetch it before BUILD": (P4 + REC + b"\x94h\x00.", UnsafePickleError,
                                                      "fetches a numpy array again before its BUILD"),
    "list containing itself": (P2 + b"]q\x00h\x00a.", PickleSizeError, "a second reference to a list of 0 item(s)"),
    "DUP a dict": (P2 + b"}2.", PickleSizeError, "DUP at byte 3: a second reference to a dict"),
    # numbers
    "LONG4 declaring 2 GiB": (P2 + b"\x8b\xff\xff\xff\x7f" + b"\0" * 8 + b".", PickleSizeError,
                              "LONG4 at byte 2 declares 2147483647 bytes"),
    "LONG4 of 100 bytes present": (P2 + b"\x8bd\x00\x00\x00" + b"\x01" * 100 + b".", PickleSizeError,
                                   "declares an integer of 100 bytes"),
    "INT line of 100 digits": (b"I" + b"9" * 100 + b"\n.", UnsafePickleError, "holds an integer of 333 bits"),
    # frames
    "FRAME declaring 1 TiB": (P4 + b"\x95" + struct.pack("<Q", 2 ** 40) + b"N.", PickleSizeError,
                              "FRAME at byte 2 declares 1099511627776 bytes"),
    # allowed names, wrong arguments
    "scalar with one argument": (P2 + SCALAR + F8 + b"\x85R.", UnsafePickleError,
                                 "calls numpy._core.multiarray.scalar with 1 argument(s)"),
    "scalar with 4 bytes for a float64": (P2 + SCALAR + F8 + b"C\x04\0\0\0\0\x86R.", PickleSizeError,
                                          "asks numpy's scalar for dtype float64 (8 bytes) from a bytes of length 4"),
    "scalar of an object dtype": (P2 + SCALAR + _dtype(b"O8", b"|") + b"N\x86R.", PickleSizeError,
                                  "asks numpy's scalar for dtype object"),
    "scalar of an object dtype from 8 bytes (a pointer)": (P2 + SCALAR + _dtype(b"O8", b"|") + b"C\x08" + b"\x41" * 8
                                                          + b"\x86R.", PickleSizeError, "asks numpy's scalar for dtype object"),
    "dtype with ints for its bools": (P2 + b"cnumpy\ndtype\nX\x02\x00\x00\x00f8K\x01K\x01\x87R.", UnsafePickleError,
                                      "asks for dtype('f8', 1, 1)"),
    "_reconstruct of a dtype": (P2 + b"cnumpy._core.multiarray\n_reconstruct\n" + F8 + b"K\x00\x85C\x01b\x87R.",
                                UnsafePickleError, "calls numpy's _reconstruct for dtype('<f8')"),
    "_frombuffer with order 'K'": (P4 + b"cnumpy._core.numeric\n_frombuffer\n(C\x08" + b"\0" * 8 + F8
                                   + b"K\x01\x85X\x01\x00\x00\x00KtR.", UnsafePickleError, "gives order 'K'"),
    "STACK_GLOBAL of two ints": (P4 + b"K\x01K\x02\x93.", UnsafePickleError, "STACK_GLOBAL something other than two strings"),
    # dtype strings
    "U999999999": (P2 + _dtype(b"U999999999") + b".", UnsafePickleError, "asks for dtype 'U999999999'"),
    "U0": (P2 + _dtype(b"U0") + b".", UnsafePickleError, "asks for dtype 'U0'"),
    "byte order inside the code": (P2 + _dtype(b">f8") + b".", UnsafePickleError, "asks for dtype '>f8'"),
    "f16 (long double)": (P2 + _dtype(b"f16") + b".", UnsafePickleError, "asks for dtype 'f16'"),
    "byte order 'x'": (P2 + _dtype(b"f8", b"x") + b".", UnsafePickleError, "sets dtype 'f8' to state"),
    "U2 claiming 4000-byte elements": (P2 + _dtype(b"U2", elsize=b"J\xa0\x0f\x00\x00") + b".", PickleSizeError,
                                       "gives dtype 'U2' an element size of 4000 bytes; numpy writes 8"),
    # shapes
    "negative shape": (P2 + _state(b"J\xff\xff\xff\xff\x85", F8, b"C\x00") + b".", UnsafePickleError,
                       "gives an array shape (-1,) that is not a tuple of integers >= 0"),
    "prod(shape) overflowing int64": (P2 + _state(b"\x8a\x09" + b"\0" * 8 + b"\x01" + b"\x8a\x09" + b"\0" * 8 + b"\x01"
                                                  + b"\x86", F8, b"C\x08" + b"\0" * 8) + b".", PickleSizeError,
                                      "but gives 8 bytes of data"),
    "bool as a dimension": (P2 + _state(b"\x88\x85", F8, b"C\x08" + b"\0" * 8) + b".", UnsafePickleError,
                            "is not a tuple of integers"),
    # object arrays
    "object array holding an array": (P2 + _state(b"K\x01\x85", _dtype(b"O8", b"|"), b"](" + _state(b"K\x00\x85", F8, b"C\x00") + b"e")
                                      + b".", UnsafePickleError, "puts a ndarray at element 0 of an object array"),
    "object array holding a list": (P2 + _state(b"K\x01\x85", _dtype(b"O8", b"|"), b"](]e") + b".", UnsafePickleError,
                                    "puts a list of length 0 at element 0"),
    "object array state of bytes": (P2 + _state(b"K\x01\x85", _dtype(b"O8", b"|"), b"C\x08" + b"\0" * 8) + b".",
                                    PickleSizeError, "gives an object array of shape (1,) a bytes of length 8"),
    "BUILD twice on an array": (P2 + _state(b"K\x00\x85", F8, b"C\x00") + b"(K\x01K\x00\x85" + F8 + b"\x89C\x00tb.",
                                UnsafePickleError, "sets the state of an array of shape (0,)"),
    # opcodes outside the grammar
    "PERSID": (b"Pfoo\n.", UnsafePickleError, "PERSID at byte 0: feature pickles never use this opcode"),
    "BINPERSID": (P2 + b"N" + b"Q.", UnsafePickleError, "BINPERSID at byte 3"),
    "EXT1": (P2 + b"\x82\x01.", UnsafePickleError, "EXT1 at byte 2"),
    "EXT4": (P2 + b"\x84\x01\x00\x00\x00.", UnsafePickleError, "EXT4 at byte 2"),
    "NEXT_BUFFER": (b"\x80\x05\x97.", UnsafePickleError, "NEXT_BUFFER at byte 2"),
    "protocol 6": (b"\x80\x06N.", UnsafePickleError, "declares a pickle protocol above 5"),
    # nesting, marks, keys
    "200,000 TUPLE1s around a global": (P2 + b"cnumpy\nndarray\n" + b"\x85" * 200000 + b".", PickleSizeError,
                                        "TUPLE1 at byte 117: containers nest more than 100 deep"),
    "200,000 MARKs": (b"(" * 200000 + b".", PickleSizeError, "MARKs nest more than 200 deep"),
    "lists nested 101 deep": (P2 + b"]" * 102 + b"a" * 101 + b".", PickleSizeError, "nest more than 100 deep"),
    "dict with a list as key": (P2 + b"}]Ns.", UnsafePickleError, "uses a list of 0 item(s) as a dict key"),
    "SETITEMS with an odd count": (P2 + b"}(NNNu.", PickleReadError, "odd number of items for a dict"),
    "APPENDS without a MARK": (P2 + b"]e.", PickleReadError, "finds no MARK"),
    "APPEND to a tuple": (P2 + b"NNNa.", UnsafePickleError, "adds items to a NoneType"),
    "_codecs.encode to utf-7": (P2 + b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-7\x86R.",
                                UnsafePickleError, "calls _codecs.encode('a', 'utf-7')"),
    "a global as the value": (P2 + b"cnumpy\nndarray\n.", UnsafePickleError, "puts the global numpy.ndarray in the pickle's value"),
    "no STOP": (P2 + b"N", PickleReadError, "before the pickle's STOP (truncated)"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_shape_is_refused_in_one_line(name):
    raw, kind, phrase = HOSTILE[name]
    raised, peak = _peak(lambda: load_pickle_stream(io.BytesIO(raw), source="h.pkl"))
    assert type(raised) is kind and phrase in str(raised), repr(raised)
    assert str(raised).startswith("h.pkl: ") and "\n" not in str(raised)
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB"


def test_every_truncation_of_a_feature_pickle_is_a_clear_error(tmp_path):
    raw = pickle.dumps(mmsa_layout("mosi", False)["valid"], protocol=4)
    for cut in range(0, len(raw), 7):
        with pytest.raises(PickleReadError, match=r"h.pkl: .*(truncated|corrupt)"):
            load_pickle_stream(io.BytesIO(raw[:cut]), source="h.pkl")


def test_an_unsized_stream_reads_a_huge_declared_length_chunk_by_chunk():
    """A stream that cannot tell its size, declaring 1 TiB of bytes and then ending: memory follows
    the bytes read (one chunk), not the claim."""
    raw = P4 + b"\x8e" + struct.pack("<Q", 2 ** 40) + b"\0" * (3 * MiB)
    raised, peak = _peak(lambda: load_pickle_stream(io.BufferedReader(UnsizedStream(raw)), source="u"))
    assert isinstance(raised, PickleReadError) and "the file ends inside it" in str(raised), repr(raised)
    assert peak < 16 * MiB


# --- the memory multiple, measured --------------------------------------------------------------
from benchmarks.loading import adversarial_files  # noqa: E402

ADVERSARIAL = adversarial_files(2 ** 16)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_memory_stays_within_the_stated_multiple_of_the_bytes_read(name):
    """Files of what Python allocates most for per byte (benchmarks.loading's table, smaller): read
    or refused with tracemalloc's peak below 32x the bytes read + 8 MiB; refused only for size."""
    stream = io.BytesIO(ADVERSARIAL[name])
    raised, peak = _peak(lambda: load_pickle_stream(stream, source="f.pkl"))
    assert peak <= MEMORY_MULTIPLE * stream.tell() + FLOOR_BYTES, f"{name}: {peak / MiB:.1f} MiB"
    assert raised is None or (isinstance(raised, PickleSizeError) and "read so far" in str(raised)), repr(raised)
    if name in ("empty lists", "empty dicts", "1-tuples of None", "references to a 256 KiB array"):
        assert raised is not None  # 64 KiB of these already pass the bound
