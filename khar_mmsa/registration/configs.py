"""MMSA's default config files with khar-mmsa's entries added: model ``'khar'``, dataset ``'simsv2'``.

Our entries ship inside the wheel as the package ``khar_mmsa.mmsa_configs`` (the source is the
top-level ``mmsa_configs/`` folder, read directly when khar_mmsa is imported from a source checkout,
so that a checkout on ``PYTHONPATH`` or a second worktree reads its own files): ``config_regression.json`` and ``config_tune.json`` hold only
what MMSA's own files lack -- the ``'khar'`` model (the paper's Table 5), the ``'simsv2'`` dataset
and simsv2 parameters for TFN, MulT and Self-MM.  :func:`merged_config` reads MMSA's JSON and
deep-merges ours over it, in memory; nothing is written to disk.

:func:`config_for` is MMSA's ``get_config_regression`` / ``get_config_tune`` on that merged
dictionary (same keys, same ``EasyDict``); a user's own ``config_file`` is read by MMSA's getter
as it is, after :func:`check_config_file` made sure it holds what the getter reads (a file that
is not JSON, or lacks the model's or the dataset's block, is one :class:`ConfigFileError` naming
the file, not MMSA's ``JSONDecodeError`` / ``KeyError``).  Environment variable ``MMSA_DATASET_ROOT``: when set, it replaces
``dataset_root_dir`` of the merged default config.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional

from khar_mmsa.io.identity import source_tree_configs
from khar_mmsa.mmsa_conventions import DATASET_ROOT_ENV

CONFIG_KINDS = ("regression", "tune")
#: The package our JSON files ship in (the top-level ``mmsa_configs/`` folder of the source tree).
CONFIG_PACKAGE = "khar_mmsa.mmsa_configs"


class ConfigOverlayMissingError(FileNotFoundError):
    """khar-mmsa's config JSON is not installed (a broken installation)."""


def mmsa_config_file(kind: str) -> Path:
    """MMSA's own default JSON of ``kind``."""
    return Path(importlib.import_module("MMSA.config").__file__).parent / "config" / f"config_{kind}.json"


def installed_mmsa_config_file(kind: str) -> Optional[Path]:
    """MMSA's own default JSON of ``kind`` found without importing MMSA (``importlib.util.find_spec``:
    the command line's ``--help`` lists its keys cheaply); None when MMSA is not installed."""
    import importlib.util
    spec = importlib.util.find_spec("MMSA")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "config" / f"config_{kind}.json"


def overlay(kind: str) -> Dict[str, Any]:
    """Our JSON of ``kind`` ('regression' or 'tune'): from the source checkout khar_mmsa was
    imported from, else from the installed package."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"kind={kind!r}: one of {CONFIG_KINDS}")
    folder = source_tree_configs()
    if folder is not None:
        return json.loads((folder / f"config_{kind}.json").read_text(encoding="utf-8"))
    try:
        text = resources.files(CONFIG_PACKAGE).joinpath(f"config_{kind}.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ConfigOverlayMissingError(
            f"khar-mmsa's config_{kind}.json is missing from the package {CONFIG_PACKAGE} "
            f"({type(exc).__name__}: {exc}); reinstall khar-mmsa") from exc
    return json.loads(text)


def _deep_merge(base: Any, extra: Any) -> Any:
    """``extra`` over ``base``: dicts merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return extra


def merged_config(kind: str = "regression") -> Dict[str, Any]:
    """MMSA's default JSON of ``kind`` with ours merged in; ``MMSA_DATASET_ROOT`` applied."""
    base = json.loads(mmsa_config_file(kind).read_text(encoding="utf-8"))
    merged = _deep_merge(base, overlay(kind))
    root = os.environ.get(DATASET_ROOT_ENV)
    if root:
        merged["datasetCommonParams"]["dataset_root_dir"] = root
    return merged


def is_default_config_file(config_file: Any, kind: str) -> bool:
    """True for MMSA's "use the default" spellings: None, '' or the path of MMSA's own JSON."""
    if config_file is None or (isinstance(config_file, str) and config_file == ""):
        return True
    try:
        return Path(config_file).resolve() == mmsa_config_file(kind).resolve()
    except (TypeError, OSError):
        return False


def knows(model_name: str, dataset_name: str, kind: str = "regression") -> bool:
    """Whether MMSA's own default JSON has this model and dataset (else only ours has)."""
    base = json.loads(mmsa_config_file(kind).read_text(encoding="utf-8"))
    return model_name in base and dataset_name in base.get(model_name, {}).get("datasetParams", {}) \
        and dataset_name in base["datasetCommonParams"]


class ConfigFileError(ValueError):
    """A user's ``config_file`` (``-c``) that MMSA's getter could not read: one line naming the file."""


def _block(path: Path, parent: Any, key: str, where: str) -> Dict[str, Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, dict):
        found = "is missing" if not isinstance(parent, dict) or key not in parent else \
            f"is {type(value).__name__}, not an object"
        raise ConfigFileError(f"{path}: config file: {where}{key!r} {found} (MMSA's schema: see "
                              f"{mmsa_config_file('regression').name} in MMSA's config folder)")
    return value


def check_config_file(config_file: Any, model_name: str, dataset_name: str, kind: str = "regression") -> None:
    """Raise :class:`ConfigFileError` (one line naming the file) unless ``config_file`` is a UTF-8
    JSON object holding what MMSA's ``get_config_<kind>`` reads for this model and dataset:
    ``<model>.commonParams`` (with ``need_data_aligned``), ``<model>.datasetParams.<dataset>``
    (regression; tune: ``<model>.debugParams`` with ``d_paras``), and
    ``datasetCommonParams`` with ``dataset_root_dir`` and ``<dataset>.unaligned`` (or ``aligned``)
    holding ``featurePath``."""
    path = Path(config_file)
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: config file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}: config file is not valid JSON ({exc.msg} at line {exc.lineno} "
                              f"column {exc.colno})") from None
    if not isinstance(config, dict):
        raise ConfigFileError(f"{path}: config file holds a JSON {type(config).__name__}, not an object "
                              f"of models and 'datasetCommonParams'")
    model = _block(path, config, model_name, "model ")
    common = _block(path, model, "commonParams", f"{model_name}.")
    if "need_data_aligned" not in common:
        raise ConfigFileError(f"{path}: config file: {model_name}.commonParams lacks 'need_data_aligned'")
    if kind == "tune":
        debug = _block(path, model, "debugParams", f"{model_name}.")
        if not isinstance(debug.get("d_paras"), list):
            raise ConfigFileError(f"{path}: config file: {model_name}.debugParams lacks the 'd_paras' list")
    else:
        _block(path, _block(path, model, "datasetParams", f"{model_name}."), dataset_name,
               f"{model_name}.datasetParams.")
    datasets = _block(path, config, "datasetCommonParams", "")
    if "dataset_root_dir" not in datasets:
        raise ConfigFileError(f"{path}: config file: 'datasetCommonParams' lacks 'dataset_root_dir'")
    block = _block(path, datasets, dataset_name, "datasetCommonParams.")
    variant = "aligned" if common["need_data_aligned"] and "aligned" in block else "unaligned"
    if "featurePath" not in _block(path, block, variant, f"datasetCommonParams.{dataset_name}."):
        raise ConfigFileError(f"{path}: config file: datasetCommonParams.{dataset_name}.{variant} lacks "
                              f"'featurePath'")


def config_for(model_name: str, dataset_name: str, kind: str = "regression",
               config_file: Optional[Any] = None, random_choice: bool = True) -> Any:
    """MMSA's config getter of ``kind`` for one model and dataset.

    The default config is :func:`merged_config`, read exactly as MMSA's getter reads its JSON; a
    user's ``config_file`` goes to MMSA's getter unchanged."""
    getters = importlib.import_module("MMSA.config")
    original = getattr(getters, f"get_config_{kind}")
    original = getattr(original, "__wrapped__", original)
    if not is_default_config_file(config_file, kind):
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config_file {config_file}: no such file")
        check_config_file(config_file, model_name, dataset_name, kind)
        if kind == "tune":
            return original(model_name, dataset_name, str(config_file), random_choice=random_choice)
        return original(model_name, dataset_name, str(config_file))
    return _config_from_dict(merged_config(kind), model_name, dataset_name, kind, random_choice)


def _config_from_dict(config_all: Dict[str, Any], model_name: str, dataset_name: str, kind: str,
                      random_choice: bool) -> Any:
    """MMSA 2.2.1's ``get_config_regression`` / ``get_config_tune`` body, on a dictionary."""
    import random

    from easydict import EasyDict
    config_all = copy.deepcopy(config_all)
    if model_name not in config_all:
        raise KeyError(f"model {model_name!r} is in neither MMSA's nor khar-mmsa's config_{kind}.json")
    model_common = config_all[model_name]["commonParams"]
    datasets = config_all[model_name].get("datasetParams", {})
    if kind == "regression" and dataset_name not in datasets:
        raise KeyError(f"model {model_name!r} has no parameters for dataset {dataset_name!r} in "
                       f"config_{kind}.json")
    model_dataset = datasets.get(dataset_name, {})
    dataset_args = config_all["datasetCommonParams"][dataset_name]
    if model_common["need_data_aligned"] and "aligned" in dataset_args:
        dataset_args = dataset_args["aligned"]
    else:
        dataset_args = dataset_args["unaligned"]
    config: Dict[str, Any] = {"model_name": model_name, "dataset_name": dataset_name}
    config.update(dataset_args)
    config.update(model_common)
    config.update(model_dataset)
    if kind == "tune":
        debug = config_all[model_name]["debugParams"]
        if random_choice:
            for item in debug["d_paras"]:
                if isinstance(debug[item], list):
                    debug[item] = random.choice(debug[item])
                elif isinstance(debug[item], dict):
                    for k, v in debug[item].items():
                        if isinstance(v, list):
                            debug[item][k] = random.choice(v)
        config.update(debug)
    config["featurePath"] = os.path.join(config_all["datasetCommonParams"]["dataset_root_dir"],
                                         config["featurePath"])
    return EasyDict(config)
