"""What identifies a run's inputs, by content: the keys of saved adapters and resume files.

A saved file is reused only when everything that changes it is the same -- and nothing else
takes part: no path, mtime or temporary name, so a feature pickle rewritten with the same bytes,
moved, or copied to a temporary folder still matches, while one changed byte does not.

* :func:`feature_identity` -- SHA-256 of each feature file MMSA reads (the main file and any
  ``feature_T`` / ``feature_A`` / ``feature_V``) and the MMSA settings that change what its loader
  makes of them.
* :func:`encoder_identity` -- a local text-encoder folder by the digest of its config and weight
  files; a hub name by its name.
* :func:`config_identity` / :func:`fingerprint_of` -- the fields of some of the config's sections
  (``khar_mmsa.config.SECTIONS``), paths by the identities above; each field's metadata says how
  it takes part (no lists of field names).
* :func:`data_identity` -- a data file by name and SHA-256 (a sweep run's data).
* :func:`code_version` -- the package version and a SHA-256 over its sources and config overlays
  (every sweep run's identity holds it, so a rerun after a code change trains again).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from khar_mmsa.config import MODALITIES, fingerprint, section_fields
from khar_mmsa.io.files import file_digest

# MMSA_run's feature files, by role (the main file is custom_feature, else featurePath).
FEATURE_ROLES = ("feature_T", "feature_A", "feature_V")
# MMSA settings that change what MMDataset makes of the same files.
_LOADER_KEYS = ("use_bert", "need_data_aligned", "need_normalized", "data_missing")
_MISSING_KEYS = ("missing_rate", "missing_seed")  # only read when data_missing is on
# What AutoModel.from_pretrained reads from a folder (tokenizer files do not change the encoder:
# token ids come from the feature pickle).
_ENCODER_FILES = ("config.json", "*.safetensors", "*.bin", "*.index.json")


def feature_identity(args: Mapping[str, Any]) -> Dict[str, Any]:
    """Content identity of the feature files MMSA's loader reads for ``args`` (MMSA's EasyDict)."""
    files: Dict[str, Optional[str]] = {}
    main = args.get("custom_feature") or args.get("featurePath")
    files["main"] = _digest_or_none(main)
    for role in FEATURE_ROLES:
        if args.get(role):
            files[role] = _digest_or_none(args[role])
    loading = {k: args.get(k) for k in _LOADER_KEYS}
    if args.get("data_missing"):
        loading.update({k: args.get(k) for k in _MISSING_KEYS})
    return {"files": files, "loading": loading}


def _digest_or_none(path: Any) -> Optional[str]:
    if not path or not Path(path).is_file():
        return None
    return file_digest(path)


def encoder_identity(pretrained: str) -> Any:
    """A local folder (or 'all-MiniLM-L6-v2', the installed one): {file name: SHA-256} of its
    config and weights; a hub name: the name."""
    from khar_mmsa.model.text_encoders import local_folder
    folder = local_folder(str(pretrained))
    if folder is None:
        return pretrained
    files = sorted({p for pattern in _ENCODER_FILES for p in folder.glob(pattern) if p.is_file()})
    return {p.name: file_digest(p) for p in files}


def config_identity(cfg: Any, sections: Iterable[str] = ()) -> Dict[str, Any]:
    """The values of ``cfg``'s fields in ``sections`` (all fields when none is given), each as its
    ``identity`` kind says (:data:`~khar_mmsa.config.IDENTITY_KINDS`): paths left out, a local
    text encoder by content (None when the config has no text), modality letters in canonical order."""
    values: Dict[str, Any] = {}
    names = section_fields(*sections, config=cfg)
    for f in dataclasses.fields(cfg):
        if f.name not in names:
            continue
        kind, value = f.metadata["identity"], getattr(cfg, f.name)
        if kind == "path":
            continue
        if kind == "text_encoder":
            value = encoder_identity(value) if "t" in cfg.modalities else None
        elif kind == "letters":
            value = "".join(m for m in MODALITIES if m in value)
        values[f.name] = copy.deepcopy(value)
    return values


def fingerprint_of(cfg: Any, *sections: str, **extra: Any) -> str:
    """Hash of exactly the fields of ``sections`` (:func:`config_identity`: paths by content) and
    the ``extra`` values (a seed, a data identity); every field when no section is given."""
    values = config_identity(cfg, sections)
    clash = set(values) & set(extra)
    if clash:
        raise ValueError(f"extra value(s) {sorted(clash)} would replace config fields")
    return fingerprint({**values, **extra})


# ============================================================================================
# Code version
# ============================================================================================
PACKAGE_DIR: Path = Path(__file__).resolve().parents[1]


def source_tree_configs() -> Optional[Path]:
    """The top-level ``mmsa_configs/`` folder when khar_mmsa is imported from a source checkout
    (its ``pyproject.toml`` beside the package); None for an installed wheel."""
    root = PACKAGE_DIR.parent
    folder = root / "mmsa_configs"
    if (root / "pyproject.toml").is_file() and (folder / "config_regression.json").is_file():
        return folder
    return None


#: Our MMSA config JSON (the package ``khar_mmsa.mmsa_configs``): the top-level ``mmsa_configs/``
#: beside the package in a checkout, ``khar_mmsa/mmsa_configs/`` in an installed wheel -- the
#: files :mod:`khar_mmsa.registration.configs` reads.
CONFIG_OVERLAY_DIR: Path = source_tree_configs() or PACKAGE_DIR / "mmsa_configs"


def source_digest(package_dir: Path, config_dir: Optional[Path] = None) -> str:
    """SHA-256 over every ``*.py`` below ``package_dir`` and every ``*.json`` in ``config_dir``,
    each file as its relative path and its bytes (a renamed file or a changed byte gives another
    digest; mtimes and the folder's location do not count)."""
    h = hashlib.sha256()
    roots = [("pkg", Path(package_dir), "**/*.py")]
    if config_dir is not None and Path(config_dir).is_dir():
        roots.append(("cfg", Path(config_dir), "*.json"))
    for tag, root, pattern in roots:
        for path in sorted(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts):
            rel = path.relative_to(root).as_posix()
            h.update(f"{tag}:{rel}\0{file_digest(path)}\0".encode())
    return h.hexdigest()


def package_version() -> str:
    """The installed distribution's version, else ``__version__`` read from the package's source."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("khar-mmsa")
    except PackageNotFoundError:
        pass
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)', (PACKAGE_DIR / "__init__.py").read_text(), re.M)
    return match.group(1) if match else "unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<version>+<sha256[:16]>``: the package version and the digest of its sources and config
    overlays (:func:`source_digest`).  Works from a wheel and without git; computed once per process.
    Part of every sweep run's identity, so a run made by other code is made again."""
    return f"{package_version()}+{source_digest(PACKAGE_DIR, CONFIG_OVERLAY_DIR)[:16]}"


def data_identity(path: Any) -> Dict[str, Any]:
    """A data file by name and SHA-256 of its content (``sha256`` None when the file is missing)."""
    return {"name": Path(path).name, "sha256": _digest_or_none(path)}


def folder_digest(folder: Any) -> str:
    """SHA-256 over every regular file of ``folder`` (relative path and content), e.g. a tokenizer."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\0".encode())
    return h.hexdigest()
