"""What keeps registration's replacements in MMSA's modules across ``importlib.reload``.

Reloading ``MMSA.data_loader`` or ``MMSA.run`` runs the module's code again in the same module
namespace: ``import pickle`` and ``import torch`` would bind the real modules again, and MMSA's own
loader would plain-unpickle feature files (and ``MMSA.run`` lose its CPU and ``weights_only``
fixes).  That code runs with the namespace's own ``__builtins__``; :func:`builtins_importing` makes
builtins whose ``__import__`` gives back what registration put there, so the reloaded module gets
the same objects.  Registration records the replaced ``__builtins__`` like any other name, and
``khar_mmsa.unregister()`` puts the original back.
"""
from __future__ import annotations

import builtins
from typing import Any, Dict, Mapping


def builtins_importing(replacements: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of the builtins whose ``import <name>`` (absolute, no ``from``) gives
    ``replacements[name]``; every other import is Python's."""
    def __import__(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
                   level: int = 0) -> Any:
        if level == 0 and not fromlist and name in replacements:
            return replacements[name]
        return builtins.__import__(name, globals, locals, fromlist, level)
    table = dict(vars(builtins))
    table["__import__"] = __import__
    return table


#: MMSA modules whose ``import pickle`` / ``import torch`` must give registration's objects again.
RELOADED_MODULES = ("MMSA.data_loader", "MMSA.run")
KEPT_NAMES = ("pickle", "torch")


def keep_over_reloads() -> None:
    """Registration's last step: :data:`RELOADED_MODULES` get builtins that import what
    registration put in them (the feature server, the fixed ``torch``), recorded like any other
    replacement."""
    from khar_mmsa.integration.replacements import mmsa_module, registered_names, replace
    for name in RELOADED_MODULES:
        module = mmsa_module(name)
        ours = {attr: getattr(module, attr) for obj, attr in registered_names()
                if obj is module and attr in KEPT_NAMES}
        replace(module, "__builtins__", builtins_importing(ours))
