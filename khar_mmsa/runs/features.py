"""Feature files: read once with the restricted unpickler, checked, then handed to MMSA's loader.

:func:`load_features` reads every pickle MMSA's ``MMDataset`` will open for ``args`` -- the main
file (``custom_feature`` or ``featurePath``) and ``feature_T`` / ``feature_A`` / ``feature_V`` --
with :func:`khar_mmsa.io.pickles.load_pickle` (``trust_pickle`` allows a trusted file's code) and
validates each with :func:`khar_mmsa.data.validation.validate_features` (per-modality files for
their modality, with the main file's split sizes) before any model is built.

MMSA's ``MMDataset`` opens the files itself and calls ``pickle.load``.  Registration puts a
:class:`FeatureServer` in ``MMSA.data_loader`` as its ``pickle``: inside ``with
serving(features)`` a file that was read here is served from memory (matched by path, device,
inode, size and modification time); every other file -- MMSA's own models' through MMSA's own
``MMSA_run`` -- is read with ``pickle.load`` as MMSA reads it.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from khar_mmsa.mmsa_conventions import DATASET_ROOT_ENV, SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

_MODALITY_FILES = (("feature_T", "T"), ("feature_A", "A"), ("feature_V", "V"))
FileKey = Tuple[str, int, int, int, int]


class FeatureFileNotFoundError(FileNotFoundError):
    """A feature file a run is about to read does not exist."""


def feature_files(args: Mapping[str, Any]) -> List[Tuple[str, Optional[str]]]:
    """The pickles MMSA's ``MMDataset`` opens for ``args``, in order, each with its role: None for
    the main file (every key checked), ``'T'``/``'A'``/``'V'`` (or several letters) for the
    per-modality files, from which MMSA reads only that modality."""
    roles: Dict[str, Optional[str]] = {}
    main = args.get("custom_feature") or args.get("featurePath")
    if main:
        roles[str(main)] = None
    for key, letter in _MODALITY_FILES:
        path = args.get(key)
        if not path or (str(path) in roles and roles[str(path)] is None):
            continue
        roles[str(path)] = (roles.get(str(path)) or "") + letter
    return list(roles.items())


def file_key(path: Any) -> Optional[FileKey]:
    """What identifies an opened file here: resolved path, device, inode, size, mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def missing_feature_message(path: str, args: Mapping[str, Any]) -> str:
    """Which argument named ``path`` and the three ways to point MMSA at the data."""
    from khar_mmsa.registration.configs import merged_config
    keys = [k for k in ("custom_feature", "feature_T", "feature_A", "feature_V", "featurePath")
            if args.get(k) and str(args[k]) == str(path)]
    source = keys[0] if keys else "featurePath"
    dataset = args.get("dataset_name", "<dataset>")
    root = os.environ.get(DATASET_ROOT_ENV)
    how_root = (f"{DATASET_ROOT_ENV} is {root!r}" if root else
                f"{DATASET_ROOT_ENV} is not set, so MMSA's config names its authors' folder")
    try:
        block = merged_config("regression")["datasetCommonParams"][str(dataset)]
        default = block["aligned" if args.get("need_data_aligned") and "aligned" in block else "unaligned"]["featurePath"]
    except Exception:  # a dataset of a user's own config file: no default to show
        default = None
    return (f"{path}: feature file not found (from {source}). Point MMSA_run at the data in one of "
            f"three ways: set the environment variable {DATASET_ROOT_ENV} to your MMSA-Standard folder "
            f"(MMSA reads <root>/{default or '<featurePath>'} for {dataset!r}; {how_root}); pass "
            f"config={{'featurePath': '/path/to/file.pkl'}}; or pass custom_feature='/path/to/file.pkl'.")


def _split_sizes(data: Any) -> Optional[Dict[str, int]]:
    try:
        return {split: len(data[split]["regression_labels"]) for split in SPLITS}
    except (KeyError, TypeError, IndexError):
        return None


def load_features(args: Mapping[str, Any]) -> Dict[FileKey, Any]:
    """Read and validate every feature file of ``args`` once: ``{file key: loaded object}``."""
    from khar_mmsa.config import parse_bool
    from khar_mmsa.data.validation import main_file_ids, validate_features
    from khar_mmsa.io.pickles import load_pickle
    loaded: Dict[FileKey, Any] = {}
    samples = ids = None
    trusted = parse_bool("trust_pickle", args.get("trust_pickle", False))
    for path, role in feature_files(args):
        key = file_key(path)
        if key is None or not Path(path).is_file():
            raise FeatureFileNotFoundError(missing_feature_message(path, args))
        data = load_pickle(path, trusted=trusted)
        extra = {} if ids is None else {"ids": ids}  # per-modality files: the main file's clip ids
        validate_features(data, args, source=str(path), role=role, samples=samples, **extra)
        loaded[key] = data
        if role is None:
            samples = _split_sizes(data)
            ids = main_file_ids(data)  # same clips, same order
    return loaded


class FeatureServer:
    """``pickle`` as ``MMSA.data_loader`` sees it: ``load`` serves the files our runner is serving
    (read with the restricted unpickler and checked, :func:`load_features`); any other file -- MMSA's
    own models through MMSA's own ``MMSA_run`` -- is ``pickle.load`` as MMSA does it (a plug-in
    adds; it does not change how MMSA reads its users' files).  Every other attribute is the real
    module's."""

    def __init__(self, pickle_module: Any) -> None:
        self._pickle = pickle_module
        self._served: Dict[FileKey, List[Any]] = {}  # key -> [object, number of open serving blocks]
        self._lock = threading.Lock()

    def load(self, file: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(file, "name", None)
        if isinstance(name, (str, os.PathLike)) and self._served:
            key = file_key(name)
            with self._lock:
                if key in self._served:
                    return self._served[key][0]
        return self._pickle.load(file, *args, **kwargs)

    @contextmanager
    def serving(self, features: Mapping[FileKey, Any]) -> Iterator[None]:
        with self._lock:
            for key, data in features.items():
                self._served.setdefault(key, [data, 0])[1] += 1
        try:
            yield
        finally:
            with self._lock:
                for key in features:
                    entry = self._served[key]
                    entry[1] -= 1
                    if entry[1] == 0:
                        del self._served[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pickle, name)


@contextmanager
def serving(features: Mapping[FileKey, Any]) -> Iterator[None]:
    """Within the block, MMSA's ``MMDataset`` gets ``features`` instead of reading the files."""
    import importlib
    server = importlib.import_module("MMSA.data_loader").pickle
    if not isinstance(server, FeatureServer):
        raise RuntimeError("khar_mmsa is not registered with MMSA (call khar_mmsa.register())")
    with server.serving(features):
        yield


def make_loaders(args: Any, features: Mapping[FileKey, Any], num_workers: int) -> Dict[str, Any]:
    """MMSA's ``MMDataLoader`` on already-read ``features`` (fills ``seq_lens``/``feature_dims``)."""
    import importlib
    loader = importlib.import_module("MMSA.data_loader").MMDataLoader
    with serving(features):
        return loader(args, num_workers)
