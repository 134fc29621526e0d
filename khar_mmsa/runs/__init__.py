"""One ``MMSA_run`` call, top to bottom, and the files it keeps.

``MMSA_run('khar', ...)`` (after ``import khar_mmsa``), ``khar_mmsa.run(...)``, the command line and
the sweeps all reach :func:`.runner.run`; only the runner, the model-and-trainer builder, the feature
server and the device choice touch MMSA here (the results tables, the seeds state, the output folders
and the file checks are plain files).

=========================  =========================================================================
module                     what it holds
=========================  =========================================================================
:mod:`.runner`             :func:`~.runner.run`: seeds, config, checks, device, features, seed loop,
                           results
:mod:`.model_and_trainer`  the model and trainer of one seed, named (KHaR, KHaRTrainer; MMSA's own),
                           and the one conversion of MMSA's args into KHaR's typed config
:mod:`.features`           feature files read once, safely, validated, handed to MMSA's loader
:mod:`.devices`            the device a run uses; the CPU-thread hint
:mod:`.run_files`          every file a run will write, checked before any data is read
:mod:`.run_metrics`        the metrics a run reports, known before any work (KeyEval, headers)
:mod:`.output_folders`     output folders made and checked writable before training
:mod:`.run_state`          finished seeds of a killed run, so a rerun does not train them again
:mod:`.results_files`      MMSA's results table and the numeric table beside it
=========================  =========================================================================
"""
