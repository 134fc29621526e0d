"""Sparse expert dispatch of the MoE refiner (eq. 4-5): each real token runs only its top-k experts.

Checked against a dense reference written here (every expert on every token, weighted by the gates
and summed), for outputs and gradients; padded tokens reach no expert; the expert arithmetic is
k/e of the dense one (counted FLOPs)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from khar_mmsa.config import KHaRConfig
from khar_mmsa.model.refine import MixtureOfExperts

B, N, F_IN, D, E, H = 3, 7, 12, 10, 4, 16
TOL = dict(rtol=1e-5, atol=1e-6)


def moe(k=2, noisy=True, seed=0, dispatch="sparse", routing="token"):
    cfg = KHaRConfig(num_experts=E, top_k=k, expert_hidden_dim=H, dropout=0.0, moe_noisy_gating=noisy,
                     moe_dispatch=dispatch, routing=routing)
    torch.manual_seed(seed)
    layer = MixtureOfExperts(F_IN, D, cfg)
    with torch.no_grad():  # the gates start at zero (every token would tie); give them a spread
        layer.w_gate.weight.normal_(0.0, 1.0)
        layer.w_noise.weight.normal_(0.0, 0.5)
    return layer


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, F_IN, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2] = False  # a hole, not only a padded tail
    return x, mask


def dense_reference(layer, x, gates):
    """X^ = sum_i G_i(X) E_i(X) with every expert run on every token (the eq. 5 sum written out)."""
    return sum(gates[..., i:i + 1] * expert(x) for i, expert in enumerate(layer.experts))


@pytest.mark.parametrize("k", [1, 2, 3, E])
@pytest.mark.parametrize("training", [True, False])
def test_equals_dense_computation(k, training):
    layer = moe(k=k).train(training)
    x, mask = inputs()
    torch.manual_seed(2)
    out, gate, counts = layer(x, mask)
    if training:
        assert gate.noise_std is not None  # the noisy path was taken
    torch.testing.assert_close(out, dense_reference(layer, x, gate.gates), **TOL)
    assert out[~mask].eq(0).all()
    # tokens per expert: the real tokens whose top-k holds the expert
    routed = torch.zeros(B, N, E, dtype=torch.bool).scatter_(-1, gate.selected, True) & mask[..., None]
    assert torch.equal(counts, routed.sum((0, 1)))
    assert int(counts.sum()) == k * int(mask.sum())


def test_each_expert_sees_exactly_its_routed_real_tokens():
    layer = moe(k=2).eval()
    x, mask = inputs()
    x[~mask] = 1e4  # a padded token would stand out
    seen = {}
    for i, expert in enumerate(layer.experts):
        expert.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].clone()))
    _, gate, _ = layer(x, mask)
    assert seen  # at least one expert ran
    for i in range(E):
        routed = (gate.selected == i).any(-1) & mask                     # (b, n)
        expected = x[routed]                                              # row-major token order
        got = seen.get(i, x.new_zeros(0, F_IN))
        assert got.shape == expected.shape, i
        assert torch.equal(got[torch.argsort(got[:, 0])], expected[torch.argsort(expected[:, 0])]), i
        assert (got.abs() < 1e3).all()  # no padded token


def test_gradients_equal_dense_and_reach_the_chosen_experts_only():
    layer = moe(k=2, noisy=False).train()
    with torch.no_grad():  # expert 3 is never in any token's top 2: its logit is far below the others
        layer.w_gate.weight[3] = 0.0
    x, mask = inputs()
    x = x.abs()
    with torch.no_grad():
        layer.w_gate.weight[:3] = layer.w_gate.weight[:3].abs()
    weights = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3))

    out, gate, counts = layer(x, mask)
    assert counts[3] == 0 and (counts[:3] > 0).all()
    (out * weights).sum().backward()
    sparse = {n: None if p.grad is None else p.grad.clone() for n, p in layer.named_parameters()}
    assert all(sparse[n] is None for n in sparse if n.startswith("experts.3."))
    assert all(sparse[n].abs().sum() > 0 for n in sparse if n.startswith(("experts.0.", "experts.1.", "experts.2.")))

    layer.zero_grad(set_to_none=True)
    gate_dense = layer.w_gate(x)
    from khar_mmsa.model.gating import noisy_top_k_gating
    dense = dense_reference(layer, x, noisy_top_k_gating(gate_dense, None, 2, mask).gates)
    (dense * weights).sum().backward()
    for n, p in layer.named_parameters():
        if n.startswith("experts.3."):
            assert p.grad.abs().max() == 0  # dense: in the graph, but weighted by a zero gate
        else:
            torch.testing.assert_close(sparse[n], p.grad, **TOL)


def test_one_token_backward_touches_only_its_experts():
    layer = moe(k=2).eval()
    x, mask = inputs()
    out, gate, _ = layer(x, mask)
    out[1, 3].sum().backward()
    chosen = set(gate.selected[1, 3].tolist())
    for i, expert in enumerate(layer.experts):
        grad = expert[0].weight.grad
        if i in chosen:
            assert grad is not None and grad.abs().sum() > 0, i
        else:
            assert grad is None or grad.abs().max() == 0, i


@pytest.mark.parametrize("k", [1, 2])
def test_expert_arithmetic_is_k_of_e(k):
    """Evaluation forward FLOPs: the gate on every token, the experts on k slots per real token."""
    layer = moe(k=k).eval()
    x, mask = inputs()
    with FlopCounterMode(display=False) as counter:
        layer(x, mask)
    real = int(mask.sum())
    gate = 2 * B * N * F_IN * E
    per_expert_token = 2 * (F_IN * H + H * D)
    assert counter.get_total_flops() == gate + k * real * per_expert_token


@pytest.mark.parametrize("routing", ["token", "sample"])
@pytest.mark.parametrize("training", [True, False])
def test_dense_dispatch_gives_the_sparse_outputs_counts_and_gradients(routing, training):
    """moe_dispatch='dense' (every expert on every token, weighted by the gates) against the sparse
    layer with the same weights and the same noise draws: outputs, token counts and gradients."""
    results = {}
    for dispatch in ("sparse", "dense"):
        layer = moe(k=2, dispatch=dispatch, routing=routing).train(training)
        x, mask = inputs()
        x.requires_grad_(True)
        torch.manual_seed(2)
        out, gate, counts = layer(x, mask)
        (out * torch.linspace(-1, 1, D)).sum().backward()
        results[dispatch] = (out, counts, x.grad, [p.grad for p in layer.parameters()])
        assert out[~mask].eq(0).all()
    (out_s, counts_s, gx_s, gp_s), (out_d, counts_d, gx_d, gp_d) = results["sparse"], results["dense"]
    torch.testing.assert_close(out_d, out_s, **TOL)
    assert torch.equal(counts_d, counts_s)
    torch.testing.assert_close(gx_d, gx_s, **TOL)
    for a, b in zip(gp_d, gp_s):  # None: not in the graph (w_noise in eval; an expert no token chose, sparse)
        if a is None or b is None:
            assert all(g is None or g.eq(0).all() for g in (a, b))
        else:
            torch.testing.assert_close(a, b, **TOL)



@pytest.mark.parametrize("routing", ["token", "sample"])
@pytest.mark.parametrize("training", [True, False])
def test_nan_in_padding_reaches_neither_dispatch_nor_the_pooled_vector(routing, training):
    """A NaN (or inf) at a padded position -- what an encoder may leave where every key is masked --
    is invisible: dense equals sparse, outputs, the masked mean over real positions and every
    gradient stay finite."""
    from khar_mmsa.model.harvest import masked_mean
    results = {}
    for dispatch in ("sparse", "dense"):
        layer = moe(k=2, dispatch=dispatch, routing=routing).train(training)
        x, mask = inputs()
        x = x.masked_fill(~mask.unsqueeze(-1), float("nan"))
        x[0, 5, 0] = float("inf")
        x.requires_grad_(True)
        torch.manual_seed(2)
        out, _, counts = layer(x, mask)
        pooled = masked_mean(out, mask)
        (pooled * torch.linspace(-1, 1, D)).sum().backward()
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        assert torch.isfinite(pooled).all() and torch.isfinite(out[mask]).all()
        assert all(torch.isfinite(g).all() for g in grads) and torch.isfinite(x.grad).all()
        results[dispatch] = (out[mask], pooled, counts, x.grad)
    for a, b in zip(results["dense"], results["sparse"]):
        torch.testing.assert_close(a, b, **TOL)
