"""The log handlers of one run (``MMSA_run`` / :func:`khar_mmsa.runs.runner.run`).

MMSA's two handlers -- ``<log_dir>/<model>-<dataset>.log`` at DEBUG and the console at
``verbose_level`` -- are added to the ``'MMSA'`` logger for the run and removed after it; they get
the lines of every khar_mmsa module too, each of which logs to a child named after it
(``MMSA.khar_mmsa.training.trainer``), so a user can quiet one part.  Each
takes only the records logged inside its own run (a :class:`contextvars.ContextVar` set by
:func:`run_log`, which every thread has its own copy of), so two runs in two threads each write
a log holding only their own lines.  The logger's level is raised to DEBUG while any run is open
and restored when the last one ends.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

#: The runs the current context is inside (innermost last), set by :func:`run_log`: a run's
#: handlers take only the records logged inside it, so runs in two threads keep two clean logs.
_RUNS: contextvars.ContextVar[Tuple[object, ...]] = contextvars.ContextVar("khar_mmsa_runs", default=())
#: The 'MMSA' logger's level before the first of the runs now open set it to DEBUG, restored when
#: the last one ends (not by whichever run ends first).
_LEVEL = {"open_runs": 0, "before": logging.NOTSET}
_LEVEL_LOCK = threading.Lock()


class _ThisRunOnly(logging.Filter):
    """Passes a record only when it is logged inside the run ``token`` (or a run nested in it)."""

    def __init__(self, token: object) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        return self.token in _RUNS.get()


@contextmanager
def run_log(log_dir: Path, model_name: str, dataset_name: str, verbose_level: Optional[int]) -> Iterator[None]:
    """MMSA's two handlers for one run (``<log_dir>/<model>-<dataset>.log`` at DEBUG, the console at
    ``verbose_level``: 0 errors, 1 info, 2 debug), removed again when the run returns.  Both take
    only this run's records: another run in another thread writes to its own handlers only."""
    mmsa_logger = logging.getLogger("MMSA")
    with _LEVEL_LOCK:
        if _LEVEL["open_runs"] == 0:
            _LEVEL["before"] = mmsa_logger.level
        _LEVEL["open_runs"] += 1
        mmsa_logger.setLevel(logging.DEBUG)
    token = object()
    this_run = _ThisRunOnly(token)
    from khar_mmsa.io.appends import NoFollowFileHandler
    file_handler = NoFollowFileHandler(Path(log_dir) / f"{model_name}-{dataset_name}.log")  # a link: refused
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
    console = logging.StreamHandler()
    console.setLevel({0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}.get(
        verbose_level if verbose_level is not None else 1, logging.INFO))
    # the console keeps MMSA's short 'MMSA - ' prefix; the file names each line's logger (MMSA.khar_mmsa.<module>)
    console.setFormatter(logging.Formatter("MMSA - %(message)s"))
    handlers = (file_handler, console)
    for handler in handlers:
        handler.addFilter(this_run)
        mmsa_logger.addHandler(handler)
    inside = _RUNS.set(_RUNS.get() + (token,))
    try:
        yield
    finally:
        _RUNS.reset(inside)
        for handler in handlers:
            mmsa_logger.removeHandler(handler)
            handler.close()
        with _LEVEL_LOCK:
            _LEVEL["open_runs"] -= 1
            if _LEVEL["open_runs"] == 0:
                mmsa_logger.setLevel(_LEVEL["before"])
