"""``python -m khar_mmsa sweep``: its ``summary.csv`` equals MMSA's results table of one ``MMSA_run``
over the same seeds, to the digit, because both average the unrounded per-seed test results -- on
KHaR's shipped defaults shrunk only in size (adapter pretraining on), and on planted per-seed
results where averaging the x100 per-run numbers instead gives another std (8.09, not 8.08)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import khar_mmsa  # noqa: F401  registers 'khar'
from conftest import TINY_KHAR_SIZE
from khar_mmsa import cli
from MMSA import MMSA_run
from test_sweep import sweep_with_runner

pytestmark = pytest.mark.usefixtures("fast_mmsa")
SEEDS = (1, 2)  # two seeds: a mean and a std over seeds, as three give


def test_sweep_cli_with_pretraining_as_shipped_summarises_as_mmsa_does(tmp_path, tiny_features, tiny_bert,
                                                                        mmsa_run_kwargs, capsys) -> None:
    sizes = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_epochs=1, pretrained=str(tiny_bert),
                 save_curves=False)
    feature = str(tiny_features("mosi"))
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "-m", "khar", "-d", "mosi", "-s", *map(str, SEEDS), "--custom-feature", feature,
                     "--out", str(out), "--threads", "1",
                     *[a for k, v in sizes.items() for a in ("--set", f"{k}={v}")]]) == 0
    assert "x100" in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    row = MMSA_run("khar", "mosi", custom_feature=feature, config=sizes,
                   **dict(mmsa_run_kwargs, seeds=list(SEEDS)))
    tidy = pd.read_csv(mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.tidy.csv").iloc[-1]
    metrics = [k for k in row if k not in ("Model", "seeds")]
    assert len(metrics) >= 10 and summary["n_seeds"] == len(SEEDS)
    assert {k: float(summary[k]) for k in metrics} == {k: float(tidy[k]) for k in metrics} == \
        {k: float(row[k]) for k in metrics}


#: seed -> MAE as MMSA's metric gives it (4 decimals): round(np.std(v) * 100, 2) is 8.08, but the
#: std of the x100 numbers (42.06, 25.89) rounds to 8.09.
PLANTED_MAE = {1: 0.4206, 2: 0.2589}


def _planted_run(spec, feature_path):
    mae = PLANTED_MAE[spec.seed]
    return {"metrics": {"MAE": round(mae * 100, 2) / 100}, "test": {"MAE": mae}}


def test_sweep_cli_summary_is_mmsas_formula_on_the_unrounded_results(tmp_path, monkeypatch) -> None:
    code, out = sweep_with_runner(tmp_path, monkeypatch, _planted_run, PLANTED_MAE)
    assert code == 0
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    values = list(PLANTED_MAE.values())
    mmsa = (round(np.mean(values) * 100, 2), round(np.std(values) * 100, 2))  # MMSA/run.py's row
    assert mmsa == (33.98, 8.08)
    assert (summary["MAE"], summary["MAE_std"]) == mmsa
    assert pd.read_csv(out / "results.csv")["MAE"].tolist() == [42.06, 25.89]  # x100, per run
