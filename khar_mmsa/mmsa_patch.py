"""Every change khar-mmsa makes to MMSA 2.2.1, in one place, explicit and reversible.

:func:`register` (called when :mod:`khar_mmsa` is imported) replaces a fixed list of MMSA
attributes; each replacement is recorded as ``(object, attribute, original)`` and
:func:`unregister` puts every original back, in reverse order.  :func:`register` is idempotent.
No other module of :mod:`khar_mmsa` touches MMSA internals.

Import :mod:`khar_mmsa` *before* ``from MMSA import MMSA_run``: a name bound earlier keeps
pointing at MMSA's unpatched function.

What is patched (see ``../shared/notes/mmsa-2.2.1.md`` for the numbered breakages)
-------------------------------------------------------------------------------------
Model key ``'khar'``
    ``AMIO.__init__`` / ``ATIO.__init__`` add ``'khar'`` to ``MODEL_MAP`` / ``TRAIN_MAP``, resolved
    lazily to ``khar_mmsa.model.khar.KHaR`` / ``khar_mmsa.trainer.KHaRTrainer``
    (:data:`EXTRA_MODELS`, :data:`EXTRA_TRAINERS`).  ``SUPPORTED_MODELS`` / ``SUPPORTED_DATASETS``
    (informational lists in ``MMSA.run`` and ``MMSA``) gain ``'KHaR'`` / ``'SIMSV2'``.
Configs
    ``get_config_regression`` / ``get_config_tune`` (in ``MMSA.config``, ``MMSA.run`` and
    ``MMSA``): called with MMSA's default config (``''``, ``None`` or MMSA's own JSON path) they
    read MMSA's JSON deep-merged with ours, ``<repo>/mmsa_configs/config_regression.json`` /
    ``config_tune.json`` (the ``'khar'`` model, the ``'simsv2'`` dataset and simsv2 parameters
    for TFN, MulT and Self-MM).  Any other path is a user's own file and is read as it is.
    Environment variable ``MMSA_DATASET_ROOT``: when set, it replaces ``dataset_root_dir`` of the
    merged default config (``featurePath`` is joined to it).  A user's own JSON keeps its own
    root.
Dataset ``'simsv2'``
    ``MMDataset.__init__`` loads it through MMSA's SIMS code path (T/A/V labels included);
    ``MetricsTop.__init__`` maps ``'SIMSV2'`` to MMSA's SIMS metrics (:data:`EXTRA_DATASETS`).
Fixes for today's stack
    a. ``MMSA.run.torch`` becomes a proxy whose ``cuda.set_device`` skips CPU devices, so
       ``gpu_ids=[0]`` on a machine without CUDA runs on the CPU with one warning on the
       ``'MMSA'`` logger (breakage 1).  ``torch`` itself is not touched.
    b. ``ReduceLROnPlateau`` in ``MMSA.trains.singleTask.MULT``/``MMIM`` and
       ``MMSA.trains.missingTask.TFR_NET`` accepts and drops ``verbose=`` (breakage 2).
    c. ``MMSA_run`` (in ``MMSA.run`` and ``MMSA``) lets MMSA write its CSV into a private
       temporary folder and merges one row per run into the real
       ``<res_save_dir>/normal/<dataset>.csv`` (see *Results CSV* below) under an exclusive
       ``fcntl.flock`` on ``<csv>.lock`` with an atomic replace (breakage 7).  Tuning runs
       (``is_tune=True``) write MMSA's own tune CSV as before; its cells are plain numbers already.
       A normal run returns its row (a dict) instead of None.
    d. ``MMSA.run._set_logger``: the two handlers each ``MMSA_run`` call adds are removed (and
       closed) when that call returns, so repeated runs do not repeat log lines (breakage 9).
    e. ``MMSA.run._run``: a checkpoint left at ``args['model_save_path']`` by an earlier run is
       deleted before each seed trains; if training then writes none, :class:`MissingCheckpointError`
       says so instead of a bare ``AssertionError`` or a stale model (breakage 10).
    f. ``MMSA_test(gpu_id>=0)`` without CUDA falls back to the CPU with a warning (breakage 11).
       ``MMSA_run`` without an explicit ``num_workers`` uses 0 loader workers when CUDA is absent
       (breakage 8).  When ``update_epochs`` exceeds the training batches per epoch (MulT,
       Self-MM, MISA, TFR-Net), the optimizer steps less than once per epoch (breakage 3): a
       warning says so; the value is not changed behind the user's back.
Safe loading and validation
    ``MMSA.run.MMDataLoader`` reads each feature file once per ``MMSA_run`` call with
    ``khar_mmsa.safe_io.load_pickle(path, trusted=args.get('trust_pickle', False))`` and checks it
    with ``khar_mmsa.validation.validate_features`` before any model is built; MMSA's
    ``MMDataset`` then gets the already-loaded object from a ``pickle`` shim installed as
    ``MMSA.data_loader.pickle``.  Both modules are imported lazily; if one is absent the hook
    falls back to plain ``pickle`` / no validation.

Helpers for other modules: :func:`metrics_for` (MMSA's metric function of a dataset key, the
SIMS one for ``'simsv2'``), :func:`merged_config`, :func:`append_result_row`.

Not patched (documented limits): ``MMSA_test`` still reads its one-sample feature file with
plain ``pickle``; MMSA's multi-task trainers (MTFN, MLMF, MLF_DNN) assert
``dataset_name == 'sims'``; ``MMDataLoader`` still shuffles valid and test (breakage 12); two
concurrent runs of the same model and dataset share ``<model>-<dataset>.pth`` in
``model_save_dir`` -- give each its own ``model_save_dir``.

Results CSV
-----------
One row per ``MMSA_run`` call: ``Model``, ``seeds`` (the seeds, space separated), then for every
metric key returned by the trainer's ``do_test`` two plain numeric columns, ``<Metric>`` = mean
and ``<Metric>_std`` = population std over the seeds, both multiplied by 100 and rounded to two
decimals (MMSA's own convention, so ``MAE`` 0.71 is written 71.0).  ``pd.read_csv`` gives float
columns.  Rows of an older MMSA-format CSV (``"(np.float64(50.0), np.float64(0.0))"`` or
``"(50.0, 0.0)"`` cells) are converted to this format when a new row is merged in.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger("MMSA")

__all__ = [
    "register", "unregister", "is_registered", "patched_attributes",
    "EXTRA_MODELS", "EXTRA_TRAINERS", "EXTRA_DATASETS", "DATASET_ROOT_ENV", "LazyClass",
    "MissingCheckpointError", "ConfigOverlayMissingError", "config_dir", "merged_config",
    "summarize_results", "append_result_row", "results_csv_path", "metrics_for",
]

DATASET_ROOT_ENV = "MMSA_DATASET_ROOT"
#: Folder holding our config overlays (editable install: beside the ``khar_mmsa`` package).
CONFIG_DIR: Path = Path(__file__).resolve().parent.parent / "mmsa_configs"
CONFIG_KINDS = ("regression", "tune")
#: Default seeds of ``MMSA_run`` (used for the ``seeds`` column when the caller passes none).
MMSA_DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
_MISSING = object()


# ============================================================================================
# Registry of extra names
# ============================================================================================
@dataclass(frozen=True)
class LazyClass:
    """A class named by module and attribute, imported on first use (``LazyClass(...)(args)``)."""

    module: str
    name: str

    def resolve(self) -> Any:
        """Import the module and return the class."""
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


#: Extra model keys for ``AMIO``'s ``MODEL_MAP``.
EXTRA_MODELS: Dict[str, LazyClass] = {"khar": LazyClass("khar_mmsa.model.khar", "KHaR")}
#: Extra model keys for ``ATIO``'s ``TRAIN_MAP``.
EXTRA_TRAINERS: Dict[str, LazyClass] = {"khar": LazyClass("khar_mmsa.trainer", "KHaRTrainer")}
#: Extra dataset keys -> the MMSA dataset whose loader path and metrics they share.
EXTRA_DATASETS: Dict[str, str] = {"simsv2": "sims"}


class MissingCheckpointError(RuntimeError):
    """Training finished without writing the checkpoint MMSA is about to test."""


class ConfigOverlayMissingError(FileNotFoundError):
    """``mmsa_configs/`` (our config overlay) cannot be found beside the package."""


# ============================================================================================
# Patch records
# ============================================================================================
@dataclass
class _Record:
    obj: Any
    attr: str
    original: Any  # the raw value from vars(obj), or _MISSING


_RECORDS: List[_Record] = []
_REGISTRY_LOCK = threading.RLock()
_TLS = threading.local()  # per-thread: .run (a _RunContext), .preloaded (path -> object)
_TMP = {"dir": None}  # private folder for merged config files


def _set(obj: Any, attr: str, value: Any) -> None:
    """Replace ``obj.attr`` by ``value`` and record the original for :func:`unregister`."""
    original = vars(obj).get(attr, _MISSING)
    _RECORDS.append(_Record(obj, attr, original))
    setattr(obj, attr, value)


def _restore_all() -> None:
    """Undo every record, newest first."""
    while _RECORDS:
        rec = _RECORDS.pop()
        if rec.original is _MISSING:
            delattr(rec.obj, rec.attr)
        else:
            setattr(rec.obj, rec.attr, rec.original)


def register() -> None:
    """Apply every patch (idempotent).  On a failure halfway, what was applied is undone."""
    with _REGISTRY_LOCK:
        if _RECORDS:
            return
        try:
            _patch_models()
            _patch_configs()
            _patch_datasets()
            _patch_fixes()
            _patch_loading()
        except BaseException:
            _restore_all()
            raise
        logger.debug(f"khar_mmsa: {len(_RECORDS)} MMSA attributes patched")


def unregister() -> None:
    """Restore every patched MMSA attribute exactly as it was before :func:`register`."""
    with _REGISTRY_LOCK:
        _restore_all()
        _remove_tmpdir()


def is_registered() -> bool:
    """True while the patches are applied."""
    return bool(_RECORDS)


def patched_attributes() -> List[Tuple[Any, str]]:
    """The ``(object, attribute)`` pairs currently replaced, in the order they were patched."""
    return [(r.obj, r.attr) for r in _RECORDS]


def _mod(name: str) -> Any:
    """An MMSA module by dotted name (``MMSA.models.AMIO`` the module, not the class)."""
    return importlib.import_module(name)


# ============================================================================================
# Model key 'khar'
# ============================================================================================
def _patch_models() -> None:
    amio_cls = _mod("MMSA.models.AMIO").AMIO
    atio_cls = _mod("MMSA.trains.ATIO").ATIO
    _set(amio_cls, "__init__", _wrap_amio_init(amio_cls.__init__))
    _set(atio_cls, "__init__", _wrap_atio_init(atio_cls.__init__))
    mmsa, run = _mod("MMSA"), _mod("MMSA.run")
    models = list(run.SUPPORTED_MODELS) + ["KHaR"]
    datasets = list(run.SUPPORTED_DATASETS) + [k.upper() for k in EXTRA_DATASETS]
    for module in (run, mmsa):
        _set(module, "SUPPORTED_MODELS", models)
        _set(module, "SUPPORTED_DATASETS", datasets)


def _wrap_amio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Mapping[str, Any]) -> None:
        factory = EXTRA_MODELS.get(args["model_name"])
        if factory is None:
            original(self, args)
            self.MODEL_MAP.update(EXTRA_MODELS)
        else:
            _init_extra_amio(self, args, factory)
    return __init__


def _init_extra_amio(amio: Any, args: Mapping[str, Any], factory: Callable) -> None:
    """``AMIO.__init__`` of MMSA 2.2.1 for a model key MMSA does not know (same attributes)."""
    import torch.nn as nn
    nn.Module.__init__(amio)
    amio.MODEL_MAP = dict(EXTRA_MODELS)
    amio.need_model_aligned = args.get("need_model_aligned", None)
    if amio.need_model_aligned:
        amio.alignNet = _mod("MMSA.models.AMIO").AlignSubNet(args, "avg_pool")
        if "seq_lens" in args.keys():
            args["seq_lens"] = amio.alignNet.get_seq_len()
    amio.Model = factory(args)


def _wrap_atio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        self.TRAIN_MAP.update(EXTRA_TRAINERS)
    return __init__


# ============================================================================================
# Configs
# ============================================================================================
def _patch_configs() -> None:
    config = _mod("MMSA.config")
    wrapped = {
        "get_config_regression": _wrap_get_config(config.get_config_regression, "regression"),
        "get_config_tune": _wrap_get_config(config.get_config_tune, "tune"),
    }
    for module in (config, _mod("MMSA.run"), _mod("MMSA")):
        for name, fn in wrapped.items():
            _set(module, name, fn)


def _wrap_get_config(original: Callable, kind: str) -> Callable:
    @functools.wraps(original)
    def get_config(model_name: str, dataset_name: str, config_file: Any = "", *args: Any,
                   **kwargs: Any) -> Any:
        if _is_mmsa_default_config(config_file, kind):
            config_file = _merged_config_file(kind)
        return original(model_name, dataset_name, config_file, *args, **kwargs)
    return get_config


def _mmsa_config_file(kind: str) -> Path:
    return Path(_mod("MMSA.config").__file__).parent / "config" / f"config_{kind}.json"


def _is_mmsa_default_config(config_file: Any, kind: str) -> bool:
    if config_file is None or (isinstance(config_file, str) and config_file == ""):
        return True
    try:
        return Path(config_file).resolve() == _mmsa_config_file(kind).resolve()
    except (TypeError, OSError):
        return False


def config_dir() -> Path:
    """Our ``mmsa_configs`` folder; :class:`ConfigOverlayMissingError` when it is not there."""
    folder = Path(CONFIG_DIR)
    if not folder.is_dir():
        raise ConfigOverlayMissingError(
            f"khar-mmsa's MMSA config overlay folder {folder} is missing. It ships in the source "
            f"tree beside the khar_mmsa package: install with 'pip install -e <khar-mmsa repo>' "
            f"(editable), or pass your own complete config_file to MMSA.")
    return folder


def _deep_merge(base: Any, overlay: Any) -> Any:
    """``overlay`` over ``base``: dicts merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return overlay


def merged_config(kind: str = "regression") -> Dict[str, Any]:
    """MMSA's default JSON of ``kind`` ('regression' or 'tune') with our overlay merged in.

    ``MMSA_DATASET_ROOT``, when set, replaces ``datasetCommonParams.dataset_root_dir``.
    """
    if kind not in CONFIG_KINDS:
        raise ValueError(f"kind={kind!r}: one of {CONFIG_KINDS}")
    overlay_file = config_dir() / f"config_{kind}.json"
    if not overlay_file.is_file():
        raise ConfigOverlayMissingError(f"khar-mmsa's config overlay {overlay_file} is missing")
    base = json.loads(_mmsa_config_file(kind).read_text(encoding="utf-8"))
    merged = _deep_merge(base, json.loads(overlay_file.read_text(encoding="utf-8")))
    root = os.environ.get(DATASET_ROOT_ENV)
    if root:
        merged["datasetCommonParams"]["dataset_root_dir"] = root
    return merged


def _merged_config_file(kind: str) -> Path:
    """Write :func:`merged_config` to a private file named by its content hash; return it."""
    text = json.dumps(merged_config(kind), indent=1, sort_keys=True)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    path = _tmpdir() / f"config_{kind}-{digest}.json"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def _tmpdir() -> Path:
    with _REGISTRY_LOCK:
        if _TMP["dir"] is None or not Path(_TMP["dir"]).is_dir():
            _TMP["dir"] = tempfile.mkdtemp(prefix="khar-mmsa-")
        return Path(_TMP["dir"])


def _remove_tmpdir() -> None:
    if _TMP["dir"] is not None:
        shutil.rmtree(_TMP["dir"], ignore_errors=True)
        _TMP["dir"] = None


atexit.register(_remove_tmpdir)


# ============================================================================================
# Dataset 'simsv2'
# ============================================================================================
def _patch_datasets() -> None:
    dataset_cls = _mod("MMSA.data_loader").MMDataset
    metrics_cls = _mod("MMSA.utils.metricsTop").MetricsTop
    _set(dataset_cls, "__init__", _wrap_dataset_init(dataset_cls.__init__))
    _set(metrics_cls, "__init__", _wrap_metrics_init(metrics_cls.__init__))


def _wrap_dataset_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Any, mode: str = "train") -> None:
        name = args["dataset_name"]
        with _preloaded_features(args):
            if name not in EXTRA_DATASETS:
                original(self, args, mode)
                return
            # MMSA keys its loader and its T/A/V labels on the literal name: borrow the base
            # dataset's name for the duration of the call.
            args["dataset_name"] = EXTRA_DATASETS[name]
            try:
                original(self, args, mode)
            finally:
                args["dataset_name"] = name
    return __init__


def _wrap_metrics_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, train_mode: str) -> None:
        original(self, train_mode)
        for extra, base in EXTRA_DATASETS.items():
            self.metrics_dict[extra.upper()] = self.metrics_dict[base.upper()]
    return __init__


def metrics_for(dataset_name: str, train_mode: str = "regression") -> Callable:
    """MMSA's metric function for a dataset key, ``(y_pred, y_true) -> dict``.

    ``'simsv2'`` gives MMSA's SIMS metrics.  Works whether or not the patches are applied; it is
    the way other :mod:`khar_mmsa` modules reach ``MetricsTop`` without importing MMSA internals.
    """
    name = str(dataset_name).lower()
    metrics = _mod("MMSA.utils.metricsTop").MetricsTop(train_mode)
    return metrics.getMetics(EXTRA_DATASETS.get(name, name))


# ============================================================================================
# Fixes a, b, c, d, e, f
# ============================================================================================
def _patch_fixes() -> None:
    import torch
    run, mmsa = _mod("MMSA.run"), _mod("MMSA")
    _set(run, "torch", _TorchProxy(torch))
    for name in ("MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                 "MMSA.trains.missingTask.TFR_NET"):
        _set(_mod(name), "ReduceLROnPlateau", ReduceLROnPlateauCompat())
    _set(run, "_set_logger", _wrap_set_logger(run._set_logger))
    _set(run, "_run", _wrap_run(run._run))
    mmsa_run = _wrap_mmsa_run(run.MMSA_run)
    mmsa_test = _wrap_mmsa_test(run.MMSA_test)
    for module in (run, mmsa):
        _set(module, "MMSA_run", mmsa_run)
        _set(module, "MMSA_test", mmsa_test)


# ---- a. CPU fallback -----------------------------------------------------------------------
class _CudaProxy:
    """``torch.cuda`` for ``MMSA.run``: ``set_device`` ignores CPU devices."""

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda

    def set_device(self, device: Any) -> None:
        import torch
        if not isinstance(device, int) and torch.device(device).type == "cpu":
            _warn_cpu_fallback()
            return
        self._cuda.set_device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cuda, name)


class _TorchProxy:
    """``torch`` as ``MMSA.run`` sees it: everything delegates, except :class:`_CudaProxy`."""

    def __init__(self, torch_module: Any) -> None:
        self._torch = torch_module
        self.cuda = _CudaProxy(torch_module.cuda)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def __repr__(self) -> str:
        return f"<khar_mmsa proxy of {self._torch!r}>"


def _warn_cpu_fallback() -> None:
    """One warning per ``MMSA_run`` call that asked for a GPU on a machine without CUDA."""
    ctx = _current_run()
    if ctx is not None and (not ctx.wanted_gpu or ctx.warned_cpu):
        return
    if ctx is not None:
        ctx.warned_cpu = True
    logger.warning("CUDA is not available: running on the CPU (gpu_ids asked for a GPU).")


def _cuda_available() -> bool:
    import torch
    return bool(torch.cuda.is_available())


# ---- b. ReduceLROnPlateau(verbose=...) -----------------------------------------------------
class ReduceLROnPlateauCompat:
    """Stands in for ``ReduceLROnPlateau`` in MMSA's trainer modules: drops ``verbose=``.

    Calling it returns a real :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`.
    """

    def __call__(self, optimizer: Any, *args: Any, verbose: Any = None, **kwargs: Any) -> Any:
        from torch.optim.lr_scheduler import ReduceLROnPlateau
        return ReduceLROnPlateau(optimizer, *args, **kwargs)

    def __repr__(self) -> str:
        return "<ReduceLROnPlateau without verbose= (khar_mmsa)>"


# ---- per-call state ------------------------------------------------------------------------
@dataclass
class _RunContext:
    """State of one patched ``MMSA_run`` call (thread-local)."""

    wanted_gpu: bool = False
    warned_cpu: bool = False
    results: List[Dict[str, Any]] = field(default_factory=list)
    handlers: List[logging.Handler] = field(default_factory=list)
    features: Dict[Tuple[str, int, int], Any] = field(default_factory=dict)


def _current_run() -> Optional[_RunContext]:
    return getattr(_TLS, "run", None)


# ---- c. MMSA_run: results CSV, num_workers, handlers ----------------------------------------
def _wrap_mmsa_run(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args: Any, **kwargs: Any) -> Optional[Dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        explicit = set(bound.arguments)
        bound.apply_defaults()
        call = dict(bound.arguments)
        cuda = _cuda_available()
        if "num_workers" not in explicit and not cuda:
            call["num_workers"] = 0
        ctx = _RunContext(wanted_gpu=bool(call["gpu_ids"]) and not cuda)
        real_res_dir = Path(call["res_save_dir"] or Path.home() / "MMSA" / "results")
        private = None if call["is_tune"] else tempfile.mkdtemp(prefix="mmsa-results-")
        if private is not None:
            call["res_save_dir"] = private
        previous, _TLS.run = _current_run(), ctx
        try:
            original(**call)
            if private is None:
                return None
            seeds = list(call["seeds"]) or list(MMSA_DEFAULT_SEEDS)
            row = summarize_results(str(call["model_name"]).lower(), ctx.results, seeds)
            csv_file = results_csv_path(real_res_dir, call["dataset_name"])
            append_result_row(csv_file, row)
            logger.info(f"Results saved to {csv_file}.")
            return row
        finally:
            _TLS.run = previous
            _remove_handlers(ctx.handlers)
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
    return MMSA_run


def results_csv_path(res_save_dir: os.PathLike, dataset_name: str) -> Path:
    """Where a normal run's results go: ``<res_save_dir>/normal/<dataset>.csv`` (as MMSA)."""
    return Path(res_save_dir) / "normal" / f"{str(dataset_name).lower()}.csv"


def summarize_results(model_name: str, results: Sequence[Mapping[str, Any]],
                      seeds: Sequence[int]) -> Dict[str, Any]:
    """One CSV row: ``Model``, ``seeds``, then ``<Metric>`` (mean) and ``<Metric>_std`` per metric.

    Values are ``round(x * 100, 2)`` over the seeds (MMSA's convention), as Python floats.
    Metric keys come from the first seed; non-numeric entries are skipped.
    """
    import numpy as np
    if not results:
        raise ValueError(f"{model_name}: no per-seed results to summarise")
    row: Dict[str, Any] = {"Model": model_name, "seeds": " ".join(str(s) for s in seeds)}
    for key, first in results[0].items():
        if not _is_number(first):
            logger.debug(f"results: skipping non-numeric metric {key!r}")
            continue
        values = np.array([float(r[key]) for r in results], dtype=np.float64)
        row[key] = round(float(np.mean(values)) * 100, 2)
        row[f"{key}_std"] = round(float(np.std(values)) * 100, 2)
    return row


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (bool, str, bytes))


_CSV_THREAD_LOCK = threading.Lock()
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")


def append_result_row(csv_file: os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to ``csv_file`` safely across threads and processes.

    Holds an exclusive ``fcntl.flock`` on ``<csv_file>.lock`` while it reads the CSV, adds the
    row (columns are unioned; MMSA-format tuple cells are converted) and writes a temporary file
    in the same folder that atomically replaces the CSV.
    """
    import pandas as pd
    path = Path(csv_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _CSV_THREAD_LOCK, _file_lock(path.with_name(path.name + ".lock")):
        frames = []
        if path.is_file() and path.stat().st_size > 0:
            frames.append(_split_legacy_cells(pd.read_csv(path)))
        frames.append(pd.DataFrame([dict(row)]))
        frames = [f for f in frames if not f.empty]
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        _atomic_write_csv(table, path)


class _file_lock:
    """Context manager: exclusive ``flock`` on a sidecar file (POSIX; a no-op elsewhere)."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self._fd: Optional[int] = None

    def __enter__(self) -> "_file_lock":
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("fcntl is unavailable: results CSV written without a file lock")
            return self
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _atomic_write_csv(table: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_legacy_cell(cell: Any) -> Optional[Tuple[float, float]]:
    """``"(np.float64(50.0), np.float64(0.0))"`` or ``"(50.0, 0.0)"`` -> (50.0, 0.0), else None."""
    if not isinstance(cell, str):
        return None
    text = _NUMPY_SCALAR.sub(r"\1", cell.strip())
    if not (text.startswith("(") and text.endswith(")")):
        return None
    parts = text[1:-1].split(",")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def _split_legacy_cells(table: Any) -> Any:
    """Columns of MMSA's ``(mean, std)`` cells become ``<col>`` and ``<col>_std`` floats."""
    for col in list(table.columns):
        if col in ("Model", "seeds") or table[col].dtype.kind in "biuf":
            continue
        parsed = [_parse_legacy_cell(c) for c in table[col]]
        if not any(p is not None for p in parsed):
            continue
        means = [p[0] if p else _to_float(c) for p, c in zip(parsed, table[col])]
        stds = [p[1] if p else float("nan") for p in parsed]
        table[col] = means
        std_col = f"{col}_std"
        if std_col in table.columns:
            table[std_col] = table[std_col].where(table[std_col].notna(), stds)
        else:
            table.insert(table.columns.get_loc(col) + 1, std_col, stds)
    return table


def _to_float(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return float("nan")


# ---- d. log handlers -----------------------------------------------------------------------
_ORPHAN_HANDLERS: List[logging.Handler] = []


def _wrap_set_logger(original: Callable) -> Callable:
    @functools.wraps(original)
    def _set_logger(*args: Any, **kwargs: Any) -> logging.Logger:
        mmsa_logger = logging.getLogger("MMSA")
        before = list(mmsa_logger.handlers)
        result = original(*args, **kwargs)
        added = [h for h in mmsa_logger.handlers if h not in before]
        ctx = _current_run()
        if ctx is not None:
            ctx.handlers.extend(added)  # removed when that MMSA_run call returns
        else:  # called outside a patched MMSA_run: keep only the newest pair
            _remove_handlers(_ORPHAN_HANDLERS)
            _ORPHAN_HANDLERS[:] = added
        return result
    return _set_logger


def _remove_handlers(handlers: List[logging.Handler]) -> None:
    mmsa_logger = logging.getLogger("MMSA")
    for handler in handlers:
        mmsa_logger.removeHandler(handler)
        handler.close()
    handlers.clear()


# ---- e. stale checkpoints ------------------------------------------------------------------
def _wrap_run(original: Callable) -> Callable:
    @functools.wraps(original)
    def _run(args: Any, num_workers: int = 4, is_tune: bool = False,
             from_sena: bool = False) -> Any:
        checkpoint = Path(args["model_save_path"])
        _remove_stale_checkpoint(checkpoint)
        try:
            result = original(args, num_workers, is_tune, from_sena)
        except AssertionError as exc:
            if checkpoint.exists():
                raise
            raise MissingCheckpointError(
                f"{args['model_name']} on {args['dataset_name']}: training finished without "
                f"writing a checkpoint to {checkpoint}. No epoch improved the validation "
                f"{args.get('KeyEval')!r} (MMSA starts a 'max' metric's best at 0); use "
                f"KeyEval 'Loss' or check the data and learning rate.") from exc
        ctx = _current_run()
        if ctx is not None and not is_tune and not from_sena:
            ctx.results.append(dict(result))
        return result
    return _run


def _remove_stale_checkpoint(checkpoint: Path) -> None:
    if checkpoint.exists():
        checkpoint.unlink()
        logger.info(f"Removed {checkpoint} left by an earlier run, so that only this run's "
                    f"training can produce the model that is tested.")


# ---- f. MMSA_test on CPU -------------------------------------------------------------------
def _wrap_mmsa_test(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_test(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.arguments["gpu_id"] >= 0 and not _cuda_available():
            logger.warning(f"CUDA is not available: MMSA_test runs on the CPU "
                           f"(gpu_id={bound.arguments['gpu_id']}).")
            bound.arguments["gpu_id"] = -1
        return original(*bound.args, **bound.kwargs)
    return MMSA_test


# ============================================================================================
# Safe loading and validation
# ============================================================================================
def _patch_loading() -> None:
    run, data_loader = _mod("MMSA.run"), _mod("MMSA.data_loader")
    _set(data_loader, "pickle", _PickleShim())
    _set(run, "MMDataLoader", _wrap_loader(run.MMDataLoader))


def _optional_module(name: str) -> Optional[Any]:
    """``import name``, or None when that very module does not exist (other errors propagate)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def _feature_paths(args: Mapping[str, Any]) -> List[str]:
    """The pickle files MMSA's ``MMDataset`` will open for ``args``, in order, deduplicated."""
    paths = [args.get("custom_feature") or args.get("featurePath")]
    paths += [args.get(k) for k in ("feature_T", "feature_A", "feature_V")]
    out: List[str] = []
    for p in paths:
        if p and str(p) not in out:
            out.append(str(p))
    return out


def _file_key(path: str) -> Tuple[str, int, int]:
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except OSError:
        return str(resolved), -1, -1
    return str(resolved), st.st_mtime_ns, st.st_size


def _load_and_validate(path: str, args: Mapping[str, Any]) -> Any:
    """Read ``path`` with the restricted unpickler and validate it (hooks of other modules)."""
    safe_io = _optional_module("khar_mmsa.safe_io")
    if safe_io is not None:
        data = safe_io.load_pickle(path, trusted=bool(args.get("trust_pickle", False)))
    else:
        logger.debug("khar_mmsa.safe_io is absent: plain pickle for %s", path)
        with open(path, "rb") as f:
            data = pickle.load(f)
    validation = _optional_module("khar_mmsa.validation")
    if validation is not None:
        validation.validate_features(data, args, source=str(path))
    return data


class _preloaded_features:
    """Within the block, ``MMSA.data_loader.pickle.load`` returns already-loaded objects.

    Files are read and validated once per cache: the running ``MMSA_run`` call's when there is
    one, else a cache local to the block.  A block nested in another reuses its objects.
    """

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.args = args
        self.previous: Optional[Dict[str, Any]] = None

    def __enter__(self) -> Dict[str, Any]:
        self.previous = getattr(_TLS, "preloaded", None)
        ctx = _current_run()
        cache = ctx.features if ctx is not None else {}
        preloaded = dict(self.previous or {})
        for path in _feature_paths(self.args):
            key = _file_key(path)
            if key[0] in preloaded:
                continue
            if key not in cache:
                cache[key] = _load_and_validate(path, self.args)
            preloaded[key[0]] = cache[key]
        _TLS.preloaded = preloaded
        return preloaded

    def __exit__(self, *exc: Any) -> None:
        _TLS.preloaded = self.previous


class _PickleShim:
    """``pickle`` as ``MMSA.data_loader`` sees it: ``load`` serves pre-loaded feature files.

    A file that was not pre-loaded is read with the restricted unpickler (plain ``pickle`` if
    ``khar_mmsa.safe_io`` is absent).  Every other attribute is the real :mod:`pickle`'s.
    """

    def load(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(file, "name", None)
        preloaded = getattr(_TLS, "preloaded", None) or {}
        if isinstance(name, (str, os.PathLike)):
            key = str(Path(name).resolve())
            if key in preloaded:
                return preloaded[key]
        safe_io = _optional_module("khar_mmsa.safe_io")
        if safe_io is None:
            return pickle.load(file, *args, **kwargs)
        return safe_io.load_pickle_stream(file, trusted=False, source=str(name))

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


def _wrap_loader(original: Callable) -> Callable:
    @functools.wraps(original)
    def MMDataLoader(args: Any, num_workers: int) -> Dict[str, Any]:
        with _preloaded_features(args):
            loaders = original(args, num_workers)
        _warn_update_epochs(args, loaders)
        return loaders
    return MMDataLoader


def _warn_update_epochs(args: Mapping[str, Any], loaders: Mapping[str, Any]) -> None:
    """MulT/Self-MM/MISA/TFR-Net step every ``update_epochs`` batches and drop the remainder."""
    every = args.get("update_epochs")
    batches = len(loaders["train"])
    if every and int(every) > batches:
        logger.warning(
            f"update_epochs={every} but the training set has only {batches} batch(es) per epoch: "
            f"{args['model_name']} steps its optimizer only after {every} batches, i.e. less than "
            f"once per epoch, so it may stop early before it ever trains. Pass "
            f"config={{'update_epochs': {max(batches, 1)}}} or a smaller batch_size.")
