"""One sample for ``MMSA_test``, checked before any model sees it: for every model the same checks.

A sample is a dict of 2-D numeric arrays as MMSA-FET writes one clip: ``text`` (or ``text_bert``
(3, L): ids, mask, segments), ``audio`` (La, Da), ``vision`` (Lv, Dv), optionally
``audio_lengths`` / ``vision_lengths``.  :func:`check_sample` is the one check (KHaR requires the
three it reads and checks widths against its checkpoint on top, :mod:`.predict`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from khar_mmsa.data.validation import FeatureValidationError

#: The modality arrays a sample may hold, in MMSA's order.
SAMPLE_KEYS = ("text", "text_bert", "audio", "vision")


def check_sample(sample: Any, source: str, required: Sequence[str] = (), vocab: Optional[int] = None,
                 type_vocab: int = 2, max_positions: Optional[int] = None) -> None:
    """One sample: a dict whose modality arrays (:data:`SAMPLE_KEYS`; ``required`` ones must be
    there) are finite, numeric, 2-D and non-empty; ``text_bert`` checked by :func:`check_text_bert`
    (against the text encoder's ``vocab``, ``type_vocab`` and ``max_positions`` when known);
    ``*_lengths``, when given, one whole number within the sequence.  Each problem is a
    :class:`FeatureValidationError` naming the file and the key."""
    def fail(key: Optional[str], problem: str, remedy: str) -> None:
        raise FeatureValidationError(source, None, key, problem, remedy)

    if not isinstance(sample, Mapping):
        fail(None, f"the pickle holds a {type(sample).__name__}, not a dict",
             "Pass one sample {'text_bert', 'audio', 'vision', ...} as MMSA-FET writes it")
    for key in SAMPLE_KEYS:
        a = sample.get(key)
        if a is None:
            if key in required:
                fail(key, "missing" + (" (KHaR reads BERT token ids, not text features)"
                                       if key == "text_bert" else ""), "Store the sample as MMSA-FET writes it")
            continue
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            fail(key, f"is a {type(a).__name__} of {getattr(a, 'dtype', '?')}", "Store a numeric numpy array")
        if a.ndim != 2 or 0 in a.shape:
            fail(key, f"has shape {a.shape}, expected 2-D "
                 + ("(3, L): ids, mask, segments" if key == "text_bert" else "(length, width)"),
                 "Pass one sample, not a batch")
        if not np.isfinite(a).all():
            fail(key, "holds NaN or infinite values", "Replace them before testing")
    if sample.get("text_bert") is not None:
        check_text_bert(sample["text_bert"], source, vocab, type_vocab, max_positions)
    for key in ("audio", "vision"):
        if sample.get(f"{key}_lengths") is not None and sample.get(key) is not None:
            check_length(sample[f"{key}_lengths"], sample[key].shape[0], source, f"{key}_lengths")


def check_text_bert(ids: np.ndarray, source: str, vocab: Optional[int] = None,
                    type_vocab: int = 2, max_positions: Optional[int] = None) -> None:
    """One sample's ``text_bert`` (3, L): at most ``max_positions`` tokens (the encoder's position
    table), whole-number token ids in [0, vocab), a 0/1 attention mask and segment ids in
    [0, type_vocab) (BERT's token-type table), each a :class:`FeatureValidationError` naming the
    row instead of an IndexError inside BERT."""
    def fail(problem: str, remedy: str) -> None:
        raise FeatureValidationError(source, None, "text_bert", problem, remedy)

    if ids.ndim != 2 or ids.shape[0] != 3:
        fail(f"has shape {ids.shape}, expected (3, L)", "Store ids, mask, segments")
    if max_positions is not None and ids.shape[1] > max_positions:
        fail(f"has {ids.shape[1]} tokens, more than the text encoder's {max_positions} positions "
             f"(max_position_embeddings)", "Truncate the text to the encoder's length")
    if (ids != np.round(ids)).any():
        fail("holds values that are not whole numbers", "Tokenize with the checkpoint's tokenizer")
    if ids[0].min() < 0 or (vocab is not None and ids[0].max() >= vocab):
        fail(f"token ids (row 0) must be whole numbers in [0, {vocab})",
             "Tokenize with the checkpoint's tokenizer")
    if ((ids[1] != 0) & (ids[1] != 1)).any():
        fail(f"the attention mask (row 1) holds {sorted(int(x) for x in set(ids[1].tolist()) - {0, 1})[:3]}, "
             f"expected only 0 and 1", "Store ids, mask, segments as the tokenizer returns them")
    if ids[2].min() < 0 or ids[2].max() >= type_vocab:
        fail(f"segment ids (row 2) range over [{int(ids[2].min())}, {int(ids[2].max())}], "
             f"the text encoder knows [0, {type_vocab})", "Store the tokenizer's token_type_ids")


def check_length(value: Any, n: int, source: str, key: str) -> int:
    """One sample's ``audio_lengths`` / ``vision_lengths``: one whole number in 1..n (a scalar or
    a one-element array).  Returns it; a string, an empty array or a value out of range is a
    :class:`FeatureValidationError` naming the key."""
    a = np.asarray(value)
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise FeatureValidationError(source, None, key, f"is {value!r}, expected one whole number",
                                     "Give the number of valid frames of the sample")
    x = a.reshape(-1)[0]
    if not np.isfinite(x) or x != np.round(x) or not 1 <= x <= n:
        raise FeatureValidationError(source, None, key, f"is {x.item()!r}, outside 1..{n} (the sample's "
                                     f"frames)", "Give the real length")
    return int(x)
