"""Values of a tuning grid as JSON, CSV cells and plain numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping

from khar_mmsa.runs.results_files import is_number


def json_default(value: Any) -> Any:
    """numpy scalars as Python numbers, paths as strings (``json.dumps(default=...)``)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {value!r}")


def json_value(value: Any) -> Any:
    """``value`` as JSON would read it back."""
    return json.loads(json.dumps(value, default=json_default))


def jsonable(value: Any) -> bool:
    try:
        json.dumps(value, default=json_default)
    except (TypeError, ValueError):
        return False
    return True


def cell(value: Any) -> Any:
    """A ``d_paras`` value for a CSV cell (lists and dicts as JSON, as MMSA's pandas would repr them)."""
    return json.dumps(value, default=json_default) if isinstance(value, (list, dict)) else json_value(value)


def plain(results: Mapping[str, Any]) -> Dict[str, Any]:
    """Metric dicts with Python floats (MMSA's metrics are numpy scalars)."""
    return {k: float(v) if is_number(v) else v for k, v in results.items()}
