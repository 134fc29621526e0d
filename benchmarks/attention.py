"""Where a KHaR training step's time goes on the CPU, and what bounds its share of the matmul rate:
the attention kernel at KHaR's shapes (16-wide heads).

    python -m benchmarks.attention --quick --threads 1    # MOSI shapes, the paper's Table 5 config
    python -m benchmarks.attention --smoke                # seconds (tests)

Two measurements in one process, each beside the fp32 2048x2048 matmul rate (``--smoke``: 256x256)
measured right before and after it:

* **the kernel**: ``scaled_dot_product_attention`` forward and backward at the shapes KHaR's audio and
  vision encoders and adapters run at (batch 16; the frames of the speed benchmark's planted MOSI
  batch after the trainer cuts it to its longest clip; Table 5's heads; a key-padding mask as the
  model passes it), FLOPs in the math form (4·b·h·n²·d forward, twice that backward);
* **the per-op profile of a step**: one KHaR training step (:class:`benchmarks.steppers.Stepper`,
  the speed benchmark's batch) under ``torch.profiler``, its self CPU time grouped by category
  (attention kernels, matrix products, copies and fills, dropout masks, optimizer, the rest), each
  with its FLOPs (FlopCounterMode on an earlier step) and rate, and the bound that follows: the
  step's share of the matmul rate if only attention and the matrix products took time.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Dict, List, Optional, Sequence

from . import common
from .common import Timer
from .rates import MATMUL_N

logger = logging.getLogger("MMSA")

SETTINGS = {
    # (b, h, n, d_head): the attention calls of a KHaR step at MOSI shapes (profiled): audio cut to
    # 354 frames and vision to 494, adapters with 4 heads and encoders with 8, d_m 128 -> 16 wide
    # matmul_n: the reference matmul's size (smoke: small, its test checks the rates' arithmetic, not the rate)
    "quick": {"shapes": [(16, 8, 494, 16), (16, 4, 494, 16), (16, 8, 354, 16), (16, 4, 354, 16)],
              "seq_lens": (50, 375, 500), "batch": 16, "repeats": 3, "matmul_n": MATMUL_N},
    "full": {"shapes": [(16, 8, 494, 16), (16, 4, 494, 16), (16, 8, 354, 16), (16, 4, 354, 16)],
             "seq_lens": (50, 375, 500), "batch": 16, "repeats": 5, "matmul_n": MATMUL_N},
    "smoke": {"shapes": [(2, 2, 24, 8)], "seq_lens": (8, 20, 24), "batch": 4, "repeats": 1, "matmul_n": 256},
}
ATTENTION_OPS = ("scaled_dot_product", "flash_attention")  # profiler op names of the SDPA kernels


def attention_rates(shape: Sequence[int], repeats: int) -> Dict[str, float]:
    """Best-of-``repeats`` forward and backward seconds of masked SDPA at ``shape`` (one warm-up)."""
    import torch
    from torch.nn import functional as F
    b, h, n, d = shape
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(n // 2, n + 1, (b,), generator=g)
    lengths[0] = n  # the batch is cut to its longest clip
    mask = (torch.arange(n)[None] < lengths[:, None])[:, None, None, :]
    qkv = torch.randn(b, n, 3, h, d, generator=g, requires_grad=True)  # packed, as the model's in_proj
    forward, backward = [], []
    for _ in range(repeats + 1):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        t0 = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        forward.append(t1 - t0)
        backward.append(t2 - t1)
    gflop = 4 * b * h * n * n * d / 1e9
    fwd, bwd = min(forward[1:]), min(backward[1:])
    return {"forward_s": fwd, "backward_s": bwd, "forward_gflops": gflop / fwd, "backward_gflops": 2 * gflop / bwd}


#: Categories of the per-op profile: (name, op-name test on the profiler's key, FLOP ops of FlopCounterMode)
CATEGORIES = (
    ("attention kernels (SDPA forward and backward)", lambda k: any(s in k for s in ATTENTION_OPS),
     lambda op: "scaled_dot_product" in op or "flash_attention" in op),
    ("matrix products (mm, addmm, bmm)", lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
     lambda op: op.split(".")[-1] in ("mm", "addmm", "bmm", "baddbmm")),
    ("copies and fills (copy_, fill_, cat, zero_)", lambda k: k in ("aten::copy_", "aten::fill_", "aten::cat", "aten::zero_"),
     lambda op: False),
    ("dropout masks (random_, bernoulli_)", lambda k: k in ("aten::random_", "aten::bernoulli_"), lambda op: False),
    ("optimizer (fused AdamW)", lambda k: "adamw" in k.lower(), lambda op: False),
)
OTHER = "everything else (element-wise, LayerNorm, GELU, reductions, indexing, autograd bookkeeping)"


def step_profile(encoder: Any, mode: str, batch_size: int, seq_lens: Sequence[int],
                 matmul_n: int = MATMUL_N) -> Dict[str, Any]:
    """One KHaR training step (after two warm-up steps, the first of them FLOP-counted) under
    ``torch.profiler``, its self CPU time grouped into :data:`CATEGORIES`, each with its FLOPs
    (FlopCounterMode, attention in its math form) and rate; the matmul rate right before and after."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from .rates import matmul_rate, register_cpu_attention_flops
    from .steppers import Stepper, make_batch
    batch = make_batch(encoder, batch_size, seq_lens)
    cpu = torch.device("cpu")
    stepper = Stepper("khar", encoder, batch, cpu, mode)
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        stepper.step()
    op_flops = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    stepper.step()
    before = matmul_rate(cpu, matmul_n)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_s = stepper.step()
    rate = (before + matmul_rate(cpu, matmul_n)) / 2
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    cats: Dict[str, Dict[str, float]] = {}
    for name, is_key, is_flop_op in CATEGORIES:
        cats[name] = {"s": sum(e.self_cpu_time_total for e in events if is_key(e.key)) / 1e6,
                      "gflop": sum(n for op, n in op_flops.items() if is_flop_op(op)) / 1e9}
    cats[OTHER] = {"s": total_us / 1e6 - sum(c["s"] for c in cats.values()),
                   "gflop": sum(op_flops.values()) / 1e9 - sum(c["gflop"] for c in cats.values())}
    att, mm = cats[CATEGORIES[0][0]], cats[CATEGORIES[1][0]]
    gflop = sum(op_flops.values()) / 1e9
    profiled_s = total_us / 1e6
    return {"step_s": step_s, "profiled_s": profiled_s, "attention_s": att["s"],
            "attention_share": att["s"] / profiled_s if profiled_s else float("nan"),
            "categories": cats, "gflop": gflop, "matmul_gflops": rate,
            "share_of_matmul": gflop / profiled_s / rate,
            # the step's share if only attention and the matrix products took time, at their measured rates
            "ceiling_share": gflop / (att["s"] + mm["s"]) / rate,
            # ... and if the matrix products also ran at the reference matmul rate
            "attention_bound_share": gflop / (att["s"] + (gflop - att["gflop"]) / rate) / rate}


def profile_table(step: Dict[str, Any]) -> str:
    rate = step["matmul_gflops"]
    rows = []
    for name, c in step["categories"].items():
        speed = c["gflop"] / c["s"] if c["s"] > 0 and c["gflop"] > 0 else None
        rows.append([name, f"{c['s'] * 1000:.0f}", f"{c['s'] / step['profiled_s']:.0%}", f"{c['gflop']:.1f}",
                     "-" if speed is None else f"{speed:.1f}", "-" if speed is None else f"{speed / rate:.0%}"])
    rows.append(["**the step**", f"{step['profiled_s'] * 1000:.0f}", "100%", f"{step['gflop']:.1f}",
                 f"{step['gflop'] / step['profiled_s']:.1f}", f"{step['share_of_matmul']:.0%}"])
    return common.markdown_table(["where the step's time goes", "self CPU time (ms)", "share of the step", "GFLOP",
                                  "GFLOP/s", f"share of the matmul rate ({rate:.0f} GFLOP/s)"], rows)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args, _ = common.parse_cli(argparse.ArgumentParser(description=__doc__.split("\n")[0]), argv, lambda a: "attention")
    from .rates import matmul_rate
    import torch

    settings = SETTINGS[args.mode]
    machine = common.machine_description()
    encoder = common.text_encoder(args)
    cpu = torch.device("cpu")
    rows: List[Dict[str, Any]] = []
    with Timer() as total:
        for shape in settings["shapes"]:
            before = matmul_rate(cpu, settings["matmul_n"])
            r = attention_rates(shape, settings["repeats"])
            rate = (before + matmul_rate(cpu, settings["matmul_n"])) / 2
            rows.append({"shape": tuple(shape), "matmul_gflops": rate, **r})
            logger.info(f"[attention] {shape}: forward {r['forward_gflops']:.0f}, backward {r['backward_gflops']:.0f} "
                        f"GFLOP/s; matmul {rate:.0f}")
        step = step_profile(encoder, args.mode, settings["batch"], settings["seq_lens"], settings["matmul_n"])
    table = common.markdown_table(
        ["(b, h, n, d_head)", "forward (ms)", "forward GFLOP/s", "backward (ms)", "backward GFLOP/s",
         "matmul GFLOP/s (same process)", "share of matmul rate: forward / backward"],
        [[str(r["shape"]), f"{r['forward_s'] * 1e3:.1f}", f"{r['forward_gflops']:.1f}", f"{r['backward_s'] * 1e3:.1f}",
          f"{r['backward_gflops']:.1f}", f"{r['matmul_gflops']:.1f}",
          f"{r['forward_gflops'] / r['matmul_gflops']:.0%} / {r['backward_gflops'] / r['matmul_gflops']:.0%}"]
         for r in rows])
    body = (table + "\n\n"
            "Per-op profile of one KHaR training step (torch.profiler, self CPU time by category; FLOPs by "
            "FlopCounterMode on an earlier step of the same model, attention in its math form):\n\n"
            + profile_table(step) + "\n\n"
            f"Bound: if only the attention kernels and the matrix products took time, at the rates measured here, the "
            f"step would run at **{step['ceiling_share']:.0%}** of the matmul rate; with every FLOP outside attention "
            f"at the full matmul rate and attention at its measured rate, **{step['attention_bound_share']:.0%}**.\n\n"
            f"One KHaR training step (the speed benchmark's batch: {settings['batch']} clips, text/audio/vision "
            f"{'/'.join(map(str, settings['seq_lens']))}, {'a tiny BERT and the smoke config' if args.mode == 'smoke' else 'the paper Table 5 config, all-MiniLM-L6-v2'}) "
            f"under torch.profiler: {step['profiled_s']:.2f} s of operator time, of which the attention kernels "
            f"(forward and backward) {step['attention_s']:.2f} s = **{step['attention_share']:.0%}** "
            f"(step wall time {step['step_s']:.2f} s, profiled).\n\n"
            "FLOPs of attention in the math form (forward 4·b·h·n²·d, backward twice that), as speed.py counts "
            "them. A key-padding mask as the model passes it ((b, 1, 1, n) bool; lengths drawn between n/2 and n). "
            "The matmul rate is the mean of one measurement before and one after each shape.")
    text = common.section("Attention kernel rate at KHaR's shapes, and its share of a training step",
                          common.command_line("benchmarks.attention", argv), common.machine_line(machine),
                          [], "random q/k/v at KHaR's attention shapes; the speed benchmark's planted MOSI-shaped batch",
                          total.seconds, body)
    common.update_results_md(args.results_md, f"attention-{args.mode}", text)
    (args.tables_dir / f"attention-{args.mode}.md").write_text(body + "\n")
    logger.info("\n" + table)
    return {"rows": rows, "step": step, "results_md": args.results_md}


if __name__ == "__main__":
    main()
