"""MIB pieces (eq. 12, 24-28): closed-form KL and its reduction, reparameterisation.

The MIB loss itself is weighted and added by KHaRCriterion; tests/test_criterion.py checks it."""
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from khar_mmsa.losses.information_bottleneck import gaussian_kl_to_standard_normal, reparameterize


def mu_sigma(b=6, z=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, z, generator=g, dtype=torch.float64)
    sigma = torch.nn.functional.softplus(torch.randn(b, z, generator=g, dtype=torch.float64)) + 0.05
    return mu, sigma


def test_kl_matches_torch_distributions():
    mu, sigma = mu_sigma()
    ref = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma))).sum(-1)
    got = gaussian_kl_to_standard_normal(mu, sigma)
    assert got.shape == (6,)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_kl_mean_reduction_is_per_dimension():
    mu, sigma = mu_sigma(z=7)
    per_dim = kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma)))
    torch.testing.assert_close(gaussian_kl_to_standard_normal(mu, sigma, "mean"), per_dim.mean(-1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        gaussian_kl_to_standard_normal(mu, sigma, "batchmean")


def test_kl_zero_at_standard_normal():
    kl = gaussian_kl_to_standard_normal(torch.zeros(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64))
    assert torch.equal(kl, torch.zeros(3, dtype=torch.float64))


def test_reparameterize_eval_returns_mu_exactly():
    mu, sigma = mu_sigma()
    z = reparameterize(mu, sigma, training=False)
    assert torch.equal(z, mu)


def test_reparameterize_training():
    mu, sigma = mu_sigma()
    eps = torch.randn_like(mu)
    torch.testing.assert_close(reparameterize(mu, sigma, True, noise=eps), mu + sigma * eps, rtol=0, atol=0)
    mu.requires_grad_(True)
    sigma.requires_grad_(True)
    z = reparameterize(mu, sigma, True)
    assert not torch.equal(z.detach(), mu.detach())
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones_like(mu)) and sigma.grad.abs().sum() > 0
