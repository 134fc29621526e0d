"""Sweeps of training runs: a plain local loop, or one Ray task per run on a Ray cluster.

A sweep is a list of :class:`RunSpec`, each one ``MMSA_run`` of one model on one dataset with one
seed and one variant's config overrides, into its own output folder.  :func:`run_sweep` runs the
specs that are not finished yet and returns every finished run's result to the caller (the
driver), which alone writes tables.  One module per concern:

``spec``         :class:`RunSpec` and its identity (what makes two runs the same run).
``options``      :class:`ExecutorOptions` and their command-line flags.
``execute``      one run where it executes: the default runner :func:`mmsa_run_one`, the data cache.
``manifest``     :class:`Manifest`, the resumable record ``sweep-manifest.jsonl``.
``driver_lock``  :class:`SweepLock`: one driver per folder.
``processes``    :class:`RayProcessRecord`: the Ray processes a driver started, and their cleanup.
``executors``    the local loop and the Ray tasks (:func:`ray_init`, :class:`RayUnavailable`).
``progress``     :class:`SweepProgress`, the one live line.
``tables``       ``results.csv`` and ``summary.csv`` (:func:`write_tables`).
``driver``       :func:`run_sweep`, :class:`SweepOutcome`, :class:`SweepFailed`.

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
    The driver holds an exclusive lock (``sweep.lock``, :mod:`khar_mmsa.io.locks`) on the
    manifest's folder for the whole sweep; a second driver on the same folder stops at once with
    :class:`SweepLocked`, and so does any driver when ``sweep.lock`` is a link (never followed).
    The kernel releases the lock when the driver dies, however it dies.  The Ray processes a driver
    starts are recorded in ``sweep-ray-processes.json`` there; the next driver on the folder stops
    those a killed driver left behind before it starts -- only processes that are Ray's, started
    when recorded, and carrying that driver's token (:mod:`.processes`); anything else it lists is
    left alone and logged.

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

Tables
    ``results.csv`` and ``summary.csv`` in MMSA's x100 scale, their columns in one fixed order
    (identity columns, then metrics by name), the same on every rerun.
"""
from __future__ import annotations

from khar_mmsa.experiments.sweep.driver import DEFAULT_NAME, SweepFailed, SweepOutcome, run_sweep
from khar_mmsa.experiments.sweep.driver_lock import LOCK_NAME, SweepLock, SweepLocked
from khar_mmsa.experiments.sweep.execute import execute, mmsa_run_one, node_local_copy, resolve_runner
from khar_mmsa.experiments.sweep.executors import FORWARDED_ENV, RayUnavailable, ray_init
from khar_mmsa.experiments.sweep.manifest import EVENTS, MANIFEST_NAME, Manifest
from khar_mmsa.experiments.sweep.options import (DATA_TRANSFERS, EXECUTORS, ExecutorOptions, add_executor_args,
                                                 executor_options)
from khar_mmsa.experiments.sweep.processes import RAY_RECORD_NAME, STOP_GRACE_S, RayProcessRecord, is_ray_process
from khar_mmsa.experiments.sweep.progress import SweepProgress
from khar_mmsa.experiments.sweep.spec import DEFAULT_RUNNER, RunSpec
from khar_mmsa.experiments.sweep.tables import MMSA_SCALE, spec_table, summary_table, write_tables

__all__ = [
    "DATA_TRANSFERS", "DEFAULT_NAME", "DEFAULT_RUNNER", "EVENTS", "EXECUTORS", "FORWARDED_ENV", "LOCK_NAME",
    "MANIFEST_NAME", "MMSA_SCALE", "RAY_RECORD_NAME", "STOP_GRACE_S", "ExecutorOptions", "Manifest",
    "RayProcessRecord", "RayUnavailable", "RunSpec", "SweepFailed", "SweepLock", "SweepLocked", "SweepOutcome",
    "SweepProgress", "add_executor_args", "execute", "executor_options", "is_ray_process", "mmsa_run_one",
    "node_local_copy", "ray_init", "resolve_runner", "run_sweep", "spec_table", "summary_table", "write_tables",
]
