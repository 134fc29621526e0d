"""Registration's first step: what ``import khar_mmsa`` adds to MMSA 2.2.1 (:func:`add_to_mmsa`).

MMSA has no registry; it builds its tables inside functions, at call time.  :func:`add_to_mmsa`
therefore extends those functions so that they *add* our keys and otherwise do exactly what they did:

* ``AMIO.__init__`` / ``ATIO.__init__``: model key ``'khar'`` (:data:`.extra_models.EXTRA_MODELS`,
  :data:`.extra_models.EXTRA_TRAINERS`, imported on first use);
* ``MMDataset.__init__`` / ``MetricsTop.__init__``: dataset key ``'simsv2'``, loaded and scored by
  MMSA's SIMS code (:data:`.extra_models.EXTRA_DATASETS`);
* ``MMSA.data_loader.pickle``: serves feature files our runner has already read with the
  restricted unpickler and checked (:mod:`khar_mmsa.runs.features`); any other file is read by ``pickle.load``
  as before;
* the bodies of ``MMSA_run``, ``MMSA_test``, ``get_config_regression`` and ``get_config_tune``
  (:mod:`.entry_points`, the same way for all four, whatever the import order): a call for 'khar'
  goes to our runner (:func:`khar_mmsa.runs.runner.run`) / :func:`khar_mmsa.prediction.mmsa_test.mmsa_test`; with MMSA's default
  config file, a model or dataset MMSA's JSON lacks is read from ours (:func:`.configs.config_for`);
  every other call runs MMSA's own body, unchanged.

Each replacement goes through :func:`.replacements.replace`, which records the original.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from khar_mmsa.registration.entry_points import route_entry_points
from khar_mmsa.registration.extra_models import EXTRA_DATASETS, EXTRA_MODELS, EXTRA_TRAINERS
from khar_mmsa.runs.features import FeatureServer
from khar_mmsa.registration.replacements import mmsa_module, replace


def add_to_mmsa() -> None:
    """Add khar-mmsa's model, dataset, config entries and entry-point routes to MMSA."""
    _add_models()
    _add_datasets()
    route_entry_points()


# -- models ------------------------------------------------------------------------------------
def _add_models() -> None:
    amio_cls = mmsa_module("MMSA.models.AMIO").AMIO
    atio_cls = mmsa_module("MMSA.trains.ATIO").ATIO
    replace(amio_cls, "__init__", _amio_init(amio_cls.__init__))
    replace(atio_cls, "__init__", _atio_init(atio_cls.__init__))


def _amio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Mapping[str, Any]) -> None:
        factory = EXTRA_MODELS.get(args["model_name"])
        if factory is None:
            original(self, args)
            self.MODEL_MAP.update(EXTRA_MODELS)
            return
        # MMSA 2.2.1's AMIO.__init__ for a key MMSA's MODEL_MAP lacks (same attributes)
        from khar_mmsa.runs.model_and_trainer import init_amio
        init_amio(self, args, factory)
    return __init__


def _atio_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any) -> None:
        original(self)
        self.TRAIN_MAP.update(EXTRA_TRAINERS)
    return __init__


# -- datasets ----------------------------------------------------------------------------------
def _add_datasets() -> None:
    data_loader = mmsa_module("MMSA.data_loader")
    metrics_cls = mmsa_module("MMSA.utils.metricsTop").MetricsTop
    replace(data_loader.MMDataset, "__init__", _dataset_init(data_loader.MMDataset.__init__))
    replace(metrics_cls, "__init__", _metrics_init(metrics_cls.__init__))
    replace(data_loader, "pickle", FeatureServer(data_loader.pickle))


def _dataset_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, args: Any, mode: str = "train") -> None:
        name = args["dataset_name"]
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
