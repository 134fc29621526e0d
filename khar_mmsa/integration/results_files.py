"""The results files of a run: MMSA's table, and a numeric table for pandas beside it.

``<res_save_dir>/normal/<dataset>.csv`` keeps MMSA's layout: a ``Model`` column, then one column
per metric whose cell is ``(mean, std)`` over the seeds, each ``round(x * 100, 2)`` -- written as
plain numbers (``(71.23, 1.5)``).  A new row is appended as one line; the rows already in the
file are never rewritten (when the metric columns differ from the file's, the row is refused
with an error naming both).

``<res_save_dir>/normal/<dataset>.tidy.csv`` holds the same runs as numbers: ``Model``, ``seeds``
(space separated), then ``<Metric>`` (mean) and ``<Metric>_std`` (population std), both x100 and
rounded to two decimals; ``pd.read_csv`` gives float columns.

Both files are appended under an exclusive lock on ``<file>.lock`` (:mod:`khar_mmsa.io.locks`: never
through a link, removed on release), so runs finishing together never lose a row.  :func:`check_results_files`
runs before training: an existing file must parse and be writable, and neither it nor its lock
file may be a link.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger("MMSA")



class ResultsFileError(OSError):
    """A results file cannot be read, parsed or written."""


def results_csv_path(res_save_dir: os.PathLike, dataset_name: str) -> Path:
    """MMSA's results table: ``<res_save_dir>/normal/<dataset>.csv``."""
    return Path(res_save_dir) / "normal" / f"{str(dataset_name).lower()}.csv"


def tidy_csv_path(res_save_dir: os.PathLike, dataset_name: str) -> Path:
    """The numeric table beside it: ``<res_save_dir>/normal/<dataset>.tidy.csv``."""
    return Path(res_save_dir) / "normal" / f"{str(dataset_name).lower()}.tidy.csv"


def is_number(value: Any) -> bool:
    """A value the tables can hold as a number (not a bool or a string)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (bool, str, bytes))


def summarize(model_name: str, results: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> Dict[str, Any]:
    """The numeric row: ``Model``, ``seeds``, then ``<Metric>`` and ``<Metric>_std`` per metric
    (x100, two decimals, MMSA's convention: :func:`mean_std_x100`).  Metric keys come from the
    first seed."""
    if not results:
        raise ValueError(f"{model_name}: no per-seed results to summarise")
    row: Dict[str, Any] = {"Model": model_name, "seeds": " ".join(str(s) for s in seeds)}
    for key, first in results[0].items():
        if not is_number(first):
            continue
        row[key], row[f"{key}_std"] = mean_std_x100([float(r[key]) for r in results])
    return row


#: Decimals MMSA keeps of a x100 summary (``round(np.mean(values) * 100, 2)``, ``MMSA/run.py``).
SUMMARY_DECIMALS = 2


def mean_std_x100(values: Sequence[float], scale: float = 100.0) -> Tuple[float, float]:
    """MMSA's summary of one metric over seeds: the mean and the population std (``np.std``),
    each times ``scale`` (100: MMSA's CSV convention for values in natural units; 1 for values
    already x100) and then rounded to :data:`SUMMARY_DECIMALS` -- the one place this is computed
    (the results tables, the sweep's summary, the benchmarks)."""
    import numpy as np
    array = np.asarray(values, dtype=np.float64)
    return (round(float(np.mean(array)) * scale, SUMMARY_DECIMALS),
            round(float(np.std(array)) * scale, SUMMARY_DECIMALS))


def mmsa_row(row: Mapping[str, Any]) -> Dict[str, str]:
    """MMSA's layout of a numeric row: ``Model``, then ``(mean, std)`` per metric."""
    out = {"Model": str(row["Model"])}
    for key, value in row.items():
        if key in ("Model", "seeds") or key.endswith("_std"):
            continue
        out[key] = str((float(value), float(row.get(f"{key}_std", 0.0))))
    return out


def _header(path: Path) -> Optional[List[str]]:
    """The column names of an existing CSV (None if the file is absent or empty)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), None)


def check_results_files(paths: Sequence[Path]) -> None:
    """Before training: each existing results file is a regular file (not a link), writable,
    and parses as CSV; its folder can be written; its lock file, if there, is not a link."""
    import pandas as pd

    from khar_mmsa.io.locks import check_lock_path
    from khar_mmsa.io.safe_io import check_writable_file
    for path in paths:
        try:
            check_writable_file(path)
            check_lock_path(lock_path(path))
        except OSError as exc:
            raise ResultsFileError(f"{path}: the results file cannot be appended to ({exc}); results are "
                                   f"only appended to a writable regular file, never through a link. Fix "
                                   f"it or pass another res_save_dir; nothing was trained.") from exc
        if not path.exists():
            continue
        try:
            pd.read_csv(path)
        except pd.errors.EmptyDataError:
            continue
        except Exception as exc:
            raise ResultsFileError(f"{path}: the results file cannot be parsed as CSV "
                                   f"({type(exc).__name__}: {exc}); fix or move it; nothing was trained.") from exc


_THREAD_LOCK = threading.Lock()


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` as one line, under the file lock.

    A new file gets a header; an existing file's rows are left byte for byte; a row whose columns
    differ from the file's header is refused (:class:`ResultsFileError`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, _results_lock(path):
        header = _header(path)
        columns = list(row)
        if header is not None and header != columns:
            raise ResultsFileError(
                f"{path}: its columns {header} differ from this run's {columns}; the row was not "
                f"written (the other rows are unchanged). Pass another res_save_dir.")
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if header is None:
            writer.writerow(columns)
        writer.writerow([row[c] for c in columns])
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        needs_newline = header is not None and not _ends_with_newline(path)
        fd = os.open(path, flags, 0o644)
        try:
            data = ("\n" if needs_newline else "") + text.getvalue()
            os.write(fd, data.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_run_row(res_save_dir: os.PathLike, dataset_name: str, row: Mapping[str, Any]) -> Path:
    """The run's row into MMSA's table and the numeric table; returns MMSA's table's path."""
    mmsa_csv = results_csv_path(res_save_dir, dataset_name)
    append_row(mmsa_csv, mmsa_row(row))
    append_row(tidy_csv_path(res_save_dir, dataset_name), row)
    return mmsa_csv


def lock_path(path: Path) -> Path:
    """The sidecar lock file of a results file: ``<file>.lock``."""
    return path.with_name(path.name + ".lock")


@contextmanager
def _results_lock(path: Path) -> Iterator[None]:
    """The exclusive lock on ``<path>.lock`` (:class:`~khar_mmsa.io.locks.ExclusiveLock`: never
    through a link, removed on release); a link there is a :class:`ResultsFileError`."""
    from khar_mmsa.io.locks import ExclusiveLock
    try:
        lock = ExclusiveLock(lock_path(path), remove_on_release=True).__enter__()
    except OSError as exc:
        raise ResultsFileError(f"{lock_path(path)}: cannot create the lock file ({exc}); a link "
                               f"there is never followed") from exc
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def read_results_table(path: os.PathLike) -> Any:
    """MMSA's results table as numbers: each ``(mean, std)`` column becomes ``<Metric>`` and
    ``<Metric>_std`` floats (rows of MMSA's own models and ours alike)."""
    import ast

    import pandas as pd
    table = pd.read_csv(path)
    for col in [c for c in table.columns if c != "Model"]:
        pairs = [ast.literal_eval(c) if isinstance(c, str) and c.startswith("(") else (c, float("nan"))
                 for c in table[col]]
        position = table.columns.get_loc(col)
        table[col] = [float(p[0]) for p in pairs]
        table.insert(position + 1, f"{col}_std", [float(p[1]) for p in pairs])
    return table
