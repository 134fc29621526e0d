"""Every change khar-mmsa makes to MMSA 2.2.1, in one package, explicit and reversible.

:func:`register` (called when :mod:`khar_mmsa` is imported) replaces a fixed list of MMSA
attributes; each replacement is recorded as ``(object, attribute, original)`` and
:func:`unregister` puts every original back, in reverse order (:mod:`.registry`).
:func:`register` is idempotent.  No module of :mod:`khar_mmsa` outside this package touches MMSA
internals; the others reach MMSA through the helpers exported here (:func:`metrics_for`,
:func:`merged_config`, :func:`append_result_row`).

Import :mod:`khar_mmsa` *before* ``from MMSA import MMSA_run``: a name bound earlier keeps
pointing at MMSA's unpatched function.

What is patched, one module per MMSA behaviour (the numbered breakages are those of
``../shared/notes/mmsa-2.2.1.md``)
-------------------------------------------------------------------------------------------------
:mod:`.models`
    Model key ``'khar'``: ``AMIO.__init__`` / ``ATIO.__init__`` add it to ``MODEL_MAP`` /
    ``TRAIN_MAP`` (lazily resolved to ``KHaR`` / ``KHaRTrainer``); ``SUPPORTED_MODELS`` /
    ``SUPPORTED_DATASETS`` gain ``'KHaR'`` / ``'SIMSV2'``.
:mod:`.configs`
    ``get_config_regression`` / ``get_config_tune`` read MMSA's default JSON deep-merged with our
    ``mmsa_configs/`` overlay; ``MMSA_DATASET_ROOT`` replaces the default ``dataset_root_dir``.
:mod:`.datasets`
    Dataset key ``'simsv2'``: ``MMDataset`` loads it through MMSA's SIMS code path,
    ``MetricsTop`` scores it with MMSA's SIMS metrics.
:mod:`.cpu_fallback`
    ``MMSA.run.torch`` is a proxy whose ``cuda.set_device`` skips CPU devices, so ``gpu_ids=[0]``
    runs on the CPU without CUDA, with one warning (breakage 1).
:mod:`.lr_scheduler`
    ``ReduceLROnPlateau`` in MMSA's MulT, MMIM and TFR-Net trainers drops ``verbose=``
    (breakage 2).
:mod:`.log_handlers`
    ``MMSA.run._set_logger``: the two handlers each ``MMSA_run`` call adds are removed when that
    call returns (breakage 9).
:mod:`.checkpoints`
    ``MMSA.run._run``: one place owns a seed's checkpoint, resume state and saved config
    (:class:`~.checkpoints.SeedCheckpoint`): what an earlier run or seed left is removed before
    the seed trains, unless it is this very seed's resume state, which the trainer continues
    from; finished seeds' results are kept per run (:class:`~.checkpoints.RunState`) so a killed
    ``MMSA_run`` rerun identically does not train them again (breakage 10 and resume).  Training
    that writes no checkpoint raises :class:`MissingCheckpointError`.
:mod:`.tune`
    ``MMSA_run(..., is_tune=True)`` selects candidates by the validation KeyEval and scores only
    the selected config on the test split (MMSA scores every candidate on test); the tune CSV
    and the log say so; the selected config is written as an MMSA config file.
:mod:`.mmsa_run`
    ``MMSA_run``: 0 loader workers without CUDA unless ``num_workers`` is given (breakage 8);
    output folders made and checked writable before training (:mod:`.output_folders`); one
    plain-numbers row per call merged into ``<res_save_dir>/normal/<dataset>.csv`` under a file
    lock with an atomic replace (:mod:`.results_csv`, breakage 7); returns the row.  Private
    temporary folders of killed runs are swept (:mod:`.temp_files`).
:mod:`.mmsa_test`
    ``MMSA_test``: the CPU when CUDA is absent (breakage 11); the feature file read with the
    restricted unpickler and checked, for every model (``MMSA.run.pickle`` is the shim of
    :mod:`.loading`); ``MMSA_test('khar', weights, file)`` rebuilds KHaR from the checkpoint's
    saved config (:mod:`khar_mmsa.integration.predict`), for one sample or a whole feature pickle.
:mod:`.loading`
    ``MMSA.run.MMDataLoader`` first checks an extra model's settings (:func:`.models.check_config`),
    then reads each feature file once with the restricted unpickler (``khar_mmsa.io.safe_io``) and
    validates it (``khar_mmsa.data.validation``; ``feature_T/A/V`` files for their modality only)
    before any model is built; MMSA's ``MMDataset`` gets the loaded object through a ``pickle`` shim installed as
    ``MMSA.data_loader.pickle``.  :mod:`.update_epochs` warns when ``update_epochs`` exceeds the
    batches per epoch (breakage 3).

:mod:`.run_log`
    The logger ``_set_logger`` returns to ``MMSA_run`` (through :mod:`.log_handlers`): the args
    are logged as the run uses them (feature file read, ``seq_lens`` from the data, the folder
    ``pretrained`` resolves to) once the data is read, ``Result for seed`` in plain wrapped
    numbers, and only the real results CSV path.

Per-call state shared by these hooks lives in :mod:`.run_context`
(:func:`current_run_options` gives the trainer ``verbose_level`` and ``log_dir``).

Not patched (documented limits): MMSA's multi-task trainers (MTFN, MLMF, MLF_DNN) assert
``dataset_name == 'sims'``; ``MMDataLoader`` still shuffles valid and test (breakage 12); two
concurrent runs of the same model and dataset share ``<model>-<dataset>.pth`` in
``model_save_dir`` -- give each its own ``model_save_dir``.
"""
from khar_mmsa.integration.checkpoints import MissingCheckpointError, RunState, SeedCheckpoint
from khar_mmsa.integration.configs import (CONFIG_KINDS, DATASET_ROOT_ENV, ConfigOverlayMissingError, config_dir,
                      merged_config)
from khar_mmsa.integration.datasets import EXTRA_DATASETS, metrics_for
from khar_mmsa.integration.models import EXTRA_MODELS, EXTRA_TRAINERS, LazyClass
from khar_mmsa.integration.output_folders import MMSA_DEFAULT_FOLDERS, OutputFolderError
from khar_mmsa.integration.registry import is_registered, patched_attributes, register, unregister
from khar_mmsa.integration.results_csv import append_result_row, results_csv_path, summarize_results
from khar_mmsa.integration.run_context import current_run_options

__all__ = [
    "register", "unregister", "is_registered", "patched_attributes",
    "EXTRA_MODELS", "EXTRA_TRAINERS", "EXTRA_DATASETS", "DATASET_ROOT_ENV", "CONFIG_KINDS",
    "LazyClass", "MissingCheckpointError", "ConfigOverlayMissingError", "config_dir",
    "merged_config", "summarize_results", "append_result_row", "results_csv_path", "metrics_for",
    "SeedCheckpoint", "RunState", "OutputFolderError", "MMSA_DEFAULT_FOLDERS",
    "current_run_options",
]
