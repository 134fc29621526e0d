"""The one training loop (khar_mmsa.training.loop.fit) and what every training shares: early
stopping, parameter groups, schedule, seeding, host reads, the non-finite-loss error (toy tasks)."""
import ast
import math
import random
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import khar_mmsa
from khar_mmsa.training.callbacks import EarlyStopping, KeepBestWeights
from khar_mmsa.training.loop import Callback, Monitor, StepOutput, Task, TrainingState, fit
from khar_mmsa.training.optim import parameter_groups, warmup_linear_decay_scheduler
from khar_mmsa.training.seeding import rng_state, seed_everything, set_rng_state

PACKAGE = Path(khar_mmsa.__file__).parent


class Scripted(Task):
    """A linear model whose validation values follow a script; from ``bad_step`` (epoch, step) on,
    to the end of that epoch, the term ``bad_term`` of the loss is NaN."""

    name = "Toy"

    def __init__(self, valid, bad_step=None, bad_term="extra"):
        self.model = nn.Linear(2, 1)
        self.valid, self.bad_step, self.bad_term = list(valid), bad_step, bad_term

    def training_step(self, batch, state):
        loss = self.model(batch).pow(2).mean()
        extra = torch.zeros(())
        if self.bad_step and state.epoch == self.bad_step[0] and state.step >= self.bad_step[1]:
            extra = torch.tensor(float("nan"))
        total = loss + extra
        return StepOutput(total, {"total": total, "loss": loss, self.bad_term: extra})

    def validate(self, state):
        return {"Loss": self.valid[state.epoch - 1]}


def run(task, epochs, patience, callbacks=(), batches=3, grad_clip=0.0):
    data = [torch.full((2, 2), float(i)) for i in range(batches)]
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.01)
    return fit(task, data, optimizer, TrainingState(max_epochs=epochs), Monitor("Loss"), grad_clip=grad_clip,
               callbacks=[EarlyStopping(patience), *callbacks])


def test_one_rule_for_the_best_epoch_and_early_stopping():
    # better by more than 1e-6 only; NaN never improves; stop after `patience` epochs without
    state = run(Scripted([1.0, 1.0 - 5e-7, 0.5, float("nan"), 0.49, 0.6]), epochs=6, patience=2)
    assert (state.best, state.best_epoch, state.epoch, state.should_stop) == (0.49, 5, 6, False)
    state = run(Scripted([1.0, 0.9, 0.95, 0.95, 0.1]), epochs=5, patience=2)
    assert (state.best_epoch, state.epoch, state.should_stop) == (2, 4, True)
    state = run(Scripted([float("nan")] * 4), epochs=4, patience=3)  # never finite: no best at all
    assert (state.best, state.best_epoch, state.epoch) == (None, 0, 3)
    assert Monitor("Acc", lower_is_better=False).improves(0.7, 0.6) and not \
        Monitor("Acc", lower_is_better=False).improves(0.6 + 5e-7, 0.6)


def test_keep_best_weights_holds_the_best_epochs_weights():
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, state, loop):
            snapshots.append(loop.model.weight.detach().clone())
    best = KeepBestWeights()
    run(Scripted([3.0, 1.0, 2.0]), epochs=3, patience=5, callbacks=[best, Snapshot()])
    torch.testing.assert_close(best.state["weight"], snapshots[1], rtol=0, atol=0)


def test_non_finite_loss_names_the_term_and_its_first_step():
    with pytest.raises(FloatingPointError, match=r"Toy loss became non-finite at epoch 2, step 3: "
                                                 r"term\(s\) \['mib_kl'\] = \[nan\]"):
        run(Scripted([1.0, 1.0, 1.0], bad_step=(2, 3), bad_term="mib_kl"), epochs=3, patience=5, batches=4)


def test_loss_terms_are_means_over_the_epoch_weighted_by_batch():
    class Weighted(Scripted):
        def training_step(self, batch, state):
            loss = self.model(batch).pow(2).mean()
            return StepOutput(loss, {"loss": loss, "n": torch.tensor(float(len(batch)))}, weight=len(batch))
    task = Weighted([1.0])
    data = [torch.ones(1, 2), torch.ones(3, 2)]
    state = fit(task, data, torch.optim.SGD(task.model.parameters(), lr=0.0), TrainingState(max_epochs=1),
                Monitor("Loss"))
    assert state.train["n"] == pytest.approx((1 * 1 + 3 * 3) / 4)


class HostReads(Callback):
    """Records every copy of a tensor value to the host (item, tolist, cpu, numpy, bool, float, int)
    between on_step_begin and on_step_end as ``(method, file, function)`` of the code that asked
    for it; install with :meth:`spy_on`."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self):
        self.inside, self.reads = False, []

    def spy_on(self, monkeypatch):
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def spy(tensor, *a, _original=original, _name=name, **k):
                if self.inside:
                    caller = traceback.extract_stack(limit=2)[0]
                    self.reads.append((_name, caller.filename, caller.name))
                return _original(tensor, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, spy)
        return self

    def on_step_begin(self, state, loop):
        self.inside = True

    def on_step_end(self, state, loop):
        self.inside = False


def test_no_host_read_inside_a_step(monkeypatch):
    """Nothing is copied to the host inside a step: the loss terms stay on the device until the
    epoch ends."""
    watch = HostReads().spy_on(monkeypatch)
    state = run(Scripted([1.0, 0.5]), epochs=2, patience=5, callbacks=[watch], grad_clip=1.0)
    reads = watch.reads
    watch.inside = True
    assert reads == [] and state.epoch == 2 and math.isfinite(state.train["total"])
    torch.ones(()).item()  # the spy does see a read inside a step
    assert reads == [("item", __file__, "test_no_host_read_inside_a_step")]


def test_parameter_groups_by_rule():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.norm = nn.LayerNorm(3)
            self.position = nn.Parameter(torch.zeros(4, 3))
            self.head = nn.Linear(3, 1)
            self.frozen = nn.Linear(3, 3).requires_grad_(False)
    net = Net()
    groups = parameter_groups(net, lr=1e-3, weight_decay=0.1, special={"head": (net.head, 5e-3)})
    got = {g["name"]: ({id(p) for p in g["params"]}, g["lr"], g["weight_decay"]) for g in groups}
    ids = lambda *ps: {id(p) for p in ps}  # noqa: E731
    assert [g["name"] for g in groups] == ["other", "other-no_decay", "head", "head-no_decay"]
    assert got == {"other": (ids(net.body.weight), 1e-3, 0.1),
                   "other-no_decay": (ids(net.body.bias, net.norm.weight, net.norm.bias, net.position), 1e-3, 0.0),
                   "head": (ids(net.head.weight), 5e-3, 0.1), "head-no_decay": (ids(net.head.bias), 5e-3, 0.0)}


def _learning_rates(total_steps, warmup_ratio, lr=2.0):
    """The rate of each optimizer step of the shipped schedule, stepped as the loop steps it."""
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=lr)
    scheduler = warmup_linear_decay_scheduler(optimizer, total_steps, warmup_ratio)
    rates = []
    for _ in range(total_steps + 1):
        rates.append(optimizer.param_groups[0]["lr"] / lr)
        optimizer.step()
        scheduler.step()
    return rates


def _old_factor(total_steps, warmup_ratio):
    """The hand-written schedule this project used before transformers' (kept here to compare)."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))
    return lambda step: (step + 1) / warmup if step < warmup else \
        max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def test_warmup_then_linear_decay():
    # 2 warm-up steps from 0, then linear decay to 0 at step 10 (Appendix B)
    assert _learning_rates(10, 0.2) == pytest.approx([0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])
    assert _learning_rates(4, 0.0) == pytest.approx([1.0, 3 / 4, 2 / 4, 1 / 4, 0.0])  # no warm-up


@pytest.mark.parametrize("total, ratio", [(10, 0.2), (97, 0.1), (40, 0.3)])
def test_the_library_schedule_against_the_old_hand_written_one(total, ratio):
    """From the peak on the same rates; the warm-up starts one step earlier, at 0 (the old one
    started at 1/warmup and held the peak for two steps)."""
    new, old = _learning_rates(total, ratio), _old_factor(total, ratio)
    warmup = int(round(total * ratio))
    assert new[warmup:] == pytest.approx([old(k) for k in range(warmup, total + 1)])
    assert new[1:warmup] == pytest.approx([old(k - 1) for k in range(1, warmup)]) and new[0] == 0.0


def test_seed_everything_and_rng_state_round_trip():
    seed = 2**32 + 2**31 + 7  # numpy takes 32 bits: all three get 2**31 + 7
    torch.backends.cudnn.deterministic = False
    seed_everything(seed)
    expected = (2**31 + 7, np.random.RandomState(2**31 + 7).rand(), random.Random(2**31 + 7).random())
    assert (torch.initial_seed(), np.random.rand(), random.random()) == expected
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark  # as MMSA's setup_seed
    saved = rng_state()
    first = (torch.rand(2).tolist(), np.random.rand(), random.random())
    set_rng_state(saved)
    assert (torch.rand(2).tolist(), np.random.rand(), random.random()) == first
    seed_everything(5)
    assert np.random.rand() == np.random.RandomState(5).rand()


def test_training_code_never_imports_the_integration_package():
    """Only registration/, runs/ and prediction/ reach MMSA (tuning/ through the runner); training/
    and reporting/ get everything from args."""
    for folder in ("training", "reporting"):
        for path in (PACKAGE / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.startswith(("khar_mmsa.registration", "khar_mmsa.runs", "khar_mmsa.prediction", "khar_mmsa.tuning",
                                                     "MMSA")) for n in names), path


def test_text_only_floor_runs_on_the_loop_and_restores_its_best_epoch(tiny_features, tiny_bert, fast_mmsa):
    from khar_mmsa.experiments.textonly import TextOnlyConfig, train_text_only
    config = TextOnlyConfig(epochs=3, early_stop=1, batch_size=8, learning_rate=1e-3)
    result = train_text_only(tiny_features("mosi"), tiny_bert, "mosi", seed=3, config=config)
    valid = [row["valid_l1"] for row in result.history]
    assert [row["epoch"] for row in result.history] == list(range(1, result.epochs_run + 1))
    assert result.best_epoch == 1 + int(np.argmin(valid))
    assert result.epochs_run == min(3, result.best_epoch + 1)  # early_stop=1: one epoch without a better one
    assert result.valid["Loss"] == pytest.approx(min(valid), abs=1e-4)  # the best epoch's weights were restored
    assert {"MAE", "Corr", "Mult_acc_7", "Loss"} <= set(result.test)
