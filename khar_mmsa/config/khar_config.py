"""The one typed KHaR configuration: :class:`KHaRConfig`, its sections and derived constants.

MMSA hands every model an ``EasyDict``; :meth:`KHaRConfig.from_mmsa_args` converts it once, at the
boundary (the key mapping is :mod:`khar_mmsa.config.mmsa_args`); everything inside :mod:`khar_mmsa`
reads typed fields only.  A config checks itself when made (:mod:`khar_mmsa.config.checks`,
:mod:`khar_mmsa.config.size`).

Every coefficient is a field here, with a comment pointing at the KHaR paper's equation or table.  Values the paper leaves open carry a documented default.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping, Optional

from khar_mmsa.config import booleans
from khar_mmsa.config.booleans import parse_bool
from khar_mmsa.config.checks import check_types, field_types, fields_of_type, value_problems
from khar_mmsa.config.errors import ConfigError, ConfigTypeError
from khar_mmsa.config.fields import (ARCHITECTURE_SECTIONS, ELEMENTWISE_FUSIONS, LABEL_RANGES, SECTIONS,
                                     _f)
from khar_mmsa.config.mmsa_args import MMSA_BOOL_KEYS, mmsa_kwargs
from khar_mmsa.config.size import check_size

#: Datasets with T/A/V unimodal labels besides the multimodal one (MOSI and MOSEI have none).
UNIMODAL_LABEL_DATASETS = ("sims", "simsv2")


@dataclass
class KHaRConfig:
    """The KHaR settings, one flat dataclass (MMSA's args map onto it key for key); each field
    names its section (:data:`SECTIONS`), ``cfg.section(name)`` gives a typed view of one."""

    # ---- data: the dataset and its input shapes (MMSA's loader fills feature_dims and seq_lens) ----
    dataset_name: str = _f("mosi", "MMSA dataset key: mosi, mosei, sims or simsv2.", "data", choices=tuple(LABEL_RANGES))
    feature_dims: list = _f([768, 5, 20], "Input widths (text, audio, vision); MMSA's loader fills them from the pickle.", "data")
    seq_lens: list = _f([50, 375, 500], "Sequence lengths (text, audio, vision); read from the pickle, never trusted from JSON.", "data")
    modalities: str = _f("tav", "Modalities used, any subset of 't', 'a', 'v' with at least two (Table 3, 'Role of Each Modality').", "data", identity="letters")

    # ---- model: the text encoder and the audio/vision encoders (§3.3, eq. 1) ---------------------
    pretrained: str = _f("bert-base-uncased", "BERT hub name or local folder (bert-base-chinese for SIMS/SIMSv2; Appendix B).", "model", identity="text_encoder")
    modal_dim: int = _f(128, "d_m: width of the audio/vision Transformer encoders and of each refined modality (Table 5: 128, 256 on MOSEI).", "model")
    encoder_layers: int = _f(4, "Transformer layers of the audio and vision encoders (KuDA's design; paper leaves open).", "model")
    encoder_heads: int = _f(8, "Attention heads of the audio/vision encoders; modal_dim must be divisible by it.", "model")
    encoder_ff_dim: int = _f(64, "Feed-forward width of the audio/vision encoder layers (KuDA: 64).", "model")
    encoder_dropout: float = _f(0.2, "Dropout inside the audio/vision encoders (KuDA: 0.2).", "model")

    # ---- adapters: knowledge harvesting: the adapter blocks on the encoders (§3.3, eq. 2-3) ------
    text_adapters: int = _f(4, "Number of chained adapter blocks on the text encoder (KuDA: 4).", "adapters")
    av_adapters: int = _f(3, "Number of chained adapter blocks on the audio and vision encoders (KuDA: 3).", "adapters")
    adapter_layers_text: Optional[list] = _f(None, "Hidden-state indices (0 = embeddings) feeding the text adapters, len = text_adapters+1. None: evenly spaced over the encoder's depth, last intermediate state included.", "adapters")
    adapter_layers_av: Optional[list] = _f(None, "Same for audio/vision encoders (0 = input projection). None: evenly spaced.", "adapters")
    adapter_heads: int = _f(4, "Attention heads of the Transformer layers inside each adapter block (adapter_inner_layers of them; KuDA: 4).", "adapters")
    adapter_inner_layers: int = _f(2, "Transformer layers inside one adapter block (KuDA: 2).", "adapters")
    adapter_dropout: float = _f(0.1, "Dropout inside adapter blocks.", "adapters")
    harvesting: bool = _f(True, "Knowledge harvesting (§3.3, eq. 2-3): adapters read the encoders' intermediate states and X_m = [A_m; O_m]. False: no adapters, X_m = O_m (eq. 3 without A_m); needs pretrain_adapters=False.", "adapters")
    harvested_state: str = _f("output", "The second half of X_m = [A_m; H_m] (eq. 3): 'output' = the encoder's final output O_m (eq. 1's comprehensive-level representation); 'last_hidden' = H_m read literally, the last intermediate hidden state the adapters harvest (index adapter_layers_*[-1]). Same width either way; ignored with harvesting=False (X_m = O_m).", "adapters", choices=("output", "last_hidden"))

    # ---- moe: knowledge refinement: the per-modality refiner and its gate (§3.4, eq. 4-6) --------
    refiner: str = _f("moe", "Per-modality refinement layer: 'moe' (eq. 4-6), the Table 3 ablations 'mlp', 'attention', 'cnn', or 'none' (the identity: X_m goes on unrefined).", "moe", choices=("moe", "mlp", "attention", "cnn", "none"))
    num_experts: int = _f(3, "s, experts per modality (Table 5: 3).", "moe")
    top_k: int = _f(2, "k of KeepTopK in eq. 4 (paper leaves open; 2 of 3 keeps the gate sparse and the load term informative).", "moe")
    expert_hidden_dim: int = _f(256, "Hidden width of each expert MLP.", "moe")
    moe_noisy_gating: bool = _f(True, "Shazeer et al.'s tunable gate noise in training, needed for the differentiable load L(X) of eq. 6.", "moe")
    moe_noise_epsilon: float = _f(1e-2, "Floor added to softplus(W_noise x), the gate noise std (Shazeer et al.: 1e-2).", "moe")
    routing: str = _f("token", "What the gate of eq. 4-5 routes: 'token' = each time step of X_m gets its own top-k experts; 'sample' = one gate vector per sample, from the masked mean of X_m over its real time steps (eq. 5 read as one vector per sample), applied to all its time steps.", "moe", choices=("token", "sample"))

    # ---- fusion: the unimodal projections and the fusion (§3.5, eq. 8-12) ------------------------
    fusion: str = _f("mib", "Fusion: 'mib' (eq. 8-12), the Table 3 ablations 'sum', 'concat', 'attention', 'mul', or 'linear' (Dropout and one Linear to the prediction on the concatenated unimodal vectors).", "fusion", choices=("mib", "sum", "concat", "attention", "mul", "linear"))
    fine_grained_dim: int = _f(50, "Table 5's 'fine-grained dimension': width of each unimodal vector x^m = F^m(X^m) (Algorithm 1), used by the fusion and the contrastive loss (E-MIB's d_l = 50).", "fusion")
    fusion_hidden_dim: int = _f(128, "Width of the fusion network F^f's output x (Algorithm 1).", "fusion")
    latent_dim: int = _f(50, "Width of the bottleneck z (eq. 23).", "fusion")
    mib_sigma_offset: float = _f(-5.0, "Sigma = softplus(W x + offset): a negative offset starts the posterior narrow (E-MIB: -5).", "fusion")
    dropout: float = _f(0.1, "Dropout before the fusion and the decoder.", "fusion")
    projection: str = _f("relu", "F^m of Algorithm 1 on the pooled refined sequence: 'relu' = Dropout, Linear(width, fine_grained_dim), ReLU; 'none' = the pooled vector itself goes to the fusion and the contrastive loss (width d_m after the MoE).", "fusion", choices=("relu", "none"))

    # ---- losses: the weights and forms of the loss terms (eq. 6, 12, 13-22) ----------------------
    moe_balance_weight: float = _f(1e-2, "omega of eq. 6 (paper leaves open; Shazeer et al. use 1e-2).", "losses")
    cv_eps: float = _f(1e-10, "Epsilon in CV^2 = var / (mean^2 + eps) (eq. 6).", "losses")
    mib_beta: float = _f(1e-3, "beta of eq. 8/12 (paper leaves open; E-MIB uses 1e-3 on a per-dimension KL).", "losses")
    mib_kl_reduction: str = _f("mean", "Reduction of eq. 12's KL over the latent_dim dimensions: 'mean' (E-MIB, the source of mib_beta: beta weighs the KL per dimension) or 'sum' (eq. 27-28's closed form). The same pressure needs beta_sum = beta_mean / latent_dim.", "losses", choices=("mean", "sum"))
    contrastive_weight: float = _f(1.0, "lambda of eq. 22 (Table 5: SIMS 1, SIMSv2 1, MOSI 0.05, MOSEI 0.45). 0 disables the loss ('w/o CL', Table 3).", "losses")
    contrastive_kappa: float = _f(0.4, "kappa of eq. 14: |y_i - y_j| <= kappa makes a positive pair, decided on the label grid (gaps rounded to 1e-4 first, so exact-kappa pairs are positive despite float32 labels).", "losses")
    contrastive_label_scale: str = _f("raw", "Scale kappa applies to: 'raw' = the dataset's own labels ([-3,3] MOSI/MOSEI, [-1,1] SIMS; the paper's example 1.0~1.3 vs 2.0 is on raw MOSI), 'unit' = labels divided by the dataset's max |y| (CLGSI).", "losses", choices=("raw", "unit"))
    contrastive_temperature: float = _f(0.1, "tau of eq. 21 (paper leaves open; CLGSI uses 0.03, which saturates at batch 64).", "losses")
    contrastive_on: str = _f("after_relu", "Unimodal vectors eq. 21's similarities are computed on: 'after_relu' = x^m, the fusion's inputs (all entries >= 0, so every cosine >= 0); 'before_relu' = the projection's linear output (cosines in [-1, 1]). The same vectors with projection='none'.", "losses", choices=("after_relu", "before_relu"))
    mib_beta_warmup_epochs: int = _f(0, "beta of eq. 12 rises linearly from 0 in epoch 1 to mib_beta in epoch mib_beta_warmup_epochs + 1, then stays there (one value per epoch); 0: mib_beta from the first step, as eq. 12.", "losses")

    # ---- optimisation: the main run's optimiser, schedule, batches and what trains (Appendix B, Table 5) ----
    finetune_bert: bool = _f(True, "Fine-tune the text encoder (the paper fine-tunes BERT; Appendix B). MMSA's use_finetune sets it too.", "optimisation")
    freeze_pretrained_adapters: bool = _f(True, "Keep pretrained adapters (and their LayerNorm) frozen in the main run (KuDA's knowledge injection), in eval mode too: no dropout on frozen knowledge.", "optimisation")
    epochs: int = _f(70, "Epoch cap (Table 5: 70).", "optimisation")
    early_stop: int = _f(8, "Stop after this many epochs without a better validation KeyEval (MMSA's convention).", "optimisation", also=("pretraining",))
    batch_size: int = _f(64, "Batch size, an integer >= 2 (Table 5: 64, 36 on MOSEI).", "optimisation", also=("pretraining",))
    learning_rate: float = _f(3e-5, "AdamW learning rate of everything but BERT (Table 5: 3e-5, 1e-5 on MOSEI).", "optimisation")
    learning_rate_bert: float = _f(3e-5, "AdamW learning rate of the text encoder (Table 5 gives one rate; kept separate to allow tuning).", "optimisation")
    weight_decay: float = _f(1e-2, "AdamW weight decay (Appendix B: 'weight decay regularization'; value open). Not applied to biases and norms.", "optimisation")
    warmup_ratio: float = _f(0.1, "Fraction of all optimizer steps with linear warmup from 0, then linear decay to 0 (Appendix B; transformers.get_linear_schedule_with_warmup).", "optimisation")
    grad_clip: float = _f(1.0, "Max global gradient norm; <= 0 disables clipping.", "optimisation")
    freeze_bert_epochs: int = _f(0, "The text encoder (eq. 1) stays frozen -- no gradient, no dropout, no optimizer step -- for the first N epochs of the main run, then is fine-tuned (its learning-rate schedule runs on meanwhile); 0: fine-tuned from the first step (Appendix B). > 0 needs finetune_bert=True.", "optimisation")

    # ---- pretraining: the adapter pretraining stage (eq. 2, 'pretrained parameters') -------------
    pretrain_adapters: bool = _f(True, "Run the per-modality adapter pretraining stage before the main run (eq. 2). False: adapters start untrained and train with the model.", "pretraining")
    pretrained_adapters_path: Optional[str] = _f(None, "File of pretrained adapters. None: '<model_save_path stem>-adapters.pt' beside the checkpoint. Reused when its key matches: the fields of the data, model, adapters and pretraining sections, the seed and the data, feature files and a local text encoder by content (SHA-256), never paths or mtimes.", "pretraining", identity="path")
    pretrain_epochs: int = _f(10, "Epoch cap of each unimodal pretraining run (early stopping on validation MAE); >= 1 (to skip pretraining set pretrain_adapters=False).", "pretraining")
    pretrain_learning_rate: float = _f(1e-4, "AdamW learning rate of adapter pretraining (KuDA: 1e-4).", "pretraining")
    pretrain_weight_decay: float = _f(1e-3, "AdamW weight decay of adapter pretraining (KuDA: 1e-3).", "pretraining")

    # ---- run: runtime settings: checkpointing, curves, validation metric, speed switches ---------
    save_resume_state: bool = _f(True, "Write '<model_save_path>.resume' (model, optimizer, scheduler, RNG states) after every epoch so a killed run resumes where it stopped; about 3x the model's size on disk, deleted when the run ends.", "run")
    save_curves: bool = _f(True, "Write '<log_dir>/khar-<dataset>-curves.png' when training ends: loss terms per epoch, validation KeyEval with the best epoch marked, expert load per modality (needs matplotlib; off: False).", "run")
    max_model_memory_gib: float = _f(64.0, "Refuse a config whose estimated training memory (check_size: audio/vision/adapter/expert/fusion weights with their gradients and AdamW moments, plus one batch's activations and attention scores; the text encoder not counted) exceeds this many GiB; checked before any data is read.", "run")
    key_eval: str = _f("Loss", "Validation metric for model selection and early stopping; MMSA sets it from its dataset block (KeyEval, 'Loss' = L1 of the prediction). Lower is better for Loss and MAE, higher for the rest.", "run")
    amp: bool = _f(False, "bf16 autocast of the forward pass (torch.autocast; losses and the optimizer stay fp32). Meant for GPUs with bf16 (Ampere or newer); on a CPU it is only faster where the CPU has bf16 matrix units (AMX), and attention stays fp32 there.", "run")
    length_bucketing: bool = _f(False, "Train on batches of clips of similar length (khar_mmsa/data/bucketing.py): each batch is cut to its longest clip, so less padding is computed. Exact per clip; changes which clips share a batch (seeded by the run's seed).", "run")
    length_bucket_pool: int = _f(50, "With length_bucketing: batches per sorting pool; a random pool of this many batches is sorted by length, cut into batches, and all batches are shuffled. Larger = less padding, less randomness in batch composition.", "run")
    moe_dispatch: str = _f("sparse", "How each MoE refiner runs its experts (eq. 5; the same result within float tolerance): 'sparse' = each real token goes only through its top-k experts, as Mixtral's block does, which reads the e+1 expert token counts back to the host once per refiner to size the expert batches; 'dense' = every expert runs on every token and the gates (exactly 0 outside the top-k and on padding) weigh them: e/k times the expert arithmetic, but no host read, so torch.compile keeps one graph per batch shape and a CUDA graph can capture the step.", "run", choices=("sparse", "dense"))
    compile: bool = _f(False, "torch.compile the model's forward pass for training and evaluation (opt-in: the first steps pay the compilation, and each new batch shape may compile again; checkpoints are unchanged). Helps most on a GPU, where it fuses kernels and cuts launches.", "run")

    def __post_init__(self) -> None:
        # Booleans parse strictly ('no' is False, 'off' an error), then types: a wrong type
        # (batch_size='64') must be a ConfigError, not a TypeError from a comparison below.
        for name in fields_of_type(type(self), bool):
            try:
                setattr(self, name, parse_bool(name, getattr(self, name)))
            except ConfigError as exc:
                raise ConfigTypeError(f"wrong type for KHaR config key(s): {exc}") from None
        check_types(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        self.dataset_name = str(self.dataset_name).lower()
        self.feature_dims = [int(x) for x in self.feature_dims]
        self.seq_lens = [int(x) for x in self.seq_lens]
        problems = value_problems(self)
        if problems:
            raise ConfigError("invalid KHaR config: " + "; ".join(problems))
        check_size(self)

    # ------------------------------------------------------------------------------------------
    @property
    def label_range(self) -> tuple:
        return LABEL_RANGES[self.dataset_name]

    @property
    def has_unimodal_labels(self) -> bool:
        """SIMS and SIMSv2 carry T/A/V labels (``regression_labels_T/A/V`` in MMSA's pickles); MOSI/MOSEI do not."""
        return self.dataset_name in UNIMODAL_LABEL_DATASETS

    @classmethod
    def field_names(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def choices(cls, name: str) -> Optional[tuple]:
        """The allowed values of field ``name`` (None: any value of its type)."""
        return _FIELDS[name].metadata["choices"]

    def section(self, name: str) -> Any:
        """Section ``name`` as a frozen, typed dataclass of its fields' values
        (``cfg.section('moe').top_k``); :data:`SECTION_TYPES` holds the classes."""
        return SECTION_TYPES[name](**{n: copy.deepcopy(getattr(self, n)) for n in section_fields(name)})

    def architecture(self) -> dict:
        """The fields of :data:`ARCHITECTURE_SECTIONS`, what rebuilds the network from its weights
        (the checkpoint's ``.pth.json``).  Paths and values as they are, not by content."""
        return {n: copy.deepcopy(getattr(self, n)) for n in section_fields(*ARCHITECTURE_SECTIONS, config=self)}

    @classmethod
    def from_architecture(cls, fields: Mapping[str, Any]) -> "KHaRConfig":
        """The config that rebuilds a saved network: ``fields`` (its architecture sections, or a whole
        config as older checkpoints saved it) as given, every other field its default -- except
        :data:`REBUILD_VALUES`, which only decide how a network trains and would otherwise make
        some saved architectures refuse the training defaults (``harvesting=False`` with
        ``pretrain_adapters=True``, say).  Checked as any config."""
        values = {k: v for k, v in REBUILD_VALUES.items() if k not in fields}
        values.update(fields)
        return cls(**values)

    @classmethod
    def from_mmsa_args(cls, args: Mapping[str, Any], strict: bool = True) -> "KHaRConfig":
        """Convert MMSA's merged EasyDict once (:func:`khar_mmsa.config.mmsa_args.mmsa_kwargs`:
        MMSA's runtime keys ignored, ``KeyEval`` -> ``key_eval``, ``use_finetune`` ->
        ``finetune_bert``, any other unknown key a :class:`ConfigError` naming the closest field)."""
        return cls(**mmsa_kwargs(args, cls.field_names(), strict))  # __post_init__ checks types and values

    def with_data_shapes(self, args: Mapping[str, Any]) -> "KHaRConfig":
        """This config with the ``feature_dims``/``seq_lens`` MMSA's loader put into ``args`` (read
        from the data; checked again, as the sizes change the memory estimate); itself when they
        are the same."""
        dims, lens = [int(x) for x in args["feature_dims"]], [int(x) for x in args["seq_lens"]]
        if dims == self.feature_dims and lens == self.seq_lens:
            return self
        return dataclasses.replace(self, feature_dims=dims, seq_lens=lens)


_FIELDS = {f.name: f for f in dataclasses.fields(KHaRConfig)}
#: Fields that name where a file lives (identity kind 'path'): left out of every identity, since
#: where a file lives changes nothing a run computes.
PATH_FIELDS = frozenset(name for name, f in _FIELDS.items() if f.metadata["identity"] == "path")
# Allowed values, read from the fields (the one place they are written).
REFINER_CHOICES = KHaRConfig.choices("refiner")
FUSION_CHOICES = KHaRConfig.choices("fusion")
KL_REDUCTIONS = KHaRConfig.choices("mib_kl_reduction")
assert set(ELEMENTWISE_FUSIONS) <= set(FUSION_CHOICES)
#: Every boolean setting :func:`~khar_mmsa.config.booleans.parse_bool` guards: MMSA's, the runner's and KHaRConfig's.
BOOL_KEYS = MMSA_BOOL_KEYS | frozenset(fields_of_type(KHaRConfig, bool))
#: Values a network rebuilt from its saved architecture takes where the saved file does not say:
#: rebuilding pretrains nothing, computes no contrastive loss and trains on no batch (the memory
#: estimate counts the smallest one).  None of them changes a prediction.
REBUILD_VALUES = {"pretrain_adapters": False, "contrastive_weight": 0.0, "batch_size": 2}


def section_fields(*sections: str, config: Any = None) -> tuple:
    """The names of the fields of ``config`` (a KHaRConfig class or instance; KHaRConfig itself
    when None) in any of ``sections`` (every field when none is given), in the dataclass's order.
    A field is in its own section and in the ones it names in ``also``."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}: one of {', '.join(SECTIONS)}")
    return tuple(f.name for f in dataclasses.fields(config or KHaRConfig)
                 if not sections or set(f.metadata["sections"]) & set(sections))


def _section_type(name: str) -> type:
    return dataclasses.make_dataclass(
        f"{name.capitalize()}Section", [(n, field_types(KHaRConfig)[n]) for n in section_fields(name)],
        frozen=True, namespace={"__doc__": f"KHaRConfig's {name!r} section: {SECTIONS[name]}."})


#: One frozen dataclass per section (``KHaRConfig.section`` returns instances).
SECTION_TYPES = {name: _section_type(name) for name in SECTIONS}


def normalize_bools(args: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace every boolean setting present in ``args`` (:data:`BOOL_KEYS`) by its
    :func:`~khar_mmsa.config.booleans.parse_bool` value, in place; ``None`` (MMSA's "not set") is
    left alone.  Returns ``args``.  Raises :class:`ConfigTypeError` naming the first key that is
    not a boolean."""
    return booleans.normalize_bools(args, BOOL_KEYS)
