"""The Ray processes a sweep driver starts, recorded so that the next driver can stop what a killed one left.

``<out>/sweep-ray-processes.json`` names the driver (pid, start time, host), the ``--out`` folder,
a random token, and the processes Ray started below the driver (pid, start time, command line).
Before ``ray.init`` the driver puts the token in its environment (:data:`TOKEN_ENV`), so every
process of that Ray instance -- GCS server, raylet, workers, their children -- carries it.

A recorded process is stopped (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`) only when all of
these hold; anything else is left alone, with a warning saying which check it failed:

1. the record was written for this folder (its ``out`` is this ``--out``) on this host, and its
   driver is not running any more (or is this driver, after its own ``ray.shutdown``);
2. the pid is alive and started when the record says (:data:`START_TIME_TOLERANCE_S`): not a
   later process that reused the pid;
3. its command line is a Ray process's (:func:`is_ray_process`): a ``ray::`` worker title, or an
   executable or script inside the installed ``ray`` package (``raylet``, ``gcs_server``,
   ``default_worker.py``...);
4. its environment holds the record's token: the driver's Ray started it.  Ray's agents
   (``ray::DashboardAgent``...) retitle themselves in a way that leaves ``/proc/<pid>/environ``
   empty; such a process, whose environment says nothing, is taken as the driver's only when it is
   an orphan -- its parent is no running Ray process (the Ray instance that started it is gone) --
   so the agents of another, live Ray instance are never touched.

A verified process's descendants are stopped with it when they carry the token or are Ray
processes themselves.  Process facts come from ``psutil``.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil

from khar_mmsa.io.files import atomic_write_text

logger = logging.getLogger(f"MMSA.{__name__}")

RAY_RECORD_NAME = "sweep-ray-processes.json"
#: Seconds a recorded Ray process gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
#: Seconds between checks whether the signalled processes have exited.
STOP_POLL_S = 0.1
#: Largest difference between a live process's start time and the recorded one for the two to be
#: the same process.  Start times are kept in clock ticks (10 ms) since boot, and the boot time
#: the kernel reports may move by up to a second; a pid reused within a second of the recorded
#: process's start is not a real case.
START_TIME_TOLERANCE_S = 1.0
#: Environment variable holding the record's token in every process of the driver's Ray instance.
TOKEN_ENV = "KHAR_SWEEP_RAY_TOKEN"
#: Bytes of randomness in the token.
TOKEN_BYTES = 16
#: How a Ray worker titles itself (``ray::IDLE``, ``ray::execute``...).
RAY_WORKER_TITLE = "ray::"
#: Characters of a command line quoted in a log message.
CMDLINE_SHOWN = 120


@functools.lru_cache(maxsize=1)
def ray_package_dir() -> Optional[str]:
    """The installed ``ray`` package's folder (found without importing Ray); None without Ray."""
    try:
        spec = importlib.util.find_spec("ray")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.path.realpath(locations[0]) if locations else None


def is_ray_process(cmdline: Sequence[str], ray_dir: Optional[str] = None) -> bool:
    """Whether a command line is one of Ray's processes: a worker's ``ray::<task>`` title, or an
    executable or script inside the installed ``ray`` package (``.../ray/core/src/ray/raylet/raylet``,
    ``.../gcs_server``, ``python .../ray/_private/workers/default_worker.py``, Ray's agents)."""
    if not cmdline or not cmdline[0]:
        return False
    if cmdline[0].startswith(RAY_WORKER_TITLE):
        return True
    ray_dir = ray_dir if ray_dir is not None else ray_package_dir()
    if not ray_dir:
        return False
    script = next((arg for arg in cmdline[1:] if not arg.startswith("-")), "")  # what an interpreter runs
    return any(arg and os.path.isabs(arg) and os.path.realpath(arg).startswith(ray_dir + os.sep)
               for arg in (cmdline[0], script))


def _process(pid: int, start: float) -> Optional[psutil.Process]:
    """The live process ``pid`` if it started at ``start`` (see :data:`START_TIME_TOLERANCE_S`)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc if abs(proc.create_time() - start) <= START_TIME_TOLERANCE_S else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return _running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _running(proc: psutil.Process) -> bool:
    """Still running, not a zombie (``is_running`` also tells a reused pid from the process)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _carries(proc: psutil.Process, token: str) -> bool:
    return bool(token) and (_environ(proc) or {}).get(TOKEN_ENV) == token


def _environ(proc: psutil.Process) -> Optional[Dict[str, str]]:
    """The process's environment; None when it cannot be read or is empty (a retitled process)."""
    try:
        return proc.environ() or None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def _ray_parent(proc: psutil.Process) -> Optional[psutil.Process]:
    """The process's parent when that is a running Ray process; None for an orphan."""
    try:
        parent = proc.parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return parent if parent is not None and is_ray_process(_cmdline(parent)) else None


def _cmdline(proc: psutil.Process) -> List[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _shown(cmdline: Sequence[str]) -> str:
    text = " ".join(cmdline)
    return text if len(text) <= CMDLINE_SHOWN else text[:CMDLINE_SHOWN] + "..."


def _descendants(proc: psutil.Process) -> List[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _same_folder(recorded: str, folder: Path) -> bool:
    try:
        return os.path.realpath(recorded) == os.path.realpath(folder)
    except (TypeError, ValueError):
        return False


class RayProcessRecord:
    """``<folder>/sweep-ray-processes.json`` (see the module docstring): rewritten as Ray adds
    processes, removed after ``ray.shutdown``; a file still there at the next start names what a
    killed driver left, for :meth:`stop_leftovers`."""

    def __init__(self, folder: os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RAY_RECORD_NAME
        self._known: Dict[int, Dict[str, Any]] = {}
        self._before: set = set()
        self._token = ""
        self._env_before: Optional[str] = None

    def before_start(self) -> None:
        """Before Ray starts: remember this process's children (they are not Ray's) and put a new
        token in the environment Ray's processes inherit."""
        me = psutil.Process()
        self._before = {p.pid for p in _descendants(me)}
        self._token = secrets.token_hex(TOKEN_BYTES)
        self._env_before = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = self._token

    def update(self) -> None:
        """Record this driver's descendants that Ray started (new since :meth:`before_start`)."""
        me = psutil.Process()
        fresh: Dict[int, Dict[str, Any]] = {}
        for proc in _descendants(me):
            if proc.pid in self._before:
                continue
            try:
                start = proc.create_time()
            except psutil.NoSuchProcess:
                continue
            if self._known.get(proc.pid, {}).get("start") != start:  # new, or a reused pid
                fresh[proc.pid] = {"pid": proc.pid, "start": start, "cmdline": _cmdline(proc)}
        if not fresh:
            return
        self._known.update(fresh)
        atomic_write_text(self.path, json.dumps({
            "driver": os.getpid(), "driver_start": me.create_time(), "host": socket.gethostname(),
            "out": str(self.folder.resolve()), "token": self._token,
            "processes": [self._known[pid] for pid in sorted(self._known)]}))

    def clear(self) -> None:
        """Remove the record (and this driver's token from its environment)."""
        self._known.clear()
        if self._token and os.environ.get(TOKEN_ENV) == self._token:
            if self._env_before is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = self._env_before
        self._token = ""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            record = json.loads(self.path.read_text())
            parsed = {"host": str(record["host"]), "driver": int(record["driver"]),
                      "driver_start": float(record["driver_start"]), "out": str(record["out"]),
                      "token": str(record["token"]),
                      "processes": [(int(p["pid"]), float(p["start"])) for p in record["processes"]]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(f"{self.path}: unreadable record of an earlier driver's Ray processes ignored, "
                           f"nothing stopped ({type(exc).__name__}: {exc})")
            return None
        return parsed

    def _refused(self, record: Dict[str, Any], own: bool) -> Optional[str]:
        """Why no process of this record may be stopped; None when the record may be acted on."""
        if record["host"] != socket.gethostname():
            return f"they were recorded on host {record['host']}, not this one; stop them there"
        if not _same_folder(record["out"], self.folder):
            return f"the record was written for another folder ({record['out']})"
        if own:
            return None if record["driver"] == os.getpid() else "the record is not this driver's"
        if record["driver"] != os.getpid() and _process(record["driver"], record["driver_start"]) is not None:
            return f"the driver that recorded them (pid {record['driver']}) is still running"
        return None

    def stop_leftovers(self, own: bool = False) -> int:
        """Stop the recorded processes that pass every check of the module docstring, with their
        descendants that carry the token or are Ray's; SIGTERM, then SIGKILL after
        :data:`STOP_GRACE_S`.  At a driver's start they are what a killed driver left; ``own``: this
        driver's, after ``ray.shutdown``.  Returns how many were stopped; the record is removed."""
        if not self.path.is_file():
            if own:
                self.clear()
            return 0
        record = self._read()
        if record is None:
            self.clear()
            return 0
        why = self._refused(record, own)
        if why is not None:
            logger.warning(f"{self.path}: the {len(record['processes'])} Ray process(es) it lists are left alone: "
                           f"{why}")
            self.clear()
            return 0
        targets = self._targets(record)
        stopped = self._stop(list(targets.values()))
        if stopped and own:
            logger.info(f"stopped {stopped} Ray process(es) still running after ray.shutdown()")
        elif stopped:
            logger.warning(f"stopped {stopped} Ray process(es) that an earlier sweep driver (pid {record['driver']}) "
                           f"started and left running when it died (recorded in {self.path})")
        self.clear()
        return stopped

    def _targets(self, record: Dict[str, Any]) -> Dict[int, psutil.Process]:
        """The processes of ``record`` that may be stopped (checks 2-4 of the module docstring) and
        their descendants that carry the token or are Ray's; every other recorded process that is
        alive is named in a warning with the check it failed."""
        ancestors = {p.pid for p in psutil.Process().parents()} | {os.getpid()}
        verified: Dict[int, psutil.Process] = {}
        refused: Dict[int, str] = {}
        for pid, start in record["processes"]:
            proc = _process(pid, start)
            if proc is None:
                if _alive(pid):
                    refused[pid] = "it is not the recorded process (it started at another time; the pid was reused)"
                continue
            cmdline = _cmdline(proc)
            if pid in ancestors:
                refused[pid] = f"({_shown(cmdline)}) it is this driver or one of its parents"
            elif not is_ray_process(cmdline):
                refused[pid] = f"({_shown(cmdline)}) its command line is not a Ray process's"
            elif _environ(proc) is not None and not _carries(proc, record["token"]):
                refused[pid] = (f"({_shown(cmdline)}) it does not carry the recording driver's token, so that "
                                f"driver's Ray did not start it")
            elif _environ(proc) is None and _ray_parent(proc) is not None:
                parent = _ray_parent(proc)
                refused[pid] = (f"({_shown(cmdline)}) its environment cannot be read and its parent, pid "
                                f"{parent.pid if parent else '?'}, is a running Ray process: it belongs to that "
                                f"Ray instance")
            else:
                verified[pid] = proc
        # below a verified process: its Ray children (Ray's agents get an environment of their own)
        # and whatever carries the token (a task's own subprocesses)
        targets = dict(verified)
        for proc in verified.values():
            for child in _descendants(proc):
                if child.pid not in ancestors and (_carries(child, record["token"])
                                                   or is_ray_process(_cmdline(child))):
                    targets.setdefault(child.pid, child)
        for pid, reason in refused.items():
            if pid not in targets:
                logger.warning(f"{self.path}: pid {pid} is left alone: {reason}")
        return targets

    @staticmethod
    def _stop(procs: List[psutil.Process]) -> int:
        """SIGTERM, then SIGKILL what still runs after :data:`STOP_GRACE_S`; psutil checks each
        process's identity (pid and start time) before it signals it."""
        live = []
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
                live.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(_running(p) for p in live):
            time.sleep(STOP_POLL_S)
        for proc in live:
            try:
                if _running(proc):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return len(live)
