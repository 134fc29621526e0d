"""Noisy top-k gating (eq. 4-5) and the importance/load of eq. 6 computed from its raw outputs, against a
plain-loop reference, plus masking/gradient properties."""
import math

import pytest
import torch

from khar_mmsa.losses.balance import balance_loss, cv_squared, importance_and_load
from khar_mmsa.model.gating import noisy_top_k_gating


class Gating:
    """The router's gates and selected experts, with eq. 6's importance and load from its raw outputs."""

    def __init__(self, *args, **kwargs):
        self.out = noisy_top_k_gating(*args, **kwargs)
        self.gates, self.selected = self.out.gates, self.out.selected
        self.importance, self.load = importance_and_load(*self.out)


def gating(*args, **kwargs):
    return Gating(*args, **kwargs)

TOL = dict(rtol=1e-9, atol=1e-9)


def phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def reference_gating(clean, std, noise, k, mask):
    """Per-token loops, Python floats.  std/noise None = noise-free gating."""
    b, n, e = clean.shape
    gates = [[[0.0] * e for _ in range(n)] for _ in range(b)]
    importance = [0.0] * e
    load = [0.0] * e
    for bi in range(b):
        for t in range(n):
            if not bool(mask[bi, t]):
                continue
            c = [float(v) for v in clean[bi, t]]
            if std is None:
                noisy = c
            else:
                noisy = [c[i] + float(noise[bi, t, i]) * float(std[bi, t, i]) for i in range(e)]
            order = sorted(range(e), key=lambda i: noisy[i], reverse=True)
            kept = order[:k]
            top = max(noisy[i] for i in kept)
            denom = sum(math.exp(noisy[i] - top) for i in kept)
            for i in kept:
                gates[bi][t][i] = math.exp(noisy[i] - top) / denom
            for i in range(e):
                importance[i] += gates[bi][t][i]
            sorted_vals = [noisy[i] for i in order]
            for i in range(e):
                if std is None or k == e:
                    load[i] += 1.0 if gates[bi][t][i] > 0 else 0.0
                else:
                    threshold = sorted_vals[k] if i in kept else sorted_vals[k - 1]
                    load[i] += phi((c[i] - threshold) / float(std[bi, t, i]))
    dt = torch.float64
    return torch.tensor(gates, dtype=dt), torch.tensor(importance, dtype=dt), torch.tensor(load, dtype=dt)


def random_inputs(b=3, n=5, e=4, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, n, e, generator=g, dtype=torch.float64)
    std = torch.nn.functional.softplus(torch.randn(b, n, e, generator=g, dtype=torch.float64)) + 0.1
    noise = torch.randn(b, n, e, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    if pad:
        mask[0, 3:] = False
        mask[2, 1] = False  # a hole, not only a padded tail
    return clean, std, noise, mask


@pytest.mark.parametrize("e,k", [(4, 1), (4, 2), (4, 3), (3, 2), (4, 4)])
def test_matches_loop_reference_noisy(e, k):
    clean, std, noise, mask = random_inputs(e=e, seed=e * 10 + k)
    out = gating(clean, std, k, mask, noise=noise)
    g_ref, imp_ref, load_ref = reference_gating(clean, std, noise, k, mask)
    torch.testing.assert_close(out.gates, g_ref, **TOL)
    torch.testing.assert_close(out.importance, imp_ref, **TOL)
    torch.testing.assert_close(out.load, load_ref, **TOL)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_matches_loop_reference_noise_free(k):
    clean, _, _, mask = random_inputs(seed=k)
    out = gating(clean, None, k, mask)
    g_ref, imp_ref, load_ref = reference_gating(clean, None, None, k, mask)
    torch.testing.assert_close(out.gates, g_ref, **TOL)
    torch.testing.assert_close(out.importance, imp_ref, **TOL)
    torch.testing.assert_close(out.load, load_ref, **TOL)


def test_softmax_after_keep_top_k():
    clean = torch.tensor([[[3.0, 1.0, 0.0, -2.0]]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    gates = gating(clean, None, 2, mask).gates[0, 0]
    expected = torch.softmax(torch.tensor([3.0, 1.0], dtype=torch.float64), 0)
    torch.testing.assert_close(gates[:2], expected, **TOL)
    assert gates[2:].eq(0).all() and math.isclose(gates.sum().item(), 1.0)


def test_k_equals_e_load_is_real_token_count():
    """With k = e every expert stays in the top k whatever the noise: the load is the number of real
    tokens, a constant that passes no gradient (while the importance, from the same inputs, does)."""
    clean, std, noise, mask = random_inputs(e=3)
    clean.requires_grad_(True)
    std.requires_grad_(True)
    out = gating(clean, std, 3, mask, noise=noise)
    assert torch.equal(out.load.detach(), torch.full((3,), float(mask.sum()), dtype=torch.float64))
    assert out.importance.requires_grad and not out.load.requires_grad
    shifted = gating(clean.detach() * 5 + 1, std.detach() * 3, 3, mask, noise=noise)
    assert torch.equal(shifted.load, out.load.detach())


@pytest.mark.parametrize("noisy", [True, False])
def test_padding_never_matters(noisy):
    clean, std, noise, mask = random_inputs(seed=7)
    garbage = clean.clone()
    garbage[~mask] = torch.tensor([1e30, float("nan"), -float("inf"), 5.0], dtype=torch.float64)
    std_g = std.clone()
    std_g[~mask] = float("nan")
    noise_g = noise.clone()
    noise_g[~mask] = 1e6
    k = 2
    a = gating(garbage, std_g if noisy else None, k, mask, noise=noise_g if noisy else None)
    # Same real tokens with the padding removed: one row of all-real tokens.
    t = gating(clean[mask][None], std[mask][None] if noisy else None, k,
                           torch.ones(1, int(mask.sum()), dtype=torch.bool),
                           noise=noise[mask][None] if noisy else None)
    torch.testing.assert_close(a.gates[mask], t.gates[0], **TOL)
    assert a.gates[~mask].eq(0).all()
    torch.testing.assert_close(a.importance, t.importance, **TOL)
    torch.testing.assert_close(a.load, t.load, **TOL)


def test_padding_gets_no_gradient_and_no_nan():
    clean, std, noise, mask = random_inputs(seed=3)
    clean[~mask] = float("nan")
    clean.requires_grad_(True)
    std.requires_grad_(True)
    out = gating(clean, std, 2, mask, noise=noise)
    balance_loss(out.importance, out.load, 1.0, 1e-10).backward()
    assert torch.isfinite(clean.grad).all() and torch.isfinite(std.grad).all()
    assert clean.grad[~mask].eq(0).all() and std.grad[~mask].eq(0).all()


def test_load_gradients_flow_into_clean_logits_and_noise_std():
    clean, std, noise, mask = random_inputs(seed=11)
    clean.requires_grad_(True)
    std.requires_grad_(True)
    out = gating(clean, std, 2, mask, noise=noise)
    w = torch.arange(1.0, 5.0, dtype=torch.float64)
    (out.load * w).sum().backward()
    assert clean.grad.abs().sum() > 0 and std.grad.abs().sum() > 0
    # Analytic gradient of the load (piecewise smooth; fixed ordering under tiny perturbations).
    f = lambda c, s: gating(c, s, 2, mask, noise=noise).load
    assert torch.autograd.gradcheck(f, (clean.detach().requires_grad_(), std.detach().requires_grad_()))


def test_cv_squared_by_hand_unbiased():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    eps = 1e-10
    # mean 3, unbiased variance (4 + 1 + 0 + 9) / 3
    assert math.isclose(cv_squared(x, eps).item(), (14.0 / 3.0) / (9.0 + eps), rel_tol=1e-12)
    y = torch.tensor([2.0, 2.0, 5.0, 3.0], dtype=torch.float64)  # mean 3, var (1 + 1 + 4 + 0) / 3 = 2
    assert math.isclose(balance_loss(x, y, 0.01, eps).item(),
                        0.01 * ((14.0 / 3.0) / (9.0 + eps) + 2.0 / (9.0 + eps)), rel_tol=1e-12)
    assert cv_squared(torch.tensor([4.0]), eps).item() == 0.0
    assert cv_squared(torch.zeros(3), eps).item() == 0.0


def test_selected_experts_are_the_top_k_noisy_logits():
    clean, std, noise, mask = random_inputs(e=4, seed=5)
    out = noisy_top_k_gating(clean, std, 2, mask, noise=noise)
    noisy = clean + noise * std
    for bi, t in mask.nonzero().tolist():
        order = sorted(range(4), key=lambda i: float(noisy[bi, t, i]), reverse=True)
        assert out.selected[bi, t].tolist() == order[:2]
    torch.testing.assert_close(out.noisy_logits[mask], noisy[mask], **TOL)


def test_errors():
    clean, std, noise, mask = random_inputs()
    with pytest.raises(ValueError):
        noisy_top_k_gating(clean, std, 5, mask)
    with pytest.raises(ValueError):
        noisy_top_k_gating(clean, std, 2, mask.long())
    with pytest.raises(ValueError):
        noisy_top_k_gating(clean, None, 2, mask, noise=noise)
