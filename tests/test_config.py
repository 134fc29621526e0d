"""Tests for KHaRConfig's validation: unknown keys, wrong types, impossible values."""
from __future__ import annotations

from typing import Any, Dict

import pytest

from khar_mmsa.config import ConfigError, KHaRConfig


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
    ("finetune_bert", 1),             # int for a bool
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


# --- numeric settings: every one named with its value and allowed range (issue 7, item 3) --------
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
    with pytest.raises(ConfigError, match="finetune_bert='no'"):
        KHaRConfig.from_mmsa_args(mmsa_args(use_finetune="no"))
