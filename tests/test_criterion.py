"""KHaRCriterion (eq. 22) through the real model against independent references: every term (task and
MIB L1, KL with its reduction, MoE balance from the router's raw outputs, the normalise -> contrastive
path on float32 grid labels) and the total; fp32 terms from a bf16 forward; the terms each Table 3 row
keeps; and equal L1 supervision for every Table 3 variant."""
import math
import statistics
from fractions import Fraction

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from khar_mmsa.losses import criterion as criterion_module
from khar_mmsa.losses.criterion import TERMS, KHaRCriterion, active_terms
from khar_mmsa.model.fusion import FusionOutput
from khar_mmsa.model.khar import KHaR
from khar_mmsa.model.text_encoders import make_tiny_bert
from test_contrastive import reference_loss
from test_gating import reference_gating
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


def reference_balance(gate, k, eps):
    """CV^2(importance) + CV^2(load) of one modality (eq. 6 without omega), by loops over the tokens
    (tests/test_gating.py's reference) and the textbook unbiased variance."""
    clean, noisy, std = (t.detach().double() for t in (gate.clean_logits, gate.noisy_logits, gate.noise_std))
    noise = (noisy - clean) / std  # the draw the router used
    gates, importance, load = reference_gating(clean, std, noise, k, gate.mask)
    torch.testing.assert_close(gate.gates.detach().double(), gates, rtol=1e-5, atol=1e-6)
    cv2 = lambda x: statistics.variance(x.tolist()) / (statistics.fmean(x.tolist()) ** 2 + eps)
    return cv2(importance) + cv2(load)


@pytest.mark.parametrize("scale", ["raw", "unit"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_every_term_matches_an_independent_reference(bert4, scale, reduction):
    cfg = small_cfg(bert4, contrastive_weight=0.05, mib_beta=0.01, moe_balance_weight=0.1,
                    contrastive_label_scale=scale, mib_kl_reduction=reduction, contrastive_temperature=0.2)
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    seen = capture_posterior(model)
    text, audio, vision, al, vl, _ = batch()
    y32, exact = mosi_grid_labels(seed=1)
    out = model(text, audio, vision, al, vl)
    total, raw, weighted = KHaRCriterion(cfg)(out, y32)

    y = y32.double()
    d = lambda t: t.detach().double()
    sigma = F.softplus(d(seen["sigma_pre"]) + cfg.mib_sigma_offset)
    kl = kl_divergence(Normal(d(seen["mu"]), sigma), Normal(0.0, 1.0))            # (b, z) per dimension
    kl = kl.sum(-1) if reduction == "sum" else kl.sum(-1) / cfg.latent_dim
    unit = 3 if scale == "unit" else 1                                            # MOSI: max |y| = 3
    feats = torch.stack([d(v) / d(v).norm(dim=-1, keepdim=True) for v in out["unimodal"].values()], dim=1)
    reference = {
        "task": (d(out["M"]) - y).abs().mean().item(),                             # |y - D(mu)|
        "mib_nll": (d(out["M_sampled"]) - y).abs().mean().item(),                  # eq. 25: |y - D(z)|
        "mib_kl": kl.mean().item(),                                                # eq. 27, mean over the batch
        "moe_balance": sum(reference_balance(out["routing"][m], cfg.top_k, cfg.cv_eps) for m in "tav"),  # eq. 6
        "contrastive": reference_loss(feats, torch.tensor([float(v) for v in exact], dtype=torch.float64) / unit,
                                      Fraction("0.4"), cfg.contrastive_temperature),  # eq. 21
    }
    weights = {"task": 1.0, "mib_nll": 1.0, "mib_kl": cfg.mib_beta, "moe_balance": cfg.moe_balance_weight,
               "contrastive": cfg.contrastive_weight}                              # eq. 22 with eq. 12 and 6
    assert set(raw) == set(weighted) == set(TERMS)
    for term, value in reference.items():
        assert value > 0, term
        assert raw[term].dtype == torch.float32, term
        assert math.isclose(raw[term].item(), value, rel_tol=1e-5), (term, raw[term].item(), value)
        assert math.isclose(weighted[term].item(), weights[term] * value, rel_tol=1e-5), term
    assert math.isclose(total.item(), sum(weights[t] * v for t, v in reference.items()), rel_tol=1e-5)


def test_terms_are_float32_with_autocast_off_for_a_bf16_forward(bert4):
    """amp: a bf16 forward's outputs give the terms the same outputs in float32 give, exactly, even when
    the criterion is called inside an autocast region (which would run the contrastive einsum in bf16)."""
    cfg = small_cfg(bert4, contrastive_weight=0.5, moe_balance_weight=0.1, mib_beta=0.01)
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    text, audio, vision, al, vl, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(text, audio, vision, al, vl)
    assert out["mu"].dtype == torch.bfloat16 and out["routing"]["a"].clean_logits.dtype == torch.bfloat16
    criterion = KHaRCriterion(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, raw, _ = criterion(out, y)
    as_fp32 = {k: v for k, v in out.items()}
    as_fp32.update(M=out["M"].float(), M_sampled=out["M_sampled"].float(), mu=out["mu"].float(),
                   sigma=out["sigma"].float(), unimodal={m: v.float() for m, v in out["unimodal"].items()},
                   routing={m: g._replace(gates=g.gates.float(), clean_logits=g.clean_logits.float(),
                                          noisy_logits=g.noisy_logits.float(), noise_std=g.noise_std.float())
                            for m, g in out["routing"].items()})
    expected_total, expected, _ = criterion(as_fp32, y)
    assert total.dtype == torch.float32
    for term in TERMS:
        assert raw[term].dtype == torch.float32, term
        assert torch.equal(raw[term], expected[term]), term
    assert torch.equal(total, expected_total)
    total.backward()  # the gradient flows back through the casts into the bf16 forward
    assert model.fusion.mu.weight.grad is not None


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
        return FusionOutput(pred=pred, pred_sampled=sampled, fused=out.fused, mu=out.mu, sigma=out.sigma)

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
    assert plain["routing"] == {}
    assert KHaRCriterion(small_cfg(bert4, **switch)).raw_terms(plain, y)["moe_balance"] == 0  # no gates
    for mods in ("tav", "ta"):
        cfg = small_cfg(bert4, modalities=mods, moe_balance_weight=0.3)
        out = KHaR(cfg).train()(text, audio, vision, al, vl)
        assert set(out["routing"]) == set(mods)
        criterion = KHaRCriterion(cfg)
        each = [criterion.raw_terms(dict(out, routing={m: out["routing"][m]}), y)["moe_balance"] for m in mods]
        assert all(v > 0 for v in each)
        torch.testing.assert_close(criterion.raw_terms(out, y)["moe_balance"], sum(each))


# The terms each Table 3 row keeps, written out (eq. 22; see the criterion's module docstring).
EXPECTED_TERMS = {
    "{}": {"task", "mib_nll", "mib_kl", "moe_balance", "contrastive"},
    "{'modalities': 'ta'}": {"task", "mib_nll", "mib_kl", "moe_balance", "contrastive"},
    "{'modalities': 'tv'}": {"task", "mib_nll", "mib_kl", "moe_balance", "contrastive"},
    "{'modalities': 'av'}": {"task", "mib_nll", "mib_kl", "moe_balance", "contrastive"},
    "{'refiner': 'mlp'}": {"task", "mib_nll", "mib_kl", "contrastive"},
    "{'refiner': 'attention'}": {"task", "mib_nll", "mib_kl", "contrastive"},
    "{'refiner': 'cnn'}": {"task", "mib_nll", "mib_kl", "contrastive"},
    "{'contrastive_weight': 0.0}": {"task", "mib_nll", "mib_kl", "moe_balance"},
    "{'fusion': 'sum'}": {"task", "moe_balance", "contrastive"},
    "{'fusion': 'concat'}": {"task", "moe_balance", "contrastive"},
    "{'fusion': 'attention'}": {"task", "moe_balance", "contrastive"},
    "{'fusion': 'mul'}": {"task", "moe_balance", "contrastive"},
}


@pytest.mark.parametrize("switch", TABLE3_SWITCHES, ids=str)
def test_each_table3_row_names_the_terms_it_keeps_and_computes_only_those(bert4, switch, monkeypatch):
    cfg = small_cfg(bert4, **switch)
    assert set(active_terms(cfg)) == EXPECTED_TERMS[str(switch)]
    criterion = KHaRCriterion(cfg)
    assert criterion.active == active_terms(cfg)
    calls = []
    for name in ("gaussian_kl_to_standard_normal", "importance_and_load", "intensity_contrastive_loss"):
        real = getattr(criterion_module, name)
        monkeypatch.setattr(criterion_module, name,
                            lambda *a, _name=name, _real=real, **kw: calls.append(_name) or _real(*a, **kw))
    torch.manual_seed(0)
    out = KHaR(cfg).train()(*batch()[:5])
    total, raw, weighted = criterion(out, batch()[5])
    for term in TERMS:
        if term in EXPECTED_TERMS[str(switch)]:
            assert raw[term] > 0, term
        else:
            assert raw[term] == 0 and weighted[term] == 0 and criterion.weights[term] == 0, term
    computed = {"gaussian_kl_to_standard_normal": "mib_kl", "importance_and_load": "moe_balance",
                "intensity_contrastive_loss": "contrastive"}
    assert {computed[c] for c in calls} == EXPECTED_TERMS[str(switch)] & set(computed.values())
    assert math.isclose(total.item(), sum(v.item() for v in weighted.values()), rel_tol=1e-6)
