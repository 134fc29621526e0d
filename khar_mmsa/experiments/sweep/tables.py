"""The sweep's tables, written by the driver alone: ``results.csv`` (one row per finished run) and
``summary.csv`` (mean and population std over seeds per model and variant), in MMSA's x100 scale.
The summary is computed from each run's unrounded test results, as MMSA computes a multi-seed row,
so it equals MMSA's results CSV for the same seeds; ``results.csv`` shows them to 4 decimals.

Columns come in one fixed order -- the identity columns, then the metrics by name -- whether a
run's outcome was made in this session or read back from the manifest (which stores it with
sorted keys), so a rerun writes the same header as the first run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from khar_mmsa.experiments.sweep.spec import RunSpec
from khar_mmsa.io.files import atomic_write_text

if TYPE_CHECKING:
    from khar_mmsa.experiments.sweep.driver import SweepOutcome

#: MMSA's results CSVs hold every metric x100 (MAE 71.5 for 0.715); the sweep's tables do too.
MMSA_SCALE = 100.0
#: Decimals of a metric in the per-run table (MMSA's x100 scale).
RUN_DECIMALS = 4
#: The per-run table's identity columns, first and in this order.
RUN_COLUMNS = ("model", "dataset", "variant", "seed", "run_id", "wall_s", "host")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def spec_table(specs: Sequence[RunSpec], outcome: "SweepOutcome", scale: float = MMSA_SCALE,
               decimals: Optional[int] = RUN_DECIMALS) -> List[Dict[str, Any]]:
    """One row per finished spec: identity, wall time, host and the run's metrics -- its unrounded
    test results (``test``) where its runner gave them, else ``metrics`` -- times ``scale`` (MMSA's
    x100 by default), rounded to ``decimals`` (None: unrounded); specs that did not finish are left
    out."""
    rows = []
    for spec in specs:
        done = outcome.results.get(spec.run_id)
        if done is None:
            continue
        row = {"model": spec.model, "dataset": spec.dataset, "variant": spec.variant, "seed": spec.seed,
               "run_id": spec.run_id, "wall_s": done.get("wall_s"), "host": done.get("host")}
        result = done["result"]
        for key, value in (result.get("test") or result.get("metrics", {})).items():
            if _is_number(value):
                value = float(value) * scale
                value = value if decimals is None else round(value, decimals)
            row[key] = value
        rows.append(row)
    return rows


def summary_table(rows: Sequence[Mapping[str, Any]], scale: float = 1.0) -> List[Dict[str, Any]]:
    """:func:`spec_table`'s rows per model and variant as MMSA's results CSV has them: ``Model``,
    ``seeds`` (the seeds, space-separated), ``n_seeds``, then each metric's mean and
    ``<metric>_std`` (population std, ``np.std``) times ``scale``, rounded to 2 decimals as MMSA
    does.  :func:`write_tables` passes unrounded rows in natural units and ``scale=100``: MMSA's
    ``round(np.mean(values) * 100, 2)``."""
    from khar_mmsa.runs.results_files import mean_std_x100
    groups: Dict[tuple, List[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row.get("variant", "default")), []).append(row)
    out = []
    for (model, variant), members in groups.items():
        summary: Dict[str, Any] = {"Model": model}
        if variant != "default":
            summary["variant"] = variant
        summary["seeds"] = " ".join(str(r["seed"]) for r in members)
        summary["n_seeds"] = len(members)
        for key in [k for k in members[0] if k not in RUN_COLUMNS]:
            values = [r.get(key) for r in members]
            if not all(_is_number(v) for v in values):
                continue
            summary[key], summary[f"{key}_std"] = mean_std_x100(values, scale=scale)
        out.append(summary)
    return out


def _columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> List[str]:
    """``first`` (those present), then every other key of ``rows`` by name: one order, whatever
    order each row's keys came in."""
    keys = {k for row in rows for k in row}
    return [k for k in first if k in keys] + sorted(keys - set(first))


def write_tables(specs: Sequence[RunSpec], outcome: "SweepOutcome", folder: os.PathLike) -> Dict[str, Path]:
    """``results.csv`` (one row per finished run) and ``summary.csv`` (:func:`summary_table`) in
    ``folder``, both in MMSA's x100 scale; written atomically, also when some runs failed."""
    import pandas as pd
    rows = spec_table(specs, outcome)
    summary = summary_table(spec_table(specs, outcome, scale=1.0, decimals=None), scale=MMSA_SCALE)
    folder = Path(folder)
    paths = {"results": folder / "results.csv", "summary": folder / "summary.csv"}
    atomic_write_text(paths["results"], pd.DataFrame(rows, columns=_columns(rows, RUN_COLUMNS)).to_csv(index=False))
    summary_first = ("Model", "variant", "seeds", "n_seeds")
    summary_columns = [k for k in summary_first if any(k in r for r in summary)]
    metric_names = sorted({k for r in summary for k in r if k not in summary_first and not k.endswith("_std")})
    for name in metric_names:
        summary_columns += [name, f"{name}_std"]
    atomic_write_text(paths["summary"], pd.DataFrame(summary, columns=summary_columns).to_csv(index=False))
    return paths
