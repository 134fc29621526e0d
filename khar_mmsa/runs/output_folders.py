"""``MMSA_run``'s output folders are made and checked writable before anything trains.

MMSA creates ``model_save_dir``, ``res_save_dir`` and ``log_dir`` as it goes and finds an
unwritable one only when it first writes there -- for the results CSV, after training.  The
runner calls :func:`check_output_folders` first: each folder is created if needed
and a temporary file is written into it; a failure is one :class:`OutputFolderError` naming the
config key and the folder.  MMSA's defaults (used when a key is not given) are
:data:`MMSA_DEFAULT_FOLDERS` under the home folder.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping

from khar_mmsa.mmsa_conventions import MMSA_DEFAULT_FOLDERS, default_folder



class OutputFolderError(OSError):
    """An output folder of ``MMSA_run`` cannot be created or written."""


def output_folder(call: Mapping[str, Any], key: str) -> Path:
    """The folder ``MMSA_run`` uses for ``key`` (MMSA's default when the value is None)."""
    value = call.get(key)
    return Path(value) if value is not None else default_folder(key)


def check_output_folders(call: Mapping[str, Any]) -> Dict[str, Path]:
    """Create every output folder of an ``MMSA_run`` call and write a test file into it; return
    ``{key: folder}`` (MMSA's defaults for keys that are None)."""
    folders: Dict[str, Path] = {}
    for key in MMSA_DEFAULT_FOLDERS:
        folder = output_folder(call, key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise OutputFolderError(
                f"MMSA_run {key}={str(folder)!r}: the folder cannot be created or written to "
                f"({type(exc).__name__}: {exc.strerror or exc}). Pass a writable folder as "
                f"{key}=...; nothing was trained.") from exc
        folders[key] = folder
    return folders
