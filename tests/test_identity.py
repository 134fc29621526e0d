"""khar_mmsa.io.identity: saved files are keyed by content, never by paths or mtimes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from khar_mmsa.config import KHaRConfig
from khar_mmsa.io.identity import config_identity, encoder_identity, feature_identity
from khar_mmsa.training.pretrain import pretrain_fingerprint


def test_encoder_folder_identified_by_content(tiny_bert: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_bert, copy)
    (copy / "README.md").write_text("notes do not change the encoder")
    assert encoder_identity(str(copy)) == encoder_identity(str(tiny_bert))
    assert "config.json" in encoder_identity(str(copy))
    weights = next(p for p in copy.iterdir() if p.suffix in (".safetensors", ".bin"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert encoder_identity(str(copy)) != encoder_identity(str(tiny_bert))
    assert encoder_identity("bert-base-uncased") == "bert-base-uncased"


def test_config_identity_has_no_paths(tiny_bert: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bert-copy"
    shutil.copytree(tiny_bert, copy)
    a = KHaRConfig(pretrained=str(tiny_bert), pretrained_adapters_path="/x/a.pt")
    b = KHaRConfig(pretrained=str(copy), pretrained_adapters_path="/y/b.pt")
    assert config_identity(a) == config_identity(b)
    assert "pretrained_adapters_path" not in config_identity(a)
    assert pretrain_fingerprint(a, 1, None) == pretrain_fingerprint(b, 1, None)
    # without text the encoder does not matter
    assert config_identity(KHaRConfig(modalities="av"))["pretrained"] is None


def test_pretrain_fingerprint_keys(tiny_bert: Path) -> None:
    base = KHaRConfig(pretrained=str(tiny_bert))
    key = pretrain_fingerprint(base, 1, {"d": 1})
    same = [KHaRConfig(pretrained=str(tiny_bert), learning_rate=1e-3),  # main run only
            KHaRConfig(pretrained=str(tiny_bert), fusion="sum"),
            KHaRConfig(pretrained=str(tiny_bert), modalities="vat")]    # same set, other order
    for cfg in same:
        assert pretrain_fingerprint(cfg, 1, {"d": 1}) == key
    different = [KHaRConfig(pretrained=str(tiny_bert), modalities="ta"),
                 KHaRConfig(pretrained=str(tiny_bert), pretrain_epochs=3),
                 KHaRConfig(pretrained=str(tiny_bert), adapter_dropout=0.2)]
    for cfg in different:
        assert pretrain_fingerprint(cfg, 1, {"d": 1}) != key
    assert pretrain_fingerprint(base, 2, {"d": 1}) != key
    assert pretrain_fingerprint(base, 1, {"d": 2}) != key


def test_feature_identity_by_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    a.write_bytes(b"features")
    b.write_bytes(b"features")
    os.utime(b, ns=(5, 5))
    args = dict(featurePath=str(a), custom_feature=None, feature_T="", feature_A=None, feature_V="",
                use_bert=True, need_data_aligned=False)
    assert feature_identity(args) == feature_identity(dict(args, featurePath=str(b)))
    assert feature_identity(args) == feature_identity(dict(args, featurePath="/gone", custom_feature=str(b)))
    assert feature_identity(args) != feature_identity(dict(args, feature_A=str(b)))
    assert feature_identity(args) != feature_identity(dict(args, need_data_aligned=True))
    b.write_bytes(b"features!")
    assert feature_identity(args) != feature_identity(dict(args, featurePath=str(b)))
