"""The runner: one ``MMSA_run`` call, top to bottom.

``MMSA_run('khar', ...)`` (after ``import khar_mmsa``), ``khar_mmsa.run(...)``, the command line,
sweeps and Ray Tune all reach :func:`run`, which takes ``MMSA_run``'s arguments and works with
MMSA's public pieces -- its config getters, ``MMDataLoader``, ``AMIO``, ``ATIO`` (for MMSA's own
models), ``assign_gpu`` -- in this order:

1. check the model and dataset names (:func:`khar_mmsa.io.names.check_run_names`: they become file
   names), the seeds and the output folders, and open the run's log file (never through a link);
2. tuning (``is_tune=True``) goes to :func:`khar_mmsa.tuning.tune_by_validation`, which selects on validation;
3. build the config once (MMSA's default JSON with ours, a ``config_file``, ``config`` overrides)
   and check the model's settings before any file is read ('khar': the one typed
   :class:`~khar_mmsa.config.KHaRConfig` of the run, passed down to the model and trainer);
4. check every file the run will write (:mod:`.run_files`: checkpoint, resume state, adapters,
   curves, the results tables with their headers and lock files) before anything is read or trained;
5. choose the device (the CPU, with one warning, when a GPU was asked for and there is none;
   :mod:`.devices`), with a one-line hint when torch has more threads than free cores;
6. read every feature file once, with the restricted unpickler, and validate it;
7. for each seed: skip it if an earlier, killed run of the same config, data and seeds finished
   it (:mod:`.run_state`); else seed, build MMSA's loaders from the read features, build the
   model and trainer (:func:`.model_and_trainer.build_model_and_trainer`: ``KHaR`` and
   ``KHaRTrainer`` for 'khar'), train, load the checkpoint this training wrote, test;
8. write one row to MMSA's results table and the numeric table beside it
   (:mod:`.results_files`), remove the finished-seeds record, return the numeric row.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from khar_mmsa.config import normalize_bools
from khar_mmsa.training.checkpoints import MissingCheckpointError
from khar_mmsa.registration.configs import config_for
from khar_mmsa.runs.devices import choose_device, cuda_available, log_thread_hint
from khar_mmsa.registration.extra_models import check_model_settings
from khar_mmsa.runs.features import file_key, load_features, make_loaders
from khar_mmsa.runs.model_and_trainer import build_model_and_trainer
from khar_mmsa.runs.output_folders import check_output_folders
from khar_mmsa.registration.replacements import require_registration
from khar_mmsa.runs.results_files import is_number, summarize, tidy_csv_path, write_run_row
from khar_mmsa.runs.run_files import check_run_files
from khar_mmsa.runs.run_metrics import check_key_eval
from khar_mmsa.runs.run_state import RunState, run_key
from khar_mmsa.io.names import check_run_names
from khar_mmsa.reporting.run_log import run_log
from khar_mmsa.mmsa_conventions import MMSA_DEFAULT_SEEDS, SeedError, check_seed  # noqa: F401 (runner.SeedError)

logger = logging.getLogger(f"MMSA.{__name__}")


def run(model_name: str, dataset_name: str, config_file: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None, seeds: Sequence[int] = (), is_tune: bool = False,
        tune_times: int = 50, custom_feature: Optional[str] = None, feature_T: Optional[str] = None,
        feature_A: Optional[str] = None, feature_V: Optional[str] = None, gpu_ids: Optional[Sequence[int]] = None,
        num_workers: Optional[int] = None, verbose_level: int = 1, model_save_dir: Any = None,
        res_save_dir: Any = None, log_dir: Any = None,
        on_seed_result: Optional[Callable[[int, Mapping[str, float]], None]] = None) -> Dict[str, Any]:
    """Train and test ``model_name`` on ``dataset_name`` over ``seeds``; ``MMSA_run``'s arguments,
    and ``on_seed_result(seed, results)``, called with each seed's numeric test results as
    ``do_test`` gave them (natural units, unrounded: what MMSA averages into the row).

    Returns the numeric results row (``Model``, ``seeds``, ``<Metric>`` and ``<Metric>_std`` x100);
    with ``is_tune=True``, what :func:`khar_mmsa.tuning.tune_by_validation` returns.  ``num_workers=None``:
    0 loader workers without CUDA, else MMSA's 4.  ``gpu_ids=None``: MMSA's default ``[0]``
    (on a machine without CUDA the CPU, without the warning given GPU ids get)."""
    require_registration()
    check_run_names(model_name, dataset_name)  # they become file names: refused before anything is written
    model_name, dataset_name = str(model_name).lower(), str(dataset_name).lower()
    seeds = checked_seeds(seeds)
    check_key_eval(config, dataset_name)  # the call's KeyEval / key_eval, before any folder
    folders = check_output_folders({"model_save_dir": model_save_dir, "res_save_dir": res_save_dir,
                                    "log_dir": log_dir})
    cuda = cuda_available()
    workers = (4 if cuda else 0) if num_workers is None else int(num_workers)
    with run_log(folders["log_dir"], model_name, dataset_name, verbose_level):
        logger.info(f"{'=' * 40} {model_name} on {dataset_name} {'=' * 40}")
        if is_tune:
            from khar_mmsa.tuning import tune_by_validation
            return tune_by_validation(model_name, dataset_name, config_file=config_file, config=config,
                                      seeds=seeds, tune_times=tune_times, custom_feature=custom_feature,
                                      feature_T=feature_T, feature_A=feature_A, feature_V=feature_V,
                                      gpu_ids=gpu_ids, num_workers=workers, verbose_level=verbose_level,
                                      model_save_dir=folders["model_save_dir"],
                                      res_save_dir=folders["res_save_dir"], log_dir=folders["log_dir"])
        args = build_args(model_name, dataset_name, config_file, config, folders["model_save_dir"],
                          custom_feature, feature_T, feature_A, feature_V, verbose_level, folders["log_dir"])
        check_key_eval(args, dataset_name)  # a config file's KeyEval too
        settings = check_model_settings(args)
        res_dir = folders["res_save_dir"]
        check_run_files(args, settings, res_dir, dataset_name, folders["log_dir"])
        args["device"] = choose_device(gpu_ids, cuda)
        log_thread_hint(args["device"])
        features = load_features(args)
        state = RunState(args["model_save_path"], run_key(args, seeds))
        results: List[Dict[str, Any]] = []
        for index, seed in enumerate(seeds, start=1):
            logger.info(f"{'-' * 30} seed {seed} [{index}/{len(seeds)}] {'-' * 30}")
            result = state.result_for(seed)
            if result is not None:
                logger.info(f"Seed {seed} finished in an earlier run of this config (recorded in "
                            f"{state.path.name}): using its test results, not training it again.")
            else:
                result, settings = train_and_test(args, seed, index, features, workers, settings)
                state.record(seed, result)
            log_seed_result(seed, result)
            if on_seed_result is not None:
                on_seed_result(seed, {k: float(v) for k, v in result.items() if is_number(v)})
            results.append(result)
        row = summarize(model_name, results, seeds)
        path = write_run_row(res_dir, dataset_name, row, state.appending, state.record_appending)
        logger.info(f"Results saved to {path} (as numbers: {tidy_csv_path(res_dir, dataset_name).name}).")
        state.remove()
        return row


def checked_seeds(seeds: Sequence[Any]) -> List[int]:
    """MMSA's default seeds for an empty list; distinct integers in ``[0, 2**32)`` otherwise
    (:func:`~khar_mmsa.mmsa_conventions.check_seed`)."""
    seeds = list(seeds) if seeds else list(MMSA_DEFAULT_SEEDS)
    for seed in seeds:
        check_seed(seed, f"seeds={seeds!r}")
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise SeedError(f"seeds={seeds!r}: seed(s) {duplicates} given more than once; a repeated seed "
                        f"trains the same model twice and makes the std meaningless")
    return seeds


def build_args(model_name: str, dataset_name: str, config_file: Any, config: Optional[Mapping[str, Any]],
               model_save_dir: Path, custom_feature: Any, feature_T: Any, feature_A: Any, feature_V: Any,
               verbose_level: Optional[int], log_dir: Path) -> Any:
    """The run's ``args``, as ``MMSA_run`` builds them, plus the seed, log folder and console level
    our trainer reads (MMSA's trainers ignore them)."""
    args = config_for(model_name, dataset_name, "regression", config_file)
    args["model_save_path"] = Path(model_save_dir) / f"{args['model_name']}-{args['dataset_name']}.pth"
    args["train_mode"] = "regression"
    args["custom_feature"] = custom_feature
    args["feature_T"], args["feature_A"], args["feature_V"] = feature_T, feature_A, feature_V
    if config:
        if config.get("model_name") and str(config["model_name"]).lower() != args["model_name"]:
            raise ValueError(f"config['model_name']={config['model_name']!r} differs from the model "
                             f"asked for, {model_name!r}")
        args.update(config)
    args["verbose_level"], args["log_dir"] = verbose_level, str(log_dir)
    return normalize_bools(args)  # 'no', 'false', '0' are False for every boolean key, else an error


def train_and_test(args: Any, seed: int, index: int, features: Mapping[Any, Any], num_workers: int,
                   settings: Any = None) -> Tuple[Dict[str, Any], Any]:
    """One seed: seed, MMSA's loaders, model and trainer; train; test the checkpoint it wrote.
    Returns the test results and the settings the model was built from ('khar': the run's config
    with the data's shapes, passed on to the next seed; None for MMSA's models)."""
    import torch

    from khar_mmsa.io.state_files import load_checkpoint
    from khar_mmsa.training.seeding import seed_everything
    seed_everything(seed)
    args["cur_seed"], args["seed"] = index, seed
    loaders = make_loaders(args, features, num_workers)
    if index == 1:
        log_run_args(args, settings)
    warn_update_epochs(args, loaders)
    model, trainer, settings = build_model_and_trainer(args, settings)
    checkpoint = Path(args["model_save_path"])
    before = file_key(checkpoint)
    trainer.do_train(model, loaders, return_epoch_results=False)
    after = file_key(checkpoint)
    owns = getattr(trainer, "owns_checkpoint_life_cycle", False)  # it removes what it did not write
    if after is None or (after == before and not owns):
        raise MissingCheckpointError(
            f"{args['model_name']} on {args['dataset_name']}, seed {seed}: training finished without "
            f"writing the checkpoint {checkpoint}"
            + (" (the file there is from an earlier run and is not tested)" if after is not None else "")
            + f". No epoch improved the validation {args.get('KeyEval')!r} (MMSA starts a 'max' metric's "
              f"best at 0); use KeyEval 'Loss' or check the data and learning rate.")
    model.load_state_dict(load_checkpoint(checkpoint))  # a damaged file: StateFileError naming it
    result = trainer.do_test(model, loaders["test"], mode="TEST")
    del model, trainer, loaders
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result, settings


def warn_update_epochs(args: Mapping[str, Any], loaders: Mapping[str, Any]) -> None:
    """MulT, Self-MM, MISA and TFR-Net step their optimizer every ``update_epochs`` batches and drop
    the remainder: with fewer batches per epoch than that they never step."""
    every = args.get("update_epochs")
    batches = len(loaders["train"])
    if every and int(every) > batches:
        logger.warning(
            f"update_epochs={every} but the training set has only {batches} batch(es) per epoch: "
            f"{args['model_name']} steps its optimizer only after {every} batches, i.e. less than "
            f"once per epoch, so it may stop early before it ever trains. Pass "
            f"config={{'update_epochs': {max(batches, 1)}}} or a smaller batch_size.")


# -- logging (the run's two handlers: khar_mmsa.reporting.run_log) -----------------------------------
#: Keys shown on lines of their own, first.
_FILE_KEYS = ("custom_feature", "featurePath", "feature_T", "feature_A", "feature_V")
#: Keys of MMSA's dataset block that no trainer reads.
_UNUSED_KEYS = ("train_samples", "missing_rate", "missing_seed", "verbose_level", "log_dir", "cur_seed")


def log_run_args(args: Mapping[str, Any], settings: Any = None) -> None:
    """The arguments as the run uses them: the feature file read, ``seq_lens`` / ``feature_dims`` as
    found in the data (text, audio, vision), the folder ``pretrained`` resolves to; for 'khar' its
    checked ``settings`` (a dataclass), for MMSA's models the rest of ``args``."""
    from khar_mmsa.reporting.log_format import LINE_WIDTH, format_value, wrap_fields
    logger.info("Running with args (as this run uses them):")
    if args.get("custom_feature"):
        logger.info(f"  feature file: {args['custom_feature']} (custom_feature; featurePath is not read)")
    else:
        logger.info(f"  feature file: {args.get('featurePath')} (featurePath)")
    for key in ("feature_T", "feature_A", "feature_V"):
        if args.get(key):
            logger.info(f"  {key}: {args[key]}")
    for key in ("seq_lens", "feature_dims"):
        if key in args:
            logger.info(f"  {key} (text, audio, vision): {format_value(list(args[key]), None)} (from the data)")
    if args.get("pretrained"):
        logger.info(f"  pretrained: {_pretrained_text(str(args['pretrained']))}")
    shown = set(_FILE_KEYS) | {"seq_lens", "feature_dims", "pretrained"} | set(_UNUSED_KEYS)
    if dataclasses.is_dataclass(settings):
        rest = [(k, v) for k, v in dataclasses.asdict(settings).items() if k not in shown]
    else:
        rest = [(k, v) for k, v in args.items() if k not in shown]
    for line in wrap_fields(" ", rest, width=LINE_WIDTH, sep="=", digits=None):
        logger.info(line)


def _pretrained_text(name: str) -> str:
    from khar_mmsa.model.text_encoders import local_folder
    folder = local_folder(name)
    if folder is None:
        return f"{name} (hub name)"
    return name if str(folder) == name else f"{name} -> {folder}"


def log_seed_result(seed: int, result: Mapping[str, Any]) -> None:
    """``Result for seed S: Metric: value ...`` with plain numbers, wrapped."""
    from khar_mmsa.reporting.log_format import log_fields, plain_value
    numbers = {k: v for k, v in plain_value(dict(result)).items() if isinstance(v, (int, float))}
    log_fields(logger, f"Result for seed {seed}:", numbers, sep=": ")
