"""The total loss of eq. 22, weighted in one place (like DETR's SetCriterion).

L = L_MoE + L_MIB + lambda * L_CL + L_task, with
  L_MoE  = omega * sum_m (CV(I_m)^2 + CV(L_m)^2)                 (eq. 6; omega = moe_balance_weight)
  L_MIB  = beta * KL(p(z|x) || N(0, I)) + |y - D(z)|, z sampled    (eq. 12, 25, 28; beta = mib_beta)
  L_CL   = intensity contrastive loss on the unimodal vectors      (eq. 21; lambda = contrastive_weight)
  L_task = |y - y_hat|, y_hat = D(mu) the prediction reported      (§3.7)
The model returns unweighted terms; :class:`KHaRCriterion` returns the weighted total and both the raw
and the weighted terms for logging.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch.nn import functional as F

from .config import KHaRConfig
from .losses.contrastive import intensity_contrastive_loss


class KHaRCriterion:
    def __init__(self, cfg: KHaRConfig) -> None:
        self.cfg = cfg
        self.weights: Dict[str, float] = {
            "task": 1.0,                              # eq. 22: L_task, unweighted
            "mib_nll": 1.0,                           # eq. 12: -log q(y|z) = L1 (eq. 25)
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
            terms["contrastive"] = intensity_contrastive_loss(feats, y.view(-1) / self.kappa_scale,
                                                              self.cfg.contrastive_kappa,
                                                              self.cfg.contrastive_temperature)
        else:
            terms["contrastive"] = zero
        return terms

    def __call__(self, outputs: Mapping[str, object], labels: torch.Tensor) -> tuple:
        """Returns (total loss, raw terms, weighted terms)."""
        raw = self.raw_terms(outputs, labels)
        weighted = {k: self.weights[k] * v for k, v in raw.items()}
        return sum(weighted.values()), raw, weighted
