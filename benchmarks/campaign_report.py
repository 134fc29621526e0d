"""The decision campaign's tables, from its records alone (``python -m benchmarks.campaign status|render``).

Nothing here trains or builds data: each table's runs are found among the records by their
settings (:meth:`benchmarks.campaign.Campaign.finder`), so a fresh checkout renders RESULTS.md
from the committed ``benchmarks/records/campaign/`` folder.  Rows with fewer seeds than the
campaign's are shown with their count; a table whose gate is still closed is listed as waiting.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import common
from .campaign_plan import (BASELINE_PATIENCE, BUDGET_EPOCHS, CAMPAIGN_CODE_VERSION, LR_ROWS, RATES, TABLES, TEXT_LEN,
                            TFN_BATCH_SIZE, WARMUP_RATIO, Campaign, Finder, Slot, beats, chosen_rates,
                            chosen_switches, spread_sign, table_slots)
from .campaign_frames import (FIGURES, TITLES, found, rows_figure, runs_frame, slots_by_row, table_records,
                              values)
from .campaign_stats import Paired, compare, notes as campaign_stats_notes
from .walk import curve_summary, fit_verdict, verdict_summary

logger = logging.getLogger("MMSA")

#: Why each Table 3 row moved, one sentence per row, written once its five seeds were in (row key -> text);
#: the read-out figures are RESULTS.md section ``planted-probe`` (``python -m benchmarks.planted_probe``).
TABLE3_WHY: Dict[str, str] = {
    "t3-vt": "Drops audio, a third of var(y) and the most readable part (a ridge read-out of its pooled frames "
             "recovers R² 0.82): the largest loss, with vision; worse on test and validation.",
    "t3-va": "Drops text, whose planted polarity the frozen encoder gives up poorly from 128 clips (read-out "
             "R² 0.40): undecided on test, worse on validation; the paper's order (V+A worst) is inverted "
             "because here text is the weakest-read modality, on real MOSI the strongest.",
    "t3-at": "Drops vision, a third of var(y), read out with R² 0.72: a loss close to dropping audio.",
    "t3-vat": "The reference; it stays 0.08 above an additive ridge read-out of the same pooled inputs (0.496), "
              "so on 128 training clips the model does not yet extract what a linear map does.",
    "t3-mlp_m": "The planted audio/vision signal is linear in pooled frames, so an MLP may refine it as well as "
                "the MoE: undecided, a difference below the MDE.",
    "t3-attn_m": "Same reason as MLP_m: undecided; its validation MAE varies most across seeds of the "
                 "refiners (0.564 ± 0.038).",
    "t3-cnn_m": "Same reason as MLP_m: any refiner that keeps the pooled directions may suffice here; undecided.",
    "t3-wo": "Without the contrastive term the validation MAE is unchanged (0.539 vs 0.535) and the test MAE "
             "rises by less than its MDE: on 128 clips the label-grouped pairs neither help nor hurt measurably.",
    "t3-sum": "Summing the modality vectors can express the additive planted signal: undecided.",
    "t3-con": "Concatenation can too (the head learns the weighted sum): undecided.",
    "t3-attn": "Attention over modalities can too: undecided.",
    "t3-mul": "The element-wise product turns an additive signal into a product of modality terms that the "
              "head must undo: worse on validation (0.595, the one fusion that is); on test +0.032, undecided "
              "(p 0.11, below its MDE).",
}


# ---- one row's numbers ----------------------------------------------------------------------------
def fmt(arr: np.ndarray, digits: int = 3, scale: float = 1.0) -> str:
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return "-"
    arr = arr * scale
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}" if arr.size > 1 else f"{arr.mean():.{digits}f}"


def paired_cells(p: Paired, complete: bool, seeds: int) -> List[str]:
    """A comparison's table cells: mean paired Δ [95 % interval], p, seeds better, verdict, MDE; the verdict
    waits (``pending``) until both rows have every seed."""
    if p.n == 0:
        return ["-"] * 5
    if p.n < 2:
        return [f"{p.mean:+.3f}", "-", f"{p.better}/{p.n}", f"pending ({p.n}/{seeds} seeds)", "-"]
    return [f"{p.mean:+.3f} [{p.low:+.3f}, {p.high:+.3f}]", f"{p.p:.3f}", f"{p.better}/{p.n}",
            p.verdict if complete else f"pending ({p.n}/{seeds} seeds)", f"{p.mde:.3f}"]


PAIRED_HEADER = ["p", "seeds better", "verdict (paired)", "MDE"]


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
    if rates:
        for family, title in (("floor", "Text-only floor"), ("khar", "KHaR")):
            quick, table5 = (found(find, [Slot(r, s, r.rate) for s in camp.seeds]) for r in LR_ROWS
                             if r.family == family)
            notes.append(f"{title}, quick rate against Table 5's, validation MAE, paired: "
                         f"{compare(quick, table5).text()}.")
        notes.append(campaign_stats_notes())
    return common.markdown_table(header, lines), notes


def walk_like_table(camp: Campaign, find: Finder, table: str) -> Tuple[str, List[str]]:
    slots = table_slots(camp, table, find) or []
    rows = slots_by_row(slots)
    seeds = len(camp.seeds)
    header = ["Row", "switch", "seeds", "valid MAE", "valid Corr",
              "Δ valid MAE " + ("vs row above" if table == "walk" else "vs default") + " (paired: mean [95 % interval])"
              ] + PAIRED_HEADER + (["decision (rule fixed before the runs)"] if table == "choices" else []) + [
              "best epoch per seed", "MAE curve (1 → best → last)", "fit per seed", "wall"]
    lines, previous, defaults = [], None, {}
    for row, row_slots in rows:
        recs = found(find, row_slots)
        maes = values(recs, "valid", "MAE")
        # the walk reads each row against the row above; a choice against its family's default row
        reference = previous if table == "walk" else (None if row.key == row.family else defaults.get(row.family))
        cells = ["-"] * (len(PAIRED_HEADER) + 1)
        decision = "-"
        if reference is not None and recs:
            complete = len(recs) == len(reference) == seeds
            cells = paired_cells(compare(recs, reference), complete, seeds)
            if complete and table == "choices":
                decision = "adopted" if beats(maes, values(reference, "valid", "MAE")) else "kept the default"
        best, curve, fits = fit_column(recs)
        if row.family == "khar":
            switch = switch_text(row.overrides, row.text_len if row.text_len != TEXT_LEN else None)
        else:
            switch = "text floor" + (f", text_len={row.text_len}" if row.text_len != TEXT_LEN else "")
        lines.append([row.title, switch, f"{len(recs)}/{seeds}", fmt(maes), fmt(values(recs, "valid", "Corr"))]
                     + cells + ([decision] if table == "choices" else []) + [best, curve, fits, wall_text(recs)])
        previous = recs
        if row.key == row.family:
            defaults[row.family] = recs
    notes = []
    if table == "walk":
        notes += end_to_end(camp, {row.key: (row.title, found(find, slots)) for row, slots in rows})
    if table == "choices":
        rates = chosen_rates(camp, find)
        switches = chosen_switches(camp, find, rates) if rates else None
        notes.append("Decision rule, fixed before the runs: a switch replaces the default only when its mean "
                     "validation MAE is lower by more than the larger population std of the two rows; switches of "
                     "one field compete, winners of different fields are combined. The paired verdicts are the "
                     "reading; the decision column applies the rule as it was registered.")
        notes.append(f"Decision: KHaR {switches['khar'] or 'keeps every default'}; floor "
                     f"{switches['floor'] or 'keeps 32 tokens'}." if switches else
                     "Decision pending: the rule needs all five seeds of every row.")
    return common.markdown_table(header, lines), notes + [campaign_stats_notes()]


def end_to_end(camp: Campaign, rows: Mapping[str, Tuple[str, Sequence[Mapping[str, Any]]]]) -> List[str]:
    """Full KHaR against the walk's first two rows (the floor; KHaR's own text path with a linear head),
    paired by seed on validation MAE once both have every seed: what the parts add together."""
    notes = []
    full = rows["khar"][1]
    for key in ("floor", "text-path"):
        title, recs = rows[key]
        if len(full) < len(camp.seeds) or len(recs) < len(camp.seeds):
            notes.append(f"Full KHaR against {title}: pending.")
            continue
        notes.append(f"Full KHaR against {title}, validation MAE, paired: {compare(full, recs).text()}.")
    return notes


def table3_table(camp: Campaign, find: Finder) -> Tuple[str, List[str]]:
    from .ablations import PAPER_TABLE3
    slots = table_slots(camp, "table3", find) or []
    header = ["Group", "Row", "seeds", "test MAE", "test Corr", "test Acc-7", "valid MAE",
              "Δ test MAE vs KHaR (paired: mean [95 % interval])"] + PAIRED_HEADER + [
              "Δ valid MAE vs KHaR (paired): verdict", "paper (real MOSI): MAE / Corr / Acc-7", "why it moved"]
    rows = slots_by_row(slots)
    full = next((found(find, s) for r, s in rows if r.title.startswith("V+A+T")), [])
    seeds = len(camp.seeds)
    lines = []
    for row, row_slots in rows:
        recs = found(find, row_slots)
        cells, valid = ["-"] * (len(PAIRED_HEADER) + 1), "-"
        if full and recs and not row.title.startswith("V+A+T"):
            complete = len(recs) == len(full) == seeds
            cells = paired_cells(compare(recs, full, "test"), complete, seeds)
            v = compare(recs, full, "valid")
            valid = f"{v.mean:+.3f}: {v.verdict if complete else 'pending'}" if v.n else "-"
        paper = PAPER_TABLE3["mosi"].get(row.title)
        lines.append([row.group, row.title, f"{len(recs)}/{seeds}", fmt(values(recs, "test", "MAE")),
                      fmt(values(recs, "test", "Corr")), fmt(values(recs, "test", "Mult_acc_7"), 2, 100.0),
                      fmt(values(recs, "valid", "MAE"))] + cells + [
                      valid, f"*{paper[0]:.3f} / {paper[1]:.3f} / {paper[2]:.2f}*" if paper else "-",
                      TABLE3_WHY.get(row.key, "-")])
    notes = ["Planted-signal data (khar_mmsa.data.planted): a known signal in each modality and a known label "
             "noise, so moves are read against that design, not against the paper's real-feature numbers (in "
             "italics, not comparable). Nothing is chosen on this table, so it reports the test split.",
             "What a linear read-out of the same pooled inputs recovers, per modality (the 'why' column's R² "
             "figures), is RESULTS.md section `planted-probe` (`python -m benchmarks.planted_probe`): noise "
             "floor 0.250, additive ridge read-out of all three 0.496, of audio and vision 0.538.",
             campaign_stats_notes()]
    return common.markdown_table(header, lines), notes


def final_table(camp: Campaign, find: Finder) -> Tuple[str, List[str]]:
    slots = table_slots(camp, "final", find)
    if slots is None:
        return "", ["Waiting: the final comparison opens when the lr and choices tables are complete."]
    columns = [("MAE", "MAE", 3, 1.0), ("Corr", "Corr", 3, 1.0), ("Has0_acc_2", "Acc-2 has0", 2, 100.0),
               ("Non0_acc_2", "Acc-2 non0", 2, 100.0), ("Mult_acc_7", "Acc-7", 2, 100.0)]
    header = ["Model", "settings", "seeds"] + [t for _, t, _, _ in columns] + ["valid MAE (selection)", "wall"]
    lines, rows = [], []
    for row, row_slots in slots_by_row(slots):
        recs = found(find, row_slots)
        rows.append((row.title, recs))
        lines.append([row.title, row_slots[0].variant, f"{len(recs)}/{len(camp.seeds)}"]
                     + [fmt(values(recs, "test", k), d, sc) for k, _, d, sc in columns]
                     + [fmt(values(recs, "valid", "MAE")) if row.family in ("khar", "floor") else "-",
                        wall_text(recs)])
    body = common.markdown_table(header, lines)
    paired, notes = khar_on_test(camp, rows)
    return body + ("\n\n" + paired if paired else ""), [
        "The only table on the test split; every setting was chosen on validation (the lr and choices tables). "
        f"MMSA's models: their own trainers, early stop after {BASELINE_PATIENCE} epochs without a better "
        "validation loss (MMSA's default; the paper states no early stopping), on the same transcripts pickle; "
        + baseline_settings(rows) + " (TFN's batch: see the protocol).",
        "Paired over seeds only: the records hold each run's test metrics, not its per-clip test predictions, "
        "so no paired bootstrap over test clips can be computed from them."] + notes + [
        validation_predicts_test(camp), campaign_stats_notes()]


def validation_predicts_test(camp: Campaign) -> str:
    """How well a transcripts row's mean validation MAE ranks its mean test MAE, over every row with a
    validation score (Spearman's ρ): what reading rows on 229 validation clips can promise about test."""
    from scipy import stats
    rows: Dict[str, List[Tuple[float, float]]] = {}
    for rec in camp.load_records().values():
        result = rec["outcome"]["result"]
        if "valid" in result and rec["identity"]["data"]["name"].startswith("transcripts"):
            rows.setdefault(rec["variant"], []).append((result["valid"]["MAE"], result["metrics"]["MAE"]))
    if len(rows) < 3:
        return "Validation against test: fewer than 3 transcripts rows."
    valid, test = ([float(np.mean([pair[k] for pair in v])) for v in rows.values()] for k in (0, 1))
    rho, p = stats.spearmanr(valid, test)
    return (f"Validation against test: over the {len(rows)} transcripts rows with a validation score (every record "
            f"stores test metrics), mean validation MAE ranks mean test MAE with Spearman ρ {rho:.2f} (p {p:.2f}): "
            "on 229 validation clips most differences between rows are below what 5 seeds resolve (each row's MDE).")


def baseline_settings(rows: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]]) -> str:
    """The settings MMSA's models ran with as their records hold them, beside MMSA's own defaults (mosi)."""
    import importlib.util
    mmsa_folder = Path(importlib.util.find_spec("MMSA").submodule_search_locations[0])  # found, not imported
    defaults = json.loads((mmsa_folder / "config" / "config_regression.json").read_text())
    parts = []
    for title, recs in rows:
        model = recs[0]["model"] if recs else None
        if model not in defaults or not recs:
            continue
        mmsa = {**defaults[model]["commonParams"], **defaults[model]["datasetParams"].get("mosi", {})}
        keys = sorted({k for r in recs for k in ("early_stop", "update_epochs", "batch_size") if k in r["config"]})
        ran = ", ".join(f"{k}={'/'.join(sorted({str(r['config'][k]) for r in recs}))}" for k in keys)
        theirs = ", ".join(f"{k}={mmsa.get(k, '-')}" for k in keys)
        parts.append(f"{title} ran with {ran} (MMSA's: {theirs})")
    return "; ".join(parts)


def khar_on_test(camp: Campaign, rows: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]]) -> Tuple[str, List[str]]:
    """KHaR (the row after the floor) against every other row of the final table on the test split,
    paired by seed, MAE and Corr, as a table; and whether issue 22's goal holds by the rule fixed before
    the runs (a test MAE below the floor's by more than the larger std, Corr not worse by more than it)
    and by the paired verdicts (MAE better, Corr not worse)."""
    (floor_title, floor), (_, khar) = rows[0], rows[1]
    seeds = len(camp.seeds)
    header = ["KHaR against", "metric", "Δ test (KHaR − row; paired: mean [95 % interval])"] + PAIRED_HEADER
    lines = []
    for title, recs in [rows[0]] + list(rows[2:]):
        complete = len(khar) == len(recs) == seeds
        for key in ("MAE", "Corr"):
            lines.append([title, key] + paired_cells(compare(khar, recs, "test", key), complete, seeds))
    notes = []
    if len(khar) == len(floor) == seeds:
        mae = spread_sign(values(khar, "test", "MAE"), values(floor, "test", "MAE"))
        corr = spread_sign(-values(khar, "test", "Corr"), -values(floor, "test", "Corr"))
        p_mae, p_corr = compare(khar, floor, "test", "MAE"), compare(khar, floor, "test", "Corr")
        met = p_mae.verdict == "better" and p_corr.verdict != "worse"
        notes.append(f"Issue 22's goal (KHaR's test MAE below {floor_title}'s, Corr not worse): by the rule fixed "
                     f"before the runs (more than the larger std) {'met' if mae < 0 and corr <= 0 else 'not met'}; "
                     f"paired, {'met' if met else 'not met'} (MAE {p_mae.verdict}, Corr {p_corr.verdict}).")
    return (common.markdown_table(header, lines) if lines else ""), notes


BUILDERS = {"lr": lr_table, "walk": lambda c, f: walk_like_table(c, f, "walk"),
            "choices": lambda c, f: walk_like_table(c, f, "choices"), "table3": table3_table, "final": final_table}


def protocol_section(camp: Campaign, find: Finder, records: Sequence[Mapping[str, Any]]) -> str:
    """The protocol as the runs ran it (RESULTS.md section ``campaign-protocol``): what was fixed before the
    runs, where it departs from MMSA's defaults (read from the records), and what the records hold beyond
    what the tables show."""
    final = table_slots(camp, "final", find)
    mmsa = baseline_settings([(s[0].row.title, found(find, s)) for _, s in slots_by_row(final)]) if final else "-"
    lines = [
        f"- KHaR and the text-only floor: a fixed budget of {BUDGET_EPOCHS} epochs (no early stop), scored at the "
        f"best validation epoch (validation L1, MMSA's KeyEval); linear warm-up over {WARMUP_RATIO:.0%} of the "
        "steps, then linear decay to 0. Rates by the `lr` table's rule (lower mean validation MAE).",
        f"- MMSA's TFN, MulT and Self-MM: their own trainers, no epoch cap, early stop after {BASELINE_PATIENCE} "
        "epochs without a better validation loss. 8 is MMSA's default `early_stop`; the paper states no early "
        f"stopping. As recorded: {mmsa}. MulT and Self-MM thus step their optimizer every batch "
        f"(`update_epochs=1`, benchmarks/compare.py's quick setting), not every 8 or 4 batches as MMSA's defaults "
        f"do; TFN trains at batch {TFN_BATCH_SIZE} (MMSA's 32 leaves one clip in the last training batch, which "
        "TFN's BatchNorm refuses).",
        f"- Seeds {', '.join(map(str, camp.seeds))} in every row; rows are compared seed by seed (paired).",
        "- Quality is read on validation; the test split is reported only in `final` (and in `table3`, on planted "
        "data where nothing is chosen). Every record nevertheless stores its run's test metrics, also in the rows "
        "of `lr`, `walk` and `choices`, whose tables report none (`results/campaign-runs.csv` leaves them empty).",
        "- The transcripts' test split was not untouched before the campaign: an earlier section (RESULTS-archive.md, "
        "'Issue 10 reruns') reported KHaR's and the floor's test figures on it, and the β default "
        "(`mib_kl_reduction='mean'`) was set there with test figures beside the validation ones.",
        "- The choices' decision rule, fixed before the runs: a switch replaces the default only when its mean "
        "validation MAE is lower by more than the larger population std of the two rows. The tables add the paired "
        "reading (per-seed differences, 95 % interval, verdict, MDE: benchmarks/campaign_stats.py).",
    ]
    versions = sorted({r["identity"]["code"] for r in records})
    body = "\n".join(lines) + (f"\n- Code version of the runs: {', '.join(versions)} (the campaign's: "
                               f"{CAMPAIGN_CODE_VERSION}); {len(records)} records in benchmarks/records/campaign/.")
    return common.section("The decision campaign's protocol, as run", "python -m benchmarks.campaign render",
                          machines_text(records), sorted({r["seed"] for r in records}),
                          "the real CMU-MOSI transcripts (text only, ../shared/data/mosi/label.csv, 1281/229/685 clips); "
                          "Table 3: planted MOSI-format data (128/64/128 clips)", wall(records), body)


# ---- the commands ---------------------------------------------------------------------------------
def status(camp: Campaign, tables: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """Per table: (runs recorded, runs in all); logged one line each (a closed gate says so)."""
    find = camp.finder(camp.load_records(), exact=False)   # damaged records: logged, counted as not run
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
    if records:
        common.update_results_md(results_md, "campaign-protocol", protocol_section(camp, find, list(records.values())))
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
                f"epoch; linear warm-up over {WARMUP_RATIO:.0%} of the steps, then linear decay to 0; the whole "
                "record, as run, is the section `campaign-protocol` (benchmarks/README.md, 'The decision campaign').\n"
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
