"""The tune CSV: one row per candidate, and the marker of the best checkpoint so far.

``<res_save_dir>/tune/<dataset>-<model>-by-valid.csv`` (beside MMSA's): the ``d_paras`` values,
``candidate`` (their JSON), ``Valid_<metric>`` columns, ``selected_by``, ``selected`` and
``Test_<metric>`` on the selected row only; a candidate that failed for a reason of its own has an
``error`` cell (:data:`CANDIDATE_FAILURES`).  A damaged file or marker is set aside.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from khar_mmsa.io.files import atomic_open
from khar_mmsa.io.state_files import (MARKER_KEY, PathLike, StateFileError, check_object, kind, parse_json,
                                       read_json)
from khar_mmsa.training.loop import Monitor

#: Failures that belong to a candidate's settings, not to the machine or the data: such a
#: candidate is recorded with its ``error`` and not tried again.  Any other failure (data, disk,
#: memory, a missing package) stops the search and leaves the candidate untried.
CANDIDATE_FAILURES = ("ConfigError", "ConfigTypeError", "FloatingPointError", "NonFiniteLossError",
                      "MissingCheckpointError")


def tune_csv_path(res_dir: Path, dataset_name: str, model_name: str) -> Path:
    return Path(res_dir) / f"{dataset_name}-{model_name}-by-valid.csv"


def is_candidate_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the candidate's own settings (:data:`CANDIDATE_FAILURES`)."""
    return any(cls.__name__ in CANDIDATE_FAILURES for cls in type(exc).__mro__)


def done_candidates(table: Any) -> set:
    """The candidates of the table that need no new try: validated ones and those that failed for
    a reason of their own (an ``error`` cell naming one of :data:`CANDIDATE_FAILURES`); a row
    whose error was the machine's or the data's (written by an older version) is tried again."""
    if table is None:
        return set()
    done = set()
    errors = table["error"] if "error" in table.columns else [None] * len(table)
    for key, error in zip(table["candidate"], errors):
        if not isinstance(error, str) or error.partition(":")[0].strip() in CANDIDATE_FAILURES:
            done.add(key)
    return done


class UntrustedCandidateError(StateFileError):
    """A tune table's candidate sets a key that is not a hyperparameter (:func:`.grid.hyperparameters`):
    refused before any work, the table left as it is (it is not damage to set aside: someone edited it)."""


def check_candidates(table: Any, csv_file: Path, allowed: frozenset) -> None:
    """Every row's ``candidate`` sets only keys on ``allowed`` (the call's hyperparameters), else
    :class:`UntrustedCandidateError` naming the file, the row, the keys and the one command that
    unblocks the search."""
    for i, text in enumerate(table["candidate"]):
        bad = sorted(set(json.loads(str(text))) - allowed)
        if bad:
            named = ", ".join(sorted(allowed)) if len(allowed) <= 12 else \
                f"the {len(allowed)} of khar_mmsa.tuning.hyperparameters"
            raise UntrustedCandidateError(
                csv_file, f"tune table row {i + 1}: its candidate sets {bad}, which a tune table may not set: a "
                          f"candidate read back sets only hyperparameters ({named}); trust_pickle, "
                          f"feature paths, folders and guards such as max_model_memory_gib come from the call "
                          f"(config=..., --set KEY=VALUE). Remove {bad} from that row or move the table away "
                          f"(mv '{csv_file}' '{csv_file}.old') to start the search afresh; nothing was trained")


def read_tune_csv(csv_file: Path, allowed: frozenset) -> Any:
    """The tune CSV as a DataFrame (None when absent or empty; a damaged one is set aside), after
    :func:`check_candidates` with ``allowed``; never read through a link."""
    from khar_mmsa.io.files import check_writable_file
    from khar_mmsa.io.state_files import set_aside
    check_writable_file(csv_file)  # a link (to a CSV of yours) is refused before anything is read
    if not csv_file.is_file() or csv_file.stat().st_size == 0:
        return None
    try:
        table = load_tune_table(csv_file)
    except StateFileError as exc:  # damaged: kept aside, the search starts afresh
        set_aside(csv_file, exc)
        return None
    check_candidates(table, csv_file, allowed)
    retried = set(table["candidate"]) - done_candidates(table)
    return table[~table["candidate"].isin(retried)].reset_index(drop=True) if retried else table


def best_marker(path: Path) -> Dict[str, Any]:
    """Which candidate the best checkpoint holds ({} when unknown; a damaged marker is set aside)."""
    from khar_mmsa.io.state_files import set_aside
    if not path.is_file():
        return {}
    try:
        return load_tune_marker(path)
    except StateFileError as exc:
        set_aside(path, exc)
        return {}


def best_valid(table: Any, key_eval: str) -> Optional[float]:
    col = f"Valid_{key_eval}"
    if table is None or col not in table.columns or table[col].dropna().empty:
        return None
    values = table[col].dropna().astype(float)
    best = Monitor.for_key(key_eval).best_index(values)  # the epochs' rule (ties: the earlier row)
    return None if best is None else float(values.iloc[best])


def append_row(table: Any, row: Mapping[str, Any]) -> Any:
    import pandas as pd
    new = pd.DataFrame([dict(row)])
    if table is None or table.empty:
        return new
    return pd.concat([table, new], ignore_index=True)


def write_tune_csv(table: Any, csv_file: Path, key_eval: str) -> None:
    if "selected_by" not in table.columns:
        table["selected_by"] = f"valid {key_eval}"
    with atomic_open(csv_file, "w") as f:
        table.to_csv(f, index=False)


def atomic_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target)


# ---- reading the table and the marker back ----------------------------------------------------
def load_tune_marker(path: PathLike) -> Dict[str, Any]:
    """The tune search's best-checkpoint marker (``<model>-<dataset>-tune-best.json``,
    tuning/search.py): ``{"candidate": "<the candidate's JSON>"}``, the candidate itself a JSON
    object."""
    what = "tune best-checkpoint marker"
    obj = read_json(path, what)
    check_object(path, obj, what, {"candidate": str}, MARKER_KEY)
    candidate = parse_json(obj["candidate"], path, f"{what}'s candidate")
    if not isinstance(candidate, dict):
        raise StateFileError(path, f"{what}: the candidate is {kind(candidate)}, expected a JSON object")
    return obj


def load_tune_table(path: PathLike) -> Any:
    """The tune CSV (``<res_save_dir>/tune/<dataset>-<model>.csv``) as a pandas DataFrame: it must
    parse, have a ``candidate`` column whose cells are JSON objects, and ``Valid_*`` columns that
    are numbers (or empty).  Never read through a link (:class:`~khar_mmsa.io.files.UnsafePathError`);
    which keys a candidate may set is the tune search's check (:func:`read_tune_table`)."""
    import pandas as pd

    from khar_mmsa.io.appends import open_no_follow
    p = Path(path)
    try:
        fd = open_no_follow(p, os.O_RDONLY, "read")  # a link is refused before anything is read through it
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: tune table not found") from None
    try:
        with os.fdopen(fd, "rb") as f:
            table = pd.read_csv(f)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StateFileError(p, f"tune table is not a readable CSV ({type(exc).__name__}: {first})") from exc
    if "candidate" not in table.columns:
        raise StateFileError(p, f"tune table lacks the 'candidate' column (columns: {list(table.columns)})")
    for i, cell in enumerate(table["candidate"]):
        try:
            ok = isinstance(json.loads(str(cell)), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise StateFileError(p, f"tune table row {i + 1}: candidate {cell!r} is not a JSON object")
    for col in (c for c in table.columns if str(c).startswith("Valid_")):
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise StateFileError(p, f"tune table column {col!r} holds non-numbers")
    return table
