"""The sweep's one live progress line: ``<name>: 3/8 done, 2 running, 0 failed, 3 left, ETA 4.1 min``.

Rewritten in place on a terminal, logged on the ``'MMSA'`` logger otherwise.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Optional, TextIO

logger = logging.getLogger(f"MMSA.{__name__}")

#: Below this many seconds the ETA is shown in seconds, from it on in minutes.
ETA_MINUTES_FROM_S = 120
#: Width the live line is padded to, so a shorter line overwrites a longer one.
LINE_WIDTH = 100
#: Floor of the elapsed time in the rate (no division by zero right after the start).
MIN_ELAPSED_S = 1e-9


class SweepProgress:
    """One line: ``<name>: done/total done, running, failed, left, ETA``."""

    def __init__(self, name: str, total: int, done: int = 0, stream: Optional[TextIO] = None) -> None:
        self.name, self.total = name, total
        self.done, self.running, self.failed = done, 0, 0
        self.already_done = done
        self.start = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    @property
    def left(self) -> int:
        return self.total - self.done - self.running - self.failed

    def eta_seconds(self) -> Optional[float]:
        """Runs still to finish over this session's finishing rate; None before the first finishes."""
        finished = self.done - self.already_done + self.failed
        if finished <= 0:
            return None
        rate = finished / max(time.monotonic() - self.start, MIN_ELAPSED_S)
        return (self.left + self.running) / rate

    def line(self) -> str:
        eta = self.eta_seconds()
        eta_text = "?" if eta is None else (f"{eta:.0f} s" if eta < ETA_MINUTES_FROM_S else f"{eta / 60:.1f} min")
        return (f"{self.name}: {self.done}/{self.total} done, {self.running} running, "
                f"{self.failed} failed, {self.left} left, ETA {eta_text}")

    def show(self) -> None:
        text = self.line()
        if text == self._last:
            return
        self._last = text
        if self.live:
            self.stream.write("\r" + text.ljust(LINE_WIDTH))
            self.stream.flush()
        else:
            logger.info(text)

    def close(self) -> None:
        self._last = ""
        self.show()
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
