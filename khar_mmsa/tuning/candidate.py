"""One tuning candidate: its ``args``, its training as ``MMSA._run`` does, scored on validation.

Same loader, model, trainer and early stopping as a run (:func:`build_model_and_trainer`: KHaR's
own classes for 'khar', MMSA's ``AMIO``/``ATIO`` for MMSA's models); the best checkpoint is scored
on the **validation** split only.  The Ray Tune search (:mod:`khar_mmsa.tuning.ray_tune`) runs
the same functions, so a Ray trial trains and validates exactly like a candidate here.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from khar_mmsa.runs.devices import choose_device, cuda_available
from khar_mmsa.registration.extra_models import is_extra_model
from khar_mmsa.runs.features import feature_files, file_key, load_features, make_loaders
from khar_mmsa.runs.model_and_trainer import build_model_and_trainer
from khar_mmsa.tuning.values import plain
from khar_mmsa.io.files import safe_torch_load
from khar_mmsa.mmsa_conventions import default_folder
from khar_mmsa.training.checkpoints import SeedCheckpoint

EpochHook = Callable[[int, Mapping[str, Any]], None]


def base_tune_args(model_name: str, dataset_name: str, config_file: Any = None,
                   gpu_ids: Optional[Sequence[int]] = None, model_save_path: Any = None,
                   custom_feature: Optional[str] = None, feature_T: Optional[str] = None,
                   feature_A: Optional[str] = None, feature_V: Optional[str] = None) -> Any:
    """MMSA's tune-branch ``initial_args``: ``get_config_tune`` without the random draw (the
    ``d_paras`` entries stay lists), plus the device and feature paths ``MMSA_run`` adds."""
    from khar_mmsa.registration.configs import config_for
    if config_file is not None and str(config_file) != "" and not Path(config_file).is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(config_file))
    args = config_for(model_name, dataset_name, "tune", config_file or None, random_choice=False)
    args["model_save_path"] = Path(model_save_path or default_folder("model_save_dir")
                                   / f"{args['model_name']}-{args['dataset_name']}-tune-candidate.pth")
    use_device(args, gpu_ids)
    args["train_mode"] = "regression"  # as MMSA_run
    args["custom_feature"] = custom_feature
    args["feature_T"], args["feature_A"], args["feature_V"] = feature_T, feature_A, feature_V
    return args


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


def use_device(args: Any, gpu_ids: Optional[Sequence[int]] = None) -> Any:
    """Set ``args['device']`` as the runner does, for the process this runs in (a Ray trial sees
    only the GPUs Ray gave it, as device 0; none: the CPU)."""
    args["device"] = choose_device(gpu_ids, cuda_available())
    return args["device"]


def with_epoch_hook(args: Any, hook: Optional[EpochHook]) -> Any:
    """``args`` for a trainer of ours (KHaRTrainer): a copy with ``hook`` as an
    :class:`~khar_mmsa.training.callbacks.EpochHook` added to ``args['callbacks']``, which the
    trainer runs after each epoch's validation.  MMSA's own trainers get ``args`` unchanged (see
    :func:`attach_epoch_hook`)."""
    if hook is None or not is_extra_model(args["model_name"]):
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


def candidate_features(args: Mapping[str, Any], features: Optional[Mapping[Any, Any]] = None) -> Mapping[Any, Any]:
    """The feature files of ``args``, read and validated (:func:`load_features`); ``features``
    when it holds exactly those files, read already."""
    wanted = {file_key(path) for path, _ in feature_files(args)}
    if features is not None and None not in wanted and set(features) == wanted:
        return features
    return load_features(args)


def train_candidate(args: Any, num_workers: int = 0, on_epoch_end: Optional[EpochHook] = None,
                    features: Optional[Mapping[Any, Any]] = None) -> Candidate:
    """Train one config as ``MMSA._run`` does and score its best checkpoint on the validation split.

    Same loader, model, trainer and early stopping as ``MMSA_run``; the test split is not scored.
    ``features``: the feature files read already (:func:`candidate_features`).
    """
    checkpoint = Path(args["model_save_path"])
    SeedCheckpoint(checkpoint).remove_stale("only this candidate's training may produce it")
    dataloader = make_loaders(args, candidate_features(args, features), num_workers)
    model, trainer, _ = build_model_and_trainer(with_epoch_hook(args, on_epoch_end))
    attach_epoch_hook(trainer, on_epoch_end)
    trainer.do_train(model, dataloader, return_epoch_results=False)
    if not checkpoint.exists():
        from khar_mmsa.training.checkpoints import MissingCheckpointError
        raise MissingCheckpointError(
            f"{args['model_name']} on {args['dataset_name']}: training finished without writing a checkpoint "
            f"to {checkpoint} (no epoch improved the validation {args.get('KeyEval')!r})")
    model.load_state_dict(safe_torch_load(checkpoint, map_location=args["device"]))
    model.to(args["device"])
    valid = plain(trainer.do_test(model, dataloader["valid"], mode="VALID"))
    return Candidate(valid, model, trainer, dataloader)


def score_on_test(args: Any, checkpoint: Path, num_workers: int) -> Dict[str, Any]:
    """The test-split results of the model saved in ``checkpoint`` for ``args`` (the selected
    candidate's, scored once)."""
    dataloader = make_loaders(args, load_features(args), num_workers)
    model, trainer, _ = build_model_and_trainer(args)
    model.load_state_dict(safe_torch_load(checkpoint, map_location=args["device"]))
    return plain(trainer.do_test(model, dataloader["test"], mode="TEST"))
