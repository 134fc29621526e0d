"""Intensity-guided contrastive loss (KHaR §3.6, eq. 13-21), literal pair sets.

For anchor sample i (m modalities, each an L2-normalised vector):

* pos pairs (eq. 13-14): j != i with |y_i - y_j| <= kappa; every other j != i is a neg pair.
  Ties are decided on the label grid, not by float rounding: the gap is rounded to
  ``GAP_RESOLUTION`` (1e-4) before the comparison, see :func:`make_positive_mask`.
* P^i (eq. 15, 17, 19): the same-sample inter-modal pairs (M^i, M'^i), each unordered modality
  pair once (m(m-1)/2 pairs: (V,T), (V,A), (T,A) for three modalities), plus, for every positive
  j, all m(m-1) ordered inter-modal pairs (M^i, M'^j), M != M', and the m intra-modal pairs
  (M^i, M^j) -- i.e. all m^2 pairs (M^i, M'^j).
* N^i (eq. 16, 18, 20): all m^2 pairs (M^i, M'^k) for every negative k.
* L = -mean_i log( sum_{P^i} delta / sum_{P^i u N^i} delta ), delta = exp(sim / tau),
  sim = dot product (eq. 21).  Self-pairs (M^i, M^i) belong to neither set.

Computed as a difference of two masked log-sum-exps: excluded pairs are set to -inf (contribute
exp(-inf) = 0), never multiplied by 0 before the exponential (which would add exp(0) = 1 per
masked pair, the CLGSI pitfall).  P^i always holds the same-sample pairs (m >= 2), so both sums are
non-empty and the loss is finite even when i has no cross-sample positive.

The label scale kappa applies to is the caller's choice (``KHaRConfig.contrastive_label_scale``);
this function compares the labels it is given.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GAP_RESOLUTION", "make_positive_mask", "intensity_contrastive_loss"]

# Eq. 14 compares |y_i - y_j| with kappa after rounding the gap to this step (on the scale the labels
# are given in).  MMSA feeds float32 labels: 0.2f and 0.6f are 0.40000002 apart, 1.0f and 1.4f
# 0.39999998, so a plain ``<=`` calls about a third of the exact-kappa pairs of a MOSI batch negative.
# Float32 moves a label in [-3, 3] by < 2.4e-7 and a gap by < 5e-7, far below half a step; real
# labels are means of 3-5 annotators' marks (MOSI: multiples of 1/3, 1/4, 1/5), so two different
# gaps differ by >= 1/60 (>= 1/180 on the [-1, 1] scale), far above it.  Rounding therefore merges
# only gaps that are equal on the label grid; a gap within half a step (5e-5) of kappa is a tie.
GAP_RESOLUTION = 1e-4


def _flat_labels(labels: Tensor, b: int) -> Tensor:
    if tuple(labels.shape) not in ((b,), (b, 1)):
        raise ValueError(f"labels must be (b,) or (b, 1) with b={b}, got shape {tuple(labels.shape)}")
    return labels.reshape(b)


def make_positive_mask(labels: Tensor, kappa: float, resolution: float = GAP_RESOLUTION) -> Tensor:
    """Eq. 13-14 pos pairs, decided on the label grid.

    Shapes: ``labels`` (b,) (or (b, 1)), b batch; returns (b, b) bool, entry [i, j] True iff
    j != i and round(|y_i - y_j| / resolution) <= round(kappa / resolution): every pair whose gap
    equals kappa on the label grid is positive, on float32 and float64 labels alike (see
    ``GAP_RESOLUTION``).  The diagonal is False (eq. 13: j != i).
    """
    b = labels.shape[0]
    y = _flat_labels(labels, b).to(torch.float64)  # the gap in float64: no second rounding
    gap_steps = torch.round((y[:, None] - y[None, :]).abs() / resolution)
    close = gap_steps <= round(kappa / resolution)
    return close & ~torch.eye(b, dtype=torch.bool, device=labels.device)


def intensity_contrastive_loss(features: Tensor, labels: Tensor, kappa: float, temperature: float,
                               resolution: float = GAP_RESOLUTION) -> Tensor:
    """Eq. 21 with the pair sets of eq. 15-20.

    Shapes: b batch, m modalities (2 or 3; any m >= 2 works), d width.  ``features`` (b, m, d),
    each [i, M] row L2-normalised by the caller; ``labels`` (b,) (or (b, 1)); returns a scalar.
    ``kappa`` is the eq. 14 threshold, ``temperature`` tau of eq. 21 (> 0), ``resolution`` the label
    grid step of :func:`make_positive_mask`.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (b, m, d), got shape {tuple(features.shape)}")
    b, m, _ = features.shape
    if m < 2:
        raise ValueError(f"the loss needs at least two modalities, got m={m}")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    pos = make_positive_mask(_flat_labels(labels, b), kappa, resolution)  # (b, b)

    # logits[i, M, j, M'] = <f[i, M], f[j, M']> / tau for anchor i.
    logits = torch.einsum("imd,jnd->imjn", features, features) / temperature  # (b, m, b, m)

    eye_b = torch.eye(b, dtype=torch.bool, device=features.device)
    same_pairs = torch.ones(m, m, dtype=torch.bool, device=features.device).triu(diagonal=1)  # M < M'
    all_pairs = torch.ones(m, m, dtype=torch.bool, device=features.device)
    # (b, m, b, m) pair masks built from a sample-pair mask (b, b) and a modality-pair mask (m, m).
    same_sample = eye_b[:, None, :, None] & same_pairs[None, :, None, :]
    cross_pos = pos[:, None, :, None] & all_pairs[None, :, None, :]
    cross_any = (~eye_b)[:, None, :, None] & all_pairs[None, :, None, :]
    in_p = (same_sample | cross_pos).reshape(b, -1)
    in_p_or_n = (same_sample | cross_any).reshape(b, -1)

    flat = logits.reshape(b, -1)
    log_num = flat.masked_fill(~in_p, float("-inf")).logsumexp(dim=-1)  # log sum_{P^i} delta
    log_den = flat.masked_fill(~in_p_or_n, float("-inf")).logsumexp(dim=-1)  # log sum_{P^i u N^i} delta
    return (log_den - log_num).mean()
