"""Length-bucketed batches: every sample once per epoch, seeded, less padding, exact per sample."""
import numpy as np
import pytest
import torch
from test_trainer import PlantedSplit  # MMSA-shaped samples from a planted split
from torch.utils.data import DataLoader

from khar_mmsa.data.bucketing import LengthBucketSampler, bucketed_loader, padding_overhead, sample_lengths
from khar_mmsa.data.planted import planted_data
from khar_mmsa.runs.model_and_trainer import khar_network, khar_trainer
from khar_mmsa.model.text_encoders import make_tiny_bert
from khar_mmsa.training.loop import Callback

pytestmark = pytest.mark.usefixtures("fast_mmsa")
SEQ = (12, 40, 48)


def long_tailed_lengths(n=203, seed=0):
    rng = np.random.default_rng(seed)
    a = np.clip(rng.lognormal(3.0, 0.8, n), 1, 375).astype(int)
    return np.stack([np.full(n, 20), a, np.minimum(a * 4 // 3, 500)], 1)


@pytest.mark.parametrize("batch_size, pool", [(16, 4), (7, 50), (1, 3)])
def test_every_sample_once_per_epoch_deterministic_per_seed_and_epoch(batch_size, pool):
    lengths = long_tailed_lengths()
    sampler = LengthBucketSampler(lengths, batch_size, seed=5, pool_batches=pool)
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-len(lengths) // batch_size)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        again = LengthBucketSampler(lengths, batch_size, seed=5, pool_batches=pool)
        again.set_epoch(epoch)
        assert list(again) == batches          # same seed and epoch: same batches
        orders.append(batches)
    if batch_size > 1:
        assert orders[0] != orders[1]          # another epoch: another order
        other = LengthBucketSampler(lengths, batch_size, seed=6, pool_batches=pool)
        other.set_epoch(1)
        assert list(other) != orders[0]


def test_buckets_cut_padding_on_long_tailed_lengths():
    lengths = long_tailed_lengths(n=512)
    sampler = LengthBucketSampler(lengths, 16, seed=0, pool_batches=50)
    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(sampler))
    bucketed, unbucketed = padding_overhead(sampler.batches(1), lengths), padding_overhead(random_batches, lengths)
    assert bucketed < 0.4 * unbucketed, (bucketed, unbucketed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    bert = str(make_tiny_bert(tmp_path_factory.mktemp("bert"), hidden_size=32))
    data, _ = planted_data("mosi", sizes=(20, 4, 4), seed=0, seq_lens=SEQ, tokenizer=bert)
    args = dict(model_name="khar", dataset_name="mosi", pretrained=bert, feature_dims=[32, 5, 20],
                seq_lens=list(SEQ), modal_dim=16, encoder_layers=1, encoder_heads=2, encoder_ff_dim=16,
                text_adapters=1, av_adapters=1, adapter_heads=2, adapter_inner_layers=1, expert_hidden_dim=16,
                fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8, batch_size=4, device="cpu",
                KeyEval="Loss", model_save_path=str(tmp_path_factory.mktemp("save") / "k.pth"),
                length_bucketing=True, length_bucket_pool=5, save_curves=False)
    return args, PlantedSplit(data["train"]), data["train"]


def test_lengths_read_from_any_dataset(setup):
    _, dataset, split = setup
    lengths = sample_lengths(dataset)
    np.testing.assert_array_equal(lengths[:, 1], split["audio_lengths"])
    np.testing.assert_array_equal(lengths[:, 2], split["vision_lengths"])
    np.testing.assert_array_equal(lengths[:, 0], np.asarray(split["text_bert"])[:, 1].sum(-1))


def test_bucketed_batches_give_each_sample_its_unbucketed_prediction_and_loss(setup):
    """Eval mode: a sample's prediction (and so its L1 loss) is the same whether it shares a
    bucketed batch, a random padded batch, or is computed alone."""
    args, dataset, _ = setup
    torch.manual_seed(0)
    model = khar_network(args).eval()
    trainer = khar_trainer(args)
    alone = {}
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = DataLoader(dataset, batch_size=1, sampler=[i]).__iter__().__next__()
            alone[i] = trainer._forward(model, batch)["M"].item()
        loader = bucketed_loader(DataLoader(dataset, batch_size=4, shuffle=True), 4, seed=3, pool_batches=5)
        seen = []
        for batch in loader:
            pred = trainer._forward(model, batch)["M"].view(-1)
            for j, i in enumerate(batch["index"].tolist()):
                seen.append(i)
                assert abs(pred[j].item() - alone[i]) <= 1e-5
                label = batch["labels"]["M"][j].item()
                assert abs(abs(pred[j].item() - label) - abs(alone[i] - label)) <= 1e-5
    assert sorted(seen) == list(range(len(dataset)))


def test_trainer_uses_buckets_and_is_deterministic_with_the_seed(setup, tmp_path):
    args, dataset, _ = setup

    def train(seed):
        torch.manual_seed(seed)
        a = dict(args, epochs=2, early_stop=5, pretrain_adapters=False, save_resume_state=False,
                 model_save_path=str(tmp_path / f"k{seed}.pth"))
        model = khar_network(a)
        dl = {k: DataLoader(dataset, batch_size=4, shuffle=True) for k in ("train", "valid", "test")}
        batches = []

        class RecordBatches(Callback):  # the indices of each training batch, as the loop takes it
            def on_step_begin(self, state, loop):
                batches.append(loop.batch["index"].tolist())
        history = khar_trainer(dict(a, callbacks=[RecordBatches()])).do_train(model, dl, return_epoch_results=True)
        return batches, [r["Loss"] for r in history["valid"]]

    batches, losses = train(11)
    sampler = LengthBucketSampler(sample_lengths(dataset), 4, seed=11, pool_batches=args["length_bucket_pool"])
    assert batches == sampler.batches(1) + sampler.batches(2)   # the run's seed, one order per epoch
    assert train(11) == (batches, losses)
