"""Knowledge harvesting: per-modality adapter pretraining (eq. 2, "pretrained parameters").

For each modality, a copy of its harvester (encoder + adapters) and a small regression head on the
time-mean of the adapter output A_m are trained on that modality's labels: the unimodal T/A/V labels
on SIMS/SIMSv2.  MOSI and MOSEI have no unimodal labels, so there each modality learns the
multimodal label M instead -- a weaker, documented substitute.  The text encoder (BERT) stays frozen
in this stage so that the adapters learn to read its pretrained states; audio/vision encoders train
with their adapters and are saved too.  The result is one file the main run loads; its adapters are
then frozen (``freeze_pretrained_adapters``) while the encoders keep training.

Each modality's stage runs on :func:`khar_mmsa.training.loop.fit` (:class:`HarvestTask`): AdamW with
no weight decay on biases, norms and positional tables, a constant learning rate, the epoch with
the best validation MAE kept, early stopping after ``early_stop`` epochs without a better one.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Dict, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.io.identity import fingerprint_of
from khar_mmsa.model.harvest import masked_mean
from khar_mmsa.model.khar import KHaR, batch_inputs, modality_inputs
from khar_mmsa.io.files import atomic_torch_save
from khar_mmsa.io.state_files import WRITTEN_BY, StateFileError, load_adapter_cache, set_aside
from khar_mmsa.reporting.progress import progress
from khar_mmsa.training.callbacks import EarlyStopping, EpochLog, KeepBestWeights, ProgressBar
from khar_mmsa.training.loop import Callback, Monitor, StepOutput, Task, TrainingState, fit
from khar_mmsa.training.optim import make_adamw, parameter_groups

logger = logging.getLogger(f"MMSA.{__name__}")

#: The config sections pretraining depends on: the harvesters' architecture (``model``: the
#: encoders, ``adapters``: the adapter blocks), the data (``data``: dataset, modalities, shapes) and
#: ``pretraining`` itself (its epochs, rates, and the ``early_stop`` / ``batch_size`` it shares with
#: the main run).  Not here: what only the main run reads (MoE, fusion, losses, the main optimiser).
#: A new field of one of these sections takes part without any further edit.
PRETRAIN_SECTIONS = ("data", "model", "adapters", "pretraining")


def pretrain_fingerprint(cfg: KHaRConfig, seed: object, data: object = None) -> str:
    """Hash of what pretraining depends on: the fields of :data:`PRETRAIN_SECTIONS` (paths by
    content, modality letters in canonical order), the seed and the data's identity
    (``KHaRTrainer.data_identity``: feature files by content, split sizes)."""
    return fingerprint_of(cfg, *PRETRAIN_SECTIONS, seed=seed, data=data)


def label_key(modality: str, cfg: KHaRConfig) -> str:
    """Which label a modality's adapters learn: its own on SIMS/SIMSv2, the multimodal one elsewhere."""
    return modality.upper() if cfg.has_unimodal_labels else "M"


class HarvestHead(nn.Module):
    """Regression head on the time-mean of A_m (hidden width d/2, KuDA's MLP head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1))

    def forward(self, adapted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(masked_mean(adapted, mask))


class HarvestTask(Task):
    """Adapter pretraining of one modality as a :class:`~khar_mmsa.training.loop.Task`: the MSE of
    the head's prediction trains, the MAE (per sample) is reported and selects the best epoch."""

    def __init__(self, harvester: nn.Module, head: HarvestHead, modality: str, key: str, valid_loader: Iterable,
                 device: torch.device, cfg: KHaRConfig, show_progress: bool = False) -> None:
        self.model = nn.ModuleDict({"harvester": harvester, "head": head})
        self.modality, self.key, self.valid_loader, self.device = modality, key, valid_loader, device
        self.cfg, self.show_progress = cfg, show_progress
        self.name = f"Adapter pretraining of modality {modality!r} (label {key!r})"

    def _predict(self, batch: Mapping) -> tuple:
        _, mask, adapted = self.model["harvester"](*modality_inputs(self.modality, *batch_inputs(batch, self.device)))
        return self.model["head"](adapted, mask), batch["labels"][self.key].to(self.device).view(-1, 1)

    def training_step(self, batch: Mapping, state: TrainingState) -> StepOutput:
        pred, y = self._predict(batch)
        loss = F.mse_loss(pred, y)
        return StepOutput(loss, {"mse": loss, "MAE": F.l1_loss(pred, y)}, weight=y.shape[0])

    def validate(self, state: TrainingState) -> Dict[str, float]:
        self.model.eval()
        total, count = torch.zeros((), device=self.device), 0
        desc = f"KHaR harvest-{self.modality} epoch {state.epoch}/{state.max_epochs} valid"
        with torch.no_grad():
            for batch in progress(self.valid_loader, desc, self.show_progress):
                pred, y = self._predict(batch)
                total += F.l1_loss(pred, y, reduction="sum")
                count += y.shape[0]
        return {"MAE": total.item() / max(count, 1)}


def pretrain_modality(khar: KHaR, modality: str, dataloader: Mapping, cfg: KHaRConfig, device: torch.device,
                      show_progress: bool = False, callbacks: Sequence[Callback] = ()) -> Dict[str, torch.Tensor]:
    """Train one modality's harvester copy; return its state to load (text: adapters only).
    ``callbacks`` run after the stage's own (progress, log line, early stopping, best weights)."""
    harvester = copy.deepcopy(khar.harvesters[modality]).to(device)
    if modality == "t":
        harvester.encoder.requires_grad_(False)
    head = HarvestHead(harvester.encoder.dim).to(device)
    key = label_key(modality, cfg)
    task = HarvestTask(harvester, head, modality, key, dataloader["valid"], device, cfg, show_progress)
    optimizer = make_adamw(parameter_groups(task.model, cfg.pretrain_learning_rate, cfg.pretrain_weight_decay))
    best = KeepBestWeights()
    line = (lambda s: f"HARVEST-({modality}) epoch {s.epoch}/{cfg.pretrain_epochs} label {key}: "
            f"train MAE {s.train['MAE']:.4f} valid MAE {s.valid['MAE']:.4f}")
    own = [ProgressBar(f"KHaR harvest-{modality} epoch {{epoch}}/{{epochs}} train", show_progress),
           EpochLog(line), EarlyStopping(cfg.early_stop), best]
    state = fit(task, dataloader["train"], optimizer, TrainingState(max_epochs=cfg.pretrain_epochs),
                Monitor("MAE", lower_is_better=True), callbacks=own + list(callbacks))
    if best.state is None:
        raise FloatingPointError(
            f"Adapter pretraining of modality '{modality}' (label '{key}') never reached a finite validation MAE "
            f"in {state.epoch} epoch(s) (last: {state.valid.get('MAE')}). Check the '{key}' labels and the "
            f"{modality!r} features of the train/valid splits for NaN/inf, lower pretrain_learning_rate "
            f"({cfg.pretrain_learning_rate}), or set pretrain_adapters=False.")
    best_state = {k[len("harvester."):]: v for k, v in best.state.items() if k.startswith("harvester.")}
    if modality == "t":  # BERT was frozen: only the adapters are knowledge of ours
        best_state = {k: v for k, v in best_state.items() if k.startswith("adapters.")}
    return best_state


def default_adapter_path(model_save_path: object) -> Path:
    path = Path(model_save_path)
    return path.with_name(f"{path.stem}-adapters.pt")


def harvest_knowledge(khar: KHaR, dataloader: Mapping, cfg: KHaRConfig, path: Path, device: torch.device,
                      seed: object, data: object = None, show_progress: bool = False,
                      callbacks: Sequence[Callback] = ()) -> Path:
    """Pretrain (or reuse) the adapters of every modality, load them into ``khar`` and freeze them.

    A saved file is reused only when config, modalities, seed and data identity (``data``) all
    match and it holds the adapters of every modality in use."""
    key = pretrain_fingerprint(cfg, seed, data)
    states = None
    saved = None
    if path.is_file():
        try:
            saved = load_adapter_cache(path)
        except StateFileError as exc:  # damaged: kept aside, the adapters are pretrained again; at a
            # path the user gave, a file we did not write: ForeignFileError, the file untouched
            set_aside(path, exc, own_name=not cfg.pretrained_adapters_path)
    if saved is not None:
        missing = khar.missing_adapters(saved.get("states") or {})
        if saved.get("fingerprint") != key:
            logger.info(f"Pretrained adapters at {path} were made with another config, modalities, seed "
                        f"or data; pretraining again")
        elif missing:
            logger.warning(f"Pretrained adapters at {path} lack the adapters of modalit"
                           f"{'y' if len(missing) == 1 else 'ies'} {sorted(missing)}; pretraining again")
        else:
            states = saved["states"]
            logger.info(f"Reusing pretrained adapters from {path}")
    if states is None:
        sources = {m: label_key(m, cfg) for m in khar.modalities}
        logger.info(f"Pretraining adapters (knowledge harvesting) on labels {sources}")
        if not cfg.has_unimodal_labels:
            logger.info(f"({cfg.dataset_name} has no unimodal labels, so every modality learns the multimodal one)")
        states = {m: pretrain_modality(khar, m, dataloader, cfg, device, show_progress, callbacks)
                  for m in khar.modalities}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"written_by": f"{WRITTEN_BY} adapter cache", "fingerprint": key, "states": states,
                           "labels": sources,
                           "config": dataclasses.asdict(cfg)}, path)
        logger.info(f"Saved pretrained adapters to {path}")
    khar.load_harvested(states, freeze=cfg.freeze_pretrained_adapters)
    return path
