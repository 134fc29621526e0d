"""Multimodal information bottleneck loss (KHaR §3.5 eq. 8-12, Appendix C eq. 23-28).

``p(z|x) = N(mu, diag(sigma^2))`` (eq. 23), ``q(z) = N(0, I)`` (eq. 26), ``-log q(y|z) =
||y - D(z)||_1 + C`` (eq. 25), so the minimised loss (eq. 12, the negative of eq. 28) is
``mean_i [ beta * KL(N(mu_i, sigma_i^2) || N(0, I)) + ||y_i - y_hat_i||_1 ]``.

``sigma`` is always the standard deviation (not the variance, not its log).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["gaussian_kl_to_standard_normal", "reparameterize", "mib_loss"]


def gaussian_kl_to_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """Closed-form KL(N(mu, diag sigma^2) || N(0, I)) (eq. 27), summed over the latent width.

    Shapes: b batch, z latent width.  ``mu``, ``sigma`` (b, z), sigma > 0 (a standard deviation);
    returns (b,) = 0.5 * sum_z (mu^2 + sigma^2 - 2 log sigma - 1).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * sigma.log() - 1.0).sum(dim=-1)


def reparameterize(mu: Tensor, sigma: Tensor, training: bool, noise: Optional[Tensor] = None) -> Tensor:
    """Eq. 24: ``z = mu + sigma * eps`` with eps ~ N(0, I) in training; ``mu`` itself at evaluation.

    Shapes: b batch, z latent width.  ``mu``, ``sigma`` (b, z); ``noise`` (b, z) optional eps
    sample (for tests), drawn with ``randn_like`` when omitted; returns (b, z).  At evaluation the
    sample is not drawn at all (E-MIB samples at test time too; that is the pitfall avoided here).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    if not training:
        return mu
    if noise is None:
        noise = torch.randn_like(mu)
    elif noise.shape != mu.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and mu {tuple(mu.shape)} differ in shape")
    return mu + sigma * noise


def mib_loss(pred_sampled: Tensor, labels: Tensor, kl: Tensor, beta: float) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Eq. 12 / 28: ``mean_b( beta * KL_b + ||y_b - y_hat_b||_1 )``.

    Shapes: b batch.  ``pred_sampled`` (b, 1) = D(z) decoded from the *sampled* z; ``labels``
    (b, 1), same shape as the prediction (checked: a (b,) vs (b, 1) mix would broadcast to (b, b));
    ``kl`` (b,) from :func:`gaussian_kl_to_standard_normal`; ``beta`` of eq. 8/12.

    Returns ``(loss, parts)``: ``loss`` a scalar with gradient; ``parts`` detached scalars
    ``{"mib_mae": mean L1, "mib_kl": mean KL, "mib_weighted_kl": beta * mean KL}`` for logging.
    """
    if pred_sampled.shape != labels.shape or pred_sampled.dim() != 2:
        raise ValueError(f"pred_sampled {tuple(pred_sampled.shape)} and labels {tuple(labels.shape)} must both be (b, 1)")
    b = pred_sampled.shape[0]
    if tuple(kl.shape) != (b,):
        raise ValueError(f"kl must be (b,) = ({b},), got shape {tuple(kl.shape)}")
    l1 = (labels - pred_sampled).abs().sum(dim=-1)  # (b,): -log q(y|z) up to a constant (eq. 25)
    loss = (beta * kl + l1).mean()
    parts = {
        "mib_mae": l1.mean().detach(),
        "mib_kl": kl.mean().detach(),
        "mib_weighted_kl": (beta * kl.mean()).detach(),
    }
    return loss, parts
