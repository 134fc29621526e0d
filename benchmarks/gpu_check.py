"""The GPU check, in one call (issue 32): KHaR against Self-MM on one GPU, written into RESULTS.md.

    python -m benchmarks.gpu_check          # on a GPU machine: about 8 minutes on one H100 (section gpu-check)
    python -m benchmarks.gpu_check --dry    # the same code path on the CPU at tiny sizes, in seconds (tests)

Three tables, each from :func:`benchmarks.speed.measure` (the speed benchmark's training steps,
FLOPs by FlopCounterMode, fp32 matmul rate measured in the same process, peak memory by
``torch.cuda.max_memory_allocated``):

1. **MOSI shapes** (batch 16, text 50 tokens, audio 375x5, vision 500x20, the planted batch of the
   speed benchmark): KHaR and Self-MM, each eager and under ``torch.compile`` (compile time apart),
   step time and share of the matmul rate; text encoder of all-MiniLM-L6-v2's size.
2. **The paper's size** (Table 5: bert-base, MOSI's batch 64): KHaR and Self-MM eager, step time
   and peak memory.
3. **A two-epoch run at the paper's size** on planted MOSI-format data (``khar_mmsa.data.planted``,
   MOSI's split sizes and shapes) through ``MMSA_run('khar', 'mosi')``: adapter pretraining on
   (2 epochs per modality), 2 main epochs; wall time and the test metrics.

The device machine has no hub access, so both text encoders are **randomly initialised**
``BertConfig`` models of the named sizes (all-MiniLM-L6-v2: 6 layers, 384 wide, 12 heads, 1536
feed-forward; bert-base: 12 layers, 768, 12 heads, 3072; vocabulary 30522), with a small WordPiece
vocabulary for the planted token ids: the arithmetic and memory of the pretrained models, not
their weights. Targets: KHaR's step no slower than Self-MM's, and >= 10 % of the matmul rate.

``--dry``: the CPU, a tiny BERT, the smoke-sized KHaR config, a few clips, one timed step, and
``torch.compile(backend='eager')`` (dynamo traces the model; no code generation, which takes
minutes on a CPU); the tables go to ``<out>/RESULTS.md``. About 1.5 minutes on the loaded 2-core
CPU, most of it dynamo tracing; the suite's test (tests/test_gpu_check.py) stands a counting
wrapper in for ``torch.compile``, as the speed benchmark's tests do.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import common
from .common import Timer

logger = logging.getLogger("MMSA")

MINILM_SIZE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
BERT_BASE_SIZE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SETTINGS = {
    "gpu": dict(device="cuda:0", mode="full", batch=16, paper_batch=64, seq_lens=(50, 375, 500), warmup=3, steps=20,
                matmul_n=4096, encoder=MINILM_SIZE, paper_encoder=BERT_BASE_SIZE, vocab=30522,
                planted_sizes=(1284, 229, 686), planted_seq_lens=(50, 375, 500), epochs=2, backend="inductor",
                khar={}),
    "dry": dict(device="cpu", mode="smoke", batch=4, paper_batch=4, seq_lens=(8, 10, 12), warmup=1, steps=1,
                matmul_n=128, encoder=TINY_SIZE, paper_encoder=TINY_SIZE, vocab=128,
                planted_sizes=(16, 8, 8), planted_seq_lens=(8, 10, 12), epochs=2, backend="eager",
                khar={"batch_size": 8, "modal_dim": 16, "encoder_layers": 1, "encoder_heads": 2, "encoder_ff_dim": 16,
                      "text_adapters": 1, "av_adapters": 1, "adapter_heads": 2, "adapter_inner_layers": 1,
                      "expert_hidden_dim": 16, "fine_grained_dim": 8, "fusion_hidden_dim": 16, "latent_dim": 8,
                      "save_curves": False}),
}
SHARE_TARGET = 0.10  # of the fp32 matmul rate, on a GPU (issue 32)


def random_bert(folder: Path, size: Mapping[str, int], vocab: int) -> Path:
    """A randomly initialised BERT of ``size`` in ``folder`` (no hub access needed), with the small
    WordPiece vocabulary of :func:`khar_mmsa.model.text_encoders.make_tiny_bert` for tokenizing."""
    import torch
    from transformers import BertConfig, BertModel

    from khar_mmsa.model.text_encoders import make_tiny_bert
    if (folder / "config.json").is_file() and (folder / "vocab.txt").is_file():
        return folder
    make_tiny_bert(folder)  # the tokenizer files; the model is replaced below
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=512, type_vocab_size=2, **size)).save_pretrained(folder)
    return folder


def step_rows(encoder: Path, batch_size: int, s: Mapping[str, Any], compiled: bool) -> Dict[str, Dict[str, Any]]:
    """KHaR and Self-MM on one batch: eager, and with ``compiled`` also under torch.compile."""
    from .speed import measure
    from .steppers import make_batch
    batch = make_batch(encoder, batch_size, s["seq_lens"])
    rows: Dict[str, Dict[str, Any]] = {}
    for model in ("khar", "self_mm"):
        for comp in ((False, True) if compiled else (False,)):
            key = model + ("+compile" if comp else "")
            logger.info(f"[gpu-check] {key}, batch {batch_size}, encoder {encoder.name}")
            rows[key] = measure(model, str(encoder), batch, s["mode"], s, s["device"], {}, own_loss_share=False,
                                compile=comp, compile_backend=s["backend"])
    return rows


def step_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    from .speed import compile_cell, row_title
    ref = rows["self_mm"]
    out = []
    for key, r in rows.items():
        if "compile_error" in r:
            out.append([row_title(key), f"torch.compile failed: {r['compile_error']}"] + ["-"] * 6)
            continue
        out.append([row_title(key), f"{r['step_s'] * 1000:.1f}", f"{r['gflop_per_step']:.1f}",
                    f"{r['achieved_gflops']:.0f}", f"{r['matmul_gflops']:.0f}", f"{100 * r['share_of_matmul']:.1f}%",
                    f"{r['peak_mem_mib']:.0f}", f"{r['step_s'] / ref['step_s']:.2f}x", compile_cell(r)])
    return common.markdown_table(["Model", "step (ms, median)", "GFLOP / step", "achieved GFLOP/s",
                                  "fp32 matmul rate (GFLOP/s, same process)", "share of matmul rate",
                                  f"peak memory (MiB, {next(iter(rows.values())).get('mem_method', '-')})",
                                  "step vs Self-MM (eager)", "compile + first compiled step (s)"], out)


def planted_run(args: argparse.Namespace, encoder: Path, s: Mapping[str, Any]) -> Dict[str, Any]:
    """Two epochs of ``MMSA_run('khar', 'mosi')`` on planted data at the paper's size."""
    path, info = common.make_planted(args.out, "mosi", s["planted_sizes"], s["planted_seq_lens"], encoder)
    config = {"pretrained": str(encoder), "epochs": s["epochs"], "early_stop": s["epochs"],
              "pretrain_epochs": s["epochs"], **s["khar"]}
    spec = common.mmsa_spec("khar", "mosi", path, 1111, args.out / "planted-run", config, label="gpu-check")
    outcome = common.run_specs([spec], args, "gpu-check")
    res = common.collect("gpu-check planted", "khar", [spec], outcome, config)
    return {"result": res, "data": common.planted_description(info), "config": common.shown_config(config)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="the CPU at tiny sizes, in seconds (tests)")
    parser.add_argument("--out", type=Path, default=None, help=f"work folder (default {common.DEFAULT_WORK_DIR}/gpu-check)")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="RESULTS.md to write the section into (default benchmarks/RESULTS.md; --dry: <out>/RESULTS.md)")
    from khar_mmsa.experiments.sweep import add_executor_args
    add_executor_args(parser)
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    import torch
    s = SETTINGS["dry" if args.dry else "gpu"]
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_check: no CUDA device here; on a CPU run it with --dry")
    args.out = Path(args.out or common.DEFAULT_WORK_DIR / ("gpu-check-dry" if args.dry else "gpu-check"))
    args.out.mkdir(parents=True, exist_ok=True)
    results_md = args.results_md or (args.out / "RESULTS.md" if args.dry else common.RESULTS_MD)
    machine = common.machine_description()
    import khar_mmsa  # noqa: F401  - registers 'khar' with MMSA
    walls: Dict[str, float] = {}
    with Timer() as total:
        small = random_bert(args.out / "bert-minilm-size", s["encoder"], s["vocab"])
        paper = random_bert(args.out / "bert-base-size", s["paper_encoder"], s["vocab"])
        with Timer() as t:
            mosi = step_rows(small, s["batch"], s, compiled=True)
        walls["mosi"] = t.seconds
        with Timer() as t:
            paper_rows = step_rows(paper, s["paper_batch"], s, compiled=False)
        walls["paper"] = t.seconds
        with Timer() as t:
            run = planted_run(args, paper, s)
        walls["planted"] = t.seconds
    targets = target_lines(mosi, paper_rows)
    r = run["result"]
    body = "\n".join([
        f"MOSI shapes, batch {s['batch']}, text encoder of all-MiniLM-L6-v2's size (random weights) "
        f"({common.fmt_seconds(walls['mosi'])}):", "", step_table(mosi), "",
        f"The paper's size (Table 5: bert-base, random weights), batch {s['paper_batch']} "
        f"({common.fmt_seconds(walls['paper'])}):", "", step_table(paper_rows), "",
        f"Two-epoch run at the paper's size through MMSA_run('khar', 'mosi') ({common.fmt_seconds(walls['planted'])}; "
        f"config overrides {run['config']}): test MAE {common.fmt_stat('MAE', r.stats.get('MAE'))}, "
        f"Corr {common.fmt_stat('Corr', r.stats.get('Corr'))}, run wall time {common.fmt_seconds(r.wall_s)}. "
        f"Data: {run['data']}", "",
        "Text encoders: randomly initialised BertConfig models of the named sizes (no hub access on the "
        "device machine): the arithmetic and memory of the pretrained models, not their weights. Compiled "
        f"rows: torch.compile(backend='{s['backend']}'), GFLOP counted on an uncompiled step."
        + (" **Dry run on the CPU at tiny sizes: the code path, not a measurement.**" if args.dry else ""),
        "", "Targets:", *[common.target_line(n, ok, d) for n, ok, d in targets]])
    text = common.section("GPU check: KHaR and Self-MM step time, share of the matmul rate and memory on one GPU"
                          + (" (dry run, CPU)" if args.dry else ""),
                          common.command_line("benchmarks.gpu_check", argv), common.machine_line(machine), [1111],
                          "the speed benchmark's planted MOSI-shaped batches; planted MOSI-format data for the run",
                          total.seconds, body)
    common.update_results_md(results_md, "gpu-check" + ("-dry" if args.dry else ""), text)
    logger.info("\n" + body)
    return {"mosi": mosi, "paper": paper_rows, "run": run, "targets": targets, "results_md": results_md,
            "wall_s": total.seconds, "walls": walls}


def target_lines(mosi: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Mapping[str, Any]]) -> List[tuple]:
    """(name, met, detail) of the issue's two GPU targets, eager and compiled, at MOSI shapes and the paper's size."""
    out = []
    for label, rows in (("MOSI shapes", mosi), ("the paper's size", paper)):
        for suffix in ("", "+compile"):
            k, m = rows.get("khar" + suffix), rows.get("self_mm" + suffix)
            if not k or not m or "compile_error" in k or "compile_error" in m:
                continue
            how = "compiled" if suffix else "eager"
            out.append((f"KHaR's step no slower than Self-MM's ({label}, {how})", k["step_s"] <= m["step_s"],
                        f"KHaR {k['step_s'] * 1000:.1f} ms vs Self-MM {m['step_s'] * 1000:.1f} ms"))
            out.append((f"KHaR at >= {SHARE_TARGET:.0%} of the fp32 matmul rate ({label}, {how})",
                        k["share_of_matmul"] >= SHARE_TARGET,
                        f"{k['achieved_gflops']:.0f} GFLOP/s of {k['matmul_gflops']:.0f} = {100 * k['share_of_matmul']:.1f}%"))
    return out


if __name__ == "__main__":
    main()
