"""Comprehensive-level encoders (§3.3, eq. 1): BERT for text, stacked Transformers for audio/vision.

Each returns ``EncoderOutput``: the final state O_m, the intermediate hidden states H_m (the states
the adapters read; the final one excluded) and the padding mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from khar_mmsa.model.text_encoders import resolve_pretrained
from khar_mmsa.model.attention import FusedEncoderLayer, key_padding_mask


@dataclass
class EncoderOutput:
    final: torch.Tensor          # O_m: (b, n, d)
    hidden: List[torch.Tensor]   # H_m: intermediate states, each (b, n, d); index 0 = embeddings/input projection
    mask: torch.Tensor           # (b, n) bool, True at real positions


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(b,) lengths -> (b, max_len) bool mask, True at real positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths.to(torch.long)[:, None]


class SequenceEncoder(nn.Module):
    """Audio/vision encoder: Linear projection + learned positions + stacked Transformer layers
    (fused attention, parameter names of ``nn.TransformerEncoderLayer``; see model/attention.py)."""

    def __init__(self, in_dim: int, dim: int, layers: int, heads: int, ff_dim: int, dropout: float,
                 max_len: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.position = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            FusedEncoderLayer(dim, heads, ff_dim, dropout) for _ in range(layers))
        self.dim = dim

    @property
    def num_hidden_states(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        """x: (b, n, f) features; mask: (b, n) bool. The layers are iterated here to expose the
        intermediate states (stock nn.TransformerEncoder returns the last one only)."""
        n = x.shape[1]
        if n > self.position.shape[1]:
            raise ValueError(f"sequence of length {n} is longer than the encoder's max_len "
                             f"{self.position.shape[1]} (seq_lens from the training pickle)")
        h = self.proj(x) + self.position[:, :n]
        states = [h]
        attn_mask = key_padding_mask(mask)
        for layer in self.layers:
            h = layer(h, attn_mask)
            states.append(h)
        return EncoderOutput(final=states[-1], hidden=states[:-1], mask=mask)


class TextEncoder(nn.Module):
    """A pretrained BERT-family encoder exposing all hidden states."""

    def __init__(self, pretrained: str, finetune: bool) -> None:
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(resolve_pretrained(pretrained))
        self.finetune = finetune
        #: Held frozen for now (``freeze_bert_epochs``): no gradient and eval mode while True, but the
        #: parameters keep ``requires_grad`` so the optimizer holds them for the epochs that fine-tune.
        self.held = False
        if not finetune:
            self.backbone.requires_grad_(False)
        self.dim = self.backbone.config.hidden_size

    def hold(self, held: bool) -> None:
        """Hold the encoder frozen (True) or let it fine-tune again (False, when ``finetune``);
        takes effect at once, in the current train/eval mode."""
        self.held = bool(held)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TextEncoder":
        """``nn.Module.train``, except that a held encoder stays in eval mode (no dropout)."""
        super().train(mode)
        if mode and self.held:
            self.backbone.eval()
        return self

    @property
    def num_hidden_states(self) -> int:
        return self.backbone.config.num_hidden_layers

    def forward(self, text: torch.Tensor) -> EncoderOutput:
        """text: (b, 3, n) = token ids, attention mask, segment ids (MMSA's ``text_bert``)."""
        ids, attn, segments = text[:, 0].long(), text[:, 1].long(), text[:, 2].long()
        with torch.set_grad_enabled(self.finetune and not self.held and torch.is_grad_enabled()):
            out = self.backbone(input_ids=ids, attention_mask=attn, token_type_ids=segments,
                                output_hidden_states=True)
        states = list(out.hidden_states)
        return EncoderOutput(final=states[-1], hidden=states[:-1], mask=attn.bool())
