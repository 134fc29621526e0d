"""The open-choice and walk switches through ``MMSA_run`` (tiny model, tiny planted MOSI data).

Two runs: the walk's first row (no harvesting, no refiner, no projection, a linear head, no
contrastive loss) and every open choice switched away from its default at once.  Each run checks
what its switches must change: the text encoder's weights (fine-tuned vs held frozen), the modules
in the checkpoint, and the KL weight of the first epoch in the run's log.
"""
import math
import re

import pandas as pd
import torch

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_epochs=1, pretrain_adapters=False, learning_rate_bert=1e-3, save_curves=False)
WALK_FLOOR = dict(harvesting=False, refiner="none", projection="none", fusion="linear", contrastive_weight=0.0)
OPEN_CHOICES = dict(routing="sample", contrastive_on="before_relu", moe_noisy_gating=False,
                    mib_beta_warmup_epochs=2, freeze_bert_epochs=2)


def _run(config, tiny_features, tiny_bert, kwargs):
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), **config)
    MMSA_run("khar", "mosi", config=config, **kwargs)
    table = pd.read_csv(kwargs["res_save_dir"] / "normal" / "mosi.tidy.csv")
    assert all(math.isfinite(table[c].iloc[0]) for c in ("MAE", "Corr", "Mult_acc_7"))
    state = torch.load(kwargs["model_save_dir"] / "khar-mosi.pth", weights_only=True)
    log = "".join(p.read_text() for p in kwargs["log_dir"].glob("*.log"))
    return state, log


def _bert_changed(state, tiny_bert) -> bool:
    """Whether any text-encoder weight of the checkpoint differs from the pretrained encoder's."""
    from transformers import AutoModel
    original = AutoModel.from_pretrained(str(tiny_bert)).state_dict()
    prefix = next(k for k in state if k.endswith("encoder.backbone.embeddings.word_embeddings.weight"))
    prefix = prefix[:-len("embeddings.word_embeddings.weight")]
    ours = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    assert set(ours) <= set(original) and len(ours) > 10
    return any(not torch.equal(v, original[k]) for k, v in ours.items())


def _kl_weight_per_epoch(log: str) -> dict:
    """{epoch: the weighted mib_kl term} from the trainer's 'TRAIN-(khar) epoch N >> weighted' lines."""
    found = {}
    for line in log.splitlines():
        m = re.search(r"TRAIN-\(khar\) epoch (\d+) >> weighted.*\bmib_kl=([-\d.e]+)", line)
        if m:
            found[int(m.group(1))] = float(m.group(2))
    return found


def test_walk_floor_row_through_mmsa_run(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa):
    state, log = _run(WALK_FLOOR, tiny_features, tiny_bert, mmsa_run_kwargs)
    assert not [k for k in state if ".adapters." in k or k.startswith("Model.refiners") or ".projections." in k]
    head = [k for k in state if k.endswith("fusion.head.weight")]
    assert len(head) == 1 and state[head[0]].shape == (1, 32 + 16 + 16)  # text width + audio + vision d_m
    assert _bert_changed(state, tiny_bert)  # freeze_bert_epochs=0: fine-tuned from the first step


def test_open_choices_through_mmsa_run(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa, monkeypatch):
    from khar_mmsa.losses.criterion import KHaRCriterion
    from khar_mmsa.model.khar import KHaR
    calls = []
    for cls in (KHaR, KHaRCriterion):  # record the trainer's per-epoch calls, keep what they do
        original = cls.set_epoch
        monkeypatch.setattr(cls, "set_epoch", lambda self, epoch, _o=original, _c=cls.__name__:
                            (calls.append((_c, epoch)), _o(self, epoch))[1])
    state, log = _run(OPEN_CHOICES, tiny_features, tiny_bert, mmsa_run_kwargs)
    for name in ("KHaR", "KHaRCriterion"):  # the constructors call set_epoch(1); the trainer then each epoch
        assert [e for c, e in calls if c == name][-2:] == [1, 2], (name, calls)
    assert not _bert_changed(state, tiny_bert)  # held frozen for both epochs
    kl = _kl_weight_per_epoch(log)
    assert kl[1] == 0 and kl[2] > 0  # beta warms up from 0
    assert any(k.endswith("refiners.t.w_gate.weight") for k in state)
