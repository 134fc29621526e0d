"""Tests for KHaRConfig's validation: unknown keys, wrong types, impossible values."""
from __future__ import annotations

from typing import Any, Dict

import pytest

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np

from khar_mmsa.config import (BOOL_KEYS, ConfigError, KHaRConfig, memory_estimate, normalize_bools,
                              parse_bool)


def mmsa_args(**kw: Any) -> Dict[str, Any]:
    """A merged MMSA args dict as MMSA_run builds it for khar on MOSI, plus overrides."""
    args: Dict[str, Any] = {
        "model_name": "khar", "dataset_name": "mosi", "featurePath": "/d/MOSI/unaligned_50.pkl",
        "feature_dims": [768, 5, 20], "seq_lens": [50, 375, 500], "train_samples": 1284,
        "num_classes": 3, "language": "en", "KeyEval": "Loss", "missing_rate": [0.2] * 3,
        "missing_seed": [1111] * 3, "need_data_aligned": False, "use_bert": True,
        "device": "cpu", "model_save_path": "/tmp/khar-mosi.pth", "train_mode": "regression",
        "cur_seed": 1, "custom_feature": None, "feature_T": "", "feature_A": "", "feature_V": "",
        "batch_size": 64, "learning_rate": 3e-5,
    }
    args.update(kw)
    return args


def test_defaults_and_mmsa_args_are_valid() -> None:
    KHaRConfig()
    cfg = KHaRConfig.from_mmsa_args(mmsa_args())
    assert cfg.key_eval == "Loss" and cfg.batch_size == 64 and cfg.dataset_name == "mosi"


# --- unknown keys ----------------------------------------------------------------------------
def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"'num_expert' \(did you mean 'num_experts'\?\)"):
        KHaRConfig.from_mmsa_args(mmsa_args(num_expert=3))


def test_unknown_keys_all_listed() -> None:
    with pytest.raises(ConfigError) as ei:
        KHaRConfig.from_mmsa_args(mmsa_args(learing_rate=1e-4, zzzzqqq=1))
    msg = str(ei.value)
    assert "'learing_rate' (did you mean 'learning_rate'?)" in msg and "'zzzzqqq'" in msg


def test_unknown_key_allowed_when_not_strict() -> None:
    cfg = KHaRConfig.from_mmsa_args(mmsa_args(num_expert=3), strict=False)
    assert cfg.num_experts == 3


# --- wrong types -----------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("learning_rate", "3e-5"),        # string for a float
    ("batch_size", 32.0),             # float for an int
    ("batch_size", True),             # bool is not an int here
    ("finetune_bert", 2),             # an int other than 0/1 for a bool
    ("finetune_bert", "off"),         # a word other than true/false/yes/no
    ("mib_beta", False),              # bool for a float
    ("pretrained", 5),                # int for a str
    ("feature_dims", "768,5,20"),     # str for a list
    ("adapter_layers_text", 3),       # int for Optional[list]
])
def test_wrong_type(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"wrong type.*{key}="):
        KHaRConfig.from_mmsa_args(mmsa_args(**{key: value}))


def test_int_accepted_for_float() -> None:
    assert KHaRConfig.from_mmsa_args(mmsa_args(mib_beta=0)).mib_beta == 0


# --- impossible values -----------------------------------------------------------------------
def _bad(match: str, **kw: Any) -> None:
    with pytest.raises(ConfigError, match=match):
        KHaRConfig.from_mmsa_args(mmsa_args(**kw))
    with pytest.raises(ConfigError, match=match):  # direct construction checks the same
        KHaRConfig(**kw)


def test_top_k_greater_than_experts() -> None:
    _bad(r"top_k=4: must be between 1 and num_experts=3", num_experts=3, top_k=4)


def test_top_k_zero() -> None:
    _bad(r"top_k=0", top_k=0)


def test_top_k_equal_experts_ok() -> None:
    assert KHaRConfig(num_experts=3, top_k=3).top_k == 3


def test_negative_kappa() -> None:
    _bad(r"contrastive_kappa=-0.1: must be a finite number >= 0", contrastive_kappa=-0.1)


def test_negative_beta() -> None:
    _bad(r"mib_beta=-0.001: must be a finite number >= 0", mib_beta=-1e-3)


def test_batch_size_one_is_refused_even_without_contrastive() -> None:
    _bad(r"batch_size=1: must be an integer >= 2", batch_size=1)
    _bad(r"batch_size=1: must be an integer >= 2", batch_size=1, contrastive_weight=0.0)


def test_batch_size_two_ok() -> None:
    assert KHaRConfig(batch_size=2).batch_size == 2


def test_modal_dim_not_divisible_by_heads() -> None:
    _bad(r"modal_dim=100 is not divisible by encoder_heads=8", modal_dim=100)


def test_adapter_width_not_divisible_by_heads() -> None:
    _bad(r"adapter width\) is not divisible by adapter_heads=3", modal_dim=128, adapter_heads=3)


@pytest.mark.parametrize("kw,match", [
    ({"dataset_name": "iemocap"}, "dataset_name='iemocap'"),
    ({"modalities": "t"}, "modalities='t'"),
    ({"modalities": "tx"}, "modalities='tx'"),
    ({"refiner": "gru"}, "refiner='gru'"),
    ({"fusion": "tensor"}, "fusion='tensor'"),
    ({"contrastive_label_scale": "log"}, "contrastive_label_scale='log'"),
    ({"num_experts": 0, "top_k": 0}, "num_experts=0"),
    ({"contrastive_temperature": 0.0}, "contrastive_temperature=0.0"),
    ({"epochs": 0}, "epochs=0"),
    ({"dropout": 1.0}, r"dropout=1.0: must be a number in \[0, 1\)"),
    ({"feature_dims": [768, 5]}, "three entries"),
    ({"adapter_layers_text": [0, 3, 6]}, "adapter_layers_text"),
])
def test_other_impossible_values(kw: Dict[str, Any], match: str) -> None:
    _bad(match, **kw)


def test_all_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as ei:
        KHaRConfig(top_k=5, mib_beta=-1.0, contrastive_kappa=-1.0)
    msg = str(ei.value)
    assert "top_k=5" in msg and "mib_beta=-1.0" in msg and "contrastive_kappa=-1.0" in msg


def test_direct_construction_with_wrong_type_is_config_error() -> None:
    """Not a TypeError from a comparison inside __post_init__."""
    with pytest.raises(ConfigError, match="batch_size='64'"):
        KHaRConfig(batch_size="64")


@pytest.mark.parametrize("key", ["encoder_heads", "adapter_heads"])
def test_zero_heads_is_config_error(key: str) -> None:
    """Not a ZeroDivisionError from the divisibility check."""
    _bad(f"{key}=0: must be an integer >= 1", **{key: 0})


def test_numpy_numbers_accepted() -> None:
    np = pytest.importorskip("numpy")
    cfg = KHaRConfig.from_mmsa_args(mmsa_args(batch_size=np.int64(32), mib_beta=np.float32(1e-3)))
    assert cfg.batch_size == 32


# --- numeric settings: every one named with its value and allowed range --------
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("key,value,allowed", [
    ("learning_rate", -1e-3, "must be a finite number > 0"),
    ("learning_rate", 0.0, "must be a finite number > 0"),
    ("learning_rate", NAN, "must be a finite number > 0"),
    ("learning_rate_bert", -3e-5, "must be a finite number > 0"),
    ("learning_rate_bert", INF, "must be a finite number > 0"),
    ("pretrain_learning_rate", -1e-4, "must be a finite number > 0"),
    ("batch_size", 0, "must be an integer >= 2"),
    ("epochs", 0, "must be an integer >= 1"),
    ("early_stop", 0, "must be an integer >= 1"),
    ("pretrain_epochs", 0, "must be an integer >= 1 (to skip adapter pretraining set pretrain_adapters=False)"),
    ("grad_clip", NAN, "must be a finite number (<= 0 disables clipping)"),
    ("grad_clip", INF, "must be a finite number"),
    ("weight_decay", NAN, "must be a finite number >= 0"),
    ("mib_sigma_offset", -INF, "must be a finite number"),
    ("warmup_ratio", NAN, r"must be a number in [0, 1)"),
    ("moe_noise_epsilon", -1.0, "must be a finite number >= 0"),
    ("cv_eps", 0.0, "must be a finite number > 0"),
])
def test_numeric_setting_names_key_value_and_range(key: str, value: Any, allowed: str) -> None:
    with pytest.raises(ConfigError) as ei:
        KHaRConfig.from_mmsa_args(mmsa_args(**{key: value}))
    assert f"{key}={value!r}: {allowed}" in str(ei.value), str(ei.value)


def test_every_float_field_must_be_finite() -> None:
    import dataclasses
    floats = [f.name for f in dataclasses.fields(KHaRConfig) if f.type == "float"]
    assert "grad_clip" in floats and len(floats) > 15
    for name in floats:
        for value in (NAN, INF, -INF):
            with pytest.raises(ConfigError, match=f"{name}={value!r}: "):
                KHaRConfig(**{name: value})


def test_string_batch_size_is_a_type_error_naming_key_and_range() -> None:
    from khar_mmsa.config import ConfigTypeError
    with pytest.raises(TypeError) as ei:
        KHaRConfig.from_mmsa_args(mmsa_args(batch_size="64"))
    assert isinstance(ei.value, ConfigTypeError) and isinstance(ei.value, ConfigError)
    assert "batch_size='64': expected int, got str; must be an integer >= 2" in str(ei.value)


def test_non_integer_feature_dims_entry_is_a_type_error() -> None:
    with pytest.raises(ConfigError, match=r"feature_dims=\[768, '5', 20\]: expected list of integers, got list"):
        KHaRConfig(feature_dims=[768, "5", 20])


def test_grad_clip_zero_or_negative_still_disables_clipping() -> None:
    assert KHaRConfig(grad_clip=0.0).grad_clip == 0.0 and KHaRConfig(grad_clip=-1.0).grad_clip == -1.0


# --- MMSA's use_finetune ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, False])
def test_use_finetune_maps_to_finetune_bert(value: bool) -> None:
    assert KHaRConfig.from_mmsa_args(mmsa_args(use_finetune=value)).finetune_bert is value


def test_use_finetune_agreeing_with_finetune_bert_ok() -> None:
    cfg = KHaRConfig.from_mmsa_args(mmsa_args(use_finetune=False, finetune_bert=False))
    assert cfg.finetune_bert is False


def test_use_finetune_contradicting_finetune_bert_is_refused() -> None:
    with pytest.raises(ConfigError, match="use_finetune=False and finetune_bert=True disagree"):
        KHaRConfig.from_mmsa_args(mmsa_args(use_finetune=False, finetune_bert=True))


def test_use_finetune_of_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match="use_finetune='off'"):
        KHaRConfig.from_mmsa_args(mmsa_args(use_finetune="off"))
    assert KHaRConfig.from_mmsa_args(mmsa_args(use_finetune="no")).finetune_bert is False


# --- strict booleans ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False),
    ("YES", True), ("no", False), (" 1 ", True), ("0", False), (np.bool_(True), True),
])
def test_parse_bool_accepts(value: Any, expected: bool) -> None:
    assert parse_bool("amp", value) is expected


@pytest.mark.parametrize("value", ["off", "", "maybe", 2, -1, 1.0, None, [True]])
def test_parse_bool_refuses_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^trust_pickle=.*: expected a boolean"):
        parse_bool("trust_pickle", value)


def test_every_bool_field_parses_strictly() -> None:
    bool_fields = [f.name for f in dataclasses.fields(KHaRConfig) if str(f.type) == "bool"]
    assert set(bool_fields) <= BOOL_KEYS and {"trust_pickle", "use_bert"} <= BOOL_KEYS
    for name in bool_fields:
        # harvesting=False leaves nothing to pretrain, so it comes with pretrain_adapters=False
        alone = {"pretrain_adapters": False} if name == "harvesting" else {}
        assert getattr(KHaRConfig.from_mmsa_args(mmsa_args(**{name: "no"}, **alone)), name) is False
        assert getattr(KHaRConfig(**{name: "Yes"}), name) is True
        with pytest.raises(ConfigError, match=f"{name}='off'"):
            KHaRConfig(**{name: "off"})


def test_normalize_bools_rewrites_mmsa_and_runner_keys() -> None:
    args = {"trust_pickle": "False", "need_data_aligned": "0", "use_bert": 1, "amp": None, "lr": "no"}
    assert normalize_bools(args) == {"trust_pickle": False, "need_data_aligned": False,
                                     "use_bert": True, "amp": None, "lr": "no"}
    with pytest.raises(ConfigError, match="trust_pickle='nope'"):
        normalize_bools({"trust_pickle": "nope"})


def test_cli_set_parses_booleans_strictly() -> None:
    from khar_mmsa.cli import _overrides
    assert _overrides(["trust_pickle=False", "amp=yes", "batch_size=8", "pretrained=x"]) == {
        "trust_pickle": False, "amp": True, "batch_size": 8, "pretrained": "x"}
    with pytest.raises(SystemExit, match="--set 'trust_pickle=nah'.*trust_pickle='nah': expected a boolean"):
        _overrides(["trust_pickle=nah"])


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("spelling", ["False", "false", "no", "0"])
def test_cli_trust_pickle_false_does_not_trust(tmp_path: Path, spelling: str, capsys: Any) -> None:
    """`python -m khar_mmsa --set trust_pickle=False` must keep the restricted unpickler: the
    pickle's code does not run and the file is refused (the command fails with that one line)."""
    from khar_mmsa.cli import main
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    dirs = [f"--{k}={tmp_path / k}" for k in ("model-save-dir", "res-save-dir", "log-dir")]
    assert main(["-m", "khar", "-d", "mosi", "-s", "1", "--custom-feature", str(evil), "-v", "0",
                 "--set", f"trust_pickle={spelling}", *dirs]) == 1
    assert "refusing to unpickle global" in capsys.readouterr().err
    assert not marker.exists()


def test_cli_trust_pickle_nonsense_is_an_error(tmp_path: Path) -> None:
    from khar_mmsa.cli import main
    with pytest.raises(SystemExit, match="trust_pickle='off'"):
        main(["-m", "khar", "-d", "mosi", "--custom-feature", str(tmp_path / "x.pkl"),
              "--set", "trust_pickle=off"])


# --- sizes before allocation -------------------------------------------------------------------
@pytest.mark.parametrize("key,value,fragment", [
    ("modal_dim", 2 ** 20, "modal_dim=1048576: must be at most 32768"),
    ("expert_hidden_dim", 10 ** 8, "expert_hidden_dim=100000000: must be at most 32768"),
    ("seq_lens", [50, 10 ** 9, 500], "seq_lens=[50, 1000000000, 500]: every entry must be at most 65536"),
    ("feature_dims", [768, 10 ** 6, 20], "feature_dims=[768, 1000000, 20]"),
    ("encoder_layers", 10 ** 4, "encoder_layers=10000: must be at most 256"),
])
def test_sizes_beyond_the_documented_bounds_are_refused(key: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match="too large") as ei:
        KHaRConfig.from_mmsa_args(mmsa_args(**{key: value}))
    assert fragment in str(ei.value)


def test_memory_estimate_names_the_key_and_the_estimate() -> None:
    kw = dict(modal_dim=8192, expert_hidden_dim=32768, num_experts=64)
    cfg = dataclasses.replace(KHaRConfig(), max_model_memory_gib=1e9, **kw)  # allowed when raised
    parts = memory_estimate(cfg)
    # the experts' weights: 3 modalities x 64 experts x (8192 x 32768 in, out) x 4 bytes x 4 copies
    assert parts["expert_hidden_dim"] == 3 * 64 * 2 * 8192 * 32768 * 4 * 4
    with pytest.raises(ConfigError) as ei:
        KHaRConfig(**kw)
    msg = str(ei.value)
    assert "estimated training memory" in msg and "exceeds max_model_memory_gib=64" in msg
    assert f"{parts['expert_hidden_dim'] / 2 ** 30:.3g} GiB, comes from expert_hidden_dim=32768" in msg


def test_paper_configs_fit_the_memory_bound() -> None:
    KHaRConfig()  # MOSI, Table 5
    KHaRConfig(dataset_name="mosei", modal_dim=256, batch_size=36, seq_lens=[50, 500, 500])


def test_oversized_config_fails_before_data_is_read(tmp_path: Path) -> None:
    """MMSA_run with modal_dim=2**20: a ConfigError naming the key, and the feature file (which
    does not even exist) is never opened."""
    import khar_mmsa  # noqa: F401
    from MMSA import MMSA_run
    dirs = {k: tmp_path / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    with pytest.raises(ConfigError, match="modal_dim=1048576"):
        MMSA_run("khar", "mosi", config={"modal_dim": 2 ** 20, "featurePath": str(tmp_path / "absent.pkl")},
                 seeds=[1], verbose_level=0, **dirs)


@pytest.mark.parametrize("spelling", ["no", "False"])
def test_mmsa_run_trust_pickle_no_does_not_trust(tmp_path: Path, spelling: str) -> None:
    """MMSA_run(config={'trust_pickle': 'no'}) in Python: the restricted unpickler still reads it."""
    import khar_mmsa  # noqa: F401
    from MMSA import MMSA_run
    from khar_mmsa.io.pickles import UnsafePickleError
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    dirs = {k: tmp_path / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global"):
        MMSA_run("khar", "mosi", config={"trust_pickle": spelling}, custom_feature=str(evil),
                 seeds=[1], verbose_level=0, **dirs)
    assert not marker.exists()
