"""One parse of the KHaR config, where MMSA hands over its ``EasyDict``: MMSA's own ``AMIO(args)``
and ``ATIO().getTrain(args)`` convert it once each (the runner's single conversion per run is
watched in test_run_path.py); the model and the trainer take the typed config only."""
from __future__ import annotations

import importlib

import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.config import ConfigError, KHaRConfig
from khar_mmsa.model.khar import KHaR
from khar_mmsa.training.trainer import KHaRTrainer
from conftest import TINY_KHAR_SIZE

CONFIG = importlib.import_module("MMSA.config")


def _mmsa_args(tiny_bert, tmp_path, **overrides):
    """MMSA's merged args for 'khar' on SIMS, as MMSA_run builds them before its loader runs."""
    args = CONFIG.get_config_regression("khar", "sims")
    args.update(dict(TINY_KHAR_SIZE, pretrained=str(tiny_bert), seq_lens=[8, 10, 12], device="cpu",
                     train_mode="regression", cur_seed=1, model_save_path=str(tmp_path / "khar-sims.pth")))
    args.update(overrides)
    return args


def test_mmsa_classes_convert_their_args_once_each_and_share_the_values(tiny_bert, tmp_path, monkeypatch):
    calls = []
    original = KHaRConfig.from_mmsa_args.__func__

    def counted(cls, args, strict=True):
        calls.append(type(args).__name__)
        return original(cls, args, strict)
    monkeypatch.setattr(KHaRConfig, "from_mmsa_args", classmethod(counted))
    args = _mmsa_args(tiny_bert, tmp_path, learning_rate=2e-3, refiner="mlp")
    model = importlib.import_module("MMSA.models").AMIO(args)
    trainer = importlib.import_module("MMSA.trains").ATIO().getTrain(args)
    assert isinstance(model.Model, KHaR) and isinstance(trainer, KHaRTrainer)
    assert calls == ["EasyDict", "EasyDict"]  # one conversion per hand-over, of MMSA's own object
    assert model.Model.cfg == trainer.cfg
    assert (trainer.cfg.learning_rate, trainer.cfg.refiner, trainer.cfg.seq_lens) == (2e-3, "mlp", [8, 10, 12])


def test_a_bad_key_is_refused_where_mmsa_hands_over_its_args(tiny_bert, tmp_path):
    args = _mmsa_args(tiny_bert, tmp_path, moe_top_k=2)
    with pytest.raises(ConfigError, match="moe_top_k"):
        importlib.import_module("MMSA.models").AMIO(args)
    with pytest.raises(ConfigError, match="moe_top_k"):
        importlib.import_module("MMSA.trains").ATIO().getTrain(args)


def test_model_and_trainer_take_the_typed_config_only(tiny_bert, tmp_path):
    args = _mmsa_args(tiny_bert, tmp_path)
    with pytest.raises(TypeError, match="KHaRConfig.from_mmsa_args"):
        KHaR(args)
    with pytest.raises(TypeError, match="KHaRConfig.from_mmsa_args"):
        KHaRTrainer(args, config=dict(args))
