"""The data a benchmark trains on, built into its work folder (never into the repository):
planted-signal pickles (:mod:`khar_mmsa.data.planted`) and the real MOSI transcripts
(:mod:`khar_mmsa.data.transcripts`, read from ``../shared`` beside the checkout at run time)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from khar_mmsa.mmsa_conventions import SPLITS

from .common import MOSI_LABEL_CSV, encoder_name


def make_planted(out: Path, dataset: str, sizes: Sequence[int], seq_lens: Optional[Sequence[int]],
                 tokenizer: Path, seed: int = 0, lengths: str = "uniform"):
    """A planted-signal pickle in ``out`` (rebuilt each time: byte-identical for the same args)."""
    from khar_mmsa.data.planted import make_planted_dataset
    suffix = "" if lengths == "uniform" else f"-{lengths}"
    path = Path(out) / f"planted-{dataset}-{'x'.join(map(str, sizes))}{suffix}.pkl"
    info = make_planted_dataset(path, dataset, sizes=tuple(sizes), seed=seed,
                                seq_lens=None if seq_lens is None else tuple(seq_lens), tokenizer=str(tokenizer),
                                lengths=lengths)
    return path, info


def planted_description(info: Any) -> str:
    return (f"planted-signal {info.dataset.upper()}-format pickle (khar_mmsa.data.planted, seed {info.seed}): "
            f"train/valid/test {'/'.join(map(str, info.sizes))}, seq_lens (text, audio, vision) "
            f"{tuple(info.seq_lens)}"
            + (", long-tailed audio/vision lengths (one lognormal clip duration per sample, fitted to the real "
               "CMU-MOSI transcripts' word counts)" if info.lengths == "long_tailed" else "")
            + f", feature widths {tuple(info.feature_dims)}, label noise sigma "
            f"{info.noise_sigma:.3g} -> noise floor MAE {info.noise_floor_mae:.3f} "
            f"(clipped labels {100 * info.clipped_fraction:.2f}%); token ids from {encoder_name(info.tokenizer)}. "
            "Synthetic: not comparable with results on real features.")


def make_transcripts(out: Path, tokenizer: Path, label_csv: Path = MOSI_LABEL_CSV,
                     train_subset: Optional[int] = None, text_len: int = 50, seed: int = 0):
    """The real-MOSI-transcripts pickle (text only) in ``out``, built once and reused.

    ``train_subset``: keep a seeded random subset of that many training clips (valid and test stay
    whole).  Returns (path, info dict)."""
    import pickle

    import numpy as np

    from khar_mmsa.data.transcripts import build_transcript_dataset
    from khar_mmsa.io.pickles import load_pickle
    from khar_mmsa.io.files import atomic_open

    full = Path(out) / f"transcripts-{Path(tokenizer).name}-L{text_len}-{_inputs_key(label_csv, tokenizer)}.pkl"
    if not full.is_file():
        build_transcript_dataset(label_csv, full, tokenizer, text_len=text_len, progress=False)
    data = load_pickle(full)
    meta = dict(data.get("meta", {}))
    n = len(data["train"]["regression_labels"])
    if train_subset is None or train_subset >= n:
        return full, meta
    path = full.with_name(f"{full.stem}-train{train_subset}-s{seed}.pkl")
    if not path.is_file():
        keep = np.sort(np.random.default_rng(seed).choice(n, size=train_subset, replace=False))
        data["train"] = {k: v[keep] for k, v in data["train"].items()}
        meta["train_subset"] = {"size": int(train_subset), "of": int(n), "seed": int(seed)}
        data["meta"] = meta
        with atomic_open(path) as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    meta["train_subset"] = {"size": int(train_subset), "of": int(n), "seed": int(seed)}
    return path, meta


def _inputs_key(label_csv: Path, tokenizer: Path) -> str:
    """What a built transcripts pickle depends on, by content: the label CSV's SHA-256, every file
    of the tokenizer folder, and the code version (so a rebuilt builder rebuilds)."""
    import hashlib
    import json

    from khar_mmsa.io.identity import code_version, folder_digest
    from khar_mmsa.io.files import file_digest
    key = {"labels": file_digest(label_csv), "tokenizer": folder_digest(tokenizer), "code": code_version()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def split_sizes(path: Path) -> Tuple[int, int, int]:
    from khar_mmsa.io.pickles import load_pickle
    data = load_pickle(path)
    return tuple(len(data[s]["regression_labels"]) for s in SPLITS)  # type: ignore[return-value]
