"""Every MMSA name khar-mmsa replaces, recorded so that it can be put back.

:func:`replace` sets one attribute of one MMSA object and records ``(object, attribute, original)``;
:func:`restore_all` puts every original back, last first.  The two registration steps
(:func:`khar_mmsa.registration.additions.add_to_mmsa` and
:func:`khar_mmsa.registration.fixes.fix_mmsa`) replace names only through here.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, List, Tuple

_MISSING = object()


@dataclass
class _Record:
    obj: Any
    attr: str
    original: Any  # the raw value from vars(obj), or _MISSING


_RECORDS: List[_Record] = []
#: Held by registration while it replaces or restores names (one thread at a time).
LOCK = threading.RLock()


class NotRegisteredError(RuntimeError):
    """khar-mmsa's names are not in MMSA (``khar_mmsa.unregister()`` was called)."""


def mmsa_module(name: str) -> Any:
    """An MMSA module by dotted name (``MMSA.models.AMIO`` the module, not the class)."""
    return importlib.import_module(name)


#: Attributes an object holds outside its ``__dict__`` that registration replaces: a function's body.
_TYPE_ATTRIBUTES = ("__code__",)


def replace(obj: Any, attr: str, value: Any) -> None:
    """Set ``obj.attr = value``, recording the original value (or its absence)."""
    original = vars(obj).get(attr, _MISSING) if hasattr(obj, "__dict__") else _MISSING
    if original is _MISSING and attr in _TYPE_ATTRIBUTES:  # kept by the object's type, not its __dict__
        original = getattr(obj, attr)
    _RECORDS.append(_Record(obj, attr, original))
    setattr(obj, attr, value)


def restore_all() -> None:
    """Put back every original :func:`replace` recorded, last first."""
    while _RECORDS:
        rec = _RECORDS.pop()
        if rec.original is _MISSING:
            delattr(rec.obj, rec.attr)
        else:
            setattr(rec.obj, rec.attr, rec.original)


def is_registered() -> bool:
    return bool(_RECORDS)


def registered_names() -> List[Tuple[Any, str]]:
    """The ``(object, attribute)`` pairs currently replaced, in order."""
    return [(r.obj, r.attr) for r in _RECORDS]


def require_registration() -> None:
    """Import MMSA (``import khar_mmsa`` registers as it does) and check that khar-mmsa's names are
    in it; :class:`NotRegisteredError` after ``khar_mmsa.unregister()``."""
    mmsa_module("MMSA")
    if not is_registered():
        raise NotRegisteredError("khar_mmsa is not registered with MMSA (khar_mmsa.unregister() was "
                                 "called): call khar_mmsa.register() first")
