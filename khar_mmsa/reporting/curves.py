"""The picture every finished KHaR run leaves beside its log: ``<log_dir>/khar-<dataset>-curves.png``.

Top row: each raw (unweighted) loss term per epoch, training-set means -- task, MIB NLL, KL, MoE
balance, contrastive (eq. 22's terms before their weights), each on its own scale.  Bottom row: the
validation KeyEval per epoch with the best epoch marked (the checkpoint MMSA tests), and the share of
routing decisions each expert got in the last epoch, per modality.

matplotlib is optional (``pip install matplotlib``); it is imported here only, lazily, and drawn with
its Agg canvas, so no GUI backend is needed and pyplot's global state is never touched.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

logger = logging.getLogger(f"MMSA.{__name__}")

#: Raw loss terms drawn, in the order of eq. 22, with their panel titles.
LOSS_TERMS = {"task": "task |y - D(mu)|", "mib_nll": "MIB NLL |y - D(z)|", "mib_kl": "MIB KL",
              "moe_balance": "MoE balance CV²", "contrastive": "contrastive L_CL"}
MODALITY_NAMES = {"t": "text", "a": "audio", "v": "vision"}


def save_training_curves(history: Sequence[Mapping], path: os.PathLike, key_eval: str, best_epoch: int,
                         title: str = "") -> bool:
    """Draw ``history`` (one dict per epoch: ``epoch``, ``valid``, ``raw`` {term: value},
    ``expert_load`` {modality: [share per expert]}) to the PNG ``path`` (written atomically).

    Returns False (with a warning) when matplotlib is not installed or there is nothing to draw."""
    if not history:
        logger.warning(f"No finished epoch: no training curves written to {path}")
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(f"matplotlib is not installed: no training curves at {path} "
                       f"(pip install matplotlib, or config={{'save_curves': False}} to silence this)")
        return False

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(15, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(LOSS_TERMS))
    for i, (term, label) in enumerate(LOSS_TERMS.items()):
        ax = fig.add_subplot(grid[0, i])
        values = [h["raw"].get(term, float("nan")) for h in history]
        ax.plot(epochs, values, marker="o", color=f"C{i}")
        _mark_best(ax, best_epoch)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        if i == 0:
            ax.set_ylabel("raw term, training mean\n(dashed: best epoch)")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))

    ax = fig.add_subplot(grid[1, :2])
    valid = [h["valid"] for h in history]
    ax.plot(epochs, valid, marker="o", color="C0", label=f"valid {key_eval}")
    best = [v for e, v in zip(epochs, valid) if e == best_epoch]
    if best:
        ax.plot([best_epoch], best, marker="*", markersize=16, color="C3", linestyle="none",
                label=f"best: epoch {best_epoch}, {best[0]:.4f}")
    _mark_best(ax, best_epoch)
    ax.set_title(f"validation {key_eval} (checkpoint = best epoch)", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key_eval)
    ax.legend(loc="best", fontsize=9)

    ax = fig.add_subplot(grid[1, 2:])
    _draw_expert_load(ax, history[-1].get("expert_load") or {}, history[-1]["epoch"])
    fig.suptitle(title or "KHaR training curves")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from khar_mmsa.io.files import atomic_open
    with atomic_open(path, "wb") as f:  # never through a link; an existing file keeps its mode, a new one 0644
        fig.savefig(f, format="png", dpi=100)
    return True


def _mark_best(ax, best_epoch: Optional[int]) -> None:
    if best_epoch:
        ax.axvline(best_epoch, color="0.5", linestyle="--", linewidth=1)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _draw_expert_load(ax, load: Mapping[str, Sequence[float]], epoch: int) -> None:
    """Grouped bars: modality on x, one bar per expert; the dashed line is a perfectly even split."""
    if not load:
        ax.text(0.5, 0.5, "no mixture of experts (refiner is not 'moe')", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    modalities = list(load)
    experts = max(len(v) for v in load.values())
    width = 0.8 / experts
    for e in range(experts):
        xs = [i - 0.4 + width * (e + 0.5) for i in range(len(modalities))]
        ys = [load[m][e] if e < len(load[m]) else 0.0 for m in modalities]
        ax.bar(xs, ys, width=width * 0.95, color=f"C{e}", label=f"expert {e + 1}")
    ax.axhline(1.0 / experts, color="0.3", linestyle="--", linewidth=1, label="even split")
    ax.set_xticks(range(len(modalities)), [MODALITY_NAMES.get(m, m) for m in modalities])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of routing decisions")
    ax.set_title(f"expert load per modality, epoch {epoch} (training)", fontsize=10)
    ax.legend(loc="upper right", fontsize=9, ncol=experts + 1)
