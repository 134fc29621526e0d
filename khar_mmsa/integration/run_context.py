"""Per-call state of one patched ``MMSA_run`` call, kept thread-local.

MMSA passes nothing from ``MMSA_run`` down to ``_run``, ``_set_logger`` or the data loader; the
hooks of :mod:`khar_mmsa.integration` meet through :func:`current_run` instead.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

#: Per-thread: ``.run`` (a :class:`RunContext`), ``.preloaded`` (path -> loaded feature object).
TLS = threading.local()


@dataclass
class RunContext:
    """State of one patched ``MMSA_run`` call (thread-local)."""

    wanted_gpu: bool = False
    warned_cpu: bool = False
    results: List[Dict[str, Any]] = field(default_factory=list)
    handlers: List[logging.Handler] = field(default_factory=list)
    features: Dict[Tuple[str, int, int], Any] = field(default_factory=dict)
    seeds: List[int] = field(default_factory=list)
    run_state: Any = None  # khar_mmsa.integration.checkpoints.RunState, opened at the first seed
    is_tune: bool = False
    verbose_level: Optional[int] = None      # MMSA_run's console level: 0 errors, 1 info, 2 debug
    log_dir: Optional[Path] = None           # where MMSA writes <model>-<dataset>.log
    private_results_dir: Optional[str] = None  # MMSA's own CSV goes here (see .mmsa_run)
    args_logged: bool = False


def current_run() -> Optional[RunContext]:
    """The :class:`RunContext` of the ``MMSA_run`` call running in this thread, or None."""
    return getattr(TLS, "run", None)


def current_run_options() -> Optional[Dict[str, Any]]:
    """``verbose_level`` and ``log_dir`` of the ``MMSA_run`` call running in this thread (MMSA
    keeps both out of the ``args`` a trainer gets), or None outside ``MMSA_run``."""
    ctx = current_run()
    if ctx is None:
        return None
    return {"verbose_level": ctx.verbose_level, "log_dir": ctx.log_dir}
