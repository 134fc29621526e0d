"""Dataset key ``'simsv2'``: loaded and scored by MMSA's SIMS code.

``MMDataset.__init__`` loads it through MMSA's SIMS code path (T/A/V labels included), with the
feature files already read by :mod:`khar_mmsa.integration.loading`; ``MetricsTop.__init__`` maps
``'SIMSV2'`` to MMSA's SIMS metrics (:data:`EXTRA_DATASETS`).  :func:`metrics_for` is how other
:mod:`khar_mmsa` modules reach MMSA's metrics without importing MMSA internals.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict

from khar_mmsa.integration.registry import mmsa_module, set_attr

#: Extra dataset keys -> the MMSA dataset whose loader path and metrics they share.
EXTRA_DATASETS: Dict[str, str] = {"simsv2": "sims"}


def patch() -> None:
    """Teach ``MMDataset`` and ``MetricsTop`` the extra dataset keys."""
    dataset_cls = mmsa_module("MMSA.data_loader").MMDataset
    metrics_cls = mmsa_module("MMSA.utils.metricsTop").MetricsTop
    set_attr(dataset_cls, "__init__", _wrap_dataset_init(dataset_cls.__init__))
    set_attr(metrics_cls, "__init__", _wrap_metrics_init(metrics_cls.__init__))


def _wrap_dataset_init(original: Callable) -> Callable:
    from khar_mmsa.integration.loading import preloaded_features

    @functools.wraps(original)
    def __init__(self: Any, args: Any, mode: str = "train") -> None:
        name = args["dataset_name"]
        with preloaded_features(args):
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
    metrics = mmsa_module("MMSA.utils.metricsTop").MetricsTop(train_mode)
    return metrics.getMetics(EXTRA_DATASETS.get(name, name))
