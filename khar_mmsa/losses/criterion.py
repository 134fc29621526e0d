"""The total loss of eq. 22, weighted in one place (like DETR's SetCriterion).

L = L_MoE + L_MIB + lambda * L_CL + L_task, with
  L_MoE  = omega * sum_m (CV(I_m)^2 + CV(L_m)^2)                 (eq. 6; omega = moe_balance_weight)
  L_MIB  = beta * KL(p(z|x) || N(0, I)) + |y - D(z)|, z sampled    (eq. 12, 25, 28; beta = mib_beta, the KL
                                                                   reduced over dimensions by mib_kl_reduction)
  L_CL   = intensity contrastive loss on the unimodal vectors      (eq. 21; lambda = contrastive_weight)
  L_task = |y - y_hat|, y_hat = D(mu) the prediction reported      (§3.7)
The model returns unweighted terms; :class:`KHaRCriterion` returns the weighted total and both the raw
and the weighted terms for logging.

Table 3's ablations change one thing.  With the bottleneck the prediction is supervised by two L1
terms, on D(mu) (L_task) and on D(z) (-log q(y|z)); a fusion without a bottleneck has no z, so its
prediction takes the L1 with the combined weight of both, and the task gradient keeps its size
relative to lambda * L_CL and L_MoE.  A refiner other than the MoE has no gates, so its balance loss
is 0 (there is nothing to balance); with two modalities, each present modality keeps its own balance
term and contrastive pairs, with the same weights as in the full model.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.losses.contrastive import intensity_contrastive_loss

TASK_L1_WEIGHT = 1.0   # eq. 22: L_task enters unweighted
NLL_L1_WEIGHT = 1.0    # eq. 12: -log q(y|z) = |y - D(z)| + C (eq. 25) enters L_MIB unweighted


class KHaRCriterion:
    def __init__(self, cfg: KHaRConfig) -> None:
        self.cfg = cfg
        has_bottleneck = cfg.fusion == "mib"
        self.weights: Dict[str, float] = {
            # without a bottleneck the prediction carries both L1 weights (Table 3 changes the fusion only)
            "task": TASK_L1_WEIGHT if has_bottleneck else TASK_L1_WEIGHT + NLL_L1_WEIGHT,
            "mib_nll": NLL_L1_WEIGHT if has_bottleneck else 0.0,
            "mib_kl": cfg.mib_beta,                   # eq. 12: beta * KL
            "moe_balance": cfg.moe_balance_weight,    # eq. 6: omega * (CV^2 + CV^2), summed over modalities
            "contrastive": cfg.contrastive_weight,    # eq. 22: lambda * L_CL
        }
        low, high = cfg.label_range
        # contrastive_label_scale='unit' divides by the largest |label| (CLGSI's [-1, 1] scale)
        self.kappa_scale = 1.0 if cfg.contrastive_label_scale == "raw" else max(abs(low), abs(high))

    def raw_terms(self, outputs: Mapping[str, object], labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """labels: (b, 1) or (b,) on the dataset's raw scale. Returns every unweighted term."""
        y = labels.reshape(-1, 1).to(outputs["M"].dtype)
        zero = y.new_zeros(())
        terms = {"task": F.l1_loss(outputs["M"], y)}
        if outputs.get("kl") is not None:
            terms["mib_nll"] = F.l1_loss(outputs["M_sampled"], y)
            terms["mib_kl"] = outputs["kl"].mean()
        else:
            terms["mib_nll"] = terms["mib_kl"] = zero
        balance = outputs.get("balance") or {}
        terms["moe_balance"] = sum(balance.values(), zero)
        if self.weights["contrastive"] > 0 and y.shape[0] > 1:
            feats = torch.stack([F.normalize(v, dim=-1) for v in outputs["unimodal"].values()], dim=1)
            # pairs are decided on the labels as given (at least float32), never on a half-precision copy
            y_cl = labels.reshape(-1).to(torch.promote_types(labels.dtype, torch.float32)) / self.kappa_scale
            terms["contrastive"] = intensity_contrastive_loss(feats, y_cl, self.cfg.contrastive_kappa,
                                                              self.cfg.contrastive_temperature)
        else:
            terms["contrastive"] = zero
        return terms

    def __call__(self, outputs: Mapping[str, object], labels: torch.Tensor) -> tuple:
        """Returns (total loss, raw terms, weighted terms)."""
        raw = self.raw_terms(outputs, labels)
        weighted = {k: self.weights[k] * v for k, v in raw.items()}
        return sum(weighted.values()), raw, weighted
