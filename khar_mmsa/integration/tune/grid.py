"""The tuning grid of ``d_paras``: its axes, size, points, their keys, and which to try next."""
from __future__ import annotations

import json
import math
import random
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from khar_mmsa.integration.tune.values import json_default

Axes = Sequence[Tuple[str, Optional[str], List[Any]]]


def grid_axes(args: Mapping[str, Any]) -> List[Tuple[str, Optional[str], List[Any]]]:
    """The tuning grid of ``args['d_paras']`` as ``(parameter, nested key or None, choices)``.

    A list is a parameter's choices; a dict holds one list of choices per nested key (MMSA:
    "nested params, 2 levels max").  Anything else is fixed.
    """
    axes: List[Tuple[str, Optional[str], List[Any]]] = []
    for item in args.get("d_paras", []):
        value = args[item]
        if isinstance(value, list):
            axes.append((item, None, list(value)))
        elif isinstance(value, dict):
            axes.extend((item, k, list(v) if isinstance(v, list) else [v]) for k, v in value.items())
    return axes


def grid_size(axes: Axes) -> int:
    return math.prod(len(choices) for _, _, choices in axes)


def grid_point(axes: Axes, index: int) -> Dict[str, Any]:
    """The ``index``-th combination of the grid (last axis fastest), as ``{param: value}``."""
    point: Dict[str, Any] = {}
    for item, key, choices in reversed(axes):
        index, i = divmod(index, len(choices))
        if key is None:
            point[item] = choices[i]
        else:
            point.setdefault(item, {})[key] = choices[i]
    return {item: point[item] for item, _, _ in axes if item in point}


def candidate_key(point: Mapping[str, Any]) -> str:
    """A candidate's identity in the tune CSV: its ``d_paras`` values as sorted JSON."""
    return json.dumps(point, sort_keys=True, default=json_default)


def pick_candidates(axes: Axes, done: set, tune_times: int) -> Iterator[Dict[str, Any]]:
    """Every untried point in grid order when ``tune_times`` covers them all; else ``tune_times``
    distinct untried points drawn at random (a new call explores new combinations, as MMSA's)."""
    total = grid_size(axes)
    if total - len(done) <= tune_times:  # every untried combination, in grid order
        for index in range(total):
            point = grid_point(axes, index)
            if candidate_key(point) not in done:
                yield point
        return
    rng = random.Random(time.time())  # like MMSA: a new call explores new combinations
    picked: set = set(done)
    n = 0
    while n < tune_times:
        point = grid_point(axes, rng.randrange(total))
        key = candidate_key(point)
        if key in picked:
            continue
        picked.add(key)
        n += 1
        yield point
