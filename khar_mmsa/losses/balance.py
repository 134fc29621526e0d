"""Expert-balance regulariser of the sparse MoE (KHaR eq. 6, Shazeer et al. 2017).

``L_MoE = omega * (CV(I)^2 + CV(L)^2)`` with ``CV(x)^2 = var(x) / (mean(x)^2 + eps)``.

Variance convention: the **unbiased** sample variance (Bessel's correction, divide by e - 1), as
Shazeer et al.'s reference code (``x.float().var()``) does.  With a single expert the variance is
undefined (0/0) and a single expert is trivially balanced, so CV^2 is defined as 0 there.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cv_squared", "balance_loss"]


def _at_least_float32(x: Tensor) -> Tensor:
    """Half/bfloat16 statistics are computed in float32 (as Shazeer's ``x.float()``); float64 stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
    ``weight`` is omega (``KHaRConfig.moe_balance_weight``), ``eps`` the CV epsilon
    (``KHaRConfig.cv_eps``).
    """
    if importance.shape != load.shape:
        raise ValueError(f"importance {tuple(importance.shape)} and load {tuple(load.shape)} differ in shape")
    return weight * (cv_squared(importance, eps) + cv_squared(load, eps))
