"""``ReduceLROnPlateau(verbose=...)`` in MMSA's MulT, MMIM and TFR-Net trainers (breakage 2).

Today's torch no longer accepts ``verbose=``; the name ``ReduceLROnPlateau`` in those trainer
modules is replaced by :class:`ReduceLROnPlateauCompat`, which drops it.
"""
from __future__ import annotations

from typing import Any

from khar_mmsa.integration.registry import mmsa_module, set_attr

#: MMSA trainer modules that call ``ReduceLROnPlateau(..., verbose=True)``.
TRAINER_MODULES = ("MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                   "MMSA.trains.missingTask.TFR_NET")


def patch() -> None:
    """Replace ``ReduceLROnPlateau`` in each of :data:`TRAINER_MODULES`."""
    for name in TRAINER_MODULES:
        set_attr(mmsa_module(name), "ReduceLROnPlateau", ReduceLROnPlateauCompat())


class ReduceLROnPlateauCompat:
    """Stands in for ``ReduceLROnPlateau`` in MMSA's trainer modules: drops ``verbose=``.

    Calling it returns a real :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`.
    """

    def __call__(self, optimizer: Any, *args: Any, verbose: Any = None, **kwargs: Any) -> Any:
        from torch.optim.lr_scheduler import ReduceLROnPlateau
        return ReduceLROnPlateau(optimizer, *args, **kwargs)

    def __repr__(self) -> str:
        return "<ReduceLROnPlateau without verbose= (khar_mmsa)>"
