"""The sweep's manifest (``sweep-manifest.jsonl``): one JSON record per line, appended by the driver.

Each record holds a run's identity (:meth:`~khar_mmsa.experiments.sweep.spec.RunSpec.identity`)
and an event: ``start`` when it is dispatched, ``done`` (with its outcome) or ``failed`` (with the
error) when it ends.  The last record of a run id is its state.
"""
from __future__ import annotations

import json
import logging
import numbers
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from khar_mmsa.experiments.sweep.spec import RunSpec
from khar_mmsa.io.state_files import PathLike, StateFileError, check_object, kind, parse_json

MANIFEST_NAME = "sweep-manifest.jsonl"
EVENTS = ("start", "done", "failed")

logger = logging.getLogger(f"MMSA.{__name__}")


# ---- the records, one a line ------------------------------------------------------------------
def parse_manifest_line(line: str, path: PathLike, lineno: int) -> Dict[str, Any]:
    """One record of ``sweep-manifest.jsonl`` (this module): a JSON object with
    ``event`` (start, done or failed) and ``run_id`` strings; a ``done`` record carries
    ``outcome`` = ``{"result": {...}, ...}``, a ``failed`` one an ``error`` string.  Errors name
    ``path:lineno``."""
    where = f"{Path(path)}:{lineno}"
    what = "manifest record"
    rec = parse_json(line, where, what)
    check_object(where, rec, what, {"event": str, "run_id": str},
                  {"identity": object, "title": str, "time": str, "executor": str,
                   "outcome": dict, "error": str})
    if rec["event"] not in EVENTS:
        raise StateFileError(where, f"{what}: event {rec['event']!r}, expected one of {list(EVENTS)}")
    if rec["event"] == "done":
        if "outcome" not in rec:
            raise StateFileError(where, f"{what}: a 'done' record lacks 'outcome'")
        result = rec["outcome"].get("result")
        if not isinstance(result, dict):
            raise StateFileError(where, f"{what}: the 'done' record's outcome lacks its 'result' object")
        _check_done_result(where, result, what)
    return rec


#: What a 'done' record's ``result`` holds where the sweep's tables read it (the rest is the
#: runner's own): ``metrics`` an object of numbers, ``row`` an object (execute.mmsa_run_one).
_DONE_RESULT_OBJECTS = ("metrics", "row")


def _check_done_result(where: str, result: Mapping[str, Any], what: str) -> None:
    """A 'done' record's ``result``: each of :data:`_DONE_RESULT_OBJECTS` it has is a JSON object,
    and ``metrics`` maps names to numbers (a list or a string there is damage: the run runs again)."""
    for key in _DONE_RESULT_OBJECTS:
        if key in result and not isinstance(result[key], dict):
            raise StateFileError(where, f"{what}: the 'done' record's result[{key!r}] is {kind(result[key])}, "
                                        f"expected a JSON object")
    for name, value in result.get("metrics", {}).items():
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise StateFileError(where, f"{what}: the 'done' record's metric {name!r} is {kind(value)}, "
                                        f"expected a number")


def manifest_line(rec: Mapping[str, Any]) -> bytes:
    """One manifest record as its line: sorted-key JSON and a newline (so every record of ours
    starts with ``{"error": `` or ``{"event": ``, what :func:`append_manifest_record` knows a cut
    record of ours by)."""
    return (json.dumps(dict(rec), sort_keys=True, default=str) + "\n").encode("utf-8")


#: How a record of ours starts (sorted keys: 'error' or 'event' first; every record has 'event').
_OUR_RECORD_STARTS = (b'{"error": ', b'{"event": ')


def append_manifest_record(path: PathLike, rec: Mapping[str, Any]) -> None:
    """Append ``rec`` to the manifest as one whole line of its own (the driver holds the sweep lock).

    A last line of ours that a killed driver cut is removed first, with a warning quoting it
    (:func:`khar_mmsa.io.appends.repair_torn_last_line`); a partial last line someone else wrote
    is left as it is and our record starts on a new line, so it cannot swallow the record (the
    reader ignores that foreign line with a warning).  The file is never written through a link."""
    from khar_mmsa.io.appends import append_whole, repair_torn_last_line
    p = Path(path)
    if p.exists():
        repair_torn_last_line(p, lambda head, tail: tail.startswith(_OUR_RECORD_STARTS), "manifest record")
    append_whole(p, manifest_line(rec), own_line=True)


def load_manifest(path: PathLike) -> Tuple[List[Dict[str, Any]], List[StateFileError]]:
    """Every usable record of a sweep manifest, in order, and one :class:`StateFileError` per line
    that is not (a line cut by a killed driver, a list, a record without ``run_id``...), each also
    logged as a warning.  A run whose only records are damaged counts as never run, so it runs
    again.  A missing file: ``([], [])``."""
    p = Path(path)
    if not p.is_file():
        return [], []
    records, damaged = [], []
    with open(p, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                records.append(parse_manifest_line(raw.decode("utf-8", "replace"), p, n))
            except StateFileError as exc:
                logger.warning(f"{exc} Ignored: the run it records runs again.")
                damaged.append(exc)
    return records, damaged


class Manifest:
    """The sweep's record: one JSON object per line, the last record of a run id is its state.

    A line that is not a well-formed record (cut by a killed driver, edited by hand, a list, a
    record without ``run_id`` / ``event`` / ``outcome.result``) is left in the file, ignored with
    a warning naming the file, the line and what is wrong, and counted in ``ignored``; the run it
    recorded is then not done, so the sweep makes it again.
    """

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)
        self.last: Dict[str, Dict[str, Any]] = {}
        self.records: List[Dict[str, Any]] = []
        self.ignored: List[int] = []
        self.records, damaged = load_manifest(self.path)  # damaged lines: logged, their runs made again
        self.ignored = [int(str(exc.path).rsplit(":", 1)[1]) for exc in damaged]
        for rec in self.records:
            self.last[rec["run_id"]] = rec

    def state(self, run_id: str) -> Optional[str]:
        rec = self.last.get(run_id)
        return None if rec is None else rec["event"]

    def result(self, run_id: str) -> Optional[Dict[str, Any]]:
        rec = self.last.get(run_id)
        return rec.get("outcome") if rec is not None and rec["event"] == "done" else None

    def record(self, event: str, spec: RunSpec, **fields: Any) -> None:
        rec = {"event": event, "run_id": spec.run_id, "identity": spec.identity(), "title": spec.title,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_manifest_record(self.path, rec)  # a whole line of its own, never through a link
        self.records.append(rec)
        self.last[spec.run_id] = rec

    def starts(self, run_id: str) -> int:
        """How many times a run was dispatched (over every session of this sweep)."""
        return sum(1 for r in self.records if r["run_id"] == run_id and r["event"] == "start")
