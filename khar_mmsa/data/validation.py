"""Validation of MMSA feature pickles before any model sees them.

MMSA 2.2.1's loader indexes the pickle blindly: a missing key is a bare ``KeyError``, a ragged or
NaN-filled array surfaces epochs later as a shape error deep inside torch or as ``nan`` metrics.
:func:`validate_features` checks everything the loader and the models rely on, in one vectorised
pass, and raises one :class:`FeatureValidationError` whose message names the file, the split, the
key, what is wrong and what to do.

Structure (splits, keys, shapes) is checked for all splits first, then values, so the first error
reported is the most fundamental one.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from khar_mmsa.data.feature_keys import (check_role, flag, max_positions, required_keys, vocab_size,
                                         why_needed)
from khar_mmsa.data.value_checks import ValueChecks
from khar_mmsa.mmsa_conventions import SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["FeatureValidationError", "validate_features", "main_file_ids", "builder_args"]


class FeatureValidationError(ValueError):
    """A feature pickle cannot be used as it is.

    The message reads ``"<file> [<split>/<key>]: <what is wrong>. <what to do>"``; the parts are
    also available as the attributes ``source``, ``split``, ``key``, ``problem`` and ``remedy``.
    """

    def __init__(self, source: str, split: Optional[str], key: Optional[str], problem: str,
                 remedy: str) -> None:
        self.source, self.split, self.key = source, split, key
        self.problem, self.remedy = problem.rstrip("."), remedy.rstrip(".")
        where = "/".join(p for p in (split, key) if p) or "-"
        super().__init__(f"{source} [{where}]: {self.problem}. {self.remedy}.")


# --------------------------------------------------------------------------------------------
class _Checker(ValueChecks):
    """Holds the context of one validation run so that errors can be raised tersely."""

    def __init__(self, data: Mapping[str, Any], args: Mapping[str, Any], source: str,
                 role: Optional[str] = None) -> None:
        self.data, self.args, self.source, self.role = data, args, str(source), role
        self.ds = str(args.get("dataset_name", "")).lower()
        self.model = str(args.get("model_name", "")).lower()
        self.use_bert = flag(args, "use_bert")
        self.aligned = flag(args, "need_data_aligned")
        self.text_key = "text_bert" if self.use_bert else "text"
        self.keys = required_keys(args, role)
        self.modal_keys = [k for k in (self.text_key, "audio", "vision") if k in self.keys]

    def fail(self, split: Optional[str], key: Optional[str], problem: str, remedy: str) -> None:
        raise FeatureValidationError(self.source, split, key, problem, remedy)

    # ---- structure --------------------------------------------------------------------------
    def arrays(self, split: str) -> Dict[str, np.ndarray]:
        sd = self.data[split]
        out: Dict[str, np.ndarray] = {}
        for key in self.keys:
            if key not in sd:
                present = ", ".join(sorted(map(str, sd.keys()))) or "none"
                self.fail(split, key, f"missing key '{key}' ({why_needed(key, self.args, self.role)}; keys "
                          f"present: {present})",
                          "Regenerate the features with MMSA-FET or add the key; "
                          + ("set use_bert to match the text features you have"
                             if key in ("text", "text_bert") else
                             "check need_data_aligned / the dataset name"
                             if key.endswith("_lengths") or key.startswith("regression_labels_")
                             else "every split needs it"))
            value = sd[key]
            if key in ("id", "raw_text"):
                try:
                    len(value)
                except TypeError:
                    self.fail(split, key, f"is a {type(value).__name__}, not a sequence",
                              "Store one entry per sample (list or numpy array)")
                out[key] = value  # type: ignore[assignment]
                continue
            arr = value if isinstance(value, np.ndarray) else None
            if arr is None:
                try:
                    arr = np.asarray(value)
                except Exception as exc:  # ragged lists and the like
                    self.fail(split, key, f"cannot be read as an array ({exc})",
                              "Store a numpy array with one row per sample")
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                           or arr.dtype == np.bool_):
                self.fail(split, key, f"has non-numeric dtype {arr.dtype}",
                          "Store numbers (float32 features, integer lengths, float labels); "
                          "a ragged list of sequences must be padded to one array first")
            out[key] = arr
        return out

    def shapes(self, split: str, arrs: Mapping[str, Any],
               samples: Optional[Mapping[str, int]] = None) -> int:
        tk = self.text_key
        for key in self.modal_keys:
            a = arrs[key]
            if a.ndim != 3:
                expect = "(N, 3, L): token ids, attention mask, segment ids" if key == "text_bert" \
                    else "(N, sequence length, feature width)"
                self.fail(split, key, f"has shape {a.shape}, expected 3-D {expect}",
                          "Store padded 3-D arrays as MMSA-FET writes them")
        if "regression_labels" in arrs:
            labels = arrs["regression_labels"]
            n, ref_key = (int(labels.shape[0]) if labels.ndim else 0), "regression_labels"
            if labels.ndim == 0 or labels.size != n or labels.ndim > 2:
                self.fail(split, "regression_labels", f"has shape {labels.shape}",
                          "Store one label per sample, shape (N,) or (N, 1)")
        else:  # a per-modality file: its first array sets the count
            ref_key = self.modal_keys[0]
            n = int(arrs[ref_key].shape[0])
        if n == 0:
            self.fail(split, ref_key, "the split has no samples",
                      "Every split needs at least one sample")
        if samples is not None and split in samples and n != samples[split]:
            self.fail(split, ref_key, f"has {n} samples but the main feature file's {split} split "
                      f"has {samples[split]}", "A feature_T/feature_A/feature_V file must hold the "
                      "same samples in the same order as the main feature file")
        for key in self.modal_keys:
            a = arrs[key]
            if a.shape[0] != n:
                self.fail(split, key, f"has {a.shape[0]} samples but {ref_key} has {n}",
                          "All keys of a split must describe the same samples in the same order")
            if key == "text_bert" and a.shape[1] != 3:
                self.fail(split, key, f"has shape {a.shape}, expected (N, 3, L) (ids, mask, "
                          "segment ids)", "Re-tokenise with MMSA-FET's BERT text extractor, or "
                          "set use_bert=False for pre-extracted text features")
            if a.shape[1] == 0 or a.shape[2] == 0:
                self.fail(split, key, f"has an empty dimension {a.shape}",
                          "Store non-empty sequences and features")
        for key in self.keys:
            if key in self.modal_keys:
                continue
            a = arrs[key]
            if key.startswith("regression_labels_") and isinstance(a, np.ndarray):
                if a.ndim == 0 or a.size != a.shape[0] or a.ndim > 2:
                    self.fail(split, key, f"has shape {a.shape}",
                              "Store one label per sample, shape (N,) or (N, 1)")
            elif key.endswith("_lengths") and isinstance(a, np.ndarray) and a.ndim != 1:
                self.fail(split, key, f"has shape {a.shape}", "Store one length per sample, shape (N,)")
            length = len(a)
            if length != n:
                self.fail(split, key, f"has {length} entries but {ref_key} has {n}",
                          "All keys of a split must describe the same samples in the same order")
        if self.aligned and len(self.modal_keys) == 3:
            seq = {k: arrs[k].shape[2 if k == "text_bert" else 1] for k in (tk, "audio", "vision")}
            if len(set(seq.values())) > 1:
                key = "audio" if seq["audio"] != seq[tk] else "vision"
                self.fail(split, key, f"sequence lengths differ between modalities {seq} although "
                          f"need_data_aligned=True", "Use word-aligned features for this model, or "
                          "the unaligned feature file with need_data_aligned=False")
        return n

    def same_ids(self, split: str, ids: Any, main_ids: Any) -> None:
        """A per-modality file's clip ids must be the main file's, in the same order: MMSA pairs
        row i of feature_A with row i of the main file's labels."""
        mine = [str(i) for i in ids]
        main = [str(i) for i in main_ids]
        if mine == main:
            return
        if len(mine) != len(main):
            self.fail(split, "id", f"has {len(mine)} clip ids but the main feature file's {split} "
                      f"split has {len(main)}", "A feature_T/feature_A/feature_V file must hold the "
                      "same clips in the same order as the main feature file")
        first = next(i for i, (a, b) in enumerate(zip(mine, main)) if a != b)
        how = ("the same clips in another order" if sorted(mine) == sorted(main) else
               "clips the main file does not have")
        self.fail(split, "id", f"row {first} is clip {mine[first]!r} but the main feature file's "
                  f"row {first} is {main[first]!r} ({how}); its rows would be paired with other "
                  f"clips' labels", "Reorder (or regenerate) this file so that its ids match the "
                  "main feature file's, split by split")

    def text_positions(self, split: str, tb: np.ndarray, max_positions: Optional[int]) -> None:
        """BERT adds a learned position to each token: a text longer than its position table
        fails inside the encoder, in the middle of training."""
        if max_positions is not None and tb.shape[2] > max_positions:
            self.fail(split, "text_bert", f"holds texts of {tb.shape[2]} tokens, more than the "
                      f"text encoder's {max_positions} positions (max_position_embeddings of "
                      f"pretrained={self.args.get('pretrained')!r})", "Re-tokenise with "
                      f"max_length <= {max_positions} (truncation), or use an encoder with a "
                      f"longer position table")

    def widths(self, split: str, arrs: Mapping[str, np.ndarray],
               ref: Dict[str, Tuple[str, Tuple[int, ...]]]) -> None:
        for key in self.modal_keys:
            shape = arrs[key].shape
            width = shape[1] if key == "text_bert" else shape[2]
            seq = shape[2] if key == "text_bert" else shape[1]
            if key not in ref:
                ref[key] = (split, shape)
                continue
            rsplit, rshape = ref[key]
            rwidth = rshape[1] if key == "text_bert" else rshape[2]
            rseq = rshape[2] if key == "text_bert" else rshape[1]
            if width != rwidth:
                self.fail(split, key, f"feature width {width} but {rsplit} has {rwidth} "
                          f"(shapes {shape} vs {rshape})",
                          "All splits must come from the same feature extractor; regenerate the "
                          "features")
            if seq != rseq:
                logger.warning("%s [%s/%s]: sequence length %d differs from %s's %d; MMSA sets "
                               "seq_lens from the last split it loads.", self.source, split, key,
                               seq, rsplit, rseq)

    # ---- across samples and splits ----------------------------------------------------------
    def clip_ids(self, all_arrs: Mapping[str, Mapping[str, Any]]) -> None:
        """The same clip in two splits leaks test data into training: an error.  The same id
        twice inside one split: a warning (MMSA trains on both copies)."""
        seen: Dict[str, Tuple[str, set]] = {}
        for split in SPLITS:
            ids = [str(i) for i in all_arrs[split]["id"]]
            unique = set(ids)
            if len(unique) < len(ids):
                counts: Dict[str, int] = {}
                for i in ids:
                    counts[i] = counts.get(i, 0) + 1
                dups = [i for i, c in counts.items() if c > 1]
                logger.warning("%s [%s/id]: %d clip id(s) occur more than once in this split "
                               "(%d extra rows), first %s; MMSA trains and scores every copy.",
                               self.source, split, len(dups), sum(counts[i] - 1 for i in dups),
                               ", ".join(repr(i) for i in dups[:3]))
            for other, (_, other_ids) in seen.items():
                shared = unique & other_ids
                if shared:
                    first = [i for i in ids if i in shared][:3]
                    self.fail(split, "id", f"{len(shared)} clip id(s) also occur in the {other} "
                              f"split, first {', '.join(repr(i) for i in first)}: a clip in two "
                              f"splits leaks its label from training into evaluation",
                              f"Keep each clip in exactly one split (remove it from {split} or "
                              f"from {other})")
            seen[split] = (split, unique)

def validate_features(data: Mapping[str, Any], args: Mapping[str, Any], source: str,
                      role: Optional[str] = None, *, samples: Optional[Mapping[str, int]] = None,
                      ids: Optional[Mapping[str, Any]] = None, scored: bool = True) -> None:
    """Check an MMSA feature pickle for the model and dataset in ``args``.

    ``args`` is MMSA's merged config (``model_name``, ``dataset_name``, ``use_bert``,
    ``need_data_aligned``; optionally ``vocab_size``, ``pretrained``, ``need_unimodal_labels``).
    ``source`` names the file in messages.  Raises :class:`FeatureValidationError` at the first
    problem; returns None when the data is usable.

    ``role`` None checks a main feature file (``featurePath`` / ``custom_feature``): every key
    :func:`required_keys` lists, the clip ids (one clip in two splits is an error, a duplicate
    inside one split a warning) and, with ``scored`` (MMSA_run scores every split), that each
    split can be scored (:meth:`_Checker.scorable`).  ``role`` 'T', 'A' or 'V' checks a
    per-modality file (``feature_T`` / ``feature_A`` / ``feature_V``) for that modality's keys
    only, its clip ids included; ``samples`` ({split: count} of the main file) and ``ids``
    ({split: clip ids} of the main file, see :func:`main_file_ids`), when given, must match: the
    same clips in the same order, else an error naming the split and the first mismatching row.

    With ``use_bert`` and a local ``pretrained`` folder, token ids must be below its
    ``vocab_size`` and texts no longer than its ``max_position_embeddings``.

    Values: -inf in ``audio`` is accepted (MMSA's loader zeroes it); NaN or +/-inf anywhere else
    in a feature array is rejected, and so is a float64 value beyond float32's range (MMSA
    converts to float32).
    """
    role = check_role(role)
    chk = _Checker(data, args, source, role)
    if not isinstance(data, Mapping):
        chk.fail(None, None, f"the pickle holds a {type(data).__name__}, not a dict of splits",
                 "Pass an MMSA feature pickle: {'train': {...}, 'valid': {...}, 'test': {...}}")
    for split in SPLITS:
        if split not in data:
            present = ", ".join(sorted(map(str, data.keys()))) or "none"
            chk.fail(split, None, f"missing split '{split}' (splits present: {present})",
                     "MMSA needs 'train', 'valid' and 'test'; add the missing split")
        if not isinstance(data[split], Mapping):
            chk.fail(split, None, f"is a {type(data[split]).__name__}, not a dict of arrays",
                     "Each split must map keys such as 'audio' and 'regression_labels' to arrays")

    all_arrs: Dict[str, Dict[str, Any]] = {}
    ref: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for split in SPLITS:
        arrs = chk.arrays(split)
        chk.shapes(split, arrs, samples)
        chk.widths(split, arrs, ref)
        all_arrs[split] = arrs
    if role is not None and ids is not None:
        for split in SPLITS:
            if split in ids:
                chk.same_ids(split, all_arrs[split]["id"], ids[split])
    elif "id" in chk.keys:
        chk.clip_ids(all_arrs)
    positions = max_positions(args) if "text_bert" in chk.keys else None

    vocab = vocab_size(args) if chk.use_bert else None
    for split in SPLITS:
        arrs = all_arrs[split]
        if "text_bert" in chk.keys:
            tb = arrs["text_bert"]
            if np.issubdtype(tb.dtype, np.floating) and tb.size and np.isfinite(tb).all():
                chk.float32_range(split, "text_bert", tb, tb.min(), tb.max())
            chk.text_positions(split, tb, positions)
            chk.text_bert(split, tb, vocab)
        elif "text" in chk.keys:
            chk.finite(split, "text", arrs["text"], allow_neg_inf=False)
        for name in ("audio", "vision"):
            if name not in chk.keys:
                continue
            chk.finite(split, name, arrs[name], allow_neg_inf=name == "audio")
            if not chk.aligned:
                chk.lengths(split, f"{name}_lengths", arrs[f"{name}_lengths"], arrs[name].shape[1])
        for key in chk.keys:
            if key.startswith("regression_labels"):
                chk.labels(split, key, np.asarray(arrs[key]))
        if scored and "regression_labels" in chk.keys:
            chk.scorable(split, arrs["regression_labels"])


def main_file_ids(data: Any) -> Optional[Dict[str, List[str]]]:
    """{split: clip ids} of a main feature file, what ``validate_features(..., ids=)`` compares a
    per-modality file with; None when the file has no readable ids."""
    try:
        return {split: [str(i) for i in data[split]["id"]] for split in SPLITS}
    except (KeyError, TypeError, IndexError):
        return None


def builder_args(dataset: str, pretrained: Any = None) -> Dict[str, Any]:
    """The args the data builders (data/planted.py, data/transcripts.py) validate their output
    with: what ``MMSA_run('khar', dataset)`` checks (BERT token ids, unaligned data, every split
    scored), plus the tokenizer folder when there is one."""
    args: Dict[str, Any] = {"model_name": "khar", "dataset_name": dataset, "use_bert": True,
                            "need_data_aligned": False}
    if pretrained is not None:
        args["pretrained"] = str(pretrained)
    return args
