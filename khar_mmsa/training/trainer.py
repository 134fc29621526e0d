"""KHaR's trainer, honouring MMSA's trainer contract (``do_train``/``do_test``).

AdamW with separate text-encoder and other learning rates, weight decay on weights only, linear
warmup then linear decay (Appendix B), gradient clipping, early stopping on the validation KeyEval
with an epoch cap, every loss term (raw and weighted) in the 'MMSA' log, a clear error on a
non-finite loss, the best checkpoint written atomically to ``args.model_save_path``, resume from
the last completed epoch after an interruption (``<model_save_path>.resume``) and a picture of the
run (:mod:`khar_mmsa.reporting.curves`).  The loop is :func:`khar_mmsa.training.loop.fit`; each of
those is one of its callbacks (:mod:`khar_mmsa.training.callbacks`).  Which files are kept or
removed is decided by :class:`khar_mmsa.training.checkpoints.SeedCheckpoint`, the one owner of their
life cycle (a whole run's finished seeds are the runner's: :mod:`khar_mmsa.runs.run_state`).

What trains comes from the typed ``config`` (the run's one checked
:class:`~khar_mmsa.config.KHaRConfig`, converted from MMSA's ``args`` where MMSA hands them over:
:func:`khar_mmsa.runs.model_and_trainer.khar_settings`); where files are and how the process
runs from ``args`` (``model_save_path``, ``device``, the feature files), to which the runner adds:

* ``seed``: the run's seed value (default: ``torch.initial_seed()``, the seed MMSA's
  ``setup_seed`` set; MMSA's ``cur_seed`` is only its position in the list);
* ``verbose_level``: MMSA_run's console level (0 hides the progress bars; default None);
* ``log_dir``: where the curves picture goes (default: the checkpoint's folder);
* ``callbacks``: extra :class:`~khar_mmsa.training.loop.Callback` objects (a tuner's report, a
  test's kill point), run after the trainer's own and after the resume state is saved (their
  default :class:`~khar_mmsa.training.loop.Order`), in adapter pretraining too.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from khar_mmsa.config import KHaRConfig
from khar_mmsa.config.size import PAPER_SIZE_FIELDS, PAPER_SIZE_MIN_TRAIN_CLIPS, SMALL_DATA_SIZE
from khar_mmsa.data.bucketing import bucketed_loader
from khar_mmsa.io.identity import feature_identity, fingerprint_of
from khar_mmsa.losses.criterion import KHaRCriterion, float32_outputs
from khar_mmsa.model.khar import KHaR, batch_inputs
from khar_mmsa.reporting.log_format import log_fields
from khar_mmsa.reporting.progress import progress, progress_enabled
from khar_mmsa.training.callbacks import (BestCheckpoint, EarlyStopping, EpochLog, EpochResults, ProgressBar,
                                          ResumeState, TrainingCurves)
from khar_mmsa.training.checkpoints import SeedCheckpoint
from khar_mmsa.training.loop import Callback, Monitor, StepOutput, Task, TrainingState, fit
from khar_mmsa.training.optim import make_adamw, parameter_groups, warmup_linear_decay_scheduler
from khar_mmsa.training.pretrain import default_adapter_path, harvest_knowledge
from khar_mmsa.training.seeding import seed_everything

logger = logging.getLogger(f"MMSA.{__name__}")

#: MMSA's metric function: ``(y_pred, y_true) -> {name: value}``.
Metrics = Callable[[torch.Tensor, torch.Tensor], Mapping[str, Any]]


def unwrap(model: nn.Module) -> KHaR:
    """The KHaR network inside MMSA's AMIO wrapper (or the network itself)."""
    inner = getattr(model, "Model", model)
    if not isinstance(inner, KHaR):
        raise TypeError(f"KHaRTrainer needs a KHaR model, got {type(inner).__name__}")
    return inner


def khar_parameter_groups(model: nn.Module, khar: KHaR, cfg: KHaRConfig) -> List[dict]:
    """AdamW groups: the text encoder's backbone at ``learning_rate_bert``, the rest at
    ``learning_rate``; no weight decay on biases, norms and positional tables."""
    special = {"bert": (khar.harvesters["t"].encoder, cfg.learning_rate_bert)} if "t" in khar.harvesters else {}
    return parameter_groups(model, cfg.learning_rate, cfg.weight_decay, special)


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bf16 where ``device`` runs it under autocast (a CUDA GPU with bf16, i.e. Ampere or newer, or
    the CPU), else None."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" else None


def warn_if_paper_size_on_small_data(cfg: KHaRConfig, train_clips: int) -> bool:
    """Warn (and return True) when the model has the paper's size (:data:`PAPER_SIZE_FIELDS` at their
    defaults) but the data is far smaller than any dataset the paper tuned it on: such a run usually
    learns a constant prediction.  The hint suggests the demo's smaller size (:data:`SMALL_DATA_SIZE`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(KHaRConfig)}
    paper_size = all(getattr(cfg, f) == defaults[f] for f in PAPER_SIZE_FIELDS)
    if not paper_size or train_clips >= PAPER_SIZE_MIN_TRAIN_CLIPS:
        return False
    smaller = " ".join(f"--set {k}={v}" for k, v in SMALL_DATA_SIZE.items())
    logger.warning(
        f"KHaR has the paper's size (Table 5: {', '.join(f'{f}={getattr(cfg, f)}' for f in PAPER_SIZE_FIELDS)}) "
        f"but trains on {train_clips} clips, fewer than the {PAPER_SIZE_MIN_TRAIN_CLIPS} of the smallest dataset "
        f"it was tuned on; at this size it usually learns a constant prediction. Shrink it (e.g. "
        f"{smaller}, as the demo does) or tune it on validation (-t).")
    return True


class KHaRTrainer(Task):
    """MMSA's trainer for ``'khar'``, and the :class:`~khar_mmsa.training.loop.Task` its
    :func:`~khar_mmsa.training.loop.fit` runs.  ``config``: the run's checked config (what trains);
    ``args``: MMSA's run arguments (where files are, the device, the runner's keys above);
    ``metrics``: MMSA's metric function for the dataset (``(y_pred, y_true) -> dict``); None: only
    ``Loss`` (the L1) is reported."""

    #: The runner leaves this seed's checkpoint, resume state and saved config to this trainer's
    #: :class:`SeedCheckpoint`.
    owns_checkpoint_life_cycle = True
    #: ``do_test`` reports MMSA's metrics for the dataset, then ``Loss``, as MMSA's trainers do
    #: (:mod:`khar_mmsa.runs.run_metrics` checks results headers against them before work).
    reports_mmsa_metrics = True
    name = "KHaR"

    def __init__(self, args: Mapping, config: KHaRConfig, metrics: Optional[Metrics] = None) -> None:
        if not isinstance(config, KHaRConfig):
            raise TypeError(f"KHaRTrainer's config is a KHaRConfig, not {type(config).__name__}: convert "
                            f"MMSA's args once with KHaRConfig.from_mmsa_args(args)")
        self.args = args
        self.cfg = config
        self.criterion = KHaRCriterion(self.cfg)
        self.metrics = metrics
        self.device = torch.device(args.get("device", "cpu"))
        self.save_path = Path(args["model_save_path"])
        self.checkpoint = SeedCheckpoint(self.save_path)  # owns checkpoint, resume state, config
        self.resume_path = self.checkpoint.resume_path
        self.monitor = Monitor.for_key(self.cfg.key_eval)  # what selects the best epoch
        self.lower_is_better = self.monitor.lower_is_better
        self.seed = int(args["seed"]) if args.get("seed") is not None else torch.initial_seed()
        self.verbose_level: Optional[int] = args.get("verbose_level")
        self.log_dir = Path(args.get("log_dir") or self.save_path.parent)
        #: callbacks the runner passed (a tuner's report, a test's kill point), after the trainer's own
        self.callbacks: List[Callback] = list(args.get("callbacks") or [])
        self.amp_dtype = autocast_dtype(self.device) if self.cfg.amp else None
        if self.cfg.amp and self.amp_dtype is None:
            logger.warning(f"amp=True, but {self.device} has no bf16 autocast: the forward pass runs in fp32")
        self._compiled: Optional[tuple] = None  # (model, torch.compile(model)) with compile=True

    # -- batches ---------------------------------------------------------------------------------
    def _forward(self, model: nn.Module, batch: Mapping) -> dict:
        """The raw outputs of one batch (bf16 under ``amp``: the criterion casts what it reads,
        :func:`~khar_mmsa.losses.criterion.float32_outputs`, and so does evaluation)."""
        text, audio, vision, audio_lengths, vision_lengths = batch_inputs(batch, self.device)
        net = self._compiled_model(model)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return net(text, audio, vision, audio_lengths=audio_lengths, vision_lengths=vision_lengths)

    def _compiled_model(self, model: nn.Module) -> nn.Module:
        """``model``, or with ``compile=True`` its ``torch.compile`` wrapper (made once per model;
        it shares the parameters, so checkpoints are still written from ``model``)."""
        if not self.cfg.compile:
            return model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model))
        return self._compiled[1]

    def run_seed(self) -> int:
        """The seed of this run (``args['seed']``, else the one MMSA's ``setup_seed`` set)."""
        return self.seed

    def data_identity(self, dataloader: Mapping) -> dict:
        """What identifies the training data, by content: SHA-256 of each feature file MMSA reads
        (main, feature_T/A/V), the loader settings that change what it makes of them, and the
        split sizes -- no paths or mtimes (khar_mmsa.io.identity).  Saved adapters and resume files
        made from other data are never reused; the same bytes anywhere are the same data."""
        identity = feature_identity(self.args)
        identity["sizes"] = {k: len(v.dataset) for k, v in dataloader.items() if hasattr(v, "dataset")}
        return identity

    def checkpoint_config(self) -> dict:
        """The config saved beside the checkpoint: its architecture sections
        (``KHaRConfig.architecture``), what ``MMSA_test`` rebuilds the network from."""
        return {"model_name": "khar", "dataset_name": self.cfg.dataset_name,
                "config": self.cfg.architecture()}

    def _fingerprint(self) -> str:
        """The resume state's key: every section of the config, the seed and the data."""
        return fingerprint_of(self.cfg, seed=self.seed, data=self._data_identity)

    def curves_path(self) -> Path:
        """``<log_dir>/khar-<dataset>-curves.png``, beside MMSA's ``khar-<dataset>.log``."""
        return self.log_dir / f"khar-{self.cfg.dataset_name}-curves.png"

    # -- training --------------------------------------------------------------------------------
    def do_train(self, model: nn.Module, dataloader: Mapping, return_epoch_results: bool = False):
        cfg = self.cfg
        khar = unwrap(model)
        show = progress_enabled(self.verbose_level)
        self._data_identity = self.data_identity(dataloader)
        warn_if_paper_size_on_small_data(cfg, len(dataloader["train"].dataset))
        if cfg.pretrain_adapters:
            path = Path(cfg.pretrained_adapters_path) if cfg.pretrained_adapters_path else \
                default_adapter_path(self.save_path)
            harvest_knowledge(khar, dataloader, cfg, path, self.device, seed=self.seed, data=self._data_identity,
                              show_progress=show, callbacks=self.callbacks)
            model.to(self.device)
            # The main stage starts from the same RNG state whether the adapters were pretrained
            # now or read from an earlier run's file, so a rerun after a kill matches a full run.
            seed_everything(self.seed)
        optimizer = make_adamw(khar_parameter_groups(model, khar, cfg))
        train_loader = dataloader["train"]
        if cfg.length_bucketing:
            train_loader = bucketed_loader(train_loader, cfg.batch_size, self.seed, cfg.length_bucket_pool)
        scheduler = warmup_linear_decay_scheduler(optimizer, cfg.epochs * len(train_loader), cfg.warmup_ratio)
        self.model, self._valid_loader = model, dataloader["valid"]
        self._new_epoch()
        # fit runs them by their declared order (training.loop.Order), not by their place here
        callbacks: List[Callback] = [
            ProgressBar("KHaR epoch {epoch}/{epochs}", show),
            BestCheckpoint(self.checkpoint, self.checkpoint_config()),
            TrainingCurves(self.curves_path(), cfg.key_eval, f"KHaR on {cfg.dataset_name}, seed {self.seed}",
                           enabled=cfg.save_curves),
            EpochLog(self._epoch_line, first=(
                f"KHaR trains up to {cfg.epochs} epochs and stops after {cfg.early_stop} without a better "
                f"valid {cfg.key_eval} ({'lower' if self.lower_is_better else 'higher'} is better)"),
                stopped=lambda s: f"Early stop after {s.epoch} epochs: no better {cfg.key_eval} for {cfg.early_stop}"),
            EarlyStopping(cfg.early_stop)]
        if return_epoch_results:
            callbacks.append(EpochResults(lambda: self.do_test(model, dataloader["test"], mode="TEST")))
        callbacks.append(ResumeState(self.checkpoint, self._fingerprint(), "KHaR", cfg.key_eval,
                                     save=cfg.save_resume_state))
        state = fit(self, train_loader, optimizer, TrainingState(max_epochs=cfg.epochs),
                    self.monitor, scheduler, cfg.grad_clip, callbacks + self.callbacks)
        return state.epoch_results if return_epoch_results else None

    def _epoch_line(self, state: TrainingState) -> str:
        cfg = self.cfg
        waited = state.epochs_without_improvement
        return (f"EPOCH-(khar) seed {self.seed} epoch {state.epoch}/{cfg.epochs}: valid "
                f"{cfg.key_eval} {state.valid[cfg.key_eval]:.4f} | best {state.best:.4f} at epoch {state.best_epoch}"
                + (f" | {waited}/{cfg.early_stop} epochs without improvement" if waited else ""))

    def _new_epoch(self) -> None:
        """Empty the per-epoch buffers (predictions, labels, expert load; all kept on the device)."""
        self._preds: List[torch.Tensor] = []
        self._trues: List[torch.Tensor] = []
        self._expert_load: Dict[str, torch.Tensor] = {}

    def training_step(self, batch: Mapping, state: TrainingState) -> StepOutput:
        if state.step == 1:  # the epoch's schedules: freeze_bert_epochs (model), mib_beta_warmup_epochs (criterion)
            unwrap(self.model).set_epoch(state.epoch)
            self.criterion.set_epoch(state.epoch)
        labels = batch["labels"]["M"].to(self.device).view(-1, 1)
        outputs = self._forward(self.model, batch)
        total, raw, weighted = self.criterion(outputs, labels)
        for m, counts in (outputs.get("expert_load") or {}).items():
            self._expert_load[m] = self._expert_load.get(m, 0) + counts
        self._preds.append(outputs["M"].detach().float())
        self._trues.append(labels)
        terms = {"total": total, **{f"raw/{k}": v for k, v in raw.items()},
                 **{f"weighted/{k}": v for k, v in weighted.items()}}
        return StepOutput(total, terms)

    def training_epoch_end(self, terms: Dict[str, float], state: TrainingState) -> Dict[str, Any]:
        """Log the epoch's loss terms and training metrics; the summary MMSA's epoch results keep."""
        log = dict(terms)
        pred, true = torch.cat(self._preds).cpu(), torch.cat(self._trues).cpu()
        results = self._score(pred, true)
        head = f"TRAIN-(khar) epoch {state.epoch} >>"
        logger.info(f"{head} loss {log['total']:.4f} (the sum of the weighted terms)")
        log_fields(logger, f"{head} weighted", {k[9:]: v for k, v in log.items() if k.startswith("weighted/")},
                   sep="=")
        log_fields(logger, f"{head} raw", {k[4:]: v for k, v in log.items() if k.startswith("raw/")}, sep="=")
        log_fields(logger, head, results, sep=": ")
        results["Loss"] = round(log["total"], 4)
        results.update(log)
        # share of the routing decisions each expert got, per modality (sums to 1)
        results["expert_load"] = {m: (c / c.sum().clamp_min(1)).cpu().tolist() for m, c in self._expert_load.items()}
        self._new_epoch()
        return results

    def validate(self, state: TrainingState) -> Dict[str, Any]:
        return self.do_test(self.model, self._valid_loader, mode="VAL")

    def non_finite_error(self, epoch: int, step: int, terms: Mapping[str, float]) -> Exception:
        bad = [k[4:] for k, v in terms.items() if k.startswith("raw/") and not np.isfinite(v)] or ["total"]
        values = [terms["total" if k == "total" else f"raw/{k}"] for k in bad]
        return FloatingPointError(
            f"KHaR loss became non-finite at epoch {epoch}, step {step}: term(s) {bad} = {values}. Check the "
            f"features for NaN/inf, or lower learning_rate ({self.cfg.learning_rate}) / learning_rate_bert "
            f"({self.cfg.learning_rate_bert}).")

    def _score(self, pred: torch.Tensor, true: torch.Tensor) -> Dict[str, float]:
        """MMSA's metrics as plain numbers (not np.float64); none without a metric function."""
        if self.metrics is None:
            return {}
        return {k: float(v) for k, v in self.metrics(pred, true).items()}

    # -- evaluation ------------------------------------------------------------------------------
    def do_test(self, model: nn.Module, dataloader, mode: str = "VAL", return_sample_results: bool = False) -> dict:
        model.eval()
        preds, trues, ids = [], [], []
        features: Dict[str, list] = {"Feature_t": [], "Feature_a": [], "Feature_v": [], "Feature_f": []}
        with torch.no_grad():
            for batch in progress(dataloader, f"KHaR {mode}", progress_enabled(self.verbose_level)):
                outputs = float32_outputs(self._forward(model, batch))
                preds.append(outputs["M"])  # stays on the device until the pass ends
                trues.append(batch["labels"]["M"].view(-1, 1))
                if return_sample_results:
                    ids.extend(batch["id"])
                    for m, v in outputs["unimodal"].items():
                        features[f"Feature_{m}"].append(v.cpu().numpy())
                    features["Feature_f"].append(outputs["fused"].cpu().numpy())
        pred, true = torch.cat(preds).cpu(), torch.cat(trues)
        results = self._score(pred, true)
        results["Loss"] = round(torch.nn.functional.l1_loss(pred, true).item(), 4)
        log_fields(logger, f"{mode}-(khar) >>", results, sep=": ")
        if return_sample_results:
            results["Ids"] = ids
            results["SResults"] = pred.view(-1).numpy()
            results["Features"] = {k: np.concatenate(v) for k, v in features.items() if v}
            results["Labels"] = true.view(-1).tolist()
        return results
