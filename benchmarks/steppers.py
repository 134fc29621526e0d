"""The models' training steps of the speed benchmarks on one fixed MOSI-shaped batch: the batch
(:func:`make_batch`), each model's MMSA args (:func:`build_args`) and :class:`Stepper`, whose
``step()`` is one training step as that model's MMSA trainer does it (see benchmarks/speed.py's
docstring for what each step holds)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from . import common

SMOKE_KHAR = {"modal_dim": 16, "encoder_layers": 1, "encoder_heads": 2, "encoder_ff_dim": 16, "text_adapters": 1,
              "av_adapters": 1, "adapter_heads": 2, "adapter_inner_layers": 1, "expert_hidden_dim": 16,
              "fine_grained_dim": 8, "fusion_hidden_dim": 16, "latent_dim": 8}



# ---- batch -----------------------------------------------------------------------------------
def make_batch(encoder: Path, batch: int, seq_lens: Sequence[int]) -> Dict[str, Any]:
    """One batch with MOSI feature widths: token ids (B, 3, L), encoder features (B, L, H), audio,
    vision, lengths, labels (numpy/torch CPU tensors, shared by all models)."""
    import torch
    from transformers import AutoModel

    from khar_mmsa.data.planted import planted_data
    data, _ = planted_data("mosi", sizes=(batch, 1, 1), seed=0, seq_lens=tuple(seq_lens), tokenizer=str(encoder))
    d = data["train"]
    text_bert = torch.as_tensor(d["text_bert"])
    bert = AutoModel.from_pretrained(str(encoder), local_files_only=True).eval()
    with torch.no_grad():
        ids, mask, seg = text_bert[:, 0].long(), text_bert[:, 1].long(), text_bert[:, 2].long()
        feats = bert(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
        feats = feats * mask.unsqueeze(-1)
    return {"text_bert": text_bert, "text": feats.contiguous(), "audio": torch.as_tensor(d["audio"]),
            "vision": torch.as_tensor(d["vision"]), "audio_lengths": torch.as_tensor(d["audio_lengths"]),
            "vision_lengths": torch.as_tensor(d["vision_lengths"]),
            "labels": torch.as_tensor(d["regression_labels"]).view(-1, 1)}


# ---- models and their training steps -----------------------------------------------------------
def build_args(model: str, encoder: Path, batch: Mapping[str, Any], device: Any, mode: str,
               khar_overrides: Optional[Mapping[str, Any]] = None) -> Any:
    import khar_mmsa  # noqa: F401  - registers 'khar' and patches get_config_regression
    from MMSA.config import get_config_regression
    args = get_config_regression(model, "mosi")
    hidden = common.encoder_hidden_size(encoder)
    uses_bert = model in ("khar", "self_mm")
    args.update({
        "device": device, "train_mode": "regression", "cur_seed": 1, "model_save_path": "/dev/null",
        "custom_feature": None, "feature_T": None, "feature_A": None, "feature_V": None,
        "feature_dims": [768 if uses_bert else hidden, batch["audio"].shape[2], batch["vision"].shape[2]],
        "seq_lens": [batch["text_bert"].shape[2], batch["audio"].shape[1], batch["vision"].shape[1]],
        "train_samples": batch["labels"].shape[0],
    })
    if model in ("khar", "self_mm"):
        args["pretrained"] = str(encoder)
    if model == "self_mm":
        args.update({"text_out": hidden, "update_epochs": 1})
    if model == "mult":
        args["update_epochs"] = 1
    if model == "khar" and mode == "smoke":
        args.update(SMOKE_KHAR)
    if model == "khar" and khar_overrides:
        args.update(khar_overrides)
    return args


class Stepper:
    """``step()`` runs one training step of one model on the fixed batch."""

    def __init__(self, model_name: str, encoder: Path, batch: Mapping[str, Any], device: Any, mode: str,
                 khar_overrides: Optional[Mapping[str, Any]] = None,
                 swap: Optional[Callable[[Any], None]] = None) -> None:
        """``swap``: called with the built model before its optimizer exists (benchmarks/layers.py
        swaps our layers for PyTorch's there, so the optimizer holds the swapped-in parameters)."""
        import torch
        from MMSA.models import AMIO
        self.name = model_name
        self.device = device
        self.args = build_args(model_name, encoder, batch, device, mode, khar_overrides)
        torch.manual_seed(0)
        self.model = AMIO(self.args)
        if swap is not None:
            swap(self.model)
        self.model = self.model.to(device)
        self.net = self.model  # what the step runs: the model, or its torch.compile wrapper (compile_model)
        self.model.train()
        self.cpu_batch = batch
        b = {k: v.to(device) for k, v in batch.items()}
        self.b = b
        self.criterion_seconds: List[float] = []
        if model_name == "khar":
            self._init_khar()
        elif model_name == "self_mm":
            self._init_self_mm()
        else:
            lr = float(self.args.get("learning_rate", 1e-3))
            wd = float(self.args.get("weight_decay", 0.0))
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=wd)
            if model_name == "tfn":  # TFN's loader averages audio/vision over time (need_normalized)
                self.inputs = (b["text"], b["audio"].mean(1, keepdim=True), b["vision"].mean(1, keepdim=True))
            else:
                self.inputs = (b["text"], b["audio"], b["vision"])

    # KHaR ----------------------------------------------------------------------------------------
    def _init_khar(self) -> None:
        from khar_mmsa.config import KHaRConfig
        from khar_mmsa.losses.criterion import KHaRCriterion
        from khar_mmsa.model.khar import batch_inputs
        from khar_mmsa.training.optim import make_adamw
        from khar_mmsa.training.trainer import khar_parameter_groups, unwrap
        self.cfg = KHaRConfig.from_mmsa_args(self.args)
        khar = unwrap(self.model)
        if self.cfg.pretrain_adapters and self.cfg.freeze_pretrained_adapters:
            for m in khar.modalities:  # main stage: pretrained adapters are frozen
                khar.harvesters[m].adapters.requires_grad_(False)
        self.criterion = KHaRCriterion(self.cfg)
        self.optimizer = make_adamw(khar_parameter_groups(self.model, khar, self.cfg))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # the trainer's batch helper: cut to the longest real clip on the CPU, then moved
        text, audio, vision, a_len, v_len = batch_inputs(
            {"text": self.cpu_batch["text_bert"], "audio": self.cpu_batch["audio"], "vision": self.cpu_batch["vision"],
             "audio_lengths": self.cpu_batch["audio_lengths"], "vision_lengths": self.cpu_batch["vision_lengths"]},
            self.device)
        self.khar_inputs = (text, audio, vision, a_len, v_len)

    def _khar_step(self, task_only: bool) -> None:
        import torch
        from torch.nn import functional as F
        b = self.b
        text, audio, vision, a_len, v_len = self.khar_inputs
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
            out = self.net(text, audio, vision, audio_lengths=a_len, vision_lengths=v_len)
        if task_only:
            total = F.l1_loss(out["M"].float(), b["labels"])
        else:
            sync(self.device)
            t0 = _now()
            total, _, _ = self.criterion(out, b["labels"])
            sync(self.device)
            self.criterion_seconds.append(_now() - t0)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()

    def compile_model(self, backend: str = "inductor") -> float:
        """Wrap the model in ``torch.compile`` (KHaR: as the trainer does with ``compile=True``; same
        parameters) and run one step, which compiles forward and backward; returns its seconds.
        ``backend``: torch.compile's (the GPU check's dry mode uses 'eager': dynamo traces, no code
        generation)."""
        import torch
        self.net = torch.compile(self.model, backend=backend)
        return self.step()

    # Self-MM --------------------------------------------------------------------------------------
    def _init_self_mm(self) -> None:
        import torch
        from MMSA.trains import ATIO
        self.trainer = ATIO().getTrain(self.args)
        m = self.model.Model
        bert_no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
        bert = list(m.text_model.named_parameters())
        other = [p for n, p in m.named_parameters() if not any(s in n for s in ("text_model", "audio_model", "video_model"))]
        a = self.args
        self.optimizer = torch.optim.Adam([
            {"params": [p for n, p in bert if not any(nd in n for nd in bert_no_decay)], "weight_decay": a.weight_decay_bert, "lr": a.learning_rate_bert},
            {"params": [p for n, p in bert if any(nd in n for nd in bert_no_decay)], "weight_decay": 0.0, "lr": a.learning_rate_bert},
            {"params": list(m.audio_model.parameters()), "weight_decay": a.weight_decay_audio, "lr": a.learning_rate_audio},
            {"params": list(m.video_model.parameters()), "weight_decay": a.weight_decay_video, "lr": a.learning_rate_video},
            {"params": other, "weight_decay": a.weight_decay_other, "lr": a.learning_rate_other},
        ])
        self.indexes = torch.arange(self.b["labels"].shape[0])
        self.trainer.init_labels(self.indexes, self.b["labels"].view(-1))
        self.epoch = 2  # label updates run from the second epoch on: time the steady-state step

    def _self_mm_step(self) -> None:
        b, tr, idx = self.b, self.trainer, self.indexes
        self.optimizer.zero_grad()
        out = self.net(b["text_bert"], (b["audio"], b["audio_lengths"].cpu()), (b["vision"], b["vision_lengths"].cpu()))
        loss = 0.0
        for m in "MTAV":
            loss = loss + tr.weighted_loss(out[m], tr.label_map[tr.name_map[m]][idx], indexes=idx, mode=tr.name_map[m])
        loss.backward()
        f = [out[k].detach() for k in ("Feature_f", "Feature_t", "Feature_a", "Feature_v")]
        tr.update_labels(*f, self.epoch, idx, out)
        tr.update_features(*f, idx)
        tr.update_centers()
        self.optimizer.step()

    # TFN / MulT -----------------------------------------------------------------------------------
    def _plain_step(self) -> None:
        import torch
        from torch.nn import functional as F
        self.optimizer.zero_grad()
        out = self.net(*self.inputs)
        loss = F.l1_loss(out["M"], self.b["labels"])
        loss.backward()
        if self.name == "mult" and self.args.get("grad_clip", -1) != -1.0:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.args.grad_clip)
        self.optimizer.step()

    def step(self, task_only: bool = False) -> float:
        sync(self.device)
        t0 = _now()
        if self.name == "khar":
            self._khar_step(task_only)
        elif self.name == "self_mm":
            self._self_mm_step()
        else:
            self._plain_step()
        sync(self.device)
        return _now() - t0

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _now() -> float:
    import time
    return time.perf_counter()


def sync(device: Any) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
