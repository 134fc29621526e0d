"""What a pickle may allocate: the byte budget of :mod:`khar_mmsa.io.pickles`' restricted
unpickler, the sizes it charges (an array's bytes, an object's size as a tree when referenced
again, how deep containers nest) and the errors it raises when a pickle asks for more."""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

__all__ = ["PickleReadError", "PickleSizeError", "MAX_NESTING", "POINTER_BYTES", "SMALL_REFERENCE_BYTES",
           "TRUST_HINT", "Budget", "tree_size", "nesting_depth", "describe", "human"]

#: Containers nested deeper than this are refused.  An MMSA feature file nests 3 deep (file dict,
#: split dict, list of values); 100 leaves room for any sane layout and stays far below Python's
#: recursion limit (1000), which validation, MMSA and pickle itself recurse against.
MAX_NESTING = 100
#: Bytes numpy allocates per element of an object array (a pointer); such an element costs at
#: least one opcode byte of pickle, so an object dtype counts ``itemsize / POINTER_BYTES`` bytes.
POINTER_BYTES = 8
#: A reference to an object of at most this many bytes (a label string drawn from a few, a dict key
#: repeated in every split) counts one byte, the least a reference costs in the file: real feature
#: pickles hold thousands of them.  They can make what a file stands for at most this many times its
#: size, the order of Python's own overhead per object; anything larger counts in full.
SMALL_REFERENCE_BYTES = 64

TRUST_HINT = ("If, and only if, you trust this file, pass config={'trust_pickle': True} to MMSA_run "
               "(or trusted=True to load_pickle) to load it with plain pickle.")


class PickleReadError(ValueError):
    """A pickle file is truncated, corrupt or not a pickle at all."""


class PickleSizeError(PickleReadError):
    """A pickle declares (or references again) more data than the file holds, or nests too deep."""

def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover

_SEQUENCES = (list, tuple, set, frozenset)


def tree_size(obj: Any, limit: float) -> int:
    """``obj``'s size as a tree, in bytes of pickle it stands for: an array's bytes (object arrays:
    their elements'), a string's length, a container one plus its elements' (a dict's keys and
    values), 1 for anything else; an element shared n times counts n times.  Computed once per
    distinct object (a DAG of doublings is cheap) and stopped once above ``limit``."""
    import numpy
    sizes: Dict[int, int] = {}
    stack = [(obj, False)]
    while stack:
        o, expanded = stack.pop()
        key = id(o)
        if key in sizes and not expanded:
            continue
        if isinstance(o, (str, bytes, bytearray)):
            sizes[key] = max(1, len(o))
            continue
        if isinstance(o, numpy.ndarray):
            if o.dtype != object:
                sizes[key] = max(1, o.nbytes)
                continue
            children = list(o.ravel(order="K"))
        elif isinstance(o, dict):
            children = [x for kv in o.items() for x in kv]
        elif isinstance(o, _SEQUENCES):
            children = list(o)
        elif isinstance(o, numpy.generic):
            sizes[key] = max(1, o.nbytes)
            continue
        else:
            sizes[key] = 1
            continue
        if not expanded:
            sizes[key] = 1  # a container met again while its elements are summed: a cycle
            stack.append((o, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes[id(c)] for c in children)
        sizes[key] = total
        if total > limit:
            return total
    return sizes[id(obj)]


def nesting_depth(obj: Any, limit: int) -> int:
    """How deep containers nest in ``obj`` (1 for a flat list, 0 for no container), level by
    level (each distinct container once per level), stopped once above ``limit``."""
    import numpy
    containers = (dict,) + _SEQUENCES

    def is_container(x: Any) -> bool:
        return isinstance(x, containers) or (isinstance(x, numpy.ndarray) and x.dtype == object)

    level = [obj] if is_container(obj) else []
    depth = 0
    while level and depth <= limit:
        depth += 1
        deeper: Dict[int, Any] = {}
        for o in level:
            elements = _elements(o)
            if isinstance(elements, list) and all(type(x) in _LEAVES for x in elements):
                continue  # a list of strings or numbers: nothing deeper (the common case, fast)
            for x in elements:
                if is_container(x):
                    deeper[id(x)] = x
        level = list(deeper.values())
    return depth


#: Element types that are never containers (checked by exact type for speed).
_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})


def _elements(obj: Any) -> Any:
    if isinstance(obj, dict):
        return [x for kv in obj.items() for x in kv]
    if isinstance(obj, _SEQUENCES):
        return obj
    return obj.ravel(order="K")  # an object array


def describe(obj: Any) -> str:
    import numpy
    if isinstance(obj, numpy.ndarray):
        return f"an array of shape {obj.shape} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple, set, frozenset, dict)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    if isinstance(obj, (str, bytes, bytearray)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return f"a {type(obj).__name__}"


class Budget:
    """What the file can back: ``limit`` bytes (from where unpickling started; None when unknown,
    then nothing is size-checked).  ``used`` adds up every array allocated, every byte string
    made by ``bytes(n)``, and every object fetched again."""

    def __init__(self, limit: Optional[int], source: str) -> None:
        self.limit, self.source = limit, source
        self.used = 0

    def array(self, shape: Any, dtype: Any, what: str) -> None:
        import numpy
        try:
            dt = numpy.dtype(dtype)
        except (TypeError, ValueError):
            return  # numpy itself rejects it with its own error, before allocating
        dims = shape if isinstance(shape, (tuple, list)) else (shape,)
        if not all(isinstance(d, (numbers.Integral, numpy.integer)) and not isinstance(d, bool)
                   for d in dims):
            raise PickleReadError(f"{self.source}: {what} gives an array shape {shape!r} that is "
                                  f"not a tuple of integers; the file is corrupt or crafted.")
        dims = tuple(int(d) for d in dims)
        if self.limit is None:
            return
        count = math.prod(max(d, 0) for d in dims)
        need = -(-count * dt.itemsize // POINTER_BYTES) if dt.hasobject else count * dt.itemsize
        if need > self.limit:
            size = (f"{count} object elements, at least {human(need)} of pickle"
                    if dt.hasobject else human(need))
            raise PickleSizeError(
                f"{self.source}: {what} declares an array of shape {dims} and dtype {dt} "
                f"({size}), but the file holds only {human(self.limit)}; refusing to allocate it. "
                f"The file is corrupt or crafted; re-download or regenerate it.")
        self.charge(need, f"{what}, an array of shape {dims}")

    def data(self, nbytes: int, available: int, what: str) -> None:
        """A declared length about to be read or allocated: at most what is left of the file."""
        if nbytes > available:
            raise PickleSizeError(
                f"{self.source}: {what} declares {nbytes} bytes of data ({human(nbytes)}), but "
                f"only {human(available)} of the file are left; refusing to allocate it. The file "
                f"is truncated, corrupt or crafted; re-download or regenerate it.")

    def byte_string(self, args: tuple, name: str, what: str) -> None:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) and self.limit is not None:
            if args[0] > self.limit:
                raise PickleSizeError(
                    f"{self.source}: {what} asks for {name}({args[0]}) ({human(args[0])}), but "
                    f"the file holds only {human(self.limit)}; refusing to allocate it. The file "
                    f"is corrupt or crafted; re-download or regenerate it.")
            self.charge(args[0], f"{what}, {name}({args[0]})")

    def reference(self, obj: Any, what: str) -> None:
        if self.limit is None:
            return
        size = tree_size(obj, self.limit - self.used)
        self.charge(size if size > SMALL_REFERENCE_BYTES else 1,
                    f"{what}: a second reference to {describe(obj)} ({human(size)})")

    def charge(self, need: int, what: str) -> None:
        self.used += need
        if self.limit is not None and self.used > self.limit:
            raise PickleSizeError(
                f"{self.source}: the arrays this pickle declares, each shared reference counted "
                f"again, add up to more than {human(self.used)} (at {what}), but the file holds "
                f"only {human(self.limit)}; refusing to allocate them. A feature pickle holds "
                f"each array once; this one is corrupt or crafted. " + TRUST_HINT)
