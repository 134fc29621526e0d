"""The loader's stack machine: the pickle opcodes feature pickles use, each read and run by our
own code (no ``pickle.Unpickler``, no import, no call of anything a file names).

Design and budget: :mod:`khar_mmsa.io.pickles` (the public door) and
:mod:`khar_mmsa.io.pickle_budget`; what the globals build: :mod:`khar_mmsa.io.pickle_globals`.
"""
from __future__ import annotations

import _compat_pickle
import os
import pickletools
import sys
from struct import unpack
from typing import Any, BinaryIO, Callable, Dict, List, Optional

import numpy as np

from khar_mmsa.io import pickle_globals as g
from khar_mmsa.io.pickle_budget import (COST, MAX_NESTING, TRUST_HINT, Budget, PickleReadError,
                                        PickleSizeError, Stats, UnsafePickleError, atom_stats, on_disk)

__all__ = ["Machine", "CHUNK"]

#: Declared lengths above this are read chunk by chunk, each chunk allocated only after the one
#: before was read: memory grows with the bytes actually read, not with what a length claims.
CHUNK = 4 * 2 ** 20
#: Reads up to this size are plain ``file.read``; larger ones go into a bytearray (no copy later).
SMALL_READ = 2 ** 16
PUSH, BOOK = COST["push"], COST["book"]
_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_CONTAINERS = (list, tuple, dict)


class Stop(Exception):
    """The STOP opcode."""


class Machine:
    """Run one pickle from ``file``; :meth:`load` returns the value or raises a one-line error."""

    def __init__(self, file: BinaryIO, source: str, opcodes: Dict[int, Callable[["Machine"], None]]) -> None:
        """``opcodes``: :data:`khar_mmsa.io.pickle_opcodes.OPCODES` (given, so that the two modules
        do not import each other)."""
        self.file, self.source, self.opcodes = file, source, opcodes
        self.budget = Budget(source)
        try:
            self.start = file.tell()
            try:
                size = os.fstat(file.fileno()).st_size
            except (AttributeError, OSError, ValueError):
                size = file.seek(0, os.SEEK_END)
                file.seek(self.start)
            self.size: Optional[int] = max(int(size) - self.start, 0)
        except (AttributeError, OSError, ValueError):
            self.start, self.size = 0, None
        self.dense = on_disk(file)
        self.at = 0
        self.op = 0
        self.stack: List[Any] = []
        self.marks: List[List[Any]] = []
        self.memo: List[Any] = []
        self.stats: Dict[int, Optional[Stats]] = {}  # id of a container or object array we built
        self.arg_depth: Dict[int, int] = {}  # id of a tuple that is not data (call arguments)
        self.keep: List[Any] = []  # ... kept alive, so that no id in ``stats`` is reused

    # -- reading -------------------------------------------------------------------------------
    def where(self) -> str:
        return f"{_NAMES.get(self.op, f'opcode {self.op!r}')} at byte {self.start + self.at}"

    def read(self, n: int) -> bytes:
        if n <= SMALL_READ:
            data = self.file.read(n)
            self.budget.read += len(data)
            if len(data) < n:
                raise PickleReadError(f"{self.source}: {self.where()}: the file ends inside it "
                                      f"(truncated); re-download or regenerate it.")
            return data
        return self.read_chunked(n)

    def read_chunked(self, n: int) -> g.Buffer:
        """``n`` bytes into a :class:`~khar_mmsa.io.pickle_globals.Buffer` (numpy's arrays are
        views of it).  At once when the file holds them on disk (not sparse: ``st_blocks`` cover
        ``st_size``); otherwise one :data:`CHUNK` at a time, each allocated after the one before
        was read, so that memory follows the bytes actually read, whatever a length or a sparse
        file's size claims."""
        if self.dense:
            buf = np.empty(n, dtype=np.uint8)
            got = 0
            while got < n:
                k = self.file.readinto(buf[got:])
                if not k:
                    break
                got += k
            self.budget.read += got
        else:
            grown = bytearray()
            while len(grown) < n:
                part = self.file.read(min(CHUNK, n - len(grown)))
                self.budget.read += len(part)
                if not part:
                    break
                grown += part
                self.budget.charge(len(part), self.where, "the data read so far takes")
            got, buf = len(grown), np.frombuffer(grown, dtype=np.uint8)
            self.budget.memory -= got  # charged once, below
        if got < n:
            raise PickleReadError(f"{self.source}: {self.where()}: the file ends inside it "
                                  f"(truncated); re-download or regenerate it.")
        self.budget.charge(n, self.where, "the data read so far takes")
        return g.Buffer(buf)

    def length(self, fmt: str) -> int:
        (n,) = unpack(fmt, self.read(8 if fmt == "<Q" else 4))
        if n < 0:
            raise PickleReadError(f"{self.source}: {self.where()} declares a negative length ({n}); "
                                  f"the file is corrupt or crafted.")
        self.budget.data(n, None if self.size is None else self.size - self.budget.read, self.where)
        return n

    def line(self) -> bytes:
        limit = -1 if self.size is None else self.size - self.budget.read
        data = self.file.readline(limit)
        self.budget.read += len(data)
        if not data.endswith(b"\n"):
            raise PickleReadError(f"{self.source}: {self.where()}: the file ends inside its text "
                                  f"argument (truncated); re-download or regenerate it.")
        return data[:-1]

    # -- the loop ------------------------------------------------------------------------------
    def load(self) -> Any:
        read, dispatch, budget = self.file.read, self.opcodes, self.budget
        try:
            while True:
                self.at = budget.read
                key = read(1)
                if not key:
                    raise PickleReadError(f"{self.source}: the file ends at byte "
                                          f"{self.start + self.at} before the pickle's STOP (truncated); "
                                          f"re-download or regenerate it.")
                budget.read += 1
                self.op = key[0]
                run = dispatch.get(self.op)
                if run is None:
                    raise UnsafePickleError(
                        f"{self.source}: {self.where()}: feature pickles never use this opcode "
                        f"(they hold dicts, lists, tuples, str, numbers and numpy arrays); refusing "
                        f"it. " + TRUST_HINT)
                run(self)
        except Stop:
            value = self.pop()
        except g.Refusal as exc:
            kind = PickleSizeError if exc.size else UnsafePickleError
            raise kind(f"{self.source}: {self.where()} {exc}. The file is corrupt or crafted. "
                       + TRUST_HINT) from None
        except IndexError:
            raise PickleReadError(f"{self.source}: {self.where()} finds too few items on the stack; "
                                  f"the file is corrupt or not a feature pickle.") from None
        try:
            self.budget.expansion(self.stats_of(value, "the pickle's value"), "the pickle's value", "STOP")
        except g.Refusal as exc:
            raise UnsafePickleError(f"{self.source}: STOP {exc}. The file is corrupt or crafted. "
                                    + TRUST_HINT) from None
        return value

    # -- the stack -----------------------------------------------------------------------------
    def push(self, value: Any, cost: int = 0) -> None:
        budget = self.budget  # Budget.charge, inlined: the hot path
        budget.memory += cost + PUSH
        if budget.memory > budget.multiple * budget.read + budget.floor:
            budget.charge(0, self.where)
        self.stack.append(value)

    def push_new(self, value: Any) -> None:
        self.push(value, sys.getsizeof(value))

    def pop(self) -> Any:
        return self.stack.pop()

    def pop_mark(self) -> List[Any]:
        if not self.marks:
            raise PickleReadError(f"{self.source}: {self.where()} finds no MARK; the file is corrupt "
                                  f"or not a feature pickle.")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def mark(self) -> None:
        if len(self.marks) >= 2 * MAX_NESTING:
            raise PickleSizeError(f"{self.source}: {self.where()}: MARKs nest more than "
                                  f"{2 * MAX_NESTING} deep; a feature pickle nests a few. Refusing it.")
        self.budget.charge(COST["mark"], self.where)
        self.marks.append(self.stack)
        self.stack = []

    # -- the grammar ---------------------------------------------------------------------------
    def stats_of(self, value: Any, place: str) -> Stats:
        """``value``'s expansion, or a refusal: only dicts, lists, tuples, str, numbers, None, numpy
        scalars and arrays may sit in a container or be the file's value."""
        t = type(value)
        if t is str:
            return atom_stats(4 * len(value), string=True)
        if t in (int, float, bool) or value is None:
            return atom_stats(8)
        if t is complex:
            return atom_stats(16)
        if t in _CONTAINERS or t is np.ndarray:
            stats = Stats(depth=1) if (t is tuple and not value) else self.stats.get(id(value))
            if stats is None and t is np.ndarray and value.dtype != object:
                return Stats(leaves=value.size, item=value.itemsize, strings=value.dtype.kind in "US",
                             numbers=value.dtype.kind not in "US")
            if stats is not None:
                return stats
        if isinstance(value, np.generic):
            return atom_stats(max(value.itemsize, 8), string=value.dtype.kind in "US")
        if isinstance(value, g.Pending):
            raise g.Refusal(f"uses a numpy {value.kind} before its BUILD (in {place})")
        raise g.Refusal(f"puts {_describe(value)} in {place}; feature pickles hold dicts, lists, "
                        f"tuples, str, numbers, None and numpy arrays there")

    def count(self, stats: Stats, items: Any, place: str) -> None:
        """Add ``items``' expansion to ``stats`` (refusing any outside the grammar); str and
        numbers, the common elements, are counted inline as :meth:`stats_of` counts them."""
        leaves, item, strings, numbers = 0, 0, False, False
        for x in items:
            t = type(x)
            if t is str:
                leaves, item, strings = leaves + 1, max(item, 4 * len(x)), True
            elif t is int or t is float or t is bool or x is None:
                leaves, item, numbers = leaves + 1, max(item, 8), True
            else:
                stats.add(self.stats_of(x, place).as_element(t is dict))
        if leaves:
            stats.add(Stats(leaves=leaves, item=item, strings=strings, numbers=numbers, depth=-1))

    def new_container(self, value: Any, stats: Optional[Stats] = None) -> None:
        self.stats[id(value)] = Stats(depth=1) if stats is None else stats
        self.keep.append(value)
        self.push(value, sys.getsizeof(value) + COST["slot"] + BOOK)

    def grow(self, target: Any, items: List[Any]) -> None:
        """APPEND(S) / SETITEM(S): add to a list or dict we built and is still open."""
        stats = self.stats.get(id(target))
        if type(target) is list and stats is not None:
            self.count(stats, items, "a list")
            self.budget.charge(COST["slot"] * len(items), self.where)
            target.extend(items)
            self.budget.expansion(stats, "a list", self.where)
        elif type(target) is dict and stats is not None:
            if len(items) % 2:
                raise PickleReadError(f"{self.source}: {self.where()} has an odd number of items "
                                      f"for a dict; the file is corrupt.")
            for k, v in zip(items[::2], items[1::2]):
                stats.add_entry(self.stats_of(k, "a dict key"), self.stats_of(v, "a dict"))
                try:
                    target[k] = v
                except TypeError as exc:
                    raise g.Refusal(f"uses {_describe(k)} as a dict key ({exc})") from None
            self.budget.charge(COST["entry"] * (len(items) // 2), self.where)
            self.budget.expansion(stats, "a dict", self.where)
        else:
            raise g.Refusal(f"adds items to {_describe(target)}; feature pickles add items only to "
                            f"the lists and dicts they are building")

    def tuple_of(self, items: List[Any]) -> None:
        """A tuple may hold call arguments (names, bytes); in a container it must be data.  Its
        depth counts either way (a 200,000-deep argument is refused as it is built)."""
        value = tuple(items)
        stats, data = Stats(depth=1), True
        try:
            self.count(stats, items, "a tuple")
        except g.Refusal:
            stats, data = Stats(depth=1), False
            for x in items:
                stats.depth = max(stats.depth, self.arg_depth.get(id(x), 0) + 1,
                                  (self.stats.get(id(x)) or Stats()).depth + 1)
        self.budget.expansion(stats if data else Stats(depth=stats.depth), "a tuple", self.where)
        if value:
            self.stats[id(value)] = stats if data else None
            if not data:
                self.arg_depth[id(value)] = stats.depth
            self.keep.append(value)
        self.push(value, sys.getsizeof(value) + COST["slot"] + BOOK)

    def fetch(self, value: Any) -> None:
        """GET, BINGET, LONG_BINGET, DUP: the same object pushed again."""
        if isinstance(value, g.Pending):
            if value.value is None:
                raise g.Refusal(f"fetches a numpy {value.kind} again before its BUILD")
            value = value.value
        if type(value) in (list, dict):  # a tuple cannot change: its stats count at each use
            raise PickleSizeError(
                f"{self.source}: {self.where()}: a second reference to {_describe(value)}; feature "
                f"pickles reference again only strings, numbers, tuples, dtypes and arrays (a shared "
                f"container is expanded once per reference by whoever stacks it). Refusing it. "
                + TRUST_HINT)
        self.push(value)

    def memo_get(self, index: int) -> None:
        if not 0 <= index < len(self.memo):
            raise PickleReadError(f"{self.source}: {self.where()} fetches memo entry {index}, which "
                                  f"was never stored; the file is corrupt.")
        self.fetch(self.memo[index])

    def memo_put(self, index: int) -> None:
        if index == len(self.memo):
            self.budget.charge(COST["memo"], self.where)
            self.memo.append(self.stack[-1])
        elif 0 <= index < len(self.memo):
            self.memo[index] = self.stack[-1]
        else:
            raise g.Refusal(f"stores memo entry {index} with {len(self.memo)} stored; pickle "
                            f"numbers its memo in order")

    # -- calls and state -----------------------------------------------------------------------
    def reduce(self) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(func, g.Name) or type(args) is not tuple:
            raise g.Refusal(f"calls {_describe(func)}; feature pickles call only numpy's and pickle's "
                            f"own constructors")
        name = func.name
        if name == "_reconstruct":
            self.push(g.reconstruct(*_arity(args, 3, func)))
        elif name == "dtype":
            self.push(g.make_dtype(*_arity(args, 3, func, at_least=1)))
        elif name == "scalar":
            self.push(g.scalar(*_arity(args, 2, func)), COST["array"])
        elif name == "_frombuffer":
            self.push_array(g.frombuffer(*_arity(args, 4, func)), copied=not isinstance(args[0], (bytearray, g.Buffer)))
        elif name in ("bytes", "bytearray"):
            self.push_new(g.byte_string(name, args))
        elif name == "encode":
            self.push_new(g.encode(args))
        elif name == "complex":
            self.push_new(g.complex_number(args))
        else:  # numpy.ndarray itself: it would allocate its shape at once
            raise g.Refusal(f"calls numpy.ndarray{g._short(args)} directly; numpy's own pickles never "
                            f"do (they use _reconstruct or _frombuffer), it would allocate the shape "
                            f"before reading any data")

    def push_array(self, array: np.ndarray, copied: bool) -> None:
        """An array we built: its header, and its data when it is not the bytearray read."""
        self.push(array, COST["array"] + (array.nbytes if copied else 0))
        if array.dtype == object:
            stats = Stats(depth=1)
            self.count(stats, array.ravel(order="K"), "an object array")
            self.budget.expansion(stats, "an object array", self.where)
            self.stats[id(array)] = stats
            self.keep.append(array)
            self.budget.charge(BOOK, self.where)

    def build(self) -> None:
        state = self.pop()
        target = self.stack[-1]
        if not (isinstance(target, g.Pending) and target.value is None):
            raise g.Refusal(f"sets the state of {_describe(target)}; feature pickles set state only "
                            f"on the numpy arrays and dtypes they are building")
        if target.kind == "dtype":
            target.value = g.finish_dtype(target, state)
            self.stack[-1] = target.value
            return
        array = g.build_array(target, state)
        target.value = array
        self.stack.pop()
        self.push_array(array, copied=not isinstance(state[-1], (bytearray, g.Buffer)))

    def find_class(self, module: str, name: str) -> None:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        token = g.resolve(module, name)
        if token is None:
            raise UnsafePickleError(
                f"{self.source}: {self.where()}: refusing to unpickle global '{module}.{name}': it "
                f"is not a numpy array, dtype or builtin constructor, and loading it could run "
                f"arbitrary code. MMSA feature pickles contain only dicts of numpy arrays, lists "
                f"and strings. " + TRUST_HINT)
        self.push(token, 64)


def _arity(args: tuple, n: int, func: g.Name, at_least: Optional[int] = None) -> tuple:
    if not (at_least or n) <= len(args) <= n:
        raise g.Refusal(f"calls {func!r} with {len(args)} argument(s); numpy's pickles pass {n}")
    return args


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple, dict, str, bytes, bytearray)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    if isinstance(obj, g.Name):
        return f"the global {obj!r}"
    if isinstance(obj, np.dtype):
        return f"a numpy dtype ({obj})"
    return f"a {type(obj).__name__}"
