"""Optimizer, parameter groups and learning-rate schedule shared by every training in khar_mmsa."""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Tuple, Union

import torch
from torch import nn


def make_adamw(params: Union[Iterable[torch.Tensor], Iterable[dict]], **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over all parameters. Measured on the 2-core CPU
    (24 M parameters in 400 tensors): fused 0.18 s per step, ``foreach`` 1.0 s, and 1.7 s for the
    per-parameter loop that PyTorch picks by default for CPU tensors. Same update rule."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms (1-D parameters) and learned positional tables (names ending in ``position``)."""
    return param.ndim < 2 or name.endswith("position")


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     special: Mapping[str, Tuple[nn.Module, float]] = None) -> List[dict]:
    """AdamW groups by rule, never by position in ``parameters()``.

    Each parameter of ``model`` that requires a gradient goes to the group of the first
    ``special`` submodule holding it (``{label: (submodule, its learning rate)}``), else to
    ``'other'`` at ``lr``; within a group, :func:`no_weight_decay` parameters get weight decay 0,
    the rest ``weight_decay``.  Groups come in a fixed order: ``'other'`` first, then the special
    ones in the order given, each with its decayed parameters before the others; each group is
    named ``<label>`` or ``<label>-no_decay``.  Frozen parameters are left out."""
    special = dict(special or {})
    owner: Dict[int, str] = {}
    for label, (module, _) in reversed(list(special.items())):
        owner.update({id(p): label for p in module.parameters()})
    rates = {"other": lr, **{label: rate for label, (_, rate) in special.items()}}
    groups: Dict[Tuple[int, bool], list] = {}
    order = list(rates)
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (order.index(owner.get(id(p), "other")), no_weight_decay(name, p))
            groups.setdefault(key, []).append(p)
    return [{"params": params, "lr": rates[order[i]], "weight_decay": 0.0 if no_decay else weight_decay,
             "name": f"{order[i]}{'-no_decay' if no_decay else ''}"}
            for (i, no_decay), params in sorted(groups.items())]


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """The warm-up length of a run of ``total_steps`` optimizer steps: ``warmup_ratio`` of them,
    rounded (0: no warm-up, decay from the first step)."""
    return int(round(total_steps * warmup_ratio))


def warmup_linear_decay_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                                  warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the group's rate over :func:`warmup_steps`, then linear decay to 0
    at ``total_steps`` (Appendix B): ``transformers.get_linear_schedule_with_warmup``, stepped once
    per optimizer step."""
    from transformers import get_linear_schedule_with_warmup
    return get_linear_schedule_with_warmup(optimizer, warmup_steps(total_steps, warmup_ratio), total_steps)
