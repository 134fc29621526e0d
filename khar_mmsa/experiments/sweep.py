"""Sweeps of training runs: a plain local loop, or one Ray task per run on a Ray cluster.

A sweep is a list of :class:`RunSpec`, each one ``MMSA_run`` of one model on one dataset with one
seed and one variant's config overrides, into its own output folder.  :func:`run_sweep` runs the
specs that are not finished yet and returns every finished run's result to the caller (the
driver), which alone writes tables.

Resumable
    A manifest (``sweep-manifest.jsonl``, one JSON record per line, appended and fsynced by the
    driver only) records each run's identity -- model, dataset, seed, variant, config hash, runner
    and data file -- with a ``start`` record when it is dispatched and a ``done`` (with its result)
    or ``failed`` (with the error) record when it ends.  Running the same sweep again skips the
    runs whose last record is ``done`` and runs the others again: failed ones, and those that were
    in flight when the driver or a node died.  A run whose config changed has another identity,
    so it runs again.

Executors (:class:`ExecutorOptions`)
    ``local``: one run after the other in this process; Ray is not needed.
    ``ray``: each run is a Ray task with its resource request (``cpus_per_run``,
    ``gpus_per_run`` -- a fraction shares a GPU --, ``memory_per_run_gb``) on the cluster at
    ``address`` (``auto``: the cluster this machine belongs to, started with ``ray start``;
    ``host:port``; none: a local cluster started for the sweep).  At most as many runs are in
    flight as the cluster's CPUs (and GPUs) allow, so "running" in the progress line is true.

Data (``data_transfer``)
    ``path``: workers open the feature pickle at the driver's path -- a filesystem every node
    sees (NFS, a shared disk), or the same path on a single machine.  ``object-store``: the driver
    reads each distinct feature file once, puts its bytes into Ray's object store, and each worker
    writes them to a node-local cache (``$TMPDIR/khar-sweep-data/<sha256>.pkl``) before it trains.

Progress
    One live line per sweep, ``<name>: 3/8 done, 2 running, 0 failed, 3 left, ETA 4.1 min``:
    rewritten in place on a terminal, logged on the ``'MMSA'`` logger otherwise.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

from khar_mmsa.config import fingerprint
from khar_mmsa.io.safe_io import atomic_write_bytes

logger = logging.getLogger("MMSA")

MANIFEST_NAME = "sweep-manifest.jsonl"
DEFAULT_RUNNER = "khar_mmsa.experiments.sweep:mmsa_run_one"
EXECUTORS = ("local", "ray")
DATA_TRANSFERS = ("path", "object-store")
#: Environment variables a Ray worker gets from the driver (offline hub, quiet progress bars, data root).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE", "MMSA_DATASET_ROOT",
                 "KHAR_MOSI_LABELS", "KHAR_BENCH_WORK")


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; ``outcome`` holds what finished.  Re-running retries them."""

    def __init__(self, message: str, outcome: "SweepOutcome") -> None:
        super().__init__(message)
        self.outcome = outcome


# ============================================================================================
# What one run is
# ============================================================================================
@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    ``config`` are ``MMSA_run(config=...)`` overrides (JSON-able values); ``runner`` is the
    ``module:function`` that executes the spec, called as ``runner(spec, feature_path)`` and
    returning a JSON-able dict (default: :func:`mmsa_run_one`); ``threads`` sets torch's CPU
    threads for the run (same threads, same numbers, whatever the executor).
    """

    model: str
    dataset: str
    seed: int
    feature_path: str
    out_dir: str
    variant: str = "default"
    config: Mapping[str, Any] = field(default_factory=dict)
    runner: str = DEFAULT_RUNNER
    threads: Optional[int] = None
    label: str = ""

    def identity(self) -> Dict[str, Any]:
        """What makes two runs the same run: model, dataset, seed, variant, config hash, runner
        and the data file (name and size: a pickle rebuilt byte-identical keeps its identity)."""
        data = Path(self.feature_path)
        return {"model": self.model, "dataset": self.dataset, "seed": int(self.seed),
                "variant": self.variant, "config_hash": fingerprint(dict(self.config)),
                "runner": self.runner,
                "data": {"name": data.name, "size": data.stat().st_size if data.is_file() else None}}

    @property
    def run_id(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        return self.label or f"{self.model}/{self.dataset}/{self.variant}/seed {self.seed}"


@dataclass
class ExecutorOptions:
    """Where and how the runs execute (see the module docstring)."""

    executor: str = "local"
    address: Optional[str] = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    memory_per_run_gb: Optional[float] = None
    data_transfer: str = "path"
    max_in_flight: Optional[int] = None
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r}: choose one of {EXECUTORS}")
        if self.data_transfer not in DATA_TRANSFERS:
            raise ValueError(f"data_transfer={self.data_transfer!r}: choose one of {DATA_TRANSFERS}")
        if self.executor == "local" and self.data_transfer != "path":
            raise ValueError("data_transfer='object-store' needs executor='ray'")
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ValueError(f"cpus_per_run={self.cpus_per_run} must be > 0 and gpus_per_run="
                             f"{self.gpus_per_run} >= 0")


def add_executor_args(parser: Any) -> None:
    """``--executor``, ``--address``, ``--cpus-per-run``, ``--gpus-per-run``, ``--memory-per-run``,
    ``--data-transfer``, ``--max-in-flight`` on an argparse parser."""
    group = parser.add_argument_group("executor (see khar_mmsa.experiments.sweep)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: a plain loop in this process (default); ray: one Ray task per run")
    group.add_argument("--address", default=None,
                       help="Ray cluster: 'auto' (the one started with `ray start` on this machine) or "
                            "host:port; default: a local Ray instance for this sweep")
    group.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run reserves (Ray)")
    group.add_argument("--gpus-per-run", type=float, default=0.0,
                       help="GPUs each run reserves; a fraction (0.5) shares one GPU (Ray)")
    group.add_argument("--memory-per-run", type=float, default=None, metavar="GB",
                       help="memory each run reserves, in GB (Ray's scheduler; not a hard limit)")
    group.add_argument("--data-transfer", choices=DATA_TRANSFERS, default="path",
                       help="path: workers read the feature pickle at its path (shared filesystem); "
                            "object-store: the driver ships its bytes through Ray's object store")
    group.add_argument("--max-in-flight", type=int, default=None,
                       help="runs dispatched at once (Ray; default: what the cluster's CPUs/GPUs fit)")
    group.add_argument("--fresh", action="store_true",
                       help="ignore the runs the sweep manifest records as done (it is kept as "
                            "sweep-manifest.jsonl.<time>) and run everything again")


def executor_options(args: Any) -> ExecutorOptions:
    """:class:`ExecutorOptions` from the arguments :func:`add_executor_args` added."""
    return ExecutorOptions(executor=args.executor, address=args.address, cpus_per_run=args.cpus_per_run,
                           gpus_per_run=args.gpus_per_run, memory_per_run_gb=args.memory_per_run,
                           data_transfer=args.data_transfer, max_in_flight=args.max_in_flight,
                           fresh=bool(getattr(args, "fresh", False)))


# ============================================================================================
# The default runner: one MMSA_run
# ============================================================================================
def mmsa_run_one(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    """``MMSA_run(spec.model, spec.dataset, config=spec.config, seeds=[spec.seed])`` on
    ``feature_path`` into ``spec.out_dir`` (its own checkpoints, logs and results CSV).

    Returns ``{"row": <the results-CSV row>, "metrics": {metric: value}}``, ``metrics`` in the
    natural units ``do_test`` gives (the row's x100 means divided by 100).
    """
    import khar_mmsa  # noqa: F401  - registers 'khar' before MMSA_run is looked up
    mmsa = importlib.import_module("MMSA")
    out = Path(spec.out_dir)
    dirs = {k: out / k.replace("_dir", "") for k in ("model_save_dir", "res_save_dir", "log_dir")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    row = mmsa.MMSA_run(spec.model, spec.dataset, config=dict(spec.config), seeds=[int(spec.seed)],
                        custom_feature=str(feature_path), gpu_ids=[0], num_workers=0, verbose_level=0,
                        **{k: str(v) for k, v in dirs.items()})
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(row).items()}
    metrics = {k: float(v) / 100.0 for k, v in row.items()
               if k not in ("Model", "seeds") and not k.endswith("_std") and isinstance(v, (int, float))}
    return {"row": row, "metrics": metrics}


def _resolve_runner(name: str) -> Callable[[RunSpec, str], Dict[str, Any]]:
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"runner {name!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), attr)


def execute(spec: RunSpec, data: Optional[bytes] = None) -> Dict[str, Any]:
    """Run one spec where this function is called (the driver, or a Ray worker).

    ``data``: the feature pickle's bytes when the driver shipped them through the object store;
    they are cached on this node and the run reads the cached file.
    """
    feature_path = spec.feature_path if data is None else str(_node_local_copy(data))
    if spec.threads:
        import torch
        torch.set_num_threads(int(spec.threads))
    start = time.perf_counter()
    result = _resolve_runner(spec.runner)(spec, feature_path)
    return {"result": result, "wall_s": round(time.perf_counter() - start, 3), "host": socket.gethostname()}


def _node_local_copy(data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.gettempdir()) / "khar-sweep-data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.pkl"
    if not path.is_file() or path.stat().st_size != len(data):
        atomic_write_bytes(path, data)
    return path


# ============================================================================================
# Manifest
# ============================================================================================
class Manifest:
    """The sweep's record: one JSON object per line, the last record of a run id is its state."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)
        self.last: Dict[str, Dict[str, Any]] = {}
        self.records: List[Dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a killed driver
                        logger.warning(f"{self.path}:{n}: unreadable record ignored")
                        continue
                    self.records.append(rec)
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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(rec)
        self.last[spec.run_id] = rec

    def starts(self, run_id: str) -> int:
        """How many times a run was dispatched (over every session of this sweep)."""
        return sum(1 for r in self.records if r["run_id"] == run_id and r["event"] == "start")


# ============================================================================================
# Progress
# ============================================================================================
class SweepProgress:
    """One line: ``<name>: done/total done, running, failed, left, ETA`` (see module docstring)."""

    def __init__(self, name: str, total: int, done: int = 0, stream: Optional[TextIO] = None) -> None:
        self.name, self.total = name, total
        self.done, self.running, self.failed = done, 0, 0
        self.already_done = done
        self.start = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    @property
    def left(self) -> int:
        return self.total - self.done - self.running - self.failed

    def eta_seconds(self) -> Optional[float]:
        """Runs still to finish over this session's finishing rate; None before the first finishes."""
        finished = self.done - self.already_done + self.failed
        if finished <= 0:
            return None
        rate = finished / max(time.monotonic() - self.start, 1e-9)
        return (self.left + self.running) / rate

    def line(self) -> str:
        eta = self.eta_seconds()
        eta_text = "?" if eta is None else (f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.1f} min")
        return (f"{self.name}: {self.done}/{self.total} done, {self.running} running, "
                f"{self.failed} failed, {self.left} left, ETA {eta_text}")

    def show(self) -> None:
        text = self.line()
        if text == self._last:
            return
        self._last = text
        if self.live:
            self.stream.write("\r" + text.ljust(100))
            self.stream.flush()
        else:
            logger.info(text)

    def close(self) -> None:
        self._last = ""
        self.show()
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


# ============================================================================================
# The sweep
# ============================================================================================
@dataclass
class SweepOutcome:
    """Per run id: the finished runs' outcomes (``result``, ``wall_s``, ``host``) and the errors."""

    results: Dict[str, Dict[str, Any]]
    errors: Dict[str, str]
    skipped: List[str]
    manifest: Path

    def result(self, spec: RunSpec) -> Dict[str, Any]:
        return self.results[spec.run_id]["result"]


def run_sweep(specs: Sequence[RunSpec], options: Optional[ExecutorOptions] = None,
              manifest_path: Optional[os.PathLike] = None, name: str = "sweep",
              stream: Optional[TextIO] = None) -> SweepOutcome:
    """Run every spec that the manifest does not record as done; return all finished results.

    ``manifest_path`` defaults to ``<first spec's out_dir>/../sweep-manifest.jsonl``.  Raises
    :class:`SweepFailed` after the other runs finished when any run failed.
    """
    options = options or ExecutorOptions()
    specs = list(specs)
    ids = [s.run_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        same = [s.title for s in specs if s.run_id in dupes]
        raise ValueError(f"sweep {name}: runs with the same identity: {same}")
    if manifest_path is None:
        if not specs:
            raise ValueError("run_sweep: no specs and no manifest_path")
        manifest_path = Path(specs[0].out_dir).parent / MANIFEST_NAME
    if options.fresh and Path(manifest_path).is_file():
        aside = Path(f"{manifest_path}.{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(manifest_path, aside)
        logger.info(f"sweep {name}: --fresh, earlier manifest kept as {aside}")
    manifest = Manifest(manifest_path)
    skipped = [s.run_id for s in specs if manifest.state(s.run_id) == "done"]
    pending = [s for s in specs if manifest.state(s.run_id) != "done"]
    retried = [s.title for s in pending if manifest.state(s.run_id) is not None]
    logger.info(f"sweep {name}: {len(specs)} runs, {len(skipped)} already done and reused (manifest "
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
            logger.error(f"sweep {name}: {spec.title} failed: {error.strip().splitlines()[-1]}")
        progress.show()

    progress.show()
    if pending:
        if options.executor == "local":
            _run_local(pending, started, finished)
        else:
            _run_ray(pending, options, started, finished, progress)
    progress.close()
    outcome = SweepOutcome(results, errors, skipped, manifest.path)
    if errors:
        titles = [s.title for s in specs if s.run_id in errors]
        raise SweepFailed(f"sweep {name}: {len(errors)} of {len(specs)} runs failed ({titles}); their errors are "
                          f"in {manifest.path}; run the same sweep again to retry them (finished runs are kept)",
                          outcome)
    return outcome


def _run_local(pending: Sequence[RunSpec], started: Callable, finished: Callable) -> None:
    for spec in pending:
        started(spec)
        try:
            outcome = execute(spec)
        except Exception:  # noqa: BLE001 - recorded in the manifest; the other runs go on
            finished(spec, None, traceback.format_exc())
        else:
            finished(spec, outcome, None)


def _run_ray(pending: Sequence[RunSpec], options: ExecutorOptions, started: Callable, finished: Callable,
             progress: SweepProgress) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("executor='ray' needs Ray: pip install -e \".[ray]\" (or pip install 'ray[tune]')") from exc
    own_cluster = not ray.is_initialized()
    in_flight: Dict[Any, RunSpec] = {}
    if own_cluster:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        ray.init(address=options.address, runtime_env={"env_vars": env} if env else None,
                 include_dashboard=False, log_to_driver=False)
    try:
        request: Dict[str, Any] = {"num_cpus": options.cpus_per_run, "num_gpus": options.gpus_per_run}
        if options.memory_per_run_gb:
            request["memory"] = int(options.memory_per_run_gb * 1024 ** 3)
        remote = ray.remote(execute).options(**request)
        limit = options.max_in_flight or _cluster_slots(ray.cluster_resources(), options)
        logger.info(f"Ray: cluster {ray.cluster_resources()}, each run {request}, {limit} runs at once")
        shipped: Dict[str, Any] = {}
        queue = list(pending)
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                spec = queue.pop(0)
                data = None
                if options.data_transfer == "object-store":
                    if spec.feature_path not in shipped:
                        shipped[spec.feature_path] = ray.put(Path(spec.feature_path).read_bytes())
                    data = shipped[spec.feature_path]
                in_flight[remote.remote(spec, data)] = spec
                started(spec)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            for ref in ready:
                spec = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - task error, lost node: recorded, retried on re-run
                    finished(spec, None, f"{type(exc).__name__}: {exc}")
                else:
                    finished(spec, outcome, None)
            progress.show()  # the ETA moves between events too
    except BaseException:
        for ref in in_flight:  # Ctrl-C or a driver error: stop what this sweep started
            ray.cancel(ref, force=True)
        raise
    finally:
        if own_cluster:
            ray.shutdown()


def _cluster_slots(resources: Mapping[str, float], options: ExecutorOptions) -> int:
    slots = int(resources.get("CPU", 1) // options.cpus_per_run)
    if options.gpus_per_run > 0:
        slots = min(slots, int(resources.get("GPU", 0) // options.gpus_per_run))
        if slots == 0:
            raise RuntimeError(f"the Ray cluster has {resources.get('GPU', 0)} GPUs; each run asks for "
                               f"{options.gpus_per_run}")
    return max(1, slots)


def spec_table(specs: Sequence[RunSpec], outcome: SweepOutcome) -> List[Dict[str, Any]]:
    """One row per spec: identity, wall time, host and the run's metrics (for a CSV)."""
    rows = []
    for spec in specs:
        done = outcome.results.get(spec.run_id)
        if done is None:
            continue
        row = {"model": spec.model, "dataset": spec.dataset, "variant": spec.variant, "seed": spec.seed,
               "run_id": spec.run_id, "wall_s": done.get("wall_s"), "host": done.get("host")}
        row.update(done["result"].get("metrics", {}))
        rows.append(row)
    return rows
