"""The knowledge adapter layer (§3.3, eq. 2), kept apart from the code that wires it into encoders.

One block: down-projection d -> d/2, a small Transformer encoder, up-projection d/2 -> d, residual.
The up-projection starts at zero, so a fresh block is the identity map (a no-op at step 0).
"""
from __future__ import annotations

import torch
from torch import nn


class AdapterBlock(nn.Module):
    """x + Up(Transformer(Down(x))) over a padded sequence."""

    def __init__(self, dim: int, heads: int, inner_layers: int, dropout: float) -> None:
        super().__init__()
        inner = dim // 2
        if inner % heads:
            raise ValueError(f"adapter width {inner} (= {dim}/2) is not divisible by adapter_heads={heads}")
        self.down = nn.Linear(dim, inner)
        layer = nn.TransformerEncoderLayer(inner, heads, dim_feedforward=max(dim // 4, 1), dropout=dropout,
                                           activation="gelu", batch_first=True)
        self.inner = nn.TransformerEncoder(layer, inner_layers, enable_nested_tensor=False)
        self.up = nn.Linear(inner, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (b, n, d); mask: (b, n) bool, True at real positions. Returns (b, n, d)."""
        h = self.inner(self.down(x), src_key_padding_mask=~mask)
        return x + self.up(h)
