"""Dataset builders: MMSA-format feature pickles.

* :mod:`khar_mmsa.data.planted` — synthetic data with real shapes and a known, planted signal
  (and its noise floor) for tests and benchmarks
  (``python -m khar_mmsa.data.planted --help``).
* :mod:`khar_mmsa.data.transcripts` — real transcripts (e.g. CMU-MOSI's ``label.csv``) encoded
  with a local BERT, audio and vision marked absent (``python -m khar_mmsa.data.transcripts --help``).
* :mod:`khar_mmsa.data.validation` — the check of a feature pickle before any model sees it
  (:mod:`.feature_keys`: which keys it must hold; :mod:`.value_checks`: its values).
* :mod:`khar_mmsa.data.bucketing` — batches of similar clip lengths.

The names below are imported on first use (PEP 562), so that ``python -m khar_mmsa.data.planted``
does not find its own module already imported by this package (runpy's RuntimeWarning).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATASET_SPECS": "planted", "PlantedInfo": "planted", "make_planted_dataset": "planted",
    "planted_data": "planted", "noise_floor_mae": "planted",
    "TranscriptInfo": "transcripts", "build_transcript_dataset": "transcripts",
    "read_label_csv": "transcripts", "absent_modalities": "transcripts",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
