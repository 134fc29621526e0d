"""The model and dataset keys khar-mmsa adds to MMSA, and what the runner asks of them.

:data:`EXTRA_MODELS` / :data:`EXTRA_TRAINERS` are what MMSA's ``AMIO`` / ``ATIO`` tables gain
(:mod:`.additions`), for a caller that goes through MMSA's own classes: each takes MMSA's
``args`` and converts them once (:data:`EXTRA_SETTINGS`) before it builds the network or trainer,
which take the typed config only; the runner names KHaR's classes itself (:mod:`khar_mmsa.runs.model_and_trainer`).
:data:`EXTRA_DATASETS` maps each extra dataset key to the MMSA dataset whose loader and metrics it
shares.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

from khar_mmsa.registration.replacements import mmsa_module


@dataclass(frozen=True)
class LazyClass:
    """A class or function named by module and attribute, imported on first use (``LazyClass(...)(args)``)."""

    module: str
    name: str

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class LazyTrainer(LazyClass):
    """A trainer factory imported on first use and called as ``factory(args, metrics=...)`` with
    MMSA's metric function for the dataset."""

    def __call__(self, args: Mapping[str, Any]) -> Any:
        return self.resolve()(args, metrics=metrics_for(args["dataset_name"]))


_BUILDERS = "khar_mmsa.runs.model_and_trainer"
#: Extra model keys for ``AMIO``'s ``MODEL_MAP``: MMSA's ``args`` -> the network.
EXTRA_MODELS: Dict[str, LazyClass] = {"khar": LazyClass(_BUILDERS, "khar_network")}
#: Extra model keys for ``ATIO``'s ``TRAIN_MAP``: MMSA's ``args`` -> the trainer.
EXTRA_TRAINERS: Dict[str, LazyClass] = {"khar": LazyTrainer(_BUILDERS, "khar_trainer")}
#: The class each extra trainer factory builds (asked before training what its results row holds).
EXTRA_TRAINER_CLASSES: Dict[str, LazyClass] = {"khar": LazyClass(_BUILDERS, "khar_trainer_class")}
#: Each extra model's one conversion of MMSA's ``args`` into its checked, typed config.
EXTRA_SETTINGS: Dict[str, LazyClass] = {"khar": LazyClass(_BUILDERS, "khar_settings")}
#: Extra dataset keys -> the MMSA dataset whose loader path and metrics they share.
EXTRA_DATASETS: Dict[str, str] = {"simsv2": "sims"}


def is_extra_model(name: Any) -> bool:
    return str(name).lower() in EXTRA_MODELS


def metrics_for(dataset_name: str, train_mode: str = "regression") -> Callable:
    """MMSA's metric function for a dataset key, ``(y_pred, y_true) -> dict`` ('simsv2': SIMS's)."""
    name = str(dataset_name).lower()
    metrics = mmsa_module("MMSA.utils.metricsTop").MetricsTop(train_mode)
    return metrics.getMetics(EXTRA_DATASETS.get(name, name))


def check_model_settings(args: Mapping[str, Any]) -> Any:
    """An extra model's typed config of ``args`` (:data:`EXTRA_SETTINGS`; KHaR: the checked
    :class:`~khar_mmsa.config.KHaRConfig`), before anything is read or built; None for MMSA's own
    models (not checked here)."""
    convert = EXTRA_SETTINGS.get(str(args.get("model_name", "")).lower())
    return None if convert is None else convert(args)
