"""Where a run computes: the device it trains on, and a hint when the CPU is oversubscribed.

:func:`choose_device` is MMSA's ``assign_gpu`` with CUDA and the CPU without it; it warns only when
the caller asked for a GPU (``gpu_ids`` given), not for ``MMSA_run``'s default.
:func:`log_thread_hint` says in one line when torch uses more threads than the machine has free
cores: on a busy 2-core machine the default thread count ran a CLI run about 10x slower than
``--threads 1``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from khar_mmsa.registration.replacements import mmsa_module

logger = logging.getLogger(f"MMSA.{__name__}")

#: ``MMSA_run``'s ``gpu_ids`` when the caller gives none.
MMSA_DEFAULT_GPU_IDS = (0,)


def cuda_available() -> bool:
    import torch
    return bool(torch.cuda.is_available())


def choose_device(gpu_ids: Optional[Sequence[int]], cuda: bool) -> Any:
    """MMSA's ``assign_gpu`` with CUDA; the CPU without it.  ``gpu_ids=None`` means the caller gave
    none (``MMSA_run``'s default ``[0]``): the CPU then without a warning; given GPU ids on a
    machine without CUDA: the CPU with one warning."""
    import torch
    if not cuda:
        if gpu_ids:
            logger.warning(f"CUDA is not available: running on the CPU (gpu_ids={list(gpu_ids)} asked "
                           f"for a GPU).")
        return torch.device("cpu")
    ids = list(MMSA_DEFAULT_GPU_IDS if gpu_ids is None else gpu_ids)
    device = mmsa_module("MMSA.utils").assign_gpu(ids)
    torch.cuda.set_device(device)
    return device


def free_cores() -> Optional[float]:
    """Cores this process may use minus the 1-minute load average (None where the system has no
    load average)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores - load


def log_thread_hint(device: Any) -> bool:
    """On the CPU, one line (and True) when torch's thread count exceeds the free cores."""
    import torch
    if getattr(device, "type", str(device)) != "cpu":
        return False
    free, threads = free_cores(), torch.get_num_threads()
    if free is None or threads <= max(1, int(free)):
        return False
    logger.info(f"Hint: torch uses {threads} CPU threads but about {max(free, 0):.1f} core(s) are free "
                f"(load average {os.getloadavg()[0]:.1f}); a busy CPU runs many times slower with more "
                f"threads than free cores: try --threads 1 (command line) or torch.set_num_threads(1).")
    return True
