"""Multimodal fusion (§3.5): the information bottleneck (eq. 8-12, Appendix C) and Table 3's ablations.

Input: the unimodal vectors x^m = F^m(X^m) (b, f_m) of Algorithm 1, one width per modality (all
``fine_grained_dim`` with the projection; the pooled refined widths with ``projection='none'``).  Output: ``FusionOutput`` with the
prediction from the posterior mean (used for L_task and at evaluation), the prediction from a
reparameterised sample z = mu + sigma * eps (the -log q(y|z) term of L_MIB; equal to the mean
prediction at evaluation), the posterior's mu and sigma (the criterion computes the KL to N(0, I)
from them) and the fused representation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig


def reparameterize(mu: Tensor, sigma: Tensor, training: bool, noise: Optional[Tensor] = None) -> Tensor:
    """Eq. 24: ``z = mu + sigma * eps`` with eps ~ N(0, I) in training; ``mu`` itself at evaluation.

    Shapes: b batch, z latent width.  ``mu``, ``sigma`` (b, z); ``noise`` (b, z) optional eps
    sample (for tests), drawn with ``randn_like`` when omitted; returns (b, z).  At evaluation the
    sample is not drawn at all (E-MIB samples at test time too; that is the pitfall avoided here).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    if not training:
        return mu
    if noise is None:
        noise = torch.randn_like(mu)
    elif noise.shape != mu.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and mu {tuple(mu.shape)} differ in shape")
    return mu + sigma * noise


@dataclass
class FusionOutput:
    pred: torch.Tensor                  # (b, 1) decoder output at the posterior mean
    pred_sampled: torch.Tensor          # (b, 1) decoder output at z ~ p(z|x) (training) / mean (eval)
    fused: torch.Tensor                 # (b, h) representation used for t-SNE (mu for MIB)
    mu: Optional[torch.Tensor] = None     # (b, z) posterior mean of p(z|x) (eq. 23); None without a bottleneck
    sigma: Optional[torch.Tensor] = None  # (b, z) posterior standard deviation (> 0); None without a bottleneck


class InformationBottleneckFusion(nn.Module):
    """F^f -> (mu, Sigma) -> z -> D (Algorithm 1, eq. 23-24)."""

    def __init__(self, widths: Sequence[int], cfg: KHaRConfig) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Linear(sum(widths), cfg.fusion_hidden_dim), nn.ReLU(),
                                  nn.Dropout(cfg.dropout))
        self.mu = nn.Linear(cfg.fusion_hidden_dim, cfg.latent_dim)
        self.sigma = nn.Linear(cfg.fusion_hidden_dim, cfg.latent_dim)
        self.sigma_offset = cfg.mib_sigma_offset
        self.decoder = nn.Linear(cfg.latent_dim, 1)

    def forward(self, unimodal: Sequence[torch.Tensor]) -> FusionOutput:
        """unimodal: m tensors (b, f_m) (b batch, f_m a modality's width); mu, sigma, z: (b, latent_dim)."""
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

    def join(self, unimodal: List[torch.Tensor]) -> torch.Tensor:  # m x (b, f) -> (b, in_dim)
        return self.combine(torch.stack(unimodal, dim=1))

    def forward(self, unimodal: Sequence[torch.Tensor]) -> FusionOutput:
        h = self.hidden(self.join(list(unimodal)))
        pred = self.head(h)
        return FusionOutput(pred=pred, pred_sampled=pred, fused=h)


class _ElementwiseFusion(_PlainFusion):
    """A Table 3 ablation on vectors of one width, reduced over the modality axis by ``reduce``."""

    name = ""
    reduce = staticmethod(torch.sum)

    def __init__(self, widths: Sequence[int], cfg: KHaRConfig) -> None:
        super().__init__(_one_width(widths, self.name), cfg)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.reduce(stacked, 1)


class SumFusion(_ElementwiseFusion):
    """Table 3 'SUM'."""

    name, reduce = "sum", staticmethod(torch.sum)


class MultiplyFusion(_ElementwiseFusion):
    """Table 3 'MUL': element-wise product of the modality vectors."""

    name, reduce = "mul", staticmethod(torch.prod)


class ConcatFusion(_PlainFusion):
    """Table 3 'CON'."""

    def __init__(self, widths: Sequence[int], cfg: KHaRConfig) -> None:
        super().__init__(sum(widths), cfg)

    def join(self, unimodal: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(unimodal, dim=-1)  # concatenation: the widths may differ


class AttentionFusion(_PlainFusion):
    """Table 3 'ATTN': self-attention across the modality vectors, then their mean."""

    attention_heads = 1  # fine_grained_dim (50) has few divisors; one head always fits

    def __init__(self, widths: Sequence[int], cfg: KHaRConfig) -> None:
        width = _one_width(widths, "attention")
        super().__init__(width, cfg)
        self.attn = nn.MultiheadAttention(width, self.attention_heads, batch_first=True)

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(stacked, stacked, stacked, need_weights=False)
        return (stacked + a).mean(1)


class LinearFusion(nn.Module):
    """``fusion='linear'``: Dropout and one Linear from the concatenated unimodal vectors to the
    prediction (a linear head; no hidden layer, no bottleneck)."""

    def __init__(self, widths: Sequence[int], cfg: KHaRConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(sum(widths), 1)

    def forward(self, unimodal: Sequence[torch.Tensor]) -> FusionOutput:
        """unimodal: m tensors (b, f_m); fused: (b, sum f_m) the concatenation; pred: (b, 1)."""
        fused = torch.cat(list(unimodal), dim=-1)
        pred = self.head(self.dropout(fused))
        return FusionOutput(pred=pred, pred_sampled=pred, fused=fused)


def _one_width(widths: Sequence[int], name: str) -> int:
    """The common width of element-wise fusions; a ValueError when the modalities' widths differ."""
    if len(set(widths)) != 1:
        raise ValueError(f"fusion={name!r} combines the unimodal vectors element-wise, but their widths "
                         f"differ: {list(widths)}")
    return int(widths[0])


FUSIONS = {"mib": InformationBottleneckFusion, "sum": SumFusion, "concat": ConcatFusion,
           "attention": AttentionFusion, "mul": MultiplyFusion, "linear": LinearFusion}


def build_fusion(widths: Sequence[int], cfg: KHaRConfig) -> nn.Module:
    """The fusion of ``cfg.fusion`` for unimodal vectors of ``widths`` (one per modality, T/A/V order)."""
    return FUSIONS[cfg.fusion](widths, cfg)
