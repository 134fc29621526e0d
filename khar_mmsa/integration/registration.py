"""Registration: what ``import khar_mmsa`` adds to MMSA 2.2.1, and the fixes MMSA needs to run.

MMSA has no registry; it builds its tables inside functions, at call time.  :func:`register`
(idempotent) therefore wraps those functions so that they *add* our keys and otherwise do
exactly what they did:

* ``AMIO.__init__`` / ``ATIO.__init__``: model key ``'khar'`` (:data:`EXTRA_MODELS`,
  :data:`EXTRA_TRAINERS`, imported on first use);
* ``MMDataset.__init__`` / ``MetricsTop.__init__``: dataset key ``'simsv2'``, loaded and scored by
  MMSA's SIMS code (:data:`EXTRA_DATASETS`);
* ``get_config_regression`` / ``get_config_tune`` (in ``MMSA.config``, ``MMSA.run``, ``MMSA``): with
  MMSA's default config file, a model or dataset MMSA's JSON lacks is read from ours
  (:func:`.configs.config_for`); what MMSA's JSON has is read by MMSA's getter as before;
* ``SUPPORTED_MODELS`` / ``SUPPORTED_DATASETS``: ``'KHaR'`` / ``'SIMSV2'`` appended;
* ``MMSA_run`` / ``MMSA_test`` (in ``MMSA.run`` and ``MMSA``): a call for ``'khar'`` goes to our
  runner (:func:`.runner.run`) / :func:`.mmsa_test.mmsa_test`; every other call goes to MMSA's
  own function, unchanged;
* ``MMSA.data_loader.pickle``: serves feature files our runner has already read with the
  restricted unpickler and checked (:mod:`.features`); any other file is read with the restricted
  unpickler too (``trust_pickle`` in the run's config: ``pickle.load`` as before);

plus the fixes of :mod:`.mmsa_fixes`, and ``__builtins__`` of ``MMSA.data_loader`` and
``MMSA.run`` so that ``importlib.reload`` of either keeps our ``pickle`` and ``torch``
(:mod:`.reloads`).  Each replacement is recorded as ``(object, attribute, original)``;
:func:`unregister` puts every original back.  Nothing else in MMSA changes: results
files, checkpoints, tune mode and logging of MMSA's own models stay MMSA's.

A ``MMSA_run`` bound before khar_mmsa was imported (``from MMSA import MMSA_run`` first, when MMSA was
already imported) is MMSA's own function: called for ``'khar'`` it stops at its first step, the
config lookup, with :class:`ImportOrderError` saying what to do.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Tuple

logger = logging.getLogger("MMSA")

_MISSING = object()


class ImportOrderError(RuntimeError):
    """MMSA's own ``MMSA_run`` was called for a khar-mmsa model."""


@dataclass(frozen=True)
class LazyClass:
    """A class named by module and attribute, imported on first use (``LazyClass(...)(args)``)."""

    module: str
    name: str

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


#: Extra model keys for ``AMIO``'s ``MODEL_MAP``.
EXTRA_MODELS: Dict[str, LazyClass] = {"khar": LazyClass("khar_mmsa.model.khar", "KHaR")}
@dataclass(frozen=True)
class LazyTrainer(LazyClass):
    """A trainer class imported on first use and built as ``cls(args, metrics=...)`` with MMSA's
    metric function for the dataset (the runner puts ``seed``, ``verbose_level``, ``log_dir`` and
    ``callbacks`` into ``args``)."""

    def __call__(self, args: Mapping[str, Any]) -> Any:
        return self.resolve()(args, metrics=metrics_for(args["dataset_name"]))


#: Extra model keys for ``ATIO``'s ``TRAIN_MAP``.
EXTRA_TRAINERS: Dict[str, LazyClass] = {"khar": LazyTrainer("khar_mmsa.training.trainer", "KHaRTrainer")}
#: Extra dataset keys -> the MMSA dataset whose loader path and metrics they share.
EXTRA_DATASETS: Dict[str, str] = {"simsv2": "sims"}


@dataclass
class _Record:
    obj: Any
    attr: str
    original: Any  # the raw value from vars(obj), or _MISSING


_RECORDS: List[_Record] = []
_LOCK = threading.RLock()


def mmsa_module(name: str) -> Any:
    """An MMSA module by dotted name (``MMSA.models.AMIO`` the module, not the class)."""
    return importlib.import_module(name)


def _set(obj: Any, attr: str, value: Any) -> None:
    _RECORDS.append(_Record(obj, attr, vars(obj).get(attr, _MISSING)))
    setattr(obj, attr, value)


def _restore_all() -> None:
    while _RECORDS:
        rec = _RECORDS.pop()
        if rec.original is _MISSING:
            delattr(rec.obj, rec.attr)
        else:
            setattr(rec.obj, rec.attr, rec.original)


def register() -> None:
    """Add khar-mmsa's keys to MMSA and apply the fixes (idempotent; undone on a failure)."""
    with _LOCK:
        if _RECORDS:
            return
        try:
            _add_models()
            _add_datasets()
            _add_configs()
            _add_entry_points()
            _apply_fixes()
            _keep_over_reloads()
        except BaseException:
            _restore_all()
            raise
        logger.debug(f"khar_mmsa: {len(_RECORDS)} MMSA names registered")


def unregister() -> None:
    """Put back every MMSA name :func:`register` replaced."""
    with _LOCK:
        _restore_all()


def is_registered() -> bool:
    return bool(_RECORDS)


def registered_names() -> List[Tuple[Any, str]]:
    """The ``(object, attribute)`` pairs currently replaced, in order."""
    return [(r.obj, r.attr) for r in _RECORDS]


def is_extra_model(name: Any) -> bool:
    return str(name).lower() in EXTRA_MODELS


# -- models ------------------------------------------------------------------------------------
def _add_models() -> None:
    amio_cls = mmsa_module("MMSA.models.AMIO").AMIO
    atio_cls = mmsa_module("MMSA.trains.ATIO").ATIO
    _set(amio_cls, "__init__", _amio_init(amio_cls.__init__))
    _set(atio_cls, "__init__", _atio_init(atio_cls.__init__))
    mmsa, run = mmsa_module("MMSA"), mmsa_module("MMSA.run")
    models = list(run.SUPPORTED_MODELS) + ["KHaR"]
    datasets = list(run.SUPPORTED_DATASETS) + [k.upper() for k in EXTRA_DATASETS]
    for module in (run, mmsa):
        _set(module, "SUPPORTED_MODELS", models)
        _set(module, "SUPPORTED_DATASETS", datasets)


def _amio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Mapping[str, Any]) -> None:
        factory = EXTRA_MODELS.get(args["model_name"])
        if factory is None:
            original(self, args)
            self.MODEL_MAP.update(EXTRA_MODELS)
            return
        # MMSA 2.2.1's AMIO.__init__ for a key MMSA's MODEL_MAP lacks (same attributes)
        import torch.nn as nn
        nn.Module.__init__(self)
        self.MODEL_MAP = dict(EXTRA_MODELS)
        self.need_model_aligned = args.get("need_model_aligned", None)
        if self.need_model_aligned:
            self.alignNet = mmsa_module("MMSA.models.AMIO").AlignSubNet(args, "avg_pool")
            if "seq_lens" in args.keys():
                args["seq_lens"] = self.alignNet.get_seq_len()
        self.Model = factory(args)
    return __init__


def _atio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        self.TRAIN_MAP.update(EXTRA_TRAINERS)
    return __init__


def check_model_settings(args: Mapping[str, Any]) -> Any:
    """An extra model's own settings check (``check_config(args)`` on its class), before anything
    is read or built; returns what it returns (KHaR: its checked config), else None.  MMSA's own
    models are not checked here."""
    factory = EXTRA_MODELS.get(str(args.get("model_name", "")).lower())
    check = None if factory is None else getattr(factory.resolve(), "check_config", None)
    return None if check is None else check(args)


# -- datasets ----------------------------------------------------------------------------------
def _add_datasets() -> None:
    from khar_mmsa.integration.features import FeatureServer
    data_loader = mmsa_module("MMSA.data_loader")
    metrics_cls = mmsa_module("MMSA.utils.metricsTop").MetricsTop
    _set(data_loader.MMDataset, "__init__", _dataset_init(data_loader.MMDataset.__init__))
    _set(metrics_cls, "__init__", _metrics_init(metrics_cls.__init__))
    _set(data_loader, "pickle", FeatureServer(data_loader.pickle))
    run = mmsa_module("MMSA.run")
    _set(run, "pickle", FeatureServer(run.pickle))


def _dataset_init(original: Callable) -> Callable:
    from khar_mmsa.integration.features import trusting

    @functools.wraps(original)
    def __init__(self: Any, args: Any, mode: str = "train") -> None:
        name = args["dataset_name"]
        with trusting(args):  # MMSA reads the feature files in here
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


def _metrics_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, train_mode: str) -> None:
        original(self, train_mode)
        for extra, base in EXTRA_DATASETS.items():
            self.metrics_dict[extra.upper()] = self.metrics_dict[base.upper()]
    return __init__


def metrics_for(dataset_name: str, train_mode: str = "regression") -> Callable:
    """MMSA's metric function for a dataset key, ``(y_pred, y_true) -> dict`` ('simsv2': SIMS's)."""
    name = str(dataset_name).lower()
    metrics = mmsa_module("MMSA.utils.metricsTop").MetricsTop(train_mode)
    return metrics.getMetics(EXTRA_DATASETS.get(name, name))


# -- configs -----------------------------------------------------------------------------------
def _add_configs() -> None:
    config, run = mmsa_module("MMSA.config"), mmsa_module("MMSA.run")
    original_run = run.MMSA_run
    wrapped = {f"get_config_{kind}": _config_getter(getattr(config, f"get_config_{kind}"), kind, original_run)
               for kind in ("regression", "tune")}
    for module in (config, run, mmsa_module("MMSA")):
        for name, fn in wrapped.items():
            _set(module, name, fn)


def _config_getter(original: Callable, kind: str, original_mmsa_run: Callable) -> Callable:
    from khar_mmsa.integration.configs import config_for, is_default_config_file, knows

    @functools.wraps(original)
    def get_config(model_name: str, dataset_name: str, config_file: Any = "", *args: Any, **kwargs: Any) -> Any:
        if is_extra_model(model_name) and _same_function(sys._getframe(1).f_code, original_mmsa_run.__code__):
            raise ImportOrderError(
                f"MMSA_run({model_name!r}, ...) reached MMSA's own MMSA_run, bound before khar_mmsa "
                f"registered {model_name!r}. Import khar_mmsa before 'from MMSA import MMSA_run' "
                f"(or call khar_mmsa.run(...), which takes the same arguments).")
        if is_default_config_file(config_file, kind) and not knows(model_name, dataset_name, kind):
            random_choice = bool(kwargs.get("random_choice", args[0] if args else True))
            return config_for(model_name, dataset_name, kind, random_choice=random_choice)
        return original(model_name, dataset_name, config_file, *args, **kwargs)
    return get_config


def _same_function(code: Any, original: Any) -> bool:
    """``code`` is ``original``'s, or the same function's compiled again by ``importlib.reload``."""
    return code is original or (code.co_name, code.co_filename) == (original.co_name, original.co_filename)


# -- entry points ------------------------------------------------------------------------------
def _add_entry_points() -> None:
    run, mmsa = mmsa_module("MMSA.run"), mmsa_module("MMSA")
    mmsa_run, mmsa_test = _mmsa_run(run.MMSA_run), _mmsa_test(run.MMSA_test)
    for module in (run, mmsa):
        _set(module, "MMSA_run", mmsa_run)
        _set(module, "MMSA_test", mmsa_test)


def _mmsa_run(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if not is_extra_model(bound.arguments.get("model_name")):
            return original(*args, **kwargs)
        from khar_mmsa.integration.runner import run
        return run(**bound.arguments)
    return MMSA_run


def _mmsa_test(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_test(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        name = _test_model_name(bound.arguments.get("config"))
        if not is_extra_model(name):
            return original(*args, **kwargs)
        from khar_mmsa.integration.mmsa_test import mmsa_test
        return mmsa_test(**bound.arguments)
    return MMSA_test


def _test_model_name(config: Any) -> Any:
    """The model ``MMSA_test``'s ``config`` names: a dict's or a JSON file's ``model_name``, or a key."""
    import json
    from pathlib import Path
    if isinstance(config, Mapping):
        return config.get("model_name")
    if isinstance(config, (str, Path)) and Path(config).is_file():
        try:
            return json.loads(Path(config).read_text(encoding="utf-8")).get("model_name")
        except (ValueError, AttributeError, OSError):
            return None  # MMSA's own MMSA_test reports what is wrong with the file
    return config


# -- fixes -------------------------------------------------------------------------------------
def _apply_fixes() -> None:
    import torch

    from khar_mmsa.integration.mmsa_fixes import (VERBOSE_PLATEAU_MODULES, ReduceLROnPlateauWithoutVerbose,
                                                  TorchForMMSARun, plain_round)
    run = mmsa_module("MMSA.run")
    _set(run, "torch", TorchForMMSARun(torch))
    _set(run, "round", plain_round)
    for name in VERBOSE_PLATEAU_MODULES:
        _set(mmsa_module(name), "ReduceLROnPlateau", ReduceLROnPlateauWithoutVerbose())


def _keep_over_reloads() -> None:
    """A reloaded ``MMSA.data_loader`` / ``MMSA.run`` imports our ``pickle`` and ``torch`` again."""
    from khar_mmsa.integration.reloads import builtins_importing
    for module in (mmsa_module("MMSA.data_loader"), mmsa_module("MMSA.run")):
        ours = {r.attr: getattr(module, r.attr) for r in _RECORDS if r.obj is module and r.attr in ("pickle", "torch")}
        _set(module, "__builtins__", builtins_importing(ours))
