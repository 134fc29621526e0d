"""KHaRCriterion (eq. 22) through the real model against independent references: the total loss,
the normalise -> contrastive path on float32 grid labels, the KL reduction, and equal L1 supervision
for every Table 3 variant."""
import math
from fractions import Fraction

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from khar_mmsa.losses.criterion import KHaRCriterion
from khar_mmsa.model.fusion import FusionOutput
from khar_mmsa.model.khar import KHaR
from khar_mmsa.model.text_encoders import make_tiny_bert
from test_contrastive import reference_loss
from test_model import B, batch, small_cfg

pytestmark = pytest.mark.usefixtures("fast_mmsa")

TABLE3_SWITCHES = [{}, {"modalities": "ta"}, {"modalities": "tv"}, {"modalities": "av"},
                   {"refiner": "mlp"}, {"refiner": "attention"}, {"refiner": "cnn"}, {"contrastive_weight": 0.0},
                   {"fusion": "sum"}, {"fusion": "concat"}, {"fusion": "attention"}, {"fusion": "mul"}]


@pytest.fixture(scope="module")
def bert4(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("bert4"), num_layers=4))


def mosi_grid_labels(seed):
    """float32 labels k * 0.2 in [-3, 3] (MMSA's dtype), with their exact values as Fractions."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(-15, 16, (B,), generator=g)
    steps[1] = steps[0] + 2 if steps[0] <= 13 else steps[0] - 2  # at least one exact-kappa pair
    return (steps.double() / 5).float().view(B, 1), [Fraction(int(k), 5) for k in steps]


def capture_posterior(model):
    """Record the bottleneck's mu and sigma of the next forward (for an independent KL reference)."""
    seen = {}
    model.fusion.mu.register_forward_hook(lambda m, i, o: seen.__setitem__("mu", o))
    model.fusion.sigma.register_forward_hook(lambda m, i, o: seen.__setitem__("sigma_pre", o))
    return seen


@pytest.mark.parametrize("scale", ["raw", "unit"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_total_loss_matches_independent_reference(bert4, scale, reduction):
    cfg = small_cfg(bert4, contrastive_weight=0.05, mib_beta=0.01, moe_balance_weight=0.1,
                    contrastive_label_scale=scale, mib_kl_reduction=reduction, contrastive_temperature=0.2)
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    seen = capture_posterior(model)
    text, audio, vision, al, vl, _ = batch()
    y32, exact = mosi_grid_labels(seed=1)
    out = model(text, audio, vision, al, vl)
    total, raw, _ = KHaRCriterion(cfg)(out, y32)

    y = y32.double()
    d = lambda t: t.detach().double()
    sigma = F.softplus(d(seen["sigma_pre"]) + cfg.mib_sigma_offset)
    kl = kl_divergence(Normal(d(seen["mu"]), sigma), Normal(0.0, 1.0))            # (b, z) per dimension
    kl = kl.sum(-1) if reduction == "sum" else kl.sum(-1) / cfg.latent_dim
    unit = 3 if scale == "unit" else 1                                            # MOSI: max |y| = 3
    feats = torch.stack([d(v) / d(v).norm(dim=-1, keepdim=True) for v in out["unimodal"].values()], dim=1)
    contrastive = reference_loss(feats, torch.tensor([float(v) for v in exact], dtype=torch.float64) / unit,
                                 Fraction("0.4"), cfg.contrastive_temperature)
    # eq. 22 with eq. 12: L_task + (-log q(y|z)) + beta * KL + omega * sum_m balance_m + lambda * L_CL
    reference = ((d(out["M"]) - y).abs().mean() + (d(out["M_sampled"]) - y).abs().mean()
                 + cfg.mib_beta * kl.mean() + cfg.moe_balance_weight * sum(d(v) for v in out["balance"].values())
                 + cfg.contrastive_weight * contrastive)
    assert raw["moe_balance"] > 0 and raw["mib_kl"] > 0
    assert math.isclose(raw["contrastive"].item(), contrastive, rel_tol=1e-5)
    assert math.isclose(total.item(), reference.item(), rel_tol=1e-5)


def test_unit_scale_moves_kappa_to_the_unit_labels(bert4):
    """'raw' and 'unit' give different pair sets on MOSI labels (kappa 0.4 = 1.2 raw on the unit scale)."""
    torch.manual_seed(0)
    out = KHaR(small_cfg(bert4)).eval()(*batch()[:5])
    y = torch.tensor([[0.0], [0.6], [1.2], [-1.2], [2.4], [3.0]])
    raw = KHaRCriterion(small_cfg(bert4, contrastive_label_scale="raw")).raw_terms(out, y)["contrastive"]
    unit = KHaRCriterion(small_cfg(bert4, contrastive_label_scale="unit")).raw_terms(out, y)["contrastive"]
    feats = torch.stack([F.normalize(v.double(), dim=-1) for v in out["unimodal"].values()], dim=1)
    exact = torch.tensor([0.0, 0.6, 1.2, -1.2, 2.4, 3.0], dtype=torch.float64)
    assert math.isclose(raw.item(), reference_loss(feats, exact, 0.4, 0.1), rel_tol=1e-5)
    assert math.isclose(unit.item(), reference_loss(feats, exact / 3, 0.4, 0.1), rel_tol=1e-5)


def l1_supervision_weight(cfg, seed=0):
    """Summed weight of the L1 terms on the fusion's prediction(s), measured through model + criterion:
    every prediction the fusion makes (D(mu) and D(z) with the bottleneck, one without) is shifted by
    the same delta; with every prediction below its label, d total / d delta = -(sum of L1 weights)."""
    torch.manual_seed(seed)
    model = KHaR(cfg).train()
    delta = torch.zeros((), requires_grad=True)

    def shift(module, inputs, out):
        pred = out.pred + delta
        sampled = pred if out.pred_sampled is out.pred else out.pred_sampled + delta
        return FusionOutput(pred=pred, pred_sampled=sampled, kl=out.kl, fused=out.fused)

    model.fusion.register_forward_hook(shift)
    text, audio, vision, al, vl, _ = batch()
    out = model(text, audio, vision, al, vl)
    labels = torch.full((B, 1), 1e3)  # far above every prediction: each L1 has slope -1 in delta
    total, _, _ = KHaRCriterion(cfg)(out, labels)
    (grad,) = torch.autograd.grad(total, delta)
    return -grad.item()


def test_every_table3_variant_gets_the_same_l1_supervision(bert4):
    weights = {str(s): l1_supervision_weight(small_cfg(bert4, **s)) for s in TABLE3_SWITCHES}
    # full KHaR: eq. 22's L_task on D(mu) plus eq. 12's -log q(y|z) = L1 on D(z), each with weight 1
    assert math.isclose(weights["{}"], 2.0, rel_tol=1e-6), weights
    for switch, w in weights.items():
        assert math.isclose(w, weights["{}"], rel_tol=1e-6), (switch, weights)


@pytest.mark.parametrize("switch", [{"refiner": "mlp"}, {"refiner": "attention"}, {"refiner": "cnn"}])
def test_non_moe_refiners_have_no_balance_loss_and_moe_has_one_per_modality(bert4, switch):
    torch.manual_seed(0)
    text, audio, vision, al, vl, y = batch()
    plain = KHaR(small_cfg(bert4, **switch)).train()(text, audio, vision, al, vl)
    assert KHaRCriterion(small_cfg(bert4, **switch)).raw_terms(plain, y)["moe_balance"] == 0  # no gates
    for mods in ("tav", "ta"):
        cfg = small_cfg(bert4, modalities=mods, moe_balance_weight=0.3)
        out = KHaR(cfg).train()(text, audio, vision, al, vl)
        assert set(out["balance"]) == set(mods) and all(v > 0 for v in out["balance"].values())
