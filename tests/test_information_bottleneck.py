"""MIB pieces (eq. 12, 24-28): closed-form KL, reparameterisation, loss."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from khar_mmsa.losses.information_bottleneck import gaussian_kl_to_standard_normal, mib_loss, reparameterize


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


def test_mib_loss_value_and_parts():
    pred = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-1.5], [1.0]], dtype=torch.float64)
    kl = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
    beta = 1e-3
    loss, parts = mib_loss(pred, y, kl, beta)
    l1 = (0.5 + 0.5 + 1.0) / 3
    assert math.isclose(loss.item(), beta * 4.0 + l1, rel_tol=1e-12)
    assert math.isclose(parts["mib_mae"].item(), l1, rel_tol=1e-12)
    assert math.isclose(parts["mib_kl"].item(), 4.0, rel_tol=1e-12)
    assert math.isclose(parts["mib_weighted_kl"].item(), beta * 4.0, rel_tol=1e-12)


def test_mib_loss_rejects_broadcasting_shapes():
    with pytest.raises(ValueError):
        mib_loss(torch.zeros(4, 1), torch.zeros(4), torch.zeros(4), 1e-3)
    with pytest.raises(ValueError):
        mib_loss(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1), 1e-3)
