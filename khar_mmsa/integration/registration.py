"""Registration: what ``import khar_mmsa`` does to MMSA 2.2.1, in two named steps.

1. :func:`.mmsa_additions.add_to_mmsa` -- what it *adds*: model ``'khar'``, dataset ``'simsv2'``,
   their configs, and the ``MMSA_run`` / ``MMSA_test`` routes for ``'khar'`` (every other call is
   MMSA's own function, unchanged);
2. :func:`.mmsa_fixes.fix_mmsa` -- the *fixes* MMSA's own models need on today's torch, numpy and
   a CPU (``MMSA.run.torch``, ``MMSA.run.round``, three ``ReduceLROnPlateau``): the only
   replacements that change what MMSA's own models do;

and, last, :func:`.reloads.keep_over_reloads`: ``importlib.reload`` of ``MMSA.data_loader`` or
``MMSA.run`` keeps the objects the two steps put there.

:func:`register` (idempotent) runs both; every replaced name is recorded
(:mod:`.replacements`) and :func:`unregister` puts every original back.  Nothing else in MMSA
changes: results files, checkpoints, tune mode and logging of MMSA's own models stay MMSA's.
"""
from __future__ import annotations

import logging

from khar_mmsa.integration.extra_models import (EXTRA_DATASETS, EXTRA_MODELS, EXTRA_TRAINERS, LazyClass,
                                                LazyTrainer, check_model_settings, is_extra_model, metrics_for)
from khar_mmsa.integration.mmsa_additions import ImportOrderError, add_to_mmsa
from khar_mmsa.integration.mmsa_fixes import fix_mmsa
from khar_mmsa.integration.reloads import keep_over_reloads
from khar_mmsa.integration.replacements import (LOCK, is_registered, mmsa_module, registered_names,
                                                restore_all)

logger = logging.getLogger("MMSA")

__all__ = ["register", "unregister", "is_registered", "registered_names", "ImportOrderError", "EXTRA_MODELS",
           "EXTRA_TRAINERS", "EXTRA_DATASETS", "LazyClass", "LazyTrainer", "check_model_settings",
           "is_extra_model", "metrics_for", "mmsa_module", "add_to_mmsa", "fix_mmsa"]


def register() -> None:
    """Add khar-mmsa's keys to MMSA and apply the fixes (idempotent; undone on a failure)."""
    with LOCK:
        # MMSA first: when khar_mmsa was imported before MMSA, importing it runs the deferred hook,
        # which registers; registering again on top of that (nested) would wrap our own wrappers.
        mmsa_module("MMSA")
        if is_registered():
            return
        try:
            add_to_mmsa()
            fix_mmsa()
            keep_over_reloads()
        except BaseException:
            restore_all()
            raise
        logger.debug(f"khar_mmsa: {len(registered_names())} MMSA names registered")


def unregister() -> None:
    """Put back every MMSA name :func:`register` replaced."""
    with LOCK:
        restore_all()
