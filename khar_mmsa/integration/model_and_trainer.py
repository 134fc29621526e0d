"""The model and the trainer one seed trains, named here.

For ``'khar'``: :class:`khar_mmsa.model.khar.KHaR` inside MMSA's ``AMIO`` wrapper (so checkpoints
keep MMSA's ``Model.`` keys) and :class:`khar_mmsa.training.trainer.KHaRTrainer`, both built from
the run's one checked :class:`~khar_mmsa.config.KHaRConfig` (given the shapes MMSA's loader read
from the data).  For MMSA's own models: MMSA's ``AMIO`` and its ``ATIO`` trainer, as ``MMSA_run``
builds them.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

from khar_mmsa.integration.extra_models import EXTRA_MODELS, is_extra_model, metrics_for
from khar_mmsa.integration.replacements import mmsa_module


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


def build_model_and_trainer(args: Any, settings: Optional[Any] = None) -> Tuple[Any, Any, Optional[Any]]:
    """``(model on args['device'], trainer, settings)`` for one seed of ``args`` (after MMSA's
    loader filled ``feature_dims``/``seq_lens``).

    'khar': ``settings`` is the run's checked KHaRConfig (None: checked from ``args`` here), given
    the data's shapes once (:meth:`~khar_mmsa.config.KHaRConfig.with_data_shapes`: the same object
    for every later seed) and passed to both KHaR and KHaRTrainer; the third item is that config.
    MMSA's models: MMSA's ``AMIO(args)`` and ``ATIO().getTrain(args)``, and None.
    """
    if not is_extra_model(args["model_name"]):
        model = mmsa_module("MMSA.models").AMIO(args).to(args["device"])
        return model, mmsa_module("MMSA.trains").ATIO().getTrain(args), None
    from khar_mmsa.model.khar import KHaR
    from khar_mmsa.training.trainer import KHaRTrainer
    check = getattr(KHaR, "check_config", None)
    if settings is None and check is not None:
        settings = check(args)
    shaped = []

    def network(run_args: Mapping[str, Any]) -> Any:
        if settings is None:  # a stand-in model class without a config of its own
            return KHaR(run_args)
        shaped.append(settings.with_data_shapes(run_args))
        return KHaR(shaped[0])

    amio_class = mmsa_module("MMSA.models").AMIO
    model = amio_class.__new__(amio_class)
    init_amio(model, args, network)
    model.to(args["device"])
    config = shaped[0] if shaped else None
    trainer = KHaRTrainer(args, metrics=metrics_for(args["dataset_name"]), **({"config": config} if config else {}))
    return model, trainer, config
