"""``MMSA_test`` (in ``MMSA.run`` and ``MMSA``).

``MMSA_test(gpu_id>=0)`` without CUDA falls back to the CPU with a warning (breakage 11).
Not patched yet: ``MMSA_test`` still reads its one-sample feature file with plain ``pickle``.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

from .cpu_fallback import cuda_available
from .registry import mmsa_module, set_entry_point

logger = logging.getLogger("MMSA")


def patch() -> None:
    """Replace ``MMSA_test`` in ``MMSA.run`` and ``MMSA``."""
    set_entry_point("MMSA_test", _wrap_mmsa_test(mmsa_module("MMSA.run").MMSA_test))


def _wrap_mmsa_test(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_test(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["gpu_id"] >= 0 and not cuda_available():
            logger.warning(f"CUDA is not available: MMSA_test runs on the CPU "
                           f"(gpu_id={bound.arguments['gpu_id']}).")
            bound.arguments["gpu_id"] = -1
        return original(*bound.args, **bound.kwargs)
    return MMSA_test
