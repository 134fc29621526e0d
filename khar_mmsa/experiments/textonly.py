"""The text-only floor: a text encoder fine-tuned with a linear head, scored with MMSA's metrics.

A baseline for the real-transcripts benchmark: the same encoder KHaR uses (e.g. all-MiniLM-L6-v2),
fine-tuned end to end with one ``Linear(hidden, 1)`` on its pooled output, L1 loss on the
sentiment label, on the same splits of the same MMSA feature pickle (``text_bert`` ids), model
selection and early stopping on the validation L1 (MMSA's ``KeyEval='Loss'`` for MOSI), and the
test set scored by MMSA's metric function (:func:`khar_mmsa.integration.metrics_for`), so its
numbers read exactly like an ``MMSA_run`` row.

Pooling: ``'mean'`` (masked mean of the last hidden states, the pooling all-MiniLM-L6-v2 was
trained with) or ``'cls'`` (the ``[CLS]`` state).

    from khar_mmsa.experiments.textonly import TextOnlyConfig, train_text_only
    result = train_text_only('mosi_text.pkl', minilm_folder, 'mosi', seed=1111)
    result.test   # {'MAE': ..., 'Corr': ..., 'Mult_acc_7': ..., 'Loss': ...}
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.model.harvest import masked_mean

logger = logging.getLogger("MMSA")

__all__ = ["TextOnlyConfig", "TextOnlyResult", "TextRegressor", "train_text_only"]

SPLITS = ("train", "valid", "test")


@dataclass
class TextOnlyConfig:
    pooling: str = "mean"            # 'mean' (masked mean of the last hidden states) or 'cls'
    epochs: int = 10                 # epoch cap
    early_stop: int = 3              # epochs without a better validation L1 before stopping
    batch_size: int = 32
    learning_rate: float = 5e-5      # AdamW lr of the encoder
    head_learning_rate: float = 1e-3  # AdamW lr of the linear head
    weight_decay: float = 0.01       # on weight matrices only
    warmup_ratio: float = 0.1        # linear warmup, then linear decay (as KHaR's trainer)
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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _batches(n: int, batch_size: int, generator: Optional[torch.Generator]):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _predict(model: TextRegressor, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for idx in _batches(len(x), batch_size, None):
            out.append(model(x[idx].to(device)).cpu())
    return torch.cat(out)


def train_text_only(feature_path: Union[str, Path], encoder_folder: Union[str, Path], dataset: str = "mosi",
                    seed: int = 1111, config: Optional[TextOnlyConfig] = None,
                    device: Union[str, torch.device] = "cpu", trusted: bool = False) -> TextOnlyResult:
    """Fine-tune ``encoder_folder`` + a linear head on ``feature_path``'s train split.

    The best epoch by validation L1 is restored and scored on the test split with MMSA's metrics
    for ``dataset`` (plus ``'Loss'`` = test L1, as KHaR's trainer reports it)."""
    from khar_mmsa.integration import metrics_for
    from khar_mmsa.io.safe_io import load_pickle

    cfg = config or TextOnlyConfig()
    device = torch.device(device)
    data = load_pickle(feature_path, trusted=trusted)
    x = {s: torch.as_tensor(np.asarray(data[s]["text_bert"], dtype=np.float32)) for s in SPLITS}
    y = {s: torch.as_tensor(np.asarray(data[s]["regression_labels"], dtype=np.float32)).view(-1, 1)
         for s in SPLITS}
    metrics = metrics_for(dataset)

    _seed_everything(seed)
    model = TextRegressor(encoder_folder, cfg.pooling).to(device)
    head_ids = {id(p) for p in model.head.parameters()}
    groups: Dict[tuple, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault((id(p) in head_ids, p.ndim < 2), []).append(p)
    optimizer = torch.optim.AdamW([
        {"params": ps, "lr": cfg.head_learning_rate if is_head else cfg.learning_rate,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (is_head, no_decay), ps in sorted(groups.items())])
    steps_per_epoch = -(-len(x["train"]) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(round(total * cfg.warmup_ratio)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    generator = torch.Generator().manual_seed(seed)

    best, best_epoch, best_state = float("inf"), 0, None
    history: List[Dict[str, float]] = []
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loss_sum, count = 0.0, 0
        for idx in _batches(len(x["train"]), cfg.batch_size, generator):
            pred = model(x["train"][idx].to(device))
            loss = F.l1_loss(pred, y["train"][idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            count += len(idx)
        valid_l1 = F.l1_loss(_predict(model, x["valid"], cfg.batch_size, device), y["valid"]).item()
        history.append({"epoch": epoch, "train_l1": loss_sum / count, "valid_l1": valid_l1})
        logger.info(f"TEXT-ONLY epoch {epoch}: train L1 {loss_sum / count:.4f} valid L1 {valid_l1:.4f}")
        if valid_l1 < best - 1e-6:
            best, best_epoch = valid_l1, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.early_stop:
            break
    model.load_state_dict(best_state)
    results = {}
    for split in ("valid", "test"):
        pred = _predict(model, x[split], cfg.batch_size, device)
        res = dict(metrics(pred, y[split]))
        res["Loss"] = round(F.l1_loss(pred, y[split]).item(), 4)
        results[split] = res
    logger.info(f"TEXT-ONLY test (best epoch {best_epoch}) >> "
                + " ".join(f"{k}: {v:.4f}" for k, v in results["test"].items()))
    return TextOnlyResult(test=results["test"], valid=results["valid"], best_epoch=best_epoch,
                          epochs_run=epoch, history=history)
