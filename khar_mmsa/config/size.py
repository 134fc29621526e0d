"""Size limits and the training-memory estimate of a KHaR config, checked before any data is read."""
from __future__ import annotations

from typing import Any

from khar_mmsa.config.errors import ConfigError

# Documented bounds (README, "Validation and safe loading"), checked by check_size before the
# memory estimate: far beyond any published multimodal-sentiment setting, far below what makes the
# allocator fail.
MAX_WIDTH = 2 ** 15       # any feature or hidden width (BERT-large: 1024; OpenFace: 709)
MAX_DEPTH = 256           # layers, adapters, experts, attention heads
MAX_SEQ_LEN = 2 ** 16     # frames or tokens per modality (MOSEI/SIMS: <= 1000)
_WIDTH_FIELDS = ("modal_dim", "encoder_ff_dim", "expert_hidden_dim", "fine_grained_dim",
                 "fusion_hidden_dim", "latent_dim")
_DEPTH_FIELDS = ("encoder_layers", "encoder_heads", "text_adapters", "av_adapters", "adapter_heads",
                 "adapter_inner_layers", "num_experts", "top_k")
_FLOAT_BYTES = 4          # float32 weights and activations
_TRAINING_COPIES = 4      # weights, gradients, AdamW's two moments


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.3g} GiB"


def memory_estimate(cfg: Any) -> dict:
    """Rough training memory of ``cfg`` in bytes, by the setting that drives each part.

    Weights (with gradients and AdamW moments) of the audio/vision encoders and positions
    (``modal_dim``, ``seq_lens``), the adapters (``modal_dim``), the experts
    (``expert_hidden_dim``) and the fusion (``fusion_hidden_dim``); one batch's activations
    (``seq_lens`` x ``batch_size``) and attention scores (``seq_lens`` squared).  The text encoder
    is not counted.  A lower bound in spirit: meant to refuse the impossible, not to plan a GPU.
    """
    d, f, h = cfg.modal_dim, cfg.encoder_ff_dim, cfg.expert_hidden_dim
    b, layers, e = cfg.batch_size, cfg.encoder_layers, cfg.num_experts
    lens, dims = cfg.seq_lens, cfg.feature_dims
    n_mod = len(cfg.modalities)
    per_layer = 4 * d * d + 2 * d * f
    encoder = sum(dims[i] * d + layers * per_layer for i in (1, 2)) + dims[0] * d
    positions = sum(lens[i] * d for i in (1, 2))
    adapters = (cfg.text_adapters + 2 * cfg.av_adapters) * cfg.adapter_inner_layers * 12 * (d // 2) ** 2
    experts = n_mod * e * 2 * d * h
    fusion = n_mod * (d * cfg.fine_grained_dim + cfg.fine_grained_dim * cfg.fusion_hidden_dim) \
        + 2 * cfg.fusion_hidden_dim * cfg.latent_dim
    tokens = b * sum(lens)
    activations = tokens * (layers * (6 * d + f) + e * h) \
        + b * cfg.encoder_heads * layers * sum(n * n for n in lens)
    weight = _FLOAT_BYTES * _TRAINING_COPIES
    return {"modal_dim": (encoder + adapters) * weight,
            "expert_hidden_dim": experts * weight,
            "fusion_hidden_dim": fusion * weight,
            "seq_lens": positions * weight + activations * _FLOAT_BYTES}


def check_size(cfg: Any) -> None:
    """Refuse sizes that cannot be allocated, before any data is read or any tensor is made.

    Every width (and ``feature_dims``) must be at most :data:`MAX_WIDTH`, every depth/count at most
    :data:`MAX_DEPTH`, every ``seq_lens`` entry at most :data:`MAX_SEQ_LEN`; then
    :func:`memory_estimate` must stay within ``max_model_memory_gib``.  Raises
    :class:`ConfigError` naming the key and, for the estimate, its size.
    """
    problems = []
    for name in _WIDTH_FIELDS:
        if getattr(cfg, name) > MAX_WIDTH:
            problems.append(f"{name}={getattr(cfg, name)}: must be at most {MAX_WIDTH} (MAX_WIDTH)")
    for name in _DEPTH_FIELDS:
        if getattr(cfg, name) > MAX_DEPTH:
            problems.append(f"{name}={getattr(cfg, name)}: must be at most {MAX_DEPTH} (MAX_DEPTH)")
    if any(x > MAX_WIDTH for x in cfg.feature_dims):
        problems.append(f"feature_dims={cfg.feature_dims}: every entry must be at most {MAX_WIDTH} (MAX_WIDTH)")
    if any(x > MAX_SEQ_LEN for x in cfg.seq_lens):
        problems.append(f"seq_lens={cfg.seq_lens}: every entry must be at most {MAX_SEQ_LEN} (MAX_SEQ_LEN)")
    if cfg.batch_size > MAX_SEQ_LEN:
        problems.append(f"batch_size={cfg.batch_size}: must be at most {MAX_SEQ_LEN}")
    if problems:
        raise ConfigError("KHaR config too large: " + "; ".join(problems))
    parts = memory_estimate(cfg)
    total = sum(parts.values())
    limit = cfg.max_model_memory_gib * 2 ** 30
    if total > limit:
        key = max(parts, key=parts.get)
        raise ConfigError(
            f"KHaR config too large: estimated training memory {_gib(total)} exceeds "
            f"max_model_memory_gib={cfg.max_model_memory_gib:g}; the largest part, {_gib(parts[key])}, "
            f"comes from {key}={getattr(cfg, key)} (batch_size={cfg.batch_size}). Lower it, or raise "
            f"max_model_memory_gib if the machine really has the memory.")


#: Size settings of Table 5 and the fewest training clips they were tuned on (CMU-MOSI's standard
#: training fold, the smallest of the paper's four datasets, has 1,284 clips).
PAPER_SIZE_FIELDS = ("modal_dim", "encoder_layers", "expert_hidden_dim", "fusion_hidden_dim", "latent_dim")
PAPER_SIZE_MIN_TRAIN_CLIPS = 1284
#: The smaller model the demo trains on its 192 clips (khar_mmsa/demo.py): what the paper-size
#: hint suggests on small data.
SMALL_DATA_SIZE = {"modal_dim": 64, "encoder_layers": 2}
