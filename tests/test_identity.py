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


def test_code_version_follows_sources_and_config_overlays(tmp_path: Path) -> None:
    """The digest in code_version(): a changed byte of a .py below the package, a new source file
    or a changed overlay JSON changes it; mtimes, caches and the folder's location do not."""
    from khar_mmsa.io.identity import CONFIG_OVERLAY_DIR, PACKAGE_DIR, code_version, package_version, source_digest
    pkg, cfg = tmp_path / "pkg", tmp_path / "cfg"
    (pkg / "sub").mkdir(parents=True)
    cfg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    (pkg / "sub" / "m.py").write_text("y = 2\n")
    (cfg / "config_regression.json").write_text("{}")
    base = source_digest(pkg, cfg)
    os.utime(pkg / "sub" / "m.py", ns=(5, 5))
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"cache")
    (pkg / "notes.txt").write_text("not source")
    moved = tmp_path / "moved"
    shutil.copytree(pkg, moved / "pkg")
    shutil.copytree(cfg, moved / "cfg")
    assert source_digest(pkg, cfg) == base == source_digest(moved / "pkg", moved / "cfg")
    (pkg / "sub" / "m.py").write_text("y = 3\n")
    assert source_digest(pkg, cfg) != base
    (pkg / "sub" / "m.py").write_text("y = 2\n")
    (cfg / "config_regression.json").write_text("{ }")
    assert source_digest(pkg, cfg) != base
    (cfg / "config_regression.json").write_text("{}")
    (pkg / "new.py").write_text("")
    assert source_digest(pkg, cfg) != base
    # the real one: version + digest of this checkout, computed once
    assert code_version() == f"{package_version()}+{source_digest(PACKAGE_DIR, CONFIG_OVERLAY_DIR)[:16]}"
    assert code_version() is code_version() and package_version() == "0.1.0"  # cached


def test_same_size_rewrite_gets_a_new_digest_at_once(tmp_path: Path) -> None:
    """A file rewritten with other bytes of the same size within the filesystem's clock tick (same
    mtime) is hashed again, not served from the per-process digest cache."""
    from khar_mmsa.io.identity import data_identity
    path = tmp_path / "f.pkl"
    path.write_bytes(b"0" * 10)
    first = data_identity(path)
    stat = path.stat()
    path.write_bytes(b"1" * 10)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same mtime, as within one tick
    assert data_identity(path)["sha256"] != first["sha256"]
    assert data_identity(path) == {"name": "f.pkl", "sha256": __import__("hashlib").sha256(b"1" * 10).hexdigest()}


def test_a_runs_finished_seed_record_knows_the_text_encoder_by_content(tmp_path, tiny_bert, tiny_features):
    """The runner's run key: the same encoder files in another folder are the same run; other
    weights are another run (so a rerun never reuses seeds trained with another encoder)."""
    import shutil

    from khar_mmsa.runs.run_state import run_key
    from khar_mmsa.model.text_encoders import make_tiny_bert
    copy = shutil.copytree(tiny_bert, tmp_path / "same-encoder-elsewhere")
    other = make_tiny_bert(tmp_path / "other", hidden_size=16)
    args = {"model_name": "khar", "dataset_name": "mosi", "featurePath": str(tiny_features("mosi")), "epochs": 1}
    key = run_key(dict(args, pretrained=str(tiny_bert)), [1])
    assert run_key(dict(args, pretrained=str(copy)), [1]) == key
    assert run_key(dict(args, pretrained=str(other)), [1]) != key
