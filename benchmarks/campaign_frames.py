"""The decision campaign's runs for pandas and for the eye: the records of each table, one CSV row per
run (``results/campaign-runs.csv``) and the walk's and choices' figures.  From the records alone."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .campaign_plan import CAMPAIGN_CODE_VERSION, LR_ROWS, TABLES, Campaign, Finder, Slot, table_slots

logger = logging.getLogger("MMSA")

TITLES = {"lr": "Learning rate: Table 5's and the quick one, floor and full KHaR",
          "walk": "Walk from the text-only floor to full KHaR",
          "choices": "Open choices, each against the default",
          "table3": "Table 3 on planted MOSI-format data",
          "final": "Final comparison on the test split"}
FIGURES = ("walk", "choices")


# ---- a table's records ----------------------------------------------------------------------------
def slots_by_row(slots: Sequence[Slot]) -> List[Tuple[Any, List[Slot]]]:
    rows: Dict[Tuple[str, str], Tuple[Any, List[Slot]]] = {}
    for slot in slots:
        rows.setdefault((slot.row.key, slot.variant), (slot.row, []))[1].append(slot)
    return list(rows.values())


def found(find: Finder, slots: Sequence[Slot]) -> List[Dict[str, Any]]:
    return [rec for rec in (find(s) for s in slots) if rec is not None]


def values(records: Sequence[Mapping[str, Any]], split: str, key: str) -> np.ndarray:
    field = "valid" if split == "valid" else "metrics"
    return np.array([r["outcome"]["result"][field].get(key, np.nan) for r in records], dtype=float)


def table_records(camp: Campaign, find: Finder, table: str) -> List[Dict[str, Any]]:
    if table == "lr":
        slots = [Slot(row, s, row.rate) for s in camp.seeds for row in LR_ROWS]
    else:
        slots = table_slots(camp, table, find) or []
    return found(find, slots)


# ---- for pandas and for the eye -------------------------------------------------------------------
RUN_COLUMNS = ("table", "variant", "model", "seed", "best_epoch", "valid_MAE", "valid_Corr", "test_MAE", "test_Corr",
               "wall_s", "code", "finished", "run_id")
#: the tables whose test metrics are shown (the protocol reads every other table on validation only)
TEST_TABLES = ("table3", "final")


def runs_frame(camp: Campaign, find: Finder, tables: Sequence[str] = TABLES):
    """One row per run of each table (a run shared by two tables appears in both), for
    ``pandas.read_csv``: its variant, seed, selected epoch and validation metrics (none for MMSA's
    TFN / MulT / Self-MM, whose trainers report the test split only), and its test metrics only in
    the tables that report the test split."""
    import pandas as pd
    rows = []
    for table in tables:
        for rec in table_records(camp, find, table):
            result = rec["outcome"]["result"]
            test = result["metrics"] if table in TEST_TABLES else {}
            valid = result.get("valid", {})   # MMSA's own trainers report the test split only
            rows.append({"table": table, "variant": rec["variant"], "model": rec["model"], "seed": rec["seed"],
                         "best_epoch": result.get("best_epoch"), "valid_MAE": valid.get("MAE"),
                         "valid_Corr": valid.get("Corr"), "test_MAE": test.get("MAE"),
                         "test_Corr": test.get("Corr"), "wall_s": rec["outcome"].get("wall_s"),
                         "code": rec["identity"]["code"], "finished": rec["finished"], "run_id": rec["run_id"]})
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def rows_figure(camp: Campaign, find: Finder, table: str, path: Path) -> bool:
    """The walk or the choices as a picture: each row's validation MAE per seed (dots) and its mean ±
    std (bar), the floor's and the default's means as lines.  False (logged) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(f"matplotlib is not installed: no figure at {path} (pip install '.[bench]')")
        return False
    rows = [(row, values(found(find, slots), "valid", "MAE")) for row, slots in
            slots_by_row(table_slots(camp, table, find) or [])]
    fig = Figure(figsize=(8.5, 0.45 * len(rows) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, (row, maes) in enumerate(rows):
        if maes.size:
            ax.scatter(maes, [y] * maes.size, s=14, color="C0", alpha=0.6, zorder=2)
            ax.errorbar([maes.mean()], [y], xerr=[maes.std()], fmt="D", color="C3", capsize=4, zorder=3)
    for row, maes in rows:
        if row.key in ("floor", "khar") and maes.size:
            ax.axvline(maes.mean(), color="grey" if row.key == "floor" else "C3", linestyle=":", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{row.title} ({maes.size}/{len(camp.seeds)})" for row, maes in rows],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("validation MAE\ndots: seeds; diamond: mean ± std; dotted lines: floor (grey), full KHaR (red)")
    ax.set_title(f"{TITLES[table]} (code {CAMPAIGN_CODE_VERSION})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return True
