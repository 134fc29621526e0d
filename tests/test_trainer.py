"""KHaRTrainer: learning, frozen adapters, non-finite losses, resume and determinism (CPU)."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from khar_mmsa.data.planted import planted_data
from khar_mmsa.registration import metrics_for
from khar_mmsa.runs.model_and_trainer import khar_network, khar_trainer
from khar_mmsa.training.pretrain import HarvestTask, pretrain_fingerprint
from khar_mmsa.io.files import safe_torch_load
from khar_mmsa.model.text_encoders import make_tiny_bert
from khar_mmsa.training.loop import Callback
from khar_mmsa.training.trainer import KHaRTrainer

SEQ = (12, 16, 16)
pytestmark = pytest.mark.usefixtures("fast_mmsa")  # one torch thread: tiny models run faster


class PlantedSplit(Dataset):
    """MMSA-shaped samples (the keys MMSA's MMDataset yields) from an in-memory planted split."""

    def __init__(self, split):
        self.s = split

    def __len__(self):
        return len(self.s["regression_labels"])

    def __getitem__(self, i):
        s = self.s
        labels = {"M": torch.tensor([s["regression_labels"][i]], dtype=torch.float32)}
        for m in "TAV":
            if f"regression_labels_{m}" in s:
                labels[m] = torch.tensor([s[f"regression_labels_{m}"][i]], dtype=torch.float32)
        return {"text": torch.tensor(s["text_bert"][i]), "audio": torch.tensor(s["audio"][i]),
                "vision": torch.tensor(s["vision"][i]), "audio_lengths": int(s["audio_lengths"][i]),
                "vision_lengths": int(s["vision_lengths"][i]), "labels": labels, "id": s["id"][i], "index": i}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("bert"), hidden_size=32))


@pytest.fixture(scope="module")
def data(bert):
    d, _ = planted_data("sims", sizes=(24, 8, 8), seed=0, seq_lens=SEQ, tokenizer=bert)
    return d


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def make_args(bert, tmp_path, **kw):
    args = dict(model_name="khar", dataset_name="sims", pretrained=bert, feature_dims=[32, 33, 709],
                seq_lens=list(SEQ), modal_dim=16, encoder_layers=2, encoder_heads=4, encoder_ff_dim=16,
                adapter_heads=2, expert_hidden_dim=16, fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8,
                batch_size=8, epochs=3, early_stop=5, learning_rate=3e-3, learning_rate_bert=1e-3,
                pretrain_epochs=1, device="cpu", cur_seed=1, KeyEval="Loss", save_curves=False,
                model_save_path=str(tmp_path / "khar-sims.pth"))
    args.update(kw)
    return args


def loaders(data, batch_size=8):
    return {k: DataLoader(PlantedSplit(data[k]), batch_size=batch_size, shuffle=True) for k in ("train", "valid", "test")}


def run(bert, data, tmp_path, seed=7, **kw):
    seed_all(seed)
    args = make_args(bert, tmp_path, **kw)
    model = khar_network(args)
    dl = loaders(data)
    trainer = khar_trainer(args, metrics=metrics_for("sims"))
    history = trainer.do_train(model, dl, return_epoch_results=True)
    model.load_state_dict(torch.load(args["model_save_path"], weights_only=True))
    return model, trainer, history, trainer.do_test(model, dl["test"], mode="TEST")


def test_short_training_lowers_the_loss(bert, data, tmp_path):
    # dropout off: with 3 batches per epoch its noise alone can outweigh 5 epochs of progress
    # (seen for 1 of 3 seeds with nn.Dropout and with khar_mmsa's CPU dropout alike)
    _, _, history, _ = run(bert, data, tmp_path, epochs=5, pretrain_adapters=False, encoder_dropout=0.0,
                           adapter_dropout=0.0, dropout=0.0)
    losses = [r["total"] for r in history["train"]]
    assert losses[-1] < losses[0], losses


class OnMainEpochBegin(Callback):
    """Calls ``fn(state, loop)`` when an epoch of the main training (not adapter pretraining) starts."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_begin(self, state, loop):
        if isinstance(loop.task, KHaRTrainer):
            self.fn(state, loop)


def test_pretrained_adapters_stay_frozen_while_encoders_train(bert, data, tmp_path):
    seed_all(3)
    snapshot = {}

    def record(state, loop):  # parameters once the adapters are loaded, before the first step
        if not snapshot:
            snapshot.update({n: p.detach().clone() for n, p in loop.model.named_parameters()})

    class PretrainingEpochs(Callback):  # args['callbacks'] run in adapter pretraining too
        seen = []

        def on_epoch_begin(self, state, loop):
            if isinstance(loop.task, HarvestTask):
                self.seen.append((loop.task.modality, state.epoch))

    args = make_args(bert, tmp_path, epochs=2, callbacks=[OnMainEpochBegin(record), PretrainingEpochs()])
    model = khar_network(args)
    trainer = khar_trainer(args)
    trainer.do_train(model, loaders(data))
    assert snapshot, "the callback passed in args['callbacks'] ran"
    assert PretrainingEpochs.seen == [("t", 1), ("a", 1), ("v", 1)]  # pretrain_epochs=1
    adapters = {n for n, _ in model.named_parameters() if n.split(".")[2] == "adapters"}  # harvesters.<m>.adapters.*
    assert adapters
    for name, p in model.named_parameters():
        if name in adapters:
            assert not p.requires_grad
            torch.testing.assert_close(p, snapshot[name], rtol=0, atol=0, msg=f"frozen {name} moved")
    moved = [n for n, p in model.named_parameters() if n.startswith("harvesters.a.encoder")
             and not torch.equal(p, snapshot[n])]
    assert moved, "the audio encoder should keep training"
    saved = safe_torch_load(tmp_path / "khar-sims-adapters.pt")
    # the pretrained weights arrived in the main model: values equal to the saved file's when training
    # started (audio/vision: encoder and adapters; text: the adapters only, BERT stays the main model's)
    fresh = khar_network(args)
    for m, state in saved["states"].items():
        assert any(k.startswith("adapters.") for k in state) and (m == "t") == all(k.startswith("adapters.") for k in state)
        for key, value in state.items():
            name = f"harvesters.{m}.{key}"
            if name in snapshot:
                torch.testing.assert_close(snapshot[name], value, rtol=0, atol=0, msg=f"{name} not loaded")
        up = "blocks.0.up.weight"
        assert not torch.equal(state[f"adapters.{up}"], fresh.harvesters[m].adapters.state_dict()[up])  # trained
    # keyed by the seed MMSA set (torch.manual_seed), not by cur_seed, its position in the list
    data_id = trainer._data_identity
    assert saved["fingerprint"] == pretrain_fingerprint(trainer.cfg, 3, data_id)
    assert saved["fingerprint"] != pretrain_fingerprint(trainer.cfg, 4, data_id)

    # other training data, same path, config and seed: the adapters are pretrained again
    seed_all(3)
    smaller = {k: {key: v[:16] for key, v in data[k].items()} if k == "train" else data[k] for k in data}
    other = khar_trainer(args)
    other.do_train(khar_network(args), loaders(smaller))
    again = safe_torch_load(tmp_path / "khar-sims-adapters.pt")
    assert other._data_identity["sizes"]["train"] == 16
    assert again["fingerprint"] == pretrain_fingerprint(other.cfg, 3, other._data_identity) != saved["fingerprint"]


def test_non_finite_loss_is_a_clear_error(bert, data, tmp_path):
    bad = {k: dict(v) for k, v in data.items() if k in ("train", "valid", "test")}
    bad["train"]["audio"] = bad["train"]["audio"].copy()
    bad["train"]["audio"][:] = np.nan
    seed_all(0)
    args = make_args(bert, tmp_path, pretrain_adapters=False)
    with pytest.raises(FloatingPointError, match="non-finite at epoch 1, step 1"):
        khar_trainer(args).do_train(khar_network(args), loaders(bad))


def test_pretraining_without_a_finite_validation_mae_names_the_modality(bert, data, tmp_path):
    bad = {k: dict(v) for k, v in data.items() if k in ("train", "valid", "test")}
    bad["valid"]["regression_labels_A"] = np.full_like(bad["valid"]["regression_labels_A"], np.nan)
    seed_all(0)
    args = make_args(bert, tmp_path, pretrain_epochs=2)
    with pytest.raises(FloatingPointError, match=r"modality 'a' \(label 'A'\) never reached a finite validation MAE"):
        khar_trainer(args).do_train(khar_network(args), loaders(bad))


class OnEpochEnd(Callback):
    def __init__(self, fn):
        self.fn = fn

    def on_epoch_end(self, state, loop):
        self.fn(state, loop)


def test_resume_state_can_be_switched_off(bert, data, tmp_path):
    def resume_files_after_each_epoch(folder, **kw):  # seen by a callback after the trainer's own
        seen = []
        run(bert, data, folder, epochs=2, pretrain_adapters=False, **kw,
            callbacks=[OnEpochEnd(lambda state, loop: seen.append((folder / "khar-sims.pth.resume").exists()))])
        return seen

    assert resume_files_after_each_epoch(tmp_path / "on") == [True, True]
    assert resume_files_after_each_epoch(tmp_path / "off", save_resume_state=False) == [False, False]
    assert (tmp_path / "off" / "khar-sims.pth").is_file()


def test_same_seed_same_metrics_on_cpu(bert, data, tmp_path):
    *_, a = run(bert, data, tmp_path / "a", epochs=1)
    *_, b = run(bert, data, tmp_path / "b", epochs=1)
    assert a == b


class Killed(Exception):
    pass


def test_killed_run_resumes_and_matches_uninterrupted(bert, data, tmp_path):
    _, _, full_history, full = run(bert, data, tmp_path / "full", epochs=3, pretrain_adapters=False)

    def die_after_epoch_1(state, loop):  # runs after the resume state of the epoch was saved
        if state.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(bert, data, tmp_path / "killed", epochs=3, pretrain_adapters=False,
            callbacks=[OnEpochEnd(die_after_epoch_1)])
    assert (tmp_path / "killed" / "khar-sims.pth.resume").is_file()
    trained = []
    _, _, history, resumed = run(bert, data, tmp_path / "killed", epochs=3, pretrain_adapters=False,
                                 callbacks=[OnMainEpochBegin(lambda state, loop: trained.append(state.epoch))])
    assert trained == [2, 3], "only the epochs after the last completed one run again"
    assert history["valid"] == full_history["valid"]
    assert resumed == full
    assert not (tmp_path / "killed" / "khar-sims.pth.resume").exists()


@pytest.mark.parametrize("amp", [True, False])
def test_amp_switch_runs_the_forward_in_bf16_and_hands_fp32_to_the_losses(bert, data, tmp_path, amp):
    args = make_args(bert, tmp_path, amp=amp)
    model = khar_network(args)
    dtypes = []
    model.harvesters["a"].encoder.proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer, batch = khar_trainer(args), next(iter(loaders(data)["train"]))
    out = trainer._forward(model, batch)
    assert dtypes == [torch.bfloat16 if amp else torch.float32]
    raw = trainer.criterion.raw_terms(out, batch["labels"]["M"])  # the one cast: where the losses read
    assert {v.dtype for v in raw.values()} == {torch.float32}


def test_khar_training_steps_read_nothing_back_to_the_host(bert, data, tmp_path, monkeypatch):
    """Model, criterion and loop read no value back inside a step.  Allowed: the batch cut to its
    longest clip on the CPU before it moves (trim_to_longest), the transformers BERT's own check of
    its attention mask (not ours), and the sparse MoE's one read of its per-expert token counts
    (refine.py; tests/test_moe_dispatch.py counts it exactly)."""
    from test_loop import HostReads
    watch = HostReads().spy_on(monkeypatch)
    run(bert, data, tmp_path, epochs=1, pretrain_adapters=False, callbacks=[watch])
    ours = [r for r in watch.reads if r[2] != "trim_to_longest" and "transformers" not in r[1]
            and not (r[0] == "tolist" and r[1].endswith("refine.py"))]
    assert watch.reads and ours == []


def test_compile_wraps_the_model_once_and_checkpoints_keep_plain_names(bert, data, tmp_path, monkeypatch):
    compiled, calls = [], []

    def fake_compile(model, **kwargs):  # stands in for torch.compile: records, runs the model as is
        compiled.append(model)
        return lambda *a, **k: calls.append(1) or model(*a, **k)
    monkeypatch.setattr(torch, "compile", fake_compile)
    model, *_ = run(bert, data, tmp_path / "off", epochs=1, pretrain_adapters=False)
    assert compiled == [] and calls == []
    model, *_ = run(bert, data, tmp_path / "on", epochs=1, pretrain_adapters=False, compile=True)
    assert compiled == [model] and len(calls) == 3 + 1 + 2  # train batches, VAL, epoch-results TEST, TEST
    saved = torch.load(tmp_path / "on" / "khar-sims.pth", weights_only=True)
    assert set(saved) == set(model.state_dict())


def test_amp_falls_back_to_fp32_where_the_device_has_no_bf16(bert, tmp_path, monkeypatch, caplog):
    from khar_mmsa.training.trainer import autocast_dtype
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda")) is None and autocast_dtype(torch.device("cpu")) == torch.bfloat16
    caplog.set_level("WARNING", logger="MMSA")
    trainer = khar_trainer(make_args(bert, tmp_path, amp=True, device="cuda"))
    assert trainer.amp_dtype is None and "has no bf16 autocast" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert khar_trainer(make_args(bert, tmp_path, amp=True, device="cuda")).amp_dtype == torch.bfloat16


def test_runner_options_come_from_args(bert, tmp_path):
    args = make_args(bert, tmp_path, seed=42, verbose_level=0, log_dir=str(tmp_path / "logs"), callbacks=["cb"])
    trainer = khar_trainer(args)
    assert (trainer.seed, trainer.verbose_level, trainer.callbacks) == (42, 0, ["cb"])
    assert trainer.curves_path() == tmp_path / "logs" / "khar-sims-curves.png"
    torch.manual_seed(9)
    plain = khar_trainer(make_args(bert, tmp_path))  # outside a runner: MMSA's seed, the checkpoint's folder
    assert (plain.seed, plain.verbose_level, plain.callbacks) == (9, None, [])
    assert plain.curves_path() == tmp_path / "khar-sims-curves.png"
