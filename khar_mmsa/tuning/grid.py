"""The tuning grid of ``d_paras``: its axes, size, points, their keys, and which to try next."""
from __future__ import annotations

import json
import math
import random
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from khar_mmsa.tuning.values import json_default

Axes = Sequence[Tuple[str, Optional[str], List[Any]]]

#: The KHaRConfig sections whose fields say what is trained and how: the hyperparameters a
#: candidate read back from a tune table may set for 'khar' (the data's shapes and the runtime
#: section -- devices, checkpoints, guards such as ``max_model_memory_gib`` -- are not among them).
HYPERPARAMETER_SECTIONS = ("model", "adapters", "moe", "fusion", "losses", "optimisation", "pretraining")


def hyperparameters(args: Mapping[str, Any]) -> frozenset:
    """The keys a candidate read back from a tune table may set (:func:`candidate_args`), an
    explicit list made from the call, never from the table: for 'khar' the KHaRConfig fields of
    :data:`HYPERPARAMETER_SECTIONS` that name no file (``pretrained``, ``pretrained_adapters_path``
    are left out); for MMSA's models the parameters of the call's grid (``d_paras``) that name no
    place, path, trust or guard.  ``trust_pickle``, ``custom_feature``, ``featurePath``, folders
    and ``max_model_memory_gib`` are never on it: they come from the call alone."""
    import dataclasses

    from khar_mmsa.config import PATH_FIELDS, RUN_PLACE_KEYS, KHaRConfig, section_fields
    from khar_mmsa.io.state_files import GUARD_FIELDS
    if str(args.get("model_name", "")).lower() == "khar":
        files = {f.name for f in dataclasses.fields(KHaRConfig) if f.metadata.get("identity") in ("path", "text_encoder")}
        return frozenset(section_fields(*HYPERPARAMETER_SECTIONS)) - files - set(GUARD_FIELDS)
    never = RUN_PLACE_KEYS | PATH_FIELDS | set(GUARD_FIELDS) | {"trust_pickle", "model_name", "dataset_name", "d_paras"}
    return frozenset(item for item, _, _ in grid_axes(args)) - never


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
