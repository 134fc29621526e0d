"""How a KHaR config field is declared: its section, help string, allowed values and identity kind.

:func:`config_field` is the one way :class:`~khar_mmsa.config.khar_config.KHaRConfig` declares a
field; the constants here are what the fields refer to (sections, modality letters, label ranges).
"""
from __future__ import annotations

from dataclasses import field
from typing import Any, Optional

MODALITIES = ("t", "a", "v")
# Fusions that combine the unimodal vectors element-wise (need one width for every modality).
ELEMENTWISE_FUSIONS = ("sum", "attention", "mul")
LABEL_RANGES = {"mosi": (-3.0, 3.0), "mosei": (-3.0, 3.0), "sims": (-1.0, 1.0), "simsv2": (-1.0, 1.0)}

#: The config's sections, in the README's order, and what each holds.  Every field names its
#: section in its ``config_field(...)`` call; identities and the checkpoint's JSON are built from sections.
SECTIONS = {
    "data": "the dataset and its input shapes (MMSA's loader fills feature_dims and seq_lens)",
    "model": "the text encoder and the audio/vision encoders (§3.3, eq. 1)",
    "adapters": "knowledge harvesting: the adapter blocks on the encoders (§3.3, eq. 2-3)",
    "moe": "knowledge refinement: the per-modality refiner and its gate (§3.4, eq. 4-6)",
    "fusion": "the unimodal projections and the fusion (§3.5, eq. 8-12)",
    "losses": "the weights and forms of the loss terms (eq. 6, 12, 13-22)",
    "optimisation": "the main run's optimiser, schedule, batches and what trains (Appendix B, Table 5)",
    "pretraining": "the adapter pretraining stage (eq. 2, 'pretrained parameters')",
    "run": "runtime settings: checkpointing, curves, validation metric, speed switches",
}
#: What rebuilds the network from its weights (the checkpoint's ``.pth.json`` holds these).
ARCHITECTURE_SECTIONS = ("data", "model", "adapters", "moe", "fusion")
# How a field takes part in a content identity (khar_mmsa.io.identity), besides its plain value:
# 'path' = left out (where a file lives changes nothing it computes), 'text_encoder' = a local
# encoder folder by the digest of its files, 'letters' = a set of modality letters in canonical
# order ('at' and 'ta' build the same model).
IDENTITY_KINDS = ("path", "text_encoder", "letters")


def config_field(default: Any, help: str, section: str, *, choices: Optional[tuple] = None, also: tuple = (),
                 identity: Optional[str] = None) -> Any:
    """A config field: its default, help string (the README's configuration reference), section
    (``also``: further sections that read it too, e.g. pretraining reads ``batch_size``), allowed
    values (``choices``, checked by ``__post_init__``) and identity kind (:data:`IDENTITY_KINDS`)."""
    sections = (section, *also)
    if not set(sections) <= set(SECTIONS):
        raise ValueError(f"unknown section(s) {sorted(set(sections) - set(SECTIONS))}")
    if identity is not None and identity not in IDENTITY_KINDS:
        raise ValueError(f"identity={identity!r}: one of {IDENTITY_KINDS}")
    metadata = {"help": help, "section": section, "sections": sections,
                "choices": None if choices is None else tuple(choices), "identity": identity}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return field(default=default, metadata=metadata)


#: The name the config's own declarations use.
_f = config_field
