"""Knowledge refinement (§3.4): the per-modality sparse mixture of experts and its Table 3 ablations.

All refiners map X_m (b, n, 2d) to (b, n, d_m) token-wise and return ``(refined, routing,
tokens_per_expert)``: the MoE's raw router outputs (:class:`~khar_mmsa.model.gating.GateOutput`, from
which the criterion computes eq. 6's balance loss) and the number of real tokens routed to each
expert (e,); ``None`` for both in the ablations, which have no experts.  ``refiner='none'`` is the
identity (X_m goes on at its own width).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from khar_mmsa.config import KHaRConfig
from khar_mmsa.model.dropout import Dropout
from khar_mmsa.model.gating import noisy_top_k_gating
from khar_mmsa.model.harvest import masked_mean


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, out_dim))


class MixtureOfExperts(nn.Module):
    """Eq. 4-5: G(X) = Softmax(KeepTopK(W_g X (+ noise), k)); X^ = sum_i G_i E_i(X), token-wise.

    ``moe_dispatch='sparse'`` (as Mixtral's sparse MoE block): each expert runs only on the real
    tokens routed to it -- gathered, run, weighted by their gate and added back with ``index_add_``
    -- so a token costs k expert evaluations, not e, and padded tokens none.  Deciding how many
    tokens each expert gets reads one (e + 1)-vector of counts back to the host per call.
    ``moe_dispatch='dense'``: the eq. 5 sum written out, every expert on every token weighted by its
    gate (exactly 0 outside the top-k and on padding): the same result, no host read.

    ``routing='token'`` gates every time step on its own features; ``routing='sample'`` gates once
    per sample on the masked mean of X_m and gives all its real time steps those experts and gates
    (the experts still run token-wise).
    """

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.k = cfg.top_k
        self.per_sample = cfg.routing == "sample"
        self.noisy = cfg.moe_noisy_gating
        self.noise_epsilon = cfg.moe_noise_epsilon
        self.out_dim = out_dim
        self.dense = cfg.moe_dispatch == "dense"
        self.w_gate = nn.Linear(in_dim, cfg.num_experts, bias=False)
        self.w_noise = nn.Linear(in_dim, cfg.num_experts, bias=False)
        nn.init.zeros_(self.w_gate.weight)   # Shazeer et al.: zero-initialised gates
        nn.init.zeros_(self.w_noise.weight)
        self.experts = nn.ModuleList(_mlp(in_dim, cfg.expert_hidden_dim, out_dim, cfg.dropout)
                                     for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        """x: (b, n, f); mask: (b, n) bool.  Returns (refined (b, n, d), GateOutput, tokens per expert (e,)).

        Shapes: b batch, n time, f input width, d output width, e experts, k routed experts per token,
        s = b * n * k routing slots (one per token and routed expert), r routed positions per sample
        (n with token routing; 1 with sample routing, where the GateOutput is (b, 1, .) and its mask
        says which samples have a real token)."""
        b, n, f = x.shape
        e = len(self.experts)
        # Padded tokens enter as zeros: a NaN or inf there would otherwise survive its 0 weight
        # (0 * NaN) in the dense sum and in the gate's weight gradient, on either dispatch.
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.per_sample:
            routed_x, routed_mask = masked_mean(x, mask).unsqueeze(1), mask.any(1, keepdim=True)  # (b, 1, f), (b, 1)
        else:
            routed_x, routed_mask = x, mask                                                    # (b, n, f), (b, n)
        clean = self.w_gate(routed_x)                                                      # (b, r, e)
        noise_std = None
        if self.training and self.noisy:
            noise_std = F.softplus(self.w_noise(routed_x)) + self.noise_epsilon
        gate = noisy_top_k_gating(clean, noise_std, self.k, routed_mask)
        selected = gate.selected.expand(b, n, self.k)                                      # (b, n, k)
        gates = gate.gates.expand(b, n, e)                                                 # (b, n, e)
        # slot -> expert; a padded token's slots go to bucket e, which no expert reads
        slot_expert = selected.masked_fill(~mask.unsqueeze(-1), e).reshape(-1)             # (s,)
        counts = torch.zeros(e + 1, dtype=torch.long, device=x.device).index_add_(
            0, slot_expert, torch.ones_like(slot_expert))                                  # (e + 1,)
        if self.dense:
            weights = gates * mask.unsqueeze(-1)                                           # (b, n, e)
            out = sum(expert(x) * weights[..., i:i + 1] for i, expert in enumerate(self.experts))
            return out, gate, counts[:e]
        slot_weight = gates.gather(-1, selected).reshape(-1, 1)                            # (s, 1)
        order = slot_expert.argsort(stable=True)                                           # slots grouped by expert
        tokens = x.reshape(b * n, f)
        out = torch.zeros(b * n, self.out_dim, device=x.device,
                          dtype=torch.promote_types(x.dtype, slot_weight.dtype))
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):  # the one host read
            if count:
                slots = order[start:start + count]
                token = slots // self.k                                                    # (count,)
                routed = expert(tokens.index_select(0, token)) * slot_weight.index_select(0, slots)
                out.index_add_(0, token, routed.to(out.dtype))
            start += count
        return out.view(b, n, self.out_dim), gate, counts[:e]


class MLPRefiner(nn.Module):
    """Table 3 'MLP_m': one token-wise MLP instead of the MoE."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.net = _mlp(in_dim, cfg.expert_hidden_dim, out_dim, cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        return self.net(x), None, None


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
        return self.norm(h + a), None, None


class CNNRefiner(nn.Module):
    """Table 3 'CNN_m': a temporal convolution; padded positions are zeroed first so they never
    leak into real ones at the boundary."""

    kernel_size = 3  # a local window of one frame either side

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, self.kernel_size, padding=self.kernel_size // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2)), None, None


class IdentityRefiner(nn.Module):
    """``refiner='none'``: no refinement, X_m goes on as it is (its width is the harvester's)."""

    def __init__(self, in_dim: int, out_dim: int, cfg: KHaRConfig) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple:
        return x, None, None


REFINERS = {"moe": MixtureOfExperts, "mlp": MLPRefiner, "attention": AttentionRefiner, "cnn": CNNRefiner,
            "none": IdentityRefiner}


def build_refiner(in_dim: int, out_dim: int, cfg: KHaRConfig) -> nn.Module:
    """The refiner of ``cfg.refiner`` mapping width ``in_dim`` to ``out_dim`` (``'none'``: in_dim)."""
    return REFINERS[cfg.refiner](in_dim, out_dim, cfg)


def refined_width(in_dim: int, out_dim: int, cfg: KHaRConfig) -> int:
    """The width a refiner built by :func:`build_refiner` outputs."""
    return in_dim if cfg.refiner == "none" else out_dim
