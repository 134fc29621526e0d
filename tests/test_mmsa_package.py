"""Tests of :mod:`khar_mmsa.registration` and :mod:`khar_mmsa.runs`: registration (it adds), the 'khar' and 'simsv2' keys, each
fix for MMSA 2.2.1 on today's stack, the runner's results files and checks, and real CPU runs of
TFN, MulT and Self-MM through MMSA's own ``MMSA_run``.

Each fix has a test that fails without it: either it runs with :func:`unregister` applied and
asserts MMSA's original failure, or it checks the behaviour the fix adds.
"""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import pickle
import shutil
import subprocess
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

import khar_mmsa  # noqa: F401 - registers 'khar' with MMSA
from khar_mmsa import registration
from khar_mmsa.registration import configs
from khar_mmsa.runs import results_files
from khar_mmsa.training.checkpoints import MissingCheckpointError
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

    def __init__(self, cfg: Any) -> None:  # the run's KHaRConfig, as KHaR takes it
        super().__init__()
        self.head = nn.Linear(cfg.feature_dims[1], 1)

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None):
        return {"M": self.head(audio.mean(dim=1))}


class DummySettings:
    """Stands in for the KHaRConfig khar_settings makes of MMSA's args: the shapes DummyKHaR reads
    (the dummy takes any other key, and pretrains nothing)."""

    def __init__(self, args: Any) -> None:
        self.feature_dims = list(args["feature_dims"])

    def with_data_shapes(self, args: Any) -> "DummySettings":
        return DummySettings(args)


class DummyTrainer:
    """Stands in for khar_mmsa.training.trainer.KHaRTrainer; records what it saw."""

    write_checkpoint = True
    events: List[Dict[str, Any]] = []

    def __init__(self, args: Any, **kwargs: Any) -> None:
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
    monkeypatch.setattr(importlib.import_module("khar_mmsa.runs.model_and_trainer"), "khar_settings",
                        DummySettings)
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


def _tidy(res_dir: Path, dataset: str = "mosi") -> pd.DataFrame:
    return pd.read_csv(results_files.tidy_csv_path(res_dir, dataset))


# ============================================================================================
# Registration: it adds
# ============================================================================================
def _value(obj, attr):
    """What ``obj.attr`` holds: its ``__dict__`` entry (absent: None), or a function's ``__code__``."""
    return getattr(obj, attr) if attr == "__code__" else vars(obj).get(attr)


def test_register_is_idempotent_and_unregister_restores_everything() -> None:
    assert registration.is_registered()
    targets = registration.registered_names()
    assert len(targets) == len(set((id(o), a) for o, a in targets))
    patched = {(id(o), a): _value(o, a) for o, a in targets}
    registration.register()  # idempotent: nothing re-wrapped
    assert registration.registered_names() == targets
    try:
        registration.unregister()
        assert not registration.is_registered() and registration.registered_names() == []
        originals = {(id(o), a): _value(o, a) for o, a in targets}
        assert all(originals[k] is not patched[k] for k in patched)
        registration.register()
        registration.unregister()
        assert all(_value(o, a) is originals[(id(o), a)] for o, a in targets)
        assert "khar" not in importlib.import_module("MMSA.trains.ATIO").ATIO().TRAIN_MAP
    finally:
        registration.register()
    assert {(id(o), a) for o, a in registration.registered_names()} == set(patched)


#: Every MMSA name registration touches (at most 16, each listed with its reason in docs/mmsa-changes.md).
REGISTERED_NAMES = [
    "AMIO.__init__", "ATIO.__init__", "MMDataset.__init__", "MetricsTop.__init__", "MMSA.data_loader.pickle",
    "MMSA_run.__code__", "MMSA_test.__code__", "get_config_regression.__code__", "get_config_tune.__code__",
    "MMSA.run.torch", "MMSA.run.round", "MMSA.trains.singleTask.MULT.ReduceLROnPlateau",
    "MMSA.trains.singleTask.MMIM.ReduceLROnPlateau", "MMSA.trains.missingTask.TFR_NET.ReduceLROnPlateau"]


def _registered() -> List[str]:
    return [f"{getattr(o, '__name__', type(o).__name__)}.{a}" for o, a in registration.registered_names()]


def test_registration_names_only_what_it_adds_and_the_listed_fixes() -> None:
    """Every replaced MMSA name is a table lookup that adds our keys, an entry point's body that
    routes 'khar', or one of the listed fixes (nothing else of MMSA is touched), in this order."""
    assert _registered() == REGISTERED_NAMES and len(REGISTERED_NAMES) <= 16


def test_every_registered_name_is_listed_with_its_reason_in_the_docs() -> None:
    """docs/mmsa-changes.md opens a table row with each touched MMSA name, spelled as here, and
    says how many there are."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mmsa-changes.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    listed = [name for row in rows for name in row.split("|")[1].replace("`", "").replace(",", " ").split()]
    assert sorted(listed) == sorted(_registered())
    assert f"replaces {len(_registered())} MMSA names" in doc


def test_entry_points_are_mmsa_own_function_objects_with_our_bodies() -> None:
    """One function object per entry point in every namespace MMSA binds it in, its body ours, its
    defaults, annotations and docstring MMSA's; MMSA's informational lists stay MMSA's."""
    from khar_mmsa.registration.entry_points import BODIES
    for name, (module, body) in BODIES.items():
        function = getattr(importlib.import_module(module), name)
        holders = [m for m in (MMSA, RUN, CONFIG) if hasattr(m, name)]
        assert all(getattr(m, name) is function for m in holders) and len(holders) >= 2
        assert function.__code__ is body.__code__ and function.__module__ == module
        assert function.__doc__ and "route" not in function.__doc__
    assert list(inspect.signature(MMSA.MMSA_run).parameters)[:3] == ["model_name", "dataset_name", "config_file"]
    assert inspect.signature(MMSA.MMSA_run).parameters["gpu_ids"].default == [0]
    assert "KHaR" not in MMSA.SUPPORTED_MODELS and "SIMSV2" not in RUN.SUPPORTED_DATASETS


def test_the_bodies_read_no_global_name_and_have_no_closure() -> None:
    """A body runs with MMSA's module globals: a global it read would be MMSA's (or missing)."""
    import dis
    from khar_mmsa.registration.entry_points import BODIES
    for name, (_, body) in BODIES.items():
        code = body.__code__
        assert code.co_freevars == () and code.co_cellvars == ()
        assert not [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")], name


def test_an_mmsa_whose_entry_point_has_other_parameters_is_refused_by_name(monkeypatch) -> None:
    from khar_mmsa.registration import entry_points

    def body_of_MMSA_test(config, weights_path, feature_path):  # noqa: N802 - MMSA_test without gpu_id
        return None
    monkeypatch.setitem(entry_points.BODIES, "MMSA_test", ("MMSA.run", body_of_MMSA_test))
    registration.unregister()
    try:
        with pytest.raises(TypeError, match=r"MMSA\.run\.MMSA_test: MMSA 2\.2\.1's parameters"):
            registration.register()
        assert not registration.is_registered()
        assert RUN.MMSA_test.__code__.co_name == "MMSA_test" and RUN.MMSA_run.__code__.co_name == "MMSA_run"
    finally:
        monkeypatch.undo()
        registration.register()
    assert _registered() == REGISTERED_NAMES


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


def test_khar_key_unknown_without_registration(dummy_khar: Path, unregistered: None) -> None:
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
    tune = RUN.get_config_tune(model, "simsv2")
    assert tune["feature_dims"] == [768, 25, 177] and tune["KeyEval"] == "Loss"


@pytest.mark.parametrize("model", ["tfn", "mult", "self_mm", "lf_dnn"])
def test_mmsa_own_entries_read_exactly_as_mmsa_reads_them(model: str) -> None:
    registered = CONFIG.get_config_regression(model, "mosi"), RUN.get_config_tune(model, "sims", "", False)
    registration.unregister()
    try:
        assert registered == (CONFIG.get_config_regression(model, "mosi"), RUN.get_config_tune(model, "sims", "", False))
    finally:
        registration.register()


def test_default_config_without_registration_has_no_simsv2(unregistered: None) -> None:
    with pytest.raises(KeyError, match="simsv2"):
        CONFIG.get_config_regression("tfn", "simsv2")


def test_user_config_file_is_used_as_is(dummy_khar: Path) -> None:
    args = CONFIG.get_config_regression("khar", "mosi", dummy_khar)
    assert args["seq_lens"] == list(TINY_SEQ_LENS) and args["batch_size"] == 8
    with pytest.raises(KeyError):  # nothing of ours merged into a user's own file
        CONFIG.get_config_regression("tfn", "mosi", dummy_khar)


def test_dataset_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(configs.DATASET_ROOT_ENV, str(tmp_path))
    args = CONFIG.get_config_regression("tfn", "simsv2")
    assert Path(args["featurePath"]) == tmp_path / "SIMS_V2/Processed/unaligned.pkl"
    monkeypatch.delenv(configs.DATASET_ROOT_ENV)
    root = _mmsa_json("regression")["datasetCommonParams"]["dataset_root_dir"]
    assert CONFIG.get_config_regression("tfn", "mosi")["featurePath"].startswith(root)


def test_missing_config_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configs, "source_tree_configs", lambda: None)   # as an installed wheel
    monkeypatch.setattr(configs, "CONFIG_PACKAGE", "khar_mmsa.no_such_configs")
    with pytest.raises(configs.ConfigOverlayMissingError, match="reinstall"):
        CONFIG.get_config_regression("tfn", "simsv2")
    # what MMSA's own JSON has is read by MMSA's own getter: it needs none of our files
    assert CONFIG.get_config_regression("tfn", "mosi")["model_name"] == "tfn"


def test_a_source_checkout_reads_its_own_config_files(tmp_path: Path) -> None:
    """A checkout imported through PYTHONPATH reads the mmsa_configs/ beside it, not the files of
    whichever khar-mmsa is installed: a copy of the tree with one changed value reads that value."""
    repo = Path(configs.__file__).resolve().parents[2]
    copy = tmp_path / "checkout"
    shutil.copytree(repo / "khar_mmsa", copy / "khar_mmsa", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "mmsa_configs", copy / "mmsa_configs")
    shutil.copy(repo / "pyproject.toml", copy / "pyproject.toml")
    path = copy / "mmsa_configs" / "config_regression.json"
    data = json.loads(path.read_text())
    data["khar"]["commonParams"]["marker_of_this_checkout"] = 7
    path.write_text(json.dumps(data))
    code = ("from khar_mmsa.registration import configs; "
            "print(configs.overlay('regression')['khar']['commonParams'].get('marker_of_this_checkout'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(copy)})
    assert out.stdout.strip() == "7"


def test_our_config_json_only_adds() -> None:
    """Our JSON only adds: no MMSA model entry is restated for MMSA's own datasets."""
    for kind in configs.CONFIG_KINDS:
        ours = configs.overlay(kind)
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
    assert "Mult_acc_3" in metrics.getMetics("simsv2")(pred, true)


def test_simsv2_unknown_without_registration(unregistered: None) -> None:
    metrics = importlib.import_module("MMSA.utils.metricsTop").MetricsTop("regression")
    with pytest.raises(KeyError):
        metrics.getMetics("simsv2")
    pred, true = torch.tensor([[0.1], [-0.4], [0.3]]), torch.tensor([[0.5], [-0.5], [0.2]])
    assert "Mult_acc_3" in registration.metrics_for("SIMSv2")(pred, true)
    assert "Has0_acc_2" in registration.metrics_for("mosi")(pred, true)


# ============================================================================================
# Fixes MMSA needs to run: CPU, ReduceLROnPlateau, numpy 2 cells, weights_only
# ============================================================================================
def test_gpu_ids_on_cpu_falls_back_with_one_warning(dummy_khar: Path, mmsa_run_kwargs,
                                                    fast_mmsa, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="MMSA")
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    cuda_warnings = [r for r in caplog.records if "CUDA is not available" in r.getMessage()]
    assert len(cuda_warnings) == 1 and cuda_warnings[0].name.split(".")[0] == "MMSA"  # MMSA's handlers get it
    caplog.clear()
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **dict(mmsa_run_kwargs, gpu_ids=[]))
    assert not [r for r in caplog.records if "CUDA is not available" in r.getMessage()]
    # no gpu_ids given: MMSA_run's default [0] is no request for a GPU, so nothing to warn about
    caplog.clear()
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar),
                  **{k: v for k, v in mmsa_run_kwargs.items() if k != "gpu_ids"})
    assert not [r for r in caplog.records if "CUDA is not available" in r.getMessage()]


def test_set_device_fails_on_cpu_without_registration(mmsa_run_kwargs, unregistered: None) -> None:
    with pytest.raises(ValueError, match="cuda device"):
        MMSA.MMSA_run("tfn", "mosi", **mmsa_run_kwargs)


def test_mmsa_run_torch_skips_cpu_set_device_and_loads_weights_only(tmp_path: Path, monkeypatch) -> None:
    assert RUN.torch is not torch and torch.cuda.set_device.__module__.startswith("torch")
    RUN.torch.cuda.set_device(torch.device("cpu"))  # no error: skipped
    crafted = tmp_path / "crafted.pth"
    torch.save({"w": torch.zeros(1), "evil": types.SimpleNamespace(x=1)}, crafted)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert isinstance(torch.load(crafted)["evil"], types.SimpleNamespace)  # torch itself is untouched
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported global"):
        RUN.torch.load(crafted)


TRAINER_MODULES = ["MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                   "MMSA.trains.missingTask.TFR_NET"]


@pytest.mark.parametrize("module", TRAINER_MODULES)
def test_reduce_lr_on_plateau_accepts_verbose(module: str) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = importlib.import_module(module).ReduceLROnPlateau(opt, mode="min", verbose=True, patience=2)
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and sched.patience == 2


def test_reduce_lr_on_plateau_verbose_fails_without_registration(unregistered: None) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for module in TRAINER_MODULES:
        with pytest.raises(TypeError, match="verbose"):
            importlib.import_module(module).ReduceLROnPlateau(opt, mode="min", verbose=True)


def test_plain_round_gives_python_numbers() -> None:
    assert RUN.round(np.float64(71.234), 2) == 71.23 and type(RUN.round(np.float64(71.234), 2)) is float
    assert str((RUN.round(np.mean([0.5, 0.7]) * 100, 2), RUN.round(np.std([0.5, 0.7]) * 100, 2))) == "(60.0, 10.0)"


# ============================================================================================
# The runner's results files: MMSA's table and the numeric table
# ============================================================================================
def test_results_files_mmsa_layout_and_numbers(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa) -> None:
    kwargs = dict(mmsa_run_kwargs, seeds=[1, 2])
    row = MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    mmsa_csv = results_files.results_csv_path(kwargs["res_save_dir"], "mosi")
    assert mmsa_csv.read_text().splitlines() == [
        "Model,Has0_acc_2,MAE,Corr", 'khar,"(50.0, 0.0)","(75.0, 5.0)","(10.0, 0.0)"',
        'khar,"(50.0, 0.0)","(75.0, 5.0)","(10.0, 0.0)"']
    table = _tidy(kwargs["res_save_dir"])
    assert list(table.columns) == ["Model", "seeds", "Has0_acc_2", "Has0_acc_2_std", "MAE",
                                   "MAE_std", "Corr", "Corr_std"]
    assert len(table) == 2 and (table["seeds"] == "1 2").all()
    assert all(table[c].dtype.kind == "f" for c in table.columns[2:])
    assert table["MAE"].tolist() == [75.0, 75.0] and table["MAE_std"].tolist() == [5.0, 5.0]
    assert row["MAE"] == 75.0 and type(row["MAE"]) is float
    numbers = results_files.read_results_table(mmsa_csv)
    assert numbers["MAE"].tolist() == [75.0, 75.0] and numbers["MAE_std"].tolist() == [5.0, 5.0]


def test_rows_already_in_the_results_file_stay_byte_for_byte(dummy_khar: Path, mmsa_run_kwargs,
                                                             fast_mmsa) -> None:
    mmsa_csv = results_files.results_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi")
    mmsa_csv.parent.mkdir(parents=True)
    old = 'Model,Has0_acc_2,MAE,Corr\ntfn,"(np.float64(50.0), np.float64(0.0))","(71.5, 1.25)",(60.0 0.0)\n'
    mmsa_csv.write_text(old)
    mmsa_csv.chmod(0o600)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    text = mmsa_csv.read_text()
    assert text.startswith(old) and text[len(old):] == 'khar,"(50.0, 0.0)","(70.0, 0.0)","(10.0, 0.0)"\n'
    assert mmsa_csv.stat().st_mode & 0o777 == 0o600


def test_numeric_rows_already_in_the_tidy_file_stay_byte_for_byte(dummy_khar: Path, mmsa_run_kwargs,
                                                                  fast_mmsa) -> None:
    """Old rows written as numbers in spellings pandas would not write back (``50``, ``75.00``,
    ``1e1``, an empty std): an append that read them into a table and wrote it out would change them."""
    tidy = results_files.tidy_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi")
    tidy.parent.mkdir(parents=True)
    old = ("Model,seeds,Has0_acc_2,Has0_acc_2_std,MAE,MAE_std,Corr,Corr_std\n"
           "tfn,1111,50,0,75.00,,1e1,0.10\n"
           "khar,1 2,49.5,1.25,70,5e-1,10.0,0\n")
    tidy.write_text(old)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    text = tidy.read_text()
    assert text.startswith(old) and text[len(old):] == "khar,1,50.0,0.0,70.0,0.0,10.0,0.0\n"


@pytest.mark.parametrize("table", ["mmsa", "tidy"])
def test_a_results_file_without_a_final_newline_gets_the_row_on_a_line_of_its_own(
        table: str, dummy_khar: Path, mmsa_run_kwargs, fast_mmsa) -> None:
    """A last row without its newline (a file edited by hand) is complete: it is kept as it is and
    the new row starts on the next line."""
    res_dir = mmsa_run_kwargs["res_save_dir"]
    path = results_files.results_csv_path(res_dir, "mosi") if table == "mmsa" else \
        results_files.tidy_csv_path(res_dir, "mosi")
    path.parent.mkdir(parents=True)
    old = ('Model,Has0_acc_2,MAE,Corr\ntfn,"(50.0, 0.0)","(71.5, 1.25)","(60.0, 0.0)"' if table == "mmsa" else
           "Model,seeds,Has0_acc_2,Has0_acc_2_std,MAE,MAE_std,Corr,Corr_std\ntfn,1111,50.0,0.0,71.5,1.25,60.0,0.0")
    path.write_text(old)
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    new = 'khar,"(50.0, 0.0)","(70.0, 0.0)","(10.0, 0.0)"' if table == "mmsa" else "khar,1,50.0,0.0,70.0,0.0,10.0,0.0"
    assert path.read_text() == old + "\n" + new + "\n"
    assert len(pd.read_csv(path)) == 2


def test_a_results_file_with_other_columns_is_refused_and_kept(dummy_khar: Path, mmsa_run_kwargs,
                                                               fast_mmsa) -> None:
    mmsa_csv = results_files.results_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi")
    mmsa_csv.parent.mkdir(parents=True)
    mmsa_csv.write_text("Model,Acc\nx,1\n")
    with pytest.raises(results_files.ResultsFileError, match="differ"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert mmsa_csv.read_text() == "Model,Acc\nx,1\n"


@pytest.mark.parametrize("damage", ["unparsable", "read-only", "symlink", "lock-symlink"])
def test_a_bad_results_file_fails_before_training(damage: str, dummy_khar: Path, mmsa_run_kwargs,
                                                  tmp_path: Path) -> None:
    mmsa_csv = results_files.results_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi")
    mmsa_csv.parent.mkdir(parents=True)
    if damage == "unparsable":
        mmsa_csv.write_bytes(b'Model,MAE\n"unclosed,1\n')
    elif damage == "read-only":
        mmsa_csv.write_text("Model,MAE\n")
        mmsa_csv.chmod(0o444)
        if os.access(mmsa_csv, os.W_OK):
            pytest.skip("root can write a read-only file")
    else:
        secret = tmp_path / "secret.txt"
        secret.write_text("user,password\n")
        link = mmsa_csv if damage == "symlink" else mmsa_csv.with_name(mmsa_csv.name + ".lock")
        link.symlink_to(secret)
    with pytest.raises(results_files.ResultsFileError):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert DummyTrainer.events == []
    if damage.endswith("symlink"):
        assert (tmp_path / "secret.txt").read_text() == "user,password\n"


def test_a_dangling_link_at_the_lock_file_is_never_followed(tmp_path: Path) -> None:
    csv_file = tmp_path / "normal" / "mosi.csv"
    csv_file.parent.mkdir()
    outside = tmp_path / "outside.txt"
    (csv_file.parent / "mosi.csv.lock").symlink_to(outside)
    with pytest.raises(results_files.ResultsFileError, match="link"):
        results_files.append_row(csv_file, {"Model": "a", "MAE": 1.0})
    assert not outside.exists()


def _append_many(csv_file: str, tag: str, count: int) -> None:
    for i in range(count):
        results_files.append_row(Path(csv_file), {"Model": f"{tag}{i}", "seeds": "1", "MAE": float(i),
                                                  "MAE_std": 0.5})


def test_concurrent_processes_append_readable_rows(tmp_path: Path) -> None:
    csv_file = str(tmp_path / "normal" / "mosi.tidy.csv")
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


def test_concurrent_threads_run_into_one_results_file(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa,
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
    assert len(_tidy(mmsa_run_kwargs["res_save_dir"])) == 2
    assert logging.getLogger("MMSA").handlers == handlers


def test_repeated_runs_do_not_repeat_log_lines(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa) -> None:
    mmsa_logger = logging.getLogger("MMSA")
    before = list(mmsa_logger.handlers)
    for _ in range(3):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
        assert mmsa_logger.handlers == before
    log_text = (Path(mmsa_run_kwargs["log_dir"]) / "khar-mosi.log").read_text()
    assert log_text.count(" khar on mosi ") == 3


# ============================================================================================
# Checkpoints, seeds, workers
# ============================================================================================
def test_a_checkpoint_this_run_did_not_write_is_refused_and_kept(dummy_khar: Path, mmsa_run_kwargs,
                                                                 fast_mmsa, monkeypatch) -> None:
    model_dir = Path(mmsa_run_kwargs["model_save_dir"])
    model_dir.mkdir(parents=True)
    stale = {f"Model.{k}": v for k, v in DummyKHaR(types.SimpleNamespace(feature_dims=[768, 5, 20])).state_dict().items()}
    torch.save(stale, model_dir / "khar-mosi.pth")
    before = (model_dir / "khar-mosi.pth").read_bytes()
    monkeypatch.setattr(DummyTrainer, "write_checkpoint", False)
    with pytest.raises(MissingCheckpointError, match="khar-mosi.pth.*earlier run"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert (model_dir / "khar-mosi.pth").read_bytes() == before  # never deleted or tested
    assert not results_files.results_csv_path(mmsa_run_kwargs["res_save_dir"], "mosi").exists()


def test_duplicate_seeds_are_refused(dummy_khar: Path, mmsa_run_kwargs) -> None:
    from khar_mmsa.runs.runner import SeedError
    with pytest.raises(SeedError, match=r"\[1\] given more than once"):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **dict(mmsa_run_kwargs, seeds=[1, 1]))


def test_num_workers_default_is_zero_on_cpu(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa) -> None:
    kwargs = {k: v for k, v in mmsa_run_kwargs.items() if k != "num_workers"}
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), **kwargs)
    assert DummyTrainer.events[-1]["num_workers"] == 0


def test_update_epochs_above_batches_warns(dummy_khar: Path, mmsa_run_kwargs, fast_mmsa, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="MMSA")
    MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar), config={"update_epochs": 8},
                  **mmsa_run_kwargs)
    assert DummyTrainer.events[-1]["batches"] == 3
    assert any("update_epochs=8" in r.getMessage() for r in caplog.records)


# ============================================================================================
# MMSA_test: MMSA's own for its models; khar_mmsa.test for every model
# ============================================================================================
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


def test_khar_mmsa_test_falls_back_to_cpu_and_matches_mmsa(tmp_path: Path, caplog) -> None:
    config, weights, feature = _tfn_test_files(tmp_path)
    caplog.set_level(logging.WARNING, logger="MMSA")
    prediction = khar_mmsa.test(config, str(weights), str(feature), gpu_id=0)
    assert any("MMSA_test runs on the CPU" in r.getMessage() for r in caplog.records)
    assert prediction == MMSA.MMSA_test(config, str(weights), str(feature), gpu_id=-1)


def test_khar_mmsa_test_never_lets_mmsa_plain_unpickle_the_users_file(tmp_path: Path, monkeypatch) -> None:
    """For MMSA's own models khar_mmsa.test reads the user's file with the restricted unpickler;
    MMSA's plain ``pickle.load`` only reads the checked sample written again from it."""
    config, weights, feature = _tfn_test_files(tmp_path)
    opened: List[str] = []

    class RecordingPickle:
        def load(self, file, *args, **kwargs):
            opened.append(file.name)
            return pickle.load(file, *args, **kwargs)
    monkeypatch.setattr(RUN, "pickle", RecordingPickle())
    prediction = khar_mmsa.test(config, str(weights), str(feature), gpu_id=-1)
    assert len(opened) == 1 and Path(opened[0]).resolve() != feature.resolve()
    monkeypatch.undo()
    assert prediction == MMSA.MMSA_test(config, str(weights), str(feature), gpu_id=-1)


def test_mmsa_own_mmsa_test_is_left_as_mmsa_made_it(tmp_path: Path) -> None:
    config, weights, feature = _tfn_test_files(tmp_path)
    with pytest.raises((AssertionError, RuntimeError)):  # MMSA's own: gpu_id=0 needs CUDA
        MMSA.MMSA_test(config, str(weights), str(feature), gpu_id=0)


# ============================================================================================
# Safe loading and validation
# ============================================================================================
@pytest.fixture
def recording_hooks(monkeypatch: pytest.MonkeyPatch) -> Dict[str, list]:
    """Replace khar_mmsa.io.pickles / khar_mmsa.data.validation by recorders (plain pickle inside)."""
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

    from khar_mmsa.io import pickles as real_pickles
    pickles = types.ModuleType("khar_mmsa.io.pickles")
    pickles.__dict__.update({k: v for k, v in vars(real_pickles).items() if not k.startswith("__")})
    pickles.load_pickle = load_pickle
    validation = types.ModuleType("khar_mmsa.data.validation")
    validation.validate_features = validate_features
    validation.main_file_ids = lambda data: None  # the recorder reads no clip ids
    monkeypatch.setitem(sys.modules, "khar_mmsa.io.pickles", pickles)
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


def test_real_unpickler_rejects_unsafe_pickle(dummy_khar: Path, mmsa_run_kwargs, tmp_path: Path) -> None:
    from khar_mmsa.io import pickles
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": types.SimpleNamespace()}))  # a non-allowed global
    with pytest.raises(pickles.UnsafePickleError):
        MMSA.MMSA_run("khar", "mosi", config_file=str(dummy_khar),
                      config={"featurePath": str(evil)}, **mmsa_run_kwargs)
    assert DummyTrainer.events == []


def test_feature_server_passes_other_files_to_pickle(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"x": 1}))
    with open(path, "rb") as f:
        assert DATA_LOADER.pickle.load(f) == {"x": 1}
    assert DATA_LOADER.pickle.dumps is pickle.dumps


def test_feature_server_only_in_the_data_loader_and_builtins_left_alone() -> None:
    import builtins
    assert type(DATA_LOADER.pickle).__name__ == "FeatureServer" and RUN.pickle is pickle
    assert all(vars(m)["__builtins__"] is vars(builtins) for m in (DATA_LOADER, RUN, CONFIG, MMSA))


def test_feature_server_is_reversible(unregistered: None) -> None:
    assert DATA_LOADER.pickle is pickle and RUN.pickle is pickle


# ============================================================================================
# End to end: MMSA's built-in models through MMSA's own MMSA_run, and through our runner
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
    mmsa_csv = results_files.results_csv_path(mmsa_run_kwargs["res_save_dir"], dataset)
    assert "np.float" not in mmsa_csv.read_text()
    table = results_files.read_results_table(mmsa_csv)
    assert table["Model"].tolist() == [model]
    key = "Has0_acc_2" if dataset == "mosi" else "Mult_acc_3"
    for column in (key, "MAE", "MAE_std"):
        assert math.isfinite(table[column].iloc[0])
    assert 0.0 <= table[key].iloc[0] <= 100.0
    assert not results_files.tidy_csv_path(mmsa_run_kwargs["res_save_dir"], dataset).exists()


def test_mmsa_model_through_our_runner(tiny_features, mmsa_run_kwargs, fast_mmsa) -> None:
    config = dict(E2E_OVERRIDES["tfn"], featurePath=str(tiny_features("mosi")))
    row = khar_mmsa.run("tfn", "mosi", config=config, **mmsa_run_kwargs)
    table = _tidy(mmsa_run_kwargs["res_save_dir"])
    assert table["Model"].tolist() == ["tfn"] and table["MAE"].iloc[0] == row["MAE"]

# MMSA_run('khar', …) for every dataset: tests/test_khar_mmsa_run.py
