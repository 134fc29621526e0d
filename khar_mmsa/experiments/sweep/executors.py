"""Where the pending runs of a sweep execute: a plain loop here (:func:`run_local`), or one Ray task
per run on a Ray cluster (:func:`run_ray`).  Both report each run through the driver's
``started(spec)`` and ``finished(spec, outcome, error)`` callbacks."""
from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from khar_mmsa.experiments.sweep.execute import execute
from khar_mmsa.experiments.sweep.options import ExecutorOptions
from khar_mmsa.experiments.sweep.processes import RayProcessRecord
from khar_mmsa.experiments.sweep.progress import SweepProgress
from khar_mmsa.experiments.sweep.spec import RunSpec

logger = logging.getLogger(f"MMSA.{__name__}")

#: Environment variables a Ray worker gets from the driver (offline hub, quiet progress bars, data root).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE", "MMSA_DATASET_ROOT",
                 "KHAR_MOSI_LABELS", "KHAR_BENCH_WORK")
#: Seconds the Ray loop waits for a run to finish before it refreshes the progress line.
RAY_WAIT_S = 5.0
#: Bytes in a GB (``--memory-per-run`` is in GB, Ray's ``memory`` in bytes).
BYTES_PER_GB = 1024 ** 3


class RayUnavailable(RuntimeError):
    """The Ray cluster asked for cannot be reached (``--address auto`` with no Ray running...)."""


def run_local(pending: Sequence[RunSpec], started: Callable, finished: Callable) -> None:
    """One run after the other in this process; a failing run is reported and the others go on."""
    for spec in pending:
        started(spec)
        try:
            outcome = execute(spec)
        except Exception:  # noqa: BLE001 - recorded in the manifest; the other runs go on
            finished(spec, None, traceback.format_exc())
        else:
            finished(spec, outcome, None)


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


def run_ray(pending: Sequence[RunSpec], options: ExecutorOptions, started: Callable, finished: Callable,
            progress: SweepProgress, ray_record: Optional[RayProcessRecord] = None) -> None:
    """Each run a Ray task with the options' resource request, at most as many in flight as the
    cluster fits.  A Ray instance started here is shut down at the end, and its processes still
    running then are stopped (:meth:`RayProcessRecord.stop_leftovers`)."""
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
        try:
            ray_init(options.address, runtime_env={"env_vars": env} if env else None,
                     include_dashboard=False, log_to_driver=False)
        except BaseException:
            if ray_record is not None:
                ray_record.stop_leftovers(own=True)
            raise
    record = ray_record if own_cluster else None
    try:
        if record is not None:
            record.update()
        request: Dict[str, Any] = {"num_cpus": options.cpus_per_run, "num_gpus": options.gpus_per_run}
        if options.memory_per_run_gb:
            request["memory"] = int(options.memory_per_run_gb * BYTES_PER_GB)
        remote = ray.remote(execute).options(**request)
        limit = options.max_in_flight or cluster_slots(ray.cluster_resources(), options)
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
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=RAY_WAIT_S)
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


def cluster_slots(resources: Mapping[str, float], options: ExecutorOptions) -> int:
    """Runs the cluster fits at once: its CPUs (and GPUs) over what each run asks for."""
    slots = int(resources.get("CPU", 1) // options.cpus_per_run)
    if options.gpus_per_run > 0:
        slots = min(slots, int(resources.get("GPU", 0) // options.gpus_per_run))
        if slots == 0:
            raise RuntimeError(f"the Ray cluster has {resources.get('GPU', 0)} GPUs; each run asks for "
                               f"{options.gpus_per_run}")
    return max(1, slots)
