"""MMSA's tune mode selects on the validation split; the test split is scored once, for the chosen config.

MMSA 2.2.1's ``MMSA_run(..., is_tune=True)`` trains candidates drawn from ``config_tune.json`` and
scores **each on the test split** (``MMSA/run.py``, tune branch: the validation line is commented
out), so picking the best row of its CSV selects hyperparameters on test.  The runner
(:mod:`khar_mmsa.integration.runner`) sends tuning calls to :func:`tune_by_validation` instead, for
every model it runs ('khar' through ``MMSA_run``; MMSA's own through ``khar_mmsa.run`` and the
command line -- MMSA's own ``MMSA_run(..., is_tune=True)`` for them is left as MMSA made it):

* each candidate trains exactly as in ``MMSA._run`` (MMSA's loader, ``AMIO``, ``ATIO`` trainer,
  early stopping on the validation KeyEval) and its best checkpoint is scored on the
  **validation** split only (:func:`train_candidate`);
* the candidate with the best validation KeyEval (lower for ``Loss``/``MAE``, higher otherwise)
  is selected among every row of the tune CSV, and only it is scored on the test split;
* the tune CSV (``<res_save_dir>/tune/<dataset>-<model>-by-valid.csv``, beside MMSA's) has one row per
  candidate: the ``d_paras`` values, ``candidate`` (their JSON), ``Valid_<metric>`` columns,
  ``selected_by`` (``valid <KeyEval>``), ``selected`` (True on one row) and ``Test_<metric>``
  columns filled on the selected row only; the log says the same (a candidate whose training
  raises -- a non-finite loss, say -- gets an ``error`` cell and the search goes on);
* the selected config is written as an MMSA-schema JSON (``<dataset>-<model>-best.json`` beside
  the CSV) that ``MMSA_run(model, dataset, config_file=...)`` reads back;
* ``MMSA_run`` returns ``{"selected", "key_eval", "valid", "test", "csv", "config_file"}``.

Candidates: when ``tune_times`` covers every combination of the ``d_paras`` grid not yet in the
CSV, all of them run, in grid order (MMSA's docstring promises a grid search); otherwise
``tune_times`` distinct untried combinations are drawn at random (MMSA's ``random.choice`` per
parameter, without MMSA's repeats).  Rows already in the CSV are skipped, so a second call extends
the search.  The best checkpoint so far is kept as ``<model>-<dataset>-tune-best.pth`` (with a
``.json`` naming its candidate) in ``model_save_dir``; each candidate trains into
``<model>-<dataset>-tune-candidate.pth``, removed after it is scored.

Learning rates of ``'khar'``: ``learning_rate`` (everything but the text encoder) and
``learning_rate_bert`` are tuned separately when both are in ``d_paras`` (our
``config_tune.json``); when ``learning_rate_bert`` is left out of ``d_paras`` it is tied to the
drawn ``learning_rate`` (Table 5 uses one rate for both).

:func:`train_candidate`, :func:`base_tune_args`, :func:`grid_axes`, :func:`candidate_args` and
:func:`write_mmsa_config` are also what the Ray Tune search (:mod:`khar_mmsa.experiments.ray_tune`) runs, so a
Ray trial trains and validates exactly like a candidate here.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from khar_mmsa.config import RUN_PLACE_KEYS
from khar_mmsa.io.safe_io import atomic_open, atomic_write_text, safe_torch_load
from khar_mmsa.integration.registration import mmsa_module
from khar_mmsa.integration.results_files import is_number
from khar_mmsa.io.state_files import WRITTEN_BY
from khar_mmsa.training.checkpoints import SeedCheckpoint

logger = logging.getLogger("MMSA")

#: KeyEval metrics where lower is better (every other KeyEval: higher is better).
LOWER_IS_BETTER = ("Loss", "MAE")
#: ``args`` keys that describe the run, not the config (left out of the best-config JSON).
RUNTIME_KEYS = RUN_PLACE_KEYS | {"model_name", "dataset_name", "d_paras"}
EpochHook = Callable[[int, Mapping[str, Any]], None]


# ============================================================================================
# One candidate: MMSA's training, scored on validation
# ============================================================================================
def base_tune_args(model_name: str, dataset_name: str, config_file: Any = None, gpu_ids: Sequence[int] = (0,),
                   model_save_path: Any = None, custom_feature: Optional[str] = None,
                   feature_T: Optional[str] = None, feature_A: Optional[str] = None,
                   feature_V: Optional[str] = None) -> Any:
    """MMSA's tune-branch ``initial_args``: ``get_config_tune`` without the random draw (the
    ``d_paras`` entries stay lists), plus the device and feature paths ``MMSA_run`` adds."""
    from khar_mmsa.integration.configs import config_for
    if config_file is not None and str(config_file) != "" and not Path(config_file).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(config_file))
    args = config_for(model_name, dataset_name, "tune", config_file or None, random_choice=False)
    args["model_save_path"] = Path(model_save_path or Path.home() / "MMSA" / "saved_models"
                                   / f"{args['model_name']}-{args['dataset_name']}-tune-candidate.pth")
    use_device(args, gpu_ids)
    args["train_mode"] = "regression"  # as MMSA_run
    args["custom_feature"] = custom_feature
    args["feature_T"], args["feature_A"], args["feature_V"] = feature_T, feature_A, feature_V
    return args


def grid_axes(args: Mapping[str, Any]) -> List[Tuple[str, Optional[str], List[Any]]]:
    """The tuning grid of ``args['d_paras']`` as ``(parameter, nested key or None, choices)``.

    A list is a parameter's choices; a dict holds one list of choices per nested key (MMSA:
    "nested params, 2 levels max").  Anything else is fixed.
    """
    axes: List[Tuple[str, Optional[str], List[Any]]] = []
    for item in args.get("d_paras", []):
        value = args[item]
        if isinstance(value, list):
            axes.append((item, None, list(value)))
        elif isinstance(value, dict):
            axes.extend((item, k, list(v) if isinstance(v, list) else [v]) for k, v in value.items())
    return axes


def grid_size(axes: Sequence[Tuple[str, Optional[str], List[Any]]]) -> int:
    return math.prod(len(choices) for _, _, choices in axes)


def grid_point(axes: Sequence[Tuple[str, Optional[str], List[Any]]], index: int) -> Dict[str, Any]:
    """The ``index``-th combination of the grid (last axis fastest), as ``{param: value}``."""
    point: Dict[str, Any] = {}
    for item, key, choices in reversed(axes):
        index, i = divmod(index, len(choices))
        if key is None:
            point[item] = choices[i]
        else:
            point.setdefault(item, {})[key] = choices[i]
    return {item: point[item] for item, _, _ in axes if item in point}


def candidate_key(point: Mapping[str, Any]) -> str:
    """A candidate's identity in the tune CSV: its ``d_paras`` values as sorted JSON."""
    return json.dumps(point, sort_keys=True, default=_json_default)


def candidate_args(base: Mapping[str, Any], point: Mapping[str, Any],
                   config: Optional[Mapping[str, Any]] = None) -> Any:
    """``base`` with one grid point and the caller's ``config`` overrides (MMSA's order), and
    khar's learning-rate tie: ``learning_rate_bert = learning_rate`` unless it is tuned too."""
    from easydict import EasyDict
    args = EasyDict(dict(base))
    for item, value in point.items():
        args[item] = dict(args[item], **value) if isinstance(value, dict) and isinstance(args.get(item), dict) else value
    if config:
        if config.get("model_name"):
            assert config["model_name"] == args["model_name"], (config["model_name"], args["model_name"])
        args.update(config)
    tuned = set(args.get("d_paras", []))
    if args["model_name"] == "khar" and "learning_rate" in tuned and "learning_rate_bert" not in tuned \
            and not (config and "learning_rate_bert" in config):
        args["learning_rate_bert"] = args["learning_rate"]
    return args


def use_device(args: Any, gpu_ids: Sequence[int] = (0,)) -> Any:
    """Set ``args['device']`` as the runner does, for the process this runs in (a Ray trial sees
    only the GPUs Ray gave it, as device 0; none: the CPU)."""
    import torch

    from khar_mmsa.integration.runner import choose_device
    args["device"] = choose_device(gpu_ids, bool(torch.cuda.is_available()))
    return args["device"]


def seed_everything(seed: int) -> None:
    """MMSA's ``setup_seed`` (torch, numpy, random, cuDNN flags), as each ``MMSA_run`` seed gets."""
    mmsa_module("MMSA.utils").setup_seed(int(seed))


def with_epoch_hook(args: Any, hook: Optional[EpochHook]) -> Any:
    """``args`` for a trainer of ours (:data:`~khar_mmsa.integration.registration.EXTRA_TRAINERS`, e.g.
    ``KHaRTrainer``): a copy with ``hook`` as an :class:`~khar_mmsa.training.callbacks.EpochHook`
    added to ``args['callbacks']``, which the trainer runs after each epoch's validation.  MMSA's
    own trainers get ``args`` unchanged (see :func:`attach_epoch_hook`)."""
    from khar_mmsa.integration.registration import EXTRA_TRAINERS
    if hook is None or args["model_name"] not in EXTRA_TRAINERS:
        return args
    from khar_mmsa.training.callbacks import EpochHook
    args = type(args)(dict(args))
    args["callbacks"] = list(args.get("callbacks") or []) + [EpochHook(hook)]
    return args


def attach_epoch_hook(trainer: Any, hook: Optional[EpochHook]) -> None:
    """Call ``hook(epoch, val_results)`` after each training epoch's validation of MMSA's own
    trainers: they validate once per epoch with ``do_test(..., mode="VAL")``, so their ``do_test``
    is wrapped on the instance and counts those calls.  A trainer that runs callbacks (it has a
    ``callbacks`` list) got the hook from :func:`with_epoch_hook` and is left alone.
    """
    if hook is None or hasattr(trainer, "callbacks"):
        return
    original = trainer.do_test
    epochs = [0]

    def do_test(model: Any, dataloader: Any, mode: str = "VAL", *args: Any, **kwargs: Any) -> Any:
        results = original(model, dataloader, mode, *args, **kwargs)
        if mode == "VAL":
            epochs[0] += 1
            hook(epochs[0], results)
        return results
    trainer.do_test = do_test


@dataclass
class Candidate:
    """A trained candidate: its best checkpoint's validation results and what scored it."""

    valid: Dict[str, Any]
    model: Any
    trainer: Any
    dataloader: Mapping[str, Any]


def train_candidate(args: Any, num_workers: int = 0, on_epoch_end: Optional[EpochHook] = None) -> Candidate:
    """Train one config as ``MMSA._run`` does and score its best checkpoint on the validation split.

    Same loader, model, trainer and early stopping as ``MMSA_run``; the test split is not scored.
    """
    from khar_mmsa.integration.features import load_features, make_loaders
    checkpoint = Path(args["model_save_path"])
    SeedCheckpoint(checkpoint).remove_stale("only this candidate's training may produce it")
    dataloader = make_loaders(args, load_features(args), num_workers)
    model = mmsa_module("MMSA.models").AMIO(args).to(args["device"])
    trainer = mmsa_module("MMSA.trains").ATIO().getTrain(with_epoch_hook(args, on_epoch_end))
    attach_epoch_hook(trainer, on_epoch_end)
    trainer.do_train(model, dataloader, return_epoch_results=False)
    if not checkpoint.exists():
        from khar_mmsa.integration.checkpoints import MissingCheckpointError
        raise MissingCheckpointError(
            f"{args['model_name']} on {args['dataset_name']}: training finished without writing a checkpoint "
            f"to {checkpoint} (no epoch improved the validation {args.get('KeyEval')!r})")
    model.load_state_dict(safe_torch_load(checkpoint, map_location=args["device"]))
    model.to(args["device"])
    valid = _plain(trainer.do_test(model, dataloader["valid"], mode="VALID"))
    return Candidate(valid, model, trainer, dataloader)


def is_better(value: float, best: Optional[float], key_eval: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if key_eval in LOWER_IS_BETTER else value > best


# ============================================================================================
# The tune loop
# ============================================================================================
def tune_by_validation(model_name: str, dataset_name: str, config_file: Any = None,
                       config: Optional[dict] = None, seeds: Sequence[int] = (), tune_times: int = 50,
                       custom_feature: Optional[str] = None, feature_T: Optional[str] = None,
                       feature_A: Optional[str] = None, feature_V: Optional[str] = None,
                       gpu_ids: Sequence[int] = (0,), num_workers: int = 4, verbose_level: int = 1,
                       model_save_dir: Any = None, res_save_dir: Any = None,
                       log_dir: Any = None) -> Dict[str, Any]:
    """``MMSA_run(..., is_tune=True)`` selecting on validation (see the module docstring)."""
    model_name, dataset_name = model_name.lower(), dataset_name.lower()
    model_save_dir = Path(model_save_dir or Path.home() / "MMSA" / "saved_models")
    res_dir = Path(res_save_dir or Path.home() / "MMSA" / "results") / "tune"
    res_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) or [1111, 1112, 1113, 1114, 1115]
    logger.info(f"Tuning {model_name} on {dataset_name} with seed {seeds[0]}: candidates are selected by the "
                f"VALIDATION KeyEval; the test split is scored only for the selected config")
    base = base_tune_args(model_name, dataset_name, config_file, gpu_ids,
                          model_save_dir / f"{model_name}-{dataset_name}-tune-candidate.pth",
                          custom_feature, feature_T, feature_A, feature_V)
    # as a normal run: the console level and the log folder (curves beside the log) reach the trainer
    base["verbose_level"], base["log_dir"] = verbose_level, None if log_dir is None else str(log_dir)
    key_eval = str((config or {}).get("KeyEval", base["KeyEval"]))  # what the trainers early-stop on
    axes = grid_axes(base)
    csv_file = res_dir / f"{dataset_name}-{model_name}-by-valid.csv"
    table = _read_tune_csv(csv_file)
    done = set(table["candidate"]) if table is not None else set()
    best_ckpt = model_save_dir / f"{model_name}-{dataset_name}-tune-best.pth"
    best_valid = _best_valid(table, key_eval)
    if best_valid is not None and not best_ckpt.is_file():
        best_valid = None  # the earlier best's checkpoint is gone: the first new candidate replaces it
    points = list(_pick_candidates(axes, done, tune_times))
    logger.info(f"{len(points)} new candidate(s) of {grid_size(axes)} in the grid ({len(done)} already in {csv_file})")

    for i, point in enumerate(points):
        args = candidate_args(base, point, config)
        args["cur_seed"] = i + 1
        logger.info(f"{'-' * 30} Tuning [{i + 1}/{len(points)}] {'-' * 30}")
        logger.info(f"Candidate: {candidate_key(point)}")
        seed_everything(seeds[0])
        row = {item: _cell(args[item]) for item in args["d_paras"]}
        row.update({"candidate": candidate_key(point), "seed": seeds[0]})
        try:
            cand = train_candidate(args, num_workers)
        except Exception as exc:  # noqa: BLE001 - e.g. a non-finite loss at a large learning rate
            logger.warning(f"Candidate [{i + 1}/{len(points)}] failed, recorded and skipped: "
                           f"{type(exc).__name__}: {exc}")
            row["error"] = f"{type(exc).__name__}: {exc}"
        else:
            value = float(cand.valid[key_eval])
            logger.info(f"Candidate [{i + 1}/{len(points)}] validation {key_eval} = {value:.4f}")
            if is_better(value, best_valid, key_eval):
                best_valid = value
                _atomic_copy(Path(args["model_save_path"]), best_ckpt)
                atomic_write_text(best_ckpt.with_suffix(".json"), json.dumps({
                    "written_by": f"{WRITTEN_BY} tune marker", "candidate": candidate_key(point)}))
            row.update({f"Valid_{k}": v for k, v in cand.valid.items() if is_number(v)})
            del cand
        SeedCheckpoint(args["model_save_path"]).remove_stale("a tuning candidate's own files")
        table = _append_row(table, row)
        _write_tune_csv(table, csv_file, key_eval)
    if table is None or f"Valid_{key_eval}" not in table.columns or table[f"Valid_{key_eval}"].isna().all():
        raise RuntimeError(f"tuning {model_name} on {dataset_name}: no candidate was trained and validated "
                           f"(grid of {grid_size(axes)}, tune_times={tune_times}; errors in {csv_file})")
    return _select_and_test(table, csv_file, key_eval, base, config, best_ckpt, seeds[0], num_workers,
                            model_name, dataset_name)


def _select_and_test(table: Any, csv_file: Path, key_eval: str, base: Mapping[str, Any],
                     config: Optional[Mapping[str, Any]], best_ckpt: Path, seed: int, num_workers: int,
                     model_name: str, dataset_name: str) -> Dict[str, Any]:
    from khar_mmsa.integration.features import load_features, make_loaders
    scored = table[table[f"Valid_{key_eval}"].notna()]
    values = scored[f"Valid_{key_eval}"].astype(float)
    pos = values.idxmin() if key_eval in LOWER_IS_BETTER else values.idxmax()
    selected = table.loc[pos]
    point = json.loads(selected["candidate"])
    config_path = write_mmsa_config(csv_file.with_name(f"{dataset_name}-{model_name}-best.json"),
                                    candidate_args(base, point, config))  # before the loader edits args
    args = candidate_args(base, point, config)
    args["cur_seed"] = 1
    valid = {k[len("Valid_"):]: float(selected[k]) for k in table.columns
             if k.startswith("Valid_") and selected[k] == selected[k]}
    logger.info(f"Selected by validation {key_eval} = {valid[key_eval]:.4f} (best of {len(scored)} candidates): "
                f"{selected['candidate']}")
    test: Dict[str, Any] = {}
    saved = _best_marker(best_ckpt.with_suffix(".json"))
    if best_ckpt.is_file() and saved.get("candidate") == selected["candidate"]:
        seed_everything(seed)
        dataloader = make_loaders(args, load_features(args), num_workers)
        model = mmsa_module("MMSA.models").AMIO(args).to(args["device"])
        model.load_state_dict(safe_torch_load(best_ckpt, map_location=args["device"]))
        trainer = mmsa_module("MMSA.trains").ATIO().getTrain(args)
        test = _plain(trainer.do_test(model, dataloader["test"], mode="TEST"))
        logger.info(f"Test results of the selected config only (the other {len(table) - 1} candidates were never "
                    f"scored on test): " + ", ".join(f"{k}: {v:.4f}" for k, v in test.items() if is_number(v)))
        del model
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
    _write_tune_csv(table, csv_file, key_eval)
    logger.info(f"Tune results saved to {csv_file}; selected config written to {config_path} "
                f"(MMSA_run('{model_name}', '{dataset_name}', config_file=...)).")
    return {"selected": point, "key_eval": key_eval, "valid": valid, "test": test, "csv": csv_file,
            "config_file": config_path}


def _pick_candidates(axes: Sequence[Tuple[str, Optional[str], List[Any]]], done: set,
                     tune_times: int) -> Iterator[Dict[str, Any]]:
    total = grid_size(axes)
    if total - len(done) <= tune_times:  # every untried combination, in grid order
        for index in range(total):
            point = grid_point(axes, index)
            if candidate_key(point) not in done:
                yield point
        return
    rng = random.Random(time.time())  # like MMSA: a new call explores new combinations
    picked: set = set(done)
    n = 0
    while n < tune_times:
        point = grid_point(axes, rng.randrange(total))
        key = candidate_key(point)
        if key in picked:
            continue
        picked.add(key)
        n += 1
        yield point


# ============================================================================================
# The best config as an MMSA config file
# ============================================================================================
def write_mmsa_config(path: os.PathLike, args: Mapping[str, Any]) -> Path:
    """Write ``args`` (one candidate's full config) as a config file in MMSA's regression schema.

    ``MMSA_run(args.model_name, args.dataset_name, config_file=path)`` reads back the same config:
    the dataset block carries ``featurePath`` (``custom_feature`` when one was given, else the
    resolved ``featurePath``; made absolute when the file exists) and the model's ``datasetParams`` every other
    setting.
    """
    model, dataset = str(args["model_name"]), str(args["dataset_name"])
    params = {k: _json_value(v) for k, v in args.items() if k not in RUNTIME_KEYS and _jsonable(v)}
    params.pop("need_data_aligned", None)
    feature = Path(str(args.get("custom_feature") or args["featurePath"]))
    dataset_block = {"featurePath": str(feature.resolve() if feature.exists() else feature)}  # -c from any folder
    schema = {
        "datasetCommonParams": {"dataset_root_dir": "",
                                dataset: {"unaligned": dataset_block, "aligned": dataset_block}},
        model: {"commonParams": {"need_data_aligned": bool(args.get("need_data_aligned", False))},
                "datasetParams": {dataset: params}},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
    return path


# ============================================================================================
# Small helpers
# ============================================================================================
def _read_tune_csv(csv_file: Path) -> Any:
    from khar_mmsa.io.state_files import StateFileError, load_tune_table, set_aside
    if not csv_file.is_file() or csv_file.stat().st_size == 0:
        return None
    try:
        return load_tune_table(csv_file)
    except StateFileError as exc:  # damaged: kept aside, the search starts afresh
        set_aside(csv_file, exc)
        return None


def _best_marker(path: Path) -> Dict[str, Any]:
    """Which candidate the best checkpoint holds ({} when unknown; a damaged marker is set aside)."""
    from khar_mmsa.io.state_files import StateFileError, load_tune_marker, set_aside
    if not path.is_file():
        return {}
    try:
        return load_tune_marker(path)
    except StateFileError as exc:
        set_aside(path, exc)
        return {}


def _best_valid(table: Any, key_eval: str) -> Optional[float]:
    col = f"Valid_{key_eval}"
    if table is None or col not in table.columns or table[col].dropna().empty:
        return None
    values = table[col].dropna().astype(float)
    return float(values.min() if key_eval in LOWER_IS_BETTER else values.max())


def _append_row(table: Any, row: Mapping[str, Any]) -> Any:
    import pandas as pd
    new = pd.DataFrame([dict(row)])
    if table is None or table.empty:
        return new
    return pd.concat([table, new], ignore_index=True)


def _write_tune_csv(table: Any, csv_file: Path, key_eval: str) -> None:
    if "selected_by" not in table.columns:
        table["selected_by"] = f"valid {key_eval}"
    with atomic_open(csv_file, "w") as f:
        table.to_csv(f, index=False)


def _atomic_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target)


def _plain(results: Mapping[str, Any]) -> Dict[str, Any]:
    """Metric dicts with Python floats (MMSA's metrics are numpy scalars)."""
    return {k: float(v) if is_number(v) else v for k, v in results.items()}


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {value!r}")


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, default=_json_default)
    except (TypeError, ValueError):
        return False
    return True


def _cell(value: Any) -> Any:
    """A ``d_paras`` value for a CSV cell (lists and dicts as JSON, as MMSA's pandas would repr them)."""
    return json.dumps(value, default=_json_default) if isinstance(value, (list, dict)) else _json_value(value)
