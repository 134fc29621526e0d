"""Registration's second step: the fixes without which MMSA 2.2.1's own models cannot run on
today's torch, numpy and a CPU (:func:`fix_mmsa`).

Each replaces one name in one MMSA module, for that module only (``torch`` itself is never
touched), through :func:`.replacements.replace`, which records the originals.  These are the only
replacements that change what MMSA's own models do.

========================================  ====================================================
MMSA line                                 fix
========================================  ====================================================
``run.py``: ``torch.cuda.set_device(       :class:`TorchForMMSARun` (``MMSA.run.torch``):
args['device'])`` with a CPU device         ``cuda.set_device`` skips a CPU device, so
(``ValueError`` on a machine without        ``gpu_ids=[0]`` runs on the CPU, with one warning.
CUDA)
``run.py``: ``torch.load(path)`` of the    The same object's ``load`` always passes
best checkpoint and in ``MMSA_test``       ``weights_only=True``, whatever
                                           ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so a
                                           crafted checkpoint cannot run code.
``run.py``: ``round(np.mean(values)*100,    :func:`plain_round` (``MMSA.run.round``): a Python
2)`` into the results CSV                  float, so the cell is ``(50.0, 0.0)`` instead of
                                           numpy 2's ``(np.float64(50.0), np.float64(0.0))``.
``MULT.py``, ``MMIM.py``, ``TFR_NET.py``:   :class:`ReduceLROnPlateauWithoutVerbose`: today's
``ReduceLROnPlateau(..., verbose=True)``   torch refuses ``verbose=``; it is dropped.
========================================  ====================================================
"""
from __future__ import annotations

import builtins
import logging
from typing import Any

from khar_mmsa.registration.replacements import mmsa_module, replace

logger = logging.getLogger(f"MMSA.{__name__}")

#: MMSA trainer modules that call ``ReduceLROnPlateau(..., verbose=True)``.
VERBOSE_PLATEAU_MODULES = ("MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                           "MMSA.trains.missingTask.TFR_NET")


class _CudaForMMSARun:
    """``torch.cuda`` as ``MMSA.run`` sees it: ``set_device`` skips CPU devices."""

    def __init__(self, cuda: Any) -> None:
        self._cuda = cuda

    def set_device(self, device: Any) -> None:
        import torch
        if not isinstance(device, int) and torch.device(device).type == "cpu":
            logger.warning("CUDA is not available: running on the CPU (gpu_ids asked for a GPU).")
            return
        self._cuda.set_device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cuda, name)


class TorchForMMSARun:
    """``torch`` as ``MMSA.run`` sees it: everything is torch's, except ``cuda.set_device`` on a
    CPU device (skipped) and ``load`` (always ``weights_only=True``)."""

    def __init__(self, torch_module: Any) -> None:
        self._torch = torch_module
        self.cuda = _CudaForMMSARun(torch_module.cuda)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return self._torch.load(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def __repr__(self) -> str:
        return f"<{self._torch!r} as MMSA.run sees it (khar_mmsa.registration.fixes)>"


def plain_round(number: Any, ndigits: Any = None) -> Any:
    """``round`` for ``MMSA.run``: numpy scalars come back as Python numbers."""
    value = builtins.round(number, ndigits)
    return value.item() if hasattr(value, "item") else value


class ReduceLROnPlateauWithoutVerbose:
    """Stands in for ``ReduceLROnPlateau`` in MMSA's trainer modules: drops ``verbose=``."""

    def __call__(self, optimizer: Any, *args: Any, verbose: Any = None, **kwargs: Any) -> Any:
        from torch.optim.lr_scheduler import ReduceLROnPlateau
        return ReduceLROnPlateau(optimizer, *args, **kwargs)

    def __repr__(self) -> str:
        return "<ReduceLROnPlateau without verbose= (khar_mmsa)>"


def fix_mmsa() -> None:
    """Apply the fixes of the table above to MMSA's modules."""
    import torch
    run = mmsa_module("MMSA.run")
    replace(run, "torch", TorchForMMSARun(torch))
    replace(run, "round", plain_round)
    for name in VERBOSE_PLATEAU_MODULES:
        replace(mmsa_module(name), "ReduceLROnPlateau", ReduceLROnPlateauWithoutVerbose())
