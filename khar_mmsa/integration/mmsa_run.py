"""``MMSA_run`` (in ``MMSA.run`` and ``MMSA``): one call, one results row, no leftovers.

The wrapper opens a :class:`~khar_mmsa.integration.run_context.RunContext` for the hooks below it, uses
0 loader workers when CUDA is absent and ``num_workers`` was not given (breakage 8), checks the
output folders before anything trains (:mod:`khar_mmsa.integration.output_folders`), lets MMSA write its
CSV into a private temporary folder (``mmsa-results-<pid>-*``, :mod:`khar_mmsa.integration.temp_files`)
and merges one row per run into the real ``<res_save_dir>/normal/<dataset>.csv``
(:mod:`khar_mmsa.integration.results_csv`); then the run's finished-seed record is removed
(:mod:`khar_mmsa.integration.checkpoints`).  The call's ``verbose_level`` and ``log_dir`` are kept for
the trainer (:func:`current_run_options`).  A normal run returns its row (a dict) instead of None.
A tuning call (``is_tune=True``) goes to :func:`khar_mmsa.integration.tune.tune_by_validation` instead
of MMSA's tune loop, and returns what it returns.  The log handlers MMSA added are removed
when the call returns (:mod:`khar_mmsa.integration.log_handlers`).
"""
from __future__ import annotations

import functools
import inspect
import logging
import shutil
from typing import Any, Callable, Dict, Optional

from khar_mmsa.integration.checkpoints import finish_run
from khar_mmsa.integration.cpu_fallback import cuda_available
from khar_mmsa.integration.log_handlers import remove_handlers
from khar_mmsa.integration.registry import mmsa_module, set_entry_point
from khar_mmsa.integration.results_csv import (MMSA_DEFAULT_SEEDS, append_result_row, results_csv_path,
                          summarize_results)
from khar_mmsa.integration.output_folders import check_output_folders, output_folder
from khar_mmsa.integration.run_context import TLS, RunContext, current_run
from khar_mmsa.integration.temp_files import make_private_dir, sweep
from khar_mmsa.integration.tune import tune_by_validation

logger = logging.getLogger("MMSA")


def patch() -> None:
    """Replace ``MMSA_run`` in ``MMSA.run`` and ``MMSA``."""
    set_entry_point("MMSA_run", _wrap_mmsa_run(mmsa_module("MMSA.run").MMSA_run))


def _wrap_mmsa_run(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args: Any, **kwargs: Any) -> Optional[Dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        explicit = set(bound.arguments)
        bound.apply_defaults()
        call = dict(bound.arguments)
        cuda = cuda_available()
        if "num_workers" not in explicit and not cuda:
            call["num_workers"] = 0
        sweep()  # private folders of runs killed earlier
        check_output_folders(call)
        real_res_dir = output_folder(call, "res_save_dir")
        private = None if call["is_tune"] else make_private_dir("mmsa-results")
        ctx = RunContext(wanted_gpu=bool(call["gpu_ids"]) and not cuda,
                         seeds=list(call["seeds"]) or list(MMSA_DEFAULT_SEEDS),
                         is_tune=bool(call["is_tune"]), verbose_level=call["verbose_level"],
                         log_dir=output_folder(call, "log_dir"),
                         private_results_dir=None if private is None else str(private))
        if private is not None:
            call["res_save_dir"] = str(private)
        previous, TLS.run = current_run(), ctx
        try:
            if call["is_tune"]:  # selects on validation, not MMSA's test-scored loop
                return tune_by_validation(**{k: v for k, v in call.items() if k != "is_tune"})
            original(**call)
            row = summarize_results(str(call["model_name"]).lower(), ctx.results, ctx.seeds)
            csv_file = results_csv_path(real_res_dir, call["dataset_name"])
            append_result_row(csv_file, row)
            logger.info(f"Results saved to {csv_file}.")
            finish_run(ctx)
            return row
        finally:
            TLS.run = previous
            remove_handlers(ctx.handlers)
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
    return MMSA_run
