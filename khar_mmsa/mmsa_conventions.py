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
#: Seeds are whole numbers in ``[0, SEED_LIMIT)``: MMSA's ``setup_seed`` hands each to
#: ``np.random.seed``, which takes 32 bits (``-1`` is refused by numpy, and ``2**32 - 1 + k`` would
#: have to be folded onto a seed that is already used: ``-1`` and ``4294967295`` would be one seed).
SEED_LIMIT = 2**32


class SeedError(ValueError):
    """The seeds of a run are not a list of distinct integers in ``[0, 2**32)``."""


def check_seed(seed: object, where: str = "seed") -> int:
    """``seed`` if it is an integer (not a bool) in ``[0, SEED_LIMIT)``, else :class:`SeedError`
    naming ``where`` (``seeds=[...]``, ``-s``) and the value; every door a seed enters by calls it."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SeedError(f"{where}: {seed!r} is not an integer")
    if not 0 <= seed < SEED_LIMIT:
        raise SeedError(f"{where}: seed {seed} is outside [0, 2**32) = [0, {SEED_LIMIT - 1}], the seeds numpy "
                        f"(MMSA's setup_seed) takes")
    return seed
