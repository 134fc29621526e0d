"""Tests for khar_mmsa.data.validation.validate_features: one test per failure mode."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from khar_mmsa.data.feature_keys import required_keys
from khar_mmsa.data.validation import FeatureValidationError, validate_features

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
        "regression_labels": np.linspace(-3, 3, n, dtype=np.float32),
        "id": [str(i) for i in range(n)], "raw_text": [""] * n,
    }
    for s in ("valid", "test"):
        data[s]["audio"] = np.zeros((SIZES[s], 500, 74), dtype=np.float32)
        data[s]["audio_lengths"] = np.full(SIZES[s], 500)
    t0 = time.perf_counter()
    validate_features(data, make_args(), SRC)
    assert time.perf_counter() - t0 < 1.5


# --- clip ids across and inside splits -------------------------------------
def test_clip_id_in_two_splits_is_leakage() -> None:
    data = make_data()
    data["test"]["id"] = list(data["test"]["id"])  # a list: the numpy array's width would truncate
    data["test"]["id"][2] = data["train"]["id"][4]
    check_error(data, make_args(), "test", "id", "1 clip id(s) also occur in the train split",
                repr(str(data["train"]["id"][4])), "leaks")


def test_clip_id_in_valid_and_test_is_leakage() -> None:
    data = make_data()
    data["test"]["id"] = list(data["test"]["id"])
    data["test"]["id"][0] = data["valid"]["id"][1]
    check_error(data, make_args(), "test", "id", "also occur in the valid split")


def test_duplicate_id_inside_one_split_warns(caplog: pytest.LogCaptureFixture) -> None:
    data = make_data()
    data["train"]["id"][3] = data["train"]["id"][1]
    with caplog.at_level("WARNING", logger="MMSA"):
        validate_features(data, make_args(), SRC)
    assert f"{SRC} [train/id]: 1 clip id(s) occur more than once in this split" in caplog.text
    assert repr(str(data["train"]["id"][1])) in caplog.text


def test_unique_ids_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="MMSA"):
        validate_features(make_data(), make_args(), SRC)
    assert "more than once" not in caplog.text


# --- splits too small or too uniform to score ------------------------------------------------
def _shrink(data: Dict[str, Dict[str, Any]], split: str, n: int) -> None:
    for key, value in list(data[split].items()):
        data[split][key] = value[:n]


@pytest.mark.parametrize("split", ["valid", "test", "train"])
def test_split_of_one_sample_cannot_be_scored(split: str) -> None:
    data = make_data()
    _shrink(data, split, 1)
    check_error(data, make_args(), split, "regression_labels", "has 1 sample(s)",
                "need at least 2", "Corr")


def test_constant_labels_cannot_be_scored() -> None:
    data = make_data()
    data["valid"]["regression_labels"][:] = 1.5
    check_error(data, make_args(), "valid", "regression_labels", "all 3 labels are 1.5",
                "Corr is undefined")


def test_all_zero_labels_cannot_be_scored() -> None:
    data = make_data("mosei")
    data["test"]["regression_labels"][:] = 0.0
    check_error(data, make_args("mosei"), "test", "regression_labels", "all 4 labels are 0")


def test_two_different_labels_are_enough() -> None:
    data = make_data()
    _shrink(data, "test", 2)
    data["test"]["regression_labels"][:] = [0.0, 0.5]
    validate_features(data, make_args(), SRC)


def test_unscored_file_may_have_one_sample() -> None:
    data = make_data()
    _shrink(data, "test", 1)
    validate_features(data, make_args(), SRC, scored=False)


# --- float64 beyond float32 ------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("vision", 1e39), ("audio", -1e39), ("audio", 5e38)])
def test_float64_feature_beyond_float32(key: str, value: float) -> None:
    data = make_data()
    data["valid"][key] = data["valid"][key].astype(np.float64)
    data["valid"][key][1, 0, 0] = value
    check_error(data, make_args(), "valid", key, "float64 value(s) beyond float32's range",
                "sample 1", "valid_1$_$0")


def test_float64_within_float32_range_ok() -> None:
    data = make_data()
    data["valid"]["vision"] = data["valid"]["vision"].astype(np.float64)
    data["valid"]["vision"][1, 0, 0] = 3e38
    data["train"]["audio"] = data["train"]["audio"].astype(np.float64)
    data["train"]["audio"][0, 0, 0] = -np.inf  # -inf is zeroed by MMSA, still accepted
    validate_features(data, make_args(), SRC)


def test_float64_label_beyond_float32() -> None:
    data = make_data()
    data["test"]["regression_labels"] = data["test"]["regression_labels"].astype(np.float64)
    data["test"]["regression_labels"][0] = -1e300
    check_error(data, make_args(), "test", "regression_labels", "beyond float32's range")


def test_float64_token_id_beyond_float32() -> None:
    data = make_data()
    data["train"]["text_bert"][0, 0, 0] = 1e39  # integer-valued, so only the range catches it
    check_error(data, make_args(), "train", "text_bert", "beyond float32's range")


def test_float64_glove_text_beyond_float32() -> None:
    data = make_data(use_bert=False)
    data["train"]["text"] = data["train"]["text"].astype(np.float64)
    data["train"]["text"][4, 1, 1] = 1e308
    check_error(data, make_args(use_bert=False), "train", "text", "beyond float32's range")


# --- per-modality files: feature_T / feature_A / feature_V -----------------
def _only(data: Dict[str, Dict[str, Any]], *keys: str) -> Dict[str, Dict[str, Any]]:
    """The per-modality file of ``keys``, with the clip ids that match it to the main file."""
    return {split: {k: d[k] for k in keys + ("id",)} for split, d in data.items()}


@pytest.mark.parametrize("role,keys", [
    ("A", ("audio", "audio_lengths")),
    ("V", ("vision", "vision_lengths")),
    ("T", ("text_bert",)),
])
def test_per_modality_file_passes_with_its_role(role: str, keys: tuple) -> None:
    data = _only(make_data(), *keys)
    validate_features(data, make_args(), SRC, role=role)
    with pytest.raises(FeatureValidationError, match="missing key"):
        validate_features(data, make_args(), SRC)  # as a main file it lacks everything else


def test_required_keys_per_role() -> None:
    assert required_keys(make_args(), "A") == ["audio", "audio_lengths", "id"]
    assert required_keys(make_args(need_data_aligned=True), "V") == ["vision", "id"]
    assert required_keys(make_args(use_bert=False), "T") == ["text", "id"]
    assert required_keys(make_args(), "AV") == ["audio", "audio_lengths", "vision", "vision_lengths", "id"]


def test_per_modality_file_checks_its_lengths() -> None:
    data = _only(make_data(), "audio")
    check_error_role = pytest.raises(FeatureValidationError, match=r"\[train/audio_lengths\]: missing key")
    with check_error_role:
        validate_features(data, make_args(), SRC, role="A")


def test_per_modality_file_checks_values() -> None:
    data = _only(make_data(), "vision", "vision_lengths")
    data["test"]["vision"][0, 0, 0] = np.nan
    with pytest.raises(FeatureValidationError, match=r"\[test/vision\]: contains NaN"):
        validate_features(data, make_args(), SRC, role="V")


def test_per_modality_file_sample_count_must_match_main_file() -> None:
    data = _only(make_data(), "audio", "audio_lengths")
    with pytest.raises(FeatureValidationError,
                       match=r"\[valid/audio\]: has 3 samples but the main feature file's valid split has 4"):
        validate_features(data, make_args(), SRC, role="A", samples={**SIZES, "valid": 4})
    validate_features(data, make_args(), SRC, role="A", samples=SIZES)


def test_bad_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role='X'"):
        validate_features(make_data(), make_args(), SRC, role="X")


def main_ids(data: Dict[str, Dict[str, Any]]) -> Dict[str, list]:
    return {split: [str(i) for i in d["id"]] for split, d in data.items()}


def test_per_modality_file_must_hold_the_main_files_clips_in_order() -> None:
    main = make_data()
    audio = _only(make_data(), "audio", "audio_lengths")
    validate_features(audio, make_args(), SRC, role="A", samples=SIZES, ids=main_ids(main))
    order = [2, 0, 1]  # the valid split's clips, in another order
    audio["valid"] = {k: (np.asarray(v)[order]) for k, v in audio["valid"].items()}
    with pytest.raises(FeatureValidationError) as ei:
        validate_features(audio, make_args(), SRC, role="A", samples=SIZES, ids=main_ids(main))
    err = ei.value
    assert (err.source, err.split, err.key) == (SRC, "valid", "id")
    assert "row 0 is clip 'valid_2$_$0' but the main feature file's row 0 is 'valid_0$_$0'" in str(err)
    assert "the same clips in another order" in str(err)


def test_per_modality_file_with_other_clips_is_refused() -> None:
    main = make_data()
    vision = _only(make_data(), "vision", "vision_lengths")
    vision["test"]["id"] = np.array([f"other_{i}" for i in range(SIZES["test"])])
    with pytest.raises(FeatureValidationError, match=r"\[test/id\]: row 0 is clip 'other_0'.*clips "
                       r"the main file does not have"):
        validate_features(vision, make_args(), SRC, role="V", ids=main_ids(main))


def test_per_modality_file_without_ids_is_refused() -> None:
    audio = {s: {k: v for k, v in d.items() if k != "id"}
             for s, d in _only(make_data(), "audio", "audio_lengths").items()}
    with pytest.raises(FeatureValidationError, match=r"\[train/id\]: missing key 'id' \(a feature_T"):
        validate_features(audio, make_args(), SRC, role="A")


def test_text_longer_than_the_encoders_position_table(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"vocab_size": 1000, "max_position_embeddings": 6}))
    validate_features(make_data(seq=(6, 5, 7)), make_args(pretrained=str(folder)), SRC)
    check_error(make_data(seq=(7, 5, 7)), make_args(pretrained=str(folder)), "train", "text_bert",
                "texts of 7 tokens, more than the text encoder's 6 positions")


def test_boolean_settings_parse_strictly() -> None:
    data = make_data(use_bert=False)
    validate_features(data, make_args(use_bert="no"), SRC)  # 'no' is False: GloVe text is read
    with pytest.raises(ValueError, match="use_bert='off': expected a boolean"):
        validate_features(make_data(), make_args(use_bert="off"), SRC)


def test_mmsa_run_refuses_a_feature_a_file_in_another_order(tmp_path: Path, tiny_features, tiny_bert) -> None:
    """MMSA_run(..., feature_A=...) with the main file's clips in another order: refused before any
    model is built, naming the file, split and first mismatching row."""
    import pickle

    import khar_mmsa  # noqa: F401
    from MMSA import MMSA_run
    from khar_mmsa.io.pickles import load_pickle
    main = tiny_features("mosi")
    data = load_pickle(main)
    audio = {s: {k: np.asarray(data[s][k]) for k in ("audio", "audio_lengths", "id")} for s in
             ("train", "valid", "test")}
    path = tmp_path / "audio.pkl"
    path.write_bytes(pickle.dumps(audio))
    dirs = {k: tmp_path / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    config = {"featurePath": str(main), "pretrained": str(tiny_bert)}
    audio["test"] = {k: v[::-1].copy() for k, v in audio["test"].items()}
    path.write_bytes(pickle.dumps(audio))
    with pytest.raises(FeatureValidationError) as ei:
        MMSA_run("khar", "mosi", config=config, feature_A=str(path), seeds=[1], verbose_level=0, **dirs)
    err = ei.value
    assert (err.source, err.split, err.key) == (str(path), "test", "id")
    first = str(audio["test"]["id"][0])
    assert f"row 0 is clip {first!r}" in str(err) and "the same clips in another order" in str(err)
    assert not list((tmp_path / "model_save_dir").glob("*.pth"))
