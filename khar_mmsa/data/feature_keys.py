"""Which keys an MMSA feature pickle must hold for a model and dataset, and why.

:func:`required_keys` lists the per-split keys MMSA's loader and the model named in the settings
read (a main feature file, or a ``feature_T`` / ``feature_A`` / ``feature_V`` file);
:func:`why_needed` says why in an error message; :func:`vocab_size` and :func:`max_positions`
read the local text encoder's limits the token ids are checked against.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Mapping, Optional

from khar_mmsa.config import parse_bool

__all__ = ["ROLES", "UNIMODAL_LABEL_MODELS", "UNIMODAL_LABEL_DATASETS", "flag", "needs_unimodal_labels",
           "required_keys", "check_role", "why_needed", "vocab_size", "max_positions"]

ROLES = ("T", "A", "V")  # MMSA_run's feature_T / feature_A / feature_V files
# MMSA's multi-task models read labels['T'/'A'/'V'] (they are SIMS-only in MMSA).
UNIMODAL_LABEL_MODELS = frozenset({"mtfn", "mlmf", "mlf_dnn"})
UNIMODAL_LABEL_DATASETS = frozenset({"sims", "simsv2"})


def flag(args: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """The boolean setting ``key`` of ``args``, parsed strictly (``'no'`` is False, ``'off'`` a
    ConfigError naming the key); ``default`` when absent or None."""
    value = args.get(key, default)
    return parse_bool(key, value) if value is not None else default


def needs_unimodal_labels(args: Mapping[str, Any]) -> bool:
    """True when regression_labels_T/A/V must be present: SIMS/SIMSv2, MMSA's multi-task models,
    or a config asking for them (``need_unimodal_labels=True``)."""
    return (str(args.get("dataset_name", "")).lower() in UNIMODAL_LABEL_DATASETS
            or str(args.get("model_name", "")).lower() in UNIMODAL_LABEL_MODELS
            or flag(args, "need_unimodal_labels"))


def required_keys(args: Mapping[str, Any], role: Optional[str] = None) -> List[str]:
    """The per-split keys MMSA's loader and the model named in ``args`` read.

    ``role`` None: the main feature file (``featurePath`` / ``custom_feature``).  ``role`` 'T',
    'A' or 'V' (or several letters): a per-modality file passed as ``feature_T`` / ``feature_A``
    / ``feature_V``, from which MMSA 2.2.1's ``MMDataset`` reads only that modality's array (and
    its ``*_lengths`` for unaligned data) and its ``id`` (checked against the main file's, so that
    no row is paired with another clip's label); labels and raw text come from the main file.
    """
    unaligned = not flag(args, "need_data_aligned")
    text = "text_bert" if flag(args, "use_bert") else "text"
    if role is not None:
        keys = []
        if "T" in role:
            keys.append(text)
        for letter, name in (("A", "audio"), ("V", "vision")):
            if letter in role:
                keys += [name] + ([f"{name}_lengths"] if unaligned else [])
        return keys + ["id"]  # rows are matched to the main file's clips by id
    keys = [text, "audio", "vision", "regression_labels", "id", "raw_text"]
    if unaligned:
        keys += ["audio_lengths", "vision_lengths"]
    if needs_unimodal_labels(args):
        keys += ["regression_labels_T", "regression_labels_A", "regression_labels_V"]
    return keys


def check_role(role: Optional[str]) -> Optional[str]:
    if role is None:
        return None
    if not isinstance(role, str) or not role or set(role) - set(ROLES):
        raise ValueError(f"role={role!r}: None (main feature file) or any of 'T', 'A', 'V'")
    return role


def why_needed(key: str, args: Mapping[str, Any], role: Optional[str] = None) -> str:
    model = args.get("model_name", "?")
    ds = args.get("dataset_name", "?")
    if key == "text_bert":
        return f"model '{model}' runs with use_bert=True"
    if key == "text":
        return f"model '{model}' runs with use_bert=False (GloVe/pre-extracted text features)"
    if key.endswith("_lengths"):
        return f"model '{model}' uses unaligned data (need_data_aligned=False)"
    if key == "id" and role:
        return "a feature_T/feature_A/feature_V file's rows are matched to the main file's clips by id"
    if key.startswith("regression_labels_"):
        return (f"dataset '{ds}' / model '{model}' uses unimodal (T/A/V) labels")
    return "MMSA's data loader reads it"


def vocab_size(args: Mapping[str, Any]) -> Optional[int]:
    """``args['vocab_size']``, else ``vocab_size`` from ``<pretrained>/config.json`` when
    ``pretrained`` is a local folder (or an alias of one, e.g. 'all-MiniLM-L6-v2'); None when unknown."""
    v = args.get("vocab_size")
    if v is not None:
        return int(v)
    return _encoder_setting(args, "vocab_size")


def max_positions(args: Mapping[str, Any]) -> Optional[int]:
    """``max_position_embeddings`` of the local text encoder named by ``pretrained``; None when
    unknown (a hub name: the encoder itself refuses a text too long)."""
    return _encoder_setting(args, "max_position_embeddings")


def _encoder_setting(args: Mapping[str, Any], name: str) -> Optional[int]:
    """Setting ``name`` of ``<pretrained>/config.json``; None when it cannot be read."""
    pre = args.get("pretrained")
    if not pre or not isinstance(pre, (str, Path)):
        return None
    from khar_mmsa.model.text_encoders import local_folder
    folder = local_folder(str(pre))
    if folder is None:
        return None
    cfg = folder / "config.json"
    try:
        if cfg.is_file():
            v = json.loads(cfg.read_text(encoding="utf-8")).get(name)
            return int(v) if v is not None else None
    except (OSError, ValueError, TypeError):
        return None
    return None
