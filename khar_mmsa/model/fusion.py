"""Multimodal fusion (§3.5): the information bottleneck (eq. 8-12, Appendix C) and Table 3's ablations.

Input: the unimodal vectors x^m = F^m(X^m) (b, f) of Algorithm 1.  Output: ``FusionOutput`` with the
prediction from the posterior mean (used for L_task and at evaluation), the prediction from a
reparameterised sample z = mu + sigma * eps (the -log q(y|z) term of L_MIB; equal to the mean
prediction at evaluation), the posterior's mu and sigma (the criterion computes the KL to N(0, I)
from them) and the fused representation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.losses.information_bottleneck import reparameterize


@dataclass
class FusionOutput:
    pred: torch.Tensor                  # (b, 1) decoder output at the posterior mean
    pred_sampled: torch.Tensor          # (b, 1) decoder output at z ~ p(z|x) (training) / mean (eval)
    fused: torch.Tensor                 # (b, h) representation used for t-SNE (mu for MIB)
    mu: Optional[torch.Tensor] = None     # (b, z) posterior mean of p(z|x) (eq. 23); None without a bottleneck
    sigma: Optional[torch.Tensor] = None  # (b, z) posterior standard deviation (> 0); None without a bottleneck


class InformationBottleneckFusion(nn.Module):
    """F^f -> (mu, Sigma) -> z -> D (Algorithm 1, eq. 23-24)."""

    def __init__(self, num_modalities: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Linear(num_modalities * cfg.fine_grained_dim, cfg.fusion_hidden_dim), nn.ReLU(),
                                  nn.Dropout(cfg.dropout))
        self.mu = nn.Linear(cfg.fusion_hidden_dim, cfg.latent_dim)
        self.sigma = nn.Linear(cfg.fusion_hidden_dim, cfg.latent_dim)
        self.sigma_offset = cfg.mib_sigma_offset
        self.decoder = nn.Linear(cfg.latent_dim, 1)

    def forward(self, unimodal: Sequence[torch.Tensor]) -> FusionOutput:
        """unimodal: m tensors (b, f) (b batch, f fine_grained_dim); mu, sigma, z: (b, latent_dim)."""
        x = self.fuse(torch.cat(list(unimodal), dim=-1))
        mu = self.mu(x)
        sigma = F.softplus(self.sigma(x) + self.sigma_offset)
        z = reparameterize(mu, sigma, self.training)
        return FusionOutput(pred=self.decoder(mu), pred_sampled=self.decoder(z), fused=mu, mu=mu, sigma=sigma)


class _PlainFusion(nn.Module):
    """Shared tail of the Table 3 fusion ablations: combine -> Linear+ReLU -> Linear(1)."""

    def __init__(self, in_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, cfg.fusion_hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.fusion_hidden_dim, 1)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:  # (b, m, f) -> (b, in_dim)
        raise NotImplementedError

    def forward(self, unimodal: Sequence[torch.Tensor]) -> FusionOutput:
        h = self.hidden(self.combine(torch.stack(list(unimodal), dim=1)))
        pred = self.head(h)
        return FusionOutput(pred=pred, pred_sampled=pred, fused=h)


class SumFusion(_PlainFusion):
    """Table 3 'SUM'."""

    def __init__(self, num_modalities: int, cfg: KHaRConfig) -> None:
        super().__init__(cfg.fine_grained_dim, cfg)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.sum(1)


class ConcatFusion(_PlainFusion):
    """Table 3 'CON'."""

    def __init__(self, num_modalities: int, cfg: KHaRConfig) -> None:
        super().__init__(num_modalities * cfg.fine_grained_dim, cfg)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.flatten(1)


class MultiplyFusion(_PlainFusion):
    """Table 3 'MUL': element-wise product of the modality vectors."""

    def __init__(self, num_modalities: int, cfg: KHaRConfig) -> None:
        super().__init__(cfg.fine_grained_dim, cfg)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.prod(1)


class AttentionFusion(_PlainFusion):
    """Table 3 'ATTN': self-attention across the modality vectors, then their mean."""

    attention_heads = 1  # fine_grained_dim (50) has few divisors; one head always fits

    def __init__(self, num_modalities: int, cfg: KHaRConfig) -> None:
        super().__init__(cfg.fine_grained_dim, cfg)
        self.attn = nn.MultiheadAttention(cfg.fine_grained_dim, self.attention_heads, batch_first=True)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(stacked, stacked, stacked, need_weights=False)
        return (stacked + a).mean(1)


FUSIONS = {"mib": InformationBottleneckFusion, "sum": SumFusion, "concat": ConcatFusion,
           "attention": AttentionFusion, "mul": MultiplyFusion}


def build_fusion(num_modalities: int, cfg: KHaRConfig) -> nn.Module:
    return FUSIONS[cfg.fusion](num_modalities, cfg)
