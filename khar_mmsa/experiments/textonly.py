"""The text-only floor: a text encoder fine-tuned with a linear head, scored with MMSA's metrics.

A baseline for the real-transcripts benchmark: the same encoder KHaR uses (e.g. all-MiniLM-L6-v2),
fine-tuned end to end with one ``Linear(hidden, 1)`` on its pooled output, L1 loss on the
sentiment label, on the same splits of the same MMSA feature pickle (``text_bert`` ids), model
selection and early stopping on the validation L1 (MMSA's ``KeyEval='Loss'`` for MOSI), and the
test set scored by MMSA's metric function (:func:`khar_mmsa.registration.metrics_for`), so its
numbers read exactly like an ``MMSA_run`` row.

Pooling: ``'mean'`` (masked mean of the last hidden states, the pooling all-MiniLM-L6-v2 was
trained with) or ``'cls'`` (the ``[CLS]`` state).

    from khar_mmsa.experiments.textonly import TextOnlyConfig, train_text_only
    result = train_text_only('mosi_text.pkl', minilm_folder, 'mosi', seed=1111)
    result.test   # {'MAE': ..., 'Corr': ..., 'Mult_acc_7': ..., 'Loss': ...}
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.model.harvest import masked_mean
from khar_mmsa.training.callbacks import EarlyStopping, KeepBestWeights
from khar_mmsa.training.loop import Callback, Monitor, Order, StepOutput, Task, TrainingState, fit
from khar_mmsa.training.optim import parameter_groups, warmup_linear_decay_scheduler
from khar_mmsa.training.seeding import seed_everything
from khar_mmsa.mmsa_conventions import SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["TextOnlyConfig", "TextOnlyResult", "TextRegressor", "train_text_only"]



@dataclass
class TextOnlyConfig:
    pooling: str = "mean"            # 'mean' (masked mean of the last hidden states) or 'cls'
    epochs: int = 10                 # epoch cap
    early_stop: int = 3              # epochs without a better validation L1 before stopping
    batch_size: int = 32
    learning_rate: float = 5e-5      # AdamW lr of the encoder
    head_learning_rate: float = 1e-3  # AdamW lr of the linear head
    weight_decay: float = 0.01       # on weight matrices only
    warmup_ratio: float = 0.1        # linear warmup, then linear decay (the one schedule, training/optim.py)
    grad_clip: float = 1.0           # max global grad norm; <= 0 disables

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={self.pooling!r}: 'mean' or 'cls'")
        for name in ("epochs", "early_stop", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")


@dataclass
class TextOnlyResult:
    test: Dict[str, float]
    valid: Dict[str, float]
    best_epoch: int
    epochs_run: int
    history: List[Dict[str, float]] = field(default_factory=list)


class TextRegressor(nn.Module):
    """BERT-like encoder + Linear(hidden, 1) on the pooled last hidden state."""

    def __init__(self, encoder_folder: Union[str, Path], pooling: str = "mean") -> None:
        super().__init__()
        from transformers import AutoModel
        self.encoder = AutoModel.from_pretrained(str(encoder_folder), local_files_only=True)
        self.pooling = pooling
        self.head = nn.Linear(int(self.encoder.config.hidden_size), 1)

    def forward(self, text_bert: torch.Tensor) -> torch.Tensor:
        """text_bert: (b, 3, L) ids / attention mask / segment ids (MMSA's layout). Returns (b, 1)."""
        ids, mask, seg = text_bert[:, 0].long(), text_bert[:, 1].long(), text_bert[:, 2].long()
        width = max(int(mask.sum(dim=1).max()), 1)  # cut to the batch's longest text: same outputs
        ids, mask, seg = ids[:, :width], mask[:, :width], seg[:, :width]
        hidden = self.encoder(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = masked_mean(hidden, mask.bool())
        return self.head(pooled)


def _batches(n: int, batch_size: int, generator: Optional[torch.Generator]):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


class _Batches:
    """The train split's batches of indices, reshuffled by ``generator`` on every pass."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self):
        return _batches(self.n, self.batch_size, self.generator)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


def _predict(model: TextRegressor, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for idx in _batches(len(x), batch_size, None):
            out.append(model(x[idx].to(device)))
    return torch.cat(out).cpu()


class TextOnlyTask(Task):
    """The text-only floor as a :class:`~khar_mmsa.training.loop.Task`: L1 on the label trains,
    the validation L1 selects the best epoch."""

    name = "TEXT-ONLY"

    def __init__(self, model: TextRegressor, x: Dict[str, torch.Tensor], y: Dict[str, torch.Tensor],
                 batch_size: int, device: torch.device) -> None:
        self.model, self.x, self.y, self.batch_size, self.device = model, x, y, batch_size, device

    def training_step(self, idx: torch.Tensor, state: TrainingState) -> StepOutput:
        loss = F.l1_loss(self.model(self.x["train"][idx].to(self.device)), self.y["train"][idx].to(self.device))
        return StepOutput(loss, {"train_l1": loss}, weight=len(idx))

    def validate(self, state: TrainingState) -> Dict[str, float]:
        pred = _predict(self.model, self.x["valid"], self.batch_size, self.device)
        return {"Loss": F.l1_loss(pred, self.y["valid"]).item()}


class _History(Callback):
    """``{'epoch', 'train_l1', 'valid_l1'}`` per epoch, and the epoch's log line."""

    order = Order.BEFORE_SAVE

    def __init__(self) -> None:
        self.rows: List[Dict[str, float]] = []

    def on_epoch_end(self, state: TrainingState, loop) -> None:
        row = {"epoch": state.epoch, "train_l1": state.train["train_l1"], "valid_l1": state.valid["Loss"]}
        self.rows.append(row)
        logger.info(f"TEXT-ONLY epoch {state.epoch}: train L1 {row['train_l1']:.4f} valid L1 {row['valid_l1']:.4f}")


def train_text_only(feature_path: Union[str, Path], encoder_folder: Union[str, Path], dataset: str = "mosi",
                    seed: int = 1111, config: Optional[TextOnlyConfig] = None,
                    device: Union[str, torch.device] = "cpu", trusted: bool = False,
                    callbacks: Sequence[Callback] = ()) -> TextOnlyResult:
    """Fine-tune ``encoder_folder`` + a linear head on ``feature_path``'s train split.

    The best epoch by validation L1 is restored and scored on the test split with MMSA's metrics
    for ``dataset`` (plus ``'Loss'`` = test L1, as KHaR's trainer reports it).  ``callbacks`` run
    after the floor's own (:func:`khar_mmsa.training.loop.fit`)."""
    from khar_mmsa.registration import metrics_for
    from khar_mmsa.io.pickles import load_pickle

    cfg = config or TextOnlyConfig()
    device = torch.device(device)
    data = load_pickle(feature_path, trusted=trusted)
    x = {s: torch.as_tensor(np.asarray(data[s]["text_bert"], dtype=np.float32)) for s in SPLITS}
    y = {s: torch.as_tensor(np.asarray(data[s]["regression_labels"], dtype=np.float32)).view(-1, 1)
         for s in SPLITS}
    metrics = metrics_for(dataset)

    seed_everything(seed)
    model = TextRegressor(encoder_folder, cfg.pooling).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.learning_rate, cfg.weight_decay,
                                                   {"head": (model.head, cfg.head_learning_rate)}))
    batches = _Batches(len(x["train"]), cfg.batch_size, torch.Generator().manual_seed(seed))
    scheduler = warmup_linear_decay_scheduler(optimizer, cfg.epochs * len(batches), cfg.warmup_ratio)
    best, history = KeepBestWeights(), _History()
    state = fit(TextOnlyTask(model, x, y, cfg.batch_size, device), batches, optimizer,
                TrainingState(max_epochs=cfg.epochs), Monitor("Loss", lower_is_better=True), scheduler,
                cfg.grad_clip, [history, EarlyStopping(cfg.early_stop), best, *callbacks])
    if best.state is None:
        raise FloatingPointError(f"TEXT-ONLY: no epoch reached a finite validation L1 in {state.epoch} epoch(s)")
    model.load_state_dict(best.state)
    results = {}
    for split in ("valid", "test"):
        pred = _predict(model, x[split], cfg.batch_size, device)
        res = dict(metrics(pred, y[split]))
        res["Loss"] = round(F.l1_loss(pred, y[split]).item(), 4)
        results[split] = res
    logger.info(f"TEXT-ONLY test (best epoch {state.best_epoch}) >> "
                + " ".join(f"{k}: {v:.4f}" for k, v in results["test"].items()))
    return TextOnlyResult(test=results["test"], valid=results["valid"], best_epoch=state.best_epoch,
                          epochs_run=state.epoch, history=history.rows)
