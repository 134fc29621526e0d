"""The value checks of a feature pickle: finite features, float32's range, lengths, labels, token ids.

:class:`ValueChecks` is the second half of :func:`khar_mmsa.data.validation.validate_features`'s
checker, run once every split's structure (keys, shapes, widths) has passed; each check raises
through the checker's ``fail`` with the split, the key, the first offending samples and a remedy.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from khar_mmsa.config import LABEL_RANGES

__all__ = ["ValueChecks", "FLOAT32_MAX", "LABEL_TOLERANCE", "sample_ids"]

# float32 is what MMSA's loader converts every feature and label array to (``.astype(np.float32)``).
FLOAT32_MAX = float(np.finfo(np.float32).max)
LABEL_TOLERANCE = 1e-4


def sample_ids(split_data: Mapping[str, Any], idx: np.ndarray, limit: int = 3) -> str:
    """'samples 3, 17 (ids 'a$_1', 'b$_2')' for an error message."""
    idx = [int(i) for i in np.asarray(idx).ravel()[:limit]]
    txt = "sample" + ("s " if len(idx) > 1 else " ") + ", ".join(str(i) for i in idx)
    ids = split_data.get("id")
    try:
        names = [str(ids[i]) for i in idx]
        txt += " (id " + ", ".join(repr(n) for n in names) + ")"
    except Exception:  # ids missing or not indexable: the index alone is enough
        pass
    return txt


class ValueChecks:
    """The checks of values; the checker that uses it provides ``data`` (the pickle), ``args``, ``ds``
    (the dataset name) and ``fail(split, key, problem, remedy)``."""

    data: Mapping[str, Any]
    args: Mapping[str, Any]
    ds: str

    def fail(self, split: Optional[str], key: Optional[str], problem: str, remedy: str) -> None:
        raise NotImplementedError

    def finite(self, split: str, key: str, a: np.ndarray, allow_neg_inf: bool) -> None:
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            return
        lo, hi = a.min(), a.max()  # NaN propagates through both; no temporaries
        if not (np.isfinite(lo) and np.isfinite(hi)):
            sd = self.data[split]
            flat = a.reshape(a.shape[0], -1)
            what = None
            if np.isnan(lo) or np.isnan(hi):
                bad = np.flatnonzero(np.isnan(flat).any(axis=1))
                what = "NaN"
            elif hi == np.inf:
                bad = np.flatnonzero(np.isposinf(flat).any(axis=1))
                what = "+inf"
            elif not allow_neg_inf:
                bad = np.flatnonzero(np.isneginf(flat).any(axis=1))
                what = "-inf"
            if what is not None:
                note = (" (MMSA zeroes only -inf in audio, which is accepted; NaN and +inf are not "
                        "replaced)" if key == "audio" else
                        " (MMSA replaces non-finite values only for -inf in audio)")
                self.fail(split, key, f"contains {what} in {len(bad)} sample(s), first "
                          f"{sample_ids(sd, bad)}" + note, "Replace or drop these values (e.g. "
                          "np.nan_to_num) and regenerate the pickle")
        self.float32_range(split, key, a, lo, hi)

    def float32_range(self, split: str, key: str, a: np.ndarray, lo: Any, hi: Any) -> None:
        """Finite values a float32 cannot hold: MMSA's ``astype(np.float32)`` turns them into
        +/-inf (and -inf in audio into 0) without a word."""
        if a.dtype.itemsize <= 4 or not (hi > FLOAT32_MAX or lo < -FLOAT32_MAX):
            return
        flat = a.reshape(a.shape[0], -1)
        over = np.isfinite(flat) & (np.abs(flat) > FLOAT32_MAX)
        bad = np.flatnonzero(over.any(axis=1))
        if not bad.size:  # only -inf (accepted in audio) beyond the range
            return
        worst = float(np.abs(flat[over]).max())
        self.fail(split, key, f"has {int(over.sum())} {a.dtype} value(s) beyond float32's range "
                  f"(|x| up to {worst:.3g} > {FLOAT32_MAX:.4g}) in {bad.size} sample(s), first "
                  f"{sample_ids(self.data[split], bad)}; MMSA converts features and labels to "
                  f"float32, where they become inf",
                  "Rescale or clip these values (they are almost certainly corrupt) and "
                  "regenerate the pickle")

    def scorable(self, split: str, labels: np.ndarray) -> None:
        """MMSA scores every split (train after each epoch, valid for model selection, test for
        the results row).  Pearson's Corr needs two samples and labels that are not all equal;
        that also gives MOSI/MOSEI's Non0_acc_2 / Non0_F1_score the non-zero label they need
        (MMSA fails with an IndexError when every label is 0)."""
        v = np.asarray(labels).reshape(-1).astype(np.float32)  # what MMSA scores
        n = v.size
        fix = f"Give the {split} split more samples (at least 2, with different labels) or re-split the data"
        if n < 2:
            self.fail(split, "regression_labels", f"has {n} sample(s); MMSA's metrics need at "
                      f"least 2 (Corr, Pearson's r, is undefined for one sample)", fix)
        if np.all(v == v[0]):
            self.fail(split, "regression_labels", f"all {n} labels are {float(v[0]):g}; Pearson's "
                      f"Corr is undefined for constant labels (MMSA would write NaN)", fix)

    def lengths(self, split: str, key: str, lens: Any, seq_len: int) -> None:
        a = np.asarray(lens)
        sd = self.data[split]
        if a.dtype == object or not (np.issubdtype(a.dtype, np.integer)
                                     or np.issubdtype(a.dtype, np.floating)):
            self.fail(split, key, f"has dtype {a.dtype}", "Store integer lengths")
        if np.issubdtype(a.dtype, np.floating):
            bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
            if bad.size:
                self.fail(split, key, f"has non-integer values, first {sample_ids(sd, bad)}: "
                          f"{a[bad[:3]].tolist()}", "Store integer lengths (valid frames per sample)")
        bad = np.flatnonzero(a <= 0)
        if bad.size:
            self.fail(split, key, f"has {bad.size} length(s) <= 0, first {sample_ids(sd, bad)}",
                      "Every sample needs at least one valid frame; drop empty samples or "
                      "regenerate their features")
        bad = np.flatnonzero(a > seq_len)
        if bad.size:
            self.fail(split, key, f"has {bad.size} length(s) greater than the sequence length "
                      f"{seq_len}, first {sample_ids(sd, bad)}: {a[bad[:3]].tolist()}",
                      "Lengths must count valid frames of the padded array; clip them to the "
                      "padded length or regenerate the features")

    def labels(self, split: str, key: str, lab: np.ndarray) -> None:
        sd = self.data[split]
        v = lab.reshape(-1)
        if np.issubdtype(v.dtype, np.floating):
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                self.fail(split, key, f"has {bad.size} non-finite label(s), first "
                          f"{sample_ids(sd, bad)}", "Drop these samples or fix their labels")
            if v.size:
                self.float32_range(split, key, v.reshape(-1, 1), v.min(), v.max())
        rng = LABEL_RANGES.get(self.ds)
        if rng is None:
            return
        lo, hi = rng
        bad = np.flatnonzero((v < lo - LABEL_TOLERANCE) | (v > hi + LABEL_TOLERANCE))
        if bad.size:
            self.fail(split, key, f"has {bad.size} label(s) outside {self.ds}'s range [{lo:g}, "
                      f"{hi:g}], first {sample_ids(sd, bad)}: {v[bad[:3]].tolist()}",
                      "Check dataset_name matches the labels, or rescale the labels to the "
                      "dataset's range")

    def text_bert(self, split: str, a: np.ndarray, vocab: Optional[int]) -> None:
        sd = self.data[split]
        key = "text_bert"
        is_float = np.issubdtype(a.dtype, np.floating)
        for row, name in ((0, "token ids"), (1, "attention mask"), (2, "segment ids")):
            x = a[:, row, :]
            if is_float:
                badm = ~np.isfinite(x) | (x != np.round(x))
                if badm.any():
                    bad = np.flatnonzero(badm.any(axis=1))
                    self.fail(split, key, f"{name} (text_bert[:, {row}]) are not integers, first "
                              f"{sample_ids(sd, bad)}", "Re-tokenise the text")
            if row == 0:
                bad = np.flatnonzero((x < 0).any(axis=1))
                if bad.size:
                    self.fail(split, key, f"negative token ids, first {sample_ids(sd, bad)}",
                              "Re-tokenise the text with the tokenizer of 'pretrained'")
                if vocab is not None:
                    mx = x.max()
                    if mx >= vocab:
                        bad = np.flatnonzero((x >= vocab).any(axis=1))
                        self.fail(split, key, f"token id {int(mx)} >= the tokenizer's vocabulary "
                                  f"size {vocab}, first {sample_ids(sd, bad)}",
                                  f"The features were tokenised with another vocabulary than "
                                  f"pretrained={self.args.get('pretrained')!r}; use the matching "
                                  f"model (e.g. bert-base-chinese for SIMS) or re-tokenise")
            else:
                bad = np.flatnonzero(((x != 0) & (x != 1)).any(axis=1))
                if bad.size:
                    self.fail(split, key, f"{name} (text_bert[:, {row}]) has values other than 0 "
                              f"and 1, first {sample_ids(sd, bad)}",
                              "text_bert must be (ids, attention mask, segment ids) as MMSA-FET "
                              "writes it; re-tokenise the text")
