"""The KHaR network (§3.1, Figure 2): harvest -> refine -> project -> fuse.

``KHaR(cfg)`` takes the run's checked :class:`KHaRConfig` (MMSA's EasyDict is converted once, where
MMSA hands it over: :func:`khar_mmsa.runs.model_and_trainer.khar_settings`).
``forward`` returns raw outputs only: the prediction ``'M'`` (MMSA's key) plus what the criterion and
the benchmarks need (the bottleneck's mu and sigma, each MoE's router outputs, the features); no
loss term is computed here (see :mod:`khar_mmsa.losses.criterion`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
from torch import nn

from khar_mmsa.config import MODALITIES, KHaRConfig
from khar_mmsa.model.encoders import SequenceEncoder, TextEncoder, lengths_to_mask
from khar_mmsa.model.fusion import build_fusion
from khar_mmsa.model.harvest import AdapterStack, Harvester, masked_mean
from khar_mmsa.model.refine import build_refiner, refined_width

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
    adapters = None
    if cfg.harvesting:
        adapters = AdapterStack(encoder.dim, encoder.num_hidden_states, num_adapters, layers, cfg.adapter_heads,
                                cfg.adapter_inner_layers, cfg.adapter_dropout)
    return Harvester(encoder, adapters, cfg.harvested_state)


def modality_inputs(modality: str, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                    audio_lengths: Optional[torch.Tensor], vision_lengths: Optional[torch.Tensor]) -> tuple:
    """The inputs one harvester takes: (text,) or (features, mask). Missing lengths = full length.

    No host synchronisation here (no ``.item()``/``.nonzero()`` on device tensors): batches are
    cut to their longest real sequence on the CPU by :func:`batch_inputs` before they move.
    """
    if modality == "t":
        return (text,)
    x, lengths = (audio, audio_lengths) if modality == "a" else (vision, vision_lengths)
    if lengths is None:
        return x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, lengths_to_mask(torch.as_tensor(lengths, device=x.device), x.shape[1])


def trim_to_longest(text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                    audio_lengths: Optional[torch.Tensor], vision_lengths: Optional[torch.Tensor]) -> tuple:
    """Cut a batch to its longest real sequence per modality (text: attention mask; audio/vision:
    lengths). Padding never changes an output, so this is exact; MMSA pads MOSI audio to 375 and
    vision to 500 frames, and attention costs grow with the square of that. Call it on CPU tensors:
    reading the longest length is a host synchronisation on a GPU."""
    real = text[:, 1].bool().any(0)                  # (n,) positions real in at least one sample
    longest_t = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
    text = text[..., :longest_t]
    if audio_lengths is not None:
        audio = audio[:, :min(int(audio_lengths.max()), audio.shape[1])]
    if vision_lengths is not None:
        vision = vision[:, :min(int(vision_lengths.max()), vision.shape[1])]
    return text, audio, vision, audio_lengths, vision_lengths


def batch_inputs(batch: Mapping, device: torch.device) -> tuple:
    """An MMSA batch dict -> (text, audio, vision, audio_lengths, vision_lengths) on ``device``
    (lengths None when the batch has none, i.e. aligned data), cut to the batch's longest real
    sequence while still on the CPU (:func:`trim_to_longest`); one copy per tensor."""
    values = [batch.get(k) for k in ("text", "audio", "vision", "audio_lengths", "vision_lengths")]
    values = [torch.as_tensor(v) if v is not None and not torch.is_tensor(v) else v for v in values]
    values = trim_to_longest(*values)
    non_blocking = torch.device(device).type == "cuda"
    return tuple(v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for v in values)


class KHaR(nn.Module):
    def __init__(self, cfg: KHaRConfig) -> None:
        super().__init__()
        if not isinstance(cfg, KHaRConfig):
            raise TypeError(f"KHaR takes a KHaRConfig, not {type(cfg).__name__}: convert MMSA's args once "
                            f"with KHaRConfig.from_mmsa_args(args)")
        self.cfg = cfg
        self.modalities = [m for m in MODALITIES if m in cfg.modalities]
        self.harvesters = nn.ModuleDict()
        self.refiners = nn.ModuleDict()
        self.projections = nn.ModuleDict()   # F^m of Algorithm 1: (b, d_m) -> x^m (b, fine_grained_dim)
        widths = []                          # of each x^m, in T/A/V order
        for m in self.modalities:
            self.harvesters[m] = build_harvester(m, cfg)
            harvested = self.harvesters[m].width
            self.refiners[m] = build_refiner(harvested, cfg.modal_dim, cfg)
            width = refined_width(harvested, cfg.modal_dim, cfg)
            if cfg.projection == "relu":
                self.projections[m] = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, cfg.fine_grained_dim),
                                                    nn.ReLU())
                width = cfg.fine_grained_dim
            else:
                self.projections[m] = nn.Identity()
            widths.append(width)
        self.fusion = build_fusion(widths, cfg)
        self.set_epoch(1)  # until the trainer says otherwise, the state of the first epoch

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor,
                audio_lengths: Optional[torch.Tensor] = None,
                vision_lengths: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """text: (b, 3, n_t) BERT ids/mask/segments; audio: (b, n_a, f_a); vision: (b, n_v, f_v);
        *_lengths: (b,) real lengths (padding after them is ignored exactly).

        Returns raw outputs (b batch, n a modality's time, e experts, z latent_dim, f fine_grained_dim):
        {'M': (b, 1) prediction D(mu), 'M_sampled': (b, 1) D(z) at a sampled z (D(mu) at evaluation and
        without a bottleneck), 'mu', 'sigma': (b, z) the posterior of p(z|x) or None without a bottleneck,
        'routing': {m: GateOutput (gates (b, n, e), selected experts, logits, noise std, padding mask;
        n = 1 with routing='sample')}, MoE refiners only, 'unimodal': {m: (b, f)} the fusion's inputs x^m,
        'unimodal_linear': {m: (b, f)} the projection's output before its ReLU (the same tensors as
        'unimodal' with projection='none'), 'fused': (b, h), 'expert_load': {m: (e,) real tokens routed
        to each expert}, MoE refiners only}.
        """
        unimodal, unimodal_linear, routing, expert_load = {}, {}, {}, {}
        for m in self.modalities:
            harvested, mask, _ = self.harvesters[m](*modality_inputs(m, text, audio, vision, audio_lengths,
                                                                     vision_lengths))
            refined, gate, tokens_per_expert = self.refiners[m](harvested, mask)
            if gate is not None:
                routing[m] = gate
                expert_load[m] = tokens_per_expert.detach()
            pooled = masked_mean(refined, mask)
            projection = self.projections[m]
            if isinstance(projection, nn.Sequential):   # Dropout, Linear | ReLU
                unimodal_linear[m] = projection[:-1](pooled)
                unimodal[m] = projection[-1](unimodal_linear[m])
            else:                                       # projection='none'
                unimodal_linear[m] = unimodal[m] = pooled
        fused = self.fusion([unimodal[m] for m in self.modalities])
        return {"M": fused.pred, "M_sampled": fused.pred_sampled, "mu": fused.mu, "sigma": fused.sigma,
                "routing": routing, "unimodal": unimodal, "unimodal_linear": unimodal_linear, "fused": fused.fused,
                "expert_load": expert_load}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each training epoch (from 1): the text encoder is held frozen
        while ``epoch <= freeze_bert_epochs`` and fine-tunes afterwards (when ``finetune_bert``)."""
        if "t" in self.harvesters and self.cfg.finetune_bert:
            self.harvesters["t"].encoder.hold(epoch <= self.cfg.freeze_bert_epochs)

    # -- knowledge harvesting: pretrained adapters ----------------------------------------------
    def missing_adapters(self, states: Mapping[str, Mapping[str, torch.Tensor]]) -> Dict[str, list]:
        """{modality: adapter weight names absent from ``states``} for each modality in use that
        would not get all of its pretrained adapters; empty when every one would."""
        missing = {}
        for m in self.modalities:
            if self.harvesters[m].adapters is None:
                continue
            have = states.get(m) or {}
            absent = [f"adapters.{k}" for k in self.harvesters[m].adapters.state_dict()
                      if f"adapters.{k}" not in have]
            if absent:
                missing[m] = absent
        return missing

    def load_harvested(self, states: Mapping[str, Mapping[str, torch.Tensor]], freeze: bool) -> list:
        """Load pretrained harvesters ({modality: state_dict of Harvester}); freeze their adapters
        (``freeze``: no gradient, and eval mode whenever the model trains, see
        :meth:`Harvester.train <khar_mmsa.model.harvest.Harvester.train>`).

        Every modality in use must be in ``states`` with all of its adapter weights (the encoder's
        may be absent: text states hold the adapters only); otherwise :class:`KeyError` names what
        is missing, before anything is loaded.  Returns the modalities loaded."""
        missing = self.missing_adapters(states)
        if missing:
            raise KeyError("pretrained harvester states lack adapter weights: "
                           + "; ".join(f"{m!r}: {len(v)}, first {v[:2]}" for m, v in missing.items()))
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
