"""MMSA's default config files read with our overlay merged in (model ``'khar'``, ``'simsv2'``).

``get_config_regression`` / ``get_config_tune`` (in ``MMSA.config``, ``MMSA.run`` and ``MMSA``):
called with MMSA's default config (``''``, ``None`` or MMSA's own JSON path) they read MMSA's JSON
deep-merged with ours, ``<repo>/mmsa_configs/config_regression.json`` / ``config_tune.json``
(the ``'khar'`` model, the ``'simsv2'`` dataset and simsv2 parameters for TFN, MulT and Self-MM).
Any other path is a user's own file and is read as it is.  Environment variable
``MMSA_DATASET_ROOT``: when set, it replaces ``dataset_root_dir`` of the merged default config
(``featurePath`` is joined to it).  A user's own JSON keeps its own root.

The merged JSON is written to a private temporary folder (``khar-mmsa-<pid>-*``) removed by
:func:`remove_tmpdir` at :func:`~khar_mmsa.integration.unregister` and at interpreter exit, or by
:func:`khar_mmsa.integration.temp_files.sweep` after a kill.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

from khar_mmsa.integration.registry import REGISTRY_LOCK, mmsa_module, set_attr
from khar_mmsa.integration.temp_files import make_private_dir

DATASET_ROOT_ENV = "MMSA_DATASET_ROOT"
#: Folder holding our config overlays (editable install: beside the ``khar_mmsa`` package).
CONFIG_DIR: Path = Path(__file__).resolve().parents[2] / "mmsa_configs"
CONFIG_KINDS = ("regression", "tune")
_TMP = {"dir": None}  # private folder for merged config files


class ConfigOverlayMissingError(FileNotFoundError):
    """``mmsa_configs/`` (our config overlay) cannot be found beside the package."""


def patch() -> None:
    """Route MMSA's default config reads through :func:`merged_config`."""
    config = mmsa_module("MMSA.config")
    wrapped = {
        "get_config_regression": _wrap_get_config(config.get_config_regression, "regression"),
        "get_config_tune": _wrap_get_config(config.get_config_tune, "tune"),
    }
    for module in (config, mmsa_module("MMSA.run"), mmsa_module("MMSA")):
        for name, fn in wrapped.items():
            set_attr(module, name, fn)


def _wrap_get_config(original: Callable, kind: str) -> Callable:
    @functools.wraps(original)
    def get_config(model_name: str, dataset_name: str, config_file: Any = "", *args: Any,
                   **kwargs: Any) -> Any:
        if _is_mmsa_default_config(config_file, kind):
            config_file = _merged_config_file(kind)
        return original(model_name, dataset_name, config_file, *args, **kwargs)
    return get_config


def _mmsa_config_file(kind: str) -> Path:
    return Path(mmsa_module("MMSA.config").__file__).parent / "config" / f"config_{kind}.json"


def _is_mmsa_default_config(config_file: Any, kind: str) -> bool:
    if config_file is None or (isinstance(config_file, str) and config_file == ""):
        return True
    try:
        return Path(config_file).resolve() == _mmsa_config_file(kind).resolve()
    except (TypeError, OSError):
        return False


def config_dir() -> Path:
    """Our ``mmsa_configs`` folder; :class:`ConfigOverlayMissingError` when it is not there."""
    folder = Path(CONFIG_DIR)
    if not folder.is_dir():
        raise ConfigOverlayMissingError(
            f"khar-mmsa's MMSA config overlay folder {folder} is missing. It ships in the source "
            f"tree beside the khar_mmsa package: install with 'pip install -e <khar-mmsa repo>' "
            f"(editable), or pass your own complete config_file to MMSA.")
    return folder


def _deep_merge(base: Any, overlay: Any) -> Any:
    """``overlay`` over ``base``: dicts merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return overlay


def merged_config(kind: str = "regression") -> Dict[str, Any]:
    """MMSA's default JSON of ``kind`` ('regression' or 'tune') with our overlay merged in.

    ``MMSA_DATASET_ROOT``, when set, replaces ``datasetCommonParams.dataset_root_dir``.
    """
    if kind not in CONFIG_KINDS:
        raise ValueError(f"kind={kind!r}: one of {CONFIG_KINDS}")
    overlay_file = config_dir() / f"config_{kind}.json"
    if not overlay_file.is_file():
        raise ConfigOverlayMissingError(f"khar-mmsa's config overlay {overlay_file} is missing")
    base = json.loads(_mmsa_config_file(kind).read_text(encoding="utf-8"))
    merged = _deep_merge(base, json.loads(overlay_file.read_text(encoding="utf-8")))
    root = os.environ.get(DATASET_ROOT_ENV)
    if root:
        merged["datasetCommonParams"]["dataset_root_dir"] = root
    return merged


def _merged_config_file(kind: str) -> Path:
    """Write :func:`merged_config` to a private file named by its content hash; return it."""
    text = json.dumps(merged_config(kind), indent=1, sort_keys=True)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    path = _tmpdir() / f"config_{kind}-{digest}.json"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def _tmpdir() -> Path:
    with REGISTRY_LOCK:
        if _TMP["dir"] is None or not Path(_TMP["dir"]).is_dir():
            _TMP["dir"] = str(make_private_dir("khar-mmsa"))
        return Path(_TMP["dir"])


def remove_tmpdir() -> None:
    """Delete the private folder of merged config files (it is made again when needed)."""
    if _TMP["dir"] is not None:
        shutil.rmtree(_TMP["dir"], ignore_errors=True)
        _TMP["dir"] = None


atexit.register(remove_tmpdir)
