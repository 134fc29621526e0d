"""Model and dataset names that may become parts of file names.

MMSA builds paths from them (``<log_dir>/<model>-<dataset>.log``, ``<model>-<dataset>.pth``,
``<res_save_dir>/normal/<dataset>.csv``), so a name like ``x/../../../outside/pwn`` would write
outside the folders the user gave.  :func:`check_run_names` is called by every entry point --
``MMSA_run`` (any model), ``MMSA_test``, ``khar_mmsa.run``, the command line and sweeps -- before
anything is written: a name is letters, digits, ``_``, ``-`` and ``.`` starting with a letter or
digit (:data:`SAFE_NAME`, matched whole), without ``..`` inside.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["SAFE_NAME", "UnsafeNameError", "check_name", "check_run_names"]

#: What a model or dataset name may be: one path component of safe characters that starts with a
#: letter or digit (so never ``.`` or ``..``), matched whole (:func:`re.fullmatch`: no trailing
#: newline slips through as it does past ``$``).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The longest name accepted (a path component of most file systems is at most 255 bytes, and
#: the name is joined with others into one file name).
MAX_NAME_CHARS = 100


class UnsafeNameError(ValueError):
    """A model or dataset name that could not be used as part of a file name."""


def check_name(value: Any, what: str) -> str:
    """``value`` as a string if it is a safe name (see the module docstring), else
    :class:`UnsafeNameError` naming ``what`` (e.g. ``'dataset_name'``) and the value."""
    text = str(value) if isinstance(value, str) else None
    if text is None or not SAFE_NAME.fullmatch(text) or ".." in text or len(text) > MAX_NAME_CHARS:
        raise UnsafeNameError(
            f"{what}={value!r} is not a model or dataset name: a name is 1 to {MAX_NAME_CHARS} letters, "
            f"digits, '_', '-' or '.', starting with a letter or digit, without '..' (it becomes part of "
            f"file names); nothing was written.")
    return text


def check_run_names(model_name: Any, dataset_name: Any) -> None:
    """Both names of a run (see :func:`check_name`)."""
    check_name(model_name, "model_name")
    check_name(dataset_name, "dataset_name")
