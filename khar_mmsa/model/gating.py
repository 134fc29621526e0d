"""Noisy top-k gating of the sparse MoE (KHaR eq. 4-6; Shazeer et al. 2017, §2.1 and App. A).

``H = clean + eps * noise_std`` (eps ~ N(0, 1), training only), ``G = Softmax(KeepTopK(H, k))``:
the k largest noisy logits per token are kept, the others set to ``-inf`` *before* the softmax,
so the kept gates sum to one and the dropped ones are exactly zero.  (A widely copied
implementation softmaxes first and then compares probabilities with raw logits in the load
estimator; that is not what the paper does.)

Importance and load are per-expert sums over the *real* tokens only; padded positions (``mask``
False) are neutralised before anything is computed, so whatever they hold (garbage, inf, NaN) never
reaches the gates, the statistics or the gradients.

The balance loss itself (eq. 6) lives in :mod:`khar_mmsa.losses.balance` and is re-exported here.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from khar_mmsa.losses.balance import balance_loss, cv_squared

__all__ = ["GateOutput", "noisy_top_k_gating", "cv_squared", "balance_loss"]


class GateOutput(NamedTuple):
    """Result of :func:`noisy_top_k_gating` (b batch, n time, e experts)."""

    gates: Tensor
    """(b, n, e): softmax over the kept top-k noisy logits, 0 for dropped experts and padded tokens."""
    importance: Tensor
    """(e,): sum of ``gates`` over real tokens (I(X) of eq. 6); differentiable."""
    load: Tensor
    """(e,): L(X) of eq. 6.  With noise: sum over real tokens of P(expert stays in the top k under a
    fresh noise draw), differentiable.  Without noise, or k == e: count of real tokens routed to the
    expert (constant w.r.t. parameters, for logging; with k == e it is the number of real tokens)."""


def noisy_top_k_gating(
    clean_logits: Tensor,
    noise_std: Optional[Tensor],
    k: int,
    mask: Tensor,
    noise: Optional[Tensor] = None,
) -> GateOutput:
    """Noisy top-k gating with importance and (differentiable) load.

    Shapes: b batch, n time, e experts.  ``clean_logits`` (b, n, e) = x W_g; ``noise_std``
    (b, n, e) = softplus(x W_noise) + (the caller's) epsilon, **strictly positive**, or ``None``
    for no noise (evaluation, or noisy gating disabled); ``mask`` (b, n) bool, True = real token;
    ``noise`` (b, n, e) optional standard-normal sample (for tests), drawn with ``randn_like``
    when omitted and ``noise_std`` is given.

    Load with noise (k < e): for expert i at a token, ``P(i in top k) =
    Phi((clean_i - threshold_i) / noise_std_i)`` where threshold_i is the k-th largest noisy logit
    among the *other* experts: the (k+1)-th largest noisy value overall if i is currently kept,
    otherwise the k-th largest.  Without noise (or when k == e) the load is the count of real tokens
    whose top-k keeps the expert -- the same as counting ``gates > 0`` except that a kept gate
    which underflows to exactly 0.0 in the softmax still counts.
    """
    if clean_logits.dim() != 3:
        raise ValueError(f"clean_logits must be (b, n, e), got shape {tuple(clean_logits.shape)}")
    b, n, e = clean_logits.shape
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, n):
        raise ValueError(f"mask must be a bool (b, n) = {(b, n)} tensor, got {mask.dtype} {tuple(mask.shape)}")
    if not 1 <= k <= e:
        raise ValueError(f"k={k} must be between 1 and the number of experts e={e}")
    if noise_std is not None and noise_std.shape != clean_logits.shape:
        raise ValueError(f"noise_std shape {tuple(noise_std.shape)} != clean_logits shape {tuple(clean_logits.shape)}")
    if noise is not None:
        if noise_std is None:
            raise ValueError("a noise sample was given but noise_std is None (noise-free gating)")
        if noise.shape != clean_logits.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != clean_logits shape {tuple(clean_logits.shape)}")

    real = mask.unsqueeze(-1)  # (b, n, 1)
    # Neutralise padded tokens first: masked_fill passes no gradient to them and drops inf/NaN.
    clean = clean_logits.masked_fill(~real, 0.0)
    if noise_std is not None:
        std = noise_std.masked_fill(~real, 1.0)
        eps = torch.randn_like(clean) if noise is None else noise.masked_fill(~real, 0.0)
        logits = clean + eps * std
    else:
        std = None
        logits = clean

    # KeepTopK: k kept values, plus the (k+1)-th needed by the load estimator.
    top_vals, top_idx = logits.topk(min(k + 1, e), dim=-1)  # (b, n, k or k+1)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top_idx[..., :k], True)
    gates = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)  # softmax AFTER KeepTopK
    gates = gates.masked_fill(~real, 0.0)
    importance = gates.sum(dim=(0, 1))

    if std is None or k == e:
        load = (keep & real).to(gates.dtype).sum(dim=(0, 1))
    else:
        threshold_if_in = top_vals[..., k:k + 1]   # (k+1)-th largest: the k-th among the others
        threshold_if_out = top_vals[..., k - 1:k]  # k-th largest
        threshold = torch.where(keep, threshold_if_in, threshold_if_out)
        prob_in_top_k = torch.special.ndtr((clean - threshold) / std)
        load = prob_in_top_k.masked_fill(~real, 0.0).sum(dim=(0, 1))
    return GateOutput(gates=gates, importance=importance, load=load)
