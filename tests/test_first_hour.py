"""What a new user sees in the first hour: a hint when the paper's model meets tiny data, and the
seed's value (not its position) in the per-epoch line -- through ``MMSA_run``."""
from __future__ import annotations

import logging
import re

import pytest

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
    assert len(hints) == 1 and hints[0].levelno == logging.WARNING and "--set modal_dim=" in hints[0].getMessage()
    # the smaller size it suggests is the demo's, "as the demo does"
    suggested = dict(pair.split("=") for pair in re.findall(r"--set (\w+=\w+)", hints[0].getMessage()))
    assert {k: int(v) for k, v in suggested.items()} == {k: KHAR_DEMO_CONFIG[k] for k in suggested}
    assert {"modal_dim", "encoder_layers"} <= set(suggested) and "as the demo does" in hints[0].getMessage()
    assert "EPOCH-(khar) seed 7 epoch 1/1" in caplog.text


def test_no_hint_for_a_smaller_model_or_enough_data(caplog):
    paper = KHaRConfig(dataset_name="mosi")
    small = KHaRConfig(dataset_name="mosi", modal_dim=32)
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        assert warn_if_paper_size_on_small_data(paper, 24)
        assert not warn_if_paper_size_on_small_data(small, 24)
        assert not warn_if_paper_size_on_small_data(paper, PAPER_SIZE_MIN_TRAIN_CLIPS)
    assert len([r for r in caplog.records if "paper's size" in r.getMessage()]) == 1


@pytest.mark.parametrize("load, threads, hint", [(8.0, 2, True), (0.0, 1, False)])
def test_a_busy_cpu_with_more_threads_than_free_cores_gets_a_one_line_hint(load, threads, hint, tmp_path,
                                                                           mmsa_run_kwargs, monkeypatch, caplog):
    """At the start of a run (here one that then stops at its missing feature file)."""
    import os

    import torch
    from khar_mmsa.runs.features import FeatureFileNotFoundError
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with caplog.at_level(logging.INFO, logger="MMSA"), pytest.raises(FeatureFileNotFoundError):
            MMSA_run("khar", "mosi", config={"featurePath": str(tmp_path / "missing.pkl")}, **mmsa_run_kwargs)
    finally:
        torch.set_num_threads(before)
    hints = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Hint: torch uses")]
    assert len(hints) == int(hint)
    if hint:
        assert f"torch uses {threads} CPU threads" in hints[0] and "--threads 1" in hints[0]
