"""A damaged state file never blocks a run: through ``MMSA_run``, one that khar-mmsa wrote (its
``written_by`` marker) is set aside (kept, named in the log) and the work it recorded is done again."""
from __future__ import annotations

import math

import pandas as pd

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=1, early_stop=1, pretrain_epochs=1, save_curves=False)


def _run(tiny_features, tiny_bert, mmsa_run_kwargs, **overrides):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), **overrides)
    MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    return pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.tidy.csv")


def test_a_damaged_seeds_file_is_set_aside_and_every_seed_trains(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                fast_mmsa, caplog):
    models = mmsa_run_kwargs["model_save_dir"]
    models.mkdir(parents=True)
    seeds_file = models / "khar-mosi.pth.seeds.json"
    damaged = '{"written_by": "khar-mmsa seeds file", "key": "x", "results": {"1": {}}}'  # a seed with no metrics
    seeds_file.write_text(damaged)
    with caplog.at_level("WARNING", logger="MMSA"):
        table = _run(tiny_features, tiny_bert, mmsa_run_kwargs, pretrain_adapters=False)
    assert math.isfinite(table["MAE"].iloc[0])
    aside = models / "khar-mosi.pth.seeds.json.damaged-1"
    assert aside.read_text() == damaged
    assert "set aside as" in caplog.text and str(seeds_file) in caplog.text
    assert not seeds_file.exists()  # the run's own record is removed once its row is written


def test_a_damaged_adapter_cache_is_set_aside_and_the_adapters_pretrained_again(tiny_features, tiny_bert,
                                                                               mmsa_run_kwargs, fast_mmsa,
                                                                               caplog):
    models = mmsa_run_kwargs["model_save_dir"]
    models.mkdir(parents=True)
    cache = models / "khar-mosi-adapters.pt"
    import io

    import torch
    whole = io.BytesIO()
    torch.save({"written_by": "khar-mmsa adapter cache", "fingerprint": "x", "states": {}}, whole)
    truncated = whole.getvalue()[:200]  # ours (its marker comes first), cut off by a full disk
    cache.write_bytes(truncated)
    with caplog.at_level("INFO", logger="MMSA"):
        table = _run(tiny_features, tiny_bert, mmsa_run_kwargs, pretrain_adapters=True)
    assert math.isfinite(table["MAE"].iloc[0])
    assert (models / "khar-mosi-adapters.pt.damaged-1").read_bytes() == truncated
    assert "Pretraining adapters" in caplog.text and cache.is_file()  # made again


def test_a_damaged_tune_table_is_set_aside_and_the_search_starts_afresh(tmp_path, caplog):
    from khar_mmsa.tuning import hyperparameters, read_tune_csv
    table = tmp_path / "mosi-khar-by-valid.csv"
    table.write_text("candidate,Valid_Loss,selected_by\nnot json,0.5,valid Loss\n")
    with caplog.at_level("WARNING", logger="MMSA"):
        assert read_tune_csv(table, hyperparameters({"model_name": "khar"})) is None
    assert (tmp_path / "mosi-khar-by-valid.csv.damaged-1").is_file() and not table.exists()


def test_a_damaged_best_checkpoint_is_not_tested_and_the_seed_trains_again(tiny_features, tiny_bert,
                                                                         mmsa_run_kwargs, fast_mmsa, caplog):
    import pytest
    from khar_mmsa.training.loop import Callback

    class Stop(Callback):
        def on_epoch_end(self, state, loop):
            if state.epoch == 1:
                raise KeyboardInterrupt("stopped after epoch 1")

    models = mmsa_run_kwargs["model_save_dir"]
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_features, tiny_bert, mmsa_run_kwargs, pretrain_adapters=False, epochs=2, early_stop=2,
             callbacks=[Stop()])
    assert (models / "khar-mosi.pth.resume").is_file()
    best = models / "khar-mosi.pth"
    best.write_bytes(best.read_bytes()[:100])  # truncated, as by a full disk
    with caplog.at_level("INFO", logger="MMSA"):
        table = _run(tiny_features, tiny_bert, mmsa_run_kwargs, pretrain_adapters=False, epochs=2, early_stop=2)
    assert math.isfinite(table["MAE"].iloc[0])
    # the resume state records the SHA-256 of the checkpoint it wrote: this one differs, so it is not
    # this run's model (damaged or replaced); the seed trains from the start and writes its own
    assert "is not the file this seed's run wrote" in caplog.text
    assert "this seed trains from the start" in caplog.text and best.stat().st_size > 100
