"""Ray Tune search over a model's MMSA tuning grid, selected on the validation KeyEval.

Needs the ``ray`` extra (``pip install -e ".[ray]"``).  :func:`search`:

* the search space is the ``d_paras`` grid of the model's ``config_tune.json`` (ours merged with
  MMSA's, or the file given), each parameter a ``tune.choice`` -- the same grid as
  ``MMSA_run(..., is_tune=True)``;
* each trial builds its config like MMSA's tune mode and trains it with
  :func:`khar_mmsa.integration.tune.train_candidate`, the same training code and validation as
  ``MMSA_run``; after every epoch it reports ``valid_<KeyEval>`` so the ASHA scheduler can stop
  poor trials early.  The test split is never scored in a trial;
* each trial reserves ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (a fraction shares a GPU);
* the best trial is the best validation KeyEval reported by any epoch (its early-stopping
  checkpoint); its config is written as an MMSA-schema JSON
  (``<out_dir>/<dataset>-<model>-best.json``) that ``MMSA_run(model, dataset, config_file=...)``
  reads back -- that run, or :func:`test_best`, is where its test score comes from.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

logger = logging.getLogger("MMSA")


@dataclass
class SearchOutcome:
    model: str
    dataset: str
    metric: str
    mode: str
    best_value: float
    best_params: Dict[str, Any]
    config_file: Path
    trials: int
    epochs_per_trial: list  # epochs each trial trained before it ended (early stopping or ASHA)
    results: Any  # ray.tune.ResultGrid


def _require_ray() -> Any:
    try:
        from ray import tune
    except ImportError as exc:
        raise ImportError("the Ray Tune search needs Ray: pip install -e \".[ray]\" (or pip install 'ray[tune]')") from exc
    return tune


def search_space(base: Mapping[str, Any]) -> Dict[str, Any]:
    """``tune.choice`` per ``d_paras`` parameter (a dict of choices for a nested one)."""
    tune = _require_ray()
    from khar_mmsa.integration.tune import grid_axes
    space: Dict[str, Any] = {}
    for item, key, choices in grid_axes(base):
        if key is None:
            space[item] = tune.choice(choices)
        else:
            space.setdefault(item, {})[key] = tune.choice(choices)
    return space


_TRIAL_LOG: Dict[str, Any] = {"handler": None}  # this worker's trial log handler (actors are reused)


def _trial(params: Dict[str, Any], *, base: Dict[str, Any], overrides: Dict[str, Any], seed: int,
           metric: str, key_eval: str, threads: Optional[int]) -> None:
    """One Ray Tune trial: MMSA's training of ``base`` + ``params``, validation reported per epoch."""
    import torch
    from ray import tune

    import khar_mmsa  # noqa: F401  - registers 'khar' and the MMSA fixes in this worker
    from khar_mmsa.integration.tune import candidate_args, seed_everything, train_candidate, use_device
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    _log_to(trial_dir / "mmsa.log")
    if threads:
        torch.set_num_threads(threads)
    args = candidate_args(base, params, overrides)
    args["model_save_path"] = trial_dir / f"{args['model_name']}-{args['dataset_name']}.pth"
    args["cur_seed"] = 1
    use_device(args)  # this trial's GPU (Ray sets CUDA_VISIBLE_DEVICES), or the CPU
    if args["model_name"] == "khar":
        args["save_resume_state"] = False  # a trial never resumes; the file is 3x the model
    seed_everything(seed)

    def report(epoch: int, valid: Mapping[str, Any]) -> None:
        tune.report({metric: float(valid[key_eval]), "epoch": epoch})
    train_candidate(args, num_workers=0, on_epoch_end=report)


def _log_to(path: Path) -> None:
    """The 'MMSA' log of this trial goes to ``path`` (replacing the previous trial's file)."""
    mmsa_logger = logging.getLogger("MMSA")
    if _TRIAL_LOG["handler"] is not None:
        mmsa_logger.removeHandler(_TRIAL_LOG["handler"])
        _TRIAL_LOG["handler"].close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
    mmsa_logger.addHandler(handler)
    mmsa_logger.setLevel(logging.INFO)
    _TRIAL_LOG["handler"] = handler


def search(model: str, dataset: str, *, config_file: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
           custom_feature: Optional[str] = None, seed: int = 1111, num_samples: int = 20,
           max_epochs: Optional[int] = None, grace_period: int = 1, reduction_factor: float = 2,
           cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: Optional[int] = None,
           address: Optional[str] = None, out_dir: os.PathLike = "ray-tune", search_seed: Optional[int] = None,
           reuse_actors: bool = True) -> SearchOutcome:
    """Run the search (see the module docstring); starts or joins a Ray cluster when none is up."""
    tune = _require_ray()
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    import khar_mmsa  # noqa: F401
    from khar_mmsa.integration.tune import LOWER_IS_BETTER, base_tune_args, candidate_args, write_mmsa_config
    model, dataset = model.lower(), dataset.lower()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    feature = str(Path(custom_feature).resolve()) if custom_feature else None
    base = dict(base_tune_args(model, dataset, config_file, gpu_ids=[0], custom_feature=feature))
    base["device"] = "cpu"  # replaced in each trial by that trial's own device
    overrides = dict(config or {})
    key_eval = str(overrides.get("KeyEval", base["KeyEval"]))
    metric, mode = f"valid_{key_eval}", "min" if key_eval in LOWER_IS_BETTER else "max"
    epochs = int(max_epochs or overrides.get("epochs") or base.get("epochs") or 100)
    space = search_space(base)
    if not space:
        raise ValueError(f"{model} on {dataset}: the tune config has no d_paras grid to search")
    own_cluster = not ray.is_initialized()
    if own_cluster:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        threads = max(1, int(cpus_per_trial))
        trainable = tune.with_resources(
            functools.partial(_trial, base=_portable(base), overrides=overrides, seed=seed, metric=metric,
                              key_eval=key_eval, threads=threads),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=grace_period,
                                  reduction_factor=reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=max_concurrent, reuse_actors=reuse_actors,
                                        search_alg=BasicVariantGenerator(random_state=search_seed)),
            run_config=tune.RunConfig(name=f"{dataset}-{model}", storage_path=str(out_dir), verbose=0))
        logger.info(f"Ray Tune: {num_samples} trials of {model} on {dataset}, {metric} ({mode}), ASHA max_t={epochs} "
                    f"epochs, grace {grace_period}, each trial {cpus_per_trial} CPU / {gpus_per_trial} GPU")
        results = tuner.fit()
    finally:
        if own_cluster:
            ray.shutdown()
    errors = [r for r in results if r.error is not None]
    if len(errors) == len(results):
        raise RuntimeError(f"every Ray Tune trial failed; first error: {errors[0].error}")
    best = results.get_best_result(metric=metric, mode=mode, scope="all")
    history = best.metrics_dataframe[metric]
    best_value = float(history.min() if mode == "min" else history.max())
    trained = [int(r.metrics.get("epoch", 0)) if r.metrics else 0 for r in results]
    best_args = candidate_args(base, best.config, overrides)
    best_args["featurePath"] = feature or best_args["featurePath"]
    config_path = write_mmsa_config(out_dir / f"{dataset}-{model}-best.json", best_args)
    logger.info(f"Ray Tune: best validation {metric} = {best_value:.4f} with {best.config}; config file {config_path}")
    return SearchOutcome(model, dataset, metric, mode, best_value, dict(best.config), config_path,
                         len(results), trained, results)


def _portable(base: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with paths as strings (sent to every trial)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in base.items()}


def test_best(outcome: SearchOutcome, seed: int = 1111, out_dir: os.PathLike = "ray-tune/test-best") -> Dict[str, Any]:
    """Train the selected config once with ``MMSA_run(config_file=...)`` and return its test row."""
    import khar_mmsa  # noqa: F401
    from MMSA import MMSA_run
    out = Path(out_dir)
    return MMSA_run(outcome.model, outcome.dataset, config_file=str(outcome.config_file), seeds=[seed],
                    model_save_dir=str(out / "models"), res_save_dir=str(out / "results"),
                    log_dir=str(out / "logs"), verbose_level=0)
