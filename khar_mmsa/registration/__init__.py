"""Registration: what ``import khar_mmsa`` does to MMSA 2.2.1, in two named steps.

=========================  =========================================================================
module                     what it holds
=========================  =========================================================================
:mod:`.additions`          step 1, what it adds: model 'khar', dataset 'simsv2', their configs, the
                           ``MMSA_run`` / ``MMSA_test`` routes for 'khar'
:mod:`.entry_points`       the bodies of MMSA_run, MMSA_test and the config getters: the routes
:mod:`.fixes`              step 2, the fixes MMSA's own models need on today's torch, numpy, a CPU
:mod:`.replacements`       every replaced MMSA name with its original, to put back
:mod:`.extra_models`       the added model/dataset keys, MMSA's metrics for them, the settings check
:mod:`.configs`            MMSA's default config JSON with ours (shipped in the wheel) merged in
=========================  =========================================================================

1. :func:`.additions.add_to_mmsa` -- what it *adds*: model ``'khar'``, dataset ``'simsv2'``,
   their configs, and the ``MMSA_run`` / ``MMSA_test`` routes for ``'khar'`` (every other call is
   MMSA's own body, unchanged; :mod:`.entry_points`);
2. :func:`.fixes.fix_mmsa` -- the *fixes* MMSA's own models need on today's torch, numpy and
   a CPU (``MMSA.run.torch``, ``MMSA.run.round``, three ``ReduceLROnPlateau``): the only
   replacements that change what MMSA's own models do.

:func:`register` (idempotent) runs both; every replaced name is recorded
(:mod:`.replacements`) and :func:`unregister` puts every original back.  Nothing else in MMSA
changes: results files, checkpoints, tune mode and logging of MMSA's own models stay MMSA's.
``importlib.reload`` of an MMSA module runs MMSA's code again and gets MMSA's code (no promise
covers it).

*When* it runs: :func:`register_when_mmsa_is_imported` -- at once if MMSA is imported, else right
after MMSA's ``__init__`` has run, so that ``import khar_mmsa.io.files`` does not load MMSA, torch
and transformers.  The hook is ``wrapt``'s post-import hook (a well-kept library's; it fires on
loading, not on a mere ``importlib.util.find_spec``), not a ``sys.meta_path`` finder of our own.  Import order does not matter for the routes: they
change MMSA's function objects themselves (:mod:`.entry_points`).
"""
from __future__ import annotations

import logging
from typing import Any

from khar_mmsa.registration.extra_models import (EXTRA_DATASETS, EXTRA_MODELS, EXTRA_TRAINERS, LazyClass,
                                                LazyTrainer, check_model_settings, is_extra_model, metrics_for)
from khar_mmsa.registration.additions import add_to_mmsa
from khar_mmsa.registration.fixes import fix_mmsa
from khar_mmsa.registration.replacements import (LOCK, is_registered, mmsa_module, registered_names,
                                                restore_all)

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["register", "unregister", "is_registered", "registered_names", "register_when_mmsa_is_imported",
           "EXTRA_MODELS", "EXTRA_TRAINERS", "EXTRA_DATASETS", "LazyClass", "LazyTrainer", "check_model_settings",
           "is_extra_model", "metrics_for", "mmsa_module", "add_to_mmsa", "fix_mmsa"]


def register() -> None:
    """Add khar-mmsa's keys to MMSA and apply the fixes (idempotent; undone on a failure)."""
    with LOCK:
        # MMSA first: when MMSA is not imported yet, importing it runs the post-import hook, which
        # registers; registering again on top of that (nested) would wrap our own wrappers.
        mmsa_module("MMSA")
        if is_registered():
            return
        try:
            add_to_mmsa()
            fix_mmsa()
        except BaseException:
            restore_all()
            raise
        logger.debug(f"khar_mmsa: {len(registered_names())} MMSA names registered")


def unregister() -> None:
    """Put back every MMSA name :func:`register` replaced."""
    with LOCK:
        restore_all()


def _register_hook(_mmsa: Any) -> None:
    register()


def register_when_mmsa_is_imported() -> None:
    """Register now if MMSA is imported, else as soon as it is (what ``import khar_mmsa`` calls)."""
    import wrapt
    wrapt.register_post_import_hook(_register_hook, "MMSA")
