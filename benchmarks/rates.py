"""The work of a training step and the rate it is measured against: FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` (CPU flash attention counted in its math form) and
the fp32 matmul rate of the same process."""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from .steppers import _now, sync

if TYPE_CHECKING:
    from .steppers import Stepper

MATMUL_N = 2048            # the reference matmul: (N x N) @ (N x N), fp32


_FLOP_FORMULAS_ADDED = False


def register_cpu_attention_flops() -> None:
    """FlopCounterMode formulas for the CPU flash-attention kernels (PyTorch has none): forward as
    ``sdpa_flop_count``; backward 2x forward, the unfused path's count (no recomputation counted)."""
    global _FLOP_FORMULAS_ADDED
    import torch
    from torch.utils import flop_counter as fc
    if _FLOP_FORMULAS_ADDED or not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return
    aten = torch.ops.aten

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs):
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
        return 2 * fc.sdpa_flop_count(query.shape, key.shape, value.shape)
    _FLOP_FORMULAS_ADDED = True


def matmul_rate(device: Any, n: int = MATMUL_N, repeats: int = 5) -> float:
    """fp32 GFLOP/s of (n x n) @ (n x n) on ``device``: median of ``repeats`` after one warm-up."""
    import torch
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = _now()
        a @ b
        sync(device)
        times.append(_now() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def step_flops(stepper: "Stepper") -> float:
    """Floating-point operations of one training step (runs the step)."""
    from torch.utils.flop_counter import FlopCounterMode
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        stepper.step()
    return float(counter.get_total_flops())
