"""Tests of :mod:`khar_mmsa.integration`: registration, the 'khar' and 'simsv2' keys, each fix for
MMSA 2.2.1 on today's stack, and real CPU ``MMSA_run`` calls of TFN, MulT and Self-MM.

Each fix has a test that fails without it: either it runs with :func:`unregister` applied and
asserts MMSA's original failure, or it checks the behaviour the fix adds.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import multiprocessing
import pickle
import sys
import threading
import types
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import khar_mmsa  # noqa: F401 - registers the patches
from khar_mmsa import integration as mmsa_patches
from conftest import TINY_BERT_HIDDEN, TINY_SEQ_LENS, TINY_SIZES

MMSA = importlib.import_module("MMSA")
RUN = importlib.import_module("MMSA.run")
CONFIG = importlib.import_module("MMSA.config")
DATA_LOADER = importlib.import_module("MMSA.data_loader")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallbacks")


# ============================================================================================
# A dummy 'khar' model and trainer (the real ones are tested end to end at the bottom)
# ============================================================================================
class DummyKHaR(nn.Module):
    """Stands in for khar_mmsa.model.khar.KHaR: one linear layer on the mean audio frame."""

    def __init__(self, args: Any) -> None:
        super().__init__()
        self.head = nn.Linear(args["feature_dims"][1], 1)

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None):
        return {"M": self.head(audio.mean(dim=1))}


class DummyTrainer:
    """Stands in for khar_mmsa.training.trainer.KHaRTrainer; records what it saw."""

    write_checkpoint = True
    events: List[Dict[str, Any]] = []

    def __init__(self, args: Any, metrics: Any = None) -> None:
        self.args = args

    def do_train(self, model, dataloader, return_epoch_results=False):
        path = Path(self.args["model_save_path"])
        DummyTrainer.events.append({
            "checkpoint_existed": path.exists(),
            "num_workers": dataloader["train"].num_workers,
            "batches": len(dataloader["train"]),
            "train_labels": {round(float(x), 4) for b in dataloader["train"]
                             for x in b["labels"]["M"].flatten()},
        })
        if DummyTrainer.write_checkpoint:
            torch.save(model.state_dict(), path)

    def do_test(self, model, dataloader, mode="TEST", return_sample_results=False):
        seed = self.args["cur_seed"]  # differs per seed, so the std is not 0
        return {"Has0_acc_2": np.float64(0.5), "MAE": np.float64(0.6 + 0.1 * seed),
                "Corr": np.float64(0.1)}


@pytest.fixture
def dummy_khar(monkeypatch: pytest.MonkeyPatch, tiny_features, tmp_path: Path) -> Path:
    """Route the 'khar' key to the dummies; return a user config JSON for khar on tiny mosi."""
    model_mod = types.ModuleType("khar_mmsa.model.khar")
    model_mod.KHaR = DummyKHaR
    trainer_mod = types.ModuleType("khar_mmsa.training.trainer")
    trainer_mod.KHaRTrainer = DummyTrainer
    monkeypatch.setitem(sys.modules, "khar_mmsa.model.khar", model_mod)
    monkeypatch.setitem(sys.modules, "khar_mmsa.training.trainer", trainer_mod)
    monkeypatch.setattr(DummyTrainer, "write_checkpoint", True)
    monkeypatch.setattr(DummyTrainer, "events", [])
    config = {
        "datasetCommonParams": {"dataset_root_dir": "", "mosi": {"unaligned": {
            "featurePath": str(tiny_features("mosi")), "seq_lens": list(TINY_SEQ_LENS),
            "feature_dims": [768, 5, 20], "train_samples": TINY_SIZES[0], "num_classes": 3,
            "language": "en", "KeyEval": "Loss"}}},
        "khar": {"commonParams": {"need_data_aligned": False, "need_model_aligned": False,
                                  "use_bert": False, "early_stop": 1},
                 "datasetParams": {"mosi": {"batch_size": 8}}},
    }
    path = tmp_path / "khar-dummy-config.json"
    path.write_text(json.dumps(config))
    return path


def _read_csv(res_dir: Path, dataset: str = "mosi") -> pd.DataFrame:
    return pd.read_csv(mmsa_patches.results_csv_path(res_dir, dataset))


# ============================================================================================
# Registration
# ============================================================================================
def test_register_is_idempotent_and_unregister_restores_everything() -> None:
    assert mmsa_patches.is_registered()
    targets = mmsa_patches.patched_attributes()
    assert len(targets) == len(set((id(o), a) for o, a in targets))
    patched = {(id(o), a): vars(o)[a] for o, a in targets}
    mmsa_patches.register()  # idempotent: nothing re-wrapped
    assert mmsa_patches.patched_attributes() == targets
    try:
        mmsa_patches.unregister()
        assert not mmsa_patches.is_registered() and mmsa_patches.patched_attributes() == []
        originals = {(id(o), a): vars(o).get(a) for o, a in targets}
        assert all(originals[k] is not patched[k] for k in patched)
        mmsa_patches.register()
        mmsa_patches.unregister()
        assert all(vars(o).get(a) is originals[(id(o), a)] for o, a in targets)
        assert "khar" not in importlib.import_module("MMSA.trains.ATIO").ATIO().TRAIN_MAP
    finally:
        mmsa_patches.register()
    assert {(id(o), a) for o, a in mmsa_patches.patched_attributes()} == set(patched)


def test_patched_names_cover_every_namespace() -> None:
    for module in (RUN, MMSA):
        assert module.MMSA_run is RUN.MMSA_run and module.MMSA_test is RUN.MMSA_test
    for name in ("get_config_regression", "get_config_tune"):
        assert getattr(CONFIG, name) is getattr(RUN, name) is getattr(MMSA, name)
    assert "KHaR" in MMSA.SUPPORTED_MODELS and "SIMSV2" in RUN.SUPPORTED_DATASETS


# ============================================================================================
# Model key 'khar'
# ============================================================================================
def test_khar_key_resolves_lazily(dummy_khar: Path) -> None:
    amio = importlib.import_module("MMSA.models.AMIO").AMIO
    atio = importlib.import_module("MMSA.trains.ATIO").ATIO
    args = CONFIG.get_config_regression("khar", "mosi", str(dummy_khar))
    model = amio(args)
    assert isinstance(model.Model, DummyKHaR) and "khar" in model.MODEL_MAP
    assert set(model.state_dict()) == {"Model.head.weight", "Model.head.bias"}
    assert isinstance(atio().getTrain(args), DummyTrainer)
    tfn_args = CONFIG.get_config_regression("tfn", "mosi")
    tfn_args["train_mode"] = "regression"
    assert "khar" in amio(tfn_args).MODEL_MAP  # built-in models still build, map extended


def test_khar_key_unknown_without_patch(dummy_khar: Path, unregistered: None) -> None:
    args = CONFIG.get_config_regression("khar", "mosi", str(dummy_khar))
    with pytest.raises(KeyError, match="khar"):
        importlib.import_module("MMSA.models.AMIO").AMIO(args)


# ============================================================================================
# Configs
# ============================================================================================
def _mmsa_json(kind: str) -> Dict[str, Any]:
    return json.loads((Path(CONFIG.__file__).parent / "config" / f"config_{kind}.json").read_text())


@pytest.mark.parametrize("model", ["tfn", "mult", "self_mm"])
def test_default_config_has_simsv2(model: str) -> None:
    sims = _mmsa_json("regression")[model]["datasetParams"]["sims"]
    mmsa_default = Path(CONFIG.__file__).parent / "config" / "config_regression.json"
    for config_file in ("", mmsa_default, str(mmsa_default)):
        args = CONFIG.get_config_regression(model, "simsv2", config_file)
        assert args["feature_dims"] == [768, 25, 177] and args["seq_lens"] == [50, 925, 232]
        assert args["train_samples"] == 2722 and args["language"] == "cn"
        assert all(args[k] == v for k, v in sims.items())
    mosi = MMSA.get_config_regression(model, "mosi")  # MMSA's own entries are untouched
    assert mosi["feature_dims"] == [768, 5, 20]
    tune = RUN.get_config_tune(model, "simsv2")
    assert tune["feature_dims"] == [768, 25, 177] and tune["KeyEval"] == "Loss"


def test_default_config_without_patch_has_no_simsv2(unregistered: None) -> None:
    with pytest.raises(KeyError, match="simsv2"):
        CONFIG.get_config_regression("tfn", "simsv2")


def test_user_config_file_is_used_as_is(dummy_khar: Path) -> None:
    args = CONFIG.get_config_regression("khar", "mosi", dummy_khar)
    assert args["seq_lens"] == list(TINY_SEQ_LENS) and args["batch_size"] == 8
    with pytest.raises(KeyError):  # no overlay merged into a user's own file
        CONFIG.get_config_regression("tfn", "mosi", dummy_khar)


def test_dataset_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(mmsa_patches.DATASET_ROOT_ENV, str(tmp_path))
    args = CONFIG.get_config_regression("tfn", "simsv2")
    assert Path(args["featurePath"]) == tmp_path / "SIMS_V2/Processed/unaligned.pkl"
    monkeypatch.delenv(mmsa_patches.DATASET_ROOT_ENV)
    root = _mmsa_json("regression")["datasetCommonParams"]["dataset_root_dir"]
    assert CONFIG.get_config_regression("tfn", "mosi")["featurePath"].startswith(root)


def test_missing_overlay_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(mmsa_patches.configs, "CONFIG_DIR", tmp_path / "nowhere")
    with pytest.raises(mmsa_patches.ConfigOverlayMissingError, match="pip install -e"):
        CONFIG.get_config_regression("tfn", "mosi")


def test_overlay_json_is_minimal() -> None:
    """Our overlay only adds: no MMSA model entry is restated for MMSA's own datasets."""
    for kind in mmsa_patches.CONFIG_KINDS:
        ours = json.loads((mmsa_patches.config_dir() / f"config_{kind}.json").read_text())
        assert "simsv2" in ours["datasetCommonParams"]
        for model, block in ours.items():
            if model in ("datasetCommonParams", "khar"):
                continue
            assert set(block) == {"datasetParams"} and set(block["datasetParams"]) == {"simsv2"}


# ============================================================================================
# Dataset 'simsv2'
# ============================================================================================
def test_simsv2_loads_tav_labels_and_sims_metrics(tiny_features) -> None:
    args = CONFIG.get_config_regression("tfn", "simsv2")
    args.update(featurePath=str(tiny_features("simsv2")), custom_feature=None, feature_T=None,
                feature_A=None, feature_V=None, train_mode="regression")
    dataset = DATA_LOADER.MMDataset(args, mode="train")
    assert set(dataset.labels) == {"M", "T", "A", "V"} and len(dataset) == TINY_SIZES[0]
    assert args["dataset_name"] == "simsv2"  # restored after MMSA's SIMS code path
    metrics = importlib.import_module("MMSA.utils.metricsTop").MetricsTop("regression")
    pred, true = torch.tensor([[0.1], [-0.2], [0.3], [0.0]]), torch.tensor([[0.5], [-0.5], [0.2], [0.0]])
    result = metrics.getMetics("simsv2")(pred, true)
    assert "Mult_acc_3" in result


def test_simsv2_unknown_without_patch(unregistered: None) -> None:
    metrics = importlib.import_module("MMSA.utils.metricsTop").MetricsTop("regression")
    with pytest.raises(KeyError):
        metrics.getMetics("simsv2")
    # metrics_for (used by khar_mmsa.training.trainer) works either way
    pred, true = torch.tensor([[0.1], [-0.4], [0.3]]), torch.tensor([[0.5], [-0.5], [0.2]])
    assert "Mult_acc_3" in mmsa_patches.metrics_for("SIMSv2")(pred, true)
    assert "Has0_acc_2" in mmsa_patches.metrics_for("mosi")(pred, true)


# ============================================================================================
# a. CPU fallback
# ============================================================================================
def test_gpu_ids_on_cpu_falls_back_with_one_warning(dummy_khar: Path, mmsa_run_kwargs,
                                                    fast_mmsa, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="MMSA")
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    cuda_warnings = [r for r in caplog.records if "CUDA is not available" in r.getMessage()]
    assert len(cuda_warnings) == 1 and cuda_warnings[0].name == "MMSA"
    assert not _read_csv(mmsa_run_kwargs["res_save_dir"]).empty


def test_set_device_fails_on_cpu_without_patch(dummy_khar: Path, mmsa_run_kwargs,
                                               unregistered: None) -> None:
    with pytest.raises(ValueError, match="cuda device"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)


def test_cpu_proxy_leaves_torch_alone() -> None:
    assert RUN.torch is not torch and RUN.torch.load is torch.load
    assert torch.cuda.set_device.__module__.startswith("torch")


# ============================================================================================
# b. ReduceLROnPlateau(verbose=...)
# ============================================================================================
TRAINER_MODULES = ["MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                   "MMSA.trains.missingTask.TFR_NET"]


@pytest.mark.parametrize("module", TRAINER_MODULES)
def test_reduce_lr_on_plateau_accepts_verbose(module: str) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = importlib.import_module(module).ReduceLROnPlateau(opt, mode="min", verbose=True, patience=2)
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.patience == 2


def test_reduce_lr_on_plateau_verbose_fails_without_patch(unregistered: None) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for module in TRAINER_MODULES:
        with pytest.raises(TypeError, match="verbose"):
            importlib.import_module(module).ReduceLROnPlateau(opt, mode="min", verbose=True)


# ============================================================================================
# c. results CSV
# ============================================================================================
def test_results_csv_has_plain_numbers(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa) -> None:
    kwargs = dict(mmsa_run_kwargs, seeds=[1, 2])
    row = MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    csv_file = mmsa_patches.results_csv_path(kwargs["res_save_dir"], "mosi")
    assert "np.float" not in csv_file.read_text() and "(" not in csv_file.read_text()
    table = pd.read_csv(csv_file)
    assert list(table.columns) == ["Model", "seeds", "Has0_acc_2", "Has0_acc_2_std", "MAE",
                                   "MAE_std", "Corr", "Corr_std"]
    assert len(table) == 2 and (table["Model"] == "khar").all() and (table["seeds"] == "1 2").all()
    assert all(table[c].dtype.kind == "f" for c in table.columns[2:])
    assert table["MAE"].tolist() == [75.0, 75.0] and table["MAE_std"].tolist() == [5.0, 5.0]
    assert row["MAE"] == 75.0 and type(row["MAE"]) is float
    assert not list(Path(kwargs["res_save_dir"]).glob("normal/*.tmp"))


def test_legacy_mmsa_cells_are_converted(tmp_path: Path) -> None:
    csv_file = tmp_path / "normal" / "mosi.csv"
    csv_file.parent.mkdir()
    legacy = pd.DataFrame({"Model": ["tfn"], "MAE": ["(np.float64(71.5), np.float64(1.25))"],
                           "Corr": ["(60.0, 0.0)"]})
    legacy.to_csv(csv_file, index=False)
    mmsa_patches.append_result_row(csv_file, {"Model": "mult", "seeds": "1", "MAE": 70.0,
                                            "MAE_std": 0.0, "Corr": 61.0, "Corr_std": 0.5})
    table = pd.read_csv(csv_file)
    assert table["MAE"].tolist() == [71.5, 70.0] and table["MAE_std"].tolist() == [1.25, 0.0]
    assert table["Corr"].tolist() == [60.0, 61.0] and table["Corr_std"].tolist() == [0.0, 0.5]


def _append_many(csv_file: str, tag: str, count: int) -> None:
    for i in range(count):
        mmsa_patches.append_result_row(csv_file, {"Model": f"{tag}{i}", "seeds": "1",
                                                "MAE": float(i), "MAE_std": 0.5, "Corr": 0.25,
                                                "Corr_std": 0.0})


def test_concurrent_processes_append_readable_rows(tmp_path: Path) -> None:
    csv_file = str(tmp_path / "normal" / "mosi.csv")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(csv_file, tag, 15)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    table = pd.read_csv(csv_file)
    assert sorted(table["Model"]) == sorted([f"{t}{i}" for t in "ab" for i in range(15)])
    assert table["MAE"].dtype.kind == "f" and table["MAE_std"].eq(0.5).all()


def test_concurrent_threads_run_into_one_csv(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa,
                                             tmp_path: Path) -> None:
    errors: List[BaseException] = []
    handlers = list(logging.getLogger("MMSA").handlers)

    def one_run(i: int) -> None:
        try:
            MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar),
                          **dict(mmsa_run_kwargs, model_save_dir=tmp_path / f"models{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    table = _read_csv(mmsa_run_kwargs["res_save_dir"])
    assert len(table) == 2 and table["MAE"].dtype.kind == "f"
    assert logging.getLogger("MMSA").handlers == handlers


# ============================================================================================
# d. log handlers
# ============================================================================================
def test_repeated_runs_do_not_repeat_log_lines(dummy_khar: Path, mmsa_run_kwargs,
                                               fast_mmsa) -> None:
    mmsa_logger = logging.getLogger("MMSA")
    before = list(mmsa_logger.handlers)
    for _ in range(3):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
        assert mmsa_logger.handlers == before
    log_text = (Path(mmsa_run_kwargs["log_dir"]) / "khar-mosi.log").read_text()
    assert log_text.count("Program Start") == 3  # unpatched: 1 + 2 + 3 = 6


# ============================================================================================
# e. stale checkpoints
# ============================================================================================
def test_stale_checkpoint_is_removed_before_training(dummy_khar: Path, mmsa_run_kwargs,
                                                     fast_mmsa) -> None:
    model_dir = Path(mmsa_run_kwargs["model_save_dir"])
    model_dir.mkdir(parents=True)
    (model_dir / "khar-mosi.pth").write_bytes(b"stale weights of an earlier run")
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert DummyTrainer.events[0]["checkpoint_existed"] is False


def test_missing_checkpoint_fails_clearly(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = Path(mmsa_run_kwargs["model_save_dir"])
    model_dir.mkdir(parents=True)
    stale = {k: v.clone() for k, v in DummyKHaR({"feature_dims": [768, 5, 20]}).state_dict().items()}
    torch.save({f"Model.{k}": v for k, v in stale.items()}, model_dir / "khar-mosi.pth")
    monkeypatch.setattr(DummyTrainer, "write_checkpoint", False)
    with pytest.raises(mmsa_patches.MissingCheckpointError, match="khar-mosi.pth"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert not mmsa_patches.results_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi").exists()


# ============================================================================================
# f. num_workers, update_epochs, MMSA_test
# ============================================================================================
def test_num_workers_default_is_zero_on_cpu(dummy_khar: Path, mmsa_run_kwargs,
                                            fast_mmsa) -> None:
    kwargs = {k: v for k, v in mmsa_run_kwargs.items() if k != "num_workers"}
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    assert DummyTrainer.events[-1]["num_workers"] == 0


def test_update_epochs_above_batches_warns(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa,
                                           caplog) -> None:
    caplog.set_level(logging.WARNING, logger="MMSA")
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), config={"update_epochs": 8},
                  **mmsa_run_kwargs)
    assert DummyTrainer.events[-1]["batches"] == 3
    assert any("update_epochs=8" in r.getMessage() for r in caplog.records)


def _tfn_test_files(tmp_path: Path):
    args = CONFIG.get_config_regression("tfn", "mosi")
    args["train_mode"] = "regression"
    args["feature_dims"] = [768, 5, 20]
    args["seq_lens"] = list(TINY_SEQ_LENS)
    weights = tmp_path / "tfn.pth"
    torch.manual_seed(0)
    torch.save(importlib.import_module("MMSA.models.AMIO").AMIO(args).state_dict(), weights)
    feature = tmp_path / "one-sample.pkl"
    rng = np.random.default_rng(0)
    with open(feature, "wb") as f:
        pickle.dump({"text": rng.normal(size=(8, 768)).astype(np.float32),
                     "audio": rng.normal(size=(10, 5)).astype(np.float32),
                     "vision": rng.normal(size=(12, 20)).astype(np.float32)}, f)
    return args, weights, feature


def test_mmsa_test_gpu_id_falls_back_to_cpu(tmp_path: Path, caplog) -> None:
    config, weights, feature = _tfn_test_files(tmp_path)
    caplog.set_level(logging.WARNING, logger="MMSA")
    prediction = MMSA.MMSA_test(config, str(weights), str(feature), gpu_id=0)
    assert np.isfinite(prediction)
    assert any("MMSA_test runs on the CPU" in r.getMessage() for r in caplog.records)


def test_mmsa_test_gpu_id_fails_without_patch(tmp_path: Path, unregistered: None) -> None:
    config, weights, feature = _tfn_test_files(tmp_path)
    with pytest.raises((AssertionError, RuntimeError)):
        MMSA.MMSA_test(config, str(weights), str(feature), gpu_id=0)


# ============================================================================================
# Safe loading and validation hooks
# ============================================================================================
@pytest.fixture
def recording_hooks(monkeypatch: pytest.MonkeyPatch) -> Dict[str, list]:
    """Replace khar_mmsa.io.safe_io / khar_mmsa.data.validation by recorders (plain pickle inside)."""
    calls: Dict[str, list] = {"load": [], "validate": []}

    def load_pickle(path, trusted=False):
        calls["load"].append((str(path), trusted))
        with open(path, "rb") as f:
            data = pickle.load(f)
        data["train"]["regression_labels"][:] = 0.25  # marks the object MMSA must use
        return data

    def validate_features(data, args, source, role=None, samples=None):
        calls["validate"].append(source if role is None else (source, role, samples))
        if args.get("reject_for_test"):
            raise ValueError(f"{source}: rejected by the test validator")

    safe_io = types.ModuleType("khar_mmsa.io.safe_io")
    safe_io.load_pickle = load_pickle
    validation = types.ModuleType("khar_mmsa.data.validation")
    validation.validate_features = validate_features
    monkeypatch.setitem(sys.modules, "khar_mmsa.io.safe_io", safe_io)
    monkeypatch.setitem(sys.modules, "khar_mmsa.data.validation", validation)
    return calls


def test_features_loaded_and_validated_once_per_run(dummy_khar: Path, mmsa_run_kwargs,
                                                    fast_mmsa, recording_hooks,
                                                    tiny_features) -> None:
    kwargs = dict(mmsa_run_kwargs, seeds=[1, 2])
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), config={"trust_pickle": True},
                  **kwargs)
    path = str(tiny_features("mosi"))
    assert recording_hooks["load"] == [(path, True)]  # 3 splits x 2 seeds, one read
    assert recording_hooks["validate"] == [path]
    assert len(DummyTrainer.events) == 2
    assert all(e["train_labels"] == {0.25} for e in DummyTrainer.events)  # no second read


def test_validation_error_stops_before_training(dummy_khar: Path, mmsa_run_kwargs,
                                                recording_hooks) -> None:
    with pytest.raises(ValueError, match="rejected by the test validator"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar),
                      config={"reject_for_test": True}, **mmsa_run_kwargs)
    assert DummyTrainer.events == []


def test_real_safe_io_rejects_unsafe_pickle(dummy_khar: Path, mmsa_run_kwargs,
                                            tmp_path: Path) -> None:
    safe_io = pytest.importorskip("khar_mmsa.io.safe_io")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": types.SimpleNamespace()}))  # a non-allowed global
    with pytest.raises(safe_io.UnsafePickleError):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar),
                      config={"featurePath": str(evil)}, **mmsa_run_kwargs)
    assert DummyTrainer.events == []


def test_hooks_absent_fall_back_to_plain_pickle(dummy_khar: Path, mmsa_run_kwargs,
                                                fast_mmsa,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "khar_mmsa.io.safe_io", None)  # import -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "khar_mmsa.data.validation", None)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert len(DummyTrainer.events) == 1


def test_pickle_shim_is_reversible(unregistered: None) -> None:
    assert DATA_LOADER.pickle is pickle


# ============================================================================================
# End to end: MMSA's built-in models on this CPU machine, mosi and simsv2
# ============================================================================================
# Shrunk for CPU speed: TFN's outer-product fusion has (text_out+1)(a+1)(v+1) x post_fusion_dim
# weights, 35M with the SIMS defaults.
E2E_OVERRIDES: Dict[str, Dict[str, Any]] = {
    "tfn": {"early_stop": 1, "text_out": 16, "hidden_dims": [16, 8, 16]},
    "mult": {"early_stop": 1, "update_epochs": 1},
    "self_mm": {"early_stop": 1, "update_epochs": 1, "text_out": TINY_BERT_HIDDEN},
}


@pytest.mark.parametrize("dataset", ["mosi", "simsv2"])
@pytest.mark.parametrize("model", ["tfn", "mult", "self_mm"])
def test_mmsa_run_builtin_cpu(model: str, dataset: str, tiny_features, tiny_bert: Path,
                              mmsa_run_kwargs, fast_mmsa) -> None:
    config = dict(E2E_OVERRIDES[model], featurePath=str(tiny_features(dataset)))
    if model == "self_mm":
        config["pretrained"] = str(tiny_bert)
    MMSA.MMSA_run(model, dataset, config=config, **mmsa_run_kwargs)
    table = _read_csv(mmsa_run_kwargs["res_save_dir"], dataset)
    assert table["Model"].tolist() == [model]
    key = "Has0_acc_2" if dataset == "mosi" else "Mult_acc_3"
    for column in (key, "MAE", "MAE_std"):
        assert table[column].dtype.kind == "f" and math.isfinite(table[column].iloc[0])
    assert 0.0 <= table[key].iloc[0] <= 100.0

# MMSA_run('khar', …) for every dataset: tests/test_khar_mmsa_run.py
