"""The restricted unpickler: feature pickles read without running code or allocating what the file
cannot back.

:func:`load_pickle` / :func:`load_pickle_stream` read MMSA feature pickles.  Only the globals a
dict of numpy arrays needs can be resolved (:data:`ALLOWED_GLOBALS`), so a crafted pickle cannot run
code (``os.system``, ``open``, ``eval`` ...).  And every allocation a pickle can cause is budgeted
*before* it happens, against the number of bytes the file holds from where unpickling starts (a real
file's data is in it: an array's raw buffer, a string's characters, one opcode per element):

* **arrays**, whichever opcode reaches numpy's constructors: ``_reconstruct`` and ``_frombuffer``
  through REDUCE, ``ndarray.__setstate__`` through BUILD (shape x itemsize, void dtypes of any
  size; object dtypes count one byte per element, ``itemsize / 8`` for structured ones);
  ``numpy.ndarray`` itself is admitted only as the type those functions are given: calling it
  (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ) is refused, numpy's own pickles never do;
* **declared lengths**: a string, byte string, byte array, long or frame longer than the rest of
  the file is refused before its buffer is allocated; so is ``bytes(n)`` / ``bytearray(n)``;
* **references**: every object fetched again -- GET, BINGET, LONG_BINGET, DUP -- counts again, by
  its size as a tree (an array's bytes, a string's length, a container one plus its elements',
  each shared element counted as often as it occurs; up to :data:`SMALL_REFERENCE_BYTES`, one).  Whoever stacks or copies the references
  (validation's ``np.asarray``, MMSA's ``astype``) allocates them again: a list holding one array
  and 1,999 DUPs, or ``[row] * 2000``, is refused at the reference that goes over;
* an object is never changed after it was fetched again (APPEND, APPENDS, SETITEM, SETITEMS,
  ADDITEMS, BUILD on it are refused), so its size when referenced is its size for good, and BUILD
  applies only to arrays, dtypes, numpy scalars and ordered dicts;
* **nesting**: containers nested deeper than :data:`MAX_NESTING` are refused once loaded, before
  anyone walks them.

Python's own per-object overhead (at most ~100 bytes of memory per byte of pickle, for a file of
nothing but empty lists) is not budgeted.  Errors name the file, the opcode and its byte offset,
and the size.  ``trusted=True`` falls back to plain :mod:`pickle` for a file the user vouches for.
Streams whose size cannot be told are not size-checked (everything else still is).
"""
from __future__ import annotations

import _compat_pickle
import functools
import io
import logging
import os
import pickle
from pathlib import Path
from struct import unpack
from typing import IO, Any, BinaryIO, Dict, Optional, Tuple, Union

from khar_mmsa.io.pickle_budget import (MAX_NESTING, SMALL_REFERENCE_BYTES, TRUST_HINT, Budget, PickleReadError,
                                        PickleSizeError, describe, nesting_depth)
from khar_mmsa.io.pickle_globals import ALLOWED_GLOBALS, LATIN1, allowed_global

logger = logging.getLogger("MMSA")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["UnsafePickleError", "PickleReadError", "PickleSizeError", "ALLOWED_GLOBALS",
           "MAX_NESTING", "SMALL_REFERENCE_BYTES", "load_pickle", "load_pickle_stream"]


class UnsafePickleError(RuntimeError):
    """A pickle asks for a global outside the allow-list (it could run code) or calls one in a way
    numpy's pickles never do, or a checkpoint is not loadable with
    ``torch.load(weights_only=True)``."""

# --------------------------------------------------------------------------------------------
# the unpickler
# --------------------------------------------------------------------------------------------
_OP_NAMES = {op.code.encode("latin-1")[0]: op.name for op in __import__("pickletools").opcodes}


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """:mod:`pickle`'s pure-Python unpickler with the checks of this module's docstring.

    The pure-Python one, because the C unpickler lets no opcode be intercepted.  It costs little
    here: the time goes into reading the array buffers (``python -m benchmarks.loading --quick``).
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: IO[bytes], source: str, budget: Optional[int] = None,
                 start: int = 0) -> None:
        # latin1: numpy's documented choice for Python-2 pickles; no effect on Python-3 text.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._budget = Budget(budget, source)
        self._tell = file.tell if budget is not None else None
        self._end = start + budget if budget is not None else None
        self._frame_start = self._frame_end = 0
        self._at = 0  # offset of the opcode being run (when the stream can tell)
        self._fetched: Dict[int, Any] = {}  # id -> object fetched again (kept alive: ids stay unique)

    # -- where we are ------------------------------------------------------------------------
    def _position(self) -> int:
        frame = self._unframer.current_frame
        return self._frame_start + frame.tell() if frame is not None else self._tell()

    def _where(self) -> str:
        key = self._key
        name = _OP_NAMES.get(key, f"opcode {key!r}")
        return f"{name} at byte {self._at}" if self._tell is not None else name

    def load(self) -> Any:
        """:meth:`pickle._Unpickler.load`, recording each opcode and its offset for messages."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        self._key = 0
        read, dispatch = self.read, self.dispatch
        position = self._position if self._tell is not None else None
        try:
            while True:
                if position is not None:
                    self._at = position()
                key = read(1)
                if not key:
                    raise EOFError
                self._key = key[0]
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            value = stop.value
        depth = nesting_depth(value, MAX_NESTING)
        if depth > MAX_NESTING:
            raise PickleSizeError(
                f"{self._source}: containers nest more than {MAX_NESTING} deep (MAX_NESTING); a "
                f"feature pickle nests 3 (file, split, list of values). Refusing it: code walking it "
                f"would exhaust Python's recursion limit. The file is corrupt or crafted.")
        return value

    # -- declared lengths --------------------------------------------------------------------
    def _declared(self, nbytes: int) -> None:
        """``nbytes`` of data are about to be read: refuse more than the file has left."""
        if self._end is None:
            return
        frame = self._unframer.current_frame
        in_frame = self._frame_end - self._frame_start - frame.tell() if frame is not None else 0
        available = in_frame if in_frame > 0 else self._end - self._tell()
        self._budget.data(nbytes, available, self._where())

    def _sized(fmt: str, signed_name: Optional[str] = None):  # type: ignore[no-untyped-def]
        def read_length(self: "_RestrictedUnpickler") -> int:
            (n,) = unpack(fmt, self.read(8 if fmt == "<Q" else 4))
            if n < 0:
                raise pickle.UnpicklingError(f"{signed_name} pickle has negative byte count")
            self._declared(n)
            return n
        return read_length

    _length4s = _sized("<i", "BINSTRING/LONG4")
    _length4 = _sized("<I")
    _length8 = _sized("<Q")
    del _sized

    def load_binstring(self) -> None:
        self.append(self._decode_string(self.read(self._length4s())))
    dispatch[pickle.BINSTRING[0]] = load_binstring

    def load_binbytes(self) -> None:
        self.append(self.read(self._length4()))
    dispatch[pickle.BINBYTES[0]] = load_binbytes

    def load_binunicode(self) -> None:
        self.append(str(self.read(self._length4()), "utf-8", "surrogatepass"))
    dispatch[pickle.BINUNICODE[0]] = load_binunicode

    def load_binunicode8(self) -> None:
        self.append(str(self.read(self._length8()), "utf-8", "surrogatepass"))
    dispatch[pickle.BINUNICODE8[0]] = load_binunicode8

    def load_binbytes8(self) -> None:
        self.append(self.read(self._length8()))
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8

    def load_bytearray8(self) -> None:
        b = bytearray(self._length8())
        self.readinto(b)
        self.append(b)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_long4(self) -> None:
        self.append(pickle.decode_long(self.read(self._length4s())))
    dispatch[pickle.LONG4[0]] = load_long4

    def load_frame(self) -> None:
        (size,) = unpack("<Q", self.read(8))
        if self._end is not None:
            self._budget.data(size, self._end - self._tell(), self._where())
            self._frame_start = self._tell()
            self._frame_end = self._frame_start + size
        self._unframer.load_frame(size)
    dispatch[pickle.FRAME[0]] = load_frame

    # -- calls -------------------------------------------------------------------------------
    def _callable(self, func: Any, args: Any) -> None:
        """Refuse calling ``numpy.ndarray`` (or a subclass) itself: it allocates ``shape`` at once."""
        import numpy
        if isinstance(func, type) and issubclass(func, numpy.ndarray):
            shape = args[0] if isinstance(args, (tuple, list)) and args else args
            raise UnsafePickleError(
                f"{self._source}: {self._where()} calls numpy.ndarray{_short(args)} directly "
                f"(shape {shape!r}); numpy's own pickles never do (they use _reconstruct or "
                f"_frombuffer), and it would allocate the shape before reading any data. Refusing "
                f"it. " + TRUST_HINT)

    def load_reduce(self) -> None:
        self._callable(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        self._callable(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        self._callable(self.stack[-3], self.stack[-2])
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self._callable(klass, args)
        pickle._Unpickler._instantiate(self, klass, args)  # type: ignore[attr-defined]

    # -- state -------------------------------------------------------------------------------
    def load_build(self) -> None:
        import collections

        import numpy
        state, inst = self.stack[-1], self.stack[-2]
        self._unchanged(inst)
        if not isinstance(inst, (numpy.ndarray, numpy.dtype, numpy.generic, collections.OrderedDict)):
            raise UnsafePickleError(
                f"{self._source}: {self._where()} sets the state of {describe(inst)}; feature "
                f"pickles set state only on numpy arrays, dtypes and scalars. Refusing it. " + TRUST_HINT)
        if isinstance(inst, numpy.ndarray) and isinstance(state, tuple) and len(state) in (4, 5):
            shape, dtype = state[-4], state[-3]  # (version,) shape, dtype, is_fortran, data
            self._budget.array(shape, dtype, f"{self._where()} (an ndarray's state)")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = load_build

    # -- references --------------------------------------------------------------------------
    def _fetched_again(self) -> None:
        obj = self.stack[-1]
        self._fetched[id(obj)] = obj
        self._budget.reference(obj, self._where())

    def _unchanged(self, target: Any) -> None:
        if id(target) in self._fetched:
            raise UnsafePickleError(
                f"{self._source}: {self._where()} changes {describe(target)} after the pickle "
                f"fetched it again (a self-referencing or rewritten structure); feature pickles "
                f"never do. Refusing it. " + TRUST_HINT)

    def _counting_reference(load: Any) -> Any:  # noqa: N805 - applied in the class body below
        """``load`` (an opcode that pushes an object already built) followed by its budget count."""
        def counted(self: "_RestrictedUnpickler") -> None:
            load(self)
            self._fetched_again()
        return counted

    # every way a pickle fetches an object again: by memo index, or by duplicating the stack top
    for _opcode, _load in ((pickle.GET, pickle._Unpickler.load_get),  # type: ignore[attr-defined]
                           (pickle.BINGET, pickle._Unpickler.load_binget),  # type: ignore[attr-defined]
                           (pickle.LONG_BINGET, pickle._Unpickler.load_long_binget),  # type: ignore[attr-defined]
                           (pickle.DUP, pickle._Unpickler.load_dup)):  # type: ignore[attr-defined]
        dispatch[_opcode[0]] = _counting_reference(_load)
    del _opcode, _load, _counting_reference

    def load_append(self) -> None:
        self._unchanged(self.stack[-2])
        pickle._Unpickler.load_append(self)  # type: ignore[attr-defined]
    dispatch[pickle.APPEND[0]] = load_append

    def load_setitem(self) -> None:
        self._unchanged(self.stack[-3])
        pickle._Unpickler.load_setitem(self)  # type: ignore[attr-defined]
    dispatch[pickle.SETITEM[0]] = load_setitem

    def _marked_target(self) -> Any:
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def load_appends(self) -> None:
        self._unchanged(self._marked_target())
        pickle._Unpickler.load_appends(self)  # type: ignore[attr-defined]
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitems(self) -> None:
        self._unchanged(self._marked_target())
        pickle._Unpickler.load_setitems(self)  # type: ignore[attr-defined]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        self._unchanged(self._marked_target())
        pickle._Unpickler.load_additems(self)  # type: ignore[attr-defined]
    dispatch[pickle.ADDITEMS[0]] = load_additems

    # -- globals -----------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        mod, nm = module, name
        # Python-2 names (__builtin__.set, ...), as pickle's fix_imports maps them.  These module
        # names do not exist in Python 3, so mapping them unconditionally is harmless.
        if (mod, nm) in _compat_pickle.NAME_MAPPING:
            mod, nm = _compat_pickle.NAME_MAPPING[(mod, nm)]
        elif mod in _compat_pickle.IMPORT_MAPPING:
            mod = _compat_pickle.IMPORT_MAPPING[mod]
        obj = allowed_global(mod, nm)
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global '{module}.{name}': it is not a numpy "
                f"array, dtype or builtin container, and loading it could run arbitrary code. "
                f"MMSA feature pickles contain only dicts of numpy arrays, lists and strings. "
                + TRUST_HINT)
        return self._guarded(obj, mod, nm)

    def _guarded(self, obj: Any, module: str, name: str) -> Any:
        """The allowed callables that allocate from declared sizes, wrapped to check them first."""
        budget, where = self._budget, self._where
        if name == "_reconstruct":  # _reconstruct(subtype, shape, dtype)
            @functools.wraps(obj)
            def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
                budget.array(shape, dtype, f"{where()} (numpy's _reconstruct)")
                return obj(subtype, shape, dtype)
            return reconstruct
        if name == "_frombuffer":  # _frombuffer(buffer, dtype, shape, order)
            @functools.wraps(obj)
            def frombuffer(buf: Any, dtype: Any, shape: Any, *rest: Any) -> Any:
                budget.array(shape, dtype, f"{where()} (numpy's _frombuffer)")
                return obj(buf, dtype, shape, *rest)
            return frombuffer
        if module == "builtins" and name in ("bytes", "bytearray"):  # bytes(n) allocates n bytes
            def make(*args: Any) -> Any:
                budget.byte_string(args, name, where())
                return obj(*args)
            return make
        if (module, name) == ("_codecs", "encode"):
            def encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> Any:
                if not isinstance(encoding, str) or encoding.lower() not in LATIN1:
                    raise UnsafePickleError(
                        f"{self._source}: {where()} calls _codecs.encode with {encoding!r}; "
                        f"pickles encode byte strings as 'latin1' only. Refusing it. " + TRUST_HINT)
                return obj(text, encoding, *rest)
            return encode
        return obj


def _short(args: Any) -> str:
    text = repr(tuple(args)) if isinstance(args, (tuple, list)) else f"({args!r})"
    return text if len(text) <= 80 else text[:77] + "...)"


def _stream_bounds(fileobj: BinaryIO) -> Tuple[Optional[int], int]:
    """(bytes from the current position to the end of ``fileobj``, the current position); the
    first is None when the stream cannot tell.  (io.UnsupportedOperation is an OSError and a
    ValueError.)"""
    try:
        pos = fileobj.tell()
        try:
            size = os.fstat(fileobj.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            size = fileobj.seek(0, os.SEEK_END)
            fileobj.seek(pos)
        return max(int(size) - int(pos), 0), int(pos)
    except (AttributeError, OSError, ValueError):
        return None, 0


def load_pickle_stream(fileobj: BinaryIO, trusted: bool = False, source: str = "<stream>") -> Any:
    """Unpickle one object from a binary file object.

    With ``trusted=False`` (the default) only :data:`ALLOWED_GLOBALS` may be referenced; any other
    global (or a call numpy's pickles never make) raises :class:`UnsafePickleError` before it is
    called, and any allocation the rest of the stream cannot back (module docstring) raises
    :class:`PickleSizeError` before it is made (streams whose size cannot be told are not
    size-checked).  ``trusted=True`` uses plain :func:`pickle.load` and logs a warning.  A
    truncated or corrupt stream raises :class:`PickleReadError`.  ``source`` names the data in
    messages.
    """
    try:
        if trusted:
            logger.warning("%s: loading with plain pickle (trust_pickle=True); this runs any code "
                           "the file contains -- use it only for files you trust.", source)
            return pickle.load(fileobj, encoding="latin1")
        budget, start = _stream_bounds(fileobj)
        return _RestrictedUnpickler(fileobj, source, budget, start).load()
    except (UnsafePickleError, PickleSizeError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, UnicodeDecodeError, io.UnsupportedOperation) as exc:
        raise PickleReadError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}). The file is truncated, "
            f"corrupt or not a feature pickle; re-download or regenerate it.") from exc


def load_pickle(path: PathLike, trusted: bool = False) -> Any:
    """Read a pickle file safely; see :func:`load_pickle_stream`.

    Raises :class:`FileNotFoundError` (with the path) when the file is missing,
    :class:`UnsafePickleError` for a disallowed global and :class:`PickleReadError` for a corrupt
    file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: feature file not found; check featurePath / custom_feature / MMSA_DATASET_ROOT.")
    with open(p, "rb") as f:
        return load_pickle_stream(f, trusted=trusted, source=str(p))
