"""KHaR's trainer, honouring MMSA's trainer contract (``do_train``/``do_test``).

AdamW with separate text-encoder and other learning rates, weight decay on weights only, linear
warmup then linear decay (Appendix B), gradient clipping, early stopping on the validation KeyEval
with an epoch cap, tqdm progress (:mod:`khar_mmsa.reporting.progress`), every loss term (raw and weighted) in the
'MMSA' log, a clear error on a non-finite loss, the best checkpoint written atomically to
``args.model_save_path``, resume from the last completed epoch after an interruption
(``<model_save_path>.resume``) and a picture of the run (:mod:`khar_mmsa.reporting.curves`).  Which of those
files are kept or removed is decided by :class:`khar_mmsa.integration.checkpoints.SeedCheckpoint`, the one
owner of their life cycle; :meth:`KHaRTrainer.run_key` keys a whole ``MMSA_run`` call's finished seeds.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from khar_mmsa.data.bucketing import bucketed_loader
from khar_mmsa.config import KHaRConfig, fingerprint
from khar_mmsa.losses.criterion import KHaRCriterion
from khar_mmsa.io.identity import config_identity, feature_identity
from khar_mmsa.reporting.log_format import log_fields, plain_value
from khar_mmsa.integration.registration import metrics_for
from khar_mmsa.integration.checkpoints import SeedCheckpoint
from khar_mmsa.model.khar import KHaR, batch_inputs
from khar_mmsa.training.optim import make_adamw
from khar_mmsa.training.pretrain import default_adapter_path, harvest_knowledge
from khar_mmsa.reporting.progress import progress, progress_enabled

logger = logging.getLogger("MMSA")

LOWER_IS_BETTER = ("Loss", "MAE")


def unwrap(model: nn.Module) -> KHaR:
    """The KHaR network inside MMSA's AMIO wrapper (or the network itself)."""
    inner = getattr(model, "Model", model)
    if not isinstance(inner, KHaR):
        raise TypeError(f"KHaRTrainer needs a KHaR model, got {type(inner).__name__}")
    return inner


def parameter_groups(model: nn.Module, khar: KHaR, cfg: KHaRConfig) -> List[dict]:
    """AdamW groups by rule: text-encoder backbone vs the rest, and no weight decay on biases,
    norms and positional tables (1-D parameters or learned positions). Frozen parameters are left out."""
    backbone = set()
    if "t" in khar.harvesters:
        backbone = {id(p) for p in khar.harvesters["t"].encoder.parameters()}
    groups: Dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bert = id(p) in backbone
        no_decay = p.ndim < 2 or name.endswith("position")
        groups.setdefault((is_bert, no_decay), []).append(p)
    out = []
    for (is_bert, no_decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": cfg.learning_rate_bert if is_bert else cfg.learning_rate,
                    "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                    "name": f"{'bert' if is_bert else 'other'}{'-no_decay' if no_decay else ''}"})
    return out


def warmup_linear_decay(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warmup from 1/warmup_steps (never 0) to 1, then linear decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


def _rng_state() -> dict:
    """RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _float32(obj):
    """Floating tensors of a (nested) output dict as fp32: losses are computed outside autocast."""
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    if torch.is_tensor(obj) and obj.is_floating_point():
        return obj.float()
    return obj


def _reseed(seed: int) -> None:
    """Seed torch, numpy and random as MMSA's ``setup_seed`` does (numpy takes 32 bits)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class KHaRTrainer:
    #: ``MMSA_run`` leaves checkpoint, resume state and finished seeds to this trainer's
    #: :class:`SeedCheckpoint` and :meth:`run_key` (see :mod:`khar_mmsa.integration.checkpoints`).
    owns_checkpoint_life_cycle = True

    def __init__(self, args: Mapping) -> None:
        self.args = args
        self.cfg = KHaRConfig.from_mmsa_args(args)
        self.criterion = KHaRCriterion(self.cfg)
        self.metrics = metrics_for(self.cfg.dataset_name)
        self.device = torch.device(args.get("device", "cpu"))
        self.save_path = Path(args["model_save_path"])
        self.checkpoint = SeedCheckpoint(self.save_path)  # owns checkpoint, resume state, config
        self.resume_path = self.checkpoint.resume_path
        self.lower_is_better = self.cfg.key_eval in LOWER_IS_BETTER
        #: Called after each epoch's validation as ``on_epoch_end(epoch, val_results)`` (e.g. to
        #: report the validation KeyEval to a tuner); None: no call.
        self.on_epoch_end: Optional[Callable[[int, Mapping], None]] = None
        self._show_progress = False

    # -- batches ---------------------------------------------------------------------------------
    def _forward(self, model: nn.Module, batch: Mapping) -> dict:
        text, audio, vision, audio_lengths, vision_lengths = batch_inputs(batch, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
            outputs = model(text, audio, vision, audio_lengths=audio_lengths, vision_lengths=vision_lengths)
        return _float32(outputs) if self.cfg.amp else outputs

    @staticmethod
    def run_seed() -> int:
        """The seed MMSA set for this run (``setup_seed`` calls ``torch.manual_seed``). MMSA's
        ``cur_seed`` is only the seed's position in the list, the same for two calls with other seeds."""
        return torch.initial_seed()

    def data_identity(self, dataloader: Mapping) -> dict:
        """What identifies the training data, by content: SHA-256 of each feature file MMSA reads
        (main, feature_T/A/V), the loader settings that change what it makes of them, and the
        split sizes -- no paths or mtimes (khar_mmsa.io.identity).  Saved adapters and resume files
        made from other data are never reused; the same bytes anywhere are the same data."""
        identity = feature_identity(self.args)
        identity["sizes"] = {k: len(v.dataset) for k, v in dataloader.items() if hasattr(v, "dataset")}
        return identity

    @classmethod
    def run_key(cls, args: Mapping, dataloader: Mapping, seeds: list) -> str:
        """What identifies a whole ``MMSA_run`` call: config, data identity and seed list (a rerun
        with the same key skips the seeds it already finished)."""
        trainer = cls(args)
        return fingerprint({"model": "khar", "config": config_identity(trainer.cfg),
                            "data": trainer.data_identity(dataloader), "seeds": list(seeds)})

    def checkpoint_config(self) -> dict:
        """The config saved beside the checkpoint (``MMSA_test`` rebuilds the model from it)."""
        return {"model_name": "khar", "dataset_name": self.cfg.dataset_name,
                "config": dataclasses.asdict(self.cfg)}  # real paths: MMSA_test rebuilds from it

    def _fingerprint(self) -> str:
        fields = config_identity(self.cfg)
        fields["seed"] = self.run_seed()
        fields["data"] = self._data_identity
        return fingerprint(fields)

    # -- run options ---------------------------------------------------------------------------
    def _run_options(self) -> dict:
        """``verbose_level`` and ``log_dir`` of the ``MMSA_run`` call running this trainer (MMSA keeps
        them out of ``args``); outside ``MMSA_run``: no level, the checkpoint's folder."""
        return {"verbose_level": self.args.get("verbose_level"),
                "log_dir": Path(self.args.get("log_dir") or self.save_path.parent)}

    def curves_path(self) -> Path:
        """``<log_dir>/khar-<dataset>-curves.png``, beside MMSA's ``khar-<dataset>.log``."""
        return self._run_options()["log_dir"] / f"khar-{self.cfg.dataset_name}-curves.png"

    # -- training --------------------------------------------------------------------------------
    def do_train(self, model: nn.Module, dataloader: Mapping, return_epoch_results: bool = False):
        cfg = self.cfg
        khar = unwrap(model)
        show = self._show_progress = progress_enabled(self._run_options()["verbose_level"])
        self._data_identity = self.data_identity(dataloader)
        if cfg.pretrain_adapters:
            path = Path(cfg.pretrained_adapters_path) if cfg.pretrained_adapters_path else \
                default_adapter_path(self.save_path)
            harvest_knowledge(khar, dataloader, cfg, path, self.device, seed=self.run_seed(),
                              data=self._data_identity, show_progress=show)
            model.to(self.device)
            # The main stage starts from the same RNG state whether the adapters were pretrained
            # now or read from an earlier run's file, so a rerun after a kill matches a full run.
            _reseed(self.run_seed())
        optimizer = make_adamw(parameter_groups(model, khar, cfg))
        train_loader = dataloader["train"]
        if cfg.length_bucketing:
            train_loader = bucketed_loader(train_loader, cfg.batch_size, self.run_seed(), cfg.length_bucket_pool)
        total_steps = cfg.epochs * len(train_loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(total_steps, cfg.warmup_ratio))
        state = {"epoch": 0, "best": None, "best_epoch": 0, "history": [],
                 "epoch_results": {"train": [], "valid": [], "test": []}}
        self._maybe_resume(model, optimizer, scheduler, state)
        self.checkpoint.save_config(self.checkpoint_config())
        seed = self.args.get("cur_seed")
        logger.info(f"KHaR trains up to {cfg.epochs} epochs and stops after {cfg.early_stop} without a better "
                    f"valid {cfg.key_eval} ({'lower' if self.lower_is_better else 'higher'} is better)")

        while state["epoch"] < cfg.epochs and not self._stopped_early(state):
            state["epoch"] += 1
            epoch = state["epoch"]
            if hasattr(train_loader.batch_sampler, "set_epoch"):
                train_loader.batch_sampler.set_epoch(epoch)
            train_log = self._train_epoch(model, train_loader, optimizer, scheduler, epoch)
            val_results = self.do_test(model, dataloader["valid"], mode="VAL")
            current = val_results[cfg.key_eval]
            best = state["best"]
            better = best is None or (current < best - 1e-6 if self.lower_is_better else current > best + 1e-6)
            if better:
                state["best"], state["best_epoch"] = current, epoch
                self.checkpoint.save_best({k: v.detach().cpu() for k, v in model.state_dict().items()})
            state["history"].append({"epoch": epoch, "valid": float(current),
                                     "raw": {k[4:]: v for k, v in train_log.items() if k.startswith("raw/")},
                                     "expert_load": train_log.pop("expert_load", {})})
            waited = epoch - state["best_epoch"]
            logger.info(f"EPOCH-(khar) seed {seed} epoch {epoch}/{cfg.epochs}: valid {cfg.key_eval} {current:.4f} | "
                        f"best {state['best']:.4f} at epoch {state['best_epoch']}"
                        + (f" | {waited}/{cfg.early_stop} epochs without improvement" if waited else ""))
            if return_epoch_results:
                state["epoch_results"]["train"].append(train_log)
                state["epoch_results"]["valid"].append(val_results)
                state["epoch_results"]["test"].append(self.do_test(model, dataloader["test"], mode="TEST"))
            if cfg.save_resume_state:
                self._save_resume(model, optimizer, scheduler, state)
            if self.on_epoch_end is not None:  # after the epoch is saved, so a stop here loses nothing
                self.on_epoch_end(epoch, val_results)
        if self._stopped_early(state):
            logger.info(f"Early stop after {state['epoch']} epochs: no better {cfg.key_eval} for {cfg.early_stop}")
        self.checkpoint.finish_training()
        self._save_curves(state)
        return state["epoch_results"] if return_epoch_results else None

    def _save_curves(self, state: Mapping) -> None:
        if not self.cfg.save_curves:
            return
        from khar_mmsa.reporting.curves import save_training_curves
        path = self.curves_path()
        title = f"KHaR on {self.cfg.dataset_name}, seed {self.run_seed()}"
        if save_training_curves(state.get("history") or [], path, key_eval=self.cfg.key_eval,
                                best_epoch=state["best_epoch"], title=title):
            logger.info(f"Training curves saved to {path}")

    def _stopped_early(self, state: Mapping) -> bool:
        """No better validation KeyEval for ``early_stop`` epochs (checked again after a resume)."""
        return state["epoch"] > 0 and state["epoch"] - state["best_epoch"] >= self.cfg.early_stop

    def _train_epoch(self, model: nn.Module, loader, optimizer, scheduler, epoch: int) -> Dict[str, float]:
        model.train()
        sums: Dict[str, float] = {}
        expert_load: Dict[str, torch.Tensor] = {}
        preds, trues = [], []
        steps = 0
        bar = progress(loader, f"KHaR epoch {epoch}/{self.cfg.epochs}", self._show_progress)
        for step, batch in enumerate(bar):
            labels = batch["labels"]["M"].to(self.device).view(-1, 1)
            outputs = self._forward(model, batch)
            total, raw, weighted = self.criterion(outputs, labels)
            if not torch.isfinite(total):
                bad = [k for k, v in raw.items() if not torch.isfinite(v)]
                raise FloatingPointError(
                    f"KHaR loss became non-finite at epoch {epoch}, step {step + 1}: term(s) {bad or ['total']} "
                    f"= {[raw[k].item() for k in bad]}. Check the features for NaN/inf, or lower learning_rate "
                    f"({self.cfg.learning_rate}) / learning_rate_bert ({self.cfg.learning_rate_bert}).")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            steps += 1
            sums["total"] = sums.get("total", 0.0) + total.item()
            for k in raw:
                sums[f"raw/{k}"] = sums.get(f"raw/{k}", 0.0) + raw[k].item()
                sums[f"weighted/{k}"] = sums.get(f"weighted/{k}", 0.0) + weighted[k].item()
            for m, counts in (outputs.get("expert_load") or {}).items():
                expert_load[m] = expert_load.get(m, 0) + counts  # stays on the device until the end
            preds.append(outputs["M"].detach().cpu())
            trues.append(labels.cpu())
        log = {k: v / max(steps, 1) for k, v in sums.items()}
        results = self.metrics(torch.cat(preds), torch.cat(trues))
        head = f"TRAIN-(khar) epoch {epoch} >>"
        logger.info(f"{head} loss {log['total']:.4f} (the sum of the weighted terms)")
        log_fields(logger, f"{head} weighted", {k[9:]: v for k, v in log.items() if k.startswith("weighted/")},
                   sep="=")
        log_fields(logger, f"{head} raw", {k[4:]: v for k, v in log.items() if k.startswith("raw/")}, sep="=")
        log_fields(logger, head, results, sep=": ")
        results = {k: float(v) for k, v in results.items()}
        results["Loss"] = round(log["total"], 4)
        results.update(log)
        # share of the routing decisions each expert got, per modality (sums to 1)
        results["expert_load"] = {m: (c / c.sum().clamp_min(1)).cpu().tolist() for m, c in expert_load.items()}
        return results

    # -- resume ----------------------------------------------------------------------------------
    def _save_resume(self, model, optimizer, scheduler, state: Mapping) -> None:
        self.checkpoint.save_resume({"fingerprint": self._fingerprint(), "model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                     "state": plain_value(dict(state)), "rng": _rng_state()})

    def _maybe_resume(self, model, optimizer, scheduler, state: dict) -> None:
        """Continue from the resume state when :class:`SeedCheckpoint` keeps it (same config, seed
        and data, best checkpoint present); otherwise it has removed what an earlier run left."""
        saved = self.checkpoint.resume(self._fingerprint())
        if saved is None:
            return
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.update(saved["state"])
        _set_rng_state(saved["rng"])
        logger.info(f"Resuming KHaR from {self.resume_path} after epoch {state['epoch']} "
                    f"(best {self.cfg.key_eval}={state['best']} at epoch {state['best_epoch']})")

    # -- evaluation ------------------------------------------------------------------------------
    def do_test(self, model: nn.Module, dataloader, mode: str = "VAL", return_sample_results: bool = False) -> dict:
        model.eval()
        preds, trues, ids = [], [], []
        features: Dict[str, list] = {"Feature_t": [], "Feature_a": [], "Feature_v": [], "Feature_f": []}
        show = progress_enabled(self._run_options()["verbose_level"])
        with torch.no_grad():
            for batch in progress(dataloader, f"KHaR {mode}", show):
                outputs = self._forward(model, batch)
                preds.append(outputs["M"].cpu())
                trues.append(batch["labels"]["M"].view(-1, 1))
                if return_sample_results:
                    ids.extend(batch["id"])
                    for m, v in outputs["unimodal"].items():
                        features[f"Feature_{m}"].append(v.cpu().numpy())
                    features["Feature_f"].append(outputs["fused"].cpu().numpy())
        pred, true = torch.cat(preds), torch.cat(trues)
        results = {k: float(v) for k, v in self.metrics(pred, true).items()}  # plain numbers, not np.float64
        results["Loss"] = round(torch.nn.functional.l1_loss(pred, true).item(), 4)
        log_fields(logger, f"{mode}-(khar) >>", results, sep=": ")
        if return_sample_results:
            results["Ids"] = ids
            results["SResults"] = pred.view(-1).numpy()
            results["Features"] = {k: np.concatenate(v) for k, v in features.items() if v}
            results["Labels"] = true.view(-1).tolist()
        return results
