"""The total loss of eq. 22: every term computed and weighted in one place (like DETR's SetCriterion).

L = L_MoE + L_MIB + lambda * L_CL + L_task, with
  L_MoE  = omega * sum_m (CV(I_m)^2 + CV(L_m)^2)                 (eq. 6; omega = moe_balance_weight)
  L_MIB  = beta * KL(p(z|x) || N(0, I)) + |y - D(z)|, z sampled    (eq. 12, 25, 28; beta = mib_beta, the KL
                                                                   reduced over dimensions by mib_kl_reduction;
                                                                   with mib_beta_warmup_epochs = W, beta is
                                                                   mib_beta * min(1, (epoch - 1) / W))
  L_CL   = intensity contrastive loss on the unimodal vectors      (eq. 21; lambda = contrastive_weight; the
                                                                   vectors after or before the projection's
                                                                   ReLU, contrastive_on)
  L_task = |y - y_hat|, y_hat = D(mu) the prediction reported      (§3.7)

The model returns raw outputs only (predictions, the bottleneck's mu and sigma, each MoE's router
outputs, the unimodal vectors).  :class:`KHaRCriterion` computes each term from the one tested
function for it -- :func:`~khar_mmsa.losses.information_bottleneck.gaussian_kl_to_standard_normal`,
:func:`~khar_mmsa.losses.balance.importance_and_load` and :func:`~khar_mmsa.losses.balance.balance_loss`,
:func:`~khar_mmsa.losses.contrastive.intensity_contrastive_loss` -- in float32 with autocast off (the
outputs it reads are cast to float32 first, so a bf16 forward under ``amp`` gets fp32 losses), and
returns the weighted total with the raw and the weighted terms for logging.

Table 3's ablations change one thing, and :func:`active_terms` names the terms each keeps.  With the
bottleneck the prediction is supervised by two L1 terms, on D(mu) (L_task) and on D(z)
(-log q(y|z)); a fusion without a bottleneck has no z and no posterior, so it keeps neither the NLL
nor the KL, and its prediction takes the L1 with the combined weight of both: the task gradient
keeps its size relative to lambda * L_CL and L_MoE.  A refiner other than the MoE has no gates, so
it has no balance term.  ``contrastive_weight=0`` ('w/o CL') drops the contrastive term.  With two
modalities, each present modality keeps its own balance term and contrastive pairs, with the same
weights as in the full model.  An inactive term is reported as 0 and never computed.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.losses.balance import balance_loss, importance_and_load
from khar_mmsa.losses.contrastive import intensity_contrastive_loss
from khar_mmsa.losses.information_bottleneck import gaussian_kl_to_standard_normal

TASK_L1_WEIGHT = 1.0   # eq. 22: L_task enters unweighted
NLL_L1_WEIGHT = 1.0    # eq. 12: -log q(y|z) = |y - D(z)| + C (eq. 25) enters L_MIB unweighted
UNWEIGHTED = 1.0       # balance_loss's omega for a raw term; the criterion weighs the sum over modalities

#: Every term the criterion knows, in the order it reports them.
TERMS = ("task", "mib_nll", "mib_kl", "moe_balance", "contrastive")


def active_terms(cfg: KHaRConfig) -> Tuple[str, ...]:
    """The loss terms a configuration (a Table 3 row) keeps, in :data:`TERMS` order.

    ``task`` always; ``mib_nll`` and ``mib_kl`` with the bottleneck only (``fusion='mib'``: no z and
    no posterior otherwise); ``moe_balance`` with the MoE refiner only (the others have no gates);
    ``contrastive`` when ``contrastive_weight > 0``.  The modality subsets keep every term.
    """
    keep = {"task": True,
            "mib_nll": cfg.fusion == "mib",
            "mib_kl": cfg.fusion == "mib",
            "moe_balance": cfg.refiner == "moe",
            "contrastive": cfg.contrastive_weight > 0}
    return tuple(t for t in TERMS if keep[t])


def float32_outputs(obj):
    """Floating tensors of a (nested) raw output -- dicts, NamedTuples, lists -- as float32: the one
    cast of a bf16 forward's outputs (the criterion's inputs here, the evaluation's in the trainer)."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: float32_outputs(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(float32_outputs(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(float32_outputs(v) for v in obj)
    return obj


class KHaRCriterion:
    def __init__(self, cfg: KHaRConfig) -> None:
        self.cfg = cfg
        self.active = active_terms(cfg)
        has_bottleneck = "mib_nll" in self.active
        weights = {
            # without a bottleneck the prediction carries both L1 weights (Table 3 changes the fusion only)
            "task": TASK_L1_WEIGHT if has_bottleneck else TASK_L1_WEIGHT + NLL_L1_WEIGHT,
            "mib_nll": NLL_L1_WEIGHT,
            "mib_kl": cfg.mib_beta,                   # eq. 12: beta * KL
            "moe_balance": cfg.moe_balance_weight,    # eq. 6: omega * (CV^2 + CV^2), summed over modalities
            "contrastive": cfg.contrastive_weight,    # eq. 22: lambda * L_CL
        }
        self.weights: Dict[str, float] = {k: (w if k in self.active else 0.0) for k, w in weights.items()}
        self.unimodal_key = "unimodal" if cfg.contrastive_on == "after_relu" else "unimodal_linear"
        self.set_epoch(1)
        low, high = cfg.label_range
        # contrastive_label_scale='unit' divides by the largest |label| (CLGSI's [-1, 1] scale)
        self.kappa_scale = 1.0 if cfg.contrastive_label_scale == "raw" else max(abs(low), abs(high))

    def beta(self, epoch: int) -> float:
        """beta of eq. 12 in ``epoch`` (from 1): ``mib_beta``, or with ``mib_beta_warmup_epochs`` = W > 0
        ``mib_beta * min(1, (epoch - 1) / W)`` (0 in the first epoch, ``mib_beta`` from epoch W + 1)."""
        warmup = self.cfg.mib_beta_warmup_epochs
        ramp = 1.0 if warmup == 0 else min(1.0, max(0, epoch - 1) / warmup)
        return self.cfg.mib_beta * ramp

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each training epoch (from 1): sets the epoch's KL weight."""
        if "mib_kl" in self.active:
            self.weights["mib_kl"] = self.beta(epoch)

    # -- one method per term: (raw float32 outputs, labels (b, 1) float32) -> unweighted scalar ----
    def task(self, out: Mapping, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(out["M"], y)

    def mib_nll(self, out: Mapping, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(out["M_sampled"], y)

    def mib_kl(self, out: Mapping, y: torch.Tensor) -> torch.Tensor:
        return gaussian_kl_to_standard_normal(out["mu"], out["sigma"], self.cfg.mib_kl_reduction).mean()

    def moe_balance(self, out: Mapping, y: torch.Tensor) -> torch.Tensor:
        total = y.new_zeros(())
        for gate in out["routing"].values():
            importance, load = importance_and_load(gate.gates, gate.selected, gate.clean_logits,
                                                   gate.noisy_logits, gate.noise_std, gate.mask)
            total = total + balance_loss(importance, load, UNWEIGHTED, self.cfg.cv_eps)
        return total

    def contrastive(self, out: Mapping, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if y.shape[0] < 2:  # a single sample has no pair
            return y.new_zeros(())
        feats = torch.stack([F.normalize(v, dim=-1) for v in out[self.unimodal_key].values()], dim=1)
        # pairs are decided on the labels as given (at least float32), never on a half-precision copy
        y_cl = labels.reshape(-1).to(torch.promote_types(labels.dtype, torch.float32)) / self.kappa_scale
        return intensity_contrastive_loss(feats, y_cl, self.cfg.contrastive_kappa, self.cfg.contrastive_temperature)

    # ---------------------------------------------------------------------------------------------
    def raw_terms(self, outputs: Mapping[str, object], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """labels: (b, 1) or (b,) on the dataset's raw scale.  Returns every unweighted term of
        :data:`TERMS` in float32 (0 for a term this configuration does not keep)."""
        device = outputs["M"].device
        with torch.autocast(device.type, enabled=False):
            out = float32_outputs(outputs)
            y = labels.reshape(-1, 1).to(device=device, dtype=torch.float32)
            zero = y.new_zeros(())
            terms = {}
            for name in TERMS:
                if name not in self.active:
                    terms[name] = zero
                elif name == "contrastive":
                    terms[name] = self.contrastive(out, y, labels)
                else:
                    terms[name] = getattr(self, name)(out, y)
        return terms

    def __call__(self, outputs: Mapping[str, object], labels: torch.Tensor) -> tuple:
        """Returns (total loss, raw terms, weighted terms), all float32."""
        raw = self.raw_terms(outputs, labels)
        weighted = {k: self.weights[k] * v for k, v in raw.items()}
        return sum(weighted.values()), raw, weighted
