"""Model key ``'khar'``: MMSA's ``AMIO`` / ``ATIO`` learn our model and trainer.

``AMIO.__init__`` / ``ATIO.__init__`` add ``'khar'`` to ``MODEL_MAP`` / ``TRAIN_MAP``, resolved
lazily to ``khar_mmsa.model.khar.KHaR`` / ``khar_mmsa.training.trainer.KHaRTrainer``
(:data:`EXTRA_MODELS`, :data:`EXTRA_TRAINERS`).  ``SUPPORTED_MODELS`` / ``SUPPORTED_DATASETS``
(informational lists in ``MMSA.run`` and ``MMSA``) gain ``'KHaR'`` / ``'SIMSV2'``.
:func:`check_config` runs an extra model's own settings check (a ``check_config(args)`` on its
class) before MMSA reads any data or builds any model (called by :mod:`.loading`).
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

from khar_mmsa.integration.datasets import EXTRA_DATASETS
from khar_mmsa.integration.registry import mmsa_module, set_attr


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
@dataclass(frozen=True)
class LazyTrainer(LazyClass):
    """A trainer class imported on first use and built as ``cls(args, metrics=...)`` with MMSA's
    metric function for the dataset and the running ``MMSA_run`` call's options in a copy of
    ``args`` (``seed``, ``verbose_level``, ``log_dir``)."""

    def __call__(self, args: Mapping[str, Any]) -> Any:
        import torch
        from khar_mmsa.integration.datasets import metrics_for
        from khar_mmsa.integration.run_context import current_run_options
        options = current_run_options() or {}
        args = type(args)(dict(args))
        args.setdefault("seed", torch.initial_seed())  # MMSA's setup_seed just set it
        for key in ("verbose_level", "log_dir"):
            if options.get(key) is not None:
                args.setdefault(key, options[key])
        return self.resolve()(args, metrics=metrics_for(args["dataset_name"]))


#: Extra model keys for ``ATIO``'s ``TRAIN_MAP``.
EXTRA_TRAINERS: Dict[str, LazyClass] = {"khar": LazyTrainer("khar_mmsa.training.trainer", "KHaRTrainer")}


def patch() -> None:
    """Register ``'khar'`` with ``AMIO``/``ATIO`` and the informational supported lists."""
    amio_cls = mmsa_module("MMSA.models.AMIO").AMIO
    atio_cls = mmsa_module("MMSA.trains.ATIO").ATIO
    set_attr(amio_cls, "__init__", _wrap_amio_init(amio_cls.__init__))
    set_attr(atio_cls, "__init__", _wrap_atio_init(atio_cls.__init__))
    mmsa, run = mmsa_module("MMSA"), mmsa_module("MMSA.run")
    models = list(run.SUPPORTED_MODELS) + ["KHaR"]
    datasets = list(run.SUPPORTED_DATASETS) + [k.upper() for k in EXTRA_DATASETS]
    for module in (run, mmsa):
        set_attr(module, "SUPPORTED_MODELS", models)
        set_attr(module, "SUPPORTED_DATASETS", datasets)


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
        amio.alignNet = mmsa_module("MMSA.models.AMIO").AlignSubNet(args, "avg_pool")
        if "seq_lens" in args.keys():
            args["seq_lens"] = amio.alignNet.get_seq_len()
    amio.Model = factory(args)


def check_config(args: Mapping[str, Any]) -> None:
    """Check the settings of an extra model (``'khar'``) before anything is read or built.

    The model class's ``check_config(args)``, when it has one, raises on a bad setting; MMSA's own
    models and classes without it are not checked here."""
    factory = EXTRA_MODELS.get(str(args.get("model_name", "")).lower())
    if factory is None:
        return
    check = getattr(factory.resolve(), "check_config", None)
    if check is not None:
        check(args)


def _wrap_atio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        self.TRAIN_MAP.update(EXTRA_TRAINERS)
    return __init__
