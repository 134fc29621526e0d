"""How the decision campaign reads a comparison: per-seed paired differences, their 95 % interval,
a verdict, and the smallest difference the design could have detected.

Two rows of a campaign table share their seeds (1111-1115), so a row is read against its
reference seed by seed: ``d_s = a_s - b_s``.  Over the ``n`` seeds both rows have,

* the mean difference ``mean(d)`` and its sample std ``sd = std(d, ddof=1)``;
* the 95 % interval ``mean(d) ± t_{0.975, n-1} · sd / √n`` (Student's t over seeds) and the
  two-sided paired t test's p value;
* the verdict, for a metric where lower is better (MAE): **better** when the interval lies below 0,
  **worse** when it lies above 0, else **undecided** (for Corr, higher is better: the signs swap);
* the minimal detectable paired difference at α = 0.05 (two-sided) and power 0.8 with that spread:
  ``MDE = (t_{0.975, n-1} + t_{0.8, n-1}) · sd / √n``.  An undecided row whose |mean(d)| is below
  its MDE is one the design could not have resolved, not a measured absence of effect.

The t quantiles come from scipy (the ``bench`` extra).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

ALPHA = 0.05   # two-sided level of the interval and of the verdict
POWER = 0.8    # the power at which the minimal detectable difference is stated
MDE_FORMULA = "MDE = (t_{0.975,n-1} + t_{0.8,n-1}) × sd(d)/√n"


@dataclass(frozen=True)
class Paired:
    """A row ``a`` against its reference ``b`` over the seeds both have (``d = a - b`` per seed)."""

    n: int
    mean: float            # mean of d
    sd: float              # sample std of d (ddof=1)
    low: float             # 95 % interval of the mean difference
    high: float
    p: float               # two-sided paired t test
    mde: float             # minimal detectable |mean d| at ALPHA, POWER
    better: int            # seeds where a is better than b (lower MAE; higher for other metrics)
    lower_is_better: bool = True

    @property
    def verdict(self) -> str:
        """'better' / 'worse' / 'undecided' for ``a`` (by the interval; a tie on every seed is undecided)."""
        if not (self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)):
            return "undecided"
        if self.high < 0:
            return "better" if self.lower_is_better else "worse"
        if self.low > 0:
            return "worse" if self.lower_is_better else "better"
        return "undecided"

    def text(self, digits: int = 3) -> str:
        """``-0.011 [-0.027, +0.005], p 0.140, 4/5 seeds better: undecided (MDE 0.022)``."""
        if self.n < 2:
            return f"{self.mean:+.{digits}f} ({self.n} seed): undecided" if self.n else "-"
        return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], p {self.p:.3f}, "
                f"{self.better}/{self.n} seeds better: {self.verdict} (MDE {self.mde:.{digits}f})")


def paired(a: Mapping[Any, float], b: Mapping[Any, float], lower_is_better: bool = True) -> Paired:
    """``a`` against ``b``, each {seed: value}, over the seeds both have."""
    from scipy import stats
    seeds = sorted(set(a) & set(b))
    d = np.array([float(a[s]) - float(b[s]) for s in seeds], dtype=float)
    n = int(d.size)
    if n == 0:
        nan = float("nan")
        return Paired(0, nan, nan, nan, nan, nan, nan, 0, lower_is_better)
    mean = float(d.mean())
    better = int((d < 0).sum() if lower_is_better else (d > 0).sum())
    if n < 2:
        nan = float("nan")
        return Paired(n, mean, nan, nan, nan, nan, nan, better, lower_is_better)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    t_half = float(stats.t.ppf(1 - ALPHA / 2, n - 1))
    t_power = float(stats.t.ppf(POWER, n - 1))
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    return Paired(n, mean, sd, mean - t_half * se, mean + t_half * se, p, (t_half + t_power) * se, better,
                  lower_is_better)


def by_seed(records: Sequence[Mapping[str, Any]], value: Callable[[Mapping[str, Any]], Optional[float]]
            ) -> Mapping[Any, float]:
    """{seed: value(record)} of the records whose value is a number."""
    out = {}
    for rec in records:
        v = value(rec)
        if v is not None and math.isfinite(float(v)):
            out[rec["seed"]] = float(v)
    return out


def metric(split: str, key: str) -> Callable[[Mapping[str, Any]], Optional[float]]:
    """A record's ``key`` on ``split`` ('valid': the selected epoch's; 'test': its test metrics)."""
    field = "valid" if split == "valid" else "metrics"

    def get(rec: Mapping[str, Any]) -> Optional[float]:
        return rec["outcome"]["result"].get(field, {}).get(key)
    return get


def compare(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], split: str = "valid",
            key: str = "MAE") -> Paired:
    """Records ``a`` against records ``b`` on ``split``'s ``key``, paired by seed (MAE: lower is
    better; any other metric: higher is better)."""
    return paired(by_seed(a, metric(split, key)), by_seed(b, metric(split, key)), lower_is_better=key == "MAE")


def notes() -> str:
    """The reading of every paired column, for a table's notes."""
    return (f"Paired reading: per-seed differences d (rows share seeds 1111-1115), mean d with its "
            f"{1 - ALPHA:.0%} interval (Student's t over the n seeds, sd with ddof=1), the two-sided paired t "
            f"test's p, the seeds where the row is better, and a verdict: better / worse when the interval "
            f"excludes 0, else undecided. {MDE_FORMULA} is the smallest paired difference the design detects "
            f"at α = {ALPHA} (two-sided) with power {POWER} at that spread: an undecided row below its MDE was "
            "not resolvable with these seeds.")


__all__ = ["Paired", "paired", "compare", "by_seed", "metric", "notes", "MDE_FORMULA", "ALPHA", "POWER"]
