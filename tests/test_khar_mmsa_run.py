"""MMSA_run('khar', d, gpu_ids=[0]) on a CPU-only machine for every dataset, real feature widths."""
import math

import pandas as pd
import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run

TINY_KHAR = dict(modal_dim=16, encoder_layers=1, encoder_heads=2, encoder_ff_dim=16, text_adapters=1,
                 av_adapters=1, adapter_heads=2, adapter_inner_layers=1, expert_hidden_dim=16,
                 fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8, epochs=2, early_stop=1,
                 batch_size=8, pretrain_epochs=1)
METRIC = {"mosi": "Mult_acc_7", "mosei": "Mult_acc_7", "sims": "Mult_acc_5", "simsv2": "Mult_acc_5"}


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_mmsa_run_khar_writes_a_finite_row(dataset, tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa):
    # adapter pretraining on the datasets with unimodal labels exercises the T/A/V path
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features(dataset)),
                  pretrain_adapters=dataset in ("sims", "simsv2"))
    MMSA_run("khar", dataset, config=config, **mmsa_run_kwargs)
    table = pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / f"{dataset}.csv")
    assert table["Model"].tolist() == ["khar"]
    for column in ("MAE", "Corr", METRIC[dataset]):
        value = table[column].iloc[0]
        assert table[column].dtype.kind == "f" and math.isfinite(value), (column, value)
    saved = mmsa_run_kwargs["model_save_dir"]
    assert (saved / f"khar-{dataset}.pth").is_file()
    assert not (saved / f"khar-{dataset}.pth.resume").exists()
    assert (saved / f"khar-{dataset}-adapters.pt").is_file() == config["pretrain_adapters"]


def test_unknown_khar_key_is_refused_before_training(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), top_kk=2)
    with pytest.raises(khar_mmsa.ConfigError, match="did you mean 'top_k'"):
        MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)


def test_mmsa_run_khar_with_the_speed_switches(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa):
    """length_bucketing and amp (bf16 autocast; on a CPU here) through MMSA_run's config."""
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")),
                  pretrain_adapters=False, length_bucketing=True, amp=True)
    MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    table = pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.csv")
    assert math.isfinite(table["MAE"].iloc[0])
    log = "".join(p.read_text() for p in mmsa_run_kwargs["log_dir"].glob("*.log"))
    assert "Length bucketing:" in log

# ============================================================================================
# Adapter reuse, keyed by content (issue 7, item 6)
# ============================================================================================
import logging  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from khar_mmsa.safe_io import safe_torch_load  # noqa: E402

REUSED = "Reusing pretrained adapters"
PRETRAINING = "Pretraining adapters"


def _run_logged(caplog, config, kwargs, dataset="mosi"):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="MMSA"):
        MMSA_run("khar", dataset, config=config, **kwargs)
    return caplog.text


def _adapters_arrived(saved_dir, dataset="mosi"):
    """Every adapter weight of the tested checkpoint equals the pretrained file's (they stay frozen)."""
    states = safe_torch_load(saved_dir / f"khar-{dataset}-adapters.pt")["states"]
    checkpoint = safe_torch_load(saved_dir / f"khar-{dataset}.pth")
    compared = 0
    for m, state in states.items():
        for key, value in state.items():
            if key.startswith("adapters."):
                assert torch.equal(checkpoint[f"Model.harvesters.{m}.{key}"], value), (m, key)
                compared += 1
    return sorted(states), compared


def test_identical_rerun_reuses_adapters_even_from_a_rewritten_copy(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                    fast_mmsa, caplog, tmp_path):
    first = tmp_path / "a" / "mosi.pkl"
    first.parent.mkdir()
    shutil.copyfile(tiny_features("mosi"), first)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(first))
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert PRETRAINING in log and REUSED not in log
    adapters = mmsa_run_kwargs["model_save_dir"] / "khar-mosi-adapters.pt"
    made = adapters.stat().st_mtime_ns
    assert _adapters_arrived(mmsa_run_kwargs["model_save_dir"])[0] == ["a", "t", "v"]

    # the demo's case: the same bytes written again elsewhere, with a new mtime
    second = tmp_path / "b" / "planted.pkl"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    os.utime(second, ns=(made + 10**9, made + 10**9))
    log = _run_logged(caplog, dict(config, featurePath=str(second)), mmsa_run_kwargs)
    assert REUSED in log and PRETRAINING not in log
    assert adapters.stat().st_mtime_ns == made
    modalities, compared = _adapters_arrived(mmsa_run_kwargs["model_save_dir"])
    assert modalities == ["a", "t", "v"] and compared > 0


def test_changed_feature_bytes_pretrain_again(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa, caplog,
                                              tmp_path):
    path = tmp_path / "mosi.pkl"
    shutil.copyfile(tiny_features("mosi"), path)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(path))
    _run_logged(caplog, config, mmsa_run_kwargs)
    with open(path, "rb") as f:
        data = pickle.load(f)
    data["train"]["audio"][0, 0, 0] += np.float32(0.5)  # one value, same shapes and sizes
    path.write_bytes(pickle.dumps(data, protocol=4))
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert "another config, modalities, seed or data; pretraining again" in log and REUSED not in log


def test_modalities_change_pretrains_and_vision_adapters_arrive(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                fast_mmsa, caplog):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    _run_logged(caplog, dict(config, modalities="ta"), mmsa_run_kwargs)
    saved = mmsa_run_kwargs["model_save_dir"]
    assert sorted(safe_torch_load(saved / "khar-mosi-adapters.pt")["states"]) == ["a", "t"]
    log = _run_logged(caplog, config, mmsa_run_kwargs)  # the full model, same folder
    assert "another config, modalities, seed or data; pretraining again" in log and REUSED not in log
    modalities, compared = _adapters_arrived(saved)
    assert modalities == ["a", "t", "v"] and compared > 0


def test_matching_file_without_a_modality_pretrains_again(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                         fast_mmsa, caplog):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    _run_logged(caplog, config, mmsa_run_kwargs)
    adapters = mmsa_run_kwargs["model_save_dir"] / "khar-mosi-adapters.pt"
    saved = safe_torch_load(adapters)
    del saved["states"]["v"]  # same key, vision missing (a file written by hand or by an old version)
    torch.save(saved, adapters)
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert "lack the adapters of modality ['v']; pretraining again" in log and REUSED not in log
    assert _adapters_arrived(mmsa_run_kwargs["model_save_dir"])[0] == ["a", "t", "v"]
