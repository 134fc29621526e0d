"""The model and the trainer one seed trains, named here.

For ``'khar'``: :class:`khar_mmsa.model.khar.KHaR` inside MMSA's ``AMIO`` wrapper (so checkpoints
keep MMSA's ``Model.`` keys) and :class:`khar_mmsa.training.trainer.KHaRTrainer`, both built from
the run's one checked :class:`~khar_mmsa.config.KHaRConfig` (given the shapes MMSA's loader read
from the data).  :func:`khar_settings` is the one place MMSA's ``EasyDict`` becomes that config, for
the runner and for MMSA's own ``AMIO(args)`` / ``ATIO().getTrain(args)`` (:func:`khar_network`,
:func:`khar_trainer`); ``model/`` and ``training/`` take the typed config only.  For MMSA's own
models: MMSA's ``AMIO`` and its ``ATIO`` trainer, as ``MMSA_run`` builds them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

from khar_mmsa.registration.extra_models import EXTRA_MODELS, is_extra_model, metrics_for
from khar_mmsa.registration.replacements import mmsa_module


def init_amio(amio: Any, args: Any, build_network: Callable[[Any], Any]) -> None:
    """MMSA 2.2.1's ``AMIO.__init__`` for a key MMSA's ``MODEL_MAP`` lacks (same attributes):
    MMSA's alignment network when ``need_model_aligned`` (it sets ``args['seq_lens']``), then
    ``amio.Model = build_network(args)``."""
    import torch.nn as nn
    nn.Module.__init__(amio)
    amio.MODEL_MAP = dict(EXTRA_MODELS)
    amio.need_model_aligned = args.get("need_model_aligned", None)
    if amio.need_model_aligned:
        amio.alignNet = mmsa_module("MMSA.models.AMIO").AlignSubNet(args, "avg_pool")
        if "seq_lens" in args.keys():
            args["seq_lens"] = amio.alignNet.get_seq_len()
    amio.Model = build_network(args)


def khar_settings(args: Mapping[str, Any]) -> Any:
    """The one conversion of MMSA's merged ``args`` into KHaR's checked, typed
    :class:`~khar_mmsa.config.KHaRConfig` (:meth:`~khar_mmsa.config.KHaRConfig.from_mmsa_args`;
    MMSA's and the runner's own keys ignored); raises :class:`~khar_mmsa.config.ConfigError` (or
    ``ConfigTypeError``) naming each bad key, its value and the allowed range.  The runner calls it
    before any data is read (:func:`khar_mmsa.registration.extra_models.check_model_settings`), MMSA's ``AMIO(args)`` /
    ``ATIO().getTrain(args)`` through :func:`khar_network` / :func:`khar_trainer`."""
    from khar_mmsa.config import KHaRConfig
    return KHaRConfig.from_mmsa_args(args)


def khar_network(args: Mapping[str, Any]) -> Any:
    """``MODEL_MAP['khar'](args)`` in MMSA's ``AMIO``: KHaR built from :func:`khar_settings`."""
    from khar_mmsa.model.khar import KHaR
    return KHaR(khar_settings(args))


def khar_trainer_class() -> type:
    """The class :func:`khar_trainer` builds (what the runner asks, before training, whether its
    results row holds MMSA's metrics: ``reports_mmsa_metrics``)."""
    from khar_mmsa.training.trainer import KHaRTrainer
    return KHaRTrainer


def khar_trainer(args: Mapping[str, Any], metrics: Optional[Callable] = None) -> Any:
    """``TRAIN_MAP['khar'](args)`` in MMSA's ``ATIO``: KHaRTrainer with :func:`khar_settings`."""
    return khar_trainer_class()(args, config=khar_settings(args), metrics=metrics)



def build_model_and_trainer(args: Any, settings: Optional[Any] = None) -> Tuple[Any, Any, Optional[Any]]:
    """``(model on args['device'], trainer, settings)`` for one seed of ``args`` (after MMSA's
    loader filled ``feature_dims``/``seq_lens``).

    'khar': ``settings`` is the run's checked KHaRConfig (None: :func:`khar_settings` of ``args``,
    here), given the data's shapes once (:meth:`~khar_mmsa.config.KHaRConfig.with_data_shapes`: the
    same object for every later seed) and passed to both KHaR and KHaRTrainer, which take the typed
    config only; the third item is that config.
    MMSA's models: MMSA's ``AMIO(args)`` and ``ATIO().getTrain(args)``, and None.
    """
    if not is_extra_model(args["model_name"]):
        model = mmsa_module("MMSA.models").AMIO(args).to(args["device"])
        return model, mmsa_module("MMSA.trains").ATIO().getTrain(args), None
    from khar_mmsa.model.khar import KHaR
    from khar_mmsa.training.trainer import KHaRTrainer
    checked = khar_settings(args) if settings is None else settings
    shaped = []

    def network(run_args: Mapping[str, Any]) -> Any:
        shaped.append(checked.with_data_shapes(run_args))
        return KHaR(shaped[0])

    amio_class = mmsa_module("MMSA.models").AMIO
    model = amio_class.__new__(amio_class)
    init_amio(model, args, network)
    model.to(args["device"])
    trainer = KHaRTrainer(args, config=shaped[0], metrics=metrics_for(args["dataset_name"]))
    return model, trainer, shaped[0]
