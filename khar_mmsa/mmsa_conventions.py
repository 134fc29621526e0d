"""MMSA 2.2.1's conventions that khar-mmsa follows, written once.

Nothing here imports MMSA: these are the facts of its file format and of ``MMSA_run``'s defaults
(``MMSA/run.py``, ``MMSA/data_loader.py``, ``MMSA/config/config_regression.json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

#: The splits of an MMSA feature pickle, in MMSA's order.
SPLITS = ("train", "valid", "test")
#: ``MMSA_run``'s default seeds.
MMSA_DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
#: ``MMSA_run``'s default output folders, relative to the home folder.
MMSA_DEFAULT_FOLDERS: Dict[str, Path] = {"model_save_dir": Path("MMSA") / "saved_models",
                                         "res_save_dir": Path("MMSA") / "results",
                                         "log_dir": Path("MMSA") / "logs"}
#: The environment variable that replaces ``dataset_root_dir`` of the default config (khar-mmsa's
#: addition; MMSA's own config names its authors' folder).
DATASET_ROOT_ENV = "MMSA_DATASET_ROOT"


def default_folder(key: str) -> Path:
    """``MMSA_run``'s default folder for ``key`` (``model_save_dir``, ``res_save_dir`` or ``log_dir``)."""
    return Path.home() / MMSA_DEFAULT_FOLDERS[key]
