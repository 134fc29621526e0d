"""The callbacks' order is declared (training.loop.Order), not kept by their place in a list: what
changes the state runs before the resume state is saved, and a callback that stops the process
runs after it, so a stop there loses nothing -- whatever order the callbacks are given in."""
from __future__ import annotations

import pytest
import torch
from test_loop import Scripted  # a linear model whose validation values follow a script

from khar_mmsa.training.callbacks import BestCheckpoint, EarlyStopping, ResumeState, TrainingCurves
from khar_mmsa.training.checkpoints import SeedCheckpoint
from khar_mmsa.training.loop import Callback, Monitor, TrainingState, fit


class Killed(Exception):
    """Stands in for a kill at the end of an epoch."""


class KillAfter(Callback):
    """A callback from outside (default order) that stops the process at the end of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state, loop):
        if state.epoch == self.epoch:
            raise Killed


@pytest.mark.parametrize("killed_at", [1, 2])
def test_a_stop_after_an_epoch_finds_that_epoch_saved_whatever_the_list_order(tmp_path, killed_at):
    path = tmp_path / "toy.pth"
    task = Scripted([1.0, 2.0, 3.0])  # epoch 1 the best; early stopping (patience 1) stops after epoch 2
    data = [torch.full((2, 2), float(i)) for i in range(3)]
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.01)
    checkpoint = SeedCheckpoint(path)
    given = [KillAfter(killed_at), ResumeState(checkpoint, "fp", "Toy", "Loss"), BestCheckpoint(checkpoint, {}),
             TrainingCurves(tmp_path / "curves.png", "Loss", "toy", enabled=False), EarlyStopping(1)]
    with pytest.raises(Killed):
        fit(task, data, optimizer, TrainingState(max_epochs=3), Monitor("Loss"), callbacks=given)
    saved = SeedCheckpoint(path).resume("fp")  # None: missing, or its best checkpoint is not the one named
    assert saved is not None, "no usable resume state after the kill"
    state = saved["state"]
    assert (state["epoch"], state["best_epoch"], len(state["history"])) == (killed_at, 1, killed_at)
    assert state["should_stop"] is (killed_at == 2)

