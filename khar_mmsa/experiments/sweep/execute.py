"""One run where it executes (the driver, or a Ray worker): the spec's runner, its threads, its data.

The default runner, :func:`mmsa_run_one`, is one ``MMSA_run``; a spec may name another
``module:function`` (tests and benchmarks do).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from khar_mmsa.experiments.sweep.spec import RunSpec
from khar_mmsa.io.files import atomic_write_bytes, file_digest

#: Folder (under ``$TMPDIR``) of the node-local copies of feature pickles shipped by the driver.
NODE_CACHE_FOLDER = "khar-sweep-data"
#: Decimals of a run's wall time in its outcome (milliseconds).
WALL_S_DECIMALS = 3


def mmsa_run_one(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    """khar-mmsa's runner (``MMSA_run``'s arguments, :func:`khar_mmsa.runs.runner.run`) of
    ``spec.model`` on ``spec.dataset`` with ``config=spec.config, seeds=[spec.seed]`` on
    ``feature_path`` into ``spec.out_dir`` (its own checkpoints, logs and results CSV).

    Returns ``{"row": <the results-CSV row>, "metrics": {metric: value}, "test": {metric: value}}``,
    ``metrics`` in the natural units ``do_test`` gives (the row's x100 means divided by 100),
    ``test`` the seed's test results unrounded (what the sweep's summary averages, as MMSA
    averages a multi-seed run's).  KHaR's result also has
    its per-epoch ``curve``, ``best_epoch``, ``epochs_run`` and ``valid`` (the validation metrics
    of the selected epoch), from a :class:`~khar_mmsa.training.callbacks.RecordHistory` callback.
    """
    from khar_mmsa.runs.runner import run  # MMSA_run's arguments, any model; returns the row
    out = Path(spec.out_dir)
    dirs = {k: out / k.replace("_dir", "") for k in ("model_save_dir", "res_save_dir", "log_dir")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    config, recorder, test = dict(spec.config), None, {}
    if spec.model == "khar":
        from khar_mmsa.training.callbacks import RecordHistory
        recorder = RecordHistory()
        config["callbacks"] = [recorder]  # args['callbacks']: not part of the run's identity
    row = run(spec.model, spec.dataset, config=config, seeds=[int(spec.seed)],
              custom_feature=str(feature_path), gpu_ids=[0], num_workers=0, verbose_level=0,
              on_seed_result=lambda seed, result: test.update(result), **{k: str(v) for k, v in dirs.items()})
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(row).items()}
    metrics = {k: float(v) / 100.0 for k, v in row.items()
               if k not in ("Model", "seeds") and not k.endswith("_std") and isinstance(v, (int, float))}
    return {"row": row, "metrics": metrics, "test": test, **(recorder.curve() if recorder is not None else {})}


def resolve_runner(name: str) -> Callable[[RunSpec, str], Dict[str, Any]]:
    """The function a spec's ``runner`` (``module:function``) names."""
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
    result = resolve_runner(spec.runner)(spec, feature_path)
    return {"result": result, "wall_s": round(time.perf_counter() - start, WALL_S_DECIMALS),
            "host": socket.gethostname()}


def node_local_copy(data: bytes, folder: Optional[os.PathLike] = None) -> Path:
    """``data`` as ``<folder>/<sha256>.pkl`` (default folder ``$TMPDIR/khar-sweep-data``): an
    existing file is reused only when its content has that SHA-256, else it is rewritten."""
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir()) / NODE_CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.pkl"
    if not (path.is_file() and not path.is_symlink() and file_digest(path) == digest):
        atomic_write_bytes(path, data)
    return path
