"""Training speed and memory of KHaR, Self-MM, MulT and TFN on identical batches, and the share
of a KHaR step spent in its own losses.

    python -m benchmarks.speed --quick      # MOSI shapes, batch 16, a few steps on the CPU
    python -m benchmarks.speed --full       # MOSI shapes, batch 64, more steps (GPU)
    python -m benchmarks.speed --full --compile --amp   # the GPU rows: KHaR with/without compile and amp

``--compile`` and ``--amp`` add KHaR rows beside the plain "KHaR" row: "KHaR (compile)" (the model
wrapped in ``torch.compile``, as the trainer does with ``compile=True``), "KHaR (amp)" (bf16
autocast of the forward, as ``amp=True``) and, with both, "KHaR (compile, amp)".  A compiled row
counts its FLOPs on one uncompiled step, as every row does; then the model is wrapped and one step
is run to compile it (forward and backward); that step's wall time is the row's "compile" figure,
kept out of the step time; then the warm-up steps (a new shape may compile once more there) and the
timed steps; graphs compiled during the timed steps are counted and shown beside it.  If
``torch.compile`` cannot run (no C++ compiler for inductor, or any error while compiling or running
the compiled step), the row names the error's first line instead of a time.  The own-loss share and
the scaling table are measured on the plain KHaR row only.

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

Work: floating-point operations of one training step (forward, losses, backward) counted with
``torch.utils.flop_counter.FlopCounterMode`` on the first (untimed) warm-up step; PyTorch's counter has no
formula for the CPU flash-attention kernels, so they are counted here as the unfused path counts
attention (forward 4·b·h·n²·d, backward twice that: the model's arithmetic, not the kernel's
recomputation). The fp32 matmul rate (2048x2048 ``a @ b``, median of 5) is measured in the same
process right before and right after the timed steps; "share" = achieved GFLOP/s over their mean.

Scaling (``--scaling``, or ``--scaling-only`` for its own RESULTS.md section; KHaR only): the KHaR step at audio = vision = 125 / 250 / 500 / 1000 frames
(real lengths drawn as in the planted data, uniform in [T/2, T]) and batch 16 / 64, each in a fresh
process: step time, GFLOP, share and peak memory.

KHaR's own losses (contrastive, MoE balance, MIB KL and sampled-decoder L1): full steps and
"task-only" steps (same forward, only ``L_task`` back-propagated and no other loss term computed)
are interleaved; own-loss share = (median full - median task-only) / median full.  This covers the
criterion's forward and the backward of its extra terms, the balance and KL statistics included
(the model returns raw router outputs and the posterior; the criterion computes every term, in
fp32).  The criterion's forward alone is also timed with explicit timers.
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
from .rates import MATMUL_N, matmul_rate, step_flops
from .steppers import Stepper, make_batch

logger = logging.getLogger("MMSA")

MODELS = ("khar", "self_mm", "mult", "tfn")
TITLES = {"khar": "KHaR", "self_mm": "Self-MM", "mult": "MulT", "tfn": "TFN"}
KHAR_SWITCHES = ("compile", "amp")  # KHaR settings --compile / --amp add rows for, in row-name order
MOSI_SEQ_LENS = (50, 375, 500)
SETTINGS = {
    # batch, warm-up steps, timed steps, (full, task-only) pairs for the loss share, seq_lens;
    # the KHaR scaling table: audio/vision frames x batch sizes, its warm-up and timed steps;
    # matmul_n: the reference matmul's size (smoke: small, its test checks the share's arithmetic, not the rate)
    "smoke": dict(batch=4, warmup=1, steps=1, share_pairs=1, seq_lens=(8, 10, 12),
                  scaling_frames=(6, 12), scaling_batches=(2,), scaling_steps=1, matmul_n=256),
    "quick": dict(batch=16, warmup=1, steps=3, share_pairs=5, seq_lens=MOSI_SEQ_LENS,
                  scaling_frames=(125, 250, 500, 1000), scaling_batches=(16, 64), scaling_steps=1, matmul_n=MATMUL_N),
    "full": dict(batch=64, warmup=3, steps=20, share_pairs=20, seq_lens=MOSI_SEQ_LENS,
                 scaling_frames=(125, 250, 500, 1000), scaling_batches=(16, 64), scaling_steps=5, matmul_n=MATMUL_N),
}
TODAY_KHAR_PEAK_MIB = 5536  # KHaR's peak memory at quick settings before the fused kernels (RESULTS.md, 02:06 UTC)

def measure(model_name: str, encoder: str, batch: Mapping[str, Any], mode: str, settings: Mapping[str, Any],
            device_name: str, khar_overrides: Optional[Mapping[str, Any]] = None,
            own_loss_share: bool = True, compile: bool = False, compile_backend: str = "inductor") -> Dict[str, Any]:
    """Build one model, warm up, time the steps; its FLOPs, the matmul rate around the timed steps,
    peak memory; KHaR: the own-loss share.  With ``compile`` in ``khar_overrides`` (KHaR) or
    ``compile=True`` (any model): the model is compiled after the counted step (``compile_s``); if
    that or a compiled step raises, the result has ``compile_error`` (the error's first line) and
    no times."""
    import torch
    device = torch.device(device_name)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stepper = Stepper(model_name, Path(encoder), batch, device, mode, khar_overrides)
    compiles = compile or (model_name == "khar" and stepper.cfg.compile)
    res: Dict[str, Any] = {"model": model_name, "params": stepper.trainable_parameters(),
                           "batch": int(batch["labels"].shape[0])}
    flops = step_flops(stepper)  # the first warm-up step, uncompiled, counted (counting slows it; it is not timed)
    res["gflop_per_step"] = flops / 1e9
    try:
        if compiles:  # compiled once, then the full warm-up (a shape change may compile once more)
            res["compile_s"] = stepper.compile_model(compile_backend)
        for _ in range(settings["warmup"] - (0 if compiles else 1)):
            stepper.step()
        stepper.criterion_seconds.clear()
        graphs_before = compiled_graphs()
        rate_before = matmul_rate(device, settings["matmul_n"])
        times = [stepper.step() for _ in range(settings["steps"])]
        rate_after = matmul_rate(device, settings["matmul_n"])
        if compiles:
            res["graphs_compiled_in_timed_steps"] = compiled_graphs() - graphs_before
    except Exception as exc:  # noqa: BLE001 - a compiled row reports why torch.compile could not run
        if not compiles:
            raise
        res["compile_error"] = first_line(exc)
        logger.warning(f"[speed] {model_name} with torch.compile failed: {res['compile_error']}")
        return res
    res.update(step_times=times, step_s=statistics.median(times))
    res["samples_per_s"] = res["batch"] / res["step_s"]
    res["matmul_gflops_before"], res["matmul_gflops_after"] = rate_before, rate_after
    res["matmul_gflops"] = (rate_before + rate_after) / 2
    if on_gpu:
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res["mem_method"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_mem_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
        res["mem_method"] = "ru_maxrss growth"
    res["achieved_gflops"] = res["gflop_per_step"] / res["step_s"]
    res["share_of_matmul"] = res["achieved_gflops"] / res["matmul_gflops"]
    if model_name == "khar" and own_loss_share:
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
    return res


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (dynamo's counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception's message; a first line ending in ':' (as torch.compile's
    "backend='inductor' raised:") is followed by the next non-empty line, which names the cause."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _child(queue: Any, model_name: str, encoder: str, batch: Mapping[str, Any], mode: str,
           settings: Mapping[str, Any], device_name: str, threads: int, khar_overrides: Mapping[str, Any],
           own_loss_share: bool) -> None:
    try:
        import torch
        torch.set_num_threads(threads)
        import khar_mmsa  # noqa: F401
        queue.put(measure(model_name, encoder, batch, mode, settings, device_name, khar_overrides, own_loss_share))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback
        queue.put({"model": model_name, "error": f"{exc!r}\n{traceback.format_exc()}"})


def run_isolated(model_name: str, encoder: Path, batch: Mapping[str, Any], mode: str,
                 settings: Mapping[str, Any], device_name: str, khar_overrides: Optional[Mapping[str, Any]] = None,
                 own_loss_share: bool = True) -> Dict[str, Any]:
    import torch
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, model_name, str(encoder), dict(batch), mode, dict(settings),
                                            device_name, torch.get_num_threads(), dict(khar_overrides or {}),
                                            own_loss_share))
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


def run_one(model: str, encoder: Path, batch: Mapping[str, Any], mode: str, settings: Mapping[str, Any],
            device_name: str, in_process: bool, khar_overrides: Mapping[str, Any], own_loss_share: bool = True
            ) -> Dict[str, Any]:
    if in_process or device_name != "cpu":
        return measure(model, str(encoder), batch, mode, settings, device_name, khar_overrides, own_loss_share)
    return run_isolated(model, encoder, batch, mode, settings, device_name, khar_overrides, own_loss_share)


def scaling_table(encoder: Path, mode: str, settings: Mapping[str, Any], device_name: str, in_process: bool,
                  khar_overrides: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """KHaR's step against audio/vision frames and batch size, one fresh process per point."""
    rows = []
    text_len = settings["seq_lens"][0]
    for batch_size in settings["scaling_batches"]:
        for frames in settings["scaling_frames"]:
            batch = make_batch(encoder, batch_size, (text_len, frames, frames))
            point = dict(settings, warmup=1, steps=settings["scaling_steps"])  # the warm-up step is the counted one
            r = run_one("khar", encoder, batch, mode, point, device_name, in_process, khar_overrides,
                        own_loss_share=False)
            r.update(frames=frames, longest_audio=int(batch["audio_lengths"].max()),
                     longest_vision=int(batch["vision_lengths"].max()))
            logger.info(f"[speed] scaling: batch {batch_size}, {frames} frames: {r['step_s'] * 1000:.0f} ms/step, "
                        f"{r['gflop_per_step']:.1f} GFLOP, share {100 * r['share_of_matmul']:.0f}%, "
                        f"peak memory {r['peak_mem_mib']:.0f} MiB")
            rows.append(r)
    return rows


def linear_memory_check(rows: Sequence[Mapping[str, Any]]) -> List[tuple]:
    """Per batch size: memory growth per frame between the two longest lengths vs between the two
    before them. Quadratic growth doubles it with each doubling of frames; linear keeps it."""
    checks = []
    for batch_size in sorted({r["batch"] for r in rows}):
        pts = sorted((r["frames"], r["peak_mem_mib"]) for r in rows if r["batch"] == batch_size)
        if len(pts) < 3:
            continue
        (f1, m1), (f2, m2), (f3, m3) = pts[-3:]
        early, late = (m2 - m1) / (f2 - f1), (m3 - m2) / (f3 - f2)
        checks.append((batch_size, f1, f2, f3, early, late))
    return checks


def share_target(threads: int) -> float:
    """Issue 32's goal for KHaR's CPU step: >= 70 % of the fp32 matmul rate at one thread, >= 55 % at
    two or more (the matmul rate scales with threads better than a step of many small ops does)."""
    return 0.70 if threads <= 1 else 0.55


def khar_rows(models: Sequence[str], switches: Sequence[str]) -> List[tuple]:
    """(row key, KHaR overrides) of the models table, in order: each model, and after "khar" one row
    per non-empty subset of ``switches`` (e.g. "khar+compile", "khar+amp", "khar+compile+amp")."""
    import itertools
    rows = []
    for model in models:
        rows.append((model, {}))
        if model != "khar":
            continue
        on = [s for s in KHAR_SWITCHES if s in switches]
        for k in range(1, len(on) + 1):
            for subset in itertools.combinations(on, k):
                rows.append(("+".join(("khar",) + subset), {s: True for s in subset}))
    return rows


def row_title(key: str) -> str:
    """"khar+compile+amp" -> "KHaR (compile, amp)"; a model's own key -> its title."""
    model, *switches = key.split("+")
    return TITLES[model] + (f" ({', '.join(switches)})" if switches else "")


def compile_cell(r: Mapping[str, Any]) -> str:
    """The compile column: seconds of the compiling step, and recompilations inside the timed steps."""
    if "compile_s" not in r:
        return "-"
    again = r.get("graphs_compiled_in_timed_steps", 0)
    return f"{r['compile_s']:.1f}" + (f" (+{again} graph(s) compiled during the timed steps)" if again else "")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model")
    parser.add_argument("--in-process", action="store_true",
                        help="no child process per model (CPU peak memory then mixes models; default in --smoke)")
    parser.add_argument("--scaling", action="store_true",
                        help="also the KHaR scaling table (frames x batch size, one process per point)")
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the KHaR scaling table, in its own RESULTS.md section (speed-scaling-<mode>)")
    parser.add_argument("--amp", action="store_true",
                        help='also KHaR with amp=True (bf16 autocast): row "KHaR (amp)" beside "KHaR"')
    parser.add_argument("--compile", action="store_true",
                        help='also KHaR with compile=True (torch.compile): row "KHaR (compile)" beside "KHaR", '
                             'compile time apart from the step time')
    parser.add_argument("--tag", default=None,
                        help="suffix of this run's RESULTS.md section and table files (e.g. 2-threads beside the one-thread table)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.scaling_only:
        args.scaling, args.models = True, []
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
    switches = [s for s in KHAR_SWITCHES if getattr(args, s)]
    rows_to_run = khar_rows(args.models, switches)
    machine = common.machine_description()
    with Timer() as total:
        import khar_mmsa  # noqa: F401
        encoder = common.text_encoder(args)
        batch = make_batch(encoder, settings["batch"], settings["seq_lens"]) if args.models else None
        results = {}
        for key, overrides in rows_to_run:
            model = key.split("+")[0]
            logger.info(f"[speed] {row_title(key)}: batch {settings['batch']}, {settings['warmup']} warm-up + "
                        f"{settings['steps']} timed steps")
            r = run_one(model, encoder, batch, args.mode, settings, device_name, in_process, overrides,
                        own_loss_share=key == "khar")
            r["model"] = key
            results[key] = r
            if "compile_error" in r:
                continue
            logger.info(f"[speed] {row_title(key)}: {r['step_s'] * 1000:.0f} ms/step, {r['gflop_per_step']:.1f} GFLOP/step, "
                        f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['share_of_matmul']:.1f}% of the matmul rate "
                        f"{r['matmul_gflops']:.1f} GFLOP/s, peak memory {r['peak_mem_mib']:.0f} MiB ({r['mem_method']})"
                        + (f"; compile {r['compile_s']:.1f} s" if "compile_s" in r else ""))
        scaling = scaling_table(encoder, args.mode, settings, device_name, in_process, {}) if args.scaling else []

    on_cpu = device_name == "cpu"
    mem_note = ("torch.cuda.max_memory_allocated (MiB)" if not on_cpu else
                "growth of peak RSS, ru_maxrss (MiB)" + (" — in-process: later models reuse freed memory, figures mix"
                                                         if in_process else ", one fresh process per model"))
    header = ["Model", "trainable params (M)", "step (ms, median)", "samples/s", "GFLOP / step",
              "achieved GFLOP/s", "matmul rate (GFLOP/s, same process)", "share of matmul rate",
              f"peak memory: {mem_note}", "step vs Self-MM"]
    compiled_rows = "compile" in switches and "khar" in args.models
    if compiled_rows:
        header.append("compile + first compiled step (s)")
    ref = results.get("self_mm")
    rows = []
    for key, _ in rows_to_run:
        r = results[key]
        if "compile_error" in r:
            rows.append([row_title(key), f"{r['params'] / 1e6:.1f}", f"torch.compile failed: {r['compile_error']}",
                         "-", f"{r['gflop_per_step']:.1f}", "-", "-", "-", "-", "-"] + ["-"] * compiled_rows)
            continue
        rel = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else "-"
        rows.append([row_title(key), f"{r['params'] / 1e6:.1f}", f"{r['step_s'] * 1000:.0f}", f"{r['samples_per_s']:.1f}",
                     f"{r['gflop_per_step']:.1f}", f"{r['achieved_gflops']:.1f}",
                     f"{r['matmul_gflops']:.1f} ({r['matmul_gflops_before']:.0f} before, {r['matmul_gflops_after']:.0f} after)",
                     f"{100 * r['share_of_matmul']:.1f}%", f"{r['peak_mem_mib']:.0f}", rel]
                    + ([compile_cell(r)] if compiled_rows else []))
    table = common.markdown_table(header, rows) if rows else ""
    targets = []
    k = results.get("khar")
    if k:
        goal = share_target(torch.get_num_threads())
        targets.append((f"KHaR training step at >= {goal:.0%} of the measured fp32 matmul rate "
                        f"({torch.get_num_threads()} thread(s))", k["share_of_matmul"] >= goal,
                        f"{k['gflop_per_step']:.1f} GFLOP in {k['step_s'] * 1000:.0f} ms = {k['achieved_gflops']:.1f} GFLOP/s "
                        f"vs matmul {k['matmul_gflops']:.1f} GFLOP/s = {100 * k['share_of_matmul']:.1f}%"))
        for key, _ in rows_to_run[1:]:
            v = results[key]
            if key.startswith("khar+") and "compile_error" not in v:
                targets.append((f"{row_title(key)} training step at >= {goal:.0%} of the measured fp32 matmul rate",
                                v["share_of_matmul"] >= goal,
                                f"{v['gflop_per_step']:.1f} GFLOP in {v['step_s'] * 1000:.0f} ms = "
                                f"{v['achieved_gflops']:.1f} GFLOP/s vs matmul {v['matmul_gflops']:.1f} GFLOP/s = "
                                f"{100 * v['share_of_matmul']:.1f}% (plain KHaR: {k['step_s'] * 1000:.0f} ms)"))
        if on_cpu and not in_process and args.mode == "quick" and settings["batch"] == 16:
            targets.append(("KHaR peak memory <= 1/3 of before the fused kernels",
                            k["peak_mem_mib"] <= TODAY_KHAR_PEAK_MIB / 3,
                            f"{k['peak_mem_mib']:.0f} MiB vs {TODAY_KHAR_PEAK_MIB} MiB before "
                            f"(= {k['peak_mem_mib'] / TODAY_KHAR_PEAK_MIB:.2f}x; limit {TODAY_KHAR_PEAK_MIB / 3:.0f} MiB)"))
    if k and ref:
        ratio = k["step_s"] / ref["step_s"]
        targets.append(("a KHaR training step takes at most 2x a Self-MM step", ratio <= 2.0,
                        f"KHaR {k['step_s'] * 1000:.0f} ms vs Self-MM {ref['step_s'] * 1000:.0f} ms per step = {ratio:.2f}x"))
    if k and "own_loss_share" in k:
        share = k["own_loss_share"]
        targets.append(("KHaR's own losses take < 10% of its step", share < 0.10,
                        f"full step {k['share_full_s'] * 1000:.0f} ms vs task-only step {k['share_task_only_s'] * 1000:.0f} ms "
                        f"(medians of {settings['share_pairs']} interleaved pairs): own losses {k['own_loss_s'] * 1000:.0f} ms = "
                        f"{100 * share:.1f}%; KHaRCriterion forward alone {k['criterion_fwd_s'] * 1000:.1f} ms = "
                        f"{100 * k['criterion_fwd_share']:.2f}%"))
    scaling_md = ""
    if scaling:
        s_header = ["batch", "audio = vision frames (longest real)", "step (ms, median)", "samples/s", "GFLOP / step",
                    "share of matmul rate", "matmul rate (GFLOP/s)", f"peak memory (MiB, {scaling[0]['mem_method']})",
                    "peak memory per sample-frame (KiB)"]
        s_rows = [[str(r["batch"]), f"{r['frames']} ({r['longest_audio']}/{r['longest_vision']})",
                   f"{r['step_s'] * 1000:.0f}", f"{r['samples_per_s']:.1f}", f"{r['gflop_per_step']:.1f}",
                   f"{100 * r['share_of_matmul']:.1f}%", f"{r['matmul_gflops']:.1f}", f"{r['peak_mem_mib']:.0f}",
                   f"{1024 * r['peak_mem_mib'] / (r['batch'] * r['frames']):.1f}"] for r in scaling]
        scaling_md = "\n".join(["", "KHaR scaling (one fresh process per row; batches built like the models table's, "
                                "audio and vision padded to the frames shown; 1 warm-up step (FLOPs counted), median of "
                                f"{settings['scaling_steps']} timed step(s)):", "",
                                common.markdown_table(s_header, s_rows)])
        for batch_size, f1, f2, f3, early, late in linear_memory_check(scaling):
            targets.append((f"KHaR peak memory grows no faster than linearly in frames up to {f3} (batch {batch_size})",
                            late <= 1.25 * early,
                            f"growth {late:.2f} MiB/frame from {f2} to {f3} frames vs {early:.2f} MiB/frame from "
                            f"{f1} to {f2} (quadratic growth would double it; limit 1.25x)"))
    stem = (f"speed-{'scaling-' if args.scaling_only else ''}{args.mode}" + "".join(f"-{s}" for s in switches)
            + (f"-{args.tag}" if args.tag else ""))
    csv_path = args.tables_dir / f"{stem}.csv"
    import csv
    keys = ["model", "params", "batch", "frames", "compile_s", "compile_error", "graphs_compiled_in_timed_steps", "step_s", "samples_per_s", "gflop_per_step", "achieved_gflops",
            "matmul_gflops", "matmul_gflops_before", "matmul_gflops_after", "share_of_matmul", "peak_mem_mib",
            "mem_method", "own_loss_share", "own_loss_s", "share_full_s", "share_task_only_s", "criterion_fwd_s",
            "criterion_fwd_share"]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table"] + keys)
        for key_, _ in rows_to_run:
            w.writerow(["models"] + [results[key_].get(key, "") for key in keys])
        for r in scaling:
            w.writerow(["scaling"] + [r.get(key, "") for key in keys])
    notes = [] if not args.models else [
        f"Identical batch for every model: {settings['batch']} samples, MOSI shapes (text {settings['seq_lens'][0]} tokens, "
        f"audio {settings['seq_lens'][1]}x5, vision {settings['seq_lens'][2]}x20), text encoder {common.encoder_name(encoder)} "
        "(fine-tuned by KHaR and Self-MM; its frozen hidden states are TFN's and MulT's `text` features). "
        "KHaR gets it through its trainer's batch helper (cut to the longest real clip on the CPU); "
        "the MMSA models get the padded batch, as their trainers do.",
        f"{settings['warmup']} warm-up step(s), then the median of {settings['steps']} timed steps."]
    notes += [
        "Models built through MMSA's AMIO from get_config_regression(<model>, 'mosi') (KHaR: the paper's Table 5 config"
        + (", shrunk for the smoke test" if args.mode == "smoke" else "")
        + ")." + ("" if not switches or "khar" not in args.models else
                  " KHaR's extra rows: " + "; ".join(
                      {"compile": "(compile) = compile=True: torch.compile of the model (default mode), compiled on "
                                  "the step after the counted one, that step's wall time in the last column and "
                                  "not in the step time, then the warm-up steps; its GFLOP counted on the "
                                  "uncompiled step",
                       "amp": "(amp) = amp=True: bf16 autocast of the forward pass, losses fp32"}[s]
                      for s in switches) + "; the own-loss share and the scaling table are plain KHaR's."),
        "GFLOP / step: FlopCounterMode over the first (untimed) warm-up step (CPU flash attention counted as the unfused "
        "path counts attention: backward = 2x forward). Share = achieved GFLOP/s over the fp32 "
        f"{settings['matmul_n']}x{settings['matmul_n']} matmul rate measured in the same process right before and after the timed steps.",
        "On a shared CPU the absolute times move with the machine's load (1-min load average at start: "
        f"{machine['load_average_1min']}); shares and ratios measured back to back are more stable than absolute figures.",
        "GPU: " + ("this run." if not on_cpu else "not run (no GPU on this machine)."),
    ]
    body = "\n".join([table, scaling_md, "", *notes, "", "Targets:",
                      *[common.target_line(n, ok, d) for n, ok, d in targets]])
    title = (f"KHaR scaling: step time and peak memory against frames and batch size ({args.mode})"
             if args.scaling_only else
             f"Speed and memory: one training step on identical MOSI-shaped batches ({args.mode}"
             + "".join(f", with/without {s}" for s in switches) + ")")
    md_path = args.tables_dir / f"{stem}.md"
    md_path.write_text(f"# {title}\n\n{body}\n")
    text = common.section(title, common.command_line("benchmarks.speed", argv), common.machine_line(machine), [],
                          "one planted-signal MOSI-shaped batch (shapes and widths as real MOSI; timing only)",
                          total.seconds, body)
    common.update_results_md(args.results_md, stem, text)
    logger.info(f"\n{table}\n{scaling_md}\n" + "\n".join(common.target_line(n, ok, d) for n, ok, d in targets))
    return {"results": results, "scaling": scaling, "targets": targets, "table_md": md_path, "table_csv": csv_path,
            "results_md": args.results_md, "wall_s": total.seconds}


if __name__ == "__main__":
    main()
