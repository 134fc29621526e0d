"""Synthetic MMSA feature pickles with a *planted*, known sentiment signal.

Real MOSI/MOSEI/SIMS audio and visual features cannot be had offline; these datasets stand in for
them in tests and benchmarks.  They have MMSA 2.2.1's exact *unaligned* pickle layout and the real
feature widths, so every MMSA model (TFN, MulT, Self-MM, ...) and KHaR load them unchanged, and
their label noise is known, so a benchmark can say how far a model is from the best possible MAE.

Pickle layout
-------------
``{'train', 'valid', 'test'}``, each a dict of arrays over N samples:

========================  =====================  ==============================================
key                       shape / dtype          content
========================  =====================  ==============================================
``id``                    (N,) str               ``planted_<split>_<index>``
``raw_text``              (N,) str               the generated sentence (lower case, no punct.)
``text``                  (N, L_t, D_t) float32  BERT-like token features (see *Text*), zero on
                                                 padding positions
``text_bert``             (N, 3, L_t) float32    token ids, attention mask, segment ids (zeros)
``audio``                 (N, T_a, d_a) float32  frames, exact zeros after ``audio_lengths``
``vision``                (N, T_v, d_v) float32  frames, exact zeros after ``vision_lengths``
``audio_lengths``         (N,) int64             valid frames, in 1..T_a
``vision_lengths``        (N,) int64             valid frames, in 1..T_v
``regression_labels``     (N,) float32           y, in the dataset's label range
``classification_labels`` (N,) float32           0 negative (y<0), 1 neutral (y=0), 2 positive
``annotations``           (N,) str               'Negative' / 'Neutral' / 'Positive'
``regression_labels_T``   (N,) float32           SIMS / SIMSv2 only: unimodal labels (T, A, V)
========================  =====================  ==============================================

MMSA's loader only indexes ``data[split]``; two extra top-level keys are harmless and document the
data: ``data['meta']`` (the :class:`PlantedInfo` as a dict) and ``data['latents'][split]`` (the
hidden components below, the *oracle features* for tests and diagnostics).

Signal design
-------------
All quantities are in units of ``R``, the label range's half width (3 for MOSI/MOSEI, 1 for SIMS
/SIMSv2).  A latent sentiment score is spread over the three modalities::

    y = clip(y_t + y_a + y_v + eps, -R, R),      eps ~ N(0, sigma^2)

* **Text** ``y_t = TEXT_UNIT * R * p`` where ``p`` is the polarity sum of the sentence's sentiment
  words (+-1 mild, +-2 strong, e.g. 'good' +1, 'terrible' -2), each flipped by a preceding
  ``'not'``.  Sentences mix 0..3 sentiment words with neutral filler words.  With a tokenizer (a
  local folder or a tokenizer object) the words come from its vocabulary (whole-token words are
  preferred; words it lacks are split into its word pieces, so ids are always real); without one a
  built-in word list uses the ``bert-base-uncased`` ids of those words.  ``text_bert`` is
  ``[CLS] pieces [SEP] [PAD]...``; ``text`` is a deterministic function of the same ids: a fixed
  seeded embedding table (one vector per id, independent of ``seed``) plus a fixed positional
  vector plus small token noise.  Models reading ``text`` (TFN, MulT) and models reading
  ``text_bert`` (BERT-based) therefore see the same information.
* **Audio and vision** ``y_m = c_m + q_m + b_m`` for m in (a, v), three equal-variance parts, each
  written along its own direction ``u`` (orthonormal, seeded, shared by all splits) in feature
  space on top of unit Gaussian frame noise:

  - *sustained* ``c_m`` (continuous, uniform): ``c_m/w * u_c`` on every valid frame;
  - *intensity steps* ``q_m`` (quantised to ``STEP_LEVELS`` levels, so fine-grained accuracy such
    as Acc-7 is meaningful): ``k/K * u_q`` on every valid frame;
  - *transient bursts* ``b_m`` (continuous, uniform): ``BURST_GAIN * b_m/w * u_b`` on only
    ``BURST_FRAMES`` frames at random positions within the sample's length.  Mean pooling over
    the sequence divides this by the (random) length and buries it in the frame noise; a model
    has to look at individual frames (attention, max pooling, recurrence) to recover it.

  Lengths are uniform in ``[ceil(MIN_LENGTH_FRACTION * T), T]`` (or, with ``lengths='long_tailed'``,
  one lognormal clip duration per sample shared by audio and vision); padding frames are exact zeros.
* **Shares.** With the defaults ``y_t`` has std ~0.2R and each of ``y_a``, ``y_v`` std ~0.17R;
  the total signal std is ~0.31R.  All parts are bounded, so with the default noise
  (``sigma = DEFAULT_NOISE_FRACTION * R = 0.1R``) clipping at +-R is rare (about 0.1-0.3% of the
  samples); :attr:`PlantedInfo.clipped_fraction` reports the exact fraction.
* **SIMS / SIMSv2** also carry unimodal labels ``y_T = clip(y_t + eps_T)``, ``y_A``, ``y_V`` with
  their own independent noise of the same sigma.

Noise floor
-----------
The best possible predictor of ``y`` from the inputs is ``f = y_t + y_a + y_v`` (all of it is
recoverable from the features; ``eps`` is independent of them).  Without clipping its error is
``|eps|`` and, for ``eps ~ N(0, sigma^2)``::

    E|eps| = 2 * int_0^inf e * exp(-e^2 / (2 sigma^2)) / (sigma sqrt(2 pi)) de
           = 2 * sigma^2 / (sigma sqrt(2 pi)) = sigma * sqrt(2 / pi)  (~0.798 sigma)

This is :attr:`PlantedInfo.noise_floor_mae`.  It is exact only without clipping: a clipped label
is closer to a clipped prediction than ``|eps|`` so the true floor is very slightly lower; with
the rare clipping here the difference is negligible (reported via ``clipped_fraction``).

Everything is seeded through :class:`numpy.random.Generator` streams keyed by ``(seed, split)``, so
the same arguments give byte-identical arrays, and changing one split's size leaves the others
unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from khar_mmsa.data.planted_frames import directions, frames, long_tailed_fractions
from khar_mmsa.data.planted_text import (MIN_TEXT_LEN, NEGATION_WORD, TokenizerLike, Vocab, sentences,
                                         text_features)
from khar_mmsa.data.validation import FeatureValidationError, builder_args, validate_features
from khar_mmsa.io.files import atomic_open
from khar_mmsa.mmsa_conventions import SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

__all__ = ["PlantedInfo", "DatasetSpec", "DATASET_SPECS", "make_planted_dataset", "planted_data",
           "noise_floor_mae", "main"]



@dataclass(frozen=True)
class DatasetSpec:
    """Real shapes of one MMSA dataset (as in MMSA 2.2.1's processed feature pickles)."""
    text_len: int
    audio_shape: Tuple[int, int]   # (T_a, d_a)
    vision_shape: Tuple[int, int]  # (T_v, d_v)
    label_max: float               # labels lie in [-label_max, label_max]
    real_sizes: Tuple[int, int, int]
    unimodal_labels: bool


DATASET_SPECS: Dict[str, DatasetSpec] = {
    "mosi": DatasetSpec(50, (375, 5), (500, 20), 3.0, (1284, 229, 686), False),
    "mosei": DatasetSpec(50, (500, 74), (500, 35), 3.0, (16326, 1871, 4659), False),
    "sims": DatasetSpec(39, (400, 33), (55, 709), 1.0, (1368, 456, 457), True),
    "simsv2": DatasetSpec(50, (925, 25), (232, 177), 1.0, (2722, 647, 1034), True),
}

# ---- signal design constants (units of R, the label half range) -------------------------------
DEFAULT_SIZES = (256, 64, 64)
DEFAULT_NOISE_FRACTION = 0.1        # sigma = 0.1 R: floor 0.080 R, small vs the ~0.31 R signal std
SIGMA_DIGITS = 12                   # rounding of the default sigma (float noise only)
TEXT_UNIT = 0.1                     # y_t = 0.1 R per polarity point; |p| <= 6 keeps |y_t| <= 0.6 R
LENGTH_DISTRIBUTIONS = ("uniform", "long_tailed")



def noise_floor_mae(sigma: float) -> float:
    """E|eps| for eps ~ N(0, sigma^2): ``sigma * sqrt(2/pi)`` (derivation in the module docstring)."""
    return float(sigma) * math.sqrt(2.0 / math.pi)


@dataclass
class PlantedInfo:
    """What :func:`make_planted_dataset` wrote, and the best MAE any model can reach on it."""
    path: Optional[str]
    dataset: str
    sizes: Tuple[int, int, int]
    seed: int
    noise_sigma: float
    noise_floor_mae: float          # sigma * sqrt(2/pi): exact without clipping
    feature_dims: Tuple[int, int, int]  # (text feature width, d_a, d_v)
    seq_lens: Tuple[int, int, int]      # (L_t, T_a, T_v)
    label_range: Tuple[float, float]
    clipped_fraction: float         # share of samples (all splits) whose label hit the clip
    signal_std: float               # empirical std of y_t + y_a + y_v over all splits
    tokenizer: str                  # 'builtin' or the tokenizer's name / folder
    words: Dict[str, List[str]] = field(default_factory=dict)
    lengths: str = "uniform"        # audio/vision length distribution (LENGTH_DISTRIBUTIONS)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---- assembly -----------------------------------------------------------------------------------
def _resolve(dataset: str, seq_lens: Optional[Sequence[int]], noise_sigma: Optional[float]
             ) -> Tuple[DatasetSpec, Tuple[int, int, int], float]:
    dataset = dataset.lower()
    if dataset not in DATASET_SPECS:
        raise ValueError(f"dataset={dataset!r}: expected one of {sorted(DATASET_SPECS)}")
    spec = DATASET_SPECS[dataset]
    lens = (spec.text_len, spec.audio_shape[0], spec.vision_shape[0])
    if seq_lens is not None:
        if len(seq_lens) != 3 or any(int(x) < 1 for x in seq_lens):
            raise ValueError(f"seq_lens={seq_lens}: three positive lengths (text, audio, vision)")
        lens = tuple(int(x) for x in seq_lens)
    if lens[0] < MIN_TEXT_LEN:
        raise ValueError(f"text length {lens[0]} < {MIN_TEXT_LEN} ([CLS], one token, [SEP])")
    # rounded so that the default reads 0.3, not 0.30000000000000004
    sigma = (round(DEFAULT_NOISE_FRACTION * spec.label_max, SIGMA_DIGITS) if noise_sigma is None
             else float(noise_sigma))
    if sigma < 0:
        raise ValueError(f"noise_sigma={sigma}: must be >= 0")
    return spec, lens, sigma


def _split(split_idx: int, n: int, spec: DatasetSpec, lens: Tuple[int, int, int], sigma: float,
           text_dim: int, vocab: Vocab, dirs: Dict[str, np.ndarray], seed: int, lengths: str = "uniform"
           ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    r = spec.label_max
    rng_text, rng_a, rng_v, rng_y = (np.random.default_rng([seed, split_idx, stream])
                                     for stream in range(4))
    texts, ids, mask, polarity = sentences(vocab, n, lens[0], rng_text)
    text = text_features(ids, mask, text_dim, rng_text)
    fractions = (long_tailed_fractions(n, np.random.default_rng([seed, split_idx, 4]))
                 if lengths == "long_tailed" else None)  # one clip duration for audio and vision
    audio, a_len, a_lat = frames(n, lens[1], dirs["audio"], r, rng_a, fractions)
    vision, v_len, v_lat = frames(n, lens[2], dirs["vision"], r, rng_v, fractions)
    y_t = TEXT_UNIT * r * polarity
    y_a = a_lat["sustained"] + a_lat["step"] + a_lat["burst"]
    y_v = v_lat["sustained"] + v_lat["step"] + v_lat["burst"]
    signal = y_t + y_a + y_v
    eps = rng_y.normal(0.0, sigma, size=n)
    raw = signal + eps
    y = np.clip(raw, -r, r).astype(np.float32)
    cls = np.sign(y).astype(np.int64) + 1  # 0 negative, 1 neutral, 2 positive
    names = np.array(["Negative", "Neutral", "Positive"])
    out: Dict[str, np.ndarray] = {
        "id": np.array([f"planted_{SPLITS[split_idx]}_{i:05d}" for i in range(n)], dtype=object),
        "raw_text": np.array(texts, dtype=object),
        "text": text,
        "text_bert": np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.float32),
        "audio": audio,
        "vision": vision,
        "audio_lengths": a_len,
        "vision_lengths": v_len,
        "regression_labels": y,
        "classification_labels": cls.astype(np.float32),
        "annotations": names[cls].astype(object),
    }
    if spec.unimodal_labels:
        for key, part in (("T", y_t), ("A", y_a), ("V", y_v)):
            out["regression_labels_" + key] = np.clip(
                part + rng_y.normal(0.0, sigma, size=n), -r, r).astype(np.float32)
    latents = {"y_t": y_t, "y_a": y_a, "y_v": y_v, "signal": signal, "noise": eps,
               "clipped": np.abs(raw) > r, "text_polarity": polarity}
    for m, lat in (("a", a_lat), ("v", v_lat)):
        for key, value in lat.items():
            latents[f"{m}_{key}"] = value
    return out, latents


def planted_data(dataset: str = "mosi", sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0,
                 noise_sigma: Optional[float] = None, seq_lens: Optional[Sequence[int]] = None,
                 tokenizer: TokenizerLike = None, text_feature_dim: int = 768, lengths: str = "uniform"
                 ) -> Tuple[Dict[str, Any], PlantedInfo]:
    """Build the planted dataset in memory: ``(data, info)`` with ``info.path = None``.

    Arguments as in :func:`make_planted_dataset`.
    """
    spec, lens, sigma = _resolve(dataset, seq_lens, noise_sigma)
    if len(sizes) != 3 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes={sizes}: three positive split sizes (train, valid, test)")
    if text_feature_dim < 1:
        raise ValueError(f"text_feature_dim={text_feature_dim}: must be >= 1")
    if lengths not in LENGTH_DISTRIBUTIONS:
        raise ValueError(f"lengths={lengths!r}: one of {LENGTH_DISTRIBUTIONS}")
    vocab = Vocab(tokenizer)
    dir_rng = np.random.default_rng([seed, len(SPLITS)])  # shared by all splits
    dirs = {"audio": directions(spec.audio_shape[1], dir_rng),
            "vision": directions(spec.vision_shape[1], dir_rng)}
    data: Dict[str, Any] = {"latents": {}}
    for k, name in enumerate(SPLITS):
        data[name], data["latents"][name] = _split(k, int(sizes[k]), spec, lens, sigma,
                                                   int(text_feature_dim), vocab, dirs, seed, lengths)
    clipped = np.concatenate([data["latents"][s]["clipped"] for s in SPLITS])
    signal = np.concatenate([data["latents"][s]["signal"] for s in SPLITS])
    info = PlantedInfo(
        path=None, dataset=dataset.lower(), sizes=tuple(int(s) for s in sizes), seed=int(seed),
        noise_sigma=sigma, noise_floor_mae=noise_floor_mae(sigma),
        feature_dims=(int(text_feature_dim), spec.audio_shape[1], spec.vision_shape[1]),
        seq_lens=lens, label_range=(-spec.label_max, spec.label_max),
        clipped_fraction=float(clipped.mean()), signal_std=float(signal.std()),
        tokenizer=vocab.name,
        words={"positive": list(vocab.positive), "negative": list(vocab.negative),
               "filler": list(vocab.filler), "negation": [NEGATION_WORD]},
        lengths=lengths)
    data["meta"] = info.as_dict()
    return data, info


def make_planted_dataset(path: Union[str, os.PathLike], dataset: str = "mosi",
                         sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0,
                         noise_sigma: Optional[float] = None,
                         seq_lens: Optional[Sequence[int]] = None,
                         tokenizer: TokenizerLike = None,
                         text_feature_dim: int = 768, lengths: str = "uniform") -> PlantedInfo:
    """Write a planted MMSA unaligned feature pickle to ``path`` and describe it.

    Args:
        path: output ``.pkl`` (parent folders are created).
        dataset: ``'mosi'``, ``'mosei'``, ``'sims'`` or ``'simsv2'`` (real widths and lengths).
        sizes: samples in (train, valid, test).
        seed: seeds every random stream (same arguments -> identical arrays).
        noise_sigma: label noise std; ``None`` -> ``DEFAULT_NOISE_FRACTION * R`` (0.3 on
            MOSI/MOSEI, 0.1 on SIMS/SIMSv2).
        seq_lens: (L_t, T_a, T_v) to shrink sequences for fast tests; ``None`` -> the real ones.
        tokenizer: ``None`` (built-in words with bert-base-uncased ids), a local tokenizer folder,
            or a tokenizer object (``get_vocab``, ``tokenize``, ``convert_tokens_to_ids``).
        text_feature_dim: width of ``text`` (768 like BERT-base features).
        lengths: ``'uniform'`` (audio/vision lengths uniform in [T/2, T], drawn per modality) or
            ``'long_tailed'`` (one clip duration per sample for both, lognormal like the real
            CMU-MOSI transcripts' word counts: median 9 % of T, 1 % of clips above 40 %).

    Returns:
        :class:`PlantedInfo`, including ``noise_floor_mae`` (the best achievable test MAE).
    """
    data, info = planted_data(dataset, sizes, seed, noise_sigma, seq_lens, tokenizer,
                              text_feature_dim, lengths)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info.path = str(path)
    data["meta"] = info.as_dict()
    # What MMSA_run would refuse is not written: the validator MMSA_run uses, before the write.
    pretrained = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
    validate_features(data, builder_args(info.dataset, pretrained), str(path))
    with atomic_open(path) as f:  # readers never see a half-written pickle
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    logger.debug(f"planted {info.dataset} dataset written to {path}: {info}")
    return info


def main(argv: Optional[Sequence[str]] = None) -> PlantedInfo:
    """CLI: ``python -m khar_mmsa.data.planted --dataset mosi --out file.pkl``."""
    parser = argparse.ArgumentParser(prog="python -m khar_mmsa.data.planted", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mosi", choices=sorted(DATASET_SPECS))
    parser.add_argument("--out", required=True, help="output pickle")
    parser.add_argument("--sizes", type=int, nargs=3, default=list(DEFAULT_SIZES),
                        metavar=("TRAIN", "VALID", "TEST"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-sigma", type=float, default=None,
                        help=f"label noise std (default {DEFAULT_NOISE_FRACTION} * label range max)")
    parser.add_argument("--seq-lens", type=int, nargs=3, default=None, metavar=("L_T", "T_A", "T_V"))
    parser.add_argument("--tokenizer", default=None, help="local BERT tokenizer folder, or 'all-MiniLM-L6-v2' (default: a built-in "
                        "word list with bert-base-uncased ids)")
    parser.add_argument("--text-feature-dim", type=int, default=768)
    parser.add_argument("--lengths", choices=LENGTH_DISTRIBUTIONS, default="uniform",
                        help="audio/vision length distribution (long_tailed: like real CMU-MOSI clips)")
    args = parser.parse_args(argv)
    _cli_logging()
    return build_from_cli(parser, lambda: make_planted_dataset(
        args.out, args.dataset, args.sizes, args.seed, args.noise_sigma, args.seq_lens, args.tokenizer,
        args.text_feature_dim, args.lengths))


def build_from_cli(parser: Any, build: Any) -> Any:
    """A data builder's command line: ``build()``, a refused result as one error line (exit 2,
    nothing written), else the written file and what it holds logged; returns ``build()``'s info."""
    try:
        info = build()
    except FeatureValidationError as exc:
        parser.exit(2, f"{parser.prog}: error: nothing written, MMSA_run would refuse this data: {exc}\n")
    logger.info(f"wrote {info.path}")
    for key, value in info.as_dict().items():
        logger.info(f"  {key}: {value}")
    return info


def _cli_logging() -> None:
    """Give the 'MMSA' logger one INFO stream handler (CLIs only; libraries never do this)."""
    mmsa_logger = logging.getLogger("MMSA")
    if not any(isinstance(h, logging.StreamHandler) for h in mmsa_logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        mmsa_logger.addHandler(handler)
    mmsa_logger.setLevel(logging.INFO)


if __name__ == "__main__":
    main()
