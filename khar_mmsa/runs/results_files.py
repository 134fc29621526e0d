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
through a link, removed on release), so runs finishing together never lose a row.  Appends are whole
(:func:`khar_mmsa.io.appends.append_whole`: ``O_APPEND | O_NOFOLLOW``, one checked write, fsync,
truncated back on failure) and a run's row goes to both tables or to neither.  Nothing is written
to a temporary file and renamed: existing rows stay where they are, byte for byte.  A complete last
row without a final newline (a hand edit) is kept and the next row starts on a line of its own; a
last line that is not a complete row of ours -- cut by a killed append -- is removed first, with a
warning quoting it.  :func:`check_results_files` runs before training: an existing file and its lock
file must not be links, the file must be writable, have one of our headers (no UTF-8 BOM) and
parse, and the two tables must name the same metrics.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(f"MMSA.{__name__}")



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


#: The UTF-8 byte-order mark some editors put first; neither MMSA nor pandas' default reader
#: expects it, so a header starting with it is refused (its first column would be '\ufeffModel').
UTF8_BOM = b"\xef\xbb\xbf"
#: The first columns of each table (the tidy one also has ``seeds``, then ``<Metric>``/``<Metric>_std`` pairs).
MODEL_COLUMN, SEEDS_COLUMN, STD_SUFFIX = "Model", "seeds", "_std"


def is_tidy(path: Path) -> bool:
    return path.name.endswith(".tidy.csv")


def _read(path: Path, first_line: bool = False) -> Optional[bytes]:
    """The bytes of ``path`` (only its first line with ``first_line``); None when absent, never
    through a link."""
    from khar_mmsa.io.appends import open_no_follow
    try:
        fd = open_no_follow(path, os.O_RDONLY, "read")
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.readline() if first_line else f.read()


def _first_line(path: Path) -> Optional[bytes]:
    """The raw first line of ``path`` (None when the file is absent or empty); never through a link."""
    return _read(path, first_line=True) or None


def _columns(raw: bytes, path: Path) -> List[str]:
    if raw.startswith(UTF8_BOM):
        raise ResultsFileError(f"{path}: the file starts with a UTF-8 byte-order mark (an editor's 'UTF-8 with "
                               f"BOM'); results tables are plain UTF-8. Save it without the BOM or pass another "
                               f"res_save_dir; nothing was trained.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{path}: the header is not UTF-8 text ({exc.reason} at byte {exc.start}); fix or "
                               f"move the file; nothing was trained.") from exc
    return next(csv.reader([text.rstrip("\r\n")]), [])


def header_metrics(path: Path) -> Optional[List[str]]:
    """The metric names of an existing results table's header (None when absent or empty), after
    checking that the header is one of ours: no BOM, ``Model`` first, then distinct names --
    for the tidy table ``seeds`` and ``<Metric>``, ``<Metric>_std`` pairs.  Anything else is a
    :class:`ResultsFileError` naming the file (before training: :func:`check_results_files`)."""
    raw = _first_line(path)
    if raw is None:
        return None
    columns = _columns(raw, path)
    tidy = is_tidy(path)
    expected = f"'{MODEL_COLUMN}', '{SEEDS_COLUMN}', then <Metric>, <Metric>_std pairs" if tidy else \
        f"'{MODEL_COLUMN}', then one column per metric"
    wrong = f"{path}: its header {columns} is not a results table's ({expected}); "
    advice = "pass another res_save_dir or move the file; nothing was trained."
    if not columns or columns[0] != MODEL_COLUMN or len(set(columns)) != len(columns) or "" in columns:
        raise ResultsFileError(wrong + advice)
    if not tidy:
        if SEEDS_COLUMN in columns or any(c.endswith(STD_SUFFIX) for c in columns):
            raise ResultsFileError(wrong + advice)
        return columns[1:]
    metrics = columns[2:][::2]
    if columns[1:2] != [SEEDS_COLUMN] or columns[2:][1::2] != [m + STD_SUFFIX for m in metrics]:
        raise ResultsFileError(wrong + advice)
    return metrics


def _ours(head: bytes, tail: bytes) -> bool:
    """Is the last line ``tail`` (no final newline) a cut row of a table of ours?  The table's header
    is ours (``Model`` first) -- or the file is only a cut header -- and ``tail`` is not a complete
    row: another number of cells than the header, or a cell that is not a metric value (MMSA's
    ``(mean, std)`` / the tidy table's numbers).  A complete row without a final newline (a hand
    edit) is kept: nothing else appends to these files, and MMSA rewrites them whole."""
    probe = head if head else tail
    if not probe.startswith(MODEL_COLUMN.encode() + b","):
        return False
    if not head:
        return True  # a cut header
    try:
        header = next(csv.reader([head.decode("utf-8").rstrip("\r")]), [])
        cells = next(csv.reader([tail.decode("utf-8").rstrip("\r")], strict=True), [])
    except (UnicodeDecodeError, csv.Error):
        return True
    if len(cells) != len(header):
        return True
    values = cells[2:] if header[1:2] == [SEEDS_COLUMN] else cells[1:]
    return not all(_is_metric_cell(v) for v in values)


_PAIR = re.compile(r"^\(\s*([-+0-9.eE]+|nan),\s*([-+0-9.eE]+|nan)\)$")


def _is_metric_cell(text: str) -> bool:
    """A whole metric cell: a number (tidy table) or MMSA's ``(mean, std)`` pair."""
    match = _PAIR.match(text.strip())
    try:
        for value in (match.groups() if match else (text,)):
            float(value)
    except ValueError:
        return False
    return True


def _repair(path: Path) -> None:
    from khar_mmsa.io.appends import repair_torn_last_line
    if path.exists():
        repair_torn_last_line(path, _ours, "results row")


def check_results_files(paths: Sequence[Path], metrics_wanted: Optional[Sequence[str]] = None) -> None:
    """Before training: each results file (MMSA's table and the tidy one) and its ``.lock`` is a
    regular file or absent (never a link), writable, with a header of ours
    (:func:`header_metrics`: no BOM, no other layout) and parses as CSV; when both exist they name
    the same metrics, and when ``metrics_wanted`` (the run's metrics, in order:
    :func:`khar_mmsa.runs.run_metrics.result_columns`) is given, exactly those in that
    order -- the row the run will append.  A last line cut by a killed append is removed first
    (:func:`khar_mmsa.io.appends.repair_torn_last_line`, one warning)."""
    import pandas as pd

    from khar_mmsa.io.locks import check_lock_path
    from khar_mmsa.io.files import check_writable_file
    metrics: Dict[Path, List[str]] = {}
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
        with _THREAD_LOCK, _results_lock(path):
            _repair(path)
            found = header_metrics(path)
            if found is None:
                continue
            metrics[path] = found
            if metrics_wanted is not None and found != list(metrics_wanted):
                same = "the same metrics in another order" if sorted(found) == sorted(metrics_wanted) else \
                    "other metrics"
                raise ResultsFileError(f"{path}: its header names the metrics {found} but this run's row has "
                                       f"{list(metrics_wanted)} ({same}), so the row could not be appended. Pass "
                                       f"another res_save_dir or move the file; nothing was trained.")
            try:
                pd.read_csv(path)
            except pd.errors.EmptyDataError:
                continue
            except Exception as exc:
                raise ResultsFileError(f"{path}: the results file cannot be parsed as CSV "
                                       f"({type(exc).__name__}: {' '.join(str(exc).split())}); fix or move it; "
                                       f"nothing was trained.") from exc
    if len(metrics) == 2 and len(set(map(tuple, metrics.values()))) == 2:
        (a, ma), (b, mb) = metrics.items()
        raise ResultsFileError(f"{a} has the metrics {ma} but {b} has {mb}; a run writes the same row to both, "
                               f"so one of them would refuse it. Pass another res_save_dir; nothing was trained.")


_THREAD_LOCK = threading.Lock()


def _row_bytes(path: Path, row: Mapping[str, Any]) -> bytes:
    """The CSV line(s) appending ``row`` to ``path`` writes: the header too for a new file.  A file
    whose header has other columns refuses the row (:class:`ResultsFileError`).  Call under the lock."""
    _repair(path)
    metrics = header_metrics(path)
    columns = list(row)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if metrics is None:
        writer.writerow(columns)
    elif [MODEL_COLUMN] + ([SEEDS_COLUMN] if is_tidy(path) else []) + \
            [c for m in metrics for c in ([m, m + STD_SUFFIX] if is_tidy(path) else [m])] != columns:
        header = next(csv.reader([_first_line(path).decode("utf-8").rstrip("\r\n")]))
        raise ResultsFileError(
            f"{path}: its columns {header} differ from this run's {columns}; the row was not "
            f"written to it nor to the other results table (their rows are unchanged). Pass another res_save_dir.")
    writer.writerow([row[c] for c in columns])
    return text.getvalue().encode("utf-8")


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to the CSV at ``path`` as one line, under the file lock
    (see :func:`append_rows`)."""
    append_rows([(path, row)])


def append_rows(rows: Sequence[Tuple[Path, Mapping[str, Any]]], started: Optional[Mapping[str, int]] = None,
                on_start: Optional[Callable[[Dict[str, int]], None]] = None) -> None:
    """Append each ``(path, row)`` as one line, all or none, under every file's lock.

    A new file gets a header; an existing file's rows are left byte for byte; a row whose
    columns differ from its file's header is refused (:class:`ResultsFileError`) before any file
    is written.  Each line is written whole or not at all
    (:func:`khar_mmsa.io.appends.append_whole`: one checked write, fsync, truncated back on a
    failure such as a full disk), and when a later file fails, the earlier ones are cut back:
    a run's row is in both tables or in neither.

    A kill (SIGKILL: nothing can be cut back) between two appends is made whole by the identical
    rerun through a journal the caller keeps: ``on_start({path: length})`` is called, under the
    locks, before the first append; a rerun passes what it recorded as ``started``, and the row is
    then appended only to the files it has not reached yet (:func:`_already_appended`)."""
    from khar_mmsa.io.appends import append_whole, truncate_back
    for path, _ in rows:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, contextlib.ExitStack() as locks:
        for path, _ in rows:
            locks.enter_context(_results_lock(path))
        data = [(path, _row_bytes(path, row)) for path, row in rows]
        if started:  # an earlier attempt at this row was killed part-way: only what it did not append
            has = [p for p, line in data if str(p) in started and _already_appended(p, line, started[str(p)])]
            if has:
                logger.warning(f"{', '.join(map(str, has))} already got this row from a run killed while appending "
                               f"it; the row is appended only to the table(s) without it, so they agree again.")
            data = [(p, line) for p, line in data if p not in has]
        elif on_start is not None:
            on_start({str(p): p.stat().st_size if p.exists() else 0 for p, _ in data})
        done: List[Tuple[Path, int]] = []
        try:
            for path, line in data:
                done.append((path, append_whole(path, line, own_line=True)))
        except BaseException:
            for path, length in done:
                truncate_back(path, length)
            raise


def _already_appended(path: Path, line: bytes, size_before: int) -> bool:
    """Whether an earlier, killed attempt appended ``line``'s row to ``path``: the file grew past
    ``size_before`` (its length when that attempt started appending) and ends with the row."""
    text = _read(path) or b""
    return len(text) > size_before and text.endswith(line.splitlines(keepends=True)[-1])


def write_run_row(res_save_dir: os.PathLike, dataset_name: str, row: Mapping[str, Any],
                  started: Optional[Mapping[str, int]] = None,
                  on_start: Optional[Callable[[Dict[str, int]], None]] = None) -> Path:
    """The run's row into MMSA's table and the numeric table (both or neither; ``started`` /
    ``on_start``: the journal of :func:`append_rows`); returns MMSA's table's path."""
    mmsa_csv = results_csv_path(res_save_dir, dataset_name)
    append_rows([(mmsa_csv, mmsa_row(row)), (tidy_csv_path(res_save_dir, dataset_name), row)], started, on_start)
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
