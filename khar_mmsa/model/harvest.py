"""Knowledge harvesting (§3.3): wiring adapter blocks into an encoder's depth.

The chained adapters read the encoder's intermediate states H_m through one shared LayerNorm
(KuDA's design, Feng et al., EMNLP Findings 2024): x = Ad_1(LN(H[l0] + H[l1])), x = Ad_i(LN(x + H[l_i])).  The layers
``l_i`` follow the encoder's depth (config ``adapter_layers_*`` or evenly spaced), so a 4-layer
test BERT, 6-layer MiniLM and 12-layer BERT-base all work.  The harvested representation is
X_m = [A_m; H_m] (eq. 3), where the config's ``harvested_state`` picks H_m: the encoder output O_m
('output', the default) or the last intermediate state the adapters read ('last_hidden'); every state
has width d_m.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from khar_mmsa.model.adapter import AdapterBlock
from khar_mmsa.model.encoders import EncoderOutput


def evenly_spaced_layers(num_states: int, num_adapters: int) -> list:
    """Hidden-state indices feeding ``num_adapters`` chained adapters.

    ``num_states`` counts the states an encoder exposes (embeddings/input projection included, the
    final output excluded when it is also O_m).  The first adapter takes two states, every further
    one takes one: ``num_adapters + 1`` indices spread evenly from 0 to ``num_states - 1``.  For a
    12-layer BERT (13 states, 12 intermediate ones: 0..11) and 4 adapters this gives
    [0, 3, 6, 8, 11] -- KuDA's [0, 3, 6, 9, 11] up to rounding.
    """
    last = num_states - 1
    return [round(i * last / num_adapters) for i in range(num_adapters + 1)]


class AdapterStack(nn.Module):
    """Chained adapter blocks fed by selected intermediate states of one encoder."""

    def __init__(self, dim: int, num_hidden_states: int, num_adapters: int, layers: Optional[Sequence[int]],
                 heads: int, inner_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = list(layers) if layers is not None else evenly_spaced_layers(num_hidden_states, num_adapters)
        if len(self.layers) != num_adapters + 1 or max(self.layers) >= num_hidden_states:
            raise ValueError(f"adapter layers {self.layers} do not fit an encoder with {num_hidden_states} "
                             f"intermediate states and {num_adapters} adapters")
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(AdapterBlock(dim, heads, inner_layers, dropout) for _ in range(num_adapters))

    def forward(self, enc: EncoderOutput) -> torch.Tensor:
        """Returns A_m: (b, n, d)."""
        h = enc.hidden
        x = self.blocks[0](self.norm(h[self.layers[0]] + h[self.layers[1]]), enc.mask)
        for block, layer in zip(self.blocks[1:], self.layers[2:]):
            x = block(self.norm(x + h[layer]), enc.mask)
        return x


#: What :class:`Harvester` concatenates after A_m (config ``harvested_state``).
HARVESTED_STATES = ("output", "last_hidden")


class Harvester(nn.Module):
    """Encoder + adapters of one modality: returns X_m = [A_m; H_m] (b, n, 2d) and the mask, H_m the
    encoder output O_m (``state='output'``) or the last hidden state the adapters read
    (``state='last_hidden'``); without adapters (``harvesting=False``) X_m = O_m (b, n, d)."""

    def __init__(self, encoder: nn.Module, adapters: Optional[AdapterStack], state: str = "output") -> None:
        super().__init__()
        if state not in HARVESTED_STATES:
            raise ValueError(f"harvested_state={state!r}: one of {HARVESTED_STATES}")
        self.encoder = encoder
        self.adapters = adapters
        self.state = state

    @property
    def width(self) -> int:
        """The width of X_m: 2d with adapters, d without."""
        return self.encoder.dim * (1 if self.adapters is None else 2)

    def train(self, mode: bool = True) -> "Harvester":
        """``nn.Module.train``, except that a frozen part -- the encoder or the adapter stack, no
        parameter requiring grad (a text encoder with ``finetune_bert=False``, adapters frozen after
        pretraining) -- stays in eval mode: dropout never perturbs weights that do not train.  Checked
        at each call, so freezing takes effect at the next ``train()``."""
        super().train(mode)
        if mode:
            for part in (self.encoder, self.adapters):
                if part is not None and not any(p.requires_grad for p in part.parameters()):
                    part.eval()
        return self

    def forward(self, *inputs: torch.Tensor) -> tuple:
        enc = self.encoder(*inputs)
        if self.adapters is None:
            return enc.final, enc.mask, None
        adapted = self.adapters(enc)
        second = enc.final if self.state == "output" else enc.hidden[self.adapters.layers[-1]]
        return torch.cat([adapted, second], dim=-1), enc.mask, adapted


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x: (b, n, d), mask: (b, n) bool -> (b, d) mean over real positions only.  Padded positions
    are selected away, not multiplied by 0, so a NaN or inf there never reaches the mean (nor its
    gradient)."""
    m = mask.unsqueeze(-1)
    return torch.where(m, x, x.new_zeros(())).sum(1) / m.sum(1).clamp_min(1).to(x.dtype)
