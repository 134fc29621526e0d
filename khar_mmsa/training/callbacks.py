"""The callbacks :func:`khar_mmsa.training.loop.fit` runs with: each does one thing.

Each declares when it runs (:class:`~khar_mmsa.training.loop.Order`, sorted by ``fit``): the ones
that change the state (best checkpoint, curves history, epoch results, early stopping, the epoch's
log line) before :class:`ResumeState`, which saves it, and those that may stop the process (a
tuner's report :class:`EpochHook`, a test's kill point: any callback from outside) after it, so that
a stop there loses nothing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from khar_mmsa.reporting.log_format import plain_value
from khar_mmsa.reporting.progress import progress
from khar_mmsa.training.checkpoints import SeedCheckpoint
from khar_mmsa.training.loop import Callback, Loop, Order, TrainingState
from khar_mmsa.training.seeding import rng_state, set_rng_state

logger = logging.getLogger(f"MMSA.{__name__}")


class ProgressBar(Callback):
    """A tqdm bar over each epoch's training batches (``desc`` formatted with ``epoch`` and
    ``epochs``); it disappears when the epoch's training ends (the log keeps the epoch's line)."""

    order = Order.BEFORE_SAVE

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def on_epoch_begin(self, state: TrainingState, loop: Loop) -> None:
        total = len(loop.loader) if hasattr(loop.loader, "__len__") else None
        self.bar = progress(None, self.desc.format(epoch=state.epoch, epochs=state.max_epochs), self.enabled,
                            total=total)

    def on_step_end(self, state: TrainingState, loop: Loop) -> None:
        self.bar.update(1)

    def on_validation_begin(self, state: TrainingState, loop: Loop) -> None:
        self.bar.close()


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better monitored value (the decision is part of the
    saved state, so a resumed run stops where the uninterrupted one did)."""

    order = Order.BEFORE_SAVE

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        state.should_stop = state.epochs_without_improvement >= self.patience


class KeepBestWeights(Callback):
    """A CPU copy of the model's weights at the best epoch, in memory (``.state``; None: no epoch
    improved)."""

    order = Order.BEFORE_SAVE

    def __init__(self) -> None:
        self.state: Optional[Dict[str, torch.Tensor]] = None

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        if state.improved:
            self.state = {k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()}


class BestCheckpoint(Callback):
    """The best epoch's weights written atomically to the seed's checkpoint file, with the config they
    were trained with beside it (:meth:`SeedCheckpoint.save_config`, written with this training's
    first checkpoint), and the resume state removed when training ends (:class:`SeedCheckpoint`)."""

    order = Order.BEFORE_SAVE

    def __init__(self, checkpoint: SeedCheckpoint, config: Mapping[str, Any]) -> None:
        self.checkpoint, self.config, self.config_saved = checkpoint, config, False

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        if state.improved:
            if not self.config_saved:
                self.checkpoint.save_config(self.config)
                self.config_saved = True
            self.checkpoint.save_best({k: v.detach().cpu() for k, v in loop.model.state_dict().items()})

    def on_fit_end(self, state: TrainingState, loop: Loop) -> None:
        self.checkpoint.finish_training()


class EpochResults(Callback):
    """MMSA's ``return_epoch_results``: each epoch's training summary, validation results and a
    test pass (``test()``) in ``state.epoch_results``."""

    order = Order.BEFORE_SAVE

    def __init__(self, test: Callable[[], Mapping[str, Any]]) -> None:
        self.test = test

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        state.epoch_results["train"].append(state.train)
        state.epoch_results["valid"].append(state.valid)
        state.epoch_results["test"].append(self.test())


class ResumeState(Callback):
    """After each epoch, model, optimizer, scheduler, training state and RNG states go to the seed's
    resume file; at the start, a resume file this very run wrote (same ``fingerprint``: config,
    seed, data) is loaded, so training continues after its last finished epoch exactly as the
    uninterrupted run would.  ``save=False``: only load (nothing is written)."""

    order = Order.SAVE

    def __init__(self, checkpoint: SeedCheckpoint, fingerprint: str, label: str, key_eval: str,
                 save: bool = True) -> None:
        self.checkpoint, self.fingerprint, self.save = checkpoint, fingerprint, save
        self.label, self.key_eval = label, key_eval

    def on_fit_begin(self, state: TrainingState, loop: Loop) -> None:
        saved = self.checkpoint.resume(self.fingerprint)
        if saved is None:
            return
        loop.model.load_state_dict(saved["model"])
        loop.optimizer.load_state_dict(saved["optimizer"])
        if loop.scheduler is not None:
            loop.scheduler.load_state_dict(saved["scheduler"])
        state.load_state_dict(saved["state"])
        set_rng_state(saved["rng"])
        logger.info(f"Resuming {self.label} from {self.checkpoint.resume_path} after epoch {state.epoch} "
                    f"(best {self.key_eval}={state.best} at epoch {state.best_epoch})")

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        if not self.save:
            return
        self.checkpoint.save_resume({
            "fingerprint": self.fingerprint, "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict() if loop.scheduler is not None else None,
            "state": plain_value(state.state_dict()), "rng": rng_state()})


class EpochLog(Callback):
    """Log lines of a training: ``first`` when it starts, ``line(state)`` after each epoch and
    ``stopped(state)`` when early stopping ended it."""

    order = Order.BEFORE_SAVE

    def __init__(self, line: Callable[[TrainingState], str], first: str = "",
                 stopped: Optional[Callable[[TrainingState], str]] = None) -> None:
        self.line, self.first, self.stopped = line, first, stopped

    def on_fit_begin(self, state: TrainingState, loop: Loop) -> None:
        if self.first:
            logger.info(self.first)

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        logger.info(self.line(state))

    def on_fit_end(self, state: TrainingState, loop: Loop) -> None:
        if self.stopped is not None and state.should_stop:
            logger.info(self.stopped(state))


class EpochHook(Callback):
    """Calls ``hook(epoch, validation_results)`` after each epoch (a tuner's report)."""

    def __init__(self, hook: Callable[[int, Mapping[str, Any]], None]) -> None:
        self.hook = hook

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        self.hook(state.epoch, state.valid)


def _plain_metrics(results: Mapping[str, Any]) -> Dict[str, float]:
    """The named numbers of an epoch's results (metrics and ``Loss``; no loss-term or load entries)."""
    return {k: float(v) for k, v in results.items()
            if "/" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TrainingCurves(Callback):
    """Keeps each epoch's validation value, raw loss terms, expert load and the training and
    validation metrics in ``state.history`` (saved with the resume state, so a resumed run keeps
    its whole curve) and draws them to ``path`` when training ends (:mod:`khar_mmsa.reporting.curves`)."""

    order = Order.BEFORE_SAVE

    def __init__(self, path: Path, key_eval: str, title: str, enabled: bool = True) -> None:
        self.path, self.key_eval, self.title, self.enabled = Path(path), key_eval, title, enabled

    def on_epoch_end(self, state: TrainingState, loop: Loop) -> None:
        state.history.append({"epoch": state.epoch, "valid": float(state.valid[self.key_eval]),
                              "raw": {k[4:]: v for k, v in state.train.items() if k.startswith("raw/")},
                              "expert_load": state.train.get("expert_load", {}),
                              "train_metrics": _plain_metrics(state.train),
                              "valid_metrics": _plain_metrics(state.valid)})

    def on_fit_end(self, state: TrainingState, loop: Loop) -> None:
        if not self.enabled:
            return
        from khar_mmsa.reporting.curves import save_training_curves
        if save_training_curves(state.history, self.path, key_eval=self.key_eval, best_epoch=state.best_epoch,
                                title=self.title):
            logger.info(f"Training curves saved to {self.path}")


class RecordHistory(Callback):
    """Keeps a copy of the main training's ``state.history`` (what :class:`TrainingCurves`
    recorded, each epoch's training and validation metrics included) and its selected epoch when
    training ends, for code that drives a run and wants its curve (a benchmark's sweep runner)."""

    def __init__(self) -> None:
        self.history: list = []
        self.best_epoch = 0

    def on_fit_end(self, state: TrainingState, loop: Loop) -> None:
        if any("valid_metrics" in h for h in state.history):  # the main training, not adapter pretraining
            self.history, self.best_epoch = [dict(h) for h in state.history], int(state.best_epoch)

    def curve(self) -> Dict[str, Any]:
        """``{'curve': [{'epoch', 'train_<metric>', ..., 'valid_<metric>', ...}], 'best_epoch',
        'epochs_run', 'valid': the validation metrics of the selected epoch ({} if none)}``."""
        curve = [{"epoch": int(h["epoch"]), **{f"train_{k}": v for k, v in h.get("train_metrics", {}).items()},
                  **{f"valid_{k}": v for k, v in h.get("valid_metrics", {}).items()}} for h in self.history]
        best = next((r for r in curve if r["epoch"] == self.best_epoch), None)
        valid = {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")} if best else {}
        return {"curve": curve, "best_epoch": self.best_epoch, "epochs_run": len(curve), "valid": valid}

