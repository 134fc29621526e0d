"""The decision campaign's tables, from its records alone (``python -m benchmarks.campaign status|render``).

Nothing here trains or builds data: each table's runs are found among the records by their
settings (:meth:`benchmarks.campaign.Campaign.finder`), so a fresh checkout renders RESULTS.md
from the committed ``benchmarks/records/campaign/`` folder.  Rows with fewer seeds than the
campaign's are shown with their count; a table whose gate is still closed is listed as waiting.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import common
from .campaign import (BASELINE_PATIENCE, BUDGET_EPOCHS, CAMPAIGN_CODE_VERSION, LR_ROWS, RATES, TABLES, TEXT_LEN,
                       TFN_BATCH_SIZE, WARMUP_RATIO, Campaign, Finder, Slot, beats, chosen_rates, chosen_switches,
                       spread_sign, table_slots)
from .walk import curve_summary, fit_verdict, verdict_summary

logger = logging.getLogger("MMSA")

TITLES = {"lr": "Learning rate: Table 5's and the quick one, floor and full KHaR",
          "walk": "Walk from the text-only floor to full KHaR",
          "choices": "Open choices, each against the default",
          "table3": "Table 3 on planted MOSI-format data",
          "final": "Final comparison on the test split"}
#: Why each Table 3 row moved, one sentence per row, written once its five seeds were in (row key -> text);
#: the read-out figures are RESULTS.md section ``planted-probe`` (``python -m benchmarks.planted_probe``).
TABLE3_WHY: Dict[str, str] = {
    "t3-vt": "Drops audio, a third of var(y) and the most readable part (a ridge read-out of its pooled frames "
             "recovers R² 0.82): the largest loss, with vision.",
    "t3-va": "Drops text, whose planted polarity the frozen encoder gives up poorly from 128 clips (read-out "
             "R² 0.40): little to lose, so within the spread; the paper's order (V+A worst) is inverted because "
             "here text is the weakest-read modality, on real MOSI the strongest.",
    "t3-at": "Drops vision, a third of var(y), read out with R² 0.72: a loss close to dropping audio.",
    "t3-vat": "The reference; it stays 0.08 above an additive ridge read-out of the same pooled inputs (0.496), "
              "so on 128 training clips the model does not yet extract what a linear map does.",
    "t3-mlp_m": "The planted audio/vision signal is linear in pooled frames, so an MLP refines it as well as "
                "the MoE: within the spread.",
    "t3-attn_m": "Same reason as MLP_m: within the spread; its validation MAE varies most across seeds of the "
                 "refiners (0.564 ± 0.038).",
    "t3-cnn_m": "Same reason as MLP_m: any refiner that keeps the pooled directions suffices here.",
    "t3-wo": "Without the contrastive term the validation MAE is unchanged (0.539 vs 0.535) and the test MAE "
             "rises within the spread: on 128 clips the label-grouped pairs neither help nor hurt measurably.",
    "t3-sum": "Summing the modality vectors can express the additive planted signal: within the spread.",
    "t3-con": "Concatenation can too (the head learns the weighted sum): within the spread.",
    "t3-attn": "Attention over modalities can too: within the spread.",
    "t3-mul": "The element-wise product turns an additive signal into a product of modality terms that the "
              "head must undo: worse on validation (0.595) and test, the one fusion that loses.",
}


# ---- one row's numbers ----------------------------------------------------------------------------
def found(find: Finder, slots: Sequence[Slot]) -> List[Dict[str, Any]]:
    return [rec for rec in (find(s) for s in slots) if rec is not None]


def values(records: Sequence[Mapping[str, Any]], split: str, key: str) -> np.ndarray:
    field = "valid" if split == "valid" else "metrics"
    return np.array([r["outcome"]["result"][field].get(key, np.nan) for r in records], dtype=float)


def fmt(arr: np.ndarray, digits: int = 3, scale: float = 1.0) -> str:
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return "-"
    arr = arr * scale
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}" if arr.size > 1 else f"{arr.mean():.{digits}f}"


def paired_delta(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> Tuple[float, float, int]:
    """Mean and population std of the per-seed validation-MAE differences a - b over the seeds both have."""
    by_seed = {r["seed"]: r["outcome"]["result"]["valid"]["MAE"] for r in b}
    diffs = [r["outcome"]["result"]["valid"]["MAE"] - by_seed[r["seed"]] for r in a if r["seed"] in by_seed]
    if not diffs:
        return float("nan"), float("nan"), 0
    return float(np.mean(diffs)), float(np.std(diffs)), len(diffs)


def effect(a: np.ndarray, b: np.ndarray) -> str:
    """What a row's change does to the validation MAE, by the campaign's rule (larger std)."""
    if a.size == 0 or b.size == 0:
        return "-"
    return {-1: "lowers the MAE by more than the larger std: pays for itself",
            1: "raises the MAE by more than the larger std: costs",
            0: "within the larger std: no measurable effect"}[spread_sign(a, b)]


def fit_column(records: Sequence[Mapping[str, Any]]) -> Tuple[str, str, str]:
    results = [r["outcome"]["result"] for r in records]
    best = " ".join(str(r.get("best_epoch", "-")) for r in results)
    curve = curve_summary(results) if results and all(r.get("curve") for r in results) else "-"
    verdicts = verdict_summary([fit_verdict(r.get("curve") or [], int(r.get("best_epoch") or 0)) for r in results])
    return best, curve, verdicts or "-"


def wall(records: Sequence[Mapping[str, Any]]) -> float:
    return float(sum(float(r["outcome"].get("wall_s", 0.0)) for r in records))


def wall_text(records: Sequence[Mapping[str, Any]]) -> str:
    """A row's summed wall time, '-' before its first run."""
    return common.fmt_seconds(wall(records)) if records else "-"


LOAD_NOTE = "; 1-min load average at start "


def machines_text(records: Sequence[Mapping[str, Any]]) -> str:
    """The machines of ``records``, each once, with its run count and the range of 1-min load averages
    its runs started at (a record without a machine line shows its host name)."""
    runs: Dict[str, List[Optional[float]]] = {}
    for rec in records:
        machine, _, load = (rec.get("machine") or rec["outcome"].get("host", "?")).partition(LOAD_NOTE)
        runs.setdefault(machine, []).append(float(load) if load else None)
    parts = []
    for machine, loads in sorted(runs.items()):
        known = [x for x in loads if x is not None]
        text = f"{machine} ({len(loads)} run{'s' if len(loads) != 1 else ''}"
        if known:
            text += f", 1-min load average at start {min(known):.2f}" + (
                f"–{max(known):.2f}" if max(known) > min(known) else "")
        parts.append(text + ")")
    return "; ".join(parts)


def switch_text(overrides: Mapping[str, Any], text_len: Optional[int] = None) -> str:
    parts = [f"{k}={v!r}" for k, v in overrides.items()]
    if text_len:
        parts.append(f"text_len={text_len}")
    return "`" + ", ".join(parts) + "`" if parts else "default"


# ---- tables ---------------------------------------------------------------------------------------
def _slots_by_row(slots: Sequence[Slot]) -> List[Tuple[Any, List[Slot]]]:
    rows: Dict[Tuple[str, str], Tuple[Any, List[Slot]]] = {}
    for slot in slots:
        rows.setdefault((slot.row.key, slot.variant), (slot.row, []))[1].append(slot)
    return list(rows.values())


def lr_table(camp: Campaign, find: Finder) -> Tuple[str, List[str]]:
    header = ["Row", "rates", "seeds", "valid MAE", "valid Corr", "best epoch per seed", "MAE curve (1 → best → last)",
              "fit per seed", "wall"]
    lines = []
    for row in LR_ROWS:
        recs = found(find, [Slot(row, s, row.rate) for s in camp.seeds])
        best, curve, fits = fit_column(recs)
        lines.append([row.title, switch_text(RATES[row.rate][row.family]), f"{len(recs)}/{len(camp.seeds)}",
                      fmt(values(recs, "valid", "MAE")), fmt(values(recs, "valid", "Corr")), best, curve, fits,
                      wall_text(recs)])
    rates = chosen_rates(camp, find)
    notes = [f"Decision (the rule: the lower mean validation MAE): floor at the {rates['floor']} rate, KHaR at the "
             f"{rates['khar']} rate; every later row uses them." if rates else
             "Decision pending: the rule needs all five seeds of the four rows."]
    return common.markdown_table(header, lines), notes


def walk_like_table(camp: Campaign, find: Finder, table: str) -> Tuple[str, List[str]]:
    slots = table_slots(camp, table, find) or []
    rows = _slots_by_row(slots)
    header = ["Row", "switch", "seeds", "valid MAE", "valid Corr",
              "Δ valid MAE " + ("vs row above" if table == "walk" else "vs default") + " (paired, ± std)",
              "what it supports", "best epoch per seed", "MAE curve (1 → best → last)", "fit per seed", "wall"]
    lines, previous, defaults = [], None, {}
    for row, row_slots in rows:
        recs = found(find, row_slots)
        maes = values(recs, "valid", "MAE")
        # the walk reads each row against the row above; a choice against its family's default row
        reference = previous if table == "walk" else (None if row.key == row.family else defaults.get(row.family))
        if reference is not None and recs:
            d, sd, n = paired_delta(recs, reference[0])
            delta = f"{d:+.3f} ± {sd:.3f} ({n} seeds)" if n else "-"
            complete = maes.size == reference[1].size == len(camp.seeds)
            words = effect(maes, reference[1]) if complete else \
                f"pending ({min(maes.size, reference[1].size)}/{len(camp.seeds)} seeds)"
            if complete and table == "choices":
                words = ("adopted: " if beats(maes, reference[1]) else "kept the default: ") + words
        else:
            delta, words = "-", "-"
        best, curve, fits = fit_column(recs)
        if row.family == "khar":
            switch = switch_text(row.overrides, row.text_len if row.text_len != TEXT_LEN else None)
        else:
            switch = "text floor" + (f", text_len={row.text_len}" if row.text_len != TEXT_LEN else "")
        lines.append([row.title, switch, f"{len(recs)}/{len(camp.seeds)}", fmt(maes), fmt(values(recs, "valid", "Corr")),
                      delta, words, best, curve, fits, wall_text(recs)])
        previous = (recs, maes)
        if row.key == row.family:
            defaults[row.family] = (recs, maes)
    notes = []
    if table == "walk":
        notes += end_to_end(camp, {row.key: (row.title, found(find, slots)) for row, slots in rows})
    if table == "choices":
        rates = chosen_rates(camp, find)
        switches = chosen_switches(camp, find, rates) if rates else None
        notes.append("Rule: a switch replaces the default only when its mean validation MAE is lower by more than "
                     "the larger std; switches of one field compete, winners of different fields are combined.")
        notes.append(f"Decision: KHaR {switches['khar'] or 'keeps every default'}; floor "
                     f"{switches['floor'] or 'keeps 32 tokens'}." if switches else
                     "Decision pending: the rule needs all five seeds of every row.")
    return common.markdown_table(header, lines), notes


def against_full(maes: np.ndarray, full: np.ndarray, seeds: int) -> str:
    """A Table 3 row's test MAE against full KHaR's by the campaign's yardstick (the larger std),
    once both have every seed."""
    if maes.size < seeds or full.size < seeds:
        return f"pending ({min(maes.size, full.size)}/{seeds} seeds)"
    return {1: "worse by more than the larger std", -1: "better by more than the larger std",
            0: "within the larger std"}[spread_sign(maes, full)]


def end_to_end(camp: Campaign, rows: Mapping[str, Tuple[str, Sequence[Mapping[str, Any]]]]) -> List[str]:
    """Full KHaR against the walk's first two rows (the floor; KHaR's own text path with a linear head),
    each by the larger std once both have every seed: what the parts add together."""
    notes = []
    full = rows["khar"][1]
    for key in ("floor", "text-path"):
        title, recs = rows[key]
        if len(full) < len(camp.seeds) or len(recs) < len(camp.seeds):
            notes.append(f"Full KHaR against {title}: pending.")
            continue
        d, sd, n = paired_delta(full, recs)
        a, b = values(full, "valid", "MAE"), values(recs, "valid", "MAE")
        notes.append(f"Full KHaR against {title}: {float(a.mean() - b.mean()):+.3f} in mean validation MAE "
                     f"(larger std {max(float(a.std()), float(b.std())):.3f}; paired {d:+.3f} ± {sd:.3f} over "
                     f"{n} seeds): {effect(a, b)}.")
    return notes


def table3_table(camp: Campaign, find: Finder) -> Tuple[str, List[str]]:
    from .ablations import PAPER_TABLE3
    slots = table_slots(camp, "table3", find) or []
    header = ["Group", "Row", "seeds", "test MAE", "test Corr", "test Acc-7", "valid MAE", "Δ test MAE vs KHaR",
              "against KHaR (larger std)", "paper (real MOSI): MAE / Corr / Acc-7", "why it moved"]
    rows = _slots_by_row(slots)
    full = next((found(find, s) for r, s in rows if r.title.startswith("V+A+T")), [])
    lines = []
    for row, row_slots in rows:
        recs = found(find, row_slots)
        test_mae = values(recs, "test", "MAE")
        delta, reading = "-", "-"
        if full and recs and not row.title.startswith("V+A+T"):
            reading = against_full(test_mae, values(full, "test", "MAE"), len(camp.seeds))
            ref = {r["seed"]: r["outcome"]["result"]["metrics"]["MAE"] for r in full}
            diffs = [r["outcome"]["result"]["metrics"]["MAE"] - ref[r["seed"]] for r in recs if r["seed"] in ref]
            delta = f"{np.mean(diffs):+.3f} ± {np.std(diffs):.3f}" if diffs else "-"
        paper = PAPER_TABLE3["mosi"].get(row.title)
        lines.append([row.group, row.title, f"{len(recs)}/{len(camp.seeds)}", fmt(test_mae),
                      fmt(values(recs, "test", "Corr")), fmt(values(recs, "test", "Mult_acc_7"), 2, 100.0),
                      fmt(values(recs, "valid", "MAE")), delta, reading,
                      f"*{paper[0]:.3f} / {paper[1]:.3f} / {paper[2]:.2f}*" if paper else "-",
                      TABLE3_WHY.get(row.key, "-")])
    notes = ["Planted-signal data (khar_mmsa.data.planted): a known signal in each modality and a known label "
             "noise, so moves are read against that design, not against the paper's real-feature numbers (in "
             "italics, not comparable). Nothing is chosen on this table, so it reports the test split.",
             "What a linear read-out of the same pooled inputs recovers, per modality (the 'why' column's R² "
             "figures), is RESULTS.md section `planted-probe` (`python -m benchmarks.planted_probe`): noise "
             "floor 0.250, additive ridge read-out of all three 0.496, of audio and vision 0.538."]
    return common.markdown_table(header, lines), notes


def final_table(camp: Campaign, find: Finder) -> Tuple[str, List[str]]:
    slots = table_slots(camp, "final", find)
    if slots is None:
        return "", ["Waiting: the final comparison opens when the lr and choices tables are complete."]
    columns = [("MAE", "MAE", 3, 1.0), ("Corr", "Corr", 3, 1.0), ("Has0_acc_2", "Acc-2 has0", 2, 100.0),
               ("Non0_acc_2", "Acc-2 non0", 2, 100.0), ("Mult_acc_7", "Acc-7", 2, 100.0)]
    header = ["Model", "settings", "seeds"] + [t for _, t, _, _ in columns] + ["valid MAE (selection)", "wall"]
    lines = []
    for row, row_slots in _slots_by_row(slots):
        recs = found(find, row_slots)
        lines.append([row.title, row_slots[0].variant, f"{len(recs)}/{len(camp.seeds)}"]
                     + [fmt(values(recs, "test", k), d, sc) for k, _, d, sc in columns]
                     + [fmt(values(recs, "valid", "MAE")) if row.family in ("khar", "floor") else "-",
                        wall_text(recs)])
    return common.markdown_table(header, lines), [
        "The only table on the test split; every setting was chosen on validation (the lr and choices tables). "
        f"MMSA's models: their own trainers, early stop after {BASELINE_PATIENCE} epochs without a better "
        f"validation loss, on the same transcripts pickle (TFN at batch {TFN_BATCH_SIZE}, see the protocol)."
    ] + khar_on_test(camp, [(row.title, found(find, row_slots)) for row, row_slots in _slots_by_row(slots)])


def khar_on_test(camp: Campaign, rows: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]]) -> List[str]:
    """KHaR (the row after the floor) against every other row of the final table on the test split, by
    the campaign's yardstick (the larger std), MAE and Corr, once both have every seed; and whether
    issue 22's goal holds: a test MAE below the floor's by more than the larger std, Corr not worse."""
    (floor_title, floor), (_, khar) = rows[0], rows[1]
    notes = []
    for title, recs in [rows[0]] + list(rows[2:]):
        if len(khar) < len(camp.seeds) or len(recs) < len(camp.seeds):
            notes.append(f"KHaR against {title} on test: pending.")
            continue
        parts = []
        for key, lower_is_better in (("MAE", True), ("Corr", False)):
            a, b = values(khar, "test", key), values(recs, "test", key)
            sign = spread_sign(a, b) * (1 if lower_is_better else -1)
            parts.append(f"{key} {float(a.mean() - b.mean()):+.3f} (larger std "
                         f"{max(float(a.std()), float(b.std())):.3f}): "
                         + {-1: "better by more than it", 1: "worse by more than it", 0: "within it"}[sign])
        notes.append(f"KHaR against {title} on test: " + "; ".join(parts) + ".")
    if len(khar) == len(floor) == len(camp.seeds):
        mae = spread_sign(values(khar, "test", "MAE"), values(floor, "test", "MAE"))
        corr = spread_sign(-values(khar, "test", "Corr"), -values(floor, "test", "Corr"))
        met = mae < 0 and corr <= 0
        notes.append(f"Issue 22's goal (KHaR's test MAE below {floor_title}'s by more than the larger std, Corr "
                     f"not worse by more than it): {'met' if met else 'not met'}.")
    return notes


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
            _slots_by_row(table_slots(camp, table, find) or [])]
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


FIGURES = ("walk", "choices")
BUILDERS = {"lr": lr_table, "walk": lambda c, f: walk_like_table(c, f, "walk"),
            "choices": lambda c, f: walk_like_table(c, f, "choices"), "table3": table3_table, "final": final_table}


# ---- the commands ---------------------------------------------------------------------------------
def table_records(camp: Campaign, find: Finder, table: str) -> List[Dict[str, Any]]:
    if table == "lr":
        slots = [Slot(row, s, row.rate) for s in camp.seeds for row in LR_ROWS]
    else:
        slots = table_slots(camp, table, find) or []
    return found(find, slots)


def status(camp: Campaign, tables: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """Per table: (runs recorded, runs in all); logged one line each (a closed gate says so)."""
    find = camp.finder(camp.load_records(), exact=False)
    out = {}
    for table in tables:
        slots = table_slots(camp, table, find)
        if slots is None:
            logger.info(f"{table}: waiting for its gate ({'lr' if table != 'final' else 'lr and choices'} incomplete)")
            out[table] = (0, 0)
            continue
        done = len(found(find, slots))
        out[table] = (done, len(slots))
        logger.info(f"{table}: {done}/{len(slots)} runs recorded")
    return out


def render(camp: Campaign, args: argparse.Namespace) -> Dict[str, Path]:
    """Each table with at least one record as a RESULTS.md section and results/campaign-<table>.md."""
    records = camp.load_records()
    find = camp.finder(records, exact=False)
    results_md = Path(args.results_md) if args.results_md else (
        camp.work / "RESULTS.md" if camp.smoke else common.RESULTS_MD)
    tables_dir = Path(args.tables_dir) if args.tables_dir else (camp.work if camp.smoke else common.TABLES_DIR)
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for table in args.tables:
        recs = table_records(camp, find, table)
        if not recs:
            continue
        body, notes = BUILDERS[table](camp, find)
        versions = sorted({r["identity"]["code"] for r in recs})
        data = sorted({f"{r['identity']['data']['name']} (SHA-256 {r['identity']['data']['sha256'][:12]})" for r in recs})
        machines = machines_text(recs)
        text = (f"{body}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
                f"- Protocol: {BUDGET_EPOCHS} epochs for every KHaR and floor run, scored at the best validation "
                f"epoch; linear warm-up over {WARMUP_RATIO:.0%} of the steps, then linear decay to 0 "
                "(benchmarks/README.md, 'The decision campaign').\n"
                f"- Code version of the runs: {', '.join(versions)} (the campaign's: {CAMPAIGN_CODE_VERSION}); "
                f"{len(recs)} records in benchmarks/records/campaign/.\n"
                f"- Data: {'; '.join(data)}.\n"
                f"- Machine(s): {machines}.")
        stem = f"campaign-{table}"
        md = tables_dir / f"{stem}.md"
        md.write_text(f"# {TITLES[table]}\n\n{text}\n")
        section = common.section(f"{TITLES[table]} (decision campaign)", "python -m benchmarks.campaign render",
                                 machines, sorted({r["seed"] for r in recs}), "; ".join(data),
                                 wall(recs), text)
        common.update_results_md(results_md, stem, section)
        written[table] = md
        logger.info(f"{stem}: {len(recs)} records -> {md}")
        if table in FIGURES and rows_figure(camp, find, table, tables_dir / f"{stem}.png"):
            written[f"{table}-figure"] = tables_dir / f"{stem}.png"
    if written:
        csv = tables_dir / "campaign-runs.csv"
        runs_frame(camp, find).to_csv(csv, index=False)
        written["runs"] = csv
    return written


__all__ = ["status", "render", "TABLES"]
