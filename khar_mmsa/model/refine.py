"""Knowledge refinement (§3.4): the per-modality sparse mixture of experts and its Table 3 ablations.

All refiners map X_m (b, n, 2d) to (b, n, d_m) token-wise and return an unweighted balance term
(CV^2(importance) + CV^2(load), eq. 6 without omega; zero for the ablations).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.losses.balance import cv_squared
from khar_mmsa.model.dropout import Dropout
from khar_mmsa.model.gating import noisy_top_k_gating


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, out_dim))


class MixtureOfExperts(nn.Module):
    """Eq. 4-6: G(X) = Softmax(KeepTopK(W_g X (+ noise), k)); X^ = sum_i G_i E_i(X)."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.k = cfg.top_k
        self.noisy = cfg.moe_noisy_gating
        self.noise_epsilon = cfg.moe_noise_epsilon
        self.cv_eps = cfg.cv_eps
        self.w_gate = nn.Linear(in_dim, cfg.num_experts, bias=False)
        self.w_noise = nn.Linear(in_dim, cfg.num_experts, bias=False)
        nn.init.zeros_(self.w_gate.weight)   # Shazeer et al.: zero-initialised gates
        nn.init.zeros_(self.w_noise.weight)
        self.experts = nn.ModuleList(_mlp(in_dim, cfg.expert_hidden_dim, out_dim, cfg.dropout)
                                     for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        """x: (b, n, f); mask: (b, n) bool. Returns ((b, n, d), balance scalar, gates (b, n, e))."""
        clean = self.w_gate(x)
        noise_std = None
        if self.training and self.noisy:
            noise_std = F.softplus(self.w_noise(x)) + self.noise_epsilon
        gate = noisy_top_k_gating(clean, noise_std, self.k, mask)
        expert_out = torch.stack([expert(x) for expert in self.experts], dim=2)  # (b, n, e, d)
        out = (gate.gates.unsqueeze(-1) * expert_out).sum(2)
        balance = cv_squared(gate.importance, self.cv_eps) + cv_squared(gate.load, self.cv_eps)
        return out, balance, gate.gates


class MLPRefiner(nn.Module):
    """Table 3 'MLP_m': one token-wise MLP instead of the MoE."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.net = _mlp(in_dim, cfg.expert_hidden_dim, out_dim, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        return self.net(x), x.new_zeros(()), None


class AttentionRefiner(nn.Module):
    """Table 3 'ATTN_m': projection + masked self-attention with a residual."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.attn = nn.MultiheadAttention(out_dim, cfg.encoder_heads, dropout=cfg.dropout, batch_first=True)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        h = self.proj(x)
        a, _ = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        return self.norm(h + a), x.new_zeros(()), None


class CNNRefiner(nn.Module):
    """Table 3 'CNN_m': a temporal convolution; padded positions are zeroed first so they never
    leak into real ones at the boundary."""

    kernel_size = 3  # a local window of one frame either side

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, self.kernel_size, padding=self.kernel_size // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2)), x.new_zeros(()), None


REFINERS = {"moe": MixtureOfExperts, "mlp": MLPRefiner, "attention": AttentionRefiner, "cnn": CNNRefiner}


def build_refiner(in_dim: int, out_dim: int, cfg: KHaRConfig) -> nn.Module:
    return REFINERS[cfg.refiner](in_dim, out_dim, cfg)
