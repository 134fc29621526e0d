"""From the text-only floor to full KHaR, one change at a time, on the real CMU-MOSI transcripts.

    python -m benchmarks.walk --quick --threads 1                 # the walk, validation only, 3 seeds
    python -m benchmarks.walk --quick --seeds 1111 1112 1113 1114 1115   # 5 seeds (finished runs reused)
    python -m benchmarks.walk --table switches --quick            # each open-choice switch vs the default
    python -m benchmarks.walk --table final --quick               # the test split: floor vs KHaR, 5 seeds
    python -m benchmarks.walk --smoke                             # seconds, tiny BERT (tests)

``--table walk`` (default): rows

1. the text-only floor (the encoder fine-tuned with a linear head, :mod:`khar_mmsa.experiments.textonly`);
2. KHaR's own text path with a linear head (``harvesting=False``, ``refiner='none'``,
   ``projection='none'``, ``fusion='linear'``, no contrastive loss);
3. + adapters and harvesting (adapter pretraining, frozen adapters, X_m = [A_m; O_m]);
4. + the MoE refiner;
5. + the projection to ``fine_grained_dim`` and its ReLU;
6. + the MIB fusion (instead of the linear head);
7. + the contrastive loss: full KHaR with the mode's settings.

Each row gives the **validation** MAE and Corr at the selected (best) epoch, mean ± population std
over the seeds, the change from the row above, and the per-epoch train/valid curve in a few numbers
(epoch 1 -> best -> last) with a verdict per seed: over-fits (train error keeps falling after the
best epoch), under-fits (still improving when the epoch cap stopped it, or the train error stopped
falling too).  Rows closer than one std are listed with the command that reruns them on 5 seeds.

``--table switches``: the choices the paper leaves open, each against the default on validation:
transcripts cut at 50 tokens instead of 32 (quick), contrastive loss before the ReLU, the text
encoder frozen for the first epochs, one routing per sample, no gate noise, a beta warm-up.

``--table final``: the only mode that reports the test split: the floor and KHaR (``--khar-config``
for the settings the walk and the switches chose), with the validation MAE beside.

Audio and vision are absent in the transcripts (all-zero frames of length 1): KHaR's audio and
vision paths see constants in every row, as they do in compare.py's transcripts table.  All runs go
through the sweep machinery (``--executor local|ray``, resumable): with the same ``--out``, the
three tables share their identical runs (the floor and full KHaR rows).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from khar_mmsa.mmsa_conventions import SPLITS

from . import common
from .common import Timer
from .compare import (KHAR_QUICK, KHAR_SMOKE, MODEL_TITLES, TEXT_FLOOR, TRANSCRIPT_SEEDS, TRANSCRIPT_TEXT_LEN,
                      text_floor_run)

logger = logging.getLogger("MMSA")

TABLES = ("walk", "switches", "final")
FLOOR = "floor"
# Each walk row: (key, title, KHaR overrides on top of the mode's settings); None = the text floor.
# Every row adds one part to the row above it; the last is full KHaR.
_NO_CL = {"contrastive_weight": 0.0}
WALK_ROWS: List[Tuple[str, str, Optional[Dict[str, Any]]]] = [
    (FLOOR, MODEL_TITLES["text_floor"], None),
    ("text-path", "KHaR's text path, linear head",
     {"harvesting": False, "pretrain_adapters": False, "refiner": "none", "projection": "none",
      "fusion": "linear", **_NO_CL}),
    ("harvesting", "+ adapters and harvesting", {"refiner": "none", "projection": "none", "fusion": "linear", **_NO_CL}),
    ("moe", "+ MoE refiner", {"projection": "none", "fusion": "linear", **_NO_CL}),
    ("projection", "+ projection and ReLU", {"fusion": "linear", **_NO_CL}),
    ("mib", "+ MIB fusion", dict(_NO_CL)),
    ("khar", "+ contrastive loss (full KHaR)", {}),
]
# Each switch row: (key, title, KHaR overrides, transcript length or None for the mode's).
FREEZE_EPOCHS = 2        # freeze_bert_epochs of the switch row: the text encoder held for 2 epochs
BETA_WARMUP_EPOCHS = 5   # mib_beta_warmup_epochs of the switch row
LONG_TEXT_LEN = 50       # MMSA's MOSI text length, against the quick setting's 32
SWITCH_ROWS: List[Tuple[str, str, Optional[Dict[str, Any]], Optional[int]]] = [
    ("khar", "KHaR, the mode's defaults", {}, None),
    ("text-len-50", f"transcripts cut at {LONG_TEXT_LEN} tokens", {}, LONG_TEXT_LEN),
    ("before-relu", "contrastive loss before the ReLU", {"contrastive_on": "before_relu"}, None),
    ("freeze-bert", f"text encoder frozen for the first {FREEZE_EPOCHS} epochs",
     {"freeze_bert_epochs": FREEZE_EPOCHS}, None),
    ("routing-sample", "one routing per sample", {"routing": "sample"}, None),
    ("no-gate-noise", "no gate noise in training", {"moe_noisy_gating": False}, None),
    ("beta-warmup", f"beta warm-up over {BETA_WARMUP_EPOCHS} epochs", {"mib_beta_warmup_epochs": BETA_WARMUP_EPOCHS},
     None),
    (FLOOR, MODEL_TITLES["text_floor"], None, None),
    (f"{FLOOR}-text-len-50", f"{MODEL_TITLES['text_floor']}, {LONG_TEXT_LEN} tokens", None, LONG_TEXT_LEN),
]
FINAL_ROWS = [(FLOOR, MODEL_TITLES["text_floor"], None), ("khar", "KHaR", {})]
SEEDS = {"smoke": [1111], "quick": list(TRANSCRIPT_SEEDS["quick"]), "full": list(TRANSCRIPT_SEEDS["full"])}
FINAL_SEEDS = {"smoke": [1111], "quick": list(TRANSCRIPT_SEEDS["full"]), "full": list(TRANSCRIPT_SEEDS["full"])}
FIVE_SEEDS = list(TRANSCRIPT_SEEDS["full"])
SMOKE_SIZES = (16, 8, 8)            # smoke: the first clips of each split
KHAR_SMOKE_WALK = dict(KHAR_SMOKE, epochs=2, early_stop=2, save_curves=False)  # two epochs: a curve
TEXT_FLOOR_SMOKE = dict(TEXT_FLOOR["smoke"], epochs=2, early_stop=2)
# A train MAE counts as still falling after the best epoch when it drops by more than this.
CURVE_TOLERANCE = 1e-3

KHAR_RUNNER = "benchmarks.walk:khar_run"
FLOOR_RUNNER = "benchmarks.walk:floor_run"


# ---- the per-epoch curves of a run ----------------------------------------------------------------
def fit_verdict(curve: Sequence[Mapping[str, float]], best_epoch: int) -> str:
    """One seed's curve in words: 'over-fits' (the train MAE keeps falling after the best validation
    epoch while the validation MAE does not), 'under-fits (cap)' (the last epoch is the best: early
    stopping never fired, the epoch cap stopped a run that was still improving), 'under-fits
    (plateau)' (the train MAE stopped falling too) or '-' (no curve)."""
    if not curve or best_epoch < 1:
        return "-"
    last = curve[-1]
    if best_epoch >= last["epoch"]:
        return "under-fits (cap)"
    at_best = next(r for r in curve if r["epoch"] == best_epoch)
    if last["train_MAE"] < at_best["train_MAE"] - CURVE_TOLERANCE:
        return "over-fits"
    return "under-fits (plateau)"


# ---- runners (called by the sweep where the run executes) ----------------------------------------
def khar_run(spec, feature_path: str) -> Dict[str, Any]:
    """One ``MMSA_run`` of KHaR (:func:`khar_mmsa.experiments.sweep.mmsa_run_one`) with its curve and
    its validation metrics at the selected epoch, as its trainer recorded them."""
    from khar_mmsa.experiments.sweep import mmsa_run_one
    result = mmsa_run_one(spec, feature_path)
    if not result.get("valid"):
        raise RuntimeError(f"{spec.out_dir}: the run trained no epoch in this process (a seed finished by an "
                           f"earlier, interrupted sweep?); remove that folder to train it again")
    return {k: v for k, v in result.items() if k != "row"}


def floor_run(spec, feature_path: str) -> Dict[str, Any]:
    """The text-only floor of one seed (:func:`benchmarks.compare.text_floor_run`): test and
    validation metrics at its best epoch, and its curve."""
    return text_floor_run(spec, feature_path)


# ---- settings ------------------------------------------------------------------------------------
def khar_settings(mode: str) -> Dict[str, Any]:
    """KHaR overrides of the mode (quick: compare.py's transcripts settings; full: the paper's)."""
    return dict(KHAR_SMOKE_WALK if mode == "smoke" else KHAR_QUICK if mode == "quick" else {})


def floor_settings(mode: str) -> Dict[str, Any]:
    return dict(TEXT_FLOOR_SMOKE if mode == "smoke" else TEXT_FLOOR[mode])


def text_len(mode: str) -> int:
    return TRANSCRIPT_TEXT_LEN[mode]


def build_transcripts(args: argparse.Namespace, encoder: Path, length: int) -> Tuple[Path, str]:
    """The transcripts pickle at ``length`` tokens (whole training fold; smoke: the first clips)."""
    path, meta = common.make_transcripts(args.out, encoder, args.labels, None, text_len=length)
    if args.mode == "smoke":
        path = _first_clips(path, SMOKE_SIZES)
    sizes = common.split_sizes(path)
    desc = (f"real CMU-MOSI transcripts and labels ({common.portable_arg(str(Path(args.labels).resolve()))}, read at run time), "
            f"text only: token ids + {common.encoder_name(encoder)} last hidden states, "
            f"L={meta.get('text_len')} ({meta.get('truncated')} transcripts truncated); audio and vision absent "
            f"(all-zero frames, length 1); train/valid/test {'/'.join(map(str, sizes))}"
            + (" (smoke: the first clips of each split)" if args.mode == "smoke" else " (whole folds)"))
    return path, desc


def _first_clips(path: Path, sizes: Sequence[int]) -> Path:
    import pickle

    from khar_mmsa.io.pickles import load_pickle
    from khar_mmsa.io.files import atomic_open
    small = path.with_name(f"{path.stem}-first{'x'.join(map(str, sizes))}.pkl")
    if not small.is_file():
        data = load_pickle(path)
        for split, n in zip(SPLITS, sizes):
            data[split] = {k: v[:n] for k, v in data[split].items()}
        with atomic_open(small) as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return small


def code_version() -> str:
    """The code the runs used: the package's source digest (:func:`khar_mmsa.io.identity.code_version`,
    part of every sweep run's identity) and, in a git checkout, the commit (with '+uncommitted
    changes' when tracked files differ from it)."""
    import subprocess

    from khar_mmsa.io.identity import code_version as source_version
    version = f"khar-mmsa {source_version()}"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=common.REPO_DIR, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=common.REPO_DIR,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}, git {commit}" + (" +uncommitted changes" if dirty else "")


# ---- one row --------------------------------------------------------------------------------------
def row_specs(args: argparse.Namespace, key: str, overrides: Optional[Mapping[str, Any]], feature_path: Path,
              data_key: str, encoder: Path, seeds: Sequence[int]) -> List[Any]:
    """The sweep runs of one row, one per seed.  KHaR rows with harvesting share one adapter file per
    seed and data (the pretraining does not depend on the parts the rows change)."""
    specs = []
    for seed in seeds:
        out = args.out / "runs" / data_key / key / f"seed{seed}"
        if overrides is None:
            config = dict(floor_settings(args.mode), encoder=str(encoder))
            specs.append(common.mmsa_spec("text_floor", "mosi", feature_path, seed, out, config, variant=FLOOR,
                                          label=f"{key} seed {seed}", threads=args.threads, runner=FLOOR_RUNNER))
            continue
        config = {"pretrained": str(encoder), **khar_settings(args.mode), **(args.khar_config or {}), **overrides}
        if config.get("harvesting", True):
            config["pretrained_adapters_path"] = str(args.out / "adapters" / f"{data_key}-seed{seed}.pt")
        specs.append(common.mmsa_spec("khar", "mosi", feature_path, seed, out, config, variant=key,
                                      label=f"{key} seed {seed}", threads=args.threads, runner=KHAR_RUNNER))
    return specs


def summarise(title: str, specs: Sequence[Any], outcome: Any) -> Dict[str, Any]:
    """A row's numbers over its seeds: validation and test Stats, curves, verdicts, wall time."""
    done = [outcome.results[s.run_id] for s in specs]
    results = [d["result"] for d in done]
    valid = common.stats_from_runs([{k: r["valid"][k] for k in ("MAE", "Corr") if k in r["valid"]} for r in results])
    test_keys = set.intersection(*(set(r["metrics"]) for r in results))
    test = common.stats_from_runs([{k: r["metrics"][k] for k in test_keys} for r in results])
    verdicts = [fit_verdict(r["curve"], r["best_epoch"]) for r in results]
    return {"title": title, "valid": valid, "test": test, "results": results, "verdicts": verdicts,
            "seeds": [s.seed for s in specs], "wall_s": sum(float(d["wall_s"]) for d in done),
            "config": dict(specs[0].config)}


def curve_summary(results: Sequence[Mapping[str, Any]]) -> str:
    """Mean over seeds of the train and validation MAE at epoch 1, the best epoch and the last."""
    def mean_at(which: str, key: str) -> float:
        values = []
        for r in results:
            curve = r["curve"]
            row = {"first": curve[0], "last": curve[-1],
                   "best": next((c for c in curve if c["epoch"] == r["best_epoch"]), curve[-1])}[which]
            values.append(row.get(key, float("nan")))
        return float(np.mean(values))
    if not all(r["curve"] for r in results):
        return "-"
    return "; ".join(f"{split} " + " → ".join(f"{mean_at(w, f'{split}_MAE'):.3f}" for w in ("first", "best", "last"))
                     for split in ("train", "valid"))


def verdict_summary(verdicts: Sequence[str]) -> str:
    counts: Dict[str, int] = {}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{v} {n}/{len(verdicts)}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def close_pairs(rows: Sequence[Mapping[str, Any]], reference: Optional[int] = None) -> List[Tuple[str, str]]:
    """Pairs of rows whose validation MAE means are within one std (the larger of the two): the row
    above (``reference`` None) or the reference row."""
    pairs = []
    for i, row in enumerate(rows):
        j = (i - 1) if reference is None else reference
        if j < 0 or j == i:
            continue
        a, b = rows[j]["valid"]["MAE"], row["valid"]["MAE"]
        if abs(a.mean - b.mean) <= max(a.std, b.std):
            pairs.append((rows[j]["title"], row["title"]))
    return pairs


def against_default(stat: common.Stat, ref: common.Stat) -> str:
    """A switch's validation MAE against the default's, in words: better or worse by more than the
    larger of the two stds, or within it (seed noise: keep the default)."""
    gap = stat.mean - ref.mean
    if abs(gap) <= max(stat.std, ref.std):
        return "within one std"
    return "better by > 1 std" if gap < 0 else "worse by > 1 std"


def _delta(stat: common.Stat, ref: common.Stat) -> str:
    return f"{(stat.mean - ref.mean) / 100:+.3f}"


# ---- main -----------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", choices=TABLES, default="walk",
                        help="walk: floor to full KHaR (validation); switches: the open choices (validation); "
                             "final: floor vs KHaR on the test split")
    parser.add_argument("--rows", nargs="+", default=None, help="row keys to run (default: all of the table)")
    parser.add_argument("--khar-config", type=json.loads, default=None, metavar="JSON",
                        help="KHaR overrides on top of the mode's, for every KHaR row (e.g. the chosen switches)")
    parser.add_argument("--labels", type=Path, default=common.MOSI_LABEL_CSV, help="MOSI label.csv")
    parser.add_argument("--tag", default=None, help="suffix of this run's RESULTS.md section and table files")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    if args.out is None:  # one work folder for the three tables: identical runs are shared
        args.out = common.DEFAULT_WORK_DIR / f"walk-transcripts-mosi-{args.mode or 'quick'}"
    common.resolve_paths(args, "walk-transcripts-mosi")
    if not Path(args.labels).is_file():
        raise SystemExit(f"{args.labels}: no such label.csv (the CMU-MOSI transcripts); pass --labels")
    seeds = args.seeds or (FINAL_SEEDS if args.table == "final" else SEEDS)[args.mode]
    machine = common.machine_description()
    version = code_version()
    table_rows = {"walk": [(k, t, o, None) for k, t, o in WALK_ROWS], "switches": SWITCH_ROWS,
                  "final": [(k, t, o, None) for k, t, o in FINAL_ROWS]}[args.table]
    unknown = sorted(set(args.rows or []) - {k for k, *_ in table_rows})
    if unknown:
        raise SystemExit(f"--rows {unknown}: not rows of --table {args.table} ({[k for k, *_ in table_rows]})")
    table_rows = [r for r in table_rows if args.rows is None or r[0] in args.rows]
    logger.info(f"walk {args.table} ({args.mode}): {len(table_rows)} rows x seeds {seeds}; code {version}")

    with Timer() as total:
        encoder = common.text_encoder(args)
        data: Dict[int, Tuple[Path, str]] = {}
        specs: Dict[str, list] = {}
        for key, title, overrides, length in table_rows:
            length = length or text_len(args.mode)
            if length not in data:
                data[length] = build_transcripts(args, encoder, length)
            feature_path = data[length][0]
            specs[key] = row_specs(args, key, overrides, feature_path, f"L{length}", encoder, seeds)
        outcome = common.run_specs([s for runs in specs.values() for s in runs], args, f"walk-{args.table}")
        reused = (len(outcome.skipped), sum(len(r) for r in specs.values()))
        rows = [summarise(title, specs[key], outcome) for key, title, _, _ in table_rows]

    keys = [key for key, *_ in table_rows]
    overrides_of = {key: o for key, _, o, _ in table_rows}
    body, md_rows, csv_extra = _table(args, rows, keys, overrides_of)
    notes = _notes(args, rows, keys, seeds, encoder, argv)
    stem = {"walk": "walk", "switches": "walk-switches", "final": "walk-final"}[args.table] \
        + f"-transcripts-mosi-{args.mode}" + (f"-{args.tag}" if args.tag else "")
    md_path = args.tables_dir / f"{stem}.md"
    columns = [("MAE", "MAE"), ("Corr", "Corr")] if args.table != "final" else common.metric_columns("mosi")
    csv_path = common.write_csv_table(args.tables_dir / f"{stem}.csv", md_rows, columns, csv_extra)
    title = {"walk": "Walk from the text-only floor to KHaR", "switches": "Open choices, each against the default",
             "final": "Final comparison on the test split"}[args.table]
    title += f" on the real CMU-MOSI transcripts ({args.mode}" + (f", {args.tag}" if args.tag else "") + ")"
    text_body = body + "\n\n" + "\n".join(f"- {n}" for n in notes)
    md_path.write_text(f"# {title}\n\nCode version: {version}; seeds {', '.join(map(str, seeds))}.\n\n{text_body}\n")
    data_desc = " | ".join(desc for _, desc in data.values())
    section = common.section(title, common.command_line("benchmarks.walk", argv), common.machine_line(machine),
                             seeds, data_desc, total.seconds, text_body, reused=reused)
    section = section.replace("- Wall time: ", f"- Code version: {version}\n- Wall time: ", 1)
    common.update_results_md(args.results_md, stem, section)
    logger.info(f"\n{body}")
    logger.info(f"tables: {md_path}, {csv_path}; section '{stem}' of {args.results_md}; "
                f"wall {common.fmt_seconds(total.seconds)}")
    return {"rows": dict(zip(keys, rows)), "table_md": md_path, "table_csv": csv_path, "results_md": args.results_md,
            "wall_s": total.seconds, "code_version": version, "stem": stem}


def _switch(overrides: Optional[Mapping[str, Any]]) -> str:
    if overrides is None:
        return "text floor"
    return "`" + (", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "default") + "`"


def _table(args: argparse.Namespace, rows: List[Dict[str, Any]], keys: List[str],
           overrides_of: Mapping[str, Optional[Mapping[str, Any]]]) -> Tuple[str, list, dict]:
    fmt = common.fmt_stat
    best_epochs = [" ".join(str(r["best_epoch"]) for r in row["results"]) for row in rows]
    epochs_run = [" ".join(str(r["epochs_run"]) for r in row["results"]) for row in rows]
    curves = [curve_summary(row["results"]) for row in rows]
    verdicts = [verdict_summary(row["verdicts"]) for row in rows]
    wall = [common.fmt_seconds(row["wall_s"]) for row in rows]
    if args.table == "final":
        columns = common.metric_columns("mosi")
        header = ["Model"] + [t for _, t in columns] + ["valid MAE (selection)", "best epoch per seed", "wall"]
        lines = [[row["title"]] + [fmt(k, row["test"].get(k)) for k, _ in columns]
                 + [fmt("MAE", row["valid"]["MAE"]), b, w] for row, b, w in zip(rows, best_epochs, wall)]
        csv_rows = [(row["title"], row["test"]) for row in rows]
        extra = {"valid_MAE_mean": [round(r["valid"]["MAE"].mean / 100, 5) for r in rows],
                 "valid_MAE_std": [round(r["valid"]["MAE"].std / 100, 5) for r in rows],
                 "wall_s": [round(r["wall_s"], 1) for r in rows]}
        return common.markdown_table(header, lines), csv_rows, extra
    if args.table == "walk":
        deltas = ["-"] + [_delta(rows[i]["valid"]["MAE"], rows[i - 1]["valid"]["MAE"]) for i in range(1, len(rows))]
        delta_title = "Δ valid MAE vs row above"
    else:
        ref = rows[keys.index("khar")]["valid"]["MAE"] if "khar" in keys else None
        deltas = [_delta(r["valid"]["MAE"], ref) + (f" ({against_default(r['valid']['MAE'], ref)})" if k != "khar" else "")
                  if ref is not None else "-" for r, k in zip(rows, keys)]
        delta_title = "Δ valid MAE vs default"
    header = ["Row", "switch", "valid MAE", "valid Corr", delta_title, "best epoch per seed", "epochs run",
              "MAE curve (epoch 1 → best → last)", "fit per seed", "wall"]
    lines = [[row["title"], _switch(overrides_of[k]), fmt("MAE", row["valid"]["MAE"]), fmt("Corr", row["valid"].get("Corr")),
              d, b, e, c, v, w]
             for row, k, d, b, e, c, v, w in zip(rows, keys, deltas, best_epochs, epochs_run, curves, verdicts, wall)]
    csv_rows = [(row["title"], row["valid"]) for row in rows]
    extra = {"key": keys, "best_epochs": best_epochs, "epochs_run": epochs_run, "curve": curves, "fit": verdicts,
             "wall_s": [round(r["wall_s"], 1) for r in rows]}
    return common.markdown_table(header, lines), csv_rows, extra


def _without_seeds(argv: Optional[Sequence[str]]) -> List[str]:
    """The command line's arguments without ``--seeds`` and its values."""
    import sys
    out, skipping = [], False
    for arg in list(sys.argv[1:] if argv is None else argv):
        if arg == "--seeds":
            skipping = True
        elif not (skipping and not arg.startswith("--")):
            skipping = False
            out.append(arg)
    return out


def _notes(args: argparse.Namespace, rows: List[Dict[str, Any]], keys: List[str], seeds: Sequence[int],
           encoder: Path, argv: Optional[Sequence[str]]) -> List[str]:
    notes = []
    if args.table == "final":
        notes.append("The test split is reported here only; every setting was chosen on the validation split "
                     "(benchmarks.walk --table walk / switches).")
    else:
        notes.append("Validation split only: MAE and Corr of the epoch each seed selected (its best validation "
                     "L1, MMSA's KeyEval), mean ± population std over the seeds. The test split is not looked at "
                     "(--table final reports it).")
        notes.append("Curve: mean over seeds of the train MAE (training mode, over the epoch) and the validation "
                     f"MAE at epoch 1, the best epoch and the last. Fit per seed: over-fits = the train MAE kept "
                     f"falling (by > {CURVE_TOLERANCE}) after the best epoch; under-fits (cap) = still improving "
                     "when the epoch cap stopped it; under-fits (plateau) = the train MAE stopped falling too.")
        reference = keys.index("khar") if args.table == "switches" and "khar" in keys else None
        pairs = close_pairs(rows, reference)
        if pairs and len(seeds) < len(FIVE_SEEDS):
            rerun = common.command_line("benchmarks.walk", _without_seeds(argv))
            notes.append("Within one std of each other (need 5 seeds): "
                         + "; ".join(f"{a} / {b}" for a, b in pairs)
                         + f". Rerun with `{rerun} --seeds {' '.join(map(str, FIVE_SEEDS))}` (finished runs are reused).")
        elif pairs:
            notes.append("Within one std of each other: " + "; ".join(f"{a} / {b}" for a, b in pairs) + ".")
    khar = {**khar_settings(args.mode), **(args.khar_config or {})}
    notes.append(f"Settings of every KHaR row (on top of mmsa_configs/ for MOSI): "
                 f"`{common.shown_config(dict(khar, pretrained=str(encoder)))}` plus the row's switch; the text floor: "
                 f"`{floor_settings(args.mode)}`. Rows with harvesting share one pretrained adapter file per seed "
                 "and transcript length.")
    notes.append("Audio and vision are absent in the transcripts (all-zero frames of length 1): KHaR's audio and "
                 "vision paths see constants in every row. Without the MIB fusion the prediction's L1 carries the "
                 "weights of both L_task and -log q(y|z) (KHaRCriterion).")
    return notes


if __name__ == "__main__":
    main()
