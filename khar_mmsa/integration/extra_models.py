"""The model and dataset keys khar-mmsa adds to MMSA, and what the runner asks of them.

:data:`EXTRA_MODELS` / :data:`EXTRA_TRAINERS` are what MMSA's ``AMIO`` / ``ATIO`` tables gain
(:mod:`.mmsa_additions`), for a caller that goes through MMSA's own classes; the runner names
KHaR's classes itself (:mod:`.model_and_trainer`).  :data:`EXTRA_DATASETS` maps each extra dataset
key to the MMSA dataset whose loader and metrics it shares.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

from khar_mmsa.integration.replacements import mmsa_module


@dataclass(frozen=True)
class LazyClass:
    """A class named by module and attribute, imported on first use (``LazyClass(...)(args)``)."""

    module: str
    name: str

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class LazyTrainer(LazyClass):
    """A trainer class imported on first use and built as ``cls(args, metrics=...)`` with MMSA's
    metric function for the dataset."""

    def __call__(self, args: Mapping[str, Any]) -> Any:
        return self.resolve()(args, metrics=metrics_for(args["dataset_name"]))


#: Extra model keys for ``AMIO``'s ``MODEL_MAP``.
EXTRA_MODELS: Dict[str, LazyClass] = {"khar": LazyClass("khar_mmsa.model.khar", "KHaR")}
#: Extra model keys for ``ATIO``'s ``TRAIN_MAP``.
EXTRA_TRAINERS: Dict[str, LazyClass] = {"khar": LazyTrainer("khar_mmsa.training.trainer", "KHaRTrainer")}
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
    """An extra model's own settings check (``check_config(args)`` on its class), before anything
    is read or built; returns what it returns (KHaR: its checked config), else None.  MMSA's own
    models are not checked here."""
    factory = EXTRA_MODELS.get(str(args.get("model_name", "")).lower())
    check = None if factory is None else getattr(factory.resolve(), "check_config", None)
    return None if check is None else check(args)
