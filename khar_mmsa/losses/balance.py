"""Expert-balance regulariser of the sparse MoE (KHaR eq. 6, Shazeer et al. 2017).

``L_MoE = omega * (CV(I)^2 + CV(L)^2)`` with ``CV(x)^2 = var(x) / (mean(x)^2 + eps)``, where the
importance ``I`` and the load ``L`` are per-expert sums over the *real* tokens of one modality
(:func:`importance_and_load`, from the router's raw outputs).

Variance convention: the **unbiased** sample variance (Bessel's correction, divide by e - 1), as
Shazeer et al.'s reference code (``x.float().var()``) does.  With a single expert the variance is
undefined (0/0) and a single expert is trivially balanced, so CV^2 is defined as 0 there.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["cv_squared", "balance_loss", "importance_and_load"]


def _at_least_float32(x: Tensor) -> Tensor:
    """Half/bfloat16 statistics are computed in float32 (as Shazeer's ``x.float()``); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def importance_and_load(gates: Tensor, selected: Tensor, clean_logits: Tensor, noisy_logits: Tensor,
                        noise_std: Optional[Tensor], mask: Tensor) -> Tuple[Tensor, Tensor]:
    """I(X) and L(X) of eq. 6 from one router's raw outputs (:class:`khar_mmsa.model.gating.GateOutput`).

    Shapes: b batch, n time, e experts, k routed experts per token.  ``gates``, ``clean_logits``,
    ``noisy_logits`` and ``noise_std`` (b, n, e) (``noise_std`` None without noise); ``selected``
    (b, n, k) the routed experts; ``mask`` (b, n) bool, True at real tokens.  Returns two (e,)
    tensors, computed in at least float32:

    * importance: the sum of ``gates`` over real tokens; differentiable.
    * load with noise (k < e): the sum over real tokens of ``P(i in top k) =
      Phi((clean_i - threshold_i) / noise_std_i)`` under a fresh noise draw, where threshold_i is
      the k-th largest noisy logit among the *other* experts: the (k+1)-th largest noisy value
      overall if i is routed, otherwise the k-th largest; differentiable in the clean logits and
      the noise std.  Without noise, or with k == e: the count of real tokens routed to each
      expert (constant w.r.t. parameters; with k == e the number of real tokens).
    """
    e = gates.shape[-1]
    k = selected.shape[-1]
    real = mask.unsqueeze(-1)  # (b, n, 1)
    gates = _at_least_float32(gates)
    importance = gates.masked_fill(~real, 0.0).sum(dim=(0, 1))
    keep = torch.zeros(gates.shape, dtype=torch.bool, device=gates.device).scatter_(-1, selected, True)
    if noise_std is None or k == e:
        return importance, (keep & real).to(gates.dtype).sum(dim=(0, 1))
    clean, noisy, std = (_at_least_float32(t) for t in (clean_logits, noisy_logits, noise_std))
    top_vals = noisy.topk(k + 1, dim=-1).values     # (b, n, k + 1)
    threshold_if_in = top_vals[..., k:k + 1]        # (k+1)-th largest: the k-th among the others
    threshold_if_out = top_vals[..., k - 1:k]       # k-th largest
    threshold = torch.where(keep, threshold_if_in, threshold_if_out)
    prob_in_top_k = torch.special.ndtr((clean - threshold) / std)
    return importance, prob_in_top_k.masked_fill(~real, 0.0).sum(dim=(0, 1))


def cv_squared(x: Tensor, eps: float) -> Tensor:
    """Squared coefficient of variation of a per-expert statistic.

    Shapes: ``x`` (e,) with e experts; returns a scalar.

    ``var(x) / (mean(x)^2 + eps)`` with the unbiased variance (divide by e - 1).  Returns 0 when
    e == 1 (one expert is always balanced; the unbiased variance would be 0/0).
    """
    if x.dim() != 1:
        raise ValueError(f"cv_squared expects a 1-d (e,) tensor, got shape {tuple(x.shape)}")
    x = _at_least_float32(x)
    if x.numel() < 2:
        return x.new_zeros(())
    return x.var(correction=1) / (x.mean() ** 2 + eps)


def balance_loss(importance: Tensor, load: Tensor, weight: float, eps: float) -> Tensor:
    """Eq. 6: ``weight * (CV^2(importance) + CV^2(load))``.

    Shapes: ``importance`` and ``load`` (e,) with e experts; returns a scalar.
    ``weight`` is omega (``KHaRConfig.moe_balance_weight``; the criterion passes 1 and weighs the
    sum over modalities itself), ``eps`` the CV epsilon (``KHaRConfig.cv_eps``).
    """
    if importance.shape != load.shape:
        raise ValueError(f"importance {tuple(importance.shape)} and load {tuple(load.shape)} differ in shape")
    return weight * (cv_squared(importance, eps) + cv_squared(load, eps))
