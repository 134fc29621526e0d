"""Tests of the dataset builders (:mod:`khar_mmsa.data`): planted synthetic data and transcripts."""
from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from khar_mmsa.data import planted as planted_mod
from khar_mmsa.data import planted_frames, planted_text
from khar_mmsa.data.planted import DATASET_SPECS, make_planted_dataset, noise_floor_mae, planted_data
from khar_mmsa.data.transcripts import (ABSENT_FRAMES, absent_modalities, build_transcript_dataset,
                                        read_label_csv)
from khar_mmsa.model.text_encoders import make_tiny_bert, minilm_path

SMALL_SIZES = (24, 8, 8)
SMALL_LENS = (12, 20, 16)
SPLITS = ("train", "valid", "test")
BASE_KEYS = {"id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths",
             "vision_lengths", "regression_labels", "classification_labels", "annotations"}
UNIMODAL_KEYS = {"regression_labels_T", "regression_labels_A", "regression_labels_V"}
# ../shared beside the checkout (CI lays a copy there too)
REAL_MOSI_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "label.csv"
TINY_WORDS = ["good", "great", "bad", "terrible", "not", "the", "movie", "it", "was"]


def _load(path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    """In-sample R^2 of an ordinary least-squares fit with intercept."""
    x = np.c_[x, np.ones(len(x))]
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    return float(1.0 - ((x @ w - y) ** 2).mean() / y.var())


# ---------------------------------------------------------------------------------------------
# planted
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", sorted(DATASET_SPECS))
def test_planted_shapes_keys_dtypes(tmp_path, dataset):
    spec = DATASET_SPECS[dataset]
    info = make_planted_dataset(tmp_path / "p.pkl", dataset, SMALL_SIZES, seq_lens=SMALL_LENS,
                                text_feature_dim=64)
    data = _load(tmp_path / "p.pkl")
    assert info.path == str(tmp_path / "p.pkl")
    assert info.feature_dims == (64, spec.audio_shape[1], spec.vision_shape[1])
    assert info.seq_lens == SMALL_LENS
    assert data["meta"]["dataset"] == dataset
    l_t, t_a, t_v = SMALL_LENS
    for split, n in zip(SPLITS, SMALL_SIZES):
        part = data[split]
        expected = BASE_KEYS | (UNIMODAL_KEYS if spec.unimodal_labels else set())
        assert set(part) == expected
        assert part["text"].shape == (n, l_t, 64) and part["text"].dtype == np.float32
        assert part["text_bert"].shape == (n, 3, l_t) and part["text_bert"].dtype == np.float32
        assert part["audio"].shape == (n, t_a, spec.audio_shape[1]) and part["audio"].dtype == np.float32
        assert part["vision"].shape == (n, t_v, spec.vision_shape[1]) and part["vision"].dtype == np.float32
        for key in ("regression_labels", "classification_labels", *(UNIMODAL_KEYS & set(part))):
            assert part[key].shape == (n,) and part[key].dtype == np.float32
        assert np.issubdtype(part["audio_lengths"].dtype, np.integer)
        assert len(set(part["id"])) == n and all(isinstance(s, str) for s in part["raw_text"])
        assert set(part["classification_labels"]) <= {0.0, 1.0, 2.0}
        assert set(part["annotations"]) <= {"Negative", "Neutral", "Positive"}


@pytest.mark.parametrize("dataset", sorted(DATASET_SPECS))
def test_planted_default_lengths_are_the_real_ones(dataset):
    spec = DATASET_SPECS[dataset]
    data, info = planted_data(dataset, (2, 1, 1), text_feature_dim=8)
    assert info.seq_lens == (spec.text_len, spec.audio_shape[0], spec.vision_shape[0])
    assert data["train"]["text_bert"].shape == (2, 3, spec.text_len)
    assert data["train"]["audio"].shape == (2, *spec.audio_shape)
    assert data["train"]["vision"].shape == (2, *spec.vision_shape)


@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_planted_padding_is_exact_zero_and_lengths_in_bounds(dataset):
    data, _ = planted_data(dataset, SMALL_SIZES, seq_lens=SMALL_LENS, text_feature_dim=16)
    for split in SPLITS:
        part = data[split]
        for mod in ("audio", "vision"):
            x, lengths = part[mod], part[f"{mod}_lengths"]
            assert lengths.min() >= 1 and lengths.max() <= x.shape[1]
            for row, n in zip(x, lengths):
                assert np.all(row[n:] == 0.0)
                assert np.all(np.abs(row[:n]).sum(axis=1) > 0)  # valid frames carry data
        ids, mask, seg = part["text_bert"].transpose(1, 0, 2)
        n_tok = mask.sum(axis=1).astype(int)
        assert np.all(mask == (np.arange(mask.shape[1])[None] < n_tok[:, None]))
        assert np.all(seg == 0)
        assert np.all(ids[:, 0] == planted_text.BUILTIN_CLS_ID)
        assert np.all(ids[np.arange(len(ids)), n_tok - 1] == planted_text.BUILTIN_SEP_ID)
        assert np.all(ids[mask == 0] == planted_text.BUILTIN_PAD_ID)
        assert np.all(part["text"][mask == 0] == 0.0)


def test_planted_is_seeded_and_splits_are_independent():
    a, _ = planted_data("sims", SMALL_SIZES, seed=3, seq_lens=SMALL_LENS, text_feature_dim=16)
    b, _ = planted_data("sims", SMALL_SIZES, seed=3, seq_lens=SMALL_LENS, text_feature_dim=16)
    c, _ = planted_data("sims", SMALL_SIZES, seed=4, seq_lens=SMALL_LENS, text_feature_dim=16)
    d, _ = planted_data("sims", (24, 5, 8), seed=3, seq_lens=SMALL_LENS, text_feature_dim=16)
    for split in SPLITS:
        for key in a[split]:
            assert np.array_equal(a[split][key], b[split][key]), key
    assert not np.array_equal(a["train"]["audio"], c["train"]["audio"])
    assert not np.array_equal(a["train"]["regression_labels"], c["train"]["regression_labels"])
    # a different valid size leaves train and test unchanged
    for key in ("audio", "vision", "text", "regression_labels"):
        assert np.array_equal(a["train"][key], d["train"][key])
        assert np.array_equal(a["test"][key], d["test"][key])


@pytest.mark.parametrize("dataset", ["mosi", "simsv2"])
def test_planted_labels_in_range_and_clipping_rare(dataset):
    data, info = planted_data(dataset, (1500, 10, 10), seq_lens=(8, 10, 10), text_feature_dim=4)
    lo, hi = info.label_range
    assert (lo, hi) == (-DATASET_SPECS[dataset].label_max, DATASET_SPECS[dataset].label_max)
    for split in SPLITS:
        for key in ("regression_labels", *(UNIMODAL_KEYS & set(data[split]))):
            y = data[split][key]
            assert y.min() >= lo and y.max() <= hi
    assert info.clipped_fraction < 0.01
    assert math.isclose(info.noise_sigma, 0.1 * hi)


def test_noise_floor_formula_matches_empirical_mean_abs_noise():
    sigma = 0.3
    eps = np.random.default_rng(0).normal(0.0, sigma, size=1_000_000)
    assert noise_floor_mae(sigma) == pytest.approx(np.abs(eps).mean(), rel=5e-3)
    assert noise_floor_mae(sigma) == pytest.approx(sigma * math.sqrt(2 / math.pi))
    # and in the data: the oracle prediction (clipped signal) reaches the floor
    data, info = planted_data("mosi", (3000, 10, 10), seq_lens=(8, 10, 10), text_feature_dim=4)
    lat, y = data["latents"]["train"], data["train"]["regression_labels"]
    oracle = np.clip(lat["signal"], *info.label_range)
    assert np.abs(y - oracle).mean() == pytest.approx(info.noise_floor_mae, rel=0.06)
    assert info.noise_floor_mae == pytest.approx(noise_floor_mae(info.noise_sigma))


def test_planted_signal_is_recoverable_and_bursts_blur_under_mean_pooling():
    data, info = planted_data("mosi", (2000, 10, 10), seq_lens=(16, 200, 40), text_feature_dim=32)
    part, lat = data["train"], data["latents"]["train"]
    y = part["regression_labels"].astype(np.float64)
    oracle = np.c_[lat["y_t"], lat["a_sustained"], lat["a_step"], lat["a_burst"],
                   lat["v_sustained"], lat["v_step"], lat["v_burst"]]
    assert _r2(oracle, y) > 0.85
    x1 = np.c_[oracle, np.ones(len(y))]
    fit_mae = np.abs(x1 @ np.linalg.lstsq(x1, y, rcond=None)[0] - y).mean()
    mean_mae = np.abs(y - y.mean()).mean()
    assert fit_mae < 0.4 * mean_mae
    assert fit_mae == pytest.approx(info.noise_floor_mae, rel=0.1)
    # step component is quantised to STEP_LEVELS levels
    assert len(np.unique(lat["a_step"])) == planted_frames.STEP_LEVELS
    # mean pooling over valid frames: sustained and step survive, the bursts do not
    pooled = part["audio"].sum(axis=1) / part["audio_lengths"][:, None]
    oracle_a = np.c_[lat["a_sustained"], lat["a_step"], lat["a_burst"]]
    r2_oracle, r2_pooled = _r2(oracle_a, lat["y_a"]), _r2(pooled, lat["y_a"])
    assert r2_oracle > 0.999
    assert r2_pooled < r2_oracle - 0.15
    assert _r2(pooled, lat["a_sustained"]) > 0.9
    assert _r2(pooled, lat["a_burst"]) < 0.6
    # the text share is carried by the words: y_t is the negation-aware polarity sum of raw_text
    polar = {**planted_text.POSITIVE_WORDS, **planted_text.NEGATIVE_WORDS}
    for text, y_t in zip(part["raw_text"], lat["y_t"]):
        words = text.split()
        p = sum(polar.get(w, 0) * (-1 if i and words[i - 1] == "not" else 1)
                for i, w in enumerate(words))
        assert y_t == pytest.approx(planted_mod.TEXT_UNIT * info.label_range[1] * p)


def test_planted_text_features_are_a_function_of_token_ids():
    data, _ = planted_data("mosi", (64, 4, 4), seq_lens=(16, 10, 10), text_feature_dim=32)
    ids = data["train"]["text_bert"][:, 0].astype(int)
    text = data["train"]["text"]
    pos = 1  # first word position: same id at same position -> same vector up to token noise
    groups = {}
    for i, t in enumerate(ids[:, pos]):
        groups.setdefault(t, []).append(i)
    same = [g for g in groups.values() if len(g) > 1]
    assert same
    for g in same:
        diff = text[g[0], pos] - text[g[1], pos]
        assert diff.std() < 4 * planted_text.TOKEN_NOISE
    other = [g[0] for g in groups.values()][:2]
    assert (text[other[0], pos] - text[other[1], pos]).std() > 10 * planted_text.TOKEN_NOISE


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), num_layers=1, hidden_size=16,
                          num_heads=2, vocab_words=TINY_WORDS)


def test_planted_with_tokenizer_folder_uses_its_vocab(tiny_bert):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    data, info = planted_data("mosi", SMALL_SIZES, seq_lens=(20, 10, 10), tokenizer=tiny_bert,
                              text_feature_dim=8)
    assert set(info.words["positive"]) == {"good", "great"}      # whole-token words only
    assert set(info.words["negative"]) == {"bad", "terrible"}
    vocab_size = len(tok.get_vocab())
    for split in SPLITS:
        part = data[split]
        ids = part["text_bert"][:, 0].astype(int)
        assert ids.max() < vocab_size
        assert np.all(ids[:, 0] == tok.cls_token_id)
        for row, text in zip(ids, part["raw_text"]):
            assert tok.decode(row, skip_special_tokens=True) == text


def test_builtin_ids_are_bert_base_uncased_ids():
    folder = minilm_path()
    if folder is None:
        pytest.skip("all-MiniLM-L6-v2 not installed")
    vocab = {w: i for i, w in enumerate((folder / "vocab.txt").read_text().split("\n"))}
    for word, idx in planted_text.BUILTIN_IDS.items():
        assert vocab[word] == idx, word
    assert (vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]) == (
        planted_text.BUILTIN_PAD_ID, planted_text.BUILTIN_CLS_ID, planted_text.BUILTIN_SEP_ID)


def test_planted_cli(tmp_path):
    import logging
    out = tmp_path / "cli.pkl"
    mmsa_logger = logging.getLogger("MMSA")
    handlers, level = list(mmsa_logger.handlers), mmsa_logger.level
    try:
        info = planted_mod.main(["--dataset", "sims", "--out", str(out), "--sizes", "4", "2", "2",
                                 "--seq-lens", "8", "10", "6", "--text-feature-dim", "8"])
    finally:  # the CLI configures the 'MMSA' logger; leave it as other tests expect
        mmsa_logger.handlers[:] = handlers
        mmsa_logger.setLevel(level)
    assert out.is_file() and info.sizes == (4, 2, 2)
    assert _load(out)["train"]["vision"].shape == (4, 6, 709)


@pytest.mark.parametrize("module", ["khar_mmsa.data.planted", "khar_mmsa.data.transcripts"])
def test_builder_command_lines_run_without_runpy_warning(module):
    """``python -m khar_mmsa.data.<builder>`` as README documents it: no 'found in sys.modules'."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr and f"python -m {module}" in done.stdout


def test_planted_pickle_loads_with_mmsa_loader(tmp_path):
    from easydict import EasyDict
    from MMSA.data_loader import MMDataLoader
    path = tmp_path / "p.pkl"
    make_planted_dataset(path, "sims", SMALL_SIZES, seq_lens=SMALL_LENS, text_feature_dim=16)
    args = EasyDict(dataset_name="sims", custom_feature=str(path), featurePath=str(path),
                    feature_T="", feature_A="", feature_V="", use_bert=True,
                    need_data_aligned=False, need_normalized=False, feature_dims=[0, 0, 0],
                    seq_lens=[0, 0, 0], batch_size=4, train_mode="regression")
    loaders = MMDataLoader(args, num_workers=0)
    batch = next(iter(loaders["test"]))
    assert batch["text"].shape == (4, 3, SMALL_LENS[0])
    assert set(batch["labels"]) == {"M", "T", "A", "V"}
    assert tuple(args.seq_lens) == SMALL_LENS  # (text_bert L, T_a, T_v) from the pickle


# ---------------------------------------------------------------------------------------------
# transcripts
# ---------------------------------------------------------------------------------------------
ID_ROWS = [  # id, text, label, mode
    ("vidA_1", "it was really good", 2.4, "train"),
    ("vidA_2", "the movie was bad", -1.6, "train"),
    ("vidA_3", "not good", -0.8, "train"),
    ("vidB_1", "great acting", 1.8, "dev"),
    ("vidB_2", "it was the movie", 0.0, "valid"),
    ("vidC_1", "terrible", -3.0, "test"),
    ("vidC_2", "good good good", 3.0, "test"),
]


def _write_csv(path: Path, video_clip_style: bool) -> Path:
    if video_clip_style:
        lines = ["video_id,clip_id,text,label,annotation,mode"]
        lines += [f"{i.split('_')[0]},{i.split('_')[1]},{t},{y},{'Positive' if y > 0 else 'Other'},{m}"
                  for i, t, y, m in ID_ROWS]
    else:
        lines = ["id,text,label,mode"] + [f"{i},{t},{y},{m}" for i, t, y, m in ID_ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("video_clip_style", [False, True])
def test_transcript_dataset(tmp_path, tiny_bert, video_clip_style):
    from transformers import AutoTokenizer
    csv = _write_csv(tmp_path / "label.csv", video_clip_style)
    out = tmp_path / "text.pkl"
    info = build_transcript_dataset(csv, out, tiny_bert, text_len=24, batch_size=2, progress=False)
    data = _load(out)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    assert info.sizes == (3, 2, 2) and info.hidden_size == 16 and info.truncated == 0
    assert absent_modalities(data) == ["audio", "vision"]
    assert data["meta"]["absent_length"] == 1
    rows = {s: [r for r in ID_ROWS if {"dev": "valid"}.get(r[3], r[3]) == s] for s in SPLITS}
    for split in SPLITS:
        part, expected = data[split], rows[split]
        n = len(expected)
        assert n > 0
        assert BASE_KEYS <= set(part)
        sep = "$_$" if video_clip_style else "_"
        assert list(part["id"]) == [r[0].replace("_", sep) for r in expected]
        assert list(part["raw_text"]) == [r[1] for r in expected]
        assert np.allclose(part["regression_labels"], [r[2] for r in expected])
        assert part["text"].shape == (n, 24, 16) and part["text"].dtype == np.float32
        assert part["text_bert"].shape == (n, 3, 24) and part["text_bert"].dtype == np.float32
        ids, mask = part["text_bert"][:, 0].astype(int), part["text_bert"][:, 1]
        for row, text in zip(ids, part["raw_text"]):
            assert tok.decode(row, skip_special_tokens=True) == text
        assert np.all(part["text"][mask == 0] == 0.0) and np.all(part["text"][mask == 1] != 0.0)
        assert part["audio"].shape == (n, ABSENT_FRAMES, 5) and part["vision"].shape == (n, ABSENT_FRAMES, 20)
        assert not part["audio"].any() and not part["vision"].any()
        assert np.all(part["audio_lengths"] == 1) and np.all(part["vision_lengths"] == 1)
        if video_clip_style:
            assert set(part["annotations"]) <= {"Positive", "Other"}


def test_absent_frames_cover_mmsa_mult_kernels():
    import MMSA
    cfg_dir = Path(MMSA.__file__).parent / "config"
    kernels = []
    for f in cfg_dir.glob("*.json"):
        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("conv1d_kernel_size_a", "conv1d_kernel_size_v"):
                        kernels.extend(v if isinstance(v, list) else [v])
                    walk(v)
        walk(json.loads(f.read_text()))
    assert kernels and max(kernels) <= ABSENT_FRAMES


def test_read_label_csv_errors(tmp_path):
    bad_mode = tmp_path / "a.csv"
    bad_mode.write_text("id,text,label,mode\na_1,x,1.0,train\na_2,y,0.5,holdout\n")
    with pytest.raises(ValueError, match="unknown mode"):
        read_label_csv(bad_mode)
    empty = tmp_path / "b.csv"
    empty.write_text("id,text,label,mode\na_1,x,1.0,train\na_2,y,0.5,test\n")
    with pytest.raises(ValueError, match="empty split"):
        read_label_csv(empty)
    no_label = tmp_path / "c.csv"
    no_label.write_text("id,text,label,mode\na_1,x,,train\na_2,y,0.5,dev\na_3,z,1,test\n")
    with pytest.raises(ValueError, match="non-numeric"):
        read_label_csv(no_label)


@pytest.mark.skipif(not REAL_MOSI_CSV.is_file(), reason="shared MOSI label.csv not present")
def test_real_mosi_label_csv_splits():
    splits = read_label_csv(REAL_MOSI_CSV)
    assert {s: len(df) for s, df in splits.items()} == {"train": 1281, "valid": 229, "test": 685}
    assert splits["train"]["id"][0] == "03bSnISJMiM_1"
    for df in splits.values():
        assert df["label"].between(-3, 3).all()


def test_absent_modalities_run_through_mmsa_models(tmp_path, tiny_bert):
    """TFN, MulT and Self-MM (MOSI configs) forward on a transcripts pickle without error."""
    import importlib
    import torch
    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    amio = importlib.import_module("MMSA.models.AMIO").AMIO
    path = tmp_path / "text.pkl"
    build_transcript_dataset(_write_csv(tmp_path / "label.csv", False), path, tiny_bert,
                             text_len=12, progress=False)
    torch.manual_seed(0)
    for name in ("tfn", "mult", "self_mm"):
        args = get_config_regression(name, "mosi")
        args.update(featurePath=str(path), custom_feature=str(path), feature_T="", feature_A="",
                    feature_V="", device=torch.device("cpu"), train_mode="regression",
                    pretrained=str(tiny_bert), text_out=16, batch_size=2,
                    dst_feature_dim_nheads=[8, 2])
        batch = next(iter(MMDataLoader(args, num_workers=0)["train"]))
        model = amio(args).eval()
        a, v = batch["audio"], batch["vision"]
        if name == "self_mm":
            a, v = (a, batch["audio_lengths"]), (v, batch["vision_lengths"])
        with torch.no_grad():
            out = model(batch["text"], a, v)
        assert out["M"].shape == (2, 1) and torch.isfinite(out["M"]).all(), name


def test_planted_long_tailed_lengths_are_one_clip_duration_for_audio_and_vision():
    import numpy as np

    from khar_mmsa.data.planted import planted_data
    from khar_mmsa.data.planted_frames import LONG_TAIL_MEDIAN_FRACTION
    uniform, _ = planted_data("mosi", sizes=(300, 2, 2), seed=1, seq_lens=(10, 375, 500))
    data, info = planted_data("mosi", sizes=(300, 2, 2), seed=1, seq_lens=(10, 375, 500), lengths="long_tailed")
    tr = data["train"]
    a, v = tr["audio_lengths"], tr["vision_lengths"]
    assert info.lengths == "long_tailed" and a.min() >= 1 and a.max() <= 375 and v.max() <= 500
    assert np.all(np.abs(v / 500 - a / 375) <= 1 / 375 + 1 / 500)          # the same clip duration
    assert abs(np.median(a) / 375 - LONG_TAIL_MEDIAN_FRACTION) < 0.02
    assert np.percentile(a, 99) > 3 * np.median(a)                          # a long tail
    assert not tr["audio"][np.arange(375)[None, :] >= a[:, None]].any()     # exact zeros after the length
    # everything but the lengths (and the frames they cut) is the uniform set's
    np.testing.assert_array_equal(tr["regression_labels"], uniform["train"]["regression_labels"])
    np.testing.assert_array_equal(tr["text_bert"], uniform["train"]["text_bert"])


def test_transcript_dataset_never_leaves_half_a_pickle(tmp_path, tiny_bert, monkeypatch):
    """A write that breaks off (disk full, kill) leaves no file at the pickle's name: another process
    (a benchmark sharing the folder) either finds the whole file or builds it."""
    from khar_mmsa.data import transcripts
    csv = _write_csv(tmp_path / "label.csv", False)
    out = tmp_path / "text.pkl"

    def broken_dump(obj, f, protocol=None):
        f.write(b"\x80\x05 half a pickle")
        raise OSError("No space left on device")

    monkeypatch.setattr(transcripts.pickle, "dump", broken_dump)
    with pytest.raises(OSError, match="No space left"):
        build_transcript_dataset(csv, out, tiny_bert, text_len=12, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "text.pkl" in p.name], "a partial file stayed"
    monkeypatch.undo()
    build_transcript_dataset(csv, out, tiny_bert, text_len=12, progress=False)
    assert _load(out)["train"]["text_bert"].shape[1:] == (3, 12)


# --- the builders refuse what MMSA_run would refuse ----------------------------------------------
def test_planted_cli_refuses_sizes_mmsa_run_would_refuse(tmp_path, capsys):
    """`python -m khar_mmsa.data.planted --sizes 1 1 1`: one sample per split cannot be scored
    (MMSA_run refuses it), so nothing is written and the command exits 2 with the reason."""
    out = tmp_path / "one.pkl"
    with pytest.raises(SystemExit) as ei:
        planted_mod.main(["--out", str(out), "--sizes", "1", "1", "1", "--seq-lens", "8", "10", "6",
                          "--text-feature-dim", "8"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "nothing written, MMSA_run would refuse this data" in err
    assert f"{out} [train/regression_labels]: has 1 sample(s)" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_planted_command_line_exits_non_zero_for_sizes_1_1_1(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "one.pkl"
    done = subprocess.run([sys.executable, "-m", "khar_mmsa.data.planted", "--out", str(out),
                           "--sizes", "1", "1", "1", "--seq-lens", "8", "10", "6"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "has 1 sample(s)" in done.stderr and not out.exists()


def test_transcripts_refuse_texts_longer_than_the_encoder(tmp_path, tiny_bert):
    """The tiny BERT has 128 positions: text_len=200 would fail in the middle of training."""
    from khar_mmsa.data.validation import FeatureValidationError
    csv = _write_csv(tmp_path / "label.csv", False)
    out = tmp_path / "long.pkl"
    with pytest.raises(FeatureValidationError, match="texts of 200 tokens, more than the text "
                                                     "encoder's 128 positions"):
        build_transcript_dataset(csv, out, tiny_bert, text_len=200, batch_size=2, progress=False)
    assert not out.exists()


def test_transcript_pickle_bytes_depend_on_the_inputs_only(tmp_path, tiny_bert, monkeypatch):
    """Same label CSV and encoder -> the same bytes, whatever folder the pickle goes to and however
    many CPU threads torch has (the encoder runs on one: a matmul split over threads rounds
    differently): a pickle's content identity (SHA-256, sweep run keys) must not change with the
    machine or the work folder, or finished runs are not recognised in the next session."""
    import hashlib

    import torch
    from transformers import BertModel
    forward, seen = BertModel.forward, set()

    def recording(self, *args, **kwargs):
        seen.add(torch.get_num_threads())
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(BertModel, "forward", recording)
    csv = _write_csv(tmp_path / "label.csv", False)
    digests = []
    threads = torch.get_num_threads()
    try:
        for i, n in enumerate((1, 3)):
            torch.set_num_threads(n)
            out = tmp_path / f"where-{i}" / "t.pkl"
            out.parent.mkdir()
            build_transcript_dataset(csv, out, tiny_bert, text_len=12, batch_size=3, progress=False)
            digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]
    assert seen == {1}
    assert not any(str(tmp_path) in str(v) for v in _load(out)["meta"].values())
