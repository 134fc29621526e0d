"""One loader per kind of state file khar-mmsa reads back, and :func:`set_aside` for damaged ones.

State files are what a run leaves for the next one: checkpoints and their ``.pth.json`` config,
the per-run seeds file, the adapter cache (the sweep manifest and the tune table are read by their
owners, :mod:`khar_mmsa.experiments.sweep.manifest` and :mod:`khar_mmsa.tuning.table`, with the
JSON checks of this module).  Each loader here reads one kind, checks what is inside (readable at all, the top-level
type, required and unknown keys, the type of every value) and raises one :class:`StateFileError`
naming the file and what is wrong -- never a bare ``JSONDecodeError``, ``KeyError`` or PyTorch's
"failed finding central directory".  A file that is merely absent raises
:class:`FileNotFoundError`.

A caller whose work the file only records (a finished seed, a cached pretraining, a finished
sweep run) should not stop on a damaged file: :func:`set_aside` renames it to
``<name>.damaged-<k>`` (kept for inspection, named in the log) and the work is done again -- only
when khar-mmsa wrote it (:func:`written_by_us`: our JSON and PyTorch state files carry
``"written_by": "khar-mmsa <kind>"`` as their first key, found even in a cut copy); any other file
at that place is a :class:`ForeignFileError` naming it, and stays untouched.

Loaders: :func:`load_checkpoint`, :func:`load_checkpoint_config`, :func:`load_seeds_file`,
:func:`load_adapter_cache`; the checks they share: :func:`read_json`, :func:`parse_json`,
:func:`check_object`, :func:`kind`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from khar_mmsa.config.fields import MODALITIES

logger = logging.getLogger(f"MMSA.{__name__}")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["StateFileError", "ForeignFileError", "WRITTEN_BY", "written_by_us", "GUARD_FIELDS", "guard_settings",
           "set_aside", "load_checkpoint", "load_checkpoint_config", "load_seeds_file", "load_adapter_cache",
           "read_json", "parse_json", "check_object", "kind", "MARKER_KEY", "PathLike"]

_CHECKPOINT_CONFIG_KEYS = {"model_name": str, "dataset_name": str, "config": dict}
#: KHaRConfig settings that bound what a run may allocate.  They come from the user's call or
#: config, never from a file we read back: a checkpoint's ``.pth.json`` saying
#: ``max_model_memory_gib=1e9`` must not lift the memory check of the network it describes.
GUARD_FIELDS = ("max_model_memory_gib",)
_SEEDS_KEYS = {"key": str, "results": dict}
_ADAPTER_KEYS = {"fingerprint": str, "states": dict, "labels": dict, "config": dict}
#: The marker key of our state files (optional when read: files written before it lack it).
MARKER_KEY = {"written_by": str}


class StateFileError(ValueError):
    """A state file cannot be used: ``"<path>: <what is wrong>"`` (attributes ``path``,
    ``problem``)."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path, self.problem = Path(path), problem.rstrip(".")
        super().__init__(f"{self.path}: {self.problem}.")


#: The value of the ``written_by`` key every JSON and PyTorch state file of ours carries first,
#: so that even a cut copy is known as ours (:func:`written_by_us`).
WRITTEN_BY = "khar-mmsa"
#: How much of a file's start :func:`written_by_us` reads: the marker is the first key, within the
#: first hundred bytes of a JSON file and of a PyTorch zip (its ``data.pkl`` entry comes first).
MARKER_WINDOW_BYTES = 512
_MARKER = re.compile(rb'^(\{\s*"written_by":\s*"%s|PK\x03\x04.{0,400}written_by.{0,16}%s)'
                     % (re.escape(WRITTEN_BY.encode()), re.escape(WRITTEN_BY.encode())), re.S)
#: The columns that make a CSV the tune table of ours (integration/tune.py writes both).
_TUNE_TABLE_COLUMNS = (b"candidate", b"selected_by")


def written_by_us(path: PathLike) -> bool:
    """Whether ``path`` is a state file khar-mmsa wrote, even damaged: a JSON or PyTorch file whose
    first key is ``written_by: "khar-mmsa ..."`` (:data:`WRITTEN_BY`), or a CSV whose header has the
    tune table's ``candidate`` and ``selected_by`` columns.  A link is never ours."""
    p = Path(path)
    try:
        if p.is_symlink() or not p.is_file():
            return False
        with open(p, "rb") as f:
            head = f.read(MARKER_WINDOW_BYTES)
    except OSError:
        return False
    if _MARKER.match(head):
        return True
    columns = head.split(b"\n", 1)[0].split(b",")
    return all(c in columns for c in _TUNE_TABLE_COLUMNS)


class ForeignFileError(StateFileError):
    """A file at a state file's place that khar-mmsa did not write: never renamed or replaced."""


def set_aside(path: PathLike, reason: Union[str, BaseException], own_name: bool = False) -> Path:
    """Rename the damaged state file ``path`` to ``<name>.damaged-<k>`` (the first free k >= 1),
    log a warning on the 'MMSA' logger naming both paths and ``reason``, and return the new path.

    Only files this library wrote (:func:`written_by_us`) are set aside; any other file there
    (a user's, a link) raises :class:`ForeignFileError` naming it and stays untouched.  The file is
    kept, never deleted, and never renamed over an existing file: the new name is
    claimed with a hard link (which fails if the name exists) before the old name is removed; on a
    file system without hard links the name is checked with ``lstat`` and renamed.

    ``own_name``: ``path`` is a name khar-mmsa made itself for this file (the adapter cache's
    default ``<model_save_dir>/<model>-<dataset>-adapters.pt``), not one the user gave: a regular
    file there that cannot be read is set aside whatever its size, marker or not (a copy cut
    before its marker is no more the user's than one cut after it); a link there never is."""
    src = Path(path)
    if not (written_by_us(src) or (own_name and src.is_file() and not src.is_symlink())):
        why = reason.problem if isinstance(reason, StateFileError) else str(reason)
        raise ForeignFileError(src, f"{why}; khar-mmsa did not write this file (it lacks the "
                                    f"'written_by: {WRITTEN_BY}' marker of its state files), so it is neither "
                                    f"renamed nor replaced: move it away (mv '{src}' '{src}.mine') or point "
                                    f"the run elsewhere")
    k = 1
    while True:
        dst = src.with_name(f"{src.name}.damaged-{k}")
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            k += 1
            continue
        except OSError:  # no hard links here (or a link as the source): rename to a free name
            if os.path.lexists(dst):
                k += 1
                continue
            os.rename(src, dst)
            break
        os.unlink(src)
        break
    why = reason.problem if isinstance(reason, StateFileError) else str(reason)
    logger.warning(f"{src}: {why}; set aside as {dst} (kept for inspection); the work it "
                   f"recorded is done again.")
    return dst


# --------------------------------------------------------------------------------------------
# shared checks
# --------------------------------------------------------------------------------------------
_JSON_TYPE_NAMES = {dict: "a JSON object", list: "a JSON list", str: "a string", float: "a number",
                    int: "an integer", bool: "true/false", type(None): "null"}


def kind(value: Any, json_names: bool = True) -> str:
    if json_names:
        for t, name in _JSON_TYPE_NAMES.items():
            if type(value) is t:
                return name
    return f"a {type(value).__name__}"


def read_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    raw = p.read_bytes()
    if not raw.strip():
        raise StateFileError(p, f"{what} is empty (truncated when it was written?)")
    return parse_json(raw, p, what)


def parse_json(raw: Union[bytes, str], path: PathLike, what: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(path, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}; truncated or corrupt)") from exc


def check_object(path: PathLike, obj: Any, what: str, required: Mapping[str, type],
                  optional: Optional[Mapping[str, type]] = None, json_names: bool = True) -> None:
    """``obj`` is a dict with every ``required`` key, no key outside ``required``/``optional``,
    and each value of the given type (types named as JSON's unless ``json_names`` is False)."""
    at = ""
    if not isinstance(obj, dict):
        expected = "a JSON object" if json_names else "a dict"
        raise StateFileError(path, f"{what}{at} is {kind(obj, json_names)}, expected {expected} "
                                   f"with keys {sorted(required)}")
    optional = dict(optional or {})
    missing = [k for k in required if k not in obj]
    if missing:
        raise StateFileError(path, f"{what}{at} lacks key(s) {missing}")
    unknown = sorted(str(k) for k in obj if k not in required and k not in optional)
    if unknown:
        raise StateFileError(path, f"{what}{at} has unknown key(s) {unknown} (expected "
                                   f"{sorted(set(required) | set(optional))})")
    for key, t in {**required, **optional}.items():
        if key in obj and not (isinstance(obj[key], t) and not (t is not bool and isinstance(obj[key], bool))):
            raise StateFileError(path, f"{what}{at}: '{key}' is {kind(obj[key], json_names)}, expected "
                                       f"{_JSON_TYPE_NAMES.get(t, t.__name__)}")


def _torch_file(path: PathLike, what: str) -> Any:
    """``torch.load(weights_only=True)`` of ``path``; every failure a :class:`StateFileError`."""
    from khar_mmsa.io.pickles import UnsafePickleError
    from khar_mmsa.io.files import safe_torch_load
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    if p.stat().st_size == 0:
        raise StateFileError(p, f"{what} is empty (truncated when it was written?)")
    try:
        return safe_torch_load(p)
    except UnsafePickleError as exc:
        raise StateFileError(p, f"{what} holds objects other than tensors and plain containers; "
                                f"refused (torch.load(weights_only=True))") from exc
    except Exception as exc:  # noqa: BLE001 - torch's zip reader: RuntimeError, EOFError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StateFileError(p, f"{what} is truncated or not a PyTorch file ({type(exc).__name__}: "
                                f"{first})") from exc


def _tensor_dict(path: PathLike, obj: Any, what: str) -> Dict[str, Any]:
    import torch
    if not isinstance(obj, Mapping):
        raise StateFileError(path, f"{what} is a {type(obj).__name__}, expected a state_dict "
                                   f"(names -> tensors)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise StateFileError(path, f"{what}: entry {key!r} is a {type(value).__name__}, "
                                       f"expected a tensor named by a string")
    return dict(obj)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """A model checkpoint (``.pth``): a state_dict of tensors, read with
    ``torch.load(weights_only=True)`` on the CPU."""
    return _tensor_dict(path, _torch_file(path, "checkpoint"), "checkpoint")


def guard_settings(settings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The :data:`GUARD_FIELDS` the user's ``settings`` (a call's config) give."""
    return {k: settings[k] for k in GUARD_FIELDS if settings and k in settings}


def load_checkpoint_config(path: PathLike, settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A checkpoint's ``<ckpt>.json``: ``{"model_name": str, "dataset_name": str, "config":
    {KHaRConfig fields}}`` as the KHaR trainer writes it: the fields of the architecture sections
    (``KHaRConfig.architecture``), or every field in files written before the config had sections.

    Every ``config`` key must be a KHaRConfig field, and the whole, its :data:`GUARD_FIELDS` left
    out, must make a valid :class:`~khar_mmsa.config.KHaRConfig` through
    ``KHaRConfig.from_architecture`` with the guards of the user's ``settings`` (the call's config)
    or their defaults: types, ranges and sizes (``seq_lens`` of 10**9 is refused here, before any
    data is read, and so is a network larger than ``max_model_memory_gib``); fields missing from
    the file take their defaults.  Returns the parsed object without its guards: what a file says
    of ``max_model_memory_gib`` is never used (logged and dropped)."""
    from khar_mmsa.config import ConfigError, KHaRConfig
    what = "checkpoint config"
    obj = read_json(path, what)
    check_object(path, obj, what, _CHECKPOINT_CONFIG_KEYS)
    fields = {f.name for f in dataclasses.fields(KHaRConfig)}
    unknown = sorted(k for k in obj["config"] if k not in fields)
    if unknown:
        raise StateFileError(path, f"{what}: 'config' has unknown key(s) {unknown} (not KHaRConfig fields)")
    guards = sorted(k for k in obj["config"] if k in GUARD_FIELDS)
    if guards:
        logger.info(f"{Path(path)}: {what} sets {guards}; ignored (guards come from your call's config "
                    f"or their defaults, never from a file).")
    config = {k: v for k, v in obj["config"].items() if k not in GUARD_FIELDS}
    try:
        KHaRConfig.from_architecture({**config, **guard_settings(settings)})
    except ConfigError as exc:
        raise StateFileError(path, f"{what}: {exc}") from exc
    return dict(obj, config=config)


# --------------------------------------------------------------------------------------------
# per-run seeds file
# --------------------------------------------------------------------------------------------
def load_seeds_file(path: PathLike) -> Dict[str, Any]:
    """A run's finished seeds, ``<ckpt>.seeds.json``: ``{"key": str, "results": {"<seed>":
    {metric: number, ...}, ...}}`` and, once the row is being appended, ``"appending": {"<results
    table>": length}``.  Every seed is an integer, every seed has at least one
    metric and every metric is a finite number (a row with no metrics is damage, not a result)."""
    what = "seeds file"
    obj = read_json(path, what)
    check_object(path, obj, what, _SEEDS_KEYS, {**MARKER_KEY, "appending": dict})
    for table, length in obj.get("appending", {}).items():
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise StateFileError(path, f"{what}: appending[{table!r}] is {kind(length)}, expected a length >= 0")
    for seed, metrics in obj["results"].items():
        try:
            int(seed)
        except ValueError:
            raise StateFileError(path, f"{what}: seed {seed!r} is not an integer") from None
        if not isinstance(metrics, dict) or not metrics:
            raise StateFileError(path, f"{what}: seed {seed} has {kind(metrics) if not isinstance(metrics, dict) else 'no metrics'}, "
                                       f"expected an object of metric values")
        for name, value in metrics.items():
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise StateFileError(path, f"{what}: seed {seed}'s {name!r} is {value!r}, expected a "
                                           f"finite number")
    return obj


# --------------------------------------------------------------------------------------------
# adapter cache
# --------------------------------------------------------------------------------------------
def load_adapter_cache(path: PathLike) -> Dict[str, Any]:
    """Pretrained adapters (``<ckpt stem>-adapters.pt``, training/pretrain.py): ``{"fingerprint":
    str, "states": {modality: state_dict}, "labels": dict, "config": dict}``, modalities among
    't', 'a', 'v', every state a dict of tensors."""
    what = "adapter cache"
    obj = _torch_file(path, what)
    check_object(path, obj, what, _ADAPTER_KEYS, MARKER_KEY, json_names=False)
    for m, state in obj["states"].items():
        if m not in MODALITIES:
            raise StateFileError(path, f"{what}: 'states' has modality {m!r}, expected one of "
                                       f"{list(MODALITIES)}")
        _tensor_dict(path, state, f"{what}: states[{m!r}]")
    return obj
