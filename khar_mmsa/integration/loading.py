"""Feature files are read with the restricted unpickler and validated before any model is built.

``MMSA.run.MMDataLoader`` first checks an extra model's settings (:func:`.models.check_config`:
``'khar'``'s KHaRConfig, every key named with its value and allowed range), so a bad setting fails
before any file is read.  It then reads each feature file once per ``MMSA_run`` call with
``khar_mmsa.io.safe_io.load_pickle(path, trusted=args.get('trust_pickle', False))`` and checks it
with ``khar_mmsa.data.validation.validate_features`` before any model is built; MMSA's ``MMDataset``
then gets the already-loaded object from a ``pickle`` shim installed as
``MMSA.data_loader.pickle``.  Both modules are imported lazily; if one is absent the hook falls
back to plain ``pickle`` / no validation.  ``feature_T`` / ``feature_A`` / ``feature_V`` files
are validated for their modality only (``role``), and must hold as many samples per split as the
main file.  After loading, :mod:`khar_mmsa.integration.update_epochs`
warns about an ``update_epochs`` larger than the batches per epoch.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from khar_mmsa.config import parse_bool
from khar_mmsa.integration.configs import DATASET_ROOT_ENV, merged_config
from khar_mmsa.integration.models import check_config
from khar_mmsa.integration.registry import mmsa_module, set_attr
from khar_mmsa.integration.run_context import TLS, current_run
from khar_mmsa.integration.run_log import log_run_args
from khar_mmsa.integration.update_epochs import warn_update_epochs

logger = logging.getLogger("MMSA")


def patch() -> None:
    """Install the ``pickle`` shim in ``MMSA.data_loader`` and wrap ``MMSA.run.MMDataLoader``."""
    run, data_loader = mmsa_module("MMSA.run"), mmsa_module("MMSA.data_loader")
    set_attr(data_loader, "pickle", PickleShim())
    set_attr(run, "MMDataLoader", _wrap_loader(run.MMDataLoader))


def _optional_module(name: str) -> Optional[Any]:
    """``import name``, or None when that very module does not exist (other errors propagate)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


_MODALITY_FILES = (("feature_T", "T"), ("feature_A", "A"), ("feature_V", "V"))


def _feature_files(args: Mapping[str, Any]) -> List[Tuple[str, Optional[str]]]:
    """The pickle files MMSA's ``MMDataset`` will open for ``args``, in order, deduplicated, each
    with its role for validation: None for the main file (``custom_feature`` or ``featurePath``:
    every key), ``'T'``/``'A'``/``'V'`` for ``feature_T``/``feature_A``/``feature_V``, from which
    MMSA 2.2.1 reads only that modality's array (and its ``*_lengths``).  One file in several
    per-modality roles gets them all (``'AV'``); the main file's full check covers any role."""
    roles: Dict[str, Optional[str]] = {}
    main = args.get("custom_feature") or args.get("featurePath")
    if main:
        roles[str(main)] = None
    for key, letter in _MODALITY_FILES:
        path = args.get(key)
        if not path:
            continue
        path = str(path)
        if path in roles and roles[path] is None:
            continue
        roles[path] = (roles.get(path) or "") + letter
    return list(roles.items())


def _split_sizes(data: Any) -> Optional[Dict[str, int]]:
    """{split: samples} of a main feature file (what per-modality files must match), or None."""
    try:
        return {split: len(data[split]["regression_labels"]) for split in ("train", "valid", "test")}
    except (KeyError, TypeError, IndexError):
        return None


def _main_ids(data: Any) -> Optional[Dict[str, Any]]:
    """{split: clip ids} of the main feature file (per-modality files must match them)."""
    validation = _optional_module("khar_mmsa.data.validation")
    return None if validation is None else validation.main_file_ids(data)


def _file_key(path: str) -> Tuple[str, int, int]:
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except OSError:
        return str(resolved), -1, -1
    return str(resolved), st.st_mtime_ns, st.st_size


class FeatureFileNotFoundError(FileNotFoundError):
    """A feature file ``MMSA_run`` is about to read does not exist."""


def missing_feature_message(path: str, args: Mapping[str, Any]) -> str:
    """Which argument named ``path`` and the three ways to point MMSA at the data."""
    keys = [k for k in ("custom_feature", "feature_T", "feature_A", "feature_V", "featurePath")
            if args.get(k) and str(args[k]) == str(path)]
    source = keys[0] if keys else "featurePath"
    dataset = args.get("dataset_name", "<dataset>")
    root = os.environ.get(DATASET_ROOT_ENV)
    how_root = (f"{DATASET_ROOT_ENV} is {root!r}" if root else f"{DATASET_ROOT_ENV} is not set, so MMSA's "
                f"config names its authors' folder")
    default = _default_feature_path(args)
    return (f"{path}: feature file not found (from {source}). Point MMSA_run at the data in one of "
            f"three ways: set the environment variable {DATASET_ROOT_ENV} to your MMSA-Standard folder "
            f"(MMSA reads <root>/{default or '<featurePath>'} for {dataset!r}; {how_root}); pass "
            f"config={{'featurePath': '/path/to/file.pkl'}}; or pass custom_feature='/path/to/file.pkl'.")


def _default_feature_path(args: Mapping[str, Any]) -> Optional[str]:
    """The ``featurePath`` below the dataset root in the merged default config, or None."""
    try:
        block = merged_config("regression")["datasetCommonParams"][str(args.get("dataset_name"))]
        return block["aligned" if args.get("need_data_aligned") else "unaligned"]["featurePath"]
    except Exception:  # a user's own config file: no default to show
        return None


def _load_and_validate(path: str, args: Mapping[str, Any], role: Optional[str] = None,
                       samples: Optional[Dict[str, int]] = None, ids: Optional[Dict[str, Any]] = None) -> Any:
    """Read ``path`` with the restricted unpickler and validate it for its ``role`` (hooks of
    other modules); ``samples`` are the main file's split sizes."""
    if not Path(path).is_file():
        raise FeatureFileNotFoundError(missing_feature_message(path, args))
    safe_io = _optional_module("khar_mmsa.io.safe_io")
    if safe_io is not None:
        data = safe_io.load_pickle(path, trusted=parse_bool("trust_pickle", args.get("trust_pickle", False)))
    else:
        logger.debug("khar_mmsa.io.safe_io is absent: plain pickle for %s", path)
        with open(path, "rb") as f:
            data = pickle.load(f)
    validation = _optional_module("khar_mmsa.data.validation")
    if validation is not None:
        validation.validate_features(data, args, source=str(path), role=role, samples=samples, ids=ids)
    return data


class preloaded_features:
    """Within the block, ``MMSA.data_loader.pickle.load`` returns already-loaded objects.

    Files are read and validated once per cache: the running ``MMSA_run`` call's when there is
    one, else a cache local to the block.  A block nested in another reuses its objects.
    """

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.args = args
        self.previous: Optional[Dict[str, Any]] = None

    def __enter__(self) -> Dict[str, Any]:
        self.previous = getattr(TLS, "preloaded", None)
        ctx = current_run()
        cache = ctx.features if ctx is not None else {}
        preloaded = dict(self.previous or {})
        samples = ids = None
        for path, role in _feature_files(self.args):
            key = _file_key(path)
            if key[0] not in preloaded:
                if key not in cache:
                    cache[key] = _load_and_validate(path, self.args, role, samples, ids)
                preloaded[key[0]] = cache[key]
            if role is None:
                samples = _split_sizes(preloaded[key[0]])
                ids = _main_ids(preloaded[key[0]])
        TLS.preloaded = preloaded
        return preloaded

    def __exit__(self, *exc: Any) -> None:
        TLS.preloaded = self.previous


class preloaded_objects:
    """Within the block, the ``pickle`` shims return ``objects`` ({path: loaded object})."""

    def __init__(self, objects: Mapping[Any, Any]) -> None:
        self.objects = {str(Path(p).resolve()): obj for p, obj in objects.items()}
        self.previous: Optional[Dict[str, Any]] = None

    def __enter__(self) -> Dict[str, Any]:
        self.previous = getattr(TLS, "preloaded", None)
        TLS.preloaded = dict(self.previous or {}, **self.objects)
        return TLS.preloaded

    def __exit__(self, *exc: Any) -> None:
        TLS.preloaded = self.previous


class PickleShim:
    """``pickle`` as ``MMSA.data_loader`` sees it: ``load`` serves pre-loaded feature files.

    A file that was not pre-loaded is read with the restricted unpickler (plain ``pickle`` if
    ``khar_mmsa.io.safe_io`` is absent).  Every other attribute is the real :mod:`pickle`'s.
    """

    def load(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(file, "name", None)
        preloaded = getattr(TLS, "preloaded", None) or {}
        if isinstance(name, (str, os.PathLike)):
            key = str(Path(name).resolve())
            if key in preloaded:
                return preloaded[key]
        safe_io = _optional_module("khar_mmsa.io.safe_io")
        if safe_io is None:
            return pickle.load(file, *args, **kwargs)
        return safe_io.load_pickle_stream(file, trusted=False, source=str(name))

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


def _wrap_loader(original: Callable) -> Callable:
    @functools.wraps(original)
    def MMDataLoader(args: Any, num_workers: int) -> Dict[str, Any]:
        check_config(args)  # settings first: nothing is read or built with a bad one
        with preloaded_features(args):
            loaders = original(args, num_workers)
        ctx = current_run()
        if ctx is not None and not ctx.is_tune:
            log_run_args(args)  # now seq_lens / feature_dims are the data's
        warn_update_epochs(args, loaders)
        return loaders
    return MMDataLoader
