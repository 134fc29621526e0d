"""What a run shows a person: its log file and format (:mod:`.run_log`, :mod:`.log_format`), progress
bars (:mod:`.progress`) and training curves (:mod:`.curves`)."""
