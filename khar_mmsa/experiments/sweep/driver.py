"""The sweep driver: :func:`run_sweep` runs the specs the manifest does not record as done, under the
folder's lock, and returns every finished run's outcome."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from khar_mmsa.experiments.sweep import executors
from khar_mmsa.experiments.sweep.driver_lock import SweepLock
from khar_mmsa.experiments.sweep.manifest import MANIFEST_NAME, Manifest
from khar_mmsa.experiments.sweep.options import ExecutorOptions
from khar_mmsa.experiments.sweep.processes import RayProcessRecord
from khar_mmsa.experiments.sweep.progress import SweepProgress
from khar_mmsa.experiments.sweep.spec import RunSpec
from khar_mmsa.io.names import check_run_names
from khar_mmsa.mmsa_conventions import check_seed

logger = logging.getLogger(f"MMSA.{__name__}")

#: The sweep's name when the caller gives none; it starts the progress line and every message.
DEFAULT_NAME = "sweep"


@dataclass
class SweepOutcome:
    """Per run id: the finished runs' outcomes (``result``, ``wall_s``, ``host``) and the errors."""

    results: Dict[str, Dict[str, Any]]
    errors: Dict[str, str]
    skipped: List[str]
    manifest: Path

    def result(self, spec: RunSpec) -> Dict[str, Any]:
        return self.results[spec.run_id]["result"]


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; ``outcome`` holds what finished.  Re-running retries them."""

    def __init__(self, message: str, outcome: SweepOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def run_sweep(specs: Sequence[RunSpec], options: Optional[ExecutorOptions] = None,
              manifest_path: Optional[os.PathLike] = None, name: str = DEFAULT_NAME,
              stream: Optional[TextIO] = None) -> SweepOutcome:
    """Run every spec that the manifest does not record as done; return all finished results.

    ``name`` starts the progress line and every message as it is given (``"sweep mosi"``).
    ``manifest_path`` defaults to ``<first spec's out_dir>/../sweep-manifest.jsonl``.  The
    manifest's folder is locked for the whole sweep (:class:`SweepLocked` when another driver
    holds it), and Ray processes a killed earlier driver left there are stopped first.  Raises
    :class:`SweepFailed` after the other runs finished when any run failed; its ``outcome`` holds
    every finished run.
    """
    options = options or ExecutorOptions()
    specs = list(specs)
    for spec in specs:  # names become file names: refused before the manifest or any folder is written
        check_run_names(spec.model, spec.dataset)
        check_seed(spec.seed, f"{spec.model}/{spec.dataset}/{spec.variant}: seed")
    ids = [s.run_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        same = [s.title for s in specs if s.run_id in dupes]
        raise ValueError(f"{name}: runs with the same identity: {same}")
    if manifest_path is None:
        if not specs:
            raise ValueError("run_sweep: no specs and no manifest_path")
        manifest_path = Path(specs[0].out_dir).parent / MANIFEST_NAME
    folder = Path(manifest_path).parent
    with SweepLock(folder):
        ray_record = RayProcessRecord(folder)
        ray_record.stop_leftovers()
        return _run_sweep_locked(specs, options, Path(manifest_path), name, stream, ray_record)


def _run_sweep_locked(specs: List[RunSpec], options: ExecutorOptions, manifest_path: Path, name: str,
                      stream: Optional[TextIO], ray_record: RayProcessRecord) -> SweepOutcome:
    if options.fresh and Path(manifest_path).is_file():
        aside = Path(f"{manifest_path}.{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(manifest_path, aside)
        logger.info(f"{name}: --fresh, earlier manifest kept as {aside}")
    manifest = Manifest(manifest_path)
    skipped = [s.run_id for s in specs if manifest.state(s.run_id) == "done"]
    pending = [s for s in specs if manifest.state(s.run_id) != "done"]
    retried = [s.title for s in pending if manifest.state(s.run_id) is not None]
    logger.info(f"{name}: {len(specs)} runs, {len(skipped)} already done and reused (manifest "
                f"{manifest.path}; --fresh runs them again)" + (f", running again: {retried}" if retried else ""))
    progress = SweepProgress(name, len(specs), done=len(skipped), stream=stream)
    results = {i: manifest.last[i]["outcome"] for i in skipped}
    errors: Dict[str, str] = {}

    def started(spec: RunSpec) -> None:
        manifest.record("start", spec, executor=options.executor)
        progress.running += 1
        progress.show()

    def finished(spec: RunSpec, outcome: Optional[Dict[str, Any]], error: Optional[str]) -> None:
        progress.running -= 1
        if error is None:
            manifest.record("done", spec, outcome=outcome)
            results[spec.run_id] = outcome
            progress.done += 1
        else:
            manifest.record("failed", spec, error=error)
            errors[spec.run_id] = error
            progress.failed += 1
            logger.error(f"{name}: {spec.title} failed: {error.strip().splitlines()[-1]}")
        progress.show()

    progress.show()
    if pending:
        if options.executor == "local":
            executors.run_local(pending, started, finished)
        else:
            executors.run_ray(pending, options, started, finished, progress, ray_record)
    progress.close()
    outcome = SweepOutcome(results, errors, skipped, manifest.path)
    if errors:
        titles = [s.title for s in specs if s.run_id in errors]
        raise SweepFailed(f"{name}: {len(errors)} of {len(specs)} runs failed ({titles}); their errors are "
                          f"in {manifest.path}; run the same sweep again to retry them (finished runs are kept)",
                          outcome)
    return outcome
