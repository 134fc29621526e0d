"""A Transformer encoder layer on fused attention kernels, for the audio/vision encoders and adapters.

``FusedEncoderLayer`` computes what ``nn.TransformerEncoderLayer(d, h, ff, dropout,
activation='gelu', batch_first=True)`` computes (post-norm), with the same parameter names
(``self_attn.in_proj_weight``/``in_proj_bias``, ``self_attn.out_proj``, ``linear1``, ``linear2``,
``norm1``, ``norm2``), so checkpoints and adapter files of either load into the other.  Attention
runs through :func:`torch.nn.functional.scaled_dot_product_attention` with a boolean key-padding
mask, which keeps it on the fused (flash / memory-efficient) kernels on CPU and GPU: the
(frames x frames) probability matrix is never materialised.

One deliberate difference in training: **no dropout on the attention probabilities** (``dropout_p``
of SDPA > 0 sends PyTorch's CPU dispatcher to the unfused math path, which stores a b*h*n*n mask
per layer). The layer's other dropouts (after attention, inside and after the feed-forward) are
``nn.TransformerEncoderLayer``'s and keep the configured rate. In eval mode both layers give the
same outputs.

Kept by measurement (issue 30; ``python -m benchmarks.layers --quick --threads 1``, MOSI shapes,
shared 2-core CPU at load 5-7): a KHaR training step with every ``FusedEncoderLayer`` swapped for
``nn.TransformerEncoderLayer`` holding the same parameters and computing the same maths (its
attention-probability dropout set to 0) took **1.18x and 1.17x** ours in two runs of interleaved
steps. (PyTorch's layer turns the key-padding mask into a float mask per layer and head, and copies
the packed projection apart; this layer builds one boolean mask per stack and splits views.)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.model.dropout import Dropout


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """(b, n) bool, True at real positions -> (b, 1, 1, n) bool SDPA mask (True = attend).

    A sample without any real position (length 0) attends to all of its positions instead of to
    none: a fully masked row would be NaN, and its output is ignored downstream (masked means).
    Padded *query* rows attend to the real keys and stay finite; no real output reads them.
    """
    empty = ~mask.any(dim=1, keepdim=True)
    return (mask | empty)[:, None, None, :]


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s packed parameters."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)   # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); attn_mask: (b, 1, 1, n) bool from :func:`key_padding_mask`."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)           # (b, n, 3d)
        # split on the packed axis first, then (b, n, h, d/h) -> (b, h, n, d/h) views: the backward's
        # stack of the three gradients is then (b, n, 3, h, d/h), the layout of qkv, and needs no
        # further copy (splitting a permuted view did: one (b, n, 3d) copy per call)
        q, k, v = (t.transpose(1, 2) for t in qkv.view(b, n, 3, self.heads, d // self.heads).unbind(2))
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # amp on a CPU: PyTorch's bf16 flash-attention backward is ~3x slower than fp32's
            # (measured on the 2-core CPU); attention stays fp32, the projections use bf16
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (b, h, n, d/h)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class FusedEncoderLayer(nn.Module):
    """Post-norm Transformer encoder layer with GELU, parameter-compatible with
    ``nn.TransformerEncoderLayer(..., activation='gelu', batch_first=True)``."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = FusedSelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); attn_mask: (b, 1, 1, n) bool from :func:`key_padding_mask`. Returns (b, n, d)."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, attn_mask)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(x))))))


class FusedEncoder(nn.Module):
    """A stack of :class:`FusedEncoderLayer` (``layers.<i>.*`` like ``nn.TransformerEncoder``)."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FusedEncoderLayer(dim, heads, ff_dim, dropout) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); mask: (b, n) bool, True at real positions."""
        attn_mask = key_padding_mask(mask)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x
