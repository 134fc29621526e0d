"""The life cycle of a seed's checkpoint, its resume state and a run's finished seeds -- one place.

MMSA's ``_run`` trains one seed, then tests whatever is at ``args['model_save_path']``.  Two
things can go wrong there, and both are handled here, together:

* A checkpoint left by an *earlier* run must never be tested as this run's model (breakage 10).
* A run killed part-way (``kill -9``, a power cut) must continue where it stopped when the
  identical ``MMSA_run(...)`` is called again, and give the same results row.

:class:`SeedCheckpoint` owns the files of one seed at ``model_save_path``: the best checkpoint
(``khar-<dataset>.pth``), the trainer's resume state (``.pth.resume``), the config the checkpoint
was trained with (``.pth.json``, read by ``MMSA_test``) and temporary files a killed atomic write
left (``.khar-<dataset>.pth.*.tmp``).  :meth:`SeedCheckpoint.resume` keeps them only when the
resume state was written by this very seed's run (the trainer's fingerprint: config, seed, data)
and its best checkpoint is still there; otherwise it removes them with one log line saying why.
MMSA's own models have no resume state: their stale checkpoint is removed before each seed.

:class:`RunState` keeps each finished seed's test results of one ``MMSA_run`` call in
``<model_save_path>.seeds.json``, keyed by the trainer's :meth:`run_key` (model, dataset, config,
data identity, seed list).  A rerun returns those results instead of training the seed again and
still writes one CSV row over all seeds; a file with another key is ignored (one log line) and
replaced.  The file is removed when the run has written its row.

``MMSA.run._run`` is wrapped accordingly; training that writes no checkpoint raises
:class:`MissingCheckpointError` instead of a bare ``AssertionError``.
"""
from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from khar_mmsa.integration.registry import mmsa_module, set_attr
from khar_mmsa.integration.results_csv import is_number
from khar_mmsa.integration.run_context import current_run
from khar_mmsa.training.checkpoints import SeedCheckpoint  # noqa: F401  (its home; re-exported here)

logger = logging.getLogger("MMSA")


class MissingCheckpointError(RuntimeError):
    """Training finished without writing the checkpoint MMSA is about to test."""


class RunState:
    """Finished seeds' test results of one ``MMSA_run`` call (see the module docstring)."""

    def __init__(self, model_save_path: Any, key: str) -> None:
        path = Path(model_save_path)
        self.path = path.with_name(path.name + ".seeds.json")
        self.key = key
        self.results: Dict[str, Dict[str, float]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            same = saved.get("key") == self.key
            results = dict(saved.get("results", {})) if same else {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            same, results = False, {}
            why = f"it cannot be read ({type(exc).__name__}: {exc})"
        else:
            why = "it belongs to a run with another config, data or seed list"
        if not same:
            logger.info(f"Ignoring {self.path}: {why}; every seed of this run trains.")
            self.path.unlink(missing_ok=True)
            return
        self.results = results
        if results:
            logger.info(f"Resuming the run recorded in {self.path}: seed(s) "
                        f"{', '.join(results)} finished before and are not trained again.")

    def result_for(self, seed: int) -> Optional[Dict[str, float]]:
        return self.results.get(str(seed))

    def record(self, seed: int, result: Mapping[str, Any]) -> None:
        from khar_mmsa.io.safe_io import atomic_write_text
        self.results[str(seed)] = {k: float(v) for k, v in result.items() if is_number(v)}
        atomic_write_text(self.path, json.dumps({"key": self.key, "results": self.results},
                                                indent=1))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def patch() -> None:
    """Wrap ``MMSA.run._run`` (one seed: build, train, test)."""
    run = mmsa_module("MMSA.run")
    set_attr(run, "_run", _wrap_run(run._run))


def _own_trainer(model_name: str) -> Optional[type]:
    """The trainer class of ``model_name`` when it drives its own :class:`SeedCheckpoint`
    (declares ``owns_checkpoint_life_cycle`` and has ``run_key``), else None."""
    from khar_mmsa.integration.models import EXTRA_TRAINERS
    lazy = EXTRA_TRAINERS.get(str(model_name))
    trainer = None if lazy is None else lazy.resolve()
    if getattr(trainer, "owns_checkpoint_life_cycle", False):
        return trainer
    return None


def _wrap_run(original: Callable) -> Callable:
    @functools.wraps(original)
    def _run(args: Any, num_workers: int = 4, is_tune: bool = False,
             from_sena: bool = False) -> Any:
        checkpoint = SeedCheckpoint(args["model_save_path"])
        trainer = _own_trainer(args["model_name"])
        if trainer is None:  # no resume state: start clean
            checkpoint.remove_stale("left by an earlier run or seed, so that only this seed's "
                                    "training can produce the model that is tested")
        ctx = current_run()
        state = None
        if ctx is not None and trainer is not None and not is_tune and not from_sena:
            state = _run_state(ctx, args, num_workers, trainer)
        seed = _current_seed()
        if state is not None and state.result_for(seed) is not None:
            result = state.result_for(seed)
            logger.info(f"Seed {seed} finished in an earlier run of this config (recorded in "
                        f"{state.path.name}): using its test results, not training it again.")
        else:
            result = _train_and_test(original, args, num_workers, is_tune, from_sena, checkpoint)
            if state is not None:
                state.record(seed, result)
        if ctx is not None and not is_tune and not from_sena:
            ctx.results.append(dict(result))
        return result
    return _run


def _train_and_test(original: Callable, args: Any, num_workers: int, is_tune: bool,
                    from_sena: bool, checkpoint: SeedCheckpoint) -> Any:
    try:
        return original(args, num_workers, is_tune, from_sena)
    except AssertionError as exc:
        if checkpoint.path.exists():
            raise
        raise MissingCheckpointError(
            f"{args['model_name']} on {args['dataset_name']}: training finished without "
            f"writing a checkpoint to {checkpoint.path}. No epoch improved the validation "
            f"{args.get('KeyEval')!r} (MMSA starts a 'max' metric's best at 0); use "
            f"KeyEval 'Loss' or check the data and learning rate.") from exc


def _current_seed() -> int:
    """The seed MMSA's ``setup_seed`` just set (``cur_seed`` is only the seed's position)."""
    import torch
    return int(torch.initial_seed())


def _run_state(ctx: Any, args: Any, num_workers: int, trainer: type) -> Optional[RunState]:
    """The :class:`RunState` of the running ``MMSA_run`` call, opened at its first seed."""
    if ctx.run_state is None:
        loaders = mmsa_module("MMSA.run").MMDataLoader(args, num_workers)  # features cached
        key = trainer.run_key(args, loaders, ctx.seeds)
        ctx.run_state = RunState(args["model_save_path"], key)
    return ctx.run_state


def finish_run(ctx: Any) -> None:
    """The run's row is written: its finished-seed record is no longer needed."""
    if ctx.run_state is not None:
        ctx.run_state.remove()
