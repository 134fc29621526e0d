"""Finished seeds of one run, so that a run killed part-way and started again does not train them again.

:class:`RunState` keeps each finished seed's test results in ``<model_save_path>.seeds.json``,
keyed by the run's identity (model, config, data content, seed list: :func:`run_key`).  A rerun
with the same key uses those results instead of training the seed again and still writes one row
over all seeds; a file with another key is ignored (one log line) and replaced; a damaged file is
set aside as ``<name>.damaged-<k>`` (kept, named in the log) and every seed trains.  The runner
removes the file once the run's row is written.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

logger = logging.getLogger("MMSA")

#: ``args`` keys that say where things are or how this process runs, not what is trained.
VOLATILE_KEYS = ("model_save_path", "device", "cur_seed", "seed", "custom_feature", "featurePath",
                 "feature_T", "feature_A", "feature_V", "log_dir", "verbose_level", "callbacks",
                 "train_mode", "pretrained_adapters_path")


def run_key(args: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """A run's identity: model, its settings (without paths), the features' SHA-256, the seeds."""
    from khar_mmsa.config import fingerprint
    from khar_mmsa.io.identity import feature_identity
    settings = {k: v for k, v in args.items() if k not in VOLATILE_KEYS}
    return fingerprint({"settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
                        "data": feature_identity(args), "seeds": [int(s) for s in seeds]})


def set_aside(path: Path, reason: str) -> Path:
    """Rename a damaged state file to ``<name>.damaged-<k>`` (the first free k); log it."""
    k = 1
    while True:
        target = path.with_name(f"{path.name}.damaged-{k}")
        if not target.exists():
            break
        k += 1
    path.rename(target)
    logger.warning(f"{path} set aside as {target.name}: {reason}; the work it recorded is done again.")
    return target


class RunState:
    """Finished seeds' test results of one run (see the module docstring)."""

    def __init__(self, model_save_path: Any, key: str) -> None:
        path = Path(model_save_path)
        self.path = path.with_name(path.name + ".seeds.json")
        self.key = key
        self.results: Dict[str, Dict[str, float]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            results = _checked(saved)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            set_aside(self.path, f"it cannot be read as a seeds file ({exc})")
            return
        if saved["key"] != self.key:
            logger.info(f"Ignoring {self.path}: it belongs to a run with another config, data or seed "
                        f"list; every seed of this run trains.")
            self.path.unlink(missing_ok=True)
            return
        self.results = results
        if results:
            logger.info(f"Resuming the run recorded in {self.path}: seed(s) {', '.join(results)} "
                        f"finished before and are not trained again.")

    def result_for(self, seed: int) -> Optional[Dict[str, float]]:
        return self.results.get(str(seed))

    def record(self, seed: int, result: Mapping[str, Any]) -> None:
        from khar_mmsa.integration.results_files import is_number
        from khar_mmsa.io.safe_io import atomic_write_text
        self.results[str(seed)] = {k: float(v) for k, v in result.items() if is_number(v)}
        atomic_write_text(self.path, json.dumps({"key": self.key, "results": self.results}, indent=1))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _checked(saved: Any) -> Dict[str, Dict[str, float]]:
    """The results of a seeds file, or ValueError saying what is wrong with it."""
    if not isinstance(saved, dict) or set(saved) != {"key", "results"}:
        raise ValueError("expected an object with exactly the keys 'key' and 'results'")
    if not isinstance(saved["key"], str) or not isinstance(saved["results"], dict):
        raise ValueError("'key' must be a string and 'results' an object")
    for seed, metrics in saved["results"].items():
        if not seed.lstrip("-").isdigit() or not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"seed {seed!r}: expected an integer seed with an object of metrics")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"seed {seed}, {name}: {value!r} is not a finite number")
    return saved["results"]
