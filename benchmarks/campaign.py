"""Does KHaR earn its complexity?  The decision campaign: one protocol, every run recorded, sessions resumed.

    python -m benchmarks.campaign run &                 # two single-thread workers on two cores
    python -m benchmarks.campaign run &
    python -m benchmarks.campaign status                # how far each table is, and any damaged record
    python -m benchmarks.campaign render                # RESULTS.md sections from the records alone
    python -m benchmarks.campaign run --smoke --work DIR --records DIR   # seconds, tiny BERT (tests)

The protocol, the tables' rows and the decision rules are :mod:`benchmarks.campaign_plan`; the
tables are rendered by :mod:`benchmarks.campaign_report`, each comparison read by
:mod:`benchmarks.campaign_stats`.

Runs that span sessions
-----------------------
Each finished run writes one JSON record, ``<records>/<run_id>.json`` (default
``benchmarks/records/campaign``, committed): its identity (model, seed, variant, config hash,
runner, data by SHA-256, the library's code version), its settings, its per-epoch curve, its
selected-epoch validation metrics and test metrics, wall time and host.  ``run`` skips every run
whose record exists, so the next session resumes where this one stopped; a record that is not
well formed (:func:`benchmarks.campaign_plan.record_problem`) counts as not run: ``run`` makes it
again and ``status`` lists it.  ``render`` builds the tables from the records alone.  Runs execute
in a checkout of the campaign's library (:data:`CAMPAIGN_CODE_VERSION`, see benchmarks/README.md):
a record is reused only by the same code.

These ``campaign*.py`` files travel into that checkout (benchmarks/README.md): keep them runnable
against the campaign's library and its ``benchmarks/common.py`` / ``walk.py`` / ``compare.py``.

Workers claim runs through exclusive files in ``<work>/claims``, each naming its worker's host,
process id and process start time, so any number of ``run`` processes share the queue.  A claim
is held only while that very process lives and is a campaign worker; any other claim (its process
died, its id now names another process, or a hand-written line) is stale: taken over, and logged.
Tables open in order: the ``lr`` table's decision gates ``walk``, ``choices`` and ``table3``;
``choices``' decision gates ``final``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import psutil

from . import common
from .campaign_plan import (CAMPAIGN_CODE_VERSION, RECORDS_DIR, TABLES, Campaign, table_slots)

logger = logging.getLogger("MMSA")


# ---- runners (the record is written where the run executes) ----------------------------------------
def _with_local_encoder(spec):
    """The spec with the encoder alias ('all-MiniLM-L6-v2') as its folder, for code that needs a path;
    the record keeps the spec as it was (its identity has no path)."""
    from khar_mmsa.model.text_encoders import local_folder
    config = dict(spec.config)
    for key in ("encoder", "pretrained"):
        if key in config and local_folder(str(config[key])) is not None:
            config[key] = str(local_folder(str(config[key])))
    return dataclasses.replace(spec, config=config)


def run_khar(spec, feature_path: str) -> Dict[str, Any]:
    from .walk import khar_run
    return khar_run(spec, feature_path)


def run_floor(spec, feature_path: str) -> Dict[str, Any]:
    from .compare import text_floor_run
    return text_floor_run(_with_local_encoder(spec), feature_path)


def run_mmsa(spec, feature_path: str) -> Dict[str, Any]:
    from khar_mmsa.experiments.sweep import mmsa_run_one
    return mmsa_run_one(_with_local_encoder(spec), feature_path)


def write_record(records: Path, spec, outcome: Mapping[str, Any]) -> Path:
    from khar_mmsa.io.identity import code_version
    from khar_mmsa.config import PATH_FIELDS
    rec = {"run_id": spec.run_id, "identity": spec.identity(), "title": spec.title, "variant": spec.variant,
           "seed": spec.seed, "model": spec.model,
           "config": {k: v for k, v in spec.config.items() if k not in PATH_FIELDS},
           "data": Path(spec.feature_path).name, "code_version": code_version(), "git": _git_commit(),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _machine(), "outcome": dict(outcome)}
    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{spec.run_id}.json"
    # written whole or not at all (a temporary file renamed), without the library's file helpers:
    # this script also runs against the campaign's pinned library, whose module names differ
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(rec, indent=1, sort_keys=True, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _machine() -> str:
    """The machine as the records show it: CPU, cores, torch threads, GPU, versions."""
    return common.machine_line(common.machine_description())


def _git_commit() -> Optional[str]:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=common.REPO_DIR, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ---- the queue ------------------------------------------------------------------------------------
def _claim(folder: Path, run_id: str) -> bool:
    """Take ``run_id`` for this process (an exclusive file); a stale claim (:func:`claim_holder`) is
    taken over, and the log says whose it was."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / run_id
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            try:
                text = path.read_text()
            except OSError:
                text = ""
            holder, why = claim_holder(text)
            if holder:
                return False
            logger.warning(f"campaign: claim {path} is stale ({why}): taken over")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time():.3f}\n")
        return True
    return False


def claim_holder(text: str) -> Tuple[Optional[str], str]:
    """(the live worker holding a claim whose file says ``text``, '') or (None, why it is stale).  A claim
    is ``<host> <pid> <process start time>`` as :func:`_claim` writes it; it is held while that process
    (same id, same start time) lives and is a campaign worker (this process, or one whose command line
    runs ``benchmarks.campaign run``).  A claim from another host is held: its process cannot be checked."""
    parts = text.split()
    try:
        host, pid, started = parts[0], int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return None, f"not '<host> <pid> <start time>': {text.strip()[:80]!r}"
    if host != socket.gethostname():
        return f"{host} process {pid}", ""
    try:
        proc = psutil.Process(pid)
        cmdline, proc_started = proc.cmdline(), proc.create_time()
    except (psutil.Error, OSError):
        return None, f"process {pid} is gone"
    if abs(proc_started - started) > 0.01:
        return None, f"process {pid} is another process than the claim's (started at {proc_started:.3f})"
    if pid != os.getpid() and not ("benchmarks.campaign" in cmdline and "run" in cmdline):
        return None, f"process {pid} ({' '.join(cmdline)[:80]!r}) is not a campaign worker"
    return f"process {pid}", ""


def pending(camp: Campaign, tables: Sequence[str]) -> List[Any]:
    """The specs of every run of ``tables`` whose gate is open and that has no record yet."""
    records = camp.load_records()
    find = camp.finder(records, exact=True)
    out, seen = [], set()
    for table in tables:
        for slot in table_slots(camp, table, find) or []:
            spec = camp.spec(slot)
            if spec.run_id not in records and spec.run_id not in seen:
                seen.add(spec.run_id)
                out.append(spec)
    return out


def run_queue(camp: Campaign, tables: Sequence[str], max_runs: Optional[int] = None) -> int:
    """Run what is pending, one run at a time, until nothing runnable is left; returns runs made."""
    from khar_mmsa.experiments.sweep import execute
    from khar_mmsa.io.identity import code_version
    if not camp.smoke and code_version() != CAMPAIGN_CODE_VERSION:
        raise SystemExit(f"this library is {code_version()}, the campaign's is {CAMPAIGN_CODE_VERSION}: run the "
                         f"campaign from a checkout of its commit (benchmarks/README.md, 'The decision campaign')")
    failed: set = set()
    made = 0
    while max_runs is None or made < max_runs:
        todo = [s for s in pending(camp, tables) if s.run_id not in failed]
        spec = next((s for s in todo if _claim(camp.work / "claims", s.run_id)), None)
        if spec is None:
            _say_why_idle(camp, tables, todo)
            break
        logger.info(f"campaign: {spec.title} ({len(todo)} runnable left, this one included)")
        try:
            outcome = execute(spec)
        except Exception:  # noqa: BLE001 - logged; the queue goes on, the run stays pending
            failed.add(spec.run_id)
            logger.error(f"campaign: {spec.title} failed:\n{traceback.format_exc()}")
        else:
            path = write_record(camp.records, spec, outcome)
            made += 1
            logger.info(f"campaign: {spec.title} done in {outcome['wall_s']:.0f} s -> {path.name}")
        finally:
            (camp.work / "claims" / spec.run_id).unlink(missing_ok=True)
    return made


def _say_why_idle(camp: Campaign, tables: Sequence[str], todo: Sequence[Any]) -> None:
    """Log why this worker found nothing to run: every runnable run held by a live worker, or none pending."""
    if not todo:
        logger.info(f"campaign: nothing pending in {', '.join(tables)} (every open table's runs are recorded)")
        return
    holders = set()
    for spec in todo:
        try:
            holders.add(claim_holder((camp.work / "claims" / spec.run_id).read_text())[0] or "?")
        except OSError:
            holders.add("?")
    logger.info(f"campaign: {len(todo)} pending run(s), each claimed by a live worker ({', '.join(sorted(holders))}): "
                f"nothing left for this one")


# ---- main -----------------------------------------------------------------------------------------
def make_campaign(args: argparse.Namespace) -> Campaign:
    work = Path(args.work or (common.DEFAULT_WORK_DIR / ("campaign-smoke" if args.smoke else "campaign")))
    records = Path(args.records) if args.records else (work / "records" if args.smoke else RECORDS_DIR)
    encoder = None
    if args.smoke:
        from khar_mmsa.model.text_encoders import make_tiny_bert
        encoder = work / "tiny-bert"
        if not (encoder / "config.json").is_file():
            make_tiny_bert(encoder, hidden_size=32)
    return Campaign(work=work, records=records, smoke=args.smoke, encoder=encoder, labels=Path(args.labels))


def main(argv: Optional[Sequence[str]] = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "status", "render"))
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--work", default=None, help="work folder: data, adapters, run folders, claims "
                                                     "(default /tmp/khar-bench/campaign)")
    parser.add_argument("--records", default=None, help="finished-run records (default benchmarks/records/campaign)")
    parser.add_argument("--labels", default=str(common.MOSI_LABEL_CSV), help="CMU-MOSI label.csv")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    parser.add_argument("--smoke", action="store_true", help="tiny BERT, a few clips, 2 epochs, 2 seeds (tests)")
    parser.add_argument("--results-md", default=None, help="render: RESULTS.md to update (default benchmarks/)")
    parser.add_argument("--tables-dir", default=None, help="render: folder of the table files")
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    camp = make_campaign(args)
    if args.command == "run":
        import torch
        torch.set_num_threads(1)
        return run_queue(camp, args.tables, args.max_runs)
    from .campaign_report import render, status
    if args.command == "status":
        return status(camp, args.tables)
    return render(camp, args)


if __name__ == "__main__":
    main()
