"""The globals a feature pickle may name, and what the loader builds for each.

A global is never imported and never called: :func:`resolve` maps an allowed ``module.name`` to a
:class:`Name` token, and REDUCE / BUILD on a token run *our* builders below, which make numpy
dtypes, arrays and scalars from the shape, dtype and bytes the file holds (``prod(shape) x
itemsize`` must equal the bytes read; no pickle-chosen size ever reaches a numpy constructor).

Accepted dtypes (:data:`DTYPE_CODE`): bool, (u)int 8-64, float 16-64, complex 64/128, fixed-width
``U``/``S`` strings, and object (``O``) arrays whose elements are str, int, float, bool or None.
"""
from __future__ import annotations

import math
import re
import reprlib
from typing import Any, Optional

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "LATIN1", "DTYPE_CODE", "Name", "Buffer", "Pending", "Refusal", "resolve",
           "ATOMS", "reconstruct", "make_dtype", "finish_dtype", "build_array", "frombuffer", "scalar",
           "byte_string", "encode", "complex_number"]

_NUMPY_CORE = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}
_BUILTINS = {"bytes", "bytearray", "complex"}
#: (module, name) pairs a pickle may name (after Python-2 name mapping); numpy 1 writes
#: ``numpy.core``, numpy 2 ``numpy._core``: both are the same token.
ALLOWED_GLOBALS: frozenset = frozenset(
    {(f"{base}.{m}", n) for base in ("numpy.core", "numpy._core") for m, n in _NUMPY_CORE}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {("builtins", n) for n in _BUILTINS})
#: The one codec ``_codecs.encode`` is allowed (what pickle itself writes); others grow their input.
LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})
#: The dtype strings numpy writes for the accepted dtypes (``dtype('f4', False, True)``).
DTYPE_CODE = re.compile(r"(?:b1|[iu][1248]|f[248]|c(?:8|16)|O8?|[US][1-9][0-9]{0,5})")
#: Element types an object array (and a container) may hold besides containers and arrays.
ATOMS = (str, int, float, bool, complex, type(None))


class Refusal(Exception):
    """A value outside the grammar; ``size`` when it is about memory (PickleSizeError)."""

    def __init__(self, message: str, size: bool = False) -> None:
        super().__init__(message)
        self.size = size


class Name:
    """An allowed global, by what it builds (never the imported object)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module}.{self.name}"


class Buffer:
    """Bytes read from the file into a numpy ``uint8`` array (no zero-fill, no copy later): what a
    large BINBYTES / BYTEARRAY8 becomes.  Arrays built from it are writable views of it."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __bytes__(self) -> bytes:
        return self.array.tobytes()


_BYTES = (bytes, bytearray, Buffer)


class Pending:
    """An array or dtype made by REDUCE that waits for its BUILD state (then ``value``)."""

    __slots__ = ("kind", "code", "value")

    def __init__(self, kind: str, code: str = "") -> None:
        self.kind, self.code, self.value = kind, code, None


def resolve(module: str, name: str) -> Optional[Name]:
    if (module, name) not in ALLOWED_GLOBALS:
        return None
    return Name(module.replace("numpy.core.", "numpy._core."), name)


# -- numpy -------------------------------------------------------------------------------------
def reconstruct(subtype: Any, shape: Any, code: Any) -> Pending:
    """``_reconstruct(ndarray, (0,), b'b')``: what ``ndarray.__reduce__`` writes; the array comes
    with its BUILD state.  Any other shape would be allocated before any data: refused."""
    if not (isinstance(subtype, Name) and subtype.name == "ndarray"):
        raise Refusal(f"calls numpy's _reconstruct for {subtype!r}; numpy's pickles pass numpy.ndarray")
    count = _count(shape)
    if count != 0 or code not in (b"b", "b"):
        raise Refusal(f"numpy's _reconstruct declares an array of shape {shape!r} and dtype {code!r} "
                      f"before any data (numpy's own pickles declare (0,) and 'b'); refusing to "
                      f"allocate it", size=True)
    return Pending("array")


def make_dtype(code: Any, align: Any = False, copy: Any = True) -> Pending:
    if not (isinstance(code, str) and DTYPE_CODE.fullmatch(code)):
        raise Refusal(f"asks for dtype {code!r}; feature pickles hold bool, (u)int, float, complex, "
                      f"fixed-width str and object arrays only")
    if type(align) is not bool or type(copy) is not bool:
        raise Refusal(f"asks for dtype({code!r}, {align!r}, {copy!r}); numpy writes two bools")
    return Pending("dtype", code)


def finish_dtype(pending: Pending, state: Any) -> np.dtype:
    """BUILD of a dtype: ``(version, byteorder, None, None, None, elsize, alignment, flags)``."""
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
            and all(type(x) is int for x in state[5:8])):
        raise Refusal(f"sets dtype {pending.code!r} to state {_short(state)}; numpy writes "
                      f"(3, byteorder, None, None, None, elsize, alignment, flags) for plain dtypes")
    dt = np.dtype(pending.code)
    if state[5] != (dt.itemsize if dt.kind in "US" else -1):
        raise Refusal(f"gives dtype {pending.code!r} an element size of {state[5]} bytes; numpy "
                      f"writes {dt.itemsize if dt.kind in 'US' else -1}", size=True)
    return dt.newbyteorder(state[1]) if state[1] in "<>" else dt


def _count(shape: Any) -> int:
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise Refusal(f"gives an array shape {_short(shape)} that is not a tuple of integers >= 0")
    return math.prod(shape)


def _check_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise Refusal(f"gives {_short(dtype)} as an array's dtype; numpy writes a dtype")
    return dtype


def build_array(pending: Pending, state: Any) -> np.ndarray:
    """BUILD of ``_reconstruct``'s array: ``(1, shape, dtype, is_fortran, data)``."""
    if not (isinstance(state, tuple) and len(state) in (4, 5) and (len(state) == 4 or state[0] == 1)):
        raise Refusal(f"sets an array to state {_short(state)}; numpy writes (1, shape, dtype, "
                      f"is_fortran, data)")
    shape, dtype, fortran, data = state[-4:]
    if type(fortran) is not bool:
        raise Refusal(f"gives is_fortran={fortran!r}; numpy writes a bool")
    return _array(data, _check_dtype(dtype), shape, "F" if fortran else "C")


def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``_frombuffer(buffer, dtype, shape, order)``: what protocol 5 writes for contiguous arrays."""
    if order not in ("C", "F"):
        raise Refusal(f"gives order {order!r} to numpy's _frombuffer; numpy writes 'C' or 'F'")
    dt = _check_dtype(dtype)
    if dt.hasobject:
        raise Refusal("gives numpy's _frombuffer an object dtype; numpy never does (it would read "
                      "pointers from the file)")
    return _array(buf, dt, shape, order)


def _array(data: Any, dt: np.dtype, shape: Any, order: str) -> np.ndarray:
    count = _count(shape)
    if dt.hasobject:
        if not isinstance(data, list) or len(data) != count:
            raise Refusal(f"gives an object array of shape {shape} {_what(data)} as its elements; "
                          f"numpy writes a list of exactly {count}; refusing to allocate it", size=True)
        for i, x in enumerate(data):
            if type(x) not in ATOMS:
                raise Refusal(f"puts {_what(x)} at element {i} of an object array; feature pickles "
                              f"hold only str, numbers and None there")
        out = np.empty(count, dtype=object)
        out[:] = data
        return out.reshape(shape, order=order)
    if isinstance(data, str):  # a Python-2 pickle's str, read as latin-1 (as numpy's own setstate)
        data = data.encode("latin-1")
    if not isinstance(data, _BYTES):
        raise Refusal(f"gives {_what(data)} as the data of an array of dtype {dt}; numpy writes "
                      f"bytes")
    if len(data) != count * dt.itemsize:
        raise Refusal(f"declares an array of shape {shape} and dtype {dt} ({count * dt.itemsize} "
                      f"bytes) but gives {len(data)} bytes of data; refusing to allocate it", size=True)
    buf = data.array if isinstance(data, Buffer) else data if isinstance(data, bytearray) else bytearray(data)
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)


def scalar(dtype: Any, data: Any) -> np.generic:
    """``scalar(dtype, bytes)``: a numpy scalar from exactly its itemsize of bytes read."""
    dt = _check_dtype(dtype)
    if dt.hasobject or not isinstance(data, _BYTES) or len(data) != dt.itemsize:
        raise Refusal(f"asks numpy's scalar for dtype {dt} ({dt.itemsize} bytes) from {_what(data)}; "
                      f"a scalar is built from exactly its own bytes, read from the file", size=True)
    return np.frombuffer(bytes(data), dtype=dt)[0]


# -- builtins ----------------------------------------------------------------------------------
def byte_string(name: str, args: tuple) -> Any:
    """``bytes()`` / ``bytearray()`` of nothing, of bytes read, or of text read and 'latin-1'."""
    kind = bytes if name == "bytes" else bytearray
    if not args:
        return kind()
    if len(args) == 1 and isinstance(args[0], _BYTES):
        return kind(bytes(args[0]) if isinstance(args[0], Buffer) else args[0])
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str) and args[1].lower() in LATIN1:
        return kind(args[0], "latin-1")
    raise Refusal(f"calls {name}{_short(args)}; feature pickles make byte strings only from bytes "
                  f"already read (a number there would allocate that many bytes)", size=True)


def encode(args: tuple) -> bytes:
    if not (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str)
            and args[1].lower() in LATIN1):
        raise Refusal(f"calls _codecs.encode{_short(args)}; pickles encode byte strings from text "
                      f"with 'latin1' only")
    return args[0].encode("latin-1")


def complex_number(args: tuple) -> complex:
    if not (1 <= len(args) <= 2 and all(type(x) in (int, float) for x in args)):
        raise Refusal(f"calls complex{_short(args)}; pickles give it one or two numbers")
    return complex(*args)


def _what(obj: Any) -> str:
    if isinstance(obj, (list, tuple, dict, str, bytes, bytearray)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return f"a {type(obj).__name__}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _short(obj: Any) -> str:
    """A bounded repr (a crafted state may be a list of millions, nested 100 deep)."""
    return _REPR.repr(obj)
