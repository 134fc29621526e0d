"""The sweep's manifest (``sweep-manifest.jsonl``): one JSON record per line, appended by the driver.

Each record holds a run's identity (:meth:`~khar_mmsa.experiments.sweep.spec.RunSpec.identity`)
and an event: ``start`` when it is dispatched, ``done`` (with its outcome) or ``failed`` (with the
error) when it ends.  The last record of a run id is its state.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from khar_mmsa.experiments.sweep.spec import RunSpec
from khar_mmsa.io.state_files import append_manifest_record

MANIFEST_NAME = "sweep-manifest.jsonl"
EVENTS = ("start", "done", "failed")


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
        from khar_mmsa.io.state_files import load_manifest
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
