"""Runs that ask for a GPU on a machine without CUDA go to the CPU with one warning.

``MMSA.run.torch`` becomes a proxy whose ``cuda.set_device`` skips CPU devices, so
``gpu_ids=[0]`` on a machine without CUDA runs on the CPU with one warning on the ``'MMSA'``
logger (breakage 1).  ``torch`` itself is not touched.  ``MMSA_run`` without an explicit
``num_workers`` uses 0 loader workers when CUDA is absent (breakage 8, applied by
:mod:`khar_mmsa.integration.mmsa_run`); ``MMSA_test(gpu_id>=0)`` falls back to the CPU
(breakage 11, :mod:`khar_mmsa.integration.mmsa_test`).
"""
from __future__ import annotations

import logging
from typing import Any

from khar_mmsa.integration.registry import mmsa_module, set_attr
from khar_mmsa.integration.run_context import current_run

logger = logging.getLogger("MMSA")


def patch() -> None:
    """Give ``MMSA.run`` a ``torch`` whose ``cuda.set_device`` accepts CPU devices."""
    import torch
    set_attr(mmsa_module("MMSA.run"), "torch", TorchProxy(torch))


class CudaProxy:
    """``torch.cuda`` for ``MMSA.run``: ``set_device`` ignores CPU devices."""

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda

    def set_device(self, device: Any) -> None:
        import torch
        if not isinstance(device, int) and torch.device(device).type == "cpu":
            warn_cpu_fallback()
            return
        self._cuda.set_device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cuda, name)


class TorchProxy:
    """``torch`` as ``MMSA.run`` sees it: everything delegates, except :class:`CudaProxy`."""

    def __init__(self, torch_module: Any) -> None:
        self._torch = torch_module
        self.cuda = CudaProxy(torch_module.cuda)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def __repr__(self) -> str:
        return f"<khar_mmsa proxy of {self._torch!r}>"


def warn_cpu_fallback() -> None:
    """One warning per ``MMSA_run`` call that asked for a GPU on a machine without CUDA."""
    ctx = current_run()
    if ctx is not None and (not ctx.wanted_gpu or ctx.warned_cpu):
        return
    if ctx is not None:
        ctx.warned_cpu = True
    logger.warning("CUDA is not available: running on the CPU (gpu_ids asked for a GPU).")


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, imported lazily."""
    import torch
    return bool(torch.cuda.is_available())
