"""The switches for the choices the paper leaves open and for the parts benchmarks/walk.py removes.

Each switch is compared with an independent reference on a small batch, and each test fails when the
switch changes nothing (the two settings give the same outputs, loss terms or training behaviour).
Through ``MMSA_run``: tests/test_khar_mmsa_run.py.
"""
import pytest
import torch
from torch.nn import functional as F

from khar_mmsa.config import ConfigError, KHaRConfig
from khar_mmsa.losses.contrastive import intensity_contrastive_loss
from khar_mmsa.losses.criterion import KHaRCriterion
from khar_mmsa.model.harvest import masked_mean
from khar_mmsa.model.khar import KHaR
from khar_mmsa.model.refine import MixtureOfExperts
from khar_mmsa.model.text_encoders import make_tiny_bert

B, NT, NA, NV = 6, 10, 14, 18
pytestmark = pytest.mark.usefixtures("fast_mmsa")  # one torch thread: tiny models run faster


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("bert"), num_layers=2, hidden_size=16))


def cfg_of(pretrained, **kw):
    base = dict(pretrained=pretrained, feature_dims=[16, 5, 20], seq_lens=[NT, NA, NV], modal_dim=8,
                encoder_layers=1, encoder_heads=2, encoder_ff_dim=8, text_adapters=1, av_adapters=1,
                adapter_heads=2, adapter_inner_layers=1, expert_hidden_dim=8, fine_grained_dim=6,
                fusion_hidden_dim=8, latent_dim=4, batch_size=B)
    base.update(kw)
    return KHaRConfig(**base)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, NT), generator=g)
    tmask = torch.ones(B, NT)
    for i, n in enumerate(torch.randint(3, NT + 1, (B,), generator=g)):
        tmask[i, n:] = 0
        ids[i, n:] = 0
    text = torch.stack([ids.float(), tmask, torch.zeros(B, NT)], 1)
    al = torch.randint(2, NA + 1, (B,), generator=g)
    vl = torch.randint(2, NV + 1, (B,), generator=g)
    audio, vision = torch.randn(B, NA, 5, generator=g), torch.randn(B, NV, 20, generator=g)
    labels = torch.tensor([-2.5, -1.0, -0.8, 0.4, 1.6, 2.0]).view(B, 1)
    return text, audio, vision, al, vl, labels


# ---- routing: per token vs one routing per sample (eq. 4-5) ------------------------------------
def _moe(routing, seed=0):
    cfg = cfg_of("unused", routing=routing, num_experts=4, top_k=2, dropout=0.0)
    torch.manual_seed(seed)
    moe = MixtureOfExperts(6, 5, cfg).eval()
    torch.nn.init.normal_(moe.w_gate.weight, std=1.0)  # the zero initialisation routes every token alike
    return moe


def _moe_inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 7, 6, generator=g)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    return x, mask


def test_sample_routing_gives_every_token_of_a_sample_the_same_experts_and_matches_a_dense_reference():
    x, mask = _moe_inputs()
    moe = _moe("sample")
    out, gate, counts = moe(x, mask)
    assert gate.gates.shape == (4, 1, 4) and gate.selected.shape == (4, 1, 2) and gate.mask.all()
    # reference: one softmax over the top-2 logits of W_g applied to the sample's masked mean
    pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    logits = pooled @ moe.w_gate.weight.T                                  # (b, e)
    top = logits.topk(2, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, -1))
    dense = torch.stack([expert(x) for expert in moe.experts], dim=2)      # (b, n, e, d)
    expected = (weights[:, None, :, None] * dense).sum(2) * mask[..., None]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert int(counts.sum()) == 2 * int(mask.sum())


def test_token_routing_routes_tokens_of_one_sample_to_different_experts():
    """The same weights and inputs with routing='token': some sample's real tokens are routed apart,
    so the sample switch changes the routing (and the output)."""
    x, mask = _moe_inputs()
    token_out, token_gate, _ = _moe("token")(x, mask)
    sample_out, _, _ = _moe("sample")(x, mask)
    assert token_gate.selected.shape == (4, 7, 2)
    routed_apart = [len({tuple(sorted(s.tolist())) for s, real in zip(token_gate.selected[i], mask[i]) if real}) > 1
                    for i in range(4)]
    assert any(routed_apart)
    assert not torch.allclose(token_out, sample_out)


def test_sample_routing_in_the_model_and_its_balance_loss(bert):
    """Through KHaR in training mode (gate noise on): one gate row per sample, the balance loss is
    computed on the per-sample importance and load, and the whole loss backpropagates."""
    cfg = cfg_of(bert, routing="sample")
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    text, audio, vision, al, vl, y = batch()
    out = model(text, audio, vision, al, vl)
    for m, gate in out["routing"].items():
        assert gate.gates.shape == (B, 1, cfg.num_experts) and gate.noise_std is not None
        real = {"t": int(text[:, 1].sum()), "a": int(al.sum()), "v": int(vl.sum())}[m]
        assert int(out["expert_load"][m].sum()) == cfg.top_k * real
    total, raw, _ = KHaRCriterion(cfg)(out, y)
    total.backward()
    assert torch.isfinite(total) and raw["moe_balance"] >= 0


# ---- gate noise in training (eq. 4 has none) ----------------------------------------------------
@pytest.mark.parametrize("noisy", [True, False])
def test_gate_noise_switch(bert, noisy):
    """moe_noisy_gating=False: training-mode routing is the clean top-k (no noise std, the same
    routing at every forward); True: noise is drawn and the routing changes between forwards."""
    cfg = cfg_of(bert, moe_noisy_gating=noisy, moe_noise_epsilon=1.0, encoder_dropout=0.0, adapter_dropout=0.0,
                 dropout=0.0)  # the gate noise is the only randomness left
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    for refiner in model.refiners.values():
        torch.nn.init.normal_(refiner.w_gate.weight, std=0.1)
    text, audio, vision, al, vl, _ = batch()
    routes = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        routes.append(model(text, audio, vision, al, vl)["routing"]["a"])
    assert (routes[0].noise_std is not None) == noisy
    same = torch.equal(routes[0].selected, routes[1].selected) and torch.equal(routes[0].gates, routes[1].gates)
    assert same != noisy


# ---- contrastive loss before vs after the projection's ReLU ------------------------------------
def test_contrastive_on_before_or_after_relu(bert):
    cfg_after = cfg_of(bert)
    cfg_before = cfg_of(bert, contrastive_on="before_relu")
    torch.manual_seed(0)
    model = KHaR(cfg_after).eval()
    text, audio, vision, al, vl, y = batch()
    with torch.no_grad():
        out = model(text, audio, vision, al, vl)
    for m in model.modalities:
        torch.testing.assert_close(out["unimodal"][m], out["unimodal_linear"][m].clamp_min(0))
    assert any((v < 0).any() for v in out["unimodal_linear"].values())  # the ReLU does cut something

    def reference(key):
        feats = torch.stack([F.normalize(out[key][m].double(), dim=-1) for m in model.modalities], dim=1)
        return intensity_contrastive_loss(feats, y.view(-1).double(), cfg_after.contrastive_kappa,
                                          cfg_after.contrastive_temperature).float()
    after = KHaRCriterion(cfg_after).raw_terms(out, y)["contrastive"]
    before = KHaRCriterion(cfg_before).raw_terms(out, y)["contrastive"]
    torch.testing.assert_close(after, reference("unimodal"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(before, reference("unimodal_linear"), rtol=1e-5, atol=1e-6)
    assert abs(float(after) - float(before)) > 1e-4


# ---- beta warm-up (eq. 12) ----------------------------------------------------------------------
def test_beta_warmup_ramps_the_kl_weight_linearly_from_zero(bert):
    cfg = cfg_of(bert, mib_beta=0.2, mib_beta_warmup_epochs=4)
    criterion = KHaRCriterion(cfg)
    assert [criterion.beta(e) for e in range(1, 8)] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    text, audio, vision, al, vl, y = batch()
    out = model(text, audio, vision, al, vl)
    criterion.set_epoch(1)
    total1, raw, weighted = criterion(out, y)
    assert raw["mib_kl"] > 0 and weighted["mib_kl"] == 0
    criterion.set_epoch(3)
    total3, _, weighted = criterion(out, y)
    torch.testing.assert_close(weighted["mib_kl"], 0.1 * raw["mib_kl"])
    torch.testing.assert_close(total3 - total1, 0.1 * raw["mib_kl"])
    plain = KHaRCriterion(cfg_of(bert, mib_beta=0.2))
    plain.set_epoch(1)
    torch.testing.assert_close(plain(out, y)[2]["mib_kl"], 0.2 * raw["mib_kl"])


# ---- freezing the text encoder for the first epochs ---------------------------------------------
def test_freeze_bert_epochs_holds_the_encoder_then_fine_tunes_it(bert):
    from khar_mmsa.training.trainer import khar_parameter_groups
    cfg = cfg_of(bert, freeze_bert_epochs=2)
    torch.manual_seed(0)
    model = KHaR(cfg)
    encoder = model.harvesters["t"].encoder
    backbone = list(encoder.backbone.parameters())
    # the optimizer holds the encoder from the start, for the epochs that fine-tune it
    groups = khar_parameter_groups(model, model, cfg)
    assert {id(p) for p in backbone} <= {id(p) for g in groups if g["name"].startswith("bert") for p in g["params"]}
    text, audio, vision, al, vl, y = batch()
    criterion = KHaRCriterion(cfg)

    def step(epoch):
        model.set_epoch(epoch)
        model.train()
        model.zero_grad(set_to_none=True)
        states = [encoder(text).final for _ in range(2)]
        criterion(model(text, audio, vision, al, vl), y)[0].backward()
        return states

    for epoch in (1, 2):
        first, second = step(epoch)
        assert not encoder.backbone.training and torch.equal(first, second)  # no dropout while held
        assert all(p.grad is None for p in backbone)
        assert model.harvesters["t"].adapters.blocks[0].up.weight.grad is not None  # the rest trains
    first, second = step(3)
    assert encoder.backbone.training and not torch.equal(first, second)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)


def test_without_freeze_bert_epochs_the_encoder_fine_tunes_from_epoch_one(bert):
    model = KHaR(cfg_of(bert))
    model.set_epoch(1)
    model.train()
    text, audio, vision, al, vl, y = batch()
    KHaRCriterion(model.cfg)(model(text, audio, vision, al, vl), y)[0].backward()
    assert model.harvesters["t"].encoder.backbone.training
    assert any(p.grad is not None for p in model.harvesters["t"].encoder.backbone.parameters())


# ---- the parts the walk removes ------------------------------------------------------------------
def test_no_harvesting_no_refiner_no_projection_linear_head_is_the_encoders_pooled_output(bert):
    """harvesting=False, refiner='none', projection='none', fusion='linear': the prediction is one
    Linear layer on the concatenated masked means of the encoders' final states."""
    cfg = cfg_of(bert, harvesting=False, pretrain_adapters=False, refiner="none", projection="none",
                 fusion="linear", contrastive_weight=0.0)
    torch.manual_seed(0)
    model = KHaR(cfg).eval()
    assert all(h.adapters is None for h in model.harvesters.values()) and not list(model.refiners.parameters())
    assert not list(model.projections.parameters())
    text, audio, vision, al, vl, y = batch()
    out = model(text, audio, vision, al, vl)
    t = model.harvesters["t"].encoder(text)
    a = model.harvesters["a"].encoder(audio, torch.arange(NA)[None] < al[:, None])
    v = model.harvesters["v"].encoder(vision, torch.arange(NV)[None] < vl[:, None])
    pooled = [masked_mean(e.final, e.mask) for e in (t, a, v)]
    assert [p.shape[1] for p in pooled] == [16, 8, 8]
    expected = torch.cat(pooled, -1) @ model.fusion.head.weight.T + model.fusion.head.bias
    torch.testing.assert_close(out["M"], expected, rtol=1e-5, atol=1e-6)
    total, raw, weighted = KHaRCriterion(cfg)(out, y)
    assert set(k for k, v in weighted.items() if v != 0) == {"task"}
    total.backward()


@pytest.mark.parametrize("switch,changed", [
    ({"harvesting": False, "pretrain_adapters": False}, "harvesters"),
    ({"refiner": "none"}, "refiners"),
    ({"projection": "none"}, "projections"),
    ({"fusion": "linear"}, "fusion"),
])
def test_each_removal_switch_changes_the_model(bert, switch, changed):
    """Each removal changes the parameters of its part and the prediction (same seed, same batch)."""
    def build(**kw):
        torch.manual_seed(0)
        return KHaR(cfg_of(bert, **kw)).eval()
    base, other = build(), build(**switch)
    size = {n: sum(p.numel() for p in getattr(m, changed).parameters()) for n, m in (("base", base), ("other", other))}
    assert size["other"] < size["base"]
    text, audio, vision, al, vl, _ = batch()
    assert not torch.allclose(base(text, audio, vision, al, vl)["M"], other(text, audio, vision, al, vl)["M"])


def test_projection_none_passes_the_pooled_moe_output_on(bert):
    cfg = cfg_of(bert, projection="none")
    torch.manual_seed(0)
    model = KHaR(cfg).eval()
    text, audio, vision, al, vl, _ = batch()
    out = model(text, audio, vision, al, vl)
    harvested, mask, _ = model.harvesters["a"](audio, torch.arange(NA)[None] < al[:, None])
    refined = model.refiners["a"](harvested, mask)[0]
    torch.testing.assert_close(out["unimodal"]["a"], masked_mean(refined, mask))
    assert out["unimodal"]["a"].shape == (B, cfg.modal_dim) and out["unimodal_linear"]["a"] is out["unimodal"]["a"]


def test_refiner_none_keeps_the_harvested_sequence(bert):
    torch.manual_seed(0)
    model = KHaR(cfg_of(bert, refiner="none")).eval()
    text = batch()[0]
    harvested, mask, _ = model.harvesters["t"](text)
    assert harvested.shape[-1] == 2 * 16
    refined, gate, load = model.refiners["t"](harvested, mask)
    assert refined is harvested and gate is None and load is None
    assert model.projections["t"][1].in_features == 2 * 16


@pytest.mark.parametrize("bad,match", [
    ({"routing": "batch"}, "routing='batch'"),
    ({"contrastive_on": "relu"}, "contrastive_on='relu'"),
    ({"projection": "tanh"}, "projection='tanh'"),
    ({"refiner": "identity"}, "refiner='identity'"),
    ({"fusion": "lin"}, "fusion='lin'"),
    ({"harvesting": False}, "no adapters to pretrain"),
    ({"freeze_bert_epochs": 1, "finetune_bert": False}, "needs finetune_bert=True"),
    ({"freeze_bert_epochs": -1}, "freeze_bert_epochs=-1"),
    ({"mib_beta_warmup_epochs": -2}, "mib_beta_warmup_epochs=-2"),
    ({"refiner": "none", "projection": "none", "fusion": "sum", "contrastive_weight": 0.0}, "element-wise"),
    ({"refiner": "none", "projection": "none"}, "set contrastive_weight=0"),
])
def test_open_choice_switches_are_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        KHaRConfig(**bad)


def test_defaults_are_todays_behaviour():
    cfg = KHaRConfig()
    assert (cfg.harvesting, cfg.projection, cfg.contrastive_on, cfg.routing, cfg.mib_beta_warmup_epochs,
            cfg.freeze_bert_epochs, cfg.moe_noisy_gating) == (True, "relu", "after_relu", "token", 0, 0, True)


# ---- eq. 3's H_m: the encoder output O_m or the last harvested hidden state -----------------------
@pytest.mark.parametrize("modality", ["t", "a"])
def test_harvested_state_concatenates_the_output_or_the_last_harvested_hidden_state(bert, modality):
    """X_m = [A_m; H_m]: 'output' puts the encoder's final output after A_m, 'last_hidden' the
    hidden state at the adapters' last layer index -- checked against the encoder's own states."""
    from khar_mmsa.model.khar import build_harvester, modality_inputs
    text, audio, vision, al, vl, _ = batch()
    inputs = modality_inputs(modality, text, audio, vision, al, vl)
    xs = {}
    for state in ("output", "last_hidden"):
        torch.manual_seed(0)
        harvester = build_harvester(modality, cfg_of(bert, harvested_state=state, encoder_layers=2)).eval()
        with torch.no_grad():
            x, mask, adapted = harvester(*inputs)
            enc = harvester.encoder(*inputs)
        width = harvester.encoder.dim
        torch.testing.assert_close(x[..., :width], adapted)
        expected = enc.final if state == "output" else enc.hidden[harvester.adapters.layers[-1]]
        torch.testing.assert_close(x[..., width:], expected)
        xs[state] = x
    assert not torch.allclose(xs["output"][..., -1:], xs["last_hidden"][..., -1:])


def test_harvested_state_is_checked():
    with pytest.raises(ConfigError, match="harvested_state"):
        cfg_of("unused", harvested_state="H_m")


def test_masked_mean_ignores_nan_and_inf_at_padding_in_value_and_gradient():
    x = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    poisoned = x.masked_fill(~mask.unsqueeze(-1), float("nan"))
    poisoned = torch.where(torch.arange(4).view(1, 4, 1) == 3, torch.full_like(poisoned, float("inf")), poisoned)
    mean = masked_mean(poisoned, mask)
    reference = torch.stack([x[0, :2].mean(0), x[1, :3].mean(0)])
    torch.testing.assert_close(mean, reference)
    mean.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[~mask].eq(0).all()
