"""The KHaR network: shapes, padding, adapters, refiners/fusions and the weighted criterion."""
import pytest
import torch

from khar_mmsa.config import KHaRConfig
from khar_mmsa.criterion import KHaRCriterion
from khar_mmsa.model.adapter import AdapterBlock
from khar_mmsa.model.khar import KHaR
from khar_mmsa.text_encoders import make_tiny_bert

B, NT, NA, NV = 6, 10, 14, 18
pytestmark = pytest.mark.usefixtures("fast_mmsa")  # one torch thread: tiny models run faster


@pytest.fixture(scope="module")
def bert4(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("bert4"), num_layers=4))


def small_cfg(pretrained, **kw):
    base = dict(pretrained=pretrained, feature_dims=[32, 5, 20], seq_lens=[NT, NA, NV], modal_dim=16,
                encoder_layers=2, encoder_heads=4, encoder_ff_dim=16, adapter_heads=2, expert_hidden_dim=16,
                fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8, batch_size=B)
    base.update(kw)
    return KHaRConfig(**base)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, NT), generator=g)
    tmask = torch.ones(B, NT)
    t_len = torch.randint(2, NT + 1, (B,), generator=g)
    for i, n in enumerate(t_len):
        tmask[i, n:] = 0
        ids[i, n:] = 0
    text = torch.stack([ids.float(), tmask, torch.zeros(B, NT)], 1)
    a_len = torch.randint(1, NA + 1, (B,), generator=g)
    v_len = torch.randint(1, NV + 1, (B,), generator=g)
    audio = torch.randn(B, NA, 5, generator=g)
    vision = torch.randn(B, NV, 20, generator=g)
    labels = torch.rand(B, 1, generator=g) * 6 - 3
    return text, audio, vision, a_len, v_len, labels


def test_forward_shapes_and_named_outputs(bert4):
    model = KHaR(small_cfg(bert4))
    text, audio, vision, al, vl, _ = batch()
    out = model(text, audio, vision, al, vl)
    assert out["M"].shape == (B, 1) and out["M_sampled"].shape == (B, 1)
    assert out["kl"].shape == (B,)
    assert set(out["unimodal"]) == {"t", "a", "v"} and all(v.shape == (B, 8) for v in out["unimodal"].values())
    assert set(out["balance"]) == {"t", "a", "v"}
    assert out["fused"].shape == (B, 8)


def test_padding_never_changes_an_output(bert4):
    """Garbage after the lengths (audio, vision) and after the attention mask (text) is ignored."""
    torch.manual_seed(0)
    model = KHaR(small_cfg(bert4)).eval()
    text, audio, vision, al, vl, _ = batch()
    ref = model(text, audio, vision, al, vl)
    audio2, vision2, text2 = audio.clone(), vision.clone(), text.clone()
    for i in range(B):
        audio2[i, al[i]:] = 1e3
        vision2[i, vl[i]:] = -7.0
        n = int(text[i, 1].sum())
        text2[i, 0, n:] = 17.0  # a real token id in the padded part, masked out
    out = model(text2, audio2, vision2, al, vl)
    torch.testing.assert_close(out["M"], ref["M"], rtol=0, atol=1e-5)
    # and the same sample alone, cut to its own lengths, gives the same prediction
    i = 0
    single = model(text[i:i + 1], audio[i:i + 1, :al[i]], vision[i:i + 1, :vl[i]], al[i:i + 1], vl[i:i + 1])
    torch.testing.assert_close(single["M"], ref["M"][i:i + 1], rtol=0, atol=1e-5)


def test_adapter_is_identity_at_step_zero():
    block = AdapterBlock(16, heads=2, inner_layers=2, dropout=0.0)
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    torch.testing.assert_close(block(x, mask), x)


@pytest.mark.parametrize("layers,expected", [(4, [0, 1, 2, 2, 3]), (6, [0, 1, 2, 4, 5]), (12, [0, 3, 6, 8, 11])])
def test_text_adapter_layers_follow_encoder_depth(tmp_path, layers, expected):
    folder = make_tiny_bert(tmp_path / f"bert{layers}", num_layers=layers, hidden_size=16)
    model = KHaR(small_cfg(str(folder)))
    assert model.harvesters["t"].adapters.layers == expected
    text, audio, vision, al, vl, _ = batch()
    assert torch.isfinite(model(text, audio, vision, al, vl)["M"]).all()


def test_explicit_adapter_layers_are_checked(bert4):
    with pytest.raises(ValueError, match="do not fit"):
        KHaR(small_cfg(bert4, adapter_layers_text=[0, 1, 2, 3, 9]))


@pytest.mark.parametrize("override", [
    {"modalities": "ta"}, {"modalities": "tv"}, {"modalities": "av"},
    {"refiner": "mlp"}, {"refiner": "attention"}, {"refiner": "cnn"},
    {"fusion": "sum"}, {"fusion": "concat"}, {"fusion": "attention"}, {"fusion": "mul"},
    {"contrastive_weight": 0.0},
])
def test_table3_ablation_switches_run_and_train(bert4, override):
    cfg = small_cfg(bert4, **override)
    model = KHaR(cfg)
    text, audio, vision, al, vl, y = batch()
    out = model(text, audio, vision, al, vl)
    assert set(out["unimodal"]) == set(cfg.modalities)
    total, raw, _ = KHaRCriterion(cfg)(out, y)
    total.backward()
    assert torch.isfinite(total)
    if cfg.fusion != "mib":
        assert out["kl"] is None and raw["mib_kl"] == 0
    if cfg.refiner != "moe":
        assert raw["moe_balance"] == 0


def test_cnn_refiner_ignores_padding(bert4):
    model = KHaR(small_cfg(bert4, refiner="cnn")).eval()
    text, audio, vision, al, vl, _ = batch()
    ref = model(text, audio, vision, al, vl)["M"]
    audio2 = audio.clone()
    for i in range(B):
        audio2[i, al[i]:] = 50.0
    torch.testing.assert_close(model(text, audio2, vision, al, vl)["M"], ref, rtol=0, atol=1e-5)


def test_criterion_weights_each_raw_term_once(bert4):
    cfg = small_cfg(bert4, contrastive_weight=0.05, mib_beta=0.01, moe_balance_weight=0.1)
    model = KHaR(cfg)
    text, audio, vision, al, vl, y = batch()
    out = model(text, audio, vision, al, vl)
    total, raw, weighted = KHaRCriterion(cfg)(out, y)
    expected = {"task": 1.0, "mib_nll": 1.0, "mib_kl": 0.01, "moe_balance": 0.1, "contrastive": 0.05}
    assert set(raw) == set(expected)
    for k, w in expected.items():
        torch.testing.assert_close(weighted[k], w * raw[k])
    torch.testing.assert_close(total, sum(weighted.values()))
    torch.testing.assert_close(raw["task"], (out["M"] - y).abs().mean())
    torch.testing.assert_close(raw["mib_kl"], out["kl"].mean())
    torch.testing.assert_close(raw["moe_balance"], sum(out["balance"].values()))


def test_evaluation_is_deterministic_and_uses_posterior_mean(bert4):
    model = KHaR(small_cfg(bert4)).eval()
    text, audio, vision, al, vl, _ = batch()
    a = model(text, audio, vision, al, vl)
    b = model(text, audio, vision, al, vl)
    torch.testing.assert_close(a["M"], b["M"])
    torch.testing.assert_close(a["M_sampled"], a["M"])
