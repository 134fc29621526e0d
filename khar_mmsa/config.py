"""The one typed KHaR configuration.

MMSA hands every model an ``EasyDict`` merged from its JSON, the ``config=`` override and the
loader's ``feature_dims``/``seq_lens``.  :meth:`KHaRConfig.from_mmsa_args` converts it once, at the
boundary; everything inside :mod:`khar_mmsa` reads typed fields only.

Every coefficient is a field here, with a comment pointing at the paper's equation or table
(``../shared/paper/KHaR.txt``).  Values the paper leaves open carry a documented default.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping, Optional

# Keys MMSA itself puts into ``args`` (loader, runner, dataset block).  They are accepted and
# ignored by the KHaR config; anything else unknown is an error with a suggestion.  MMSA's
# ``use_finetune`` (the BERT models' "fine-tune the text encoder" switch) is not ignored: it is
# read as ``finetune_bert`` (see KHaRConfig.from_mmsa_args).
#: ``args`` keys that say where things are and how this process runs, not what is trained: left
#: out of a run's identity (:mod:`khar_mmsa.integration.run_state`) and of a tuned config file
#: (:mod:`khar_mmsa.integration.tune`), each of which adds its own few.
RUN_PLACE_KEYS = frozenset({
    "model_save_path", "device", "train_mode", "cur_seed", "seed", "custom_feature", "featurePath",
    "feature_T", "feature_A", "feature_V", "log_dir", "verbose_level", "callbacks",
})
MMSA_RUNTIME_KEYS = RUN_PLACE_KEYS | {
    "model_name", "dataset_name", "feature_dims", "seq_lens", "train_samples", "num_classes", "language",
    "KeyEval", "missing_rate", "missing_seed", "need_data_aligned", "need_model_aligned", "need_normalized",
    "use_bert", "transformers", "data_missing", "d_paras", "early_stop", "trust_pickle",
}

# Boolean settings of MMSA's own configs (config_regression.json) and of the plug-in's runner.
# Each is parsed by :func:`parse_bool` wherever it is read; the KHaR fields typed ``bool`` join
# them in :data:`BOOL_KEYS` below the dataclass.
MMSA_BOOL_KEYS = frozenset({
    "add_va", "attn_mask", "bidirectional", "contrast", "data_missing", "deal_missing",
    "excludeZero", "need_data_aligned", "need_model_aligned", "need_normalize", "need_normalized",
    "save_labels", "use_bert", "use_bert_finetune", "use_cmd_sim", "use_finetune", "use_linear",
    "without_generator", "trust_pickle", "need_unimodal_labels",
})
_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})

MODALITIES = ("t", "a", "v")
# Fusions that combine the unimodal vectors element-wise (need one width for every modality).
ELEMENTWISE_FUSIONS = ("sum", "attention", "mul")
LABEL_RANGES = {"mosi": (-3.0, 3.0), "mosei": (-3.0, 3.0), "sims": (-1.0, 1.0), "simsv2": (-1.0, 1.0)}

#: The config's sections, in the README's order, and what each holds.  Every field names its
#: section in its ``_f(...)`` call; identities and the checkpoint's JSON are built from sections.
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


def _f(default: Any, help: str, section: str, *, choices: Optional[tuple] = None, also: tuple = (),
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


class ConfigError(ValueError):
    """A KHaR configuration value is unknown, of the wrong type or impossible."""


class ConfigTypeError(ConfigError, TypeError):
    """A KHaR configuration value has the wrong type (``batch_size='64'``)."""


def parse_bool(key: str, value: Any) -> bool:
    """The boolean setting ``key`` from a Python, JSON or command-line value, strictly.

    Accepted: ``True``/``False`` (numpy's too), the integers 1 and 0, and the strings ``true``/
    ``false``, ``1``/``0``, ``yes``/``no`` in any case (surrounding spaces ignored).  Anything else
    -- ``'off'``, ``2``, ``None``, ``1.0``, ``''`` -- raises :class:`ConfigTypeError` naming the key,
    so that a value such as ``'False'`` can never count as true for being a non-empty string.
    """
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)  # numpy.bool_ (from a tuning grid), without importing numpy
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(int(value))
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ConfigTypeError(
        f"{key}={value!r}: expected a boolean (true/false, 1/0 or yes/no, any case), "
        f"got {type(value).__name__}")


def normalize_bools(args: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace every boolean setting present in ``args`` (:data:`BOOL_KEYS`) by its
    :func:`parse_bool` value, in place; ``None`` (MMSA's "not set") is left alone.  Returns
    ``args``.  Raises :class:`ConfigTypeError` naming the first key that is not a boolean."""
    for key in BOOL_KEYS:
        if key in args and args[key] is not None:
            args[key] = parse_bool(key, args[key])
    return args


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
    adapter_heads: int = _f(4, "Heads of the 2-layer Transformer inside each adapter block (KuDA: 4).", "adapters")
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
    warmup_ratio: float = _f(0.1, "Fraction of all optimizer steps with linear warmup (from lr/warmup_steps, never 0), then linear decay (Appendix B).", "optimisation")
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
        for name in _BOOL_FIELDS:
            try:
                setattr(self, name, parse_bool(name, getattr(self, name)))
            except ConfigError as exc:
                raise ConfigTypeError(f"wrong type for KHaR config key(s): {exc}") from None
        check_types({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        self.dataset_name = str(self.dataset_name).lower()
        self.feature_dims = [int(x) for x in self.feature_dims]
        self.seq_lens = [int(x) for x in self.seq_lens]
        problems = []
        if len(self.feature_dims) != 3 or len(self.seq_lens) != 3:
            problems.append("feature_dims and seq_lens need three entries (text, audio, vision)")
        mods = set(self.modalities)
        if not mods <= set(MODALITIES) or len(mods) < 2 or len(mods) != len(self.modalities):
            problems.append(f"modalities={self.modalities!r}: two or three distinct letters of 'tav'")
        for f in dataclasses.fields(self):  # allowed values: the field's own choices
            allowed = f.metadata["choices"]
            if allowed is not None and getattr(self, f.name) not in allowed:
                problems.append(f"{f.name}={getattr(self, f.name)!r}: one of {', '.join(allowed)}")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k={self.top_k}: must be between 1 and num_experts={self.num_experts}")
        # Numbers: every float finite (NaN passes no comparison and would silently change
        # behaviour -- a NaN grad_clip turned clipping off), then each field's range (_RANGES).
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if not math.isfinite(value):
                problems.append(f"{name}={value!r}: {_RANGES.get(name, 'must be a finite number')}")
        for name, (low, inclusive, high, text) in _NUMERIC_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                continue  # reported above
            if not ((value >= low if inclusive else value > low) and value < high):
                problems.append(f"{name}={value!r}: {text}")
        for name in ("feature_dims", "seq_lens"):
            if any(x < 1 for x in getattr(self, name)):
                problems.append(f"{name}={getattr(self, name)}: every entry must be an integer >= 1")
        if self.encoder_heads >= 1 and self.modal_dim % self.encoder_heads:
            problems.append(f"modal_dim={self.modal_dim} is not divisible by encoder_heads={self.encoder_heads}")
        if self.adapter_heads >= 1 and (self.modal_dim // 2) % self.adapter_heads:
            problems.append(f"modal_dim/2={self.modal_dim // 2} (adapter width) is not divisible by adapter_heads={self.adapter_heads}")
        for name, n in (("adapter_layers_text", self.text_adapters), ("adapter_layers_av", self.av_adapters)):
            layers = getattr(self, name)
            if layers is not None and (len(layers) != n + 1 or any(int(i) < 0 for i in layers)):
                problems.append(f"{name}={layers}: needs {n + 1} non-negative hidden-state indices")
        problems += _open_choice_problems(self)
        if problems:
            raise ConfigError("invalid KHaR config: " + "; ".join(problems))
        check_size(self)

    # ------------------------------------------------------------------------------------------
    @property
    def label_range(self) -> tuple:
        return LABEL_RANGES[self.dataset_name]

    @property
    def has_unimodal_labels(self) -> bool:
        """SIMS and SIMSv2 carry T/A/V labels; MOSI/MOSEI do not (notes, anchors)."""
        return self.dataset_name in ("sims", "simsv2")

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
        """Convert MMSA's merged EasyDict once.

        MMSA's own runtime keys are ignored; ``KeyEval`` maps to ``key_eval`` and MMSA's
        ``use_finetune`` to ``finetune_bert`` (both given with different values is an error); any
        other key that is not a field raises :class:`ConfigError` naming the closest field.
        """
        known = set(cls.field_names())
        kwargs: dict = {}
        unknown = []
        args = dict(args)
        if "use_finetune" in args:
            value = parse_bool("use_finetune", args.pop("use_finetune"))
            if "finetune_bert" in args and parse_bool("finetune_bert", args["finetune_bert"]) != value:
                raise ConfigError(
                    f"use_finetune={value!r} and finetune_bert={args['finetune_bert']!r} disagree: "
                    f"KHaR reads MMSA's use_finetune as finetune_bert; set only one of them")
            args["finetune_bert"] = value
        for key, value in args.items():
            if key in known:
                kwargs[key] = value
            elif key == "KeyEval":
                kwargs["key_eval"] = value
            elif key not in MMSA_RUNTIME_KEYS:
                unknown.append(key)
        if unknown and strict:
            msgs = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                msgs.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError("unknown KHaR config key(s): " + ", ".join(msgs))
        return cls(**kwargs)  # __post_init__ checks types and values


_INF = float("inf")
_POSITIVE_INTS = ("modal_dim", "encoder_layers", "encoder_heads", "encoder_ff_dim", "text_adapters",
                  "av_adapters", "adapter_heads", "adapter_inner_layers", "expert_hidden_dim",
                  "fine_grained_dim", "fusion_hidden_dim", "latent_dim", "epochs", "early_stop",
                  "pretrain_epochs", "num_experts", "length_bucket_pool")
# name -> (low, low inclusive?, high (exclusive), the allowed range in words).  Floats must also be
# finite; ints must be integers (check_types).  Checked by KHaRConfig.__post_init__.
_NUMERIC_RANGES = {
    **{n: (0.0, False, _INF, "must be a finite number > 0")
       for n in ("learning_rate", "learning_rate_bert", "pretrain_learning_rate",
                 "contrastive_temperature", "cv_eps")},
    **{n: (0.0, True, _INF, "must be a finite number >= 0")
       for n in ("contrastive_kappa", "mib_beta", "moe_balance_weight", "contrastive_weight",
                 "weight_decay", "pretrain_weight_decay", "moe_noise_epsilon")},
    **{n: (0.0, True, 1.0, "must be a number in [0, 1)")
       for n in ("encoder_dropout", "adapter_dropout", "dropout", "warmup_ratio")},
    **{n: (1, True, _INF, "must be an integer >= 1") for n in _POSITIVE_INTS},
    "pretrain_epochs": (1, True, _INF, "must be an integer >= 1 (to skip adapter pretraining set "
                                       "pretrain_adapters=False)"),
    "batch_size": (2, True, _INF, "must be an integer >= 2 (the contrastive loss pairs the samples "
                                  "of a batch, eq. 13-21)"),
    **{n: (0, True, _INF, "must be an integer >= 0") for n in ("mib_beta_warmup_epochs", "freeze_bert_epochs")},
}
_RANGES = {n: r[3] for n, r in _NUMERIC_RANGES.items()}
_RANGES.update(grad_clip="must be a finite number (<= 0 disables clipping)",
               mib_sigma_offset="must be a finite number")
_FLOAT_FIELDS = tuple(f.name for f in dataclasses.fields(KHaRConfig) if str(f.type) == "float")
_BOOL_FIELDS = tuple(f.name for f in dataclasses.fields(KHaRConfig) if str(f.type) == "bool")
#: Every boolean setting :func:`parse_bool` guards: MMSA's, the runner's and KHaRConfig's.
BOOL_KEYS = MMSA_BOOL_KEYS | frozenset(_BOOL_FIELDS)

_FIELDS = {f.name: f for f in dataclasses.fields(KHaRConfig)}
#: Fields that name where a file lives (identity kind 'path'): left out of every identity, since
#: where a file lives changes nothing a run computes.
PATH_FIELDS = frozenset(name for name, f in _FIELDS.items() if f.metadata["identity"] == "path")
# Allowed values, read from the fields (the one place they are written).
REFINER_CHOICES = KHaRConfig.choices("refiner")
FUSION_CHOICES = KHaRConfig.choices("fusion")
KL_REDUCTIONS = KHaRConfig.choices("mib_kl_reduction")
assert set(ELEMENTWISE_FUSIONS) <= set(FUSION_CHOICES)
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
        f"{name.capitalize()}Section", [(n, _FIELDS[n].type) for n in section_fields(name)],
        frozen=True, namespace={"__doc__": f"KHaRConfig's {name!r} section: {SECTIONS[name]}."})


#: One frozen dataclass per section (``KHaRConfig.section`` returns instances).
SECTION_TYPES = {name: _section_type(name) for name in SECTIONS}


# Documented bounds (README, "Validation and safe loading"), checked by check_size before the
# memory estimate: far beyond any published multimodal-sentiment setting, far below what makes the
# allocator fail.
MAX_WIDTH = 2 ** 15       # any feature or hidden width (BERT-large: 1024; OpenFace: 709)
MAX_DEPTH = 256           # layers, adapters, experts, attention heads
MAX_SEQ_LEN = 2 ** 16     # frames or tokens per modality (MOSEI/SIMS: <= 1000)
_WIDTH_FIELDS = ("modal_dim", "encoder_ff_dim", "expert_hidden_dim", "fine_grained_dim",
                 "fusion_hidden_dim", "latent_dim")
_DEPTH_FIELDS = ("encoder_layers", "encoder_heads", "text_adapters", "av_adapters", "adapter_heads",
                 "adapter_inner_layers", "num_experts", "top_k")
_FLOAT_BYTES = 4          # float32 weights and activations
_TRAINING_COPIES = 4      # weights, gradients, AdamW's two moments


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 30:.3g} GiB"


def memory_estimate(cfg: "KHaRConfig") -> dict:
    """Rough training memory of ``cfg`` in bytes, by the setting that drives each part.

    Weights (with gradients and AdamW moments) of the audio/vision encoders and positions
    (``modal_dim``, ``seq_lens``), the adapters (``modal_dim``), the experts
    (``expert_hidden_dim``) and the fusion (``fusion_hidden_dim``); one batch's activations
    (``seq_lens`` x ``batch_size``) and attention scores (``seq_lens`` squared).  The text encoder
    is not counted.  A lower bound in spirit: meant to refuse the impossible, not to plan a GPU.
    """
    d, f, h = cfg.modal_dim, cfg.encoder_ff_dim, cfg.expert_hidden_dim
    b, layers, e = cfg.batch_size, cfg.encoder_layers, cfg.num_experts
    lens, dims = cfg.seq_lens, cfg.feature_dims
    n_mod = len(cfg.modalities)
    per_layer = 4 * d * d + 2 * d * f
    encoder = sum(dims[i] * d + layers * per_layer for i in (1, 2)) + dims[0] * d
    positions = sum(lens[i] * d for i in (1, 2))
    adapters = (cfg.text_adapters + 2 * cfg.av_adapters) * cfg.adapter_inner_layers * 12 * (d // 2) ** 2
    experts = n_mod * e * 2 * d * h
    fusion = n_mod * (d * cfg.fine_grained_dim + cfg.fine_grained_dim * cfg.fusion_hidden_dim) \
        + 2 * cfg.fusion_hidden_dim * cfg.latent_dim
    tokens = b * sum(lens)
    activations = tokens * (layers * (6 * d + f) + e * h) \
        + b * cfg.encoder_heads * layers * sum(n * n for n in lens)
    weight = _FLOAT_BYTES * _TRAINING_COPIES
    return {"modal_dim": (encoder + adapters) * weight,
            "expert_hidden_dim": experts * weight,
            "fusion_hidden_dim": fusion * weight,
            "seq_lens": positions * weight + activations * _FLOAT_BYTES}


def check_size(cfg: "KHaRConfig") -> None:
    """Refuse sizes that cannot be allocated, before any data is read or any tensor is made.

    Every width (and ``feature_dims``) must be at most :data:`MAX_WIDTH`, every depth/count at most
    :data:`MAX_DEPTH`, every ``seq_lens`` entry at most :data:`MAX_SEQ_LEN`; then
    :func:`memory_estimate` must stay within ``max_model_memory_gib``.  Raises
    :class:`ConfigError` naming the key and, for the estimate, its size.
    """
    problems = []
    for name in _WIDTH_FIELDS:
        if getattr(cfg, name) > MAX_WIDTH:
            problems.append(f"{name}={getattr(cfg, name)}: must be at most {MAX_WIDTH} (MAX_WIDTH)")
    for name in _DEPTH_FIELDS:
        if getattr(cfg, name) > MAX_DEPTH:
            problems.append(f"{name}={getattr(cfg, name)}: must be at most {MAX_DEPTH} (MAX_DEPTH)")
    if any(x > MAX_WIDTH for x in cfg.feature_dims):
        problems.append(f"feature_dims={cfg.feature_dims}: every entry must be at most {MAX_WIDTH} (MAX_WIDTH)")
    if any(x > MAX_SEQ_LEN for x in cfg.seq_lens):
        problems.append(f"seq_lens={cfg.seq_lens}: every entry must be at most {MAX_SEQ_LEN} (MAX_SEQ_LEN)")
    if cfg.batch_size > MAX_SEQ_LEN:
        problems.append(f"batch_size={cfg.batch_size}: must be at most {MAX_SEQ_LEN}")
    if problems:
        raise ConfigError("KHaR config too large: " + "; ".join(problems))
    parts = memory_estimate(cfg)
    total = sum(parts.values())
    limit = cfg.max_model_memory_gib * 2 ** 30
    if total > limit:
        key = max(parts, key=parts.get)
        raise ConfigError(
            f"KHaR config too large: estimated training memory {_gib(total)} exceeds "
            f"max_model_memory_gib={cfg.max_model_memory_gib:g}; the largest part, {_gib(parts[key])}, "
            f"comes from {key}={getattr(cfg, key)} (batch_size={cfg.batch_size}). Lower it, or raise "
            f"max_model_memory_gib if the machine really has the memory.")


def _open_choice_problems(cfg: KHaRConfig) -> list:
    """What is wrong with combinations of the switches of the choices the paper leaves open and of
    the parts the walk removes (their allowed values are checked from the fields' choices)."""
    problems = []
    if not cfg.harvesting and cfg.pretrain_adapters:
        problems.append("harvesting=False leaves no adapters to pretrain: set pretrain_adapters=False too")
    if cfg.freeze_bert_epochs > 0 and not cfg.finetune_bert:
        problems.append(f"freeze_bert_epochs={cfg.freeze_bert_epochs} needs finetune_bert=True "
                        f"(with finetune_bert=False the text encoder is frozen throughout)")
    if cfg.projection == "none" and cfg.refiner == "none":
        # the unimodal vectors keep their encoders' widths (text: the BERT width, audio/vision: d_m)
        if cfg.fusion in ELEMENTWISE_FUSIONS:
            problems.append(f"fusion={cfg.fusion!r} combines the unimodal vectors element-wise; with "
                            f"refiner='none' and projection='none' their widths differ: use mib, concat or linear")
        if cfg.contrastive_weight > 0:
            problems.append("the contrastive loss (eq. 21) compares unimodal vectors across modalities; with "
                            "refiner='none' and projection='none' their widths differ: set contrastive_weight=0")
    return problems


def check_types(kwargs: Mapping[str, Any]) -> None:
    """Reject values whose type cannot be the field's (``'3e-5'`` for a float, say)."""
    types = {f.name: f.type for f in dataclasses.fields(KHaRConfig)}
    bad = []
    for key, value in kwargs.items():
        t = str(types.get(key, ""))
        if t == "bool":
            try:
                parse_bool(key, value)
                ok = True
            except ConfigError:
                ok = False
        elif t == "int":  # numbers.Integral: numpy integers from a tuning grid are fine too
            ok = _is_int(value)
        elif t == "float":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        elif t == "str":
            ok = isinstance(value, str)
        elif t == "list":
            ok = isinstance(value, (list, tuple)) and all(map(_is_int, value))
        elif t.startswith("Optional[list"):
            ok = value is None or (isinstance(value, (list, tuple)) and all(map(_is_int, value)))
        elif t.startswith("Optional[str"):
            ok = value is None or isinstance(value, str)
        else:
            ok = True
        if not ok:
            expected = f"expected {t}" + (" of integers" if "list" in t else "")
            allowed = f"; {_RANGES[key]}" if key in _RANGES else ""
            bad.append(f"{key}={value!r}: {expected}, got {type(value).__name__}{allowed}")
    if bad:
        raise ConfigTypeError("wrong type for KHaR config key(s): " + "; ".join(bad))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A short stable hash of settings, to tell whether a saved file was made with them."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def config_reference_markdown() -> str:
    """The README's configuration reference table, generated from the fields' help strings."""
    rows = ["| key | section | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(KHaRConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        sections = ", ".join(f.metadata["sections"])
        allowed = f" One of: {', '.join(f'`{c}`' for c in f.metadata['choices'])}." if f.metadata["choices"] else ""
        rows.append(f"| `{f.name}` | {sections} | `{default!r}` | {f.metadata['help'].replace('|', '/')}{allowed} |")
    return "\n".join(rows)
