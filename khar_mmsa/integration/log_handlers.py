"""MMSA's ``_set_logger`` handlers are removed when their ``MMSA_run`` call returns (breakage 9).

Each ``MMSA_run`` call adds a file and a console handler to the ``'MMSA'`` logger and never
removes them, so repeated runs repeat every log line.  The handlers one call adds are removed
(and closed) when that call returns; ``_set_logger`` called outside ``MMSA_run`` keeps only its
newest pair.  The logger it returns, which ``MMSA_run`` logs through, is a
:class:`~khar_mmsa.integration.run_log.RunLogger` (the arguments as used, plain numbers, one results path).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, List

from khar_mmsa.integration.registry import mmsa_module, set_attr
from khar_mmsa.integration.run_context import current_run
from khar_mmsa.integration.run_log import RunLogger

_ORPHAN_HANDLERS: List[logging.Handler] = []


def patch() -> None:
    """Wrap ``MMSA.run._set_logger``."""
    run = mmsa_module("MMSA.run")
    set_attr(run, "_set_logger", _wrap_set_logger(run._set_logger))


def _wrap_set_logger(original: Callable) -> Callable:
    @functools.wraps(original)
    def _set_logger(*args: Any, **kwargs: Any) -> RunLogger:
        mmsa_logger = logging.getLogger("MMSA")
        before = list(mmsa_logger.handlers)
        result = original(*args, **kwargs)
        added = [h for h in mmsa_logger.handlers if h not in before]
        ctx = current_run()
        if ctx is not None:
            ctx.handlers.extend(added)  # removed when that MMSA_run call returns
        else:  # called outside a patched MMSA_run: keep only the newest pair
            remove_handlers(_ORPHAN_HANDLERS)
            _ORPHAN_HANDLERS[:] = added
        return RunLogger(result)
    return _set_logger


def remove_handlers(handlers: List[logging.Handler]) -> None:
    """Detach and close ``handlers`` from the ``'MMSA'`` logger; empty the list."""
    mmsa_logger = logging.getLogger("MMSA")
    for handler in handlers:
        mmsa_logger.removeHandler(handler)
        handler.close()
    handlers.clear()
