"""Noisy top-k routing of the sparse MoE (KHaR eq. 4-5; Shazeer et al. 2017, §2.1 and App. A).

``H = clean + eps * noise_std`` (eps ~ N(0, 1), training only), ``G = Softmax(KeepTopK(H, k))``:
the k largest noisy logits per token are kept, the others set to ``-inf`` *before* the softmax,
so the kept gates sum to one and the dropped ones are exactly zero.  (A widely copied
implementation softmaxes first and then compares probabilities with raw logits in the load
estimator; that is not what the paper does.)

Padded positions (``mask`` False) are neutralised before anything is computed, so whatever they
hold (garbage, inf, NaN) never reaches the gates, the routing or the gradients.

This module only routes.  The balance loss of eq. 6 (importance, load and their CV^2) is computed
from the returned :class:`GateOutput` by :mod:`khar_mmsa.losses.balance`, in the criterion.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["GateOutput", "noisy_top_k_gating"]


class GateOutput(NamedTuple):
    """Result of :func:`noisy_top_k_gating` (b batch, n time, e experts): the raw router outputs the
    MoE layer mixes with and the criterion's balance loss reads."""

    gates: Tensor
    """(b, n, e): softmax over the kept top-k noisy logits, 0 for dropped experts and padded tokens."""
    selected: Tensor
    """(b, n, k) long: the experts each token is routed to (largest noisy logit first); meaningless at
    padded tokens, which are never routed."""
    clean_logits: Tensor
    """(b, n, e): x W_g, 0 at padded tokens."""
    noisy_logits: Tensor
    """(b, n, e): H, the logits the top-k was taken on (``clean_logits`` without noise)."""
    noise_std: Optional[Tensor]
    """(b, n, e): the noise's standard deviation (1 at padded tokens), or None without noise."""
    mask: Tensor
    """(b, n) bool: True at real tokens."""


def noisy_top_k_gating(
    clean_logits: Tensor,
    noise_std: Optional[Tensor],
    k: int,
    mask: Tensor,
    noise: Optional[Tensor] = None,
) -> GateOutput:
    """Noisy top-k routing.

    Shapes: b batch, n time, e experts.  ``clean_logits`` (b, n, e) = x W_g; ``noise_std``
    (b, n, e) = softplus(x W_noise) + (the caller's) epsilon, **strictly positive**, or ``None``
    for no noise (evaluation, or noisy gating disabled); ``mask`` (b, n) bool, True = real token;
    ``noise`` (b, n, e) optional standard-normal sample (for tests), drawn with ``randn_like``
    when omitted and ``noise_std`` is given.
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

    selected = logits.topk(k, dim=-1).indices  # (b, n, k): KeepTopK
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, selected, True)
    gates = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)  # softmax AFTER KeepTopK
    gates = gates.masked_fill(~real, 0.0)
    return GateOutput(gates=gates, selected=selected, clean_logits=clean, noisy_logits=logits, noise_std=std,
                      mask=mask)
