"""Everything that touches MMSA 2.2.1, in one package; nothing outside it imports MMSA internals.

One run's data flows one way: :mod:`.registration` (what ``import khar_mmsa`` adds to MMSA, and
the fixes MMSA needs to run, as two named steps) -> :mod:`.runner` (one ``MMSA_run`` call, top to
bottom) -> :mod:`.model_and_trainer` (``KHaR`` and ``KHaRTrainer``, named) -> the trainer
(:mod:`khar_mmsa.training.trainer`, its ``fit`` loop and criterion) -> :mod:`.results_files`.

=========================  =========================================================================
module                     what it holds
=========================  =========================================================================
:mod:`.registration`       :func:`register` / :func:`unregister`: the two steps below, recorded
:mod:`.mmsa_additions`     step 1, what it adds: model 'khar', dataset 'simsv2', their configs, the
                           ``MMSA_run`` / ``MMSA_test`` routes for 'khar'
:mod:`.mmsa_fixes`         step 2, the fixes MMSA's own models need on today's torch, numpy, a CPU
:mod:`.replacements`       every replaced MMSA name with its original, to put back
:mod:`.extra_models`       the added model/dataset keys, MMSA's metrics for them, the settings check
:mod:`.entry_points`       the bodies of MMSA_run, MMSA_test and the config getters: our routes
:mod:`.configs`            MMSA's default config JSON with ours (shipped in the wheel) merged in
:mod:`.runner`             :func:`run`: seeds, config, checks, device, features, seed loop, results
:mod:`.model_and_trainer`  the model and trainer of one seed, named (KHaR, KHaRTrainer; MMSA's own)
:mod:`.devices`            the device a run uses; the CPU-thread hint
:mod:`.features`           feature files read once, safely, validated, handed to MMSA's loader
:mod:`.output_folders`     output folders made and checked writable before training
:mod:`.run_state`          finished seeds of a killed run, so a rerun does not train them again
:mod:`.checkpoints`        the files of one seed's training (best, resume state, config)
:mod:`.results_files`      MMSA's results table and the numeric table beside it
:mod:`.tune`               tuning that selects on validation (grid, candidate, loop, table, config)
:mod:`.mmsa_test`          ``MMSA_test`` for 'khar'; a safe ``MMSA_test`` for every model
:mod:`.samples`            the one check of a single sample for ``MMSA_test``
:mod:`.predict`            predictions of a saved KHaR from its checkpoint's config
=========================  =========================================================================
"""
from khar_mmsa.integration.registration import (EXTRA_DATASETS, EXTRA_MODELS, EXTRA_TRAINERS, LazyClass,
                                                is_registered, metrics_for, register, registered_names,
                                                unregister)

__all__ = ["register", "unregister", "is_registered", "registered_names", "metrics_for",
           "EXTRA_MODELS", "EXTRA_TRAINERS", "EXTRA_DATASETS", "LazyClass"]
