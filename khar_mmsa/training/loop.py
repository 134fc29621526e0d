"""The one training loop: :func:`fit`, its :class:`TrainingState` and the :class:`Callback` protocol.

KHaR's trainer (:mod:`khar_mmsa.training.trainer`), adapter pretraining
(:mod:`khar_mmsa.training.pretrain`) and the text-only floor (:mod:`khar_mmsa.experiments.textonly`)
all run on it.  What differs between them is a :class:`Task` (one training step, the epoch's
summary, one validation pass) and the callbacks they pass (:mod:`khar_mmsa.training.callbacks`):
progress bars, the best checkpoint, the resume state, early stopping, the curves picture, the
epoch log line, a tuner's per-epoch report and a test's kill point are each a callback.

One epoch::

    on_epoch_begin
    for each batch: on_step_begin, task.training_step, backward, clip, optimizer and scheduler step,
                    loss terms added on the device, on_step_end
    loss terms read to the host once (a non-finite loss raises here, naming its terms)
    task.training_epoch_end -> state.train
    on_validation_begin, task.validate -> state.valid; the monitor decides state.improved / best
    on_epoch_end
Callbacks run sorted by their :attr:`Callback.order` (:class:`Order`: those that change the state,
then the one that saves it, then those that may stop the process), in the order given within one.

The loop reads nothing back to the host inside the step (the loss terms are summed on the device).
The model may: the sparse MoE dispatch (``moe_dispatch='sparse'``, the default) reads each refiner's
expert token counts once per forward pass; ``moe_dispatch='dense'`` reads nothing.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

#: :class:`TrainingState` fields kept in a resume state (the rest describe the running epoch).
SAVED_FIELDS = ("epoch", "global_step", "best", "best_epoch", "should_stop", "history", "epoch_results")


@dataclass
class TrainingState:
    """What one :func:`fit` has done so far (as HF's ``TrainerState``)."""

    max_epochs: int                       # epoch cap
    epoch: int = 0                        # the running epoch; the last finished one between epochs
    global_step: int = 0                  # optimizer steps over all epochs
    best: Optional[float] = None          # best monitored validation value so far
    best_epoch: int = 0                   # its epoch (0: none yet)
    should_stop: bool = False             # set by a callback (early stopping): no further epoch
    history: List[dict] = field(default_factory=list)  # per-epoch records callbacks keep (curves)
    epoch_results: Dict[str, list] = field(default_factory=lambda: {"train": [], "valid": [], "test": []})
    # the running epoch only, not saved:
    step: int = 0                         # batch number within the epoch, from 1
    train: Dict[str, Any] = field(default_factory=dict)   # the epoch's training summary
    valid: Dict[str, Any] = field(default_factory=dict)   # the epoch's validation results
    improved: bool = False                # this epoch's validation value is the new best

    @property
    def epochs_without_improvement(self) -> int:
        return self.epoch - self.best_epoch

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in SAVED_FIELDS}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        for name in SAVED_FIELDS:
            if name in saved:
                setattr(self, name, saved[name])


#: Validation metrics (MMSA's KeyEval) where lower is better; every other KeyEval: higher is better.
LOWER_IS_BETTER = ("Loss", "MAE")


@dataclass(frozen=True)
class Monitor:
    """The validation value that selects the best epoch: one rule for every training."""

    key: str                              # key of the validation results
    lower_is_better: bool = True
    min_delta: float = 1e-6               # a change this small is no improvement

    def improves(self, value: float, best: Optional[float]) -> bool:
        """A finite ``value`` better than ``best`` by more than ``min_delta`` (any finite one when
        there is no best yet); a NaN or infinite value never improves."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.lower_is_better else value > best + self.min_delta


@dataclass
class StepOutput:
    """What a :meth:`Task.training_step` returns: the loss to back-propagate and the scalar terms
    (0-d tensors, the loss first) averaged over the epoch, weighted by ``weight`` (e.g. the
    batch size for a per-sample mean; 1 for a mean over steps)."""

    loss: torch.Tensor
    terms: Mapping[str, torch.Tensor]
    weight: float = 1.0


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class Task:
    """One kind of training: what :func:`fit` calls (as a LightningModule's training hooks)."""

    #: the module :func:`fit` puts in train mode and whose gradients it clips
    model: nn.Module
    #: first words of the non-finite-loss error
    name: str = "Training"

    def training_step(self, batch: Any, state: TrainingState) -> StepOutput:
        raise NotImplementedError

    def training_epoch_end(self, terms: Dict[str, float], state: TrainingState) -> Dict[str, Any]:
        """The epoch's training summary (``state.train``) from the averaged ``terms``."""
        return dict(terms)

    def validate(self, state: TrainingState) -> Dict[str, Any]:
        raise NotImplementedError

    def non_finite_error(self, epoch: int, step: int, terms: Mapping[str, float]) -> Exception:
        """The error for a loss that became non-finite at ``step`` of ``epoch``; ``terms`` are that
        step's values.  Names the terms that are not finite."""
        loss_key = next(iter(terms))
        bad = [k for k, v in terms.items() if k != loss_key and not math.isfinite(v)] or [loss_key]
        return NonFiniteLossError(f"{self.name} loss became non-finite at epoch {epoch}, step {step}: "
                                  f"term(s) {bad} = {[terms[k] for k in bad]}.")


@dataclass
class Loop:
    """What callbacks may reach besides the state: the running task, model, optimizer, scheduler
    and the batch of the current step (None outside a step)."""

    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    loader: Any = None
    batch: Any = None

    @property
    def model(self) -> nn.Module:
        return self.task.model


class Order(enum.IntEnum):
    """When a callback's hooks run among a fit's callbacks: :func:`fit` sorts them by
    :attr:`Callback.order`, keeping the given order within one value.  The contract: everything
    that changes the state is in the resume state, and a stop loses nothing."""

    BEFORE_SAVE = 0  # changes the state or writes what comes from it (best checkpoint, history, early stop, log)
    SAVE = 1         # writes the resume state (:class:`~khar_mmsa.training.callbacks.ResumeState`)
    AFTER_SAVE = 2   # may end the process (a tuner's report, a test's kill point): a stop loses nothing


class Callback:
    """Hooks :func:`fit` calls, sorted by :attr:`order`; each does nothing by default."""

    #: where the callback runs (:class:`Order`); a callback passed in from outside may stop the process
    order: Order = Order.AFTER_SAVE

    def on_fit_begin(self, state: TrainingState, loop: Loop) -> None: ...

    def on_epoch_begin(self, state: TrainingState, loop: Loop) -> None: ...

    def on_step_begin(self, state: TrainingState, loop: Loop) -> None: ...

    def on_step_end(self, state: TrainingState, loop: Loop) -> None: ...

    def on_validation_begin(self, state: TrainingState, loop: Loop) -> None: ...

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None: ...

    def on_fit_end(self, state: TrainingState, loop: Loop) -> None: ...


class _Callbacks:
    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = sorted(callbacks, key=lambda cb: getattr(cb, "order", Order.AFTER_SAVE))  # stable

    def __getattr__(self, hook: str):
        def call(state: TrainingState, loop: Loop) -> None:
            for cb in self.callbacks:
                method = getattr(cb, hook, None)
                if method is not None:
                    method(state, loop)
        return call


class DeviceMeans:
    """Weighted sums of a step's scalar terms, kept on their device, and the first step whose loss
    (the first term) was not finite with that step's values -- all without a host read; :meth:`read`
    copies everything to the host at once."""

    def __init__(self) -> None:
        self.keys: List[str] = []
        self.sums: Optional[torch.Tensor] = None
        self.bad_step: Optional[torch.Tensor] = None
        self.bad_values: Optional[torch.Tensor] = None
        self.weight = 0.0

    def add(self, out: StepOutput, step: int) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in out.terms.values()])
        if self.sums is None:
            self.keys = list(out.terms)
            self.sums = torch.zeros_like(values)
            self.bad_values = torch.zeros_like(values)
            self.bad_step = torch.zeros((), dtype=values.dtype, device=values.device)
        self.sums += values if out.weight == 1 else values * out.weight
        first_bad = (self.bad_step == 0) & ~torch.isfinite(values[0])
        self.bad_step = torch.where(first_bad, float(step), self.bad_step)
        self.bad_values = torch.where(first_bad, values, self.bad_values)
        self.weight += out.weight

    def read(self) -> tuple:
        """``(means, bad_step, bad_values)``: the weighted means by key; the first step whose loss
        was not finite (0: none) and its terms by key."""
        if self.sums is None:
            return {}, 0, {}
        host = torch.cat([self.sums, self.bad_values, self.bad_step.reshape(1)]).cpu().tolist()
        n = len(self.keys)
        means = {k: s / max(self.weight, 1e-12) for k, s in zip(self.keys, host[:n])}
        return means, int(host[-1]), dict(zip(self.keys, host[n:2 * n]))


def fit(task: Task, loader: Iterable, optimizer: torch.optim.Optimizer, state: TrainingState, monitor: Monitor,
        scheduler: Any = None, grad_clip: float = 0.0, callbacks: Sequence[Callback] = ()) -> TrainingState:
    """Train ``task`` on ``loader`` until ``state.max_epochs`` or a callback sets ``should_stop``.

    ``state`` may come back from a resume (a callback's ``on_fit_begin`` loads it); the loop
    continues after its last finished epoch.  ``grad_clip`` > 0 clips the global gradient norm of
    the optimizer's parameters.  Returns ``state``."""
    loop = Loop(task=task, optimizer=optimizer, scheduler=scheduler, loader=loader)
    hooks = _Callbacks(callbacks)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    hooks.on_fit_begin(state, loop)
    while state.epoch < state.max_epochs and not state.should_stop:
        state.epoch += 1
        state.step, state.train, state.valid, state.improved = 0, {}, {}, False
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(state.epoch)
        hooks.on_epoch_begin(state, loop)
        task.model.train()
        means = DeviceMeans()
        for state.step, loop.batch in enumerate(loader, start=1):
            hooks.on_step_begin(state, loop)
            out = task.training_step(loop.batch, state)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            state.global_step += 1
            means.add(out, state.step)
            hooks.on_step_end(state, loop)
        loop.batch = None
        terms, bad_step, bad_values = means.read()
        if bad_step:
            raise task.non_finite_error(state.epoch, bad_step, bad_values)
        state.train = task.training_epoch_end(terms, state)
        hooks.on_validation_begin(state, loop)
        state.valid = dict(task.validate(state))
        if monitor.key not in state.valid:
            raise KeyError(f"the validation results have no {monitor.key!r} (they have {sorted(state.valid)})")
        current = float(state.valid[monitor.key])
        state.improved = monitor.improves(current, state.best)
        if state.improved:
            state.best, state.best_epoch = current, state.epoch
        hooks.on_epoch_end(state, loop)
    hooks.on_fit_end(state, loop)
    return state
