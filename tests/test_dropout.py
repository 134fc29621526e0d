"""The CPU dropout: nn.Dropout's contract (rate, scale, mask in backward, eval identity, seeding)."""
import pytest
import torch

from khar_mmsa.model.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drop_rate_and_unbiased_scale(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1001)  # odd size: the 64-bit draws are cut to the tensor
    y = Dropout(p).train()(x)
    kept = y != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5   # 4 sigma
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4, atol=0)
    assert abs(y.mean().item() - 1.0) < 4 * ((p / (1 - p)) / n) ** 0.5


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(1)
    x = torch.randn(7, 33, requires_grad=True)
    y = Dropout(0.3).train()(x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7, rtol=1e-4, atol=0)


def test_eval_mode_is_identity_and_the_global_seed_decides_the_mask():
    x = torch.randn(5, 64)
    assert torch.equal(Dropout(0.2).eval()(x), x)
    torch.manual_seed(3)
    a = Dropout(0.2).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.2).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, Dropout(0.2).train()(x))
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_masks_are_independent_across_positions():
    """Neighbouring elements (same 64-bit draw) are dropped independently."""
    torch.manual_seed(4)
    keep = (Dropout(0.5).train()(torch.ones(200_000)) != 0).float().view(-1, 4)
    corr = torch.corrcoef(keep.T)
    off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.02
