"""Each seed tests the checkpoint its own training wrote, never one left by an earlier run.

``MMSA.run._run``: a checkpoint left at ``args['model_save_path']`` by an earlier run is deleted
before each seed trains; if training then writes none, :class:`MissingCheckpointError` says so
instead of a bare ``AssertionError`` or a stale model (breakage 10).  The seed's test results
are collected for the results CSV (:mod:`khar_mmsa.mmsa.mmsa_run`).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

from .registry import mmsa_module, set_attr
from .run_context import current_run

logger = logging.getLogger("MMSA")


class MissingCheckpointError(RuntimeError):
    """Training finished without writing the checkpoint MMSA is about to test."""


def patch() -> None:
    """Wrap ``MMSA.run._run`` (one seed: build, train, test)."""
    run = mmsa_module("MMSA.run")
    set_attr(run, "_run", _wrap_run(run._run))


def _wrap_run(original: Callable) -> Callable:
    @functools.wraps(original)
    def _run(args: Any, num_workers: int = 4, is_tune: bool = False,
             from_sena: bool = False) -> Any:
        checkpoint = Path(args["model_save_path"])
        _remove_stale_checkpoint(checkpoint)
        try:
            result = original(args, num_workers, is_tune, from_sena)
        except AssertionError as exc:
            if checkpoint.exists():
                raise
            raise MissingCheckpointError(
                f"{args['model_name']} on {args['dataset_name']}: training finished without "
                f"writing a checkpoint to {checkpoint}. No epoch improved the validation "
                f"{args.get('KeyEval')!r} (MMSA starts a 'max' metric's best at 0); use "
                f"KeyEval 'Loss' or check the data and learning rate.") from exc
        ctx = current_run()
        if ctx is not None and not is_tune and not from_sena:
            ctx.results.append(dict(result))
        return result
    return _run


def _remove_stale_checkpoint(checkpoint: Path) -> None:
    if checkpoint.exists():
        checkpoint.unlink()
        logger.info(f"Removed {checkpoint} left by an earlier run, so that only this run's "
                    f"training can produce the model that is tested.")
