"""tqdm progress bars for KHaR's long loops, following MMSA's conventions.

MMSA's own trainers show a tqdm bar for every epoch, to the terminal or to a pipe alike.  KHaR does
the same for adapter pretraining (each modality, each epoch), each training epoch and each
evaluation pass, with two switches an MMSA user already has:

* ``MMSA_run(..., verbose_level=0)`` (errors only on the console) hides them;
* the environment variable ``TQDM_DISABLE=1`` (tqdm's own switch) hides them, read at each call
  (tqdm itself reads it only once, when it is imported, and only for bars without ``disable=``).
"""
from __future__ import annotations

from typing import Iterable, Optional

from tqdm import tqdm

from khar_mmsa.config.booleans import env_flag


def tqdm_disabled_by_env() -> bool:
    """True when ``TQDM_DISABLE`` is set to anything but an empty or false word
    (:data:`khar_mmsa.config.booleans.FALSE_WORDS`)."""
    return env_flag("TQDM_DISABLE", unknown=True)


def progress_enabled(verbose_level: Optional[int] = None) -> bool:
    """Whether to show bars: not with ``verbose_level`` 0 (MMSA_run's errors-only console) nor with
    ``TQDM_DISABLE`` set.  ``None`` = not run through ``MMSA_run`` (bars on unless the variable)."""
    if tqdm_disabled_by_env():
        return False
    return verbose_level is None or int(verbose_level) >= 1


def progress(iterable: Iterable, desc: str, enabled: bool, total: Optional[int] = None) -> Iterable:
    """``iterable`` wrapped in a bar that disappears when done (the log keeps the epoch's line)."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)
