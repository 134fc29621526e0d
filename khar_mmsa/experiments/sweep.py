"""Sweeps of training runs: a plain local loop, or one Ray task per run on a Ray cluster.

A sweep is a list of :class:`RunSpec`, each one ``MMSA_run`` of one model on one dataset with one
seed and one variant's config overrides, into its own output folder.  :func:`run_sweep` runs the
specs that are not finished yet and returns every finished run's result to the caller (the
driver), which alone writes tables.

Resumable
    A manifest (``sweep-manifest.jsonl``, one JSON record per line, appended and fsynced by the
    driver only) records each run's identity -- model, dataset, seed, variant, config hash, runner,
    the data file's name and SHA-256, and the code version
    (:func:`khar_mmsa.io.identity.code_version`) -- with a ``start`` record when it is dispatched
    and a ``done`` (with its result) or ``failed`` (with the error) record when it ends.  Running
    the same sweep again skips the runs whose last record is ``done`` and runs the others again:
    failed ones, and those that were in flight when the driver or a node died.  A run whose config,
    data content or code changed has another identity, so it runs again.  A manifest line that is
    not a well-formed record is ignored with a warning naming the file and line; its run is redone.

One driver per folder
    The driver holds an exclusive lock (``sweep.lock``, ``flock``) on the manifest's folder for the
    whole sweep; a second driver on the same folder stops at once with :class:`SweepLocked`.  The
    kernel releases the lock when the driver dies, however it dies.  The Ray processes a driver
    starts are recorded in ``sweep-ray-processes.json`` there; the next driver on the folder stops
    those a killed driver left behind before it starts.

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
    writes them to a node-local cache (``$TMPDIR/khar-sweep-data/<sha256>.pkl``) before it trains;
    a cached file is reused only when its content has that SHA-256.

Progress
    One live line per sweep, ``<name>: 3/8 done, 2 running, 0 failed, 3 left, ETA 4.1 min``:
    rewritten in place on a terminal, logged on the ``'MMSA'`` logger otherwise.
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO

from khar_mmsa.config import PATH_FIELDS, fingerprint
from khar_mmsa.io import identity as content_identity
from khar_mmsa.io.safe_io import atomic_write_bytes, atomic_write_text, file_digest

logger = logging.getLogger("MMSA")

MANIFEST_NAME = "sweep-manifest.jsonl"
LOCK_NAME = "sweep.lock"
RAY_RECORD_NAME = "sweep-ray-processes.json"
EVENTS = ("start", "done", "failed")
#: Seconds a recorded Ray process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
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


class SweepLocked(RuntimeError):
    """Another driver holds the sweep folder's lock."""


class RayUnavailable(RuntimeError):
    """The Ray cluster asked for cannot be reached (``--address auto`` with no Ray running...)."""


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
        """What makes two runs the same run: model, dataset, seed, variant, config hash (without
        the fields that only say where a file lives, such as ``pretrained_adapters_path``), runner,
        the data file by content (name and SHA-256: a pickle rebuilt byte-identical keeps its
        identity, one with other bytes of the same size does not) and the code version."""
        config = {k: v for k, v in self.config.items() if k not in PATH_FIELDS}
        return {"model": self.model, "dataset": self.dataset, "seed": int(self.seed),
                "variant": self.variant, "config_hash": fingerprint(config),
                "runner": self.runner, "data": content_identity.data_identity(self.feature_path),
                "code": content_identity.code_version()}

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
    """khar-mmsa's runner (``MMSA_run``'s arguments, :func:`khar_mmsa.integration.runner.run`) of
    ``spec.model`` on ``spec.dataset`` with ``config=spec.config, seeds=[spec.seed]`` on
    ``feature_path`` into ``spec.out_dir`` (its own checkpoints, logs and results CSV).

    Returns ``{"row": <the results-CSV row>, "metrics": {metric: value}}``, ``metrics`` in the
    natural units ``do_test`` gives (the row's x100 means divided by 100).  KHaR's result also has
    its per-epoch ``curve``, ``best_epoch``, ``epochs_run`` and ``valid`` (the validation metrics
    of the selected epoch), from a :class:`~khar_mmsa.training.callbacks.RecordHistory` callback.
    """
    from khar_mmsa.integration.runner import run  # MMSA_run's arguments, any model; returns the row
    out = Path(spec.out_dir)
    dirs = {k: out / k.replace("_dir", "") for k in ("model_save_dir", "res_save_dir", "log_dir")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    config, recorder = dict(spec.config), None
    if spec.model == "khar":
        from khar_mmsa.training.callbacks import RecordHistory
        recorder = RecordHistory()
        config["callbacks"] = [recorder]  # args['callbacks']: not part of the run's identity
    row = run(spec.model, spec.dataset, config=config, seeds=[int(spec.seed)],
              custom_feature=str(feature_path), gpu_ids=[0], num_workers=0, verbose_level=0,
              **{k: str(v) for k, v in dirs.items()})
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(row).items()}
    metrics = {k: float(v) / 100.0 for k, v in row.items()
               if k not in ("Model", "seeds") and not k.endswith("_std") and isinstance(v, (int, float))}
    return {"row": row, "metrics": metrics, **(recorder.curve() if recorder is not None else {})}


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
    feature_path = spec.feature_path if data is None else str(node_local_copy(data))
    if spec.threads:
        import torch
        torch.set_num_threads(int(spec.threads))
    start = time.perf_counter()
    result = _resolve_runner(spec.runner)(spec, feature_path)
    return {"result": result, "wall_s": round(time.perf_counter() - start, 3), "host": socket.gethostname()}


def node_local_copy(data: bytes, folder: Optional[os.PathLike] = None) -> Path:
    """``data`` as ``<folder>/<sha256>.pkl`` (default folder ``$TMPDIR/khar-sweep-data``): an
    existing file is reused only when its content has that SHA-256, else it is rewritten."""
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / "khar-sweep-data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.pkl"
    if not (path.is_file() and not path.is_symlink() and file_digest(path) == digest):
        atomic_write_bytes(path, data)
    return path


# ============================================================================================
# Manifest
# ============================================================================================
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
        from khar_mmsa.io.state_files import append_manifest_record
        append_manifest_record(self.path, rec)  # a whole line of its own, never through a link
        self.records.append(rec)
        self.last[spec.run_id] = rec

    def starts(self, run_id: str) -> int:
        """How many times a run was dispatched (over every session of this sweep)."""
        return sum(1 for r in self.records if r["run_id"] == run_id and r["event"] == "start")


# ============================================================================================
# One driver per folder, and the Ray processes it started
# ============================================================================================
class SweepLock:
    """``with SweepLock(folder):`` -- an exclusive ``flock`` on ``<folder>/sweep.lock`` held for
    the sweep, or :class:`SweepLocked` at once when another driver holds it.

    The file is opened with ``O_NOFOLLOW`` (a link planted there is refused, never followed) and
    records the holder's pid and host for the second driver's message.  The kernel drops the lock
    when the holder exits, killed or not, so a stale file never blocks a sweep.
    """

    def __init__(self, folder: os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: Optional[int] = None

    def __enter__(self) -> "SweepLock":
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SweepLocked(f"{self.path} is a symbolic link; remove it (the sweep's lock file is never "
                                  f"followed through a link)") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SweepLocked(f"another sweep driver ({holder}) is running on {self.path.parent}; wait for it "
                                  f"to finish or stop it, or give this sweep another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of ``/proc/<pid>/stat`` from the state on (``[state, ppid, ...]``); None when the
    process is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return None if not fields or fields[0] in ("Z", "X") else fields


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the pid, it tells a recorded process from a later one that reused its pid."""
    fields = _proc_stat(pid)
    return None if fields is None else fields[19]


def _descendants(pid: int) -> List[int]:
    """Every live process below ``pid`` (children, their children...), from ``/proc``."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class RayProcessRecord:
    """``<folder>/sweep-ray-processes.json``: the processes of the Ray instance a driver started
    (pid and start time each), rewritten as Ray adds workers and removed after ``ray.shutdown``.
    A file still there at the next start names what a killed driver left: :meth:`stop_leftovers`."""

    def __init__(self, folder: os.PathLike) -> None:
        self.path = Path(folder) / RAY_RECORD_NAME
        self._known: Dict[int, str] = {}
        self._before: set = set()

    def before_start(self) -> None:
        """Remember this process's children before Ray starts (they are not Ray's)."""
        self._before = set(_descendants(os.getpid()))

    def update(self) -> None:
        """Record this driver's children that Ray started (new since :meth:`before_start`)."""
        fresh = {pid: _start_time(pid) for pid in _descendants(os.getpid()) if pid not in self._before}
        fresh = {pid: t for pid, t in fresh.items() if t is not None}
        if not fresh or all(self._known.get(pid) == t for pid, t in fresh.items()):
            return
        self._known.update(fresh)
        atomic_write_text(self.path, json.dumps({
            "driver": os.getpid(), "host": socket.gethostname(),
            "processes": [{"pid": pid, "start": t} for pid, t in sorted(self._known.items())]}))

    def clear(self) -> None:
        self._known.clear()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def stop_leftovers(self, own: bool = False) -> int:
        """Stop the recorded processes still running (same host, same pid and start time), with
        everything below them; SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`.  At a driver's
        start they are what a killed driver left; ``own``: this driver's, after ``ray.shutdown``.
        Returns how many were stopped; the record is removed."""
        if not self.path.is_file():
            return 0
        try:
            record = json.loads(self.path.read_text())
            host, driver = record["host"], record["driver"]
            recorded = [(int(p["pid"]), str(p["start"])) for p in record["processes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(f"{self.path}: unreadable record of an earlier driver's Ray processes ignored "
                           f"({type(exc).__name__}: {exc})")
            self.clear()
            return 0
        if host != socket.gethostname():
            logger.warning(f"{self.path}: Ray processes recorded on host {host}, not this one; stop them there")
            self.clear()
            return 0
        alive = [pid for pid, start in recorded if _start_time(pid) == start and pid != os.getpid()]
        targets = {pid: _start_time(pid) for root in alive for pid in [root, *_descendants(root)]}
        targets = {pid: t for pid, t in targets.items() if t is not None}
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_start_time(p) == t for p, t in targets.items()):
            time.sleep(0.1)
        for pid, t in targets.items():
            if _start_time(pid) == t:
                _signal(pid, signal.SIGKILL)
        if targets and own:
            logger.info(f"stopped {len(targets)} Ray process(es) still running after ray.shutdown()")
        elif targets:
            logger.warning(f"stopped {len(targets)} Ray process(es) that an earlier sweep driver (pid {driver}) "
                           f"started and left running when it died (recorded in {self.path})")
        self.clear()
        return len(targets)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def ray_init(address: Optional[str] = None, **kwargs: Any) -> Any:
    """``ray.init(address=address, **kwargs)``; a cluster that cannot be reached raises
    :class:`RayUnavailable` with one line saying what to do."""
    import ray
    try:
        return ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = ("no Ray cluster is running on this machine" if address == "auto"
                 else f"the Ray cluster at {address} cannot be reached")
        raise RayUnavailable(f"--address {address}: {where} ({first}); start one with `ray start --head`, or "
                             f"leave --address out to start a local Ray instance for this run") from None


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

    ``manifest_path`` defaults to ``<first spec's out_dir>/../sweep-manifest.jsonl``.  The
    manifest's folder is locked for the whole sweep (:class:`SweepLocked` when another driver
    holds it), and Ray processes a killed earlier driver left there are stopped first.  Raises
    :class:`SweepFailed` after the other runs finished when any run failed; its ``outcome`` holds
    every finished run.
    """
    options = options or ExecutorOptions()
    specs = list(specs)
    from khar_mmsa.io.names import check_run_names
    for spec in specs:  # names become file names: refused before the manifest or any folder is written
        check_run_names(spec.model, spec.dataset)
    ids = [s.run_id for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        same = [s.title for s in specs if s.run_id in dupes]
        raise ValueError(f"sweep {name}: runs with the same identity: {same}")
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
            _run_ray(pending, options, started, finished, progress, ray_record)
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
             progress: SweepProgress, ray_record: Optional[RayProcessRecord] = None) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("executor='ray' needs Ray: pip install -e \".[ray]\" (or pip install 'ray[tune]')") from exc
    own_cluster = not ray.is_initialized()
    in_flight: Dict[Any, RunSpec] = {}
    if own_cluster:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        if ray_record is not None:
            ray_record.before_start()
        ray_init(options.address, runtime_env={"env_vars": env} if env else None,
                 include_dashboard=False, log_to_driver=False)
    record = ray_record if own_cluster else None
    try:
        if record is not None:
            record.update()
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
            if record is not None:
                record.update()  # the workers Ray started for these runs
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
            if record is not None:
                record.stop_leftovers(own=True)


def _cluster_slots(resources: Mapping[str, float], options: ExecutorOptions) -> int:
    slots = int(resources.get("CPU", 1) // options.cpus_per_run)
    if options.gpus_per_run > 0:
        slots = min(slots, int(resources.get("GPU", 0) // options.gpus_per_run))
        if slots == 0:
            raise RuntimeError(f"the Ray cluster has {resources.get('GPU', 0)} GPUs; each run asks for "
                               f"{options.gpus_per_run}")
    return max(1, slots)


#: MMSA's results CSVs hold every metric x100 (MAE 71.5 for 0.715); the sweep's tables do too.
MMSA_SCALE = 100.0


def spec_table(specs: Sequence[RunSpec], outcome: SweepOutcome) -> List[Dict[str, Any]]:
    """One row per finished spec: identity, wall time, host and the run's metrics in MMSA's scale
    (x100, as in MMSA's results CSV); specs that did not finish are left out."""
    rows = []
    for spec in specs:
        done = outcome.results.get(spec.run_id)
        if done is None:
            continue
        row = {"model": spec.model, "dataset": spec.dataset, "variant": spec.variant, "seed": spec.seed,
               "run_id": spec.run_id, "wall_s": done.get("wall_s"), "host": done.get("host")}
        for key, value in done["result"].get("metrics", {}).items():
            row[key] = round(float(value) * MMSA_SCALE, 4) if isinstance(value, (int, float)) else value
        rows.append(row)
    return rows


def summary_table(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """:func:`spec_table`'s rows per model and variant as MMSA's results CSV has them: ``Model``,
    ``seeds`` (the seeds, space-separated), ``n_seeds``, then each metric's mean and
    ``<metric>_std`` (population std, ``np.std``), rounded to 2 decimals as MMSA does."""
    import numpy as np
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row.get("variant", "default")), []).append(row)
    fixed = {"model", "dataset", "variant", "seed", "run_id", "wall_s", "host"}
    out = []
    for (model, variant), members in groups.items():
        summary: Dict[str, Any] = {"Model": model}
        if variant != "default":
            summary["variant"] = variant
        summary["seeds"] = " ".join(str(r["seed"]) for r in members)
        summary["n_seeds"] = len(members)
        keys = [k for k in members[0] if k not in fixed]
        for key in keys:
            values = [r.get(key) for r in members]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            summary[key] = round(float(np.mean(values)), 2)
            summary[f"{key}_std"] = round(float(np.std(values)), 2)
        out.append(summary)
    return out


def write_tables(specs: Sequence[RunSpec], outcome: SweepOutcome, folder: os.PathLike) -> Dict[str, Path]:
    """``results.csv`` (one row per finished run) and ``summary.csv`` (:func:`summary_table`) in
    ``folder``, both in MMSA's x100 scale; written atomically, also when some runs failed."""
    import pandas as pd
    rows = spec_table(specs, outcome)
    folder = Path(folder)
    paths = {"results": folder / "results.csv", "summary": folder / "summary.csv"}
    atomic_write_text(paths["results"], pd.DataFrame(rows).to_csv(index=False))
    atomic_write_text(paths["summary"], pd.DataFrame(summary_table(rows)).to_csv(index=False))
    return paths
