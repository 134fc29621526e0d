"""Multimodal information bottleneck loss (KHaR §3.5 eq. 8-12, Appendix C eq. 23-28).

``p(z|x) = N(mu, diag(sigma^2))`` (eq. 23), ``q(z) = N(0, I)`` (eq. 26), ``-log q(y|z) =
||y - D(z)||_1 + C`` (eq. 25), so the minimised loss (eq. 12, the negative of eq. 28) is
``mean_i [ beta * KL(N(mu_i, sigma_i^2) || N(0, I)) + ||y_i - y_hat_i||_1 ]``.  This module holds its
pieces; :class:`khar_mmsa.losses.criterion.KHaRCriterion` is the one place that weights and adds them.

The KL's reduction over the latent dimensions (``KHaRConfig.mib_kl_reduction``): 'sum' is eq. 27-28's
closed form; 'mean' divides it by the latent width, as E-MIB (whose beta = 1e-3 we use) does.  The
two are the same loss with beta_sum = beta_mean / latent_dim.

``sigma`` is always the standard deviation (not the variance, not its log).
"""
from __future__ import annotations

from torch import Tensor

from khar_mmsa.config import KL_REDUCTIONS  # the allowed values of mib_kl_reduction
from khar_mmsa.model.fusion import reparameterize  # eq. 24 is the model's sampling; re-exported here

__all__ = ["KL_REDUCTIONS", "gaussian_kl_to_standard_normal", "reparameterize"]


def gaussian_kl_to_standard_normal(mu: Tensor, sigma: Tensor, reduction: str = "sum") -> Tensor:
    """Closed-form KL(N(mu, diag sigma^2) || N(0, I)) (eq. 27), reduced over the latent width.

    Shapes: b batch, z latent width.  ``mu``, ``sigma`` (b, z), sigma > 0 (a standard deviation);
    returns (b,) = 0.5 * sum_z (mu^2 + sigma^2 - 2 log sigma - 1) for ``reduction='sum'`` (eq. 27),
    that divided by z for ``'mean'`` (E-MIB's per-dimension KL).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: one of {KL_REDUCTIONS}")
    per_dim = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * sigma.log() - 1.0)
    return per_dim.sum(dim=-1) if reduction == "sum" else per_dim.mean(dim=-1)
