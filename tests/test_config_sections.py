"""KHaRConfig's sections: each field's section and allowed values in one place, section views,
fingerprints by section (no field lists) and the checkpoint's architecture-only JSON."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from khar_mmsa.config import (ARCHITECTURE_SECTIONS, FUSION_CHOICES, REFINER_CHOICES, SECTIONS, ConfigError,
                              KHaRConfig, config_field, config_reference_markdown, section_fields)
from khar_mmsa.prediction.predict import checkpoint_config as rebuild_config
from khar_mmsa.io.identity import config_identity, fingerprint_of
from khar_mmsa.io.state_files import StateFileError, load_checkpoint_config
from khar_mmsa.losses import information_bottleneck
from khar_mmsa.training.pretrain import PRETRAIN_SECTIONS, pretrain_fingerprint
from khar_mmsa.runs.model_and_trainer import khar_trainer
from khar_mmsa.training.trainer import KHaRTrainer

# The field list pretraining's cache key was once kept by hand: every one of them must still take part.
OLD_PRETRAIN_FIELDS = ("dataset_name", "modalities", "feature_dims", "seq_lens", "pretrained", "modal_dim",
                       "encoder_layers", "encoder_heads", "encoder_ff_dim", "encoder_dropout", "text_adapters",
                       "av_adapters", "adapter_layers_text", "adapter_layers_av", "adapter_heads",
                       "adapter_inner_layers", "adapter_dropout", "pretrain_epochs", "pretrain_learning_rate",
                       "pretrain_weight_decay", "early_stop", "batch_size")


# --- sections and allowed values -----------------------------------------------------------------
def test_every_field_has_a_known_section() -> None:
    for f in dataclasses.fields(KHaRConfig):
        assert f.metadata["section"] in SECTIONS and set(f.metadata["sections"]) <= set(SECTIONS), f.name
    every = [n for s in SECTIONS for n in section_fields(s)]
    assert set(every) == set(KHaRConfig.field_names())
    assert section_fields() == tuple(KHaRConfig.field_names())
    with pytest.raises(ValueError, match="unknown config section"):
        section_fields("optimization")


def test_field_helper_refuses_an_unknown_section() -> None:
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['modle'\]"):
        config_field(1, "help", "modle")


def test_allowed_values_are_the_fields_own() -> None:
    assert REFINER_CHOICES == KHaRConfig.choices("refiner") == ("moe", "mlp", "attention", "cnn", "none")
    assert FUSION_CHOICES == KHaRConfig.choices("fusion")
    assert information_bottleneck.KL_REDUCTIONS is KHaRConfig.choices("mib_kl_reduction")
    assert KHaRConfig.choices("modal_dim") is None
    with_choices = [f.name for f in dataclasses.fields(KHaRConfig) if f.metadata["choices"]]
    assert {"refiner", "fusion", "mib_kl_reduction", "dataset_name", "routing", "projection",
            "contrastive_on", "contrastive_label_scale"} <= set(with_choices)
    for name in with_choices:  # every choice field is checked from its own list
        with pytest.raises(ConfigError, match=rf"{name}='zzz': one of {', '.join(KHaRConfig.choices(name))}"):
            KHaRConfig(**{name: "zzz"})


def test_allowed_values_in_the_readme_table() -> None:
    table = config_reference_markdown()
    assert "| key | section | default | meaning |" in table
    assert "| `batch_size` | optimisation, pretraining | `64` |" in table
    assert "One of: `moe`, `mlp`, `attention`, `cnn`, `none`." in table


# --- section views -------------------------------------------------------------------------------
def test_section_view_is_a_frozen_typed_copy() -> None:
    cfg = KHaRConfig(top_k=1, seq_lens=[50, 60, 70])
    moe = cfg.section("moe")
    assert type(moe).__name__ == "MoeSection" and moe.top_k == 1 and moe.refiner == "moe"
    assert set(dataclasses.asdict(moe)) == set(section_fields("moe"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        moe.top_k = 2  # type: ignore[misc]
    data = cfg.section("data")
    data.seq_lens.append(1)
    assert cfg.seq_lens == [50, 60, 70]
    assert "batch_size" in dataclasses.asdict(cfg.section("pretraining"))


# --- fingerprints by section ---------------------------------------------------------------------
def test_fingerprint_of_hashes_exactly_its_sections() -> None:
    base = KHaRConfig()
    assert fingerprint_of(base, "moe") != fingerprint_of(KHaRConfig(top_k=1), "moe")
    assert fingerprint_of(base, "moe") == fingerprint_of(KHaRConfig(learning_rate=1e-3, fusion="sum"), "moe")
    assert set(config_identity(base, ("moe",))) == set(section_fields("moe"))
    assert fingerprint_of(base) != fingerprint_of(KHaRConfig(save_curves=False))  # no section: all
    assert fingerprint_of(base, seed=1) != fingerprint_of(base, seed=2)
    with pytest.raises(ValueError, match="would replace config fields"):
        fingerprint_of(base, "moe", top_k=3)


def test_pretraining_depends_on_harvester_data_and_pretraining_sections() -> None:
    assert set(PRETRAIN_SECTIONS) == {"data", "model", "adapters", "pretraining"}
    assert set(OLD_PRETRAIN_FIELDS) <= set(section_fields(*PRETRAIN_SECTIONS))
    for name in section_fields("moe", "fusion", "losses"):
        assert name not in section_fields(*PRETRAIN_SECTIONS), name


@dataclasses.dataclass
class _Extended(KHaRConfig):
    """KHaRConfig with two fields added the way a new one would be: no list edited anywhere."""
    adapter_gain: float = config_field(1.0, "A new adapter setting.", "adapters")
    momentum: float = config_field(0.9, "A new main-run optimiser setting.", "optimisation")


def test_a_new_field_joins_the_pretraining_key_by_its_section() -> None:
    key = pretrain_fingerprint(_Extended(), 1, {"d": 1})
    assert pretrain_fingerprint(_Extended(adapter_gain=2.0), 1, {"d": 1}) != key
    assert pretrain_fingerprint(_Extended(momentum=0.5), 1, {"d": 1}) == key
    assert "adapter_gain" in _Extended().architecture() and "momentum" not in _Extended().architecture()


# --- the checkpoint's .pth.json ------------------------------------------------------------------
def _trainer(tmp_path: Path, **kw: object) -> KHaRTrainer:
    args = dict(model_name="khar", dataset_name="sims", pretrained="bert-base-chinese", modal_dim=16,
                encoder_heads=4, adapter_heads=2, device="cpu", model_save_path=str(tmp_path / "k.pth"))
    args.update(kw)
    return khar_trainer(args)


def test_checkpoint_json_holds_the_architecture_sections(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, learning_rate=1e-3, mib_beta=0.5, refiner="mlp")
    saved = trainer.checkpoint_config()
    assert set(saved["config"]) == set(section_fields(*ARCHITECTURE_SECTIONS))
    assert saved["config"]["refiner"] == "mlp" and "learning_rate" not in saved["config"]
    assert "mib_beta" not in saved["config"] and saved["dataset_name"] == "sims"
    path = tmp_path / "k.pth.json"
    path.write_text(json.dumps(saved))
    assert load_checkpoint_config(path)["config"] == saved["config"]
    rebuilt = rebuild_config(tmp_path / "k.pth", {}, {})
    assert rebuilt.architecture() == trainer.cfg.architecture()


def test_checkpoint_json_of_an_architecture_the_training_defaults_refuse(tmp_path: Path) -> None:
    """harvesting=False needs pretrain_adapters=False and refiner/projection 'none' need no
    contrastive loss: the JSON does not hold those training settings, the rebuild still works."""
    trainer = _trainer(tmp_path, harvesting=False, pretrain_adapters=False, refiner="none",
                       projection="none", fusion="concat", contrastive_weight=0.0)
    path = tmp_path / "k.pth.json"
    path.write_text(json.dumps(trainer.checkpoint_config()))
    load_checkpoint_config(path)
    rebuilt = rebuild_config(tmp_path / "k.pth", {}, {})
    assert rebuilt.architecture() == trainer.cfg.architecture()
    assert not rebuilt.pretrain_adapters


def test_older_full_checkpoint_json_still_loads(tmp_path: Path) -> None:
    cfg = KHaRConfig(dataset_name="sims", modal_dim=16, encoder_heads=4, adapter_heads=2, batch_size=4,
                     learning_rate=1e-3)
    path = tmp_path / "k.pth.json"
    path.write_text(json.dumps({"model_name": "khar", "dataset_name": "sims", "config": dataclasses.asdict(cfg)}))
    assert load_checkpoint_config(path)["config"]["learning_rate"] == 1e-3
    assert rebuild_config(tmp_path / "k.pth", {}, {}) == cfg  # every saved field kept as saved
    damaged = dict(dataclasses.asdict(cfg), batch_size="4")  # a training field is still checked
    path.write_text(json.dumps({"model_name": "khar", "dataset_name": "sims", "config": damaged}))
    with pytest.raises(StateFileError, match="batch_size='4'"):
        load_checkpoint_config(path)
