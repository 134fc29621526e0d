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

    Kept by measurement (issue 30; ``python -m benchmarks.layers --quick --threads 1``, shared
    2-core CPU at load ~6): forward + backward alone, medians of 25 interleaved calls, ours vs
    ``nn.Dropout``: 21.8 vs 34.1 ms at (16, 494, 128) p=0.2, 2.6 vs 17.0 ms at (16, 494, 64),
    1.5 vs 2.1 ms at (16, 494, 32), 37.7 vs 50.5 ms at (16, 494, 256) -- 1.3x to 6.5x faster,
    and a 1-byte mask saved instead of 4. In a whole KHaR step (dropout ~4 % of it) the gain is
    below what step times resolve on that machine (a step with ``nn.Dropout``: 0.99x and 1.05x ours).
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
