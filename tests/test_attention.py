"""Fused-attention encoder layers against nn.TransformerEncoderLayer as an independent reference."""
import pytest
import torch
from torch import nn

from khar_mmsa.model.adapter import AdapterBlock
from khar_mmsa.model.attention import FusedEncoderLayer, key_padding_mask
from khar_mmsa.model.encoders import SequenceEncoder, lengths_to_mask

pytestmark = pytest.mark.usefixtures("fast_mmsa")
B, N, D, H, FF = 5, 13, 16, 4, 24


def reference_layer(dim=D, heads=H, ff=FF):
    return nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff, dropout=0.2, activation="gelu",
                                      batch_first=True)


def padded_batch(seed=0, lengths=(13, 1, 7, 10, 4)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    return x, lengths_to_mask(torch.tensor(lengths), N)


def randomise(module, seed=1):
    """Non-trivial values everywhere (zero biases / unit norms would hide a swapped parameter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == D else 0.0))
    return module


def test_state_dict_layout_is_nn_transformer_encoder_layer():
    fused, ref = FusedEncoderLayer(D, H, FF, 0.2), reference_layer()
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("grad", [True, False])  # no_grad lets the reference take its own fast path
def test_layer_matches_reference_in_eval_mode(grad):
    ref = randomise(reference_layer()).eval()
    fused = FusedEncoderLayer(D, H, FF, 0.2).eval()
    fused.load_state_dict(ref.state_dict())
    x, mask = padded_batch()
    with torch.set_grad_enabled(grad):
        want = ref(x, src_key_padding_mask=~mask)
        got = fused(x, key_padding_mask(mask))
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)
    assert torch.isfinite(got).all()  # padded query rows too


def test_padding_never_changes_a_real_output_and_empty_samples_stay_finite():
    layer = randomise(FusedEncoderLayer(D, H, FF, 0.0)).eval()
    x, mask = padded_batch()
    out = layer(x, key_padding_mask(mask))
    garbage = torch.where(mask[..., None], x, torch.full_like(x, 1e4))
    torch.testing.assert_close(layer(garbage, key_padding_mask(mask))[mask], out[mask], rtol=0, atol=1e-5)
    # each sample alone, cut to its length, gives the same real outputs
    for i, n in enumerate(mask.sum(1).tolist()):
        alone = layer(x[i:i + 1, :n], key_padding_mask(mask[i:i + 1, :n]))
        torch.testing.assert_close(alone[0], out[i, :n], rtol=0, atol=1e-5)
    empty = torch.zeros(2, N, dtype=torch.bool)
    empty[1, :3] = True
    assert torch.isfinite(layer(x[:2], key_padding_mask(empty))).all()
    # an empty sample attends to all positions (some kernels give NaN for a fully masked row)
    assert key_padding_mask(empty)[0].all() and key_padding_mask(empty)[1, 0, 0].tolist() == empty[1].tolist()


def test_sequence_encoder_matches_reference_stack():
    torch.manual_seed(0)
    enc = randomise(SequenceEncoder(in_dim=5, dim=D, layers=3, heads=H, ff_dim=FF, dropout=0.2, max_len=N)).eval()
    refs = [reference_layer() for _ in range(3)]
    for i, ref in enumerate(refs):
        ref.load_state_dict(enc.layers[i].state_dict())
        ref.eval()
    x = torch.randn(B, N, 5)
    _, mask = padded_batch()
    out = enc(x, mask)
    h = enc.proj(x) + enc.position[:, :N]
    for i, ref in enumerate(refs):
        torch.testing.assert_close(out.hidden[i][mask], h[mask], rtol=0, atol=1e-5)
        h = ref(h, src_key_padding_mask=~mask)
    torch.testing.assert_close(out.final[mask], h[mask], rtol=0, atol=1e-5)


def test_adapter_block_loads_a_reference_adapter_and_matches_it():
    """An adapter saved by the nn.TransformerEncoder implementation loads and gives the same outputs."""
    dim, heads = 2 * D, H

    class ReferenceAdapter(nn.Module):  # the pre-fused AdapterBlock, verbatim
        def __init__(self):
            super().__init__()
            self.down = nn.Linear(dim, dim // 2)
            layer = nn.TransformerEncoderLayer(dim // 2, heads, dim_feedforward=dim // 4, dropout=0.1,
                                               activation="gelu", batch_first=True)
            self.inner = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.up = nn.Linear(dim // 2, dim)

        def forward(self, x, mask):
            return x + self.up(self.inner(self.down(x), src_key_padding_mask=~mask))

    ref = ReferenceAdapter()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    ref.eval()
    block = AdapterBlock(dim, heads, inner_layers=2, dropout=0.1)
    block.load_state_dict(ref.state_dict())  # strict: same keys, same shapes
    block.eval()
    x = torch.randn(B, N, dim)
    _, mask = padded_batch()
    torch.testing.assert_close(block(x, mask)[mask], ref(x, mask)[mask], rtol=0, atol=1e-5)


def test_training_step_stays_on_the_fused_kernel():
    """With the padding mask and dropout on, forward and backward never take the unfused math path
    (which materialises b*h*n*n probabilities and dropout masks)."""
    layer = FusedEncoderLayer(D, H, FF, 0.2).train()
    x, mask = padded_batch()
    x.requires_grad_(True)
    with torch.profiler.profile() as prof:
        layer(x, key_padding_mask(mask)).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in ops
    assert any("flash_attention" in op or "efficient_attention" in op for op in ops), sorted(ops)


def test_training_gradients_match_the_reference_layer():
    """Without dropout, training-mode outputs and every gradient (input and parameters) are
    nn.TransformerEncoderLayer's: the packed q/k/v split and its backward are exact."""
    ref = randomise(reference_layer())
    ref.dropout, ref.dropout1, ref.dropout2, ref.self_attn.dropout = nn.Identity(), nn.Identity(), nn.Identity(), 0.0
    fused = FusedEncoderLayer(D, H, FF, 0.0)
    fused.load_state_dict(ref.state_dict())
    x, mask = padded_batch()
    weight = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3)) * mask[..., None]
    grads = []
    for layer, call in ((ref, lambda x: ref(x, src_key_padding_mask=~mask)),
                        (fused, lambda x: fused(x, key_padding_mask(mask)))):
        xi = x.clone().requires_grad_(True)
        (call(xi) * weight).sum().backward()
        grads.append([xi.grad] + [p.grad for _, p in sorted(layer.named_parameters())])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
