"""The tune loop: candidates trained and scored on validation, the selected one tested once.

See :mod:`khar_mmsa.tuning` for what it promises; this module holds the loop
(:func:`tune_by_validation`) and the selection (:func:`select_and_test`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from khar_mmsa.runs.results_files import is_number
from khar_mmsa.runs.run_metrics import check_key_eval
from khar_mmsa.tuning.candidate import (base_tune_args, candidate_args, candidate_features,
                                                  score_on_test, train_candidate)
from khar_mmsa.tuning.config_file import write_mmsa_config
from khar_mmsa.tuning.grid import candidate_key, grid_axes, grid_size, hyperparameters, pick_candidates
from khar_mmsa.tuning.table import (append_row, atomic_copy, best_marker, best_valid, done_candidates,
                                              is_candidate_failure, read_tune_csv, tune_csv_path, write_tune_csv)
from khar_mmsa.tuning.values import cell
from khar_mmsa.io.files import atomic_write_text
from khar_mmsa.io.state_files import WRITTEN_BY
from khar_mmsa.mmsa_conventions import MMSA_DEFAULT_SEEDS, default_folder
from khar_mmsa.training.checkpoints import SeedCheckpoint
from khar_mmsa.training.loop import Monitor
from khar_mmsa.training.seeding import seed_everything

logger = logging.getLogger(f"MMSA.{__name__}")


def tune_by_validation(model_name: str, dataset_name: str, config_file: Any = None,
                       config: Optional[dict] = None, seeds: Sequence[int] = (), tune_times: int = 50,
                       custom_feature: Optional[str] = None, feature_T: Optional[str] = None,
                       feature_A: Optional[str] = None, feature_V: Optional[str] = None,
                       gpu_ids: Optional[Sequence[int]] = None, num_workers: int = 4, verbose_level: int = 1,
                       model_save_dir: Any = None, res_save_dir: Any = None,
                       log_dir: Any = None) -> Dict[str, Any]:
    """``MMSA_run(..., is_tune=True)`` selecting on validation (see the module docstring)."""
    model_name, dataset_name = model_name.lower(), dataset_name.lower()
    model_save_dir = Path(model_save_dir or default_folder("model_save_dir"))
    res_dir = Path(res_save_dir or default_folder("res_save_dir")) / "tune"
    res_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) or list(MMSA_DEFAULT_SEEDS)
    logger.info(f"Tuning {model_name} on {dataset_name} with seed {seeds[0]}: candidates are selected by the "
                f"VALIDATION KeyEval; the test split is scored only for the selected config")
    base = base_tune_args(model_name, dataset_name, config_file, gpu_ids,
                          model_save_dir / f"{model_name}-{dataset_name}-tune-candidate.pth",
                          custom_feature, feature_T, feature_A, feature_V)
    # as a normal run: the console level and the log folder (curves beside the log) reach the trainer
    base["verbose_level"], base["log_dir"] = verbose_level, None if log_dir is None else str(log_dir)
    check_key_eval({**base, **(config or {})}, dataset_name)  # before the table is read or anything trains
    key_eval = str((config or {}).get("KeyEval", base["KeyEval"]))  # what the trainers early-stop on
    axes = grid_axes(base)
    csv_file = tune_csv_path(res_dir, dataset_name, model_name)
    table = read_tune_csv(csv_file, hyperparameters(base))  # a candidate there sets hyperparameters only
    done = done_candidates(table)
    best_ckpt = model_save_dir / f"{model_name}-{dataset_name}-tune-best.pth"
    best = best_valid(table, key_eval)
    if best is not None and not best_ckpt.is_file():
        best = None  # the earlier best's checkpoint is gone: the first new candidate replaces it
    points = list(pick_candidates(axes, done, tune_times))
    logger.info(f"{len(points)} new candidate(s) of {grid_size(axes)} in the grid ({len(done)} already in {csv_file})")
    # The data is read and checked once, before the first candidate: a missing or bad feature file
    # is one error now, not a failure of every candidate.
    features = candidate_features(candidate_args(base, points[0], config)) if points else None
    monitor = Monitor.for_key(key_eval)  # the epochs' rule: a tie within 1e-6 keeps the earlier candidate

    for i, point in enumerate(points):
        args = candidate_args(base, point, config)
        args["cur_seed"] = i + 1
        logger.info(f"{'-' * 30} Tuning [{i + 1}/{len(points)}] {'-' * 30}")
        logger.info(f"Candidate: {candidate_key(point)}")
        seed_everything(seeds[0])
        row = {item: cell(args[item]) for item in args["d_paras"]}
        row.update({"candidate": candidate_key(point), "seed": seeds[0]})
        try:
            cand = train_candidate(args, num_workers, features=features)
        except Exception as exc:  # noqa: BLE001 - sorted below: the candidate's own failure or not
            SeedCheckpoint(args["model_save_path"]).remove_stale("a tuning candidate's own files")
            if not is_candidate_failure(exc):  # the data, the disk, memory: not this candidate's fault
                logger.error(f"Candidate [{i + 1}/{len(points)}] stopped by {type(exc).__name__}, not a "
                             f"failure of its settings: the search stops and the candidate stays untried "
                             f"({len(table) if table is not None else 0} rows in {csv_file}).")
                raise
            logger.warning(f"Candidate [{i + 1}/{len(points)}] failed, recorded and skipped: "
                           f"{type(exc).__name__}: {exc}")
            row["error"] = f"{type(exc).__name__}: {exc}"
        else:
            value = float(cand.valid[key_eval])
            logger.info(f"Candidate [{i + 1}/{len(points)}] validation {key_eval} = {value:.4f}")
            if monitor.improves(value, best):
                best = value
                atomic_copy(Path(args["model_save_path"]), best_ckpt)
                atomic_write_text(best_ckpt.with_suffix(".json"), json.dumps({
                    "written_by": f"{WRITTEN_BY} tune marker", "candidate": candidate_key(point)}))
            row.update({f"Valid_{k}": v for k, v in cand.valid.items() if is_number(v)})
            del cand
        SeedCheckpoint(args["model_save_path"]).remove_stale("a tuning candidate's own files")
        table = append_row(table, row)
        write_tune_csv(table, csv_file, key_eval)
    if table is None or f"Valid_{key_eval}" not in table.columns or table[f"Valid_{key_eval}"].isna().all():
        raise RuntimeError(f"tuning {model_name} on {dataset_name}: no candidate was trained and validated "
                           f"(grid of {grid_size(axes)}, tune_times={tune_times}; errors in {csv_file})")
    return select_and_test(table, csv_file, key_eval, base, config, best_ckpt, seeds[0], num_workers,
                            model_name, dataset_name)


def select_and_test(table: Any, csv_file: Path, key_eval: str, base: Mapping[str, Any],
                    config: Optional[Mapping[str, Any]], best_ckpt: Path, seed: int, num_workers: int,
                    model_name: str, dataset_name: str) -> Dict[str, Any]:
    """Select the row with the best validation ``key_eval``, write its config file and score its
    checkpoint on the test split (the only test score of the search)."""
    scored = table[table[f"Valid_{key_eval}"].notna()]
    values = scored[f"Valid_{key_eval}"].astype(float)
    pos = values.index[Monitor.for_key(key_eval).best_index(values)]  # the rule that kept best_ckpt
    selected = table.loc[pos]
    point = json.loads(selected["candidate"])  # hyperparameters only: read_tune_csv checked every row
    config_path = write_mmsa_config(csv_file.with_name(f"{dataset_name}-{model_name}-best.json"),
                                    candidate_args(base, point, config))  # before the loader edits args
    args = candidate_args(base, point, config)
    args["cur_seed"] = 1
    valid = {k[len("Valid_"):]: float(selected[k]) for k in table.columns
             if k.startswith("Valid_") and selected[k] == selected[k]}
    logger.info(f"Selected by validation {key_eval} = {valid[key_eval]:.4f} (best of {len(scored)} candidates): "
                f"{selected['candidate']}")
    test: Dict[str, Any] = {}
    saved = best_marker(best_ckpt.with_suffix(".json"))
    if best_ckpt.is_file() and saved.get("candidate") == selected["candidate"]:
        seed_everything(seed)
        test = score_on_test(args, best_ckpt, num_workers)
        logger.info(f"Test results of the selected config only (the other {len(table) - 1} candidates were never "
                    f"scored on test): " + ", ".join(f"{k}: {v:.4f}" for k, v in test.items() if is_number(v)))
    else:
        logger.warning(f"The checkpoint of the selected candidate ({best_ckpt}) is missing; its test score is not "
                       f"reported. Train it with MMSA_run(config_file=<the best-config JSON>) to score it.")
    table["selected_by"] = f"valid {key_eval}"
    table["selected"] = table.index == pos
    for key, value in test.items():
        if is_number(value):
            if f"Test_{key}" not in table.columns:
                table[f"Test_{key}"] = float("nan")
            table[f"Test_{key}"] = table[f"Test_{key}"].astype(float)
            table.loc[pos, f"Test_{key}"] = float(value)
    write_tune_csv(table, csv_file, key_eval)
    logger.info(f"Tune results saved to {csv_file}; selected config written to {config_path} "
                f"(MMSA_run('{model_name}', '{dataset_name}', config_file=...)).")
    return {"selected": point, "key_eval": key_eval, "valid": valid, "test": test, "csv": csv_file,
            "config_file": config_path}


