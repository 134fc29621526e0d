"""What a pickle may cost: the byte budget of :mod:`khar_mmsa.io.pickles`' loader.

Two sums are kept, each held to :data:`MEMORY_MULTIPLE` times the bytes *actually read* so far plus
:data:`FLOOR_BYTES` (never the file's stated size: a sparse file of 1 TiB widens nothing):

* **memory**: every object the loader builds is charged, when it is built, at least what CPython
  and numpy allocate for it (:data:`COST`: a list's header and its slots, a dict's entries, a
  string's characters at 4 bytes each, an array's header; an array's data is the bytes read);
* **expansion**: what code that stacks a container (validation's ``np.asarray``, MMSA's
  ``np.array``) would allocate for it: its leaves (numbers, strings, array elements; an array or
  string referenced again counts again) times the widest leaf (8 bytes a number, 4 bytes per
  character of the longest string, 128 bytes when strings and numbers mix: numpy's ``<U32``), plus
  the dicts inside it.  A container can only grow, so the check at each addition is final.

:class:`Stats` holds a container's expansion; :class:`Budget` the sums and the errors.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

__all__ = ["UnsafePickleError", "PickleReadError", "PickleSizeError", "MAX_NESTING", "MEMORY_MULTIPLE", "FLOOR_BYTES",
           "COST", "TRUST_HINT", "Budget", "Stats", "atom_stats", "on_disk", "human"]

#: Containers (and MARKs) nested deeper than this are refused as they are built.  An MMSA feature
#: file nests 3 deep (file dict, split dict, list of values); 100 stays far below Python's recursion
#: limit (1000), which validation, MMSA and ``repr`` recurse against.
MAX_NESTING = 100
#: Memory (and expansion) allowed per byte read.  Real feature pickles need about 1 (their arrays'
#: bytes); lists of numbers up to ~19 and lists of short strings ~18 (benchmarks.loading measures
#: the adversarial shapes with tracemalloc; docs/reliability.md states the result).
MEMORY_MULTIPLE = 32
#: Allowed before any multiple applies: the loader's own working set (one read chunk included), so
#: that small files (a one-sample pickle) are never refused for their headers.
FLOOR_BYTES = 8 * 2 ** 20

#: What the loader charges besides ``sys.getsizeof`` of each object it builds (CPython 3.11+ on 64
#: bits, rounded up): a stack or list slot (a pointer and over-allocation), a dict entry (table,
#: index and growth), a memo slot, a MARK's stack, an array's header, and the loader's own record
#: of a container (its :class:`Stats` and the table entries that find it).
COST = {"push": 8, "slot": 16, "entry": 80, "memo": 16, "mark": 64, "array": 160, "book": 224}

TRUST_HINT = ("If, and only if, you trust this file, pass config={'trust_pickle': True} to MMSA_run "
              "(or trusted=True to load_pickle) to load it with plain pickle.")


class UnsafePickleError(RuntimeError):
    """A pickle asks for a global outside the allow-list (it could run code) or for a value outside
    the grammar of feature pickles, or a checkpoint is not loadable with
    ``torch.load(weights_only=True)``."""


class PickleReadError(ValueError):
    """A pickle file is truncated, corrupt or not a pickle at all."""


class PickleSizeError(PickleReadError):
    """A pickle asks for more memory than the bytes read from it back, or nests too deep."""


def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


@dataclass(slots=True)
class Stats:
    """A value's size when stacked into an array: ``leaves`` x the widest ``item`` (+ ``extra``,
    the dicts inside a list, which are stacked on their own), and how deep containers nest."""

    leaves: int = 0
    item: int = 0
    strings: bool = False
    numbers: bool = False
    extra: int = 0
    depth: int = 0

    def expanded(self) -> int:
        item = max(self.item, 128) if (self.strings and self.numbers) else self.item
        return self.leaves * item + self.extra

    def add(self, other: "Stats") -> None:
        """``other`` became an element of this list, tuple or object array."""
        self.leaves += other.leaves
        self.item = max(self.item, other.item)
        self.strings |= other.strings
        self.numbers |= other.numbers
        self.extra += other.extra
        self.depth = max(self.depth, other.depth + 1)

    def add_entry(self, key: "Stats", value: "Stats") -> None:
        """``key: value`` became an entry of this dict (each value is stacked on its own)."""
        self.extra += key.expanded() + value.expanded() + 8
        self.depth = max(self.depth, key.depth + 1, value.depth + 1)

    def as_element(self, is_dict: bool) -> "Stats":
        """What this value adds to a list holding it (a dict is one pointer there, plus itself)."""
        if is_dict:
            return Stats(leaves=1, item=8, extra=self.expanded(), depth=self.depth)
        return self


def on_disk(file: Any) -> bool:
    """Whether ``file`` is a regular file holding its whole size in disk blocks (not sparse): then
    a declared length it backs may be allocated before it is read."""
    try:
        st = os.fstat(file.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and getattr(st, "st_blocks", 0) * 512 >= st.st_size


def atom_stats(item: int, string: bool = False) -> Stats:
    return Stats(leaves=1, item=item, strings=string, numbers=not string)


Where = Union[str, Callable[[], str]]  # the opcode and offset, computed only for a message


def _at(where: Where) -> str:
    return where() if callable(where) else where


class Budget:
    """Bytes read so far, and the memory and expansion charged against them."""

    def __init__(self, source: str, multiple: int = MEMORY_MULTIPLE, floor: int = FLOOR_BYTES) -> None:
        self.source, self.multiple, self.floor = source, multiple, floor
        self.read = 0
        self.memory = 0

    def limit(self) -> int:
        return self.multiple * self.read + self.floor

    def _refuse(self, what: str, amount: int, where: Where) -> None:
        raise PickleSizeError(
            f"{self.source}: {_at(where)}: {what} {human(amount)}, more than {self.multiple}x the "
            f"{human(self.read)} read so far (+ {human(self.floor)}); refusing to allocate it. A "
            f"feature pickle's arrays are backed by its own bytes; this file is corrupt or crafted. "
            + TRUST_HINT)

    def charge(self, nbytes: int, where: Where, what: str = "the objects built so far take") -> None:
        self.memory += nbytes
        if self.memory > self.limit():
            self._refuse(what, self.memory, where)

    def expansion(self, stats: Stats, kind: str, where: Where) -> None:
        size = stats.expanded()
        if size > self.limit():
            self._refuse(f"{kind} that stacks (np.asarray) to", size, where)
        if stats.depth > MAX_NESTING:
            raise PickleSizeError(
                f"{self.source}: {_at(where)}: containers nest more than {MAX_NESTING} deep "
                f"(MAX_NESTING); a feature pickle nests 3 (file, split, list of values). Refusing "
                f"it: code walking it would exhaust Python's recursion limit. The file is corrupt "
                f"or crafted.")

    def data(self, nbytes: int, available: Optional[int], where: Where) -> None:
        """A declared length about to be read: refuse more than the stream has left (when known)."""
        if available is not None and nbytes > available:
            raise PickleSizeError(
                f"{self.source}: {_at(where)} declares {nbytes} bytes of data ({human(nbytes)}), but "
                f"only {human(available)} of the file are left; refusing to allocate it. The file "
                f"is truncated, corrupt or crafted; re-download or regenerate it.")
