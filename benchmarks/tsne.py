"""Figure 4: t-SNE of KHaR's fused representation on the test set, four variants, one PNG.

    python -m benchmarks.tsne --quick        # planted MOSI, minutes on 2 CPUs -> benchmarks/figure4_tsne.png
    python -m benchmarks.tsne --full         # real MOSI sizes and the paper's settings (GPU)

Panels (the paper's Figure 4 a-d): KHaR, MoE -> MLP (``refiner='mlp'``), w/o CL
(``contrastive_weight=0``), w/o MIB (``fusion='concat'``).  Each variant is built with
``khar_mmsa.model.khar.KHaR(config)`` and trained with ``khar_mmsa.training.trainer.KHaRTrainer`` on MMSA's
loader (``MMSA.data_loader.MMDataLoader``, config from ``MMSA.config.get_config_regression`` after
``import khar_mmsa``); the best-validation checkpoint is reloaded and
``do_test(..., return_sample_results=True)`` gives the fused representations (``Feature_f``: mu
of the bottleneck for MIB, the fusion output otherwise) and labels.  t-SNE (scikit-learn, PCA
init, fixed random_state) maps them to 2-D, coloured by polarity (positive / negative / neutral).
Beside the picture, each panel reports the test MAE and the silhouette score of the polarity
classes in the original representation space (higher = better separated), so the figure is
not only judged by eye.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import common
from .common import Timer
from .ablations import KHAR_QUICK_ABLATION
from .compare import KHAR_SMOKE

logger = logging.getLogger("MMSA")

PANELS: List[Tuple[str, Dict[str, Any]]] = [
    ("(a) KHaR", {}),
    ("(b) MoE -> MLP", {"refiner": "mlp"}),
    ("(c) w/o CL", {"contrastive_weight": 0.0}),
    ("(d) w/o MIB (concat fusion)", {"fusion": "concat"}),
]
SIZES = {"smoke": (16, 8, 12), "quick": (160, 64, 256), "full": None}
SEQ_LENS = {"smoke": (8, 10, 12), "quick": (20, 32, 32), "full": None}
FIGURE = common.BENCH_DIR / "figure4_tsne.png"


def train_and_embed(feature_path: Path, dataset: str, overrides: Mapping[str, Any], seed: int,
                    out: Path) -> Dict[str, Any]:
    """Train one KHaR variant with KHaRTrainer on MMSA's loader; fused test representations."""
    import numpy as np
    import torch

    import khar_mmsa  # noqa: F401  - registers 'khar' and our config before MMSA's config is read
    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader

    from khar_mmsa.config import KHaRConfig
    from khar_mmsa.registration import metrics_for
    from khar_mmsa.model.khar import KHaR
    from khar_mmsa.io.files import safe_torch_load
    from khar_mmsa.training.seeding import seed_everything
    from khar_mmsa.training.trainer import KHaRTrainer

    out.mkdir(parents=True, exist_ok=True)
    args = get_config_regression("khar", dataset)
    args.update({"custom_feature": str(feature_path), "featurePath": str(feature_path), "feature_T": None,
                 "feature_A": None, "feature_V": None, "device": torch.device("cpu"),
                 "train_mode": "regression", "cur_seed": 1, "model_save_path": out / f"khar-{dataset}.pth"})
    args.update(dict(overrides))
    seed_everything(seed)
    loaders = MMDataLoader(args, 0)           # fills feature_dims / seq_lens from the pickle
    config = KHaRConfig.from_mmsa_args(args)  # MMSA's args, converted once
    model = KHaR(config)
    trainer = KHaRTrainer(args, config=config, metrics=metrics_for(dataset))
    with Timer() as t:
        trainer.do_train(model, loaders)
    model.load_state_dict(safe_torch_load(args["model_save_path"]))
    res = trainer.do_test(model, loaders["test"], mode="TEST", return_sample_results=True)
    return {"features": np.asarray(res["Features"]["Feature_f"]), "labels": np.asarray(res["Labels"], dtype=float),
            "MAE": float(res["MAE"]), "acc_key": "Mult_acc_5" if common.is_sims_like(dataset) else "Mult_acc_7",
            "acc": float(res.get("Mult_acc_7", res.get("Mult_acc_5", float("nan")))), "train_s": t.seconds}


def polarity(labels: Any) -> Any:
    import numpy as np
    return np.where(labels > 0, 1, np.where(labels < 0, -1, 0))


def embed_2d(features: Any, seed: int = 0) -> Any:
    from sklearn.manifold import TSNE
    n = features.shape[0]
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def separation(features: Any, labels: Any) -> float:
    """Silhouette score of positive vs negative samples (neutral left out) in the original space."""
    from sklearn.metrics import silhouette_score
    pol = polarity(labels)
    keep = pol != 0
    if len(set(pol[keep])) < 2 or keep.sum() < 4:
        return float("nan")
    return float(silhouette_score(features[keep], pol[keep]))


def plot(panels: Sequence[Tuple[str, Dict[str, Any]]], path: Path, suptitle: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    styles = [(1, "positive", "tab:red"), (-1, "negative", "tab:blue"), (0, "neutral", "tab:gray")]
    for ax, (title, r) in zip(axes.ravel(), panels):
        xy, pol = r["xy"], polarity(r["labels"])
        for value, name, colour in styles:
            sel = pol == value
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, c=colour, alpha=0.7, label=f"{name} ({int(sel.sum())})")
        ax.set_title(f"{title}\ntest MAE {r['MAE']:.3f}, silhouette(pos/neg) {r['silhouette']:.3f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mosi", choices=("mosi", "mosei", "sims", "simsv2"))
    parser.add_argument("--figure", type=Path, default=None,
                        help=f"output PNG (default {FIGURE.relative_to(common.REPO_DIR)}; --smoke: <out>/figure4_tsne.png)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    run_name = f"tsne-planted-{args.dataset}"
    common.resolve_paths(args, run_name)
    seed = (args.seeds or [1111])[0]
    figure = args.figure or (args.out / "figure4_tsne.png" if args.mode == "smoke" else FIGURE)
    machine = common.machine_description()
    with Timer() as total:
        encoder = common.text_encoder(args)
        from khar_mmsa.data.planted import DATASET_SPECS
        sizes = SIZES[args.mode] or DATASET_SPECS[args.dataset].real_sizes
        feature_path, info = common.make_planted(args.out, args.dataset, sizes, SEQ_LENS[args.mode], encoder)
        base = {"pretrained": str(encoder)}
        base.update(KHAR_SMOKE if args.mode == "smoke" else KHAR_QUICK_ABLATION if args.mode == "quick" else {})
        panels = []
        for i, (title, switch) in enumerate(PANELS):
            cfg = dict(base, **switch)
            cfg["pretrained_adapters_path"] = str(args.out / f"adapters-seed{seed}.pt")  # same pretraining config for all four
            logger.info(f"[tsne] {title}: training with overrides {switch or 'none'}")
            r = train_and_embed(feature_path, args.dataset, cfg, seed, args.out / f"panel{i}")
            r["xy"] = embed_2d(r["features"])
            r["silhouette"] = separation(r["features"], r["labels"])
            logger.info(f"[tsne] {title}: test MAE {r['MAE']:.3f}, silhouette {r['silhouette']:.3f}, "
                        f"{r['features'].shape[0]} test samples, representation width {r['features'].shape[1]}")
            panels.append((title, r))
        plot(panels, figure, f"t-SNE of the fused test representation — planted-signal {args.dataset.upper()} "
                             f"({args.mode}, seed {seed})")

    header = ["Panel", "switch", "test MAE", "Acc-5" if common.is_sims_like(args.dataset) else "Acc-7",
              "silhouette pos/neg (fused space)", "representation width", "train time"]
    rows = [[t, "`" + (", ".join(f"{k}={v!r}" for k, v in s.items()) or "default") + "`", f"{r['MAE']:.3f}",
             f"{100 * r['acc']:.2f}", f"{r['silhouette']:.3f}", r["features"].shape[1], common.fmt_seconds(r["train_s"])]
            for (t, s), (_, r) in zip(PANELS, panels)]
    table = common.markdown_table(header, rows)
    try:
        rel = figure.resolve().relative_to(Path(args.results_md).resolve().parent)
    except ValueError:
        rel = figure
    body = "\n".join([
        f"![Figure 4 t-SNE]({rel})", "", table, "",
        f"{info.sizes[2]} test samples coloured by polarity (positive > 0 > negative; neutral = 0). "
        "One seed; t-SNE with PCA init and random_state 0. The paper's Figure 4 is on real MOSI features; "
        "this is planted data, so only the relative picture is meaningful.",
        f"KHaR overrides: `{ {k: v for k, v in base.items() if k != 'pretrained'} }`, text encoder "
        f"{common.encoder_name(encoder)}" + (" (frozen in quick mode, as in ablations.py)" if args.mode == "quick" else "")
        + "; adapters pretrained once and shared by the four variants.",
    ])
    title = f"Figure 4: t-SNE of the fused representation on planted-signal {args.dataset.upper()} ({args.mode})"
    stem = f"{run_name}-{args.mode}"
    md_path = args.tables_dir / f"{stem}.md"
    md_path.write_text(f"# {title}\n\n{body}\n")
    text = common.section(title, common.command_line("benchmarks.tsne", argv), common.machine_line(machine), [seed],
                          common.planted_description(info), total.seconds, body)
    common.update_results_md(args.results_md, stem, text)
    logger.info(f"\n{table}\nfigure: {figure}; section '{stem}' of {args.results_md}; wall {common.fmt_seconds(total.seconds)}")
    return {"panels": panels, "figure": figure, "table_md": md_path, "results_md": args.results_md,
            "wall_s": total.seconds}


if __name__ == "__main__":
    main()
