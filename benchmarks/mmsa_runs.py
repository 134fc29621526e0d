"""Each (model, dataset, seed, variant) run of a benchmark is a
:class:`khar_mmsa.experiments.sweep.RunSpec` (one ``MMSA_run`` into its own output folder): built by
:func:`mmsa_spec`, run by :func:`run_specs` on the executor of ``--executor local|ray``
(resumable through a manifest in ``--out``), read back by :func:`collect` (mean ± std over seeds)
and :func:`read_results_csv` (one row of MMSA's results CSV)."""
from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .common import UNIT_SCALE_KEYS, Stat, fmt_seconds, fmt_stat, stats_from_runs

logger = logging.getLogger("MMSA")


@dataclass
class RunResult:
    label: str
    model: str
    stats: Dict[str, Stat]
    wall_s: float
    seeds: List[int]
    config: Dict[str, Any] = field(default_factory=dict)
    csv_path: Optional[Path] = None


def read_results_csv(csv_path: Path, model: Optional[str] = None, row: int = -1) -> Dict[str, Stat]:
    """One row of MMSA's results CSV as ``{metric: Stat}`` (the last row of ``model`` by default)."""
    import pandas as pd
    table = pd.read_csv(csv_path)
    if model is not None:
        table = table[table["Model"].astype(str).str.lower() == model.lower()]
    if table.empty:
        raise ValueError(f"{csv_path}: no row for model {model!r}")
    rec = table.iloc[row]
    n = len(str(rec.get("seeds", "")).split()) or 1
    stats: Dict[str, Stat] = {}
    for col in table.columns:
        if col in ("Model", "seeds") or col.endswith("_std"):
            continue
        std = rec.get(f"{col}_std", 0.0)
        stats[col] = Stat(float(rec[col]), float(std) if std == std else 0.0, n)
    return stats


def run_specs(specs: Sequence[Any], args: argparse.Namespace, name: str) -> Any:
    """Run the sweep's specs with the executor chosen on the command line (``--executor``...),
    resumable through ``<out>/sweep-manifest.jsonl``; returns the :class:`khar_mmsa.experiments.sweep.SweepOutcome`.
    Only this process (the driver) writes tables afterwards."""
    from khar_mmsa.experiments.sweep import executor_options, run_sweep
    return run_sweep(specs, executor_options(args), manifest_path=Path(args.out) / "sweep-manifest.jsonl", name=name)


def mmsa_spec(model: str, dataset: str, feature_path: Path, seed: int, out_dir: Path,
              config: Optional[Mapping[str, Any]] = None, variant: str = "default", label: str = "",
              threads: Optional[int] = None, runner: Optional[str] = None) -> Any:
    """One ``MMSA_run`` of ``model`` on ``feature_path`` with one seed into ``out_dir`` (its own
    checkpoints, logs and results CSV; CPU-safe ``gpu_ids=[0]``, ``num_workers=0``)."""
    from khar_mmsa.experiments.sweep import DEFAULT_RUNNER, RunSpec
    return RunSpec(model=model, dataset=dataset, seed=int(seed), feature_path=str(Path(feature_path).resolve()),
                   out_dir=str(Path(out_dir).resolve()), variant=variant, config=dict(config or {}),
                   runner=runner or DEFAULT_RUNNER, threads=threads, label=label)


def read_previous_csv(path: Path) -> Dict[str, Dict[str, Stat]]:
    """Our rows of an earlier table CSV (``write_csv_table``'s format) as ``{row: {metric: Stat}}``."""
    out: Dict[str, Dict[str, Stat]] = {}
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if rec.get("source") != "ours":
                continue
            n = int(rec.get("seeds") or 1)
            stats: Dict[str, Stat] = {}
            for col, value in rec.items():
                if not col.endswith("_mean") or value in ("", None):
                    continue
                key = col[:-len("_mean")]
                scale = 100.0 if key in UNIT_SCALE_KEYS else 1.0  # Stat keeps MMSA's x100 for MAE/Corr
                stats[key] = Stat(float(value) * scale, float(rec.get(f"{key}_std") or 0.0) * scale, n)
            out[rec["row"]] = stats
    return out


def collect(label: str, model: str, specs: Sequence[Any], outcome: Any,
            config: Optional[Mapping[str, Any]] = None) -> RunResult:
    """The runs of one table row (one per seed) -> mean ± std over seeds, summed wall time."""
    done = [outcome.results[s.run_id] for s in specs]
    per_seed = [dict(d["result"]["metrics"]) for d in done]
    for d, metrics in zip(done, per_seed):  # KHaR and the floor: the validation MAE selection chose by
        if "MAE" in d["result"].get("valid", {}):
            metrics["valid_MAE"] = float(d["result"]["valid"]["MAE"])
    keys = set.intersection(*(set(m) for m in per_seed)) if per_seed else set()  # a metric one seed lacks is left out
    stats = stats_from_runs([{k: v for k, v in m.items() if k in keys} for m in per_seed])
    wall = sum(float(d["wall_s"]) for d in done)
    logger.info(f"[{label}] {len(specs)} run(s), {fmt_seconds(wall)}: "
                + ", ".join(f"{k} {fmt_stat(k, stats[k])}" for k in ("MAE", "Corr") if k in stats))
    return RunResult(label, model, stats, wall, [s.seed for s in specs], dict(config or {}))
