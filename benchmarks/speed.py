"""Training speed and memory of KHaR, Self-MM, MulT and TFN on identical batches, and the share
of a KHaR step spent in its own losses.

    python -m benchmarks.speed --quick      # MOSI shapes, batch 16, a few steps on the CPU
    python -m benchmarks.speed --full       # MOSI shapes, batch 64, more steps (GPU)

Every model is built through MMSA's ``AMIO`` from ``get_config_regression(<model>, 'mosi')``
(after ``import khar_mmsa``) with the overrides below, and trained on the *same* batch: MOSI
shapes (text 50 tokens, audio 375x5, vision 500x20) from the planted generator, token ids for the
BERT-based models (KHaR and Self-MM fine-tune the text encoder, all-MiniLM-L6-v2 by default) and
that encoder's hidden states as the ``text`` features of TFN and MulT (MMSA's default: frozen
BERT features); TFN gets the time-averaged audio/vision its loader would give it.

One training step = forward + the model's own training loss + backward + optimizer step, as its
MMSA trainer does it: KHaR (``KHaRCriterion``, AdamW groups, grad clipping; adapters frozen as in
the main stage after knowledge harvesting), Self-MM (its weighted multi-task L1 and its label /
feature / centre updates, Adam groups, optimizer step every batch), MulT (L1, Adam, value
clipping), TFN (L1, Adam).  Step times are medians over the timed steps after warm-up.

Memory: on a GPU ``torch.cuda.max_memory_allocated`` (peak during the steps, reset before); on the
CPU each model runs in a fresh spawned process and the figure is the growth of the process's peak
RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before the model is built to after
the last step: weights, gradients, optimizer state and activations, plus allocator slack.

KHaR's own losses (contrastive, MoE balance, MIB KL and sampled-decoder L1): full steps and
"task-only" steps (same forward, only ``L_task`` back-propagated and no other loss term computed)
are interleaved; own-loss share = (median full - median task-only) / median full.  This covers the
criterion's forward and the backward of its extra terms; the balance and KL statistics computed
inside the model's forward are in both and not counted.  The criterion's forward alone is also
timed with explicit timers.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import common
from .common import Timer

logger = logging.getLogger("MMSA")

MODELS = ("khar", "self_mm", "mult", "tfn")
TITLES = {"khar": "KHaR", "self_mm": "Self-MM", "mult": "MulT", "tfn": "TFN"}
MOSI_SEQ_LENS = (50, 375, 500)
SETTINGS = {
    # batch, warm-up steps, timed steps, (full, task-only) pairs for the loss share, seq_lens
    "smoke": dict(batch=4, warmup=1, steps=2, share_pairs=2, seq_lens=(8, 10, 12)),
    "quick": dict(batch=16, warmup=1, steps=3, share_pairs=5, seq_lens=MOSI_SEQ_LENS),
    "full": dict(batch=64, warmup=3, steps=20, share_pairs=20, seq_lens=MOSI_SEQ_LENS),
}
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
def build_args(model: str, encoder: Path, batch: Mapping[str, Any], device: Any, mode: str) -> Any:
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
    return args


class Stepper:
    """``step()`` runs one training step of one model on the fixed batch."""

    def __init__(self, model_name: str, encoder: Path, batch: Mapping[str, Any], device: Any, mode: str) -> None:
        import torch
        from MMSA.models import AMIO
        self.name = model_name
        self.device = device
        self.args = build_args(model_name, encoder, batch, device, mode)
        torch.manual_seed(0)
        self.model = AMIO(self.args).to(device)
        self.model.train()
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
        import torch
        from khar_mmsa.config import KHaRConfig
        from khar_mmsa.criterion import KHaRCriterion
        from khar_mmsa.trainer import parameter_groups, unwrap
        self.cfg = KHaRConfig.from_mmsa_args(self.args)
        khar = unwrap(self.model)
        if self.cfg.pretrain_adapters and self.cfg.freeze_pretrained_adapters:
            for m in khar.modalities:  # main stage: pretrained adapters are frozen
                khar.harvesters[m].adapters.requires_grad_(False)
        self.criterion = KHaRCriterion(self.cfg)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, khar, self.cfg))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def _khar_step(self, task_only: bool) -> None:
        import torch
        from torch.nn import functional as F
        b = self.b
        out = self.model(b["text_bert"], b["audio"], b["vision"], audio_lengths=b["audio_lengths"],
                         vision_lengths=b["vision_lengths"])
        if task_only:
            total = F.l1_loss(out["M"], b["labels"])
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
        out = self.model(b["text_bert"], (b["audio"], b["audio_lengths"].cpu()), (b["vision"], b["vision_lengths"].cpu()))
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
        out = self.model(*self.inputs)
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


def measure(model_name: str, encoder: str, batch: Mapping[str, Any], mode: str, settings: Mapping[str, Any],
            device_name: str) -> Dict[str, Any]:
    """Build one model, warm up, time the steps; peak memory; KHaR: the own-loss share."""
    import torch
    device = torch.device(device_name)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stepper = Stepper(model_name, Path(encoder), batch, device, mode)
    for _ in range(settings["warmup"]):
        stepper.step()
    stepper.criterion_seconds.clear()
    times = [stepper.step() for _ in range(settings["steps"])]
    res: Dict[str, Any] = {"model": model_name, "params": stepper.trainable_parameters(), "step_times": times,
                           "step_s": statistics.median(times), "batch": int(batch["labels"].shape[0])}
    res["samples_per_s"] = res["batch"] / res["step_s"]
    if model_name == "khar":
        full, task = [], []
        stepper.criterion_seconds.clear()
        for _ in range(settings["share_pairs"]):  # interleaved so machine load hits both alike
            full.append(stepper.step(task_only=False))
            task.append(stepper.step(task_only=True))
        res["share_full_s"], res["share_task_only_s"] = statistics.median(full), statistics.median(task)
        res["own_loss_s"] = res["share_full_s"] - res["share_task_only_s"]
        res["own_loss_share"] = res["own_loss_s"] / res["share_full_s"]
        res["criterion_fwd_s"] = statistics.median(stepper.criterion_seconds)
        res["criterion_fwd_share"] = res["criterion_fwd_s"] / res["share_full_s"]
    if on_gpu:
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res["mem_method"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_mem_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
        res["mem_method"] = "ru_maxrss growth"
    return res


def _child(queue: Any, model_name: str, encoder: str, batch: Mapping[str, Any], mode: str,
           settings: Mapping[str, Any], device_name: str, threads: int) -> None:
    try:
        import torch
        torch.set_num_threads(threads)
        import khar_mmsa  # noqa: F401
        queue.put(measure(model_name, encoder, batch, mode, settings, device_name))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback
        queue.put({"model": model_name, "error": f"{exc!r}\n{traceback.format_exc()}"})


def run_isolated(model_name: str, encoder: Path, batch: Mapping[str, Any], mode: str,
                 settings: Mapping[str, Any], device_name: str) -> Dict[str, Any]:
    import torch
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, model_name, str(encoder), dict(batch), mode, dict(settings),
                                            device_name, torch.get_num_threads()))
    proc.start()
    import queue as queue_mod
    while True:
        try:
            res = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"speed measurement of {model_name}: child process died (exit code {proc.exitcode})")
    proc.join()
    if "error" in res:
        raise RuntimeError(f"speed measurement of {model_name} failed in its child process:\n{res['error']}")
    return res


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model")
    parser.add_argument("--in-process", action="store_true",
                        help="no child process per model (CPU peak memory then mixes models; default in --smoke)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    common.resolve_paths(args, "speed")
    import torch
    settings = dict(SETTINGS[args.mode])
    if args.batch_size:
        settings["batch"] = args.batch_size
    if args.steps:
        settings["steps"] = args.steps
    device_name = "cuda:0" if torch.cuda.is_available() else "cpu"
    in_process = args.in_process or args.mode == "smoke"
    machine = common.machine_description()
    with Timer() as total:
        import khar_mmsa  # noqa: F401
        encoder = common.text_encoder(args)
        batch = make_batch(encoder, settings["batch"], settings["seq_lens"])
        results = {}
        for model in args.models:
            logger.info(f"[speed] {model}: batch {settings['batch']}, {settings['warmup']} warm-up + {settings['steps']} timed steps")
            if in_process or device_name != "cpu":
                results[model] = measure(model, str(encoder), batch, args.mode, settings, device_name)
            else:
                results[model] = run_isolated(model, encoder, batch, args.mode, settings, device_name)
            r = results[model]
            logger.info(f"[speed] {model}: {r['step_s'] * 1000:.0f} ms/step, {r['samples_per_s']:.1f} samples/s, "
                        f"peak memory {r['peak_mem_mib']:.0f} MiB ({r['mem_method']})")

    mem_note = ("torch.cuda.max_memory_allocated (MiB)" if device_name != "cpu" else
                "growth of peak RSS, ru_maxrss (MiB)" + (" — in-process: later models reuse freed memory, figures mix"
                                                         if in_process else ", one fresh process per model"))
    header = ["Model", "trainable params (M)", "step (ms, median)", "samples/s", f"peak memory: {mem_note}",
              "step vs Self-MM"]
    ref = results.get("self_mm")
    rows = []
    for m in args.models:
        r = results[m]
        rel = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        rows.append([TITLES[m], f"{r['params'] / 1e6:.1f}", f"{r['step_s'] * 1000:.0f}", f"{r['samples_per_s']:.1f}",
                     f"{r['peak_mem_mib']:.0f}", rel])
    table = common.markdown_table(header, rows)
    targets = []
    k = results.get("khar")
    if k and ref:
        ratio = k["step_s"] / ref["step_s"]
        targets.append(("a KHaR training step takes at most 2x a Self-MM step", ratio <= 2.0,
                        f"KHaR {k['step_s'] * 1000:.0f} ms vs Self-MM {ref['step_s'] * 1000:.0f} ms per step = {ratio:.2f}x"))
    if k:
        share = k["own_loss_share"]
        targets.append(("KHaR's own losses take < 10% of its step", share < 0.10,
                        f"full step {k['share_full_s'] * 1000:.0f} ms vs task-only step {k['share_task_only_s'] * 1000:.0f} ms "
                        f"(medians of {settings['share_pairs']} interleaved pairs): own losses {k['own_loss_s'] * 1000:.0f} ms = "
                        f"{100 * share:.1f}%; KHaRCriterion forward alone {k['criterion_fwd_s'] * 1000:.1f} ms = "
                        f"{100 * k['criterion_fwd_share']:.2f}%"))
    stem = f"speed-{args.mode}"
    csv_path = args.tables_dir / f"{stem}.csv"
    import csv
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        keys = ["model", "params", "batch", "step_s", "samples_per_s", "peak_mem_mib", "mem_method",
                "own_loss_share", "own_loss_s", "share_full_s", "share_task_only_s", "criterion_fwd_s", "criterion_fwd_share"]
        w.writerow(keys)
        for m in args.models:
            w.writerow([results[m].get(key, "") for key in keys])
    notes = [
        f"Identical batch for every model: {settings['batch']} samples, MOSI shapes (text {settings['seq_lens'][0]} tokens, "
        f"audio {settings['seq_lens'][1]}x5, vision {settings['seq_lens'][2]}x20), text encoder {common.encoder_name(encoder)} "
        "(fine-tuned by KHaR and Self-MM; its frozen hidden states are TFN's and MulT's `text` features).",
        f"{settings['warmup']} warm-up step(s), then the median of {settings['steps']} timed steps; models built through "
        "MMSA's AMIO from get_config_regression(<model>, 'mosi') (KHaR: the paper's Table 5 config"
        + (", shrunk for the smoke test" if args.mode == "smoke" else "") + ").",
        "On a shared CPU the absolute times move with the machine's load (1-min load average at start: "
        f"{machine['load_average_1min']}); ratios measured back to back are more stable than absolute figures.",
    ]
    body = "\n".join([table, "", *notes, "", "Targets:", *[common.target_line(n, ok, d) for n, ok, d in targets]])
    title = f"Speed and memory: one training step on identical MOSI-shaped batches ({args.mode})"
    md_path = args.tables_dir / f"{stem}.md"
    md_path.write_text(f"# {title}\n\n{body}\n")
    text = common.section(title, common.command_line("benchmarks.speed", argv), common.machine_line(machine), [],
                          "one planted-signal MOSI-shaped batch (shapes and widths as real MOSI; timing only)",
                          total.seconds, body)
    common.update_results_md(args.results_md, stem, text)
    logger.info(f"\n{table}\n" + "\n".join(common.target_line(n, ok, d) for n, ok, d in targets))
    return {"results": results, "targets": targets, "table_md": md_path, "table_csv": csv_path,
            "results_md": args.results_md, "wall_s": total.seconds}


if __name__ == "__main__":
    main()
