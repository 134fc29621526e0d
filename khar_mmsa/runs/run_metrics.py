"""The metrics a run reports, known before any work: what ``KeyEval`` may name and what the
results tables' headers must say.

Every regression trainer of MMSA 2.2.1 and KHaR's report MMSA's metric function's results for the
dataset (``MetricsTop('regression').getMetics(dataset)``), in its order, then ``Loss``
(``eval_results["Loss"] = ...`` in each ``do_test``).  The names are read from that function itself,
called once on four planted predictions, never copied by hand.
"""
from __future__ import annotations

import functools
from typing import Any, List, Mapping, Optional

from khar_mmsa.config.errors import ConfigError
from khar_mmsa.registration.extra_models import EXTRA_TRAINER_CLASSES, metrics_for

#: The metric every trainer adds after MMSA's metric function's (the L1 of the prediction).
LOSS_METRIC = "Loss"
#: The settings that name the validation metric: MMSA's ``KeyEval`` and KHaR's ``key_eval``.
KEY_EVAL_KEYS = ("KeyEval", "key_eval")


@functools.lru_cache(maxsize=None)
def _metric_names(dataset_name: str) -> tuple:
    import torch
    pred = torch.tensor([[-2.0], [-0.5], [0.5], [2.0]])
    true = torch.tensor([[-1.5], [-1.0], [1.0], [2.5]])
    return tuple(metrics_for(dataset_name)(pred, true)) + (LOSS_METRIC,)


def run_metrics(dataset_name: str) -> List[str]:
    """The metric names, in order, a regression run on ``dataset_name`` reports."""
    return list(_metric_names(str(dataset_name).lower()))


def result_columns(model_name: str, dataset_name: str) -> Optional[List[str]]:
    """The metric columns this run's results row will have, in order: :func:`run_metrics` for
    MMSA's models and for an extra model whose trainer says it reports them
    (``reports_mmsa_metrics``: KHaR's); None when not known before training (another trainer)."""
    trainer_class = EXTRA_TRAINER_CLASSES.get(str(model_name).lower())
    if trainer_class is not None and not getattr(trainer_class.resolve()(), "reports_mmsa_metrics", False):
        return None
    return run_metrics(dataset_name)


def check_key_eval(settings: Optional[Mapping[str, Any]], dataset_name: str) -> None:
    """``KeyEval`` / ``key_eval`` in ``settings`` (a call's ``config``, a run's ``args``) name a metric
    the run reports (:func:`run_metrics`), else one :class:`ConfigError` naming the key, before any
    work (a trainer would look the metric up only after the first epoch)."""
    names = run_metrics(dataset_name)
    for key in KEY_EVAL_KEYS:
        if settings and key in settings and settings[key] not in names:
            raise ConfigError(f"{key}={settings[key]!r} is not a metric of a run on {dataset_name}: one of "
                              f"{', '.join(names)} (case matters); nothing was trained")
