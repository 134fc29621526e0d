"""What a new user sees in the first hour: a hint when the paper's model meets tiny data, and the
seed's value (not its position) in the per-epoch line -- through ``MMSA_run``."""
from __future__ import annotations

import logging

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.config import KHaRConfig
from khar_mmsa.demo import KHAR_DEMO_CONFIG
from khar_mmsa.training.trainer import PAPER_SIZE_MIN_TRAIN_CLIPS, warn_if_paper_size_on_small_data
from MMSA import MMSA_run


def test_paper_size_on_tiny_data_says_so_and_epoch_lines_name_the_seed(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                     fast_mmsa, caplog):
    config = dict(pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), epochs=1, early_stop=1,
                  batch_size=8, pretrain_adapters=False, save_curves=False, encoder_heads=2, adapter_heads=2)
    with caplog.at_level(logging.INFO, logger="MMSA"):
        MMSA_run("khar", "mosi", config=config, **dict(mmsa_run_kwargs, seeds=[7]))
    hints = [r for r in caplog.records if "has the paper's size" in r.getMessage()]
    assert len(hints) == 1 and hints[0].levelno == logging.WARNING
    # the size it suggests is the demo's, as the message says
    assert "--set modal_dim=64 --set encoder_layers=2, as the demo does" in hints[0].getMessage()
    assert {k: KHAR_DEMO_CONFIG[k] for k in ("modal_dim", "encoder_layers")} == {"modal_dim": 64, "encoder_layers": 2}
    assert "EPOCH-(khar) seed 7 epoch 1/1" in caplog.text


def test_no_hint_for_a_smaller_model_or_enough_data(caplog):
    paper = KHaRConfig(dataset_name="mosi")
    small = KHaRConfig(dataset_name="mosi", modal_dim=32)
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        assert warn_if_paper_size_on_small_data(paper, 24)
        assert not warn_if_paper_size_on_small_data(small, 24)
        assert not warn_if_paper_size_on_small_data(paper, PAPER_SIZE_MIN_TRAIN_CLIPS)
    assert len([r for r in caplog.records if "paper's size" in r.getMessage()]) == 1
