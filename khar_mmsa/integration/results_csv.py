"""One plain-numbers row per ``MMSA_run`` call in ``<res_save_dir>/normal/<dataset>.csv``.

MMSA writes ``(mean, std)`` tuples as strings and, when two runs finish together, can lose a row
(breakage 7).  :mod:`khar_mmsa.integration.mmsa_run` lets MMSA write into a private temporary folder and
merges one row per run into the real CSV with :func:`append_result_row`: an exclusive
``fcntl.flock`` on ``<csv>.lock`` and an atomic replace.  Tuning runs (``is_tune=True``) write
their own tune CSV (:mod:`khar_mmsa.integration.tune`); its cells are plain numbers.

Row format: ``Model``, ``seeds`` (the seeds, space separated), then for every metric key returned
by the trainer's ``do_test`` two plain numeric columns, ``<Metric>`` = mean and ``<Metric>_std``
= population std over the seeds, both multiplied by 100 and rounded to two decimals (MMSA's own
convention, so ``MAE`` 0.71 is written 71.0).  ``pd.read_csv`` gives float columns.  Rows of an
older MMSA-format CSV (``"(np.float64(50.0), np.float64(0.0))"`` or ``"(50.0, 0.0)"`` cells) are
converted to this format when a new row is merged in.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger("MMSA")

#: Default seeds of ``MMSA_run`` (used for the ``seeds`` column when the caller passes none).
MMSA_DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)


def results_csv_path(res_save_dir: os.PathLike, dataset_name: str) -> Path:
    """Where a normal run's results go: ``<res_save_dir>/normal/<dataset>.csv`` (as MMSA)."""
    return Path(res_save_dir) / "normal" / f"{str(dataset_name).lower()}.csv"


def summarize_results(model_name: str, results: Sequence[Mapping[str, Any]],
                      seeds: Sequence[int]) -> Dict[str, Any]:
    """One CSV row: ``Model``, ``seeds``, then ``<Metric>`` (mean) and ``<Metric>_std`` per metric.

    Values are ``round(x * 100, 2)`` over the seeds (MMSA's convention), as Python floats.
    Metric keys come from the first seed; non-numeric entries are skipped.
    """
    import numpy as np
    if not results:
        raise ValueError(f"{model_name}: no per-seed results to summarise")
    row: Dict[str, Any] = {"Model": model_name, "seeds": " ".join(str(s) for s in seeds)}
    for key, first in results[0].items():
        if not is_number(first):
            logger.debug(f"results: skipping non-numeric metric {key!r}")
            continue
        values = np.array([float(r[key]) for r in results], dtype=np.float64)
        row[key] = round(float(np.mean(values)) * 100, 2)
        row[f"{key}_std"] = round(float(np.std(values)) * 100, 2)
    return row


def is_number(value: Any) -> bool:
    """A value the CSV can hold as a number (not a bool or a string)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (bool, str, bytes))


_CSV_THREAD_LOCK = threading.Lock()
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")


def append_result_row(csv_file: os.PathLike, row: Mapping[str, Any]) -> None:
    """Append ``row`` to ``csv_file`` safely across threads and processes.

    Holds an exclusive ``fcntl.flock`` on ``<csv_file>.lock`` while it reads the CSV, adds the
    row (columns are unioned; MMSA-format tuple cells are converted) and writes a temporary file
    in the same folder that atomically replaces the CSV.  Temporary files of a writer that was
    killed are removed under the lock; the lock file is removed on release.
    """
    import pandas as pd
    path = Path(csv_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _CSV_THREAD_LOCK, _file_lock(path.with_name(path.name + ".lock")):
        _remove_temporary_csvs(path)
        frames = []
        if path.is_file() and path.stat().st_size > 0:
            frames.append(_split_legacy_cells(pd.read_csv(path)))
        frames.append(pd.DataFrame([dict(row)]))
        frames = [f for f in frames if not f.empty]
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        _atomic_write_csv(table, path)


class _file_lock:
    """Context manager: exclusive ``flock`` on a sidecar file, removed again on release (POSIX).

    The lock file is unlinked while still locked.  A process that opened the old file before the
    unlink and then gets the lock sees that the path no longer names the file it holds, and
    opens the path again, so two processes never hold "the" lock at once.
    """

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self._fd: Optional[int] = None

    def __enter__(self) -> "_file_lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("fcntl is unavailable: results CSV written without a file lock")
            return self
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                self._fd = fd
                return self
            os.close(fd)  # the file we locked was removed by the previous holder: retry

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _remove_temporary_csvs(path: Path) -> None:
    """``.<csv>.*.tmp`` left by a writer that was killed (called with the lock held)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _atomic_write_csv(table: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            table.to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_legacy_cell(cell: Any) -> Optional[Tuple[float, float]]:
    """``"(np.float64(50.0), np.float64(0.0))"`` or ``"(50.0, 0.0)"`` -> (50.0, 0.0), else None."""
    if not isinstance(cell, str):
        return None
    text = _NUMPY_SCALAR.sub(r"\1", cell.strip())
    if not (text.startswith("(") and text.endswith(")")):
        return None
    parts = text[1:-1].split(",")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def _split_legacy_cells(table: Any) -> Any:
    """Columns of MMSA's ``(mean, std)`` cells become ``<col>`` and ``<col>_std`` floats."""
    for col in list(table.columns):
        if col in ("Model", "seeds") or table[col].dtype.kind in "biuf":
            continue
        parsed = [_parse_legacy_cell(c) for c in table[col]]
        if not any(p is not None for p in parsed):
            continue
        means = [p[0] if p else _to_float(c) for p, c in zip(parsed, table[col])]
        stds = [p[1] if p else float("nan") for p in parsed]
        table[col] = means
        std_col = f"{col}_std"
        if std_col in table.columns:
            table[std_col] = table[std_col].where(table[std_col].notna(), stds)
        else:
            table.insert(table.columns.get_loc(col) + 1, std_col, stds)
    return table


def _to_float(cell: Any) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return float("nan")
