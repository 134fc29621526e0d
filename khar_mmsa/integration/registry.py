"""Patch records: every MMSA attribute khar-mmsa replaces, so that all of it can be undone.

:func:`register` applies the patches of each module of :mod:`khar_mmsa.integration` in a fixed order;
each replacement is recorded as ``(object, attribute, original)`` by :func:`set_attr` and
:func:`unregister` puts every original back, newest first.  :func:`register` is idempotent.
"""
from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, List, Tuple

logger = logging.getLogger("MMSA")

_MISSING = object()


@dataclass
class _Record:
    obj: Any
    attr: str
    original: Any  # the raw value from vars(obj), or _MISSING


_RECORDS: List[_Record] = []
REGISTRY_LOCK = threading.RLock()


def set_attr(obj: Any, attr: str, value: Any) -> None:
    """Replace ``obj.attr`` by ``value`` and record the original for :func:`unregister`."""
    original = vars(obj).get(attr, _MISSING)
    _RECORDS.append(_Record(obj, attr, original))
    setattr(obj, attr, value)


def _restore_all() -> None:
    """Undo every record, newest first."""
    while _RECORDS:
        rec = _RECORDS.pop()
        if rec.original is _MISSING:
            delattr(rec.obj, rec.attr)
        else:
            setattr(rec.obj, rec.attr, rec.original)


def register() -> None:
    """Apply every patch (idempotent).  On a failure halfway, what was applied is undone."""
    from khar_mmsa.integration import (checkpoints, configs, cpu_fallback, datasets, loading, log_handlers,
                   lr_scheduler, mmsa_run, mmsa_test, models, temp_files)
    with REGISTRY_LOCK:
        if _RECORDS:
            return
        try:
            models.patch()
            configs.patch()
            datasets.patch()
            cpu_fallback.patch()
            lr_scheduler.patch()
            log_handlers.patch()
            checkpoints.patch()
            mmsa_run.patch()
            mmsa_test.patch()
            loading.patch()
        except BaseException:
            _restore_all()
            raise
        logger.debug(f"khar_mmsa: {len(_RECORDS)} MMSA attributes patched")
        temp_files.sweep()  # private folders of processes killed earlier


def unregister() -> None:
    """Restore every patched MMSA attribute exactly as it was before :func:`register`."""
    from khar_mmsa.integration import configs
    with REGISTRY_LOCK:
        _restore_all()
        configs.remove_tmpdir()


def is_registered() -> bool:
    """True while the patches are applied."""
    return bool(_RECORDS)


def patched_attributes() -> List[Tuple[Any, str]]:
    """The ``(object, attribute)`` pairs currently replaced, in the order they were patched."""
    return [(r.obj, r.attr) for r in _RECORDS]


def set_entry_point(name: str, value: Any) -> None:
    """:func:`set_attr` of a name MMSA exports twice: ``MMSA.run.<name>`` and ``MMSA.<name>``."""
    for module in (mmsa_module("MMSA.run"), mmsa_module("MMSA")):
        set_attr(module, name, value)


def mmsa_module(name: str) -> Any:
    """An MMSA module by dotted name (``MMSA.models.AMIO`` the module, not the class)."""
    return importlib.import_module(name)
