"""Tests for khar_mmsa.validation.validate_features: one test per failure mode."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from khar_mmsa.validation import FeatureValidationError, required_keys, validate_features

SRC = "/data/MOSI/Processed/unaligned_50.pkl"
SIZES = {"train": 5, "valid": 3, "test": 4}


def make_data(dataset: str = "mosi", use_bert: bool = True, tav: bool = False,
              seq=(6, 5, 7), dims=(8, 4, 3), seed: int = 0) -> Dict[str, Dict[str, Any]]:
    """A tiny valid MMSA-style feature dict (all three splits)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-1.0, 1.0) if dataset in ("sims", "simsv2") else (-3.0, 3.0)
    L, La, Lv = seq
    out = {}
    for split, n in SIZES.items():
        tb = np.zeros((n, 3, L), dtype=np.float64)
        tb[:, 0] = rng.integers(100, 1000, size=(n, L))
        tb[:, 1] = 1
        d = {
            "text_bert": tb,
            "text": rng.standard_normal((n, L, dims[0])).astype(np.float32),
            "audio": rng.standard_normal((n, La, dims[1])).astype(np.float32),
            "vision": rng.standard_normal((n, Lv, dims[2])).astype(np.float32),
            "audio_lengths": [int(x) for x in rng.integers(1, La + 1, size=n)],
            "vision_lengths": np.full(n, Lv, dtype=np.int64),
            "regression_labels": rng.uniform(lo, hi, size=n).astype(np.float32),
            "id": np.array([f"{split}_{i}$_$0" for i in range(n)]),
            "raw_text": [f"text {i}" for i in range(n)],
        }
        if tav:
            for m in "TAV":
                d[f"regression_labels_{m}"] = rng.uniform(lo, hi, size=n).astype(np.float32)
        if not use_bert:
            del d["text_bert"]
        out[split] = d
    return out


def make_args(dataset: str = "mosi", **kw: Any) -> Dict[str, Any]:
    args = {"model_name": "khar", "dataset_name": dataset, "use_bert": True,
            "need_data_aligned": False}
    args.update(kw)
    return args


def check_error(data, args, split: str, key: str, *fragments: str) -> FeatureValidationError:
    """validate_features must fail naming the file, split and key, plus ``fragments``."""
    with pytest.raises(FeatureValidationError) as ei:
        validate_features(data, args, SRC)
    err = ei.value
    msg = str(err)
    assert msg.startswith(f"{SRC} [{split}/{key}]: "), msg
    assert (err.source, err.split, err.key) == (SRC, split, key)
    for frag in fragments:
        assert frag in msg, msg
    return err


# --- valid data ------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_valid_data_passes(dataset: str) -> None:
    tav = dataset in ("sims", "simsv2")
    validate_features(make_data(dataset, tav=tav), make_args(dataset), SRC)


def test_valid_glove_and_aligned() -> None:
    validate_features(make_data(use_bert=False), make_args(use_bert=False), SRC)
    data = make_data(seq=(6, 6, 6))
    for d in data.values():
        del d["audio_lengths"], d["vision_lengths"]
    validate_features(data, make_args(need_data_aligned=True), SRC)


def test_required_keys() -> None:
    assert required_keys(make_args("simsv2")) == [
        "text_bert", "audio", "vision", "regression_labels", "id", "raw_text", "audio_lengths",
        "vision_lengths", "regression_labels_T", "regression_labels_A", "regression_labels_V"]
    assert "text" in required_keys(make_args(use_bert=False, need_data_aligned=True))
    assert "regression_labels_T" in required_keys(make_args(need_unimodal_labels=True))


# --- structure -------------------------------------------------------------------------------
def test_missing_split() -> None:
    data = make_data()
    del data["valid"]
    with pytest.raises(FeatureValidationError) as ei:
        validate_features(data, make_args(), SRC)
    msg = str(ei.value)
    assert msg.startswith(f"{SRC} [valid]: ") and "missing split 'valid'" in msg


def test_missing_key() -> None:
    data = make_data()
    del data["test"]["vision_lengths"]
    check_error(data, make_args(), "test", "vision_lengths", "missing key", "need_data_aligned")


def test_missing_text_bert_suggests_use_bert() -> None:
    check_error(make_data(use_bert=False), make_args(), "train", "text_bert", "use_bert")


def test_missing_tav_labels_for_simsv2() -> None:
    data = make_data("simsv2", tav=True)
    del data["train"]["regression_labels_A"]
    check_error(data, make_args("simsv2"), "train", "regression_labels_A", "missing key",
                "simsv2")


def test_inconsistent_n_within_split() -> None:
    data = make_data()
    data["valid"]["vision"] = data["valid"]["vision"][:-1]
    check_error(data, make_args(), "valid", "vision", "2 samples", "regression_labels has 3")


def test_inconsistent_n_of_lengths() -> None:
    data = make_data()
    data["train"]["audio_lengths"] = data["train"]["audio_lengths"][:-1]
    check_error(data, make_args(), "train", "audio_lengths", "4 entries", "has 5")


def test_wrong_width_across_splits() -> None:
    data = make_data()
    data["test"]["audio"] = np.zeros((SIZES["test"], 5, 6), dtype=np.float32)
    check_error(data, make_args(), "test", "audio", "feature width 6", "train has 4")


def test_text_bert_not_n3l() -> None:
    data = make_data()
    data["train"]["text_bert"] = data["train"]["text_bert"][:, :2]
    check_error(data, make_args(), "train", "text_bert", "(N, 3, L)")


def test_non_numeric_feature() -> None:
    data = make_data()
    data["valid"]["audio"] = data["valid"]["audio"].astype(object)
    check_error(data, make_args(), "valid", "audio", "non-numeric dtype object")


def test_not_3d() -> None:
    data = make_data()
    data["valid"]["vision"] = data["valid"]["vision"][:, 0]
    check_error(data, make_args(), "valid", "vision", "3-D")


# --- lengths ---------------------------------------------------------------------------------
def test_length_greater_than_sequence_length() -> None:
    data = make_data()
    data["valid"]["audio_lengths"][1] = 6  # audio sequence length is 5
    err = check_error(data, make_args(), "valid", "audio_lengths", "greater than the sequence "
                      "length 5", "sample 1", "valid_1$_$0")
    assert "clip" in err.remedy


def test_length_zero() -> None:
    data = make_data()
    data["test"]["vision_lengths"][2] = 0
    check_error(data, make_args(), "test", "vision_lengths", "<= 0", "sample 2")


def test_length_not_integer() -> None:
    data = make_data()
    data["train"]["vision_lengths"] = data["train"]["vision_lengths"].astype(np.float32) - 0.5
    check_error(data, make_args(), "train", "vision_lengths", "non-integer")


# --- non-finite features ---------------------------------------------------------------------
def test_nan_in_vision() -> None:
    data = make_data()
    data["valid"]["vision"][2, 3, 1] = np.nan
    check_error(data, make_args(), "valid", "vision", "NaN", "sample 2")


def test_posinf_in_audio() -> None:
    data = make_data()
    data["train"]["audio"][0, 0, 0] = np.inf
    err = check_error(data, make_args(), "train", "audio", "+inf", "sample 0")
    assert "MMSA zeroes only -inf in audio" in str(err)


def test_neginf_in_audio_accepted() -> None:
    data = make_data()
    data["train"]["audio"][1, 2, :] = -np.inf
    validate_features(data, make_args(), SRC)


def test_neginf_in_vision_rejected() -> None:
    data = make_data()
    data["test"]["vision"][3, 0, 0] = -np.inf
    check_error(data, make_args(), "test", "vision", "-inf")


def test_nan_in_glove_text() -> None:
    data = make_data(use_bert=False)
    data["test"]["text"][0, 0, 0] = np.nan
    check_error(data, make_args(use_bert=False), "test", "text", "NaN")


# --- labels ----------------------------------------------------------------------------------
def test_label_out_of_range() -> None:
    data = make_data("sims", tav=True)
    data["valid"]["regression_labels"][0] = 2.0
    check_error(data, make_args("sims"), "valid", "regression_labels", "outside sims's range",
                "[-1, 1]")


def test_label_tolerance() -> None:
    data = make_data("sims", tav=True)
    data["valid"]["regression_labels"][0] = 1.0 + 1e-6
    validate_features(data, make_args("sims"), SRC)


def test_unimodal_label_out_of_range() -> None:
    data = make_data("simsv2", tav=True)
    data["test"]["regression_labels_V"][1] = -1.5
    check_error(data, make_args("simsv2"), "test", "regression_labels_V", "outside")


def test_non_finite_label() -> None:
    data = make_data()
    data["train"]["regression_labels"][3] = np.nan
    check_error(data, make_args(), "train", "regression_labels", "non-finite", "sample 3")


# --- text_bert values ------------------------------------------------------------------------
def test_token_id_at_or_above_vocab_size() -> None:
    data = make_data()
    data["valid"]["text_bert"][1, 0, 2] = 30522
    check_error(data, make_args(vocab_size=30522), "valid", "text_bert", "token id 30522",
                "vocabulary size 30522", "sample 1")


def test_vocab_size_read_from_local_pretrained(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 500}))
    data = make_data()  # ids up to 999
    check_error(data, make_args(pretrained=str(tmp_path)), "train", "text_bert", "vocabulary size 500")
    # a hub name is not a folder: no vocabulary check, no error
    validate_features(data, make_args(pretrained="bert-base-uncased"), SRC)


def test_negative_token_id() -> None:
    data = make_data()
    data["test"]["text_bert"][0, 0, 0] = -1
    check_error(data, make_args(), "test", "text_bert", "negative token ids")


def test_attention_mask_not_binary() -> None:
    data = make_data()
    data["train"]["text_bert"][2, 1, 0] = 2
    check_error(data, make_args(), "train", "text_bert", "attention mask", "0 and 1")


def test_non_integer_token_id() -> None:
    data = make_data()
    data["train"]["text_bert"][0, 0, 1] = 3.5
    check_error(data, make_args(), "train", "text_bert", "not integers")


# --- speed -----------------------------------------------------------------------------------
def test_value_scan_is_vectorised() -> None:
    """A 2000 x 500 x 74 float32 audio array (~300 MB) is checked well under a second."""
    data = make_data()
    n = 2000
    big = np.zeros((n, 500, 74), dtype=np.float32)
    big[5, 10, :] = -np.inf
    tr = data["train"]
    data["train"] = {
        "text_bert": np.repeat(tr["text_bert"][:1], n, axis=0),
        "text": np.repeat(tr["text"][:1], n, axis=0),
        "audio": big,
        "vision": np.zeros((n, 7, 3), dtype=np.float32),
        "audio_lengths": np.full(n, 500), "vision_lengths": np.full(n, 7),
        "regression_labels": np.zeros(n, dtype=np.float32),
        "id": [str(i) for i in range(n)], "raw_text": [""] * n,
    }
    for s in ("valid", "test"):
        data[s]["audio"] = np.zeros((SIZES[s], 500, 74), dtype=np.float32)
        data[s]["audio_lengths"] = np.full(SIZES[s], 500)
    t0 = time.perf_counter()
    validate_features(data, make_args(), SRC)
    assert time.perf_counter() - t0 < 1.5
