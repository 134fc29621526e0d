"""Dropout with a cheaper random mask on the CPU (the encoders', adapters' and experts' dropout)."""
from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper random mask on the CPU.

    PyTorch's CPU dropout draws one float per element (``bernoulli_``), then divides and multiplies
    in float: on the 2-core CPU that was 14 % of a KHaR training step. Here one 64-bit draw gives
    four 16-bit numbers, compared with a threshold into a boolean keep-mask (1 byte per element
    saved for backward instead of 4). The drop probability is ``p`` rounded to a multiple of 2^-16
    and the scale is its exact inverse keep-probability, so the layer stays unbiased. Elsewhere
    (CUDA, eval mode) it is ``nn.Dropout``.
    """

    LEVELS = 1 << 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        dropped = round(self.p * self.LEVELS)
        if dropped >= self.LEVELS:
            return torch.zeros_like(x)
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= dropped - self.LEVELS // 2
        return x * keep * (self.LEVELS / (self.LEVELS - dropped))
