"""The KHaR network (§3.1, Figure 2): harvest -> refine -> project -> fuse.

``KHaR(args)`` accepts MMSA's EasyDict (converted once to :class:`KHaRConfig`) or a KHaRConfig.
``forward`` returns named outputs: the prediction ``'M'`` (MMSA's key) plus what the criterion and
the benchmarks need; no loss is weighted here (see :mod:`khar_mmsa.criterion`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from ..config import MODALITIES, KHaRConfig
from .encoders import SequenceEncoder, TextEncoder, lengths_to_mask
from .fusion import build_fusion
from .harvest import AdapterStack, Harvester, masked_mean
from .refine import build_refiner

MODALITY_INDEX = {m: i for i, m in enumerate(MODALITIES)}  # MMSA orders everything T, A, V


def build_harvester(modality: str, cfg: KHaRConfig) -> Harvester:
    """Encoder + adapters of one modality (also used alone by adapter pretraining)."""
    idx = MODALITY_INDEX[modality]
    if modality == "t":
        encoder: nn.Module = TextEncoder(cfg.pretrained, cfg.finetune_bert)
        num_adapters, layers = cfg.text_adapters, cfg.adapter_layers_text
    else:
        encoder = SequenceEncoder(cfg.feature_dims[idx], cfg.modal_dim, cfg.encoder_layers, cfg.encoder_heads,
                                  cfg.encoder_ff_dim, cfg.encoder_dropout, max_len=cfg.seq_lens[idx])
        num_adapters, layers = cfg.av_adapters, cfg.adapter_layers_av
    adapters = AdapterStack(encoder.dim, encoder.num_hidden_states, num_adapters, layers, cfg.adapter_heads,
                            cfg.adapter_inner_layers, cfg.adapter_dropout)
    return Harvester(encoder, adapters)


def modality_inputs(modality: str, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                    audio_lengths: Optional[torch.Tensor], vision_lengths: Optional[torch.Tensor]) -> tuple:
    """The inputs one harvester takes: (text,) or (features, mask). Missing lengths = full length.

    Each batch is cut to its longest real sequence (text: attention mask; audio/vision: lengths).
    Padding never changes an output, so this is exact; MMSA pads MOSI audio to 375 and vision to
    500 frames, and attention costs grow with the square of that.
    """
    if modality == "t":
        real = text[:, 1].bool().any(0).nonzero()  # positions real in at least one sample
        longest = int(real.max().item()) + 1 if real.numel() else 1
        return (text[..., :longest],)
    x, lengths = (audio, audio_lengths) if modality == "a" else (vision, vision_lengths)
    if lengths is None:
        lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device)
    longest = min(int(lengths.max().item()), x.shape[1])
    return x[:, :longest], lengths_to_mask(lengths, longest)


def batch_inputs(batch: Mapping, device: torch.device) -> tuple:
    """An MMSA batch dict -> (text, audio, vision, audio_lengths, vision_lengths) on ``device``
    (lengths None when the batch has none, i.e. aligned data)."""
    def get(key):
        value = batch.get(key)
        return value.to(device) if torch.is_tensor(value) else value
    return tuple(get(k) for k in ("text", "audio", "vision", "audio_lengths", "vision_lengths"))


class KHaR(nn.Module):
    def __init__(self, args: Union[Mapping, KHaRConfig]) -> None:
        super().__init__()
        cfg = args if isinstance(args, KHaRConfig) else KHaRConfig.from_mmsa_args(args)
        self.cfg = cfg
        self.modalities = [m for m in MODALITIES if m in cfg.modalities]
        self.harvesters = nn.ModuleDict()
        self.refiners = nn.ModuleDict()
        self.projections = nn.ModuleDict()   # F^m of Algorithm 1: (b, d_m) -> x^m (b, fine_grained_dim)
        for m in self.modalities:
            self.harvesters[m] = build_harvester(m, cfg)
            width = self.harvesters[m].encoder.dim
            self.refiners[m] = build_refiner(2 * width, cfg.modal_dim, cfg)
            self.projections[m] = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.modal_dim, cfg.fine_grained_dim),
                                                nn.ReLU())
        self.fusion = build_fusion(len(self.modalities), cfg)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                audio_lengths: Optional[torch.Tensor] = None,
                vision_lengths: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """text: (b, 3, n_t) BERT ids/mask/segments; audio: (b, n_a, f_a); vision: (b, n_v, f_v);
        *_lengths: (b,) real lengths (padding after them is ignored exactly).

        Returns {'M': (b, 1), 'M_sampled': (b, 1), 'kl': (b,) or None, 'balance': {m: scalar},
        'unimodal': {m: (b, f)}, 'fused': (b, h)}.
        """
        unimodal, balance = {}, {}
        for m in self.modalities:
            harvested, mask, _ = self.harvesters[m](*modality_inputs(m, text, audio, vision, audio_lengths,
                                                                     vision_lengths))
            refined, balance[m], _ = self.refiners[m](harvested, mask)
            unimodal[m] = self.projections[m](masked_mean(refined, mask))
        fused = self.fusion([unimodal[m] for m in self.modalities])
        return {"M": fused.pred, "M_sampled": fused.pred_sampled, "kl": fused.kl, "balance": balance,
                "unimodal": unimodal, "fused": fused.fused}

    def train(self, mode: bool = True) -> "KHaR":
        """``nn.Module.train``, except that frozen adapters (no parameter requires grad: pretrained
        knowledge loaded with ``freeze_pretrained_adapters``) and their LayerNorm stay in eval mode,
        so dropout never perturbs fixed knowledge (KuDA injects frozen adapters)."""
        super().train(mode)
        if mode:
            for m in self.modalities:
                adapters = self.harvesters[m].adapters
                if not any(p.requires_grad for p in adapters.parameters()):
                    adapters.eval()
        return self

    # -- knowledge harvesting: pretrained adapters ----------------------------------------------
    def adapter_parameters(self):
        """(name, parameter) of every adapter block and adapter LayerNorm, selected by module type."""
        for m in self.modalities:
            for name, p in self.harvesters[m].adapters.named_parameters():
                yield f"harvesters.{m}.adapters.{name}", p

    def load_harvested(self, states: Mapping[str, Mapping[str, torch.Tensor]], freeze: bool) -> list:
        """Load pretrained harvesters ({modality: state_dict of Harvester}); freeze their adapters
        (``freeze``: no gradient, and eval mode whenever the model trains, see :meth:`train`).

        Returns the modalities loaded."""
        loaded = []
        for m, state in states.items():
            if m not in self.harvesters:
                continue
            result = self.harvesters[m].load_state_dict(state, strict=False)
            # the text file holds the adapters only (BERT stayed frozen in pretraining); nothing else may be missing
            missing = [k for k in result.missing_keys if not (m == "t" and k.startswith("encoder."))]
            if missing or result.unexpected_keys:
                raise ValueError(f"pretrained harvester '{m}' does not fit this model: missing {missing[:5]}, "
                                 f"unexpected {list(result.unexpected_keys)[:5]} (made by another version or config?)")
            if freeze:
                self.harvesters[m].adapters.requires_grad_(False)
            loaded.append(m)
        self.train(self.training)  # frozen adapters switch to eval mode now, not only at the next train()
        return loaded
