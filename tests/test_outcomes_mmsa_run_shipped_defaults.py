"""Outcomes at the user's door (``MMSA_run``, ``MMSA_test``), on the shipped defaults shrunk only in
size: adapter pretraining on, ``grad_clip=1.0``, every Table 5 switch as shipped.

A run is constructed whose best validation epoch is not its last (the last epoch's validation pass
sees a decoder bias moved by +50, and so does the last pretraining epoch of each modality's head);
then the test checks what a user relies on, against numbers computed here from the predictions:

* the kept checkpoint is the best validation epoch by L1 (MMSA's KeyEval ``Loss``): its validation
  L1, from ``MMSA_test``'s predictions, is the logged best and not the last epoch's;
* the test row ``MMSA_run`` reports is that checkpoint's test predictions scored;
* each modality's pretrained adapters are those of its best validation-MAE epoch;
* gradient clipping is active at the default ``grad_clip`` (every step's norm at most 1, and
  some steps clipped to it);
* the epoch schedules (``freeze_bert_epochs``, ``mib_beta_warmup_epochs``) change at epoch
  boundaries, from the first step of an epoch.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import khar_mmsa  # noqa: F401  registers 'khar'
from conftest import TINY_KHAR_SIZE
from khar_mmsa.io.pickles import load_pickle
from khar_mmsa.io.state_files import load_adapter_cache
from khar_mmsa.training.loop import Callback
from khar_mmsa.training.trainer import unwrap
from MMSA import MMSA_run, MMSA_test

pytestmark = pytest.mark.usefixtures("fast_mmsa")

#: Only sizes shrink: pretraining stays on, grad_clip, the switches and the losses as shipped.
SHRUNK = dict(TINY_KHAR_SIZE, epochs=3, early_stop=3, pretrain_epochs=3)
MOVED = 50.0  # what the last epoch's validation sees added to the decoder's bias


class Watch(Callback):
    """Records what a run did, and makes the last epoch of every training (main and each
    pretraining stage) the worst on validation, so that "the best" and "the last" differ."""

    def __init__(self) -> None:
        self.valid, self.grad_norms, self.best = [], [], None
        self.pretrain = {}  # modality -> [(valid MAE, harvester state)]

    def on_step_end(self, state, loop) -> None:
        if loop.task.main_training:  # after the optimizer step; the grads are the ones it used
            grads = [p.grad for g in loop.optimizer.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    def on_validation_begin(self, state, loop) -> None:
        if state.epoch < state.max_epochs:
            return
        with torch.no_grad():
            if loop.task.main_training:
                unwrap(loop.model).fusion.decoder.bias += MOVED
            else:
                loop.model["head"].net[-1].bias += MOVED

    def on_epoch_end(self, state, loop) -> None:
        if loop.task.main_training:
            self.valid.append(float(state.valid["Loss"]))
        else:
            snapshot = {k[len("harvester."):]: v.detach().clone() for k, v in loop.model.state_dict().items()
                        if k.startswith("harvester.")}
            self.pretrain.setdefault(loop.task.modality, []).append((state.valid["MAE"], snapshot))

    def on_fit_end(self, state, loop) -> None:
        if loop.task.main_training:
            self.best = (state.best, state.best_epoch)


def l1(pred, true) -> float:
    return float(np.mean(np.abs(np.asarray(pred, dtype=np.float64).reshape(-1) -
                                np.asarray(true, dtype=np.float64).reshape(-1))))


def test_mmsa_run_with_pretraining_and_grad_clip_as_shipped_keeps_and_reports_the_best_validation_epoch(
        tiny_features, tiny_bert, mmsa_run_kwargs, mmsa_dirs) -> None:
    watch = Watch()
    feature = tiny_features("mosi")
    row = MMSA_run("khar", "mosi", custom_feature=str(feature),
                   config=dict(SHRUNK, pretrained=str(tiny_bert), callbacks=[watch]), **mmsa_run_kwargs)
    data = load_pickle(feature)
    labels = {s: np.asarray(data[s]["regression_labels"], dtype=np.float64) for s in ("valid", "test")}

    # the construction holds: the last epoch is the worst, so the best is an earlier one
    best, best_epoch = watch.best
    assert len(watch.valid) == SHRUNK["epochs"] and best_epoch < SHRUNK["epochs"]
    assert watch.valid[-1] > best + 1.0 and best == min(watch.valid)

    # the kept checkpoint is the best validation epoch, by L1 computed here from its predictions
    checkpoint = mmsa_dirs["model_save_dir"] / "khar-mosi.pth"
    predicted = MMSA_test("khar", str(checkpoint), str(feature), gpu_id=-1)
    assert l1(predicted["valid"], labels["valid"]) == pytest.approx(best, abs=6e-5)  # Loss: 4 digits
    assert l1(predicted["valid"], labels["valid"]) < watch.valid[-1] - 1.0

    # the reported test row is that checkpoint's test predictions, scored (x100, 2 digits)
    test_pred = np.asarray(predicted["test"], dtype=np.float64).reshape(-1)
    assert row["MAE"] == pytest.approx(round(100 * l1(test_pred, labels["test"]), 2), abs=0.0051)
    corr = np.corrcoef(test_pred, labels["test"])[0, 1]
    assert row["Corr"] == pytest.approx(round(100 * corr, 2), abs=0.0051)

    # each modality's pretrained adapters are its best validation-MAE epoch's (its last is the worst)
    saved = load_adapter_cache(mmsa_dirs["model_save_dir"] / "khar-mosi-adapters.pt")["states"]
    assert set(saved) == set(watch.pretrain) == set("tav")
    for modality, epochs in watch.pretrain.items():
        maes = [mae for mae, _ in epochs]
        assert len(maes) == SHRUNK["pretrain_epochs"] and maes[-1] > min(maes) + 1.0, (modality, maes)
        kept = epochs[int(np.argmin(maes))][1]
        assert saved[modality], modality
        for key, value in saved[modality].items():
            torch.testing.assert_close(value, kept[key], rtol=0, atol=0, msg=f"{modality}: {key}")

    # clipping is active at the default grad_clip=1.0: no step above it, and some clipped to it
    assert len(watch.grad_norms) == SHRUNK["epochs"] * 3
    assert max(watch.grad_norms) <= 1.0 + 1e-4, watch.grad_norms
    assert sum(math.isclose(n, 1.0, rel_tol=1e-4) for n in watch.grad_norms) >= 1, watch.grad_norms


class Schedules(Callback):
    """Per main-training step: whether the text encoder's weights moved, and the KL weight used."""

    def __init__(self) -> None:
        self.steps = []  # (epoch, step, text encoder moved, mib_kl weight)

    def on_step_begin(self, state, loop) -> None:
        if loop.task.main_training:
            self.before = [p.detach().clone() for p in unwrap(loop.model).harvesters["t"].encoder.parameters()]

    def on_step_end(self, state, loop) -> None:
        if loop.task.main_training:
            after = unwrap(loop.model).harvesters["t"].encoder.parameters()
            moved = any(not torch.equal(a, b) for a, b in zip(self.before, after))
            self.steps.append((state.epoch, state.step, moved, float(loop.task.criterion.weights["mib_kl"])))


def test_mmsa_run_with_pretraining_as_shipped_changes_epoch_schedules_at_epoch_boundaries(
        tiny_features, tiny_bert, mmsa_run_kwargs) -> None:
    """``freeze_bert_epochs=1`` and ``mib_beta_warmup_epochs=2`` turned on (the schedules are off by
    default); everything else as shipped.  Epoch 1: the text encoder never moves and beta is 0; from
    the first step of epoch 2 it fine-tunes; beta is mib_beta/2 in epoch 2 and mib_beta in epoch 3."""
    watch = Schedules()
    MMSA_run("khar", "mosi", custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs,
             config=dict(SHRUNK, pretrain_epochs=1, pretrained=str(tiny_bert), freeze_bert_epochs=1,
                         mib_beta_warmup_epochs=2, callbacks=[watch]))
    beta = 1e-3  # mib_beta's default
    assert [(e, s) for e, s, _, _ in watch.steps] == [(e, s) for e in (1, 2, 3) for s in (1, 2, 3)]
    for epoch, step, moved, kl_weight in watch.steps:
        assert moved == (epoch > 1), (epoch, step, moved)
        assert kl_weight == pytest.approx(beta * min(1.0, (epoch - 1) / 2), abs=1e-12), (epoch, step)
