"""Predicting with a saved model: ``MMSA_test`` for 'khar', and :func:`mmsa_test` for every model.

:func:`mmsa_test` takes ``MMSA_test``'s arguments.  The feature file is read with the restricted
unpickler (``khar_mmsa.io.pickles``; a pickle that would run code is refused;
``config={'trust_pickle': True}`` for a file you trust; every boolean setting parsed strictly by
:func:`khar_mmsa.config.parse_bool`) and checked before any model sees it;
``gpu_id >= 0`` without CUDA runs on the CPU with a warning.

* For 'khar' (``MMSA_test('khar', weights, features)`` after ``import khar_mmsa``, which sends
  'khar' here) the model is rebuilt from the checkpoint's saved config and tensors
  (:func:`khar_mmsa.integration.predict.predict_file`), not from the sample's shapes; a whole MMSA
  feature pickle is predicted split by split.
* For MMSA's own models it is MMSA's ``MMSA_test`` on the checked sample (served to it from
  memory, :mod:`.features`).  ``MMSA_test`` itself stays MMSA's for them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from khar_mmsa.config import normalize_bools

logger = logging.getLogger("MMSA")


def _test_args(config: Any) -> Mapping[str, Any]:
    """MMSA_test's ``config`` as a mapping: a dict, a JSON file, or a model key such as 'khar'."""
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        if str(config).lower() in _extra_models():
            return {"model_name": str(config).lower()}
        raise FileNotFoundError(f"MMSA_test config={str(config)!r}: neither a config file nor a "
                                f"model key of khar-mmsa ({', '.join(_extra_models())})")
    raise ValueError(f"MMSA_test: 'config' should be a dict, a JSON file or a model key, not "
                     f"{type(config).__name__}")


def _extra_models() -> tuple:
    from khar_mmsa.integration.registration import EXTRA_MODELS
    return tuple(EXTRA_MODELS)


def check_sample(sample: Any, source: str) -> None:
    """MMSA_test's sample for MMSA's own models: a dict of finite 2-D numeric arrays; ``text_bert``
    (3, L) with whole-number ids, a 0/1 mask and 0/1 segment ids; ``*_lengths``, when given, one
    whole number within the sequence."""
    from khar_mmsa.data.validation import FeatureValidationError
    if not isinstance(sample, Mapping):
        raise FeatureValidationError(source, None, None, f"the pickle holds a "
                                     f"{type(sample).__name__}, not a dict",
                                     "Pass one sample {'text', 'audio', 'vision', ...}")
    for key in ("text", "text_bert", "audio", "vision"):
        a = sample.get(key)
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" or a.ndim != 2:
            raise FeatureValidationError(source, None, key, f"is not a 2-D numeric array "
                                         f"({type(a).__name__} {getattr(a, 'shape', '')})",
                                         "Pass one sample as MMSA-FET writes it")
        if not np.isfinite(a).all():
            raise FeatureValidationError(source, None, key, "holds NaN or infinite values",
                                         "Replace them before testing")
    from khar_mmsa.integration.predict import check_length, check_text_bert
    if sample.get("text_bert") is not None:
        check_text_bert(sample["text_bert"], source)
    for key in ("audio", "vision"):
        if sample.get(f"{key}_lengths") is not None and isinstance(sample.get(key), np.ndarray):
            check_length(sample[f"{key}_lengths"], sample[key].shape[0], source, f"{key}_lengths")


def mmsa_test(config: Any, weights_path: Any, feature_path: Any, gpu_id: int = 0) -> Any:
    """``MMSA_test`` with the feature file read safely and checked, for every model (see above)."""
    import importlib

    import torch

    from khar_mmsa.integration.features import file_key
    from khar_mmsa.integration.registration import is_extra_model, register
    from khar_mmsa.io.pickles import load_pickle
    register()
    if gpu_id >= 0 and not torch.cuda.is_available():
        logger.warning(f"CUDA is not available: MMSA_test runs on the CPU (gpu_id={gpu_id}).")
        gpu_id = -1
    test_args = normalize_bools(dict(_test_args(config)))  # 'no' is False, 'off' an error
    trusted = test_args.get("trust_pickle") or False
    device = "cpu" if gpu_id < 0 else f"cuda:{gpu_id}"
    if is_extra_model(test_args.get("model_name", "")):
        from khar_mmsa.integration.predict import predict_file
        return predict_file(weights_path, feature_path, test_args, device=device, trusted=trusted)
    sample = load_pickle(feature_path, trusted=trusted)
    check_sample(sample, str(feature_path))
    run = importlib.import_module("MMSA.run")
    original = getattr(run.MMSA_test, "__wrapped__", run.MMSA_test)
    with run.pickle.serving({file_key(feature_path): sample}):
        return original(config, weights_path,
                        feature_path, gpu_id)
