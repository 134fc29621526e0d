"""Registration when MMSA is imported after khar_mmsa, so that ``import khar_mmsa`` stays cheap.

``import khar_mmsa`` must register 'khar' with MMSA, yet ``import khar_mmsa.io.files`` (or the
command line's ``--help``) should not load MMSA, torch and transformers.  So: if MMSA is already
imported, :func:`register_with_mmsa` registers at once; otherwise it puts a finder first on
``sys.meta_path`` that, when the package ``MMSA`` is next imported, lets Python's own finders load
it and registers right after its ``__init__`` has run -- before ``from MMSA import MMSA_run`` binds
the name.  The finder removes itself when MMSA is loaded (not when it is only looked up).
"""
from __future__ import annotations

import importlib.abc
import sys
from typing import Any, Callable, Optional, Sequence


class _RegisterAfterMMSA(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of the package ``MMSA`` to register after it runs."""

    def __init__(self, register: Callable[[], None]) -> None:
        self.register = register

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname != "MMSA":
            return None
        spec = None
        for finder in sys.meta_path:  # Python's own finders, in their order
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        # The finder stays until MMSA is really loaded: a find_spec that loads nothing
        # (importlib.util.find_spec, as the command line's --help does) must not use it up.
        loader, register, hook = spec.loader, self.register, self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                hook.remove()
                loader.exec_module(module)
                register()

        spec.loader = _Loader()
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def register_with_mmsa() -> None:
    """Register now if MMSA is imported, else as soon as it is."""
    from khar_mmsa.integration.registration import register
    if "MMSA" in sys.modules:
        register()
        return
    if not any(isinstance(f, _RegisterAfterMMSA) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterMMSA(register))
