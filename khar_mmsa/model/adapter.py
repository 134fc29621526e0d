"""The knowledge adapter layer (§3.3, eq. 2), kept apart from the code that wires it into encoders.

One block: down-projection d -> d/2, a small Transformer encoder (fused attention, model/attention.py), up-projection d/2 -> d, residual.
The up-projection starts at zero, so a fresh block is the identity map (a no-op at step 0).
"""
from __future__ import annotations

import torch
from torch import nn

from khar_mmsa.model.attention import FusedEncoder


class AdapterBlock(nn.Module):
    """x + Up(Transformer(Down(x))) over a padded sequence."""

    def __init__(self, dim: int, heads: int, inner_layers: int, dropout: float) -> None:
        super().__init__()
        inner = dim // 2
        if inner % heads:
            raise ValueError(f"adapter width {inner} (= {dim}/2) is not divisible by adapter_heads={heads}")
        self.down = nn.Linear(dim, inner)
        # parameter layout of nn.TransformerEncoder(nn.TransformerEncoderLayer(..., gelu, batch_first)):
        # adapter files written before the fused kernels load unchanged
        self.inner = FusedEncoder(inner, heads, max(dim // 4, 1), dropout, inner_layers)
        self.up = nn.Linear(inner, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); mask: (b, n) bool, True at real positions. Returns (b, n, d)."""
        h = self.inner(self.down(x), mask)
        return x + self.up(h)
