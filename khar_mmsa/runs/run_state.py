"""Finished seeds of one run, so that a run killed part-way and started again does not train them again.

:class:`RunState` keeps each finished seed's test results in ``<model_save_path>.seeds.json``,
keyed by the run's identity (model, config, data content, seed list: :func:`run_key`).  A rerun
with the same key uses those results instead of training the seed again and still writes one row
over all seeds; a file with another key is ignored (one log line) and replaced; a damaged file is
set aside as ``<name>.damaged-<k>`` (kept, named in the log) and every seed trains.  Before the
row is appended, the file also records each results table's length (``appending``), so that a
rerun after a kill between the two appends appends the row only to the table that lacks it
(:func:`khar_mmsa.runs.results_files.append_rows`).  The runner removes the file once the
run's row is written.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from khar_mmsa.config import PATH_FIELDS, RUN_PLACE_KEYS

logger = logging.getLogger(f"MMSA.{__name__}")

#: ``args`` keys left out of a run's identity: where things are and how this process runs, and
#: the KHaR fields that name a file's place (the pretrained adapters' file).
VOLATILE_KEYS = RUN_PLACE_KEYS | PATH_FIELDS


def run_key(args: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """A run's identity: model, its settings (without paths; a local text encoder by content), the
    features' SHA-256, the seeds."""
    from khar_mmsa.config import fingerprint
    from khar_mmsa.io.identity import encoder_identity, feature_identity
    settings = {k: v for k, v in args.items() if k not in VOLATILE_KEYS}
    if settings.get("pretrained"):
        settings["pretrained"] = encoder_identity(str(settings["pretrained"]))
    return fingerprint({"settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
                        "data": feature_identity(args), "seeds": [int(s) for s in seeds]})


class RunState:
    """Finished seeds' test results of one run (see the module docstring)."""

    def __init__(self, model_save_path: Any, key: str) -> None:
        path = Path(model_save_path)
        self.path = path.with_name(path.name + ".seeds.json")
        self.key = key
        self.results: Dict[str, Dict[str, float]] = {}
        #: each results table's length before this run's row was first appended ({}: not yet)
        self.appending: Dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        from khar_mmsa.io.state_files import StateFileError, load_seeds_file, set_aside
        try:
            saved = load_seeds_file(self.path)
        except StateFileError as exc:
            set_aside(self.path, exc)
            return
        results = saved["results"]
        if saved["key"] != self.key:
            logger.info(f"Ignoring {self.path}: it belongs to a run with another config, data or seed "
                        f"list; every seed of this run trains.")
            self.path.unlink(missing_ok=True)
            return
        self.results = results
        self.appending = dict(saved.get("appending") or {})
        if results:
            logger.info(f"Resuming the run recorded in {self.path}: seed(s) {', '.join(results)} "
                        f"finished before and are not trained again.")

    def result_for(self, seed: int) -> Optional[Dict[str, float]]:
        return self.results.get(str(seed))

    def record(self, seed: int, result: Mapping[str, Any]) -> None:
        from khar_mmsa.runs.results_files import is_number
        self.results[str(seed)] = {k: float(v) for k, v in result.items() if is_number(v)}
        self._write()

    def record_appending(self, lengths: Mapping[str, int]) -> None:
        """Record the results tables' lengths just before the row is appended to them."""
        self.appending = dict(lengths)
        self._write()

    def _write(self) -> None:
        from khar_mmsa.io.files import atomic_write_text
        from khar_mmsa.io.state_files import WRITTEN_BY
        state: Dict[str, Any] = {"written_by": f"{WRITTEN_BY} seeds file", "key": self.key, "results": self.results}
        if self.appending:
            state["appending"] = self.appending
        atomic_write_text(self.path, json.dumps(state, indent=1))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
