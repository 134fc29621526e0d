"""Our runner's tune mode selects on the validation split (:mod:`khar_mmsa.tuning`):
``MMSA_run('khar', ..., is_tune=True)`` and ``khar_mmsa.run(<any model>, ..., is_tune=True)``.

MMSA 2.2.1 scores every candidate on the test split.  Here each candidate's validation and test
scores are planted (the trainer's ``do_test`` is replaced), with the best *test* score on a
candidate that is *not* best on validation: the selected candidate must be the validation one,
and the test split must be scored once, for it only.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
import pytest

import khar_mmsa  # registers 'khar' with MMSA
from khar_mmsa.registration.configs import merged_config
from khar_mmsa.tuning import candidate_args
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=1, pretrain_adapters=False, save_curves=False)  # curves: test_run_outputs.py
# learning_rate -> planted (valid Loss, test Loss): 3e-3 is best on test but worst on validation;
# training with 4e-3 fails (as a non-finite loss would).
PLANTED = {1e-3: (0.50, 0.90), 2e-3: (0.60, 0.80), 3e-3: (0.70, 0.10)}
FAILING_LR = 4e-3
TRAINERS = {"khar": ("khar_mmsa.training.trainer", "KHaRTrainer"), "tfn": ("MMSA.trains.singleTask.TFN", "TFN")}


def tune_config_file(tmp_path: Path, model: str, grid: Dict[str, list]) -> Path:
    """Our merged tune config with ``model``'s grid cut down to ``grid`` (other parameters fixed)."""
    config = merged_config("tune")
    debug = config[model]["debugParams"]
    for key in list(debug):
        if key != "d_paras" and key not in grid and isinstance(debug[key], list):
            debug[key] = debug[key][0]
    debug.update(grid)
    debug["d_paras"] = list(grid)
    path = tmp_path / f"tune-{model}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("model", ["khar", "tfn"])
def test_tune_mode_selects_by_validation_and_tests_only_the_selected(
        model, tmp_path, tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa, monkeypatch, caplog):
    calls: List[Tuple[float, str]] = []

    def planted_do_test(self, model_, dataloader, mode="VAL", return_sample_results=False):
        lr = float(self.args["learning_rate"])
        if lr == FAILING_LR:
            raise FloatingPointError("planted: non-finite loss")
        split = "test" if mode == "TEST" else "valid"
        calls.append((lr, split))
        loss = PLANTED[lr][split == "test"]
        return {"Loss": loss, "MAE": loss, "Corr": 0.0, "Has0_acc_2": 0.5}

    module, name = TRAINERS[model]
    monkeypatch.setattr(getattr(importlib.import_module(module), name), "do_test", planted_do_test)
    # one epoch a candidate: the planted scores are the same every epoch
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), epochs=1) if model == "khar" else {"early_stop": 1, "batch_size": 8}
    config_file = tune_config_file(tmp_path, model, {"learning_rate": list(PLANTED) + [FAILING_LR]})
    kwargs = dict(mmsa_run_kwargs, verbose_level=1)
    with caplog.at_level("INFO", logger="MMSA"):
        result = khar_mmsa.run(model, "mosi", config_file=str(config_file), config=config, is_tune=True, tune_times=5,
                          custom_feature=str(tiny_features("mosi")), **kwargs)

    assert result["selected"] == {"learning_rate": 1e-3}
    assert result["valid"]["Loss"] == 0.50 and result["test"]["Loss"] == 0.90
    # every candidate trained and validated; the test split scored once, for the selected one
    assert {lr for lr, split in calls if split == "valid"} == set(PLANTED)
    assert [c for c in calls if c[1] == "test"] == [(1e-3, "test")]

    table = pd.read_csv(kwargs["res_save_dir"] / "tune" / f"mosi-{model}-by-valid.csv")
    assert table["learning_rate"].tolist() == list(PLANTED) + [FAILING_LR]
    assert table["Valid_Loss"].tolist()[:3] == [v for v, _ in PLANTED.values()]
    assert math.isnan(table["Valid_Loss"].iloc[3]) and "non-finite loss" in table["error"].iloc[3]
    assert table["selected"].tolist() == [True, False, False, False]
    assert (table["selected_by"] == "valid Loss").all()
    assert table.loc[0, "Test_Loss"] == 0.90 and table["Test_Loss"].iloc[1:].isna().all()
    text = caplog.text
    assert "selected by the VALIDATION KeyEval" in text and "Selected by validation Loss = 0.5000" in text
    assert "the other 3 candidates were never scored on test" in text and "failed, recorded and skipped" in text
    # the selected config as an MMSA config file, with the tuned value in it
    written = json.loads(Path(result["config_file"]).read_text())
    assert written[model]["datasetParams"]["mosi"]["learning_rate"] == 1e-3


def test_selected_config_file_reproduces_the_reported_test_score(tmp_path, tiny_features, tiny_bert,
                                                                  mmsa_run_kwargs, fast_mmsa):
    """No planting: the best-config JSON, passed back to MMSA_run, trains the same model (CPU,
    same seed) and so gives the test score the tune run reported for the selected candidate."""
    config_file = tune_config_file(tmp_path, "khar", {"learning_rate": [1e-3, 1e-4]})
    # one epoch a candidate: the rerun trains from the written file alone (its epochs=1 included)
    result = MMSA_run("khar", "mosi", config_file=str(config_file), config=dict(TINY_KHAR, pretrained=str(tiny_bert),
                                                                                  epochs=1),
                      is_tune=True, tune_times=5, custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    again = dict(mmsa_run_kwargs, res_save_dir=tmp_path / "again")
    row = MMSA_run("khar", "mosi", config_file=str(result["config_file"]), **again)
    for key in ("MAE", "Corr", "Mult_acc_7"):
        assert row[key] == pytest.approx(round(result["test"][key] * 100, 2), abs=1e-9), key
    assert math.isfinite(result["valid"]["Loss"])


def test_khar_learning_rates_tied_unless_both_are_tuned() -> None:
    base = {"model_name": "khar", "learning_rate": [1e-5, 3e-5], "learning_rate_bert": 5e-5,
            "d_paras": ["learning_rate"]}
    assert candidate_args(base, {"learning_rate": 3e-5})["learning_rate_bert"] == 3e-5  # tied
    both = dict(base, learning_rate_bert=[1e-5, 5e-5], d_paras=["learning_rate", "learning_rate_bert"])
    args = candidate_args(both, {"learning_rate": 3e-5, "learning_rate_bert": 1e-5})
    assert (args["learning_rate"], args["learning_rate_bert"]) == (3e-5, 1e-5)  # separate
    assert candidate_args(dict(base, model_name="self_mm"), {"learning_rate": 3e-5})["learning_rate_bert"] == 5e-5


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_khar_tune_grid_covers_table5_and_both_learning_rates(dataset) -> None:
    run = importlib.import_module("MMSA.run")
    grid = run.get_config_tune("khar", dataset, "", random_choice=False)
    table5 = {"learning_rate": [1e-5, 3e-5], "batch_size": [36, 64], "contrastive_weight": [0.05, 0.45, 1.0],
              "modal_dim": [128, 256]}
    for key, values in table5.items():
        assert key in grid["d_paras"] and set(values) <= set(grid[key]), key
    assert "learning_rate_bert" in grid["d_paras"] and {1e-5, 3e-5} <= set(grid["learning_rate_bert"])
    assert grid["num_experts"] == 3 and grid["fine_grained_dim"] == 50  # Table 5, same on every dataset


@pytest.mark.parametrize("model", ["khar", "tfn"])
def test_train_candidate_reports_validation_after_every_epoch(model, tiny_features, tiny_bert, tmp_path,
                                                              fast_mmsa) -> None:
    """The per-epoch hook the Ray Tune trials report through: an EpochHook callback in
    args['callbacks'] for khar, the wrapped per-epoch do_test(mode='VAL') for MMSA's trainers;
    never the test split."""
    from khar_mmsa.tuning import base_tune_args, seed_everything, train_candidate
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), epochs=3, early_stop=3) if model == "khar" else \
        {"early_stop": 2, "batch_size": 8}
    base = base_tune_args(model, "mosi", "", model_save_path=tmp_path / f"{model}.pth",
                          custom_feature=str(tiny_features("mosi")))
    point = {item: base[item][0] for item in base["d_paras"] if isinstance(base[item], list)}
    args = candidate_args(base, point, config)
    args["cur_seed"] = 1
    seen = []
    seed_everything(1)
    cand = train_candidate(args, num_workers=0, on_epoch_end=lambda epoch, valid: seen.append((epoch, valid["Loss"])))
    epochs = [e for e, _ in seen]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 3  # 3 epochs, or early_stop=2 after the best
    # the candidate's score is its best epoch's validation loss (its early-stopping checkpoint)
    assert cand.valid["Loss"] == pytest.approx(min(loss for _, loss in seen), abs=1e-4)
    if model == "khar":  # a callback of the trainer's loop, not a wrapped do_test
        from khar_mmsa.training.callbacks import EpochHook
        assert "do_test" not in vars(cand.trainer)
        assert [type(cb) for cb in cand.trainer.callbacks] == [EpochHook]


def test_tune_candidates_draw_their_curves_beside_the_log(tmp_path, tiny_features, tiny_bert, mmsa_run_kwargs,
                                                          fast_mmsa):
    """Candidates get the run's log folder, as a normal run's trainer does (not the checkpoint folder)."""
    config_file = tune_config_file(tmp_path, "khar", {"learning_rate": [1e-3]})
    khar_mmsa.run("khar", "mosi", config_file=str(config_file), is_tune=True, tune_times=1,
                  config=dict(TINY_KHAR, pretrained=str(tiny_bert), epochs=1, save_curves=True),
                  custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    assert (mmsa_run_kwargs["log_dir"] / "khar-mosi-curves.png").is_file()
    assert not list(mmsa_run_kwargs["model_save_dir"].glob("*.png"))
    written = json.loads((mmsa_run_kwargs["res_save_dir"] / "tune" / "mosi-khar-best.json").read_text())
    assert "log_dir" not in written["khar"]["commonParams"] and "log_dir" not in written["khar"]["datasetParams"]["mosi"]


def test_tune_example_without_data_stops_before_the_first_candidate(tmp_path, monkeypatch, capsys):
    """The README's literal tune command on a machine without the data: one line naming the missing
    feature file, before any candidate starts; no tune CSV, so nothing is recorded as tried."""
    from khar_mmsa import cli
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MMSA_DATASET_ROOT", raising=False)
    assert cli.main(["-m", "khar", "-d", "mosi", "-t", "-tt", "30"]) == 1
    err = capsys.readouterr().err
    assert "feature file not found" in err and "Traceback" not in err
    log = (tmp_path / "MMSA" / "logs" / "khar-mosi.log").read_text()
    assert "Tuning [1/" not in log and "Candidate:" not in log
    assert not (tmp_path / "MMSA" / "results" / "tune" / "mosi-khar-by-valid.csv").exists()


def test_a_candidate_stopped_by_the_machine_is_not_recorded_and_runs_again(
        tmp_path, tiny_features, mmsa_run_kwargs, fast_mmsa, monkeypatch):
    """A full disk (or any failure that is not the candidate's settings) stops the search and leaves
    the candidate untried; the next call trains it.  A non-finite loss is the candidate's own
    failure: recorded with its error and not tried again."""
    disk_full = [True]

    def planted_do_test(self, model_, dataloader, mode="VAL", return_sample_results=False):
        lr = float(self.args["learning_rate"])
        if lr == 2e-3 and disk_full[0]:
            raise OSError(28, "No space left on device")
        if lr == FAILING_LR:
            raise FloatingPointError("planted: non-finite loss")
        return {"Loss": lr, "MAE": lr, "Corr": 0.0, "Has0_acc_2": 0.5}

    monkeypatch.setattr(importlib.import_module("MMSA.trains.singleTask.TFN").TFN, "do_test", planted_do_test)
    config_file = tune_config_file(tmp_path, "tfn", {"learning_rate": [1e-3, 2e-3, FAILING_LR, 3e-3]})
    call = dict(config_file=str(config_file), config={"early_stop": 1, "batch_size": 8}, is_tune=True,
                tune_times=10, custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    with pytest.raises(OSError, match="No space left"):
        khar_mmsa.run("tfn", "mosi", **call)
    csv_file = mmsa_run_kwargs["res_save_dir"] / "tune" / "mosi-tfn-by-valid.csv"
    assert pd.read_csv(csv_file)["learning_rate"].tolist() == [1e-3]
    disk_full[0] = False
    result = khar_mmsa.run("tfn", "mosi", **call)
    table = pd.read_csv(csv_file)
    assert table["learning_rate"].tolist() == [1e-3, 2e-3, FAILING_LR, 3e-3]
    assert table["error"].notna().tolist() == [False, False, True, False]
    assert result["selected"] == {"learning_rate": 1e-3}
    khar_mmsa.run("tfn", "mosi", **call)  # everything tried: the failed candidate is not retried
    assert pd.read_csv(csv_file)["learning_rate"].tolist() == [1e-3, 2e-3, FAILING_LR, 3e-3]
