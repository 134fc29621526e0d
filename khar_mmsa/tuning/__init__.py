"""MMSA's tune mode selects on the validation split; the test split is scored once, for the chosen config.

MMSA 2.2.1's ``MMSA_run(..., is_tune=True)`` trains candidates drawn from ``config_tune.json`` and
scores **each on the test split** (``MMSA/run.py``, tune branch: the validation line is commented
out), so picking the best row of its CSV selects hyperparameters on test.  The runner
(:mod:`khar_mmsa.runs.runner`) sends tuning calls to :func:`tune_by_validation` instead, for
every model it runs ('khar' through ``MMSA_run``; MMSA's own through ``khar_mmsa.run`` and the
command line -- MMSA's own ``MMSA_run(..., is_tune=True)`` for them is left as MMSA made it):

* each candidate trains exactly as in ``MMSA._run`` (MMSA's loader, ``AMIO``, ``ATIO`` trainer,
  early stopping on the validation KeyEval) and its best checkpoint is scored on the
  **validation** split only (:func:`train_candidate`);
* the candidate with the best validation KeyEval (lower for ``Loss``/``MAE``, higher otherwise)
  is selected among every row of the tune CSV, and only it is scored on the test split;
* the tune CSV (``<res_save_dir>/tune/<dataset>-<model>-by-valid.csv``, beside MMSA's) has one row per
  candidate: the ``d_paras`` values, ``candidate`` (their JSON), ``Valid_<metric>`` columns,
  ``selected_by`` (``valid <KeyEval>``), ``selected`` (True on one row) and ``Test_<metric>``
  columns filled on the selected row only; the log says the same (a candidate whose training
  fails for a reason of its settings -- a non-finite loss, an impossible config -- gets an
  ``error`` cell and the search goes on; any other failure -- the data, the disk, memory --
  stops the search and leaves the candidate untried, so a rerun tries it);
* the feature files are read and checked once, before the first candidate: missing or bad data
  is one error at once, not a failure of every candidate;
* the selected config is written as an MMSA-schema JSON (``<dataset>-<model>-best.json`` beside
  the CSV) that ``MMSA_run(model, dataset, config_file=...)`` reads back;
* ``MMSA_run`` returns ``{"selected", "key_eval", "valid", "test", "csv", "config_file"}``.

Candidates: when ``tune_times`` covers every combination of the ``d_paras`` grid not yet in the
CSV, all of them run, in grid order (MMSA's docstring promises a grid search); otherwise
``tune_times`` distinct untried combinations are drawn at random (MMSA's ``random.choice`` per
parameter, without MMSA's repeats).  Rows already in the CSV are skipped, so a second call extends
the search.  The best checkpoint so far is kept as ``<model>-<dataset>-tune-best.pth`` (with a
``.json`` naming its candidate) in ``model_save_dir``; each candidate trains into
``<model>-<dataset>-tune-candidate.pth``, removed after it is scored.

Learning rates of ``'khar'``: ``learning_rate`` (everything but the text encoder) and
``learning_rate_bert`` are tuned separately when both are in ``d_paras`` (our
``config_tune.json``); when ``learning_rate_bert`` is left out of ``d_paras`` it is tied to the
drawn ``learning_rate`` (Table 5 uses one rate for both).

:func:`train_candidate`, :func:`base_tune_args`, :func:`grid_axes`, :func:`candidate_args` and
:func:`write_mmsa_config` are also what the Ray Tune search (:mod:`khar_mmsa.tuning.ray_tune`) runs, so a
Ray trial trains and validates exactly like a candidate here.

=======================  ===========================================================================
module                   what it holds
=======================  ===========================================================================
:mod:`.grid`             the ``d_paras`` grid: axes, points, candidate keys, which to try next
:mod:`.candidate`        one candidate's args, its training and validation, the selected one's test
:mod:`.search`           the loop and the selection
:mod:`.table`            the tune CSV and the best checkpoint's marker
:mod:`.config_file`      the selected config as an MMSA-schema JSON
:mod:`.values`           grid values as JSON, CSV cells and plain numbers
=======================  ===========================================================================
"""
from khar_mmsa.tuning.candidate import (Candidate, EpochHook, attach_epoch_hook, base_tune_args,
                                                  candidate_args, candidate_features, score_on_test,
                                                  train_candidate, use_device, with_epoch_hook)
from khar_mmsa.tuning.config_file import RUNTIME_KEYS, write_mmsa_config
from khar_mmsa.tuning.grid import (candidate_key, grid_axes, grid_point, grid_size, hyperparameters,
                                             pick_candidates)
from khar_mmsa.tuning.search import select_and_test, tune_by_validation
from khar_mmsa.tuning.table import (CANDIDATE_FAILURES, UntrustedCandidateError, best_marker, best_valid,
                                              done_candidates, read_tune_csv)
from khar_mmsa.training.loop import LOWER_IS_BETTER
from khar_mmsa.training.seeding import seed_everything

__all__ = ["CANDIDATE_FAILURES", "Candidate", "EpochHook", "LOWER_IS_BETTER", "RUNTIME_KEYS", "attach_epoch_hook",
           "base_tune_args", "best_marker", "best_valid", "candidate_args", "candidate_features", "candidate_key",
           "done_candidates", "grid_axes", "grid_point", "grid_size", "hyperparameters", "pick_candidates", "read_tune_csv",
           "score_on_test", "seed_everything", "select_and_test", "train_candidate", "tune_by_validation",
           "UntrustedCandidateError", "use_device", "with_epoch_hook", "write_mmsa_config"]
