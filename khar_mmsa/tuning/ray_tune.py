"""Ray Tune search over a model's MMSA tuning grid, selected on the validation KeyEval.

Needs the ``ray`` extra (``pip install -e ".[ray]"``).  :func:`search`:

* the search space is the ``d_paras`` grid of the model's ``config_tune.json`` (ours merged with
  MMSA's, or the file given), each parameter a ``tune.choice`` -- the same grid as
  ``MMSA_run(..., is_tune=True)``;
* each trial builds its config like MMSA's tune mode and trains it with
  :func:`khar_mmsa.tuning.train_candidate`, the same training code and validation as
  ``MMSA_run``; after every epoch it reports ``valid_<KeyEval>`` so the ASHA scheduler can stop
  poor trials early.  The test split is never scored in a trial;
* each trial reserves ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (a fraction shares a GPU);
* the best trial is the best validation KeyEval reported by any epoch (its early-stopping
  checkpoint); its config is written as an MMSA-schema JSON
  (``<out_dir>/<dataset>-<model>-best.json``) that ``MMSA_run(model, dataset, config_file=...)``
  reads back -- that run, or :func:`test_best`, is where its test score comes from.  Its paths
  (the feature file, a local text encoder) are absolute, so ``-c`` works from any folder.

Before Ray starts, every grid point's config is checked (:func:`preflight`) and the feature file
is read and validated once: a search whose every trial must fail (a width the attention heads do
not divide, a missing or malformed feature file) stops at once with :class:`TuneSetupError`,
and grid points that cannot train are named in a warning.  While trials run, a progress line
(trials done, running, failed, best validation value so far) is logged every
``progress_interval_s`` seconds and whenever a trial ends.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

logger = logging.getLogger(f"MMSA.{__name__}")

#: Grid points checked before Ray starts (all of them when the grid is this small or smaller,
#: else this many, spread evenly over the grid).
PREFLIGHT_MAX_POINTS = 4096
#: Seconds between progress lines while trials run (a trial's end always logs one).
PROGRESS_INTERVAL_S = 30.0
#: Config keys whose string values name files or folders (written absolute into the best file).
PATH_KEYS = ("featurePath", "custom_feature", "pretrained", "pretrained_adapters_path")


class TuneSetupError(ValueError):
    """The search cannot succeed: every grid point's config is invalid, or the data is."""


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
    from khar_mmsa.tuning import grid_axes
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

    from khar_mmsa.registration import register
    register()  # 'khar' and the MMSA fixes in this worker
    from khar_mmsa.tuning import candidate_args, seed_everything, train_candidate, use_device
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


def preflight_indices(size: int, limit: int = PREFLIGHT_MAX_POINTS) -> range:
    """The grid points :func:`preflight` checks: all ``size`` when they are at most ``limit``, else
    at most ``limit`` of them spread evenly (every ``ceil(size / limit)``-th point)."""
    step = max(1, math.ceil(size / limit))
    return range(0, size, step)


def preflight(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Tuple[int, int, int]:
    """Check the grid's configs and the data once, before any trial (see the module docstring).

    Returns ``(grid points checked, invalid ones, grid size)``; raises :class:`TuneSetupError` when every
    checked point is invalid or the feature file cannot be read or does not fit the config.
    """
    from khar_mmsa.runs.features import load_features
    from khar_mmsa.registration.extra_models import check_model_settings
    from khar_mmsa.tuning import candidate_args, grid_axes, grid_point, grid_size
    axes = grid_axes(base)
    size = grid_size(axes)
    checked, invalid = 0, 0
    problems: Dict[str, Any] = {}  # first grid point of each distinct error
    first_valid = None
    for index in preflight_indices(size):
        point = grid_point(axes, index)
        args = candidate_args(base, point, overrides)
        checked += 1
        try:
            check_model_settings(args)
        except Exception as exc:  # noqa: BLE001 - a config the model refuses: its trial would fail
            invalid += 1
            problems.setdefault(" ".join(str(exc).split()), point)
            continue
        if first_valid is None:
            first_valid = args
    model = base.get("model_name")
    if first_valid is None:
        message, point = next(iter(problems.items()))
        raise TuneSetupError(f"every one of the {checked} grid points checked gives a config {model} refuses, so "
                             f"every trial would fail; Ray was not started. First: {message} (grid point {point})")
    if invalid:
        shown = "; ".join(f"{msg} (e.g. {pt})" for msg, pt in list(problems.items())[:3])
        logger.warning(f"Ray Tune: {invalid} of {checked} grid points give a config {model} refuses; those "
                       f"trials will fail: {shown}")
    try:
        load_features(first_valid)  # reads and validates every feature file the trials will read
    except Exception as exc:  # noqa: BLE001 - missing, unreadable or mismatched data: every trial would fail
        raise TuneSetupError(f"the data cannot be used, so every trial would fail; Ray was not started: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
    return checked, invalid, size


def absolute_paths(args: Mapping[str, Any]) -> Dict[str, Any]:
    """``args`` with the relative paths of :data:`PATH_KEYS` that exist made absolute."""
    out = dict(args)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, (str, Path)) and str(value) and not Path(value).is_absolute() and Path(value).exists():
            out[key] = str(Path(value).resolve())
    return out


class TuneProgress:
    """A Ray Tune callback that logs ``Ray Tune: 3/20 trials ended (1 failed), 2 running, best
    valid_Loss 0.712, 1.4 min`` every ``interval_s`` seconds and when a trial ends."""

    def __init__(self, total: int, metric: str, mode: str, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.total, self.metric, self.mode, self.interval_s = total, metric, mode, interval_s
        self.ended, self.failed, self.running = 0, 0, 0
        self.best: Optional[float] = None
        self.start = time.monotonic()
        self._last = 0.0

    def line(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        elapsed = time.monotonic() - self.start
        took = f"{elapsed:.0f} s" if elapsed < 120 else f"{elapsed / 60:.1f} min"
        return (f"Ray Tune: {self.ended}/{self.total} trials ended ({self.failed} failed), {self.running} "
                f"running, best {self.metric} {best}, {took}")

    def result(self, value: Any) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
        self.show()

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            logger.info(self.line())

    def callback(self) -> Any:
        """This progress as a ``ray.tune.Callback`` (Ray imported here)."""
        from ray import tune
        progress = self

        class _Callback(tune.Callback):
            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                progress.running = sum(t.status == "RUNNING" for t in trials) or progress.running + 1
                progress.show()

            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                progress.result(result.get(progress.metric))

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                progress.ended += 1
                progress.running = max(0, progress.running - 1)
                progress.show(force=True)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                progress.ended += 1
                progress.failed += 1
                progress.running = max(0, progress.running - 1)
                progress.show(force=True)

        return _Callback()


def _log_to(path: Path) -> None:
    """The 'MMSA' log of this trial goes to ``path`` (replacing the previous trial's file)."""
    mmsa_logger = logging.getLogger("MMSA")
    if _TRIAL_LOG["handler"] is not None:
        mmsa_logger.removeHandler(_TRIAL_LOG["handler"])
        _TRIAL_LOG["handler"].close()
    from khar_mmsa.io.appends import NoFollowFileHandler
    handler = NoFollowFileHandler(path)  # a link at the trial log's place is refused, not followed
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
    mmsa_logger.addHandler(handler)
    mmsa_logger.setLevel(logging.INFO)
    _TRIAL_LOG["handler"] = handler


def search(model: str, dataset: str, *, config_file: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
           custom_feature: Optional[str] = None, seed: int = 1111, num_samples: int = 20,
           max_epochs: Optional[int] = None, grace_period: int = 1, reduction_factor: float = 2,
           cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, max_concurrent: Optional[int] = None,
           address: Optional[str] = None, out_dir: os.PathLike = "ray-tune", search_seed: Optional[int] = None,
           reuse_actors: bool = True, threads: Optional[int] = None,
           progress_interval_s: float = PROGRESS_INTERVAL_S) -> SearchOutcome:
    """Run the search (see the module docstring); starts or joins a Ray cluster when none is up.

    ``threads``: torch CPU threads of each trial (default: ``cpus_per_trial``, at least 1).
    Raises :class:`TuneSetupError` before Ray starts when no trial could succeed, and
    :class:`khar_mmsa.experiments.sweep.RayUnavailable` when ``address`` cannot be reached."""
    from khar_mmsa.mmsa_conventions import check_seed
    check_seed(seed, "seed")  # before Ray starts
    tune = _require_ray()
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from khar_mmsa.registration import register
    register()
    from khar_mmsa.tuning import base_tune_args, candidate_args, write_mmsa_config
    from khar_mmsa.training.loop import LOWER_IS_BETTER
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
    checked, invalid, size = preflight(base, overrides)
    logger.info(f"Ray Tune: {checked} of the grid's {size} points checked before Ray starts (all of them up to "
                f"{PREFLIGHT_MAX_POINTS}, else at most {PREFLIGHT_MAX_POINTS} spread over the grid), "
                f"{checked - invalid} of them valid configs; the data was read and validated once")
    from khar_mmsa.experiments.sweep import ray_init
    own_cluster = not ray.is_initialized()
    if own_cluster:
        ray_init(address, include_dashboard=False, log_to_driver=False)
    try:
        threads = int(threads) if threads else max(1, int(cpus_per_trial))
        progress = TuneProgress(num_samples, metric, mode, progress_interval_s)
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
            run_config=tune.RunConfig(name=f"{dataset}-{model}", storage_path=str(out_dir), verbose=0,
                                      callbacks=[progress.callback()]))
        logger.info(f"Ray Tune: {num_samples} trials of {model} on {dataset}, {metric} ({mode}), ASHA max_t={epochs} "
                    f"epochs, grace {grace_period}, each trial {cpus_per_trial} CPU / {gpus_per_trial} GPU")
        results = tuner.fit()
        progress.show(force=True)
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
    best_args = absolute_paths(best_args)
    config_path = write_mmsa_config(out_dir / f"{dataset}-{model}-best.json", best_args)
    logger.info(f"Ray Tune: best validation {metric} = {best_value:.4f} with {best.config}; config file {config_path}")
    return SearchOutcome(model, dataset, metric, mode, best_value, dict(best.config), config_path,
                         len(results), trained, results)


def _portable(base: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with paths as strings (sent to every trial)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in base.items()}


def test_best(outcome: SearchOutcome, seed: int = 1111, out_dir: os.PathLike = "ray-tune/test-best") -> Dict[str, Any]:
    """Train the selected config once with ``MMSA_run(config_file=...)`` and return its test row."""
    from khar_mmsa.runs.runner import run
    out = Path(out_dir)
    return run(outcome.model, outcome.dataset, config_file=str(outcome.config_file), seeds=[seed],
                    model_save_dir=str(out / "models"), res_save_dir=str(out / "results"),
                    log_dir=str(out / "logs"), verbose_level=0)
