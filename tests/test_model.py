"""The KHaR network: shapes, padding, adapters, frozen knowledge, refiners/fusions (the weighted
criterion: tests/test_criterion.py)."""
import pytest
import torch

from khar_mmsa.config import KHaRConfig
from khar_mmsa.losses.criterion import KHaRCriterion
from khar_mmsa.model.adapter import AdapterBlock
from khar_mmsa.model.khar import KHaR
from khar_mmsa.model.text_encoders import make_tiny_bert

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
    assert out["mu"].shape == out["sigma"].shape == (B, 8) and (out["sigma"] > 0).all()
    assert set(out["unimodal"]) == {"t", "a", "v"} and all(v.shape == (B, 8) for v in out["unimodal"].values())
    assert set(out["routing"]) == set(out["expert_load"]) == {"t", "a", "v"}
    lengths = {"t": text[:, 1].sum(1).long(), "a": al, "v": vl}
    for m, gate in out["routing"].items():
        n = gate.mask.shape[1]
        assert gate.gates.shape == (B, n, 3) and gate.selected.shape == (B, n, 2)
        assert torch.equal(gate.mask.sum(1), lengths[m])  # the padding mask of the modality
        assert int(out["expert_load"][m].sum()) == 2 * int(lengths[m].sum())  # k routed experts per real token
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


def test_fresh_adapter_is_a_no_op_that_still_learns():
    """Step 0: the block passes its input through unchanged, even in training mode with dropout; one
    optimizer step later it no longer does (the zero up-projection receives a gradient)."""
    torch.manual_seed(0)
    block = AdapterBlock(16, heads=2, inner_layers=2, dropout=0.3).train()
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    assert torch.equal(block(x, mask), x)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    (block(x, mask) - x.flip(-1)).pow(2).mean().backward()
    assert block.up.weight.grad.abs().sum() > 0
    optimizer.step()
    assert (block.eval()(x, mask) - x).abs().max() > 1e-3


def test_frozen_pretrained_adapters_stay_in_eval_mode_while_the_model_trains(bert4):
    """Frozen knowledge: two training-mode forwards give the same adapter output (adapter dropout 0.3);
    the encoders around it keep training mode, and unfrozen adapters do feel their dropout."""
    torch.manual_seed(0)
    cfg = small_cfg(bert4, adapter_dropout=0.3)
    source = KHaR(cfg)
    for p in source.harvesters.parameters():  # 'pretrained' adapters: up-projections no longer zero
        p.data.add_(0.05 * torch.randn_like(p))
    states = {m: source.harvesters[m].state_dict() for m in source.modalities}
    text, audio, vision, al, vl, _ = batch()

    def adapter_outputs(freeze):
        model = KHaR(cfg)
        model.load_harvested(states, freeze=freeze)
        model.train()
        harvester = model.harvesters["a"]
        assert harvester.encoder.training
        inputs = (audio[:, :al.max()], torch.arange(int(al.max()))[None] < al[:, None])
        enc = harvester.encoder(*inputs)  # the encoder keeps its dropout: feed both passes the same states
        return [harvester.adapters(enc) for _ in range(2)]

    first, second = adapter_outputs(freeze=True)
    assert torch.equal(first, second)
    first, second = adapter_outputs(freeze=False)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("finetune", [False, True])
def test_frozen_text_encoder_runs_no_dropout_while_the_model_trains(bert4, finetune):
    """finetune_bert=False: the frozen encoder stays in eval mode through model.train(), so two
    training-mode passes give the same text states; a fine-tuned encoder keeps its dropout."""
    torch.manual_seed(0)
    model = KHaR(small_cfg(bert4, finetune_bert=finetune)).train()
    encoder = model.harvesters["t"].encoder
    assert encoder.backbone.config.hidden_dropout_prob > 0
    assert model.harvesters["a"].encoder.training and model.fusion.training
    text = batch()[0]
    first, second = encoder(text).final, encoder(text).final
    assert encoder.training == finetune
    assert torch.equal(first, second) != finetune
    model.eval()
    assert not encoder.training


def test_a_harvester_frozen_after_construction_keeps_eval_mode_at_the_next_train(bert4):
    """Adapter pretraining freezes a copy's text encoder itself (requires_grad_(False)); the next
    train() keeps it in eval mode, the adapters train."""
    model = KHaR(small_cfg(bert4))
    harvester = model.harvesters["t"]
    harvester.encoder.requires_grad_(False)
    harvester.train()
    assert not harvester.encoder.training and harvester.adapters.training


def test_padding_never_changes_an_output_in_training_mode(bert4):
    """Training mode (dropout off, gate noise and the bottleneck's sample on, same RNG draws): garbage
    after the real lengths changes no output and no loss term."""
    cfg = small_cfg(bert4, encoder_dropout=0.0, adapter_dropout=0.0, dropout=0.0)
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    text, audio, vision, al, vl, y = batch()
    audio2, vision2, text2 = audio.clone(), vision.clone(), text.clone()
    for i in range(B):
        audio2[i, al[i]:] = 1e3
        vision2[i, vl[i]:] = -7.0
        text2[i, 0, int(text[i, 1].sum()):] = 17.0
    torch.manual_seed(1)
    ref = model(text, audio, vision, al, vl)
    torch.manual_seed(1)
    out = model(text2, audio2, vision2, al, vl)
    assert not torch.equal(ref["M_sampled"], ref["M"])  # the sample was drawn: this is training mode
    for key in ("M", "M_sampled", "mu", "sigma", "fused"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-5)
    criterion = KHaRCriterion(cfg)
    raw_ref, raw_out = criterion.raw_terms(ref, y), criterion.raw_terms(out, y)
    assert raw_ref["moe_balance"] > 0
    for term in raw_ref:
        torch.testing.assert_close(raw_out[term], raw_ref[term], rtol=0, atol=1e-5)


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
        assert out["mu"] is None and out["sigma"] is None and raw["mib_kl"] == 0
    if cfg.refiner != "moe":
        assert out["routing"] == {} and raw["moe_balance"] == 0


def test_cnn_refiner_ignores_padding(bert4):
    model = KHaR(small_cfg(bert4, refiner="cnn")).eval()
    text, audio, vision, al, vl, _ = batch()
    ref = model(text, audio, vision, al, vl)["M"]
    audio2 = audio.clone()
    for i in range(B):
        audio2[i, al[i]:] = 50.0
    torch.testing.assert_close(model(text, audio2, vision, al, vl)["M"], ref, rtol=0, atol=1e-5)


def test_evaluation_is_deterministic_and_uses_posterior_mean(bert4):
    model = KHaR(small_cfg(bert4)).eval()
    text, audio, vision, al, vl, _ = batch()
    a = model(text, audio, vision, al, vl)
    b = model(text, audio, vision, al, vl)
    torch.testing.assert_close(a["M"], b["M"])
    torch.testing.assert_close(a["M_sampled"], a["M"])


def test_batch_inputs_cut_on_the_cpu_is_exact(bert4):
    """The trainer's batch helper cuts each batch to its longest real sequence before moving it;
    the predictions equal those on the full padded batch."""
    from khar_mmsa.model.khar import batch_inputs
    torch.manual_seed(0)
    model = KHaR(small_cfg(bert4)).eval()
    text, audio, vision, al, vl, _ = batch()
    al, vl = al.clamp(max=NA - 3), vl.clamp(max=NV - 5)
    text[:, 1, NT - 2:] = 0
    text[:, 0, NT - 2:] = 0
    cut = batch_inputs({"text": text, "audio": audio, "vision": vision, "audio_lengths": al,
                        "vision_lengths": vl, "labels": {}}, torch.device("cpu"))
    assert cut[0].shape[-1] == int(text[:, 1].sum(1).max())
    assert cut[1].shape[1] == int(al.max()) and cut[2].shape[1] == int(vl.max())
    torch.testing.assert_close(model(*cut)["M"], model(text, audio, vision, al, vl)["M"], rtol=0, atol=1e-5)


def test_forward_synchronises_with_the_host_only_to_size_the_expert_batches(bert4, monkeypatch):
    """No .item()/.nonzero()/bool(tensor) in a training forward + criterion + backward: on a GPU each
    one stalls the step until the device catches up. The one exception is sparse expert dispatch:
    each MoE refiner reads its (e + 1) token counts once (``tolist``, which the dispatch spy below
    cannot see on a CPU tensor, so it is counted separately). (The transformers library's BERT checks
    its attention mask with .all() once per forward; that one is outside this package.)"""
    import traceback
    from torch.utils._python_dispatch import TorchDispatchMode

    class SyncSpy(TorchDispatchMode):
        SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.masked_select")

        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(str(func).startswith(name + ".") or str(func) == name for name in self.SYNCING):
                stack = traceback.extract_stack()
                if not any("/transformers/" in frame.filename for frame in stack):
                    self.seen.append(f"{func} at " + " < ".join(f"{f.name}:{f.lineno}" for f in stack[-6:-1]))
            return func(*args, **(kwargs or {}))

    host_reads = []
    tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        host_reads.append((traceback.extract_stack()[-2].filename.replace("\\", "/"), tuple(tensor.shape)))
        return tolist(tensor)

    model = KHaR(small_cfg(bert4)).train()
    criterion = KHaRCriterion(model.cfg)
    text, audio, vision, al, vl, labels = batch()
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    with SyncSpy() as spy:
        total, _, _ = criterion(model(text, audio, vision, al, vl), labels)
        total.backward()
    monkeypatch.undo()
    assert spy.seen == []
    e = model.cfg.num_experts
    assert host_reads == [(host_reads[0][0], (e + 1,))] * len(model.modalities), host_reads
    assert host_reads[0][0].endswith("khar_mmsa/model/refine.py")
