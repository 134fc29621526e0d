"""Table 3: KHaR's ablations as config switches of the 'khar' model, each through ``MMSA_run``.

    python -m benchmarks.ablations --quick                    # planted MOSI, 3 seeds, CPU minutes
    python -m benchmarks.ablations --quick --dataset sims     # planted SIMS (T/A/V labels feed adapter pretraining)
    python -m benchmarks.ablations --dataset sims --full      # paper settings (GPU)

Rows (Table 3's groups): the role of each modality (``modalities`` = 'tv', 'av', 'ta' against
'tav'), of the MoE (``refiner`` = 'mlp', 'attention', 'cnn'), of contrastive learning
(``contrastive_weight=0``) and of the fusion (``fusion`` = 'sum', 'concat', 'attention', 'mul'
instead of 'mib').  Columns: MAE, Corr and Acc-7 for MOSI-format data, Acc-5 for SIMS-format data,
with the paper's Table 3 beside (real features; not comparable with planted data).

The adapter-pretraining stage does not depend on the refiner, fusion or contrastive switches (its
inputs are the encoders and adapters only), so it runs once per seed and modality set and those
variants load the same file (``pretrained_adapters_path``, fingerprinted by the library).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from khar_mmsa.mmsa_conventions import MMSA_DEFAULT_SEEDS

from . import common
from .common import RunResult, Timer
from .compare import KHAR_QUICK, KHAR_SMOKE

logger = logging.getLogger("MMSA")

# (group, row title, config switch) in Table 3's order; the full model is the 'V+A+T' row.
VARIANTS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("Role of Each Modality", "V+T", {"modalities": "tv"}),
    ("Role of Each Modality", "V+A", {"modalities": "av"}),
    ("Role of Each Modality", "A+T", {"modalities": "ta"}),
    ("Role of Each Modality", "V+A+T (KHaR)", {}),
    ("Role of the MoE", "MLP_m", {"refiner": "mlp"}),
    ("Role of the MoE", "ATTN_m", {"refiner": "attention"}),
    ("Role of the MoE", "CNN_m", {"refiner": "cnn"}),
    ("Role of Contrastive Learning", "w/o CL", {"contrastive_weight": 0.0}),
    ("Role of Fusion", "SUM", {"fusion": "sum"}),
    ("Role of Fusion", "CON", {"fusion": "concat"}),
    ("Role of Fusion", "ATTN", {"fusion": "attention"}),
    ("Role of Fusion", "MUL", {"fusion": "mul"}),
]

# KHaR paper, Table 3 (ablations on CH-SIMS: MAE, Corr, Acc-5; on MOSI: MAE, Corr, Acc-7).
PAPER_TABLE3: Dict[str, Dict[str, Tuple[float, float, float]]] = {
    "sims": {"V+T": (0.420, 0.571, 42.64), "V+A": (0.587, 0.209, 21.23), "A+T": (0.424, 0.556, 43.98),
             "V+A+T (KHaR)": (0.408, 0.622, 45.30), "MLP_m": (0.425, 0.567, 42.01), "ATTN_m": (0.415, 0.589, 41.36),
             "CNN_m": (0.420, 0.578, 43.11), "w/o CL": (0.436, 0.546, 42.89), "SUM": (0.412, 0.603, 43.98),
             "CON": (0.425, 0.585, 41.79), "ATTN": (0.416, 0.586, 42.89), "MUL": (0.427, 0.567, 42.23)},
    "mosi": {"V+T": (0.714, 0.799, 47.23), "V+A": (1.366, 0.208, 19.68), "A+T": (0.718, 0.783, 47.96),
             "V+A+T (KHaR)": (0.698, 0.8, 49.13), "MLP_m": (0.724, 0.783, 46.79), "ATTN_m": (0.746, 0.775, 46.06),
             "CNN_m": (0.711, 0.789, 46.21), "w/o CL": (0.713, 0.796, 47.23), "SUM": (0.727, 0.786, 47.81),
             "CON": (0.717, 0.792, 47.52), "ATTN": (0.707, 0.798, 47.52), "MUL": (0.706, 0.798, 46.36)},
}

SIZES = {"smoke": (16, 8, 8), "quick": (128, 64, 128), "full": None}
SEQ_LENS = {"smoke": (8, 10, 12), "quick": (20, 32, 32), "full": None}
SEEDS = {"smoke": [1111], "quick": [1111, 1112, 1113], "full": list(MMSA_DEFAULT_SEEDS)}
# Quick mode trains 12 variants: the text encoder is frozen in all of them (fine-tuning MiniLM is
# ~2/3 of a CPU step) and 5 epochs; the variants still differ only in their Table 3 switch.
KHAR_QUICK_ABLATION = dict(KHAR_QUICK, epochs=5, finetune_bert=False)


def layout(dataset: str) -> List[Tuple[str, str]]:
    acc = ("Mult_acc_5", "Acc-5") if common.is_sims_like(dataset) else ("Mult_acc_7", "Acc-7")
    return [("MAE", "MAE"), ("Corr", "Corr"), acc]


def paper_key(dataset: str) -> Optional[str]:
    d = dataset.lower()
    return "sims" if d in ("sims", "simsv2") else "mosi" if d in ("mosi", "mosei") else None


def variant_config(mode: str, encoder: Path, switch: Mapping[str, Any], adapters: Path) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"pretrained": str(encoder), "pretrained_adapters_path": str(adapters)}
    cfg.update(KHAR_SMOKE if mode == "smoke" else KHAR_QUICK_ABLATION if mode == "quick" else {})
    cfg.update(switch)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("planted",), default="planted",
                        help="planted-signal data (the transcripts have no audio/vision to ablate)")
    parser.add_argument("--dataset", default="mosi", choices=("mosi", "mosei", "sims", "simsv2"))
    parser.add_argument("--variants", nargs="+", default=None,
                        help="row titles to run (default: all of Table 3)")
    args, run_name = common.parse_cli(parser, argv, lambda a: f"ablations-{a.data}-{a.dataset}")
    seeds = args.seeds or SEEDS[args.mode]
    machine = common.machine_description()
    variants = [v for v in VARIANTS if args.variants is None or v[1] in args.variants]
    logger.info(f"{run_name} ({args.mode}): {len(variants)} variants x seeds {seeds}")

    with Timer() as total:
        encoder = common.text_encoder(args)
        from khar_mmsa.data.planted import DATASET_SPECS
        sizes = SIZES[args.mode] or DATASET_SPECS[args.dataset].real_sizes
        feature_path, info = common.make_planted(args.out, args.dataset, sizes, SEQ_LENS[args.mode], encoder)
        data_desc = common.planted_description(info)
        specs: Dict[str, list] = {}
        for group, title, switch in variants:
            slug = title.split(" ")[0].replace("/", "").replace("+", "").lower()
            mods = switch.get("modalities", "tav")
            # one MMSA_run per seed: each seed (and modality set) has its own adapter file
            specs[title] = [common.mmsa_spec("khar", args.dataset, feature_path, seed, args.out / slug / str(seed),
                                             variant_config(args.mode, encoder, switch,
                                                            args.out / f"shared-adapters-{mods}-seed{seed}.pt"),
                                             variant=title, label=f"{title} seed {seed}", threads=args.threads)
                            for seed in seeds]
        outcome = common.run_specs([s for runs in specs.values() for s in runs], args, run_name)
        reused = (len(outcome.skipped), sum(len(runs) for runs in specs.values()))
        by_title: Dict[str, RunResult] = {t: common.collect(t, "khar", runs, outcome, runs[-1].config)
                                          for t, runs in specs.items()}
        results: List[Tuple[str, str, RunResult]] = [(g, t, by_title[t]) for g, t, _ in variants]

    columns = layout(args.dataset)
    pkey = paper_key(args.dataset)
    paper = PAPER_TABLE3.get(pkey or "", {})
    header = ["Group", "Variant", "switch"] + [t for _, t in columns] + ["wall"]
    if paper:
        header += [f"paper {t}" for _, t in columns]
    rows = []
    for group, title, res in results:
        switch = next(s for g, t, s in VARIANTS if t == title)
        row = [group, title, "`" + (", ".join(f"{k}={v!r}" for k, v in switch.items()) or "default") + "`"]
        row += [common.fmt_stat(k, res.stats.get(k)) for k, _ in columns] + [common.fmt_seconds(res.wall_s)]
        if paper:
            p = paper.get(title)
            row += [common.fmt_paper(k, None if p is None else p[i]) for i, (k, _) in enumerate(columns)]
        rows.append(row)
    table = common.markdown_table(header, rows)
    stem = f"{run_name}-{args.mode}"
    md_path = args.tables_dir / f"{stem}.md"
    csv_rows = [(title, res.stats) for _, title, res in results]
    paper_rows = [(f"paper Table 3 ({pkey.upper()}): {t}",
                   {k: v[i] for i, (k, _) in enumerate(columns)}) for t, v in paper.items()] if paper else []
    csv_path = common.write_csv_table(args.tables_dir / f"{stem}.csv", csv_rows, columns,
                                      {"wall_s": [round(r.wall_s, 1) for _, _, r in results]}, paper_rows)
    # how each ablation compares with the full model (on the mean), stated plainly
    full = next((r for _, t, r in results if t.startswith("V+A+T")), None)
    lines = []
    if full is not None:
        acc_key = columns[2][0]
        worse = [t for _, t, r in results if r is not full and r.stats["MAE"].mean > full.stats["MAE"].mean]
        better = [t for _, t, r in results if r is not full and r.stats["MAE"].mean <= full.stats["MAE"].mean]
        lines.append(f"Full KHaR MAE {full.stats['MAE'].mean / 100:.3f}, {columns[2][1]} "
                     f"{full.stats[acc_key].mean:.2f}. Variants with a higher (worse) MAE than the full model: "
                     f"{', '.join(worse) or 'none'}; with an equal or lower MAE: {', '.join(better) or 'none'}.")
    lines.append(f"Noise floor MAE of this planted set: {info.noise_floor_mae:.3f}.")
    lines.append(f"KHaR overrides (all variants): `{common.shown_config(variant_config(args.mode, encoder, {}, Path('<shared>')))}`"
                 " plus the row's switch; adapters pretrained once per seed and modality set and shared by the variants "
                 "(their pretraining config is identical).")
    lines.append("Every variant gets the full model's L1 supervision (KHaRCriterion): fusions without a bottleneck "
                 "apply the L1 to their prediction with the combined weight of L_task and -log q(y|z); refiners "
                 "without gates have no balance loss; two-modality rows keep each present modality's terms.")
    if len(seeds) > 1:
        lines.append(f"Mean ± population std over {len(seeds)} seeds: a gap between two rows smaller than their "
                     "stds is within seed noise.")
    if args.mode == "quick":
        lines.append("Quick mode: the text encoder is frozen in every variant (finetune_bert=False) and training is "
                     "short, to fit 12 variants in CPU minutes; compare rows with each other, not with compare.py's KHaR.")
    if paper:
        lines.append(f"'paper' columns: Table 3 of the paper on real {pkey.upper()} features — not comparable with planted data.")
    if len(seeds) == 1:
        lines.append("One seed: differences smaller than a few hundredths of MAE are within seed noise.")
    body = table + "\n\n" + "\n".join(lines)
    title = f"Table 3 layout: KHaR ablations on planted-signal {args.dataset.upper()} data ({args.mode})"
    md_path.write_text(f"# {title}\n\n{body}\n")
    text = common.section(title, common.command_line("benchmarks.ablations", argv), common.machine_line(machine),
                          seeds, data_desc, total.seconds, body, reused=reused)
    common.update_results_md(args.results_md, stem, text)
    logger.info(f"\n{table}")
    logger.info(f"tables: {md_path}, {csv_path}; section '{stem}' of {args.results_md}; wall {common.fmt_seconds(total.seconds)}")
    return {"results": results, "table_md": md_path, "table_csv": csv_path, "results_md": args.results_md,
            "wall_s": total.seconds}


if __name__ == "__main__":
    main()
