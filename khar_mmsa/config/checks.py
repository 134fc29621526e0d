"""The checks a KHaR config passes when it is made: types, ranges, choices and combinations.

:func:`check_types` and then :func:`value_problems` are what ``KHaRConfig.__post_init__`` runs; the
types come from the dataclass's annotations, resolved by :func:`typing.get_type_hints` (never
matched as strings).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from typing import Any, Dict, List, Mapping, Union

from khar_mmsa.config.booleans import parse_bool
from khar_mmsa.config.errors import ConfigError, ConfigTypeError
from khar_mmsa.config.fields import ELEMENTWISE_FUSIONS, MODALITIES

_INF = float("inf")
_POSITIVE_INTS = ("modal_dim", "encoder_layers", "encoder_heads", "encoder_ff_dim", "text_adapters",
                  "av_adapters", "adapter_heads", "adapter_inner_layers", "expert_hidden_dim",
                  "fine_grained_dim", "fusion_hidden_dim", "latent_dim", "epochs", "early_stop",
                  "num_experts", "length_bucket_pool")  # pretrain_epochs: its own message below
# name -> (low, low inclusive?, high (exclusive), the allowed range in words).  Floats must also be
# finite; ints must be integers (check_types).
NUMERIC_RANGES = {
    **{n: (0.0, False, _INF, "must be a finite number > 0")
       for n in ("learning_rate", "learning_rate_bert", "pretrain_learning_rate",
                 "contrastive_temperature", "cv_eps")},
    **{n: (0.0, True, _INF, "must be a finite number >= 0")
       for n in ("contrastive_kappa", "mib_beta", "moe_balance_weight", "contrastive_weight",
                 "weight_decay", "pretrain_weight_decay", "moe_noise_epsilon")},
    **{n: (0.0, True, 1.0, "must be a number in [0, 1)")
       for n in ("encoder_dropout", "adapter_dropout", "dropout", "warmup_ratio")},
    **{n: (1, True, _INF, "must be an integer >= 1") for n in _POSITIVE_INTS},
    "pretrain_epochs": (1, True, _INF, "must be an integer >= 1 (to skip adapter pretraining set "
                                       "pretrain_adapters=False)"),
    "batch_size": (2, True, _INF, "must be an integer >= 2 (the contrastive loss pairs the samples "
                                  "of a batch, eq. 13-21)"),
    **{n: (0, True, _INF, "must be an integer >= 0") for n in ("mib_beta_warmup_epochs", "freeze_bert_epochs")},
}
#: Each field's allowed range in words (the error messages say it).
RANGES = {n: r[3] for n, r in NUMERIC_RANGES.items()}
RANGES.update(grad_clip="must be a finite number (<= 0 disables clipping)",
              mib_sigma_offset="must be a finite number")


@functools.lru_cache(maxsize=None)
def field_types(config_class: type) -> Dict[str, Any]:
    """The resolved type of every field of ``config_class`` (``Optional[list]`` as a type), resolved
    once per class."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def fields_of_type(config_class: type, tp: Any) -> tuple:
    """The names of the fields of ``config_class`` whose type is exactly ``tp``."""
    return tuple(name for name, t in field_types(config_class).items() if t == tp)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _accepts(tp: Any, key: str, value: Any) -> bool:
    """Whether ``value`` can be a field of type ``tp`` (numpy numbers from a tuning grid too)."""
    if typing.get_origin(tp) is Union:
        return any(_accepts(arg, key, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        try:
            parse_bool(key, value)
        except ConfigError:
            return False
        return True
    if tp is int:
        return _is_int(value)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is list:  # the config's lists hold integers (widths, lengths, layer indices)
        return isinstance(value, (list, tuple)) and all(map(_is_int, value))
    return True


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is Union and len(args) == 1:
        return f"Optional[{_type_name(args[0])}]"
    return getattr(tp, "__name__", str(tp))


def check_types(config_class: type, values: Mapping[str, Any]) -> None:
    """Reject values whose type cannot be the field's (``'3e-5'`` for a float, say)."""
    types = field_types(config_class)
    bad = []
    for key, value in values.items():
        if key not in types or _accepts(types[key], key, value):
            continue
        name = _type_name(types[key])
        expected = f"expected {name}" + (" of integers" if "list" in name else "")
        allowed = f"; {RANGES[key]}" if key in RANGES else ""
        bad.append(f"{key}={value!r}: {expected}, got {type(value).__name__}{allowed}")
    if bad:
        raise ConfigTypeError("wrong type for KHaR config key(s): " + "; ".join(bad))


def _open_choice_problems(cfg: Any) -> List[str]:
    """What is wrong with combinations of the switches of the choices the paper leaves open and of
    the parts the walk removes (their allowed values are checked from the fields' choices)."""
    problems = []
    if not cfg.harvesting and cfg.pretrain_adapters:
        problems.append("harvesting=False leaves no adapters to pretrain: set pretrain_adapters=False too")
    if cfg.freeze_bert_epochs > 0 and not cfg.finetune_bert:
        problems.append(f"freeze_bert_epochs={cfg.freeze_bert_epochs} needs finetune_bert=True "
                        f"(with finetune_bert=False the text encoder is frozen throughout)")
    if cfg.projection == "none" and cfg.refiner == "none":
        # the unimodal vectors keep their encoders' widths (text: the BERT width, audio/vision: d_m)
        if cfg.fusion in ELEMENTWISE_FUSIONS:
            problems.append(f"fusion={cfg.fusion!r} combines the unimodal vectors element-wise; with "
                            f"refiner='none' and projection='none' their widths differ: use mib, concat or linear")
        if cfg.contrastive_weight > 0:
            problems.append("the contrastive loss (eq. 21) compares unimodal vectors across modalities; with "
                            "refiner='none' and projection='none' their widths differ: set contrastive_weight=0")
    return problems


def value_problems(cfg: Any) -> List[str]:
    """What is wrong with the values of a config whose types are right: shapes, modality letters,
    the fields' choices, top_k, finite floats, ranges, divisibility, adapter layer lists and the
    combinations of :func:`_open_choice_problems`."""
    problems = []
    if len(cfg.feature_dims) != 3 or len(cfg.seq_lens) != 3:
        problems.append("feature_dims and seq_lens need three entries (text, audio, vision)")
    mods = set(cfg.modalities)
    if not mods <= set(MODALITIES) or len(mods) < 2 or len(mods) != len(cfg.modalities):
        problems.append(f"modalities={cfg.modalities!r}: two or three distinct letters of 'tav'")
    for f in dataclasses.fields(cfg):  # allowed values: the field's own choices
        allowed = f.metadata["choices"]
        if allowed is not None and getattr(cfg, f.name) not in allowed:
            problems.append(f"{f.name}={getattr(cfg, f.name)!r}: one of {', '.join(allowed)}")
    if not 1 <= cfg.top_k <= cfg.num_experts:
        problems.append(f"top_k={cfg.top_k}: must be between 1 and num_experts={cfg.num_experts}")
    # Numbers: every float finite (NaN passes no comparison and would silently change
    # behaviour -- a NaN grad_clip turned clipping off), then each field's range (RANGES).
    for name in fields_of_type(type(cfg), float):
        value = getattr(cfg, name)
        if not math.isfinite(value):
            problems.append(f"{name}={value!r}: {RANGES.get(name, 'must be a finite number')}")
    for name, (low, inclusive, high, text) in NUMERIC_RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            continue  # reported above
        if not ((value >= low if inclusive else value > low) and value < high):
            problems.append(f"{name}={value!r}: {text}")
    for name in ("feature_dims", "seq_lens"):
        if any(x < 1 for x in getattr(cfg, name)):
            problems.append(f"{name}={getattr(cfg, name)}: every entry must be an integer >= 1")
    if cfg.encoder_heads >= 1 and cfg.modal_dim % cfg.encoder_heads:
        problems.append(f"modal_dim={cfg.modal_dim} is not divisible by encoder_heads={cfg.encoder_heads}")
    if cfg.adapter_heads >= 1 and (cfg.modal_dim // 2) % cfg.adapter_heads:
        problems.append(f"modal_dim/2={cfg.modal_dim // 2} (adapter width) is not divisible by adapter_heads={cfg.adapter_heads}")
    for name, n in (("adapter_layers_text", cfg.text_adapters), ("adapter_layers_av", cfg.av_adapters)):
        layers = getattr(cfg, name)
        if layers is not None and (len(layers) != n + 1 or any(int(i) < 0 for i in layers)):
            problems.append(f"{name}={layers}: needs {n + 1} non-negative hidden-state indices")
    return problems + _open_choice_problems(cfg)
