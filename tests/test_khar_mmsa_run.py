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
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(first), epochs=1)
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
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(path), epochs=1)
    _run_logged(caplog, config, mmsa_run_kwargs)
    with open(path, "rb") as f:
        data = pickle.load(f)
    data["train"]["audio"][0, 0, 0] += np.float32(0.5)  # one value, same shapes and sizes
    path.write_bytes(pickle.dumps(data, protocol=4))
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert "another config, modalities, seed or data; pretraining again" in log and REUSED not in log


def test_modalities_change_pretrains_and_vision_adapters_arrive(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                fast_mmsa, caplog):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), epochs=1)
    _run_logged(caplog, dict(config, modalities="ta"), mmsa_run_kwargs)
    saved = mmsa_run_kwargs["model_save_dir"]
    assert sorted(safe_torch_load(saved / "khar-mosi-adapters.pt")["states"]) == ["a", "t"]
    log = _run_logged(caplog, config, mmsa_run_kwargs)  # the full model, same folder
    assert "another config, modalities, seed or data; pretraining again" in log and REUSED not in log
    modalities, compared = _adapters_arrived(saved)
    assert modalities == ["a", "t", "v"] and compared > 0


def test_matching_file_without_a_modality_pretrains_again(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                         fast_mmsa, caplog):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), epochs=1)
    _run_logged(caplog, config, mmsa_run_kwargs)
    adapters = mmsa_run_kwargs["model_save_dir"] / "khar-mosi-adapters.pt"
    saved = safe_torch_load(adapters)
    del saved["states"]["v"]  # same key, vision missing (a file written by hand or by an old version)
    torch.save(saved, adapters)
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert "lack the adapters of modality ['v']; pretraining again" in log and REUSED not in log
    assert _adapters_arrived(mmsa_run_kwargs["model_save_dir"])[0] == ["a", "t", "v"]


# ============================================================================================
# Bad settings fail before anything is read or trained (issue 7, item 3)
# ============================================================================================
from khar_mmsa.config import ConfigError  # noqa: E402

NAN = float("nan")


def _nothing_trained(kwargs) -> None:
    saved = kwargs["model_save_dir"]
    assert not saved.exists() or list(saved.iterdir()) == []   # no checkpoint, adapters, resume file
    assert not (kwargs["res_save_dir"] / "normal" / "mosi.csv").exists()


@pytest.mark.parametrize("key,value,message", [
    ("learning_rate", -1e-3, "learning_rate=-0.001: must be a finite number > 0"),
    ("learning_rate", NAN, "learning_rate=nan: must be a finite number > 0"),
    ("learning_rate_bert", -3e-5, "learning_rate_bert=-3e-05: must be a finite number > 0"),
    ("pretrain_learning_rate", -1e-4, "pretrain_learning_rate=-0.0001: must be a finite number > 0"),
    ("batch_size", 0, "batch_size=0: must be an integer >= 2"),
    ("batch_size", 1, "batch_size=1: must be an integer >= 2"),
    ("batch_size", "64", "batch_size='64': expected int, got str; must be an integer >= 2"),
    ("epochs", 0, "epochs=0: must be an integer >= 1"),
    ("early_stop", 0, "early_stop=0: must be an integer >= 1"),
    ("pretrain_epochs", 0, "pretrain_epochs=0: must be an integer >= 1 (to skip adapter pretraining set "
                           "pretrain_adapters=False)"),
    ("grad_clip", NAN, "grad_clip=nan: must be a finite number (<= 0 disables clipping)"),
    ("weight_decay", float("inf"), "weight_decay=inf: must be a finite number >= 0"),
])
def test_bad_setting_is_refused_before_any_file_is_read(key, value, message, tiny_features, tiny_bert,
                                                        mmsa_run_kwargs, monkeypatch):
    import khar_mmsa.safe_io as safe_io
    reads = []
    monkeypatch.setattr(safe_io, "load_pickle", lambda *a, **k: reads.append(a) or pytest.fail("read"))
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), **{key: value})
    with pytest.raises(ConfigError) as ei:
        MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    assert message in str(ei.value), str(ei.value)
    assert reads == []
    _nothing_trained(mmsa_run_kwargs)


def test_use_finetune_contradicting_finetune_bert_is_refused(tiny_features, tiny_bert, mmsa_run_kwargs):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")),
                  use_finetune=False, finetune_bert=True)
    with pytest.raises(ConfigError, match="use_finetune=False and finetune_bert=True disagree"):
        MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    _nothing_trained(mmsa_run_kwargs)


def test_use_finetune_false_freezes_bert(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa, monkeypatch):
    """MMSA's own switch reaches the model: with use_finetune=False BERT's weights do not move."""
    from khar_mmsa.model.khar import KHaR
    built = []
    original = KHaR.__init__
    monkeypatch.setattr(KHaR, "__init__", lambda self, args: (original(self, args), built.append(self))[0])
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")),
                  use_finetune=False, pretrain_adapters=False)
    MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    assert built and built[0].cfg.finetune_bert is False
    assert not any(p.requires_grad for p in built[0].harvesters["t"].encoder.parameters())


# ============================================================================================
# Data refused before training (issue 7, items 5 and 7)
# ============================================================================================
from khar_mmsa.safe_io import PickleSizeError  # noqa: E402
from khar_mmsa.validation import FeatureValidationError  # noqa: E402


def _tiny_copy(tiny_features, tmp_path, name="mosi.pkl", edit=None):
    with open(tiny_features("mosi"), "rb") as f:
        data = pickle.load(f)
    if edit is not None:
        edit(data)
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def _refused(path, match, tiny_bert, kwargs, **extra):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(path))
    with pytest.raises((FeatureValidationError, PickleSizeError)) as ei:
        MMSA_run("khar", "mosi", config=config, **kwargs, **extra)
    assert str(ei.value).startswith(f"{path} ") or str(ei.value).startswith(f"{path}:"), str(ei.value)
    assert match in str(ei.value), str(ei.value)
    _nothing_trained(kwargs)
    return str(ei.value)


def _leak(data):
    data["test"]["id"] = list(data["test"]["id"])
    data["test"]["id"][3] = data["train"]["id"][5]


def _tiny_valid(data):
    for key, value in list(data["valid"].items()):
        data["valid"][key] = value[:1]


def _constant_test_labels(data):
    data["test"]["regression_labels"][:] = 0.0


def _overflow(data):
    data["train"]["vision"] = data["train"]["vision"].astype(np.float64)
    data["train"]["vision"][2, 0, 0] = 1e39


@pytest.mark.parametrize("edit,match", [
    (_leak, "[test/id]: 1 clip id(s) also occur in the train split"),
    (_tiny_valid, "[valid/regression_labels]: has 1 sample(s); MMSA's metrics need at least 2"),
    (_constant_test_labels, "[test/regression_labels]: all 8 labels are 0; Pearson's Corr is undefined"),
    (_overflow, "[train/vision]: has 1 float64 value(s) beyond float32's range"),
])
def test_bad_data_is_refused_through_mmsa_run(edit, match, tiny_features, tiny_bert, mmsa_run_kwargs, tmp_path):
    _refused(_tiny_copy(tiny_features, tmp_path, edit=edit), match, tiny_bert, mmsa_run_kwargs)


def test_duplicate_id_inside_a_split_warns_and_trains(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa,
                                                      caplog, tmp_path):
    def dup(data):
        data["train"]["id"] = list(data["train"]["id"])
        data["train"]["id"][1] = data["train"]["id"][0]
    path = _tiny_copy(tiny_features, tmp_path, edit=dup)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(path), pretrain_adapters=False,
                  epochs=1)
    log = _run_logged(caplog, config, mmsa_run_kwargs)
    assert f"{path} [train/id]: 1 clip id(s) occur more than once in this split" in log
    assert (mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.csv").is_file()


def test_pickle_declaring_a_huge_array_is_refused_naming_the_file(tiny_bert, mmsa_run_kwargs, tmp_path):
    from numpy._core.multiarray import _reconstruct

    class Huge:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (10 ** 12,), b"d"))
    path = tmp_path / "tiny.pkl"
    path.write_bytes(pickle.dumps({"train": {"audio": Huge()}}))
    msg = _refused(path, "declares an array of shape (1000000000000,) and dtype float64 (7.3 TiB), but the "
                   f"file holds only {path.stat().st_size} bytes; refusing to allocate it", tiny_bert,
                   mmsa_run_kwargs)
    assert "MemoryError" not in msg


# ---- per-modality feature files --------------------------------------------------------------
def _modality_file(tiny_features, tmp_path, name, keys, edit=None):
    with open(tiny_features("mosi"), "rb") as f:
        data = pickle.load(f)
    only = {split: {k: data[split][k] for k in keys} for split in ("train", "valid", "test")}
    if edit is not None:
        edit(only)
    path = tmp_path / name
    path.write_bytes(pickle.dumps(only, protocol=4))
    return path


def test_per_modality_feature_files_are_accepted_and_used(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                          fast_mmsa, tmp_path):
    def wider_audio(only):  # 7 audio features instead of MOSI's 5: only this file has them
        for split in only:
            a = only[split]["audio"]
            only[split]["audio"] = np.concatenate([a, a[..., :2]], axis=-1)
    feature_a = _modality_file(tiny_features, tmp_path, "audio.pkl", ("audio", "audio_lengths"), wider_audio)
    feature_v = _modality_file(tiny_features, tmp_path, "vision.pkl", ("vision", "vision_lengths"))
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")),
                  pretrain_adapters=False, epochs=1)
    MMSA_run("khar", "mosi", config=config, feature_A=str(feature_a), feature_V=str(feature_v), **mmsa_run_kwargs)
    checkpoint = safe_torch_load(mmsa_run_kwargs["model_save_dir"] / "khar-mosi.pth")
    in_widths = {k: v.shape[-1] for k, v in checkpoint.items()
                 if k.startswith("Model.harvesters.a.encoder.") and k.endswith("weight") and v.ndim == 2}
    assert 7 in in_widths.values(), in_widths  # the audio encoder was built for feature_A's width
    assert (mmsa_run_kwargs["res_save_dir"] / "normal" / "mosi.csv").is_file()


def test_per_modality_file_without_its_lengths_is_refused(tiny_features, tiny_bert, mmsa_run_kwargs, tmp_path):
    feature_a = _modality_file(tiny_features, tmp_path, "audio.pkl", ("audio",))
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    with pytest.raises(FeatureValidationError) as ei:
        MMSA_run("khar", "mosi", config=config, feature_A=str(feature_a), **mmsa_run_kwargs)
    assert str(ei.value).startswith(f"{feature_a} [train/audio_lengths]: missing key 'audio_lengths'")
    _nothing_trained(mmsa_run_kwargs)


def test_per_modality_file_with_other_sample_counts_is_refused(tiny_features, tiny_bert, mmsa_run_kwargs,
                                                               tmp_path):
    def drop_one(only):
        only["test"] = {k: v[:-1] for k, v in only["test"].items()}
    feature_v = _modality_file(tiny_features, tmp_path, "vision.pkl", ("vision", "vision_lengths"), drop_one)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))
    with pytest.raises(FeatureValidationError) as ei:
        MMSA_run("khar", "mosi", config=config, feature_V=str(feature_v), **mmsa_run_kwargs)
    assert str(ei.value).startswith(f"{feature_v} [test/vision]: has 7 samples but the main feature file's "
                                    f"test split has 8")
    _nothing_trained(mmsa_run_kwargs)
