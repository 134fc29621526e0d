"""Predictions from a saved KHaR checkpoint: what ``MMSA_test('khar', weights, features)`` runs.

MMSA's ``MMSA_test`` sizes the model from the one sample it reads (``seq_lens`` = the sample's
lengths), while KHaR's learned position tables are sized by the training config, so a KHaR
checkpoint does not load that way.  Here the model is rebuilt from the config the checkpoint was
trained with -- ``<checkpoint>.json``, written beside it by :class:`~khar_mmsa.training.trainer.KHaRTrainer`
-- or, for a checkpoint without one, from the config passed to ``MMSA_test`` with the audio/vision
``seq_lens`` and ``feature_dims`` read from the checkpoint's own tensors.  Never from the sample.

The feature file is read with the restricted unpickler (:mod:`khar_mmsa.io.pickles`; a file that
would run code is refused) and checked before the model sees it:

* one sample (MMSA's format): ``{'text_bert': (3, L), 'audio': (La, Da), 'vision': (Lv, Dv)}``,
  optionally ``audio_lengths`` / ``vision_lengths`` -> a float;
* a whole MMSA feature pickle (``{'train': {...}, 'valid': {...}, 'test': {...}}``), checked by
  :func:`khar_mmsa.data.validation.validate_features` -> ``{split: np.ndarray of predictions}``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch

from khar_mmsa.config import KHaRConfig
from khar_mmsa.model.khar import KHaR
from khar_mmsa.io.pickles import load_pickle
from khar_mmsa.io.state_files import guard_settings, load_checkpoint, load_checkpoint_config
from khar_mmsa.data.validation import FeatureValidationError, validate_features
from khar_mmsa.prediction.samples import check_length, check_sample
from khar_mmsa.mmsa_conventions import SPLITS

logger = logging.getLogger(f"MMSA.{__name__}")

#: MMSA's ``AMIO`` keeps the network as ``self.Model``: checkpoint keys start with this.
AMIO_PREFIX = "Model."
MODAL_KEYS = ("text_bert", "audio", "vision")


def config_file(weights_path: Union[str, Path]) -> Path:
    """Where :class:`~khar_mmsa.training.trainer.KHaRTrainer` saves a checkpoint's config."""
    path = Path(weights_path)
    return path.with_name(path.name + ".json")


def _network_state(weights_path: Path) -> Dict[str, torch.Tensor]:
    state = load_checkpoint(weights_path)  # StateFileError naming the file when damaged
    return {k[len(AMIO_PREFIX):] if k.startswith(AMIO_PREFIX) else k: v for k, v in state.items()}


def checkpoint_config(weights_path: Union[str, Path], args: Mapping[str, Any],
                      state: Mapping[str, torch.Tensor]) -> KHaRConfig:
    """The KHaR config of a checkpoint: its saved ``.json`` (read by
    :func:`~khar_mmsa.io.state_files.load_checkpoint_config`: the architecture sections, or a whole
    config as older checkpoints saved it; :meth:`KHaRConfig.from_architecture` fills the rest), else
    ``args``; in both cases the audio/vision ``seq_lens`` and ``feature_dims`` are the checkpoint's
    tensor shapes, never the JSON's; guards (``max_model_memory_gib``) are ``args``', never the
    JSON's."""
    saved = config_file(weights_path)
    if saved.is_file():
        fields = dict(load_checkpoint_config(saved, settings=args)["config"], **guard_settings(args))
    else:
        fields = {k: v for k, v in dict(args).items() if k in KHaRConfig.field_names()}
        fields.setdefault("dataset_name", args.get("dataset_name", "mosi"))
    dims = list(fields.get("feature_dims", KHaRConfig().feature_dims))
    lens = list(fields.get("seq_lens", KHaRConfig().seq_lens))
    for i, m in ((1, "a"), (2, "v")):
        position = state.get(f"harvesters.{m}.encoder.position")
        proj = state.get(f"harvesters.{m}.encoder.proj.weight")
        if position is not None:
            lens[i] = int(position.shape[1])
        if proj is not None:
            dims[i] = int(proj.shape[1])
    fields["feature_dims"], fields["seq_lens"] = dims, lens
    if saved.is_file():
        return KHaRConfig.from_architecture(fields)
    logger.warning(f"{saved} not found: KHaR for {weights_path} is built from the config passed to "
                   f"MMSA_test, audio/vision shapes from the checkpoint (seq_lens={lens}).")
    return KHaRConfig.from_mmsa_args(fields, strict=False)


def load_model(weights_path: Union[str, Path], args: Mapping[str, Any],
               device: torch.device) -> KHaR:
    """KHaR rebuilt from the checkpoint's config, its weights loaded (all keys must match)."""
    weights_path = Path(weights_path)
    state = _network_state(weights_path)
    cfg = checkpoint_config(weights_path, args, state)
    model = KHaR(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: the weights do not fit the KHaR config "
                         f"({config_file(weights_path)} or the config passed to MMSA_test): "
                         f"{str(exc).splitlines()[0]}") from exc
    return model.to(device).eval()


def _check_sample(sample: Any, cfg: KHaRConfig, source: str, vocab: Optional[int],
                  type_vocab: int = 2, max_positions: Optional[int] = None) -> None:
    """One sample in MMSA_test's format (:func:`.samples.check_sample`, the three arrays KHaR reads
    required), then its widths and lengths against the checkpoint's config."""
    check_sample(sample, source, MODAL_KEYS, vocab, type_vocab, max_positions)
    for i, key in ((1, "audio"), (2, "vision")):
        n, width = sample[key].shape
        if width != cfg.feature_dims[i]:
            raise FeatureValidationError(source, None, key, f"has feature width {width}, the checkpoint was "
                                         f"trained with {cfg.feature_dims[i]}", "Extract features as for the training data")
        if n > cfg.seq_lens[i]:
            raise FeatureValidationError(source, None, key, f"has {n} frames, more than the checkpoint's "
                                         f"seq_lens[{i}]={cfg.seq_lens[i]}",
                                         "Cut or resample the sequence as for the training data")


def _check_file(data: Mapping[str, Any], cfg: KHaRConfig, source: str) -> None:
    """A whole MMSA feature pickle: MMSA_run's checks, then widths/lengths vs the checkpoint."""
    args = {"model_name": "khar", "dataset_name": cfg.dataset_name, "use_bert": True,
            "need_data_aligned": False, "pretrained": cfg.pretrained}
    validate_features(data, args, source)
    for split in SPLITS:
        for i, key in ((1, "audio"), (2, "vision")):
            _, n, width = data[split][key].shape
            if width != cfg.feature_dims[i] or n > cfg.seq_lens[i]:
                raise FeatureValidationError(
                    source, split, key, f"has (length, width) ({n}, {width}); the checkpoint "
                    f"takes width {cfg.feature_dims[i]} and at most {cfg.seq_lens[i]} frames",
                    "Extract features as for the training data")


def _vocab(cfg: KHaRConfig, model: KHaR) -> Optional[int]:
    if "t" not in model.harvesters:
        return None
    return int(model.harvesters["t"].encoder.backbone.config.vocab_size)


def _text_limits(model: KHaR) -> tuple:
    """(type_vocab_size, max_position_embeddings) of the text encoder; (2, None) without text."""
    if "t" not in model.harvesters:
        return 2, None
    config = model.harvesters["t"].encoder.backbone.config
    return (int(getattr(config, "type_vocab_size", 2)),
            getattr(config, "max_position_embeddings", None))


def _tensor(a: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)


@torch.no_grad()
def _predict(model: KHaR, text: Any, audio: Any, vision: Any, audio_lengths: Any,
             vision_lengths: Any, device: torch.device) -> np.ndarray:
    out = model(_tensor(text, device), _tensor(audio, device), _tensor(vision, device),
                audio_lengths=_tensor(audio_lengths, device).long(),
                vision_lengths=_tensor(vision_lengths, device).long())
    return out["M"].view(-1).cpu().numpy()


def predict_file(weights_path: Union[str, Path], feature_path: Union[str, Path],
                 args: Optional[Mapping[str, Any]] = None, device: Union[str, torch.device] = "cpu",
                 trusted: bool = False, batch_size: int = 64) -> Union[float, Dict[str, np.ndarray]]:
    """Predict with a KHaR checkpoint: a float for one sample, ``{split: predictions}`` for an
    MMSA feature pickle (see the module docstring).  ``trusted`` reads the pickle with plain
    :mod:`pickle` (only for a file you trust)."""
    device = torch.device(device)
    model = load_model(weights_path, dict(args or {}), device)
    cfg = model.cfg
    source = str(feature_path)
    data = load_pickle(feature_path, trusted=trusted)
    if isinstance(data, Mapping) and all(s in data for s in SPLITS):
        _check_file(data, cfg, source)
        out = {}
        for split in SPLITS:
            d = data[split]
            preds = [_predict(model, d["text_bert"][i:i + batch_size], d["audio"][i:i + batch_size],
                              d["vision"][i:i + batch_size], d["audio_lengths"][i:i + batch_size],
                              d["vision_lengths"][i:i + batch_size], device)
                     for i in range(0, len(d["audio"]), batch_size)]
            out[split] = np.concatenate(preds)
        return out
    _check_sample(data, cfg, source, _vocab(cfg, model), *_text_limits(model))
    lengths = {k: [check_length(data.get(f"{k}_lengths", data[k].shape[0]), data[k].shape[0],
                                source, f"{k}_lengths")] for k in ("audio", "vision")}
    pred = _predict(model, data["text_bert"][None], data["audio"][None], data["vision"][None],
                    lengths["audio"], lengths["vision"], device)
    return float(pred[0])
