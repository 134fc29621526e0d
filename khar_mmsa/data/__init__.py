"""Dataset builders: MMSA-format feature pickles.

* :mod:`khar_mmsa.data.planted` — synthetic data with real shapes and a known, planted signal
  (and its noise floor) for tests and benchmarks.
* :mod:`khar_mmsa.data.transcripts` — real transcripts (e.g. CMU-MOSI's ``label.csv``) encoded
  with a local BERT, audio and vision marked absent.
"""
from .planted import DATASET_SPECS, PlantedInfo, make_planted_dataset, noise_floor_mae, planted_data
from .transcripts import (TranscriptInfo, absent_modalities, build_transcript_dataset,
                          read_label_csv)

__all__ = ["DATASET_SPECS", "PlantedInfo", "make_planted_dataset", "planted_data", "noise_floor_mae",
           "TranscriptInfo", "build_transcript_dataset", "read_label_csv", "absent_modalities"]
