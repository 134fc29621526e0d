"""Log lines a terminal can show: plain numbers, ``key value`` fields wrapped at :data:`LINE_WIDTH`."""
from __future__ import annotations

import logging
import numbers
from typing import Any, Iterable, List, Mapping, Optional, Tuple

#: Longest message (after the logger's own ``MMSA - `` prefix) KHaR writes on one line.
LINE_WIDTH = 120


def plain_value(value: Any) -> Any:
    """numpy scalars and 0-d tensors -> Python numbers (so reprs read ``0.4062``, not
    ``np.float64(0.4062)``); containers are converted recursively, anything else is returned as is."""
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_value(v) for v in value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def format_value(value: Any, digits: Optional[int] = 4) -> str:
    """``digits`` decimals for floats (None: Python's shortest repr, e.g. ``3e-05``), ``str`` for
    everything else (after :func:`plain_value`)."""
    value = plain_value(value)
    if digits is not None and isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f"{value:.{digits}f}"
    return str(value)


def wrap_fields(prefix: str, fields: Iterable[Tuple[str, Any]], width: int = LINE_WIDTH,
                sep: str = " ", digits: Optional[int] = 4) -> List[str]:
    """``prefix k1 v1 k2 v2 ...`` cut into lines of at most ``width`` characters where possible
    (a single field longer than that gets a line of its own); every line starts with ``prefix``."""
    lines: List[str] = []
    current = prefix
    for key, value in fields:
        item = f"{key}{sep}{format_value(value, digits)}"
        if current != prefix and len(current) + 1 + len(item) > width:
            lines.append(current)
            current = prefix
        current = f"{current} {item}"
    lines.append(current)
    return lines


def log_fields(logger: logging.Logger, prefix: str, fields: Mapping[str, Any], width: int = LINE_WIDTH,
               sep: str = " ", level: int = logging.INFO) -> None:
    """Log ``fields`` as :func:`wrap_fields` lines, one log record per line."""
    for line in wrap_fields(prefix, fields.items(), width, sep):
        logger.log(level, line)
