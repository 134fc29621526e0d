"""The globals a feature pickle may name: what the restricted unpickler of
:mod:`khar_mmsa.io.pickles` resolves; everything else is refused (it could run code)."""
from __future__ import annotations

import importlib
from typing import Any, Optional

__all__ = ["ALLOWED_GLOBALS", "LATIN1", "allowed_global"]

# (module, name) pairs after Python-2 name mapping.  ``numpy.core`` (numpy 1) and ``numpy._core``
# (numpy 2) both appear in pickles in the wild; each is resolved to whichever the installed numpy
# provides, so a numpy-1 pickle loads under numpy 2 and vice versa.
_NUMPY_CORE_GLOBALS = frozenset({
    ("multiarray", "_reconstruct"),   # ndarray.__reduce__
    ("multiarray", "scalar"),         # numpy scalar (np.float32(1.0), np.str_('x'))
    ("numeric", "_frombuffer"),       # ndarray.__reduce_ex__ with pickle protocol 5
})
_BUILTIN_GLOBALS = frozenset({
    # dict, list, tuple, str, int, float, bool, None and bytes have opcodes of their own; these
    # are the containers/numbers that need a global.  bytes/bytearray appear for empty or
    # protocol <= 2 byte strings.
    "set", "frozenset", "complex", "bytes", "bytearray",
})
ALLOWED_GLOBALS: frozenset = frozenset(
    {(f"numpy.core.{m}", n) for m, n in _NUMPY_CORE_GLOBALS}
    | {(f"numpy._core.{m}", n) for m, n in _NUMPY_CORE_GLOBALS}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.dtypes", "*DType")}
    | {("builtins", n) for n in _BUILTIN_GLOBALS}
    | {("collections", "OrderedDict"),
       # protocol <= 2 pickles store bytes as _codecs.encode(latin-1 text, 'latin1'); numpy
       # arrays pickled with protocol 2 need it for their raw buffer.
       ("_codecs", "encode")}
)
#: The one codec ``_codecs.encode`` is allowed (what pickle itself writes); others grow their input.
LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _resolve_numpy_core(submodule: str, name: str) -> Any:
    """Fetch ``name`` from ``numpy._core.<submodule>`` or ``numpy.core.<submodule>``, whichever
    the installed numpy has (importing ``numpy.core`` under numpy 2 would warn)."""
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


def allowed_global(module: str, name: str) -> Optional[Any]:
    """Return the object for an allowed ``module.name``; None if it is not allowed."""
    for base in ("numpy.core.", "numpy._core."):
        if module.startswith(base):
            sub = module[len(base):]
            if (sub, name) in _NUMPY_CORE_GLOBALS:
                return _resolve_numpy_core(sub, name)
            return None
    if module == "numpy" and name in ("ndarray", "dtype"):
        import numpy
        return getattr(numpy, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        import numpy
        cls = getattr(importlib.import_module("numpy.dtypes"), name, None)
        if isinstance(cls, type) and issubclass(cls, numpy.dtype):
            return cls
        return None
    if module == "builtins" and name in _BUILTIN_GLOBALS:
        return getattr(__import__("builtins"), name)
    if (module, name) == ("collections", "OrderedDict"):
        import collections
        return collections.OrderedDict
    if (module, name) == ("_codecs", "encode"):
        import _codecs
        return _codecs.encode
    return None
