"""The optimizer KHaR's trainer and adapter pretraining share."""
from __future__ import annotations

from typing import Iterable, Union

import torch


def make_adamw(params: Union[Iterable[torch.Tensor], Iterable[dict]], **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over all parameters. Measured on the 2-core CPU
    (24 M parameters in 400 tensors): fused 0.18 s per step, ``foreach`` 1.0 s, and 1.7 s for the
    per-parameter loop that PyTorch picks by default for CPU tensors. Same update rule."""
    return torch.optim.AdamW(params, fused=True, **kwargs)
