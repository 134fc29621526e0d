"""MMSA_run('khar', d, gpu_ids=[0]) on a CPU-only machine for every dataset, real feature widths."""
import math

import pandas as pd
import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=1, pretrain_epochs=1, save_curves=False)  # curves: test_run_outputs.py
METRIC = {"mosi": "Mult_acc_7", "mosei": "Mult_acc_7", "sims": "Mult_acc_5", "simsv2": "Mult_acc_5"}


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_mmsa_run_khar_writes_a_finite_row(dataset, tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa):
    # adapter pretraining on the datasets with unimodal labels exercises the T/A/V path
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features(dataset)),
                  pretrain_adapters=dataset in ("sims", "simsv2"))
    MMSA_run("khar", dataset, config=config, **mmsa_run_kwargs)
    table = pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / f"{dataset}.tidy.csv")
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
    table = pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.tidy.csv")
    assert math.isfinite(table["MAE"].iloc[0])
    log = "".join(p.read_text() for p in mmsa_run_kwargs["log_dir"].glob("*.log"))
    assert "Length bucketing:" in log


def test_dense_expert_dispatch_through_mmsa_run_reads_no_counts_and_trains_the_same(
        tmp_path, tiny_features, tiny_bert, fast_mmsa, monkeypatch):
    """moe_dispatch='dense' through MMSA_run: the MoE refiners read nothing back to the host (sparse
    dispatch reads its expert counts once per refiner and step) and, without dropout, training ends
    at the same test scores as sparse dispatch (same gates, same noise draws)."""
    import traceback
    import torch
    tolist = torch.Tensor.tolist
    reads = []

    def counted(tensor):
        if traceback.extract_stack()[-2].filename.replace("\\", "/").endswith("khar_mmsa/model/refine.py"):
            reads.append(tuple(tensor.shape))
        return tolist(tensor)
    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    rows, counts = {}, {}
    for dispatch in ("sparse", "dense"):
        dirs = {k: tmp_path / dispatch / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
        config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")),
                      pretrain_adapters=False, dropout=0.0, moe_dispatch=dispatch)
        reads.clear()
        rows[dispatch] = MMSA_run("khar", "mosi", config=config, gpu_ids=[0], seeds=[1], num_workers=0,
                                  verbose_level=0, **dirs)
        counts[dispatch] = len(reads)
    assert counts["sparse"] > 0 and counts["dense"] == 0, counts
    for metric in ("MAE", "Corr"):
        assert rows["dense"][metric] == pytest.approx(rows["sparse"][metric], abs=1e-3), metric

# =====================================================================================