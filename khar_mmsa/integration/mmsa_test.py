"""``MMSA_test`` (in ``MMSA.run`` and ``MMSA``) through the same gate as ``MMSA_run``.

* ``MMSA_test(gpu_id>=0)`` without CUDA falls back to the CPU with a warning.
* The feature file is read with the restricted unpickler (``khar_mmsa.io.safe_io``; a pickle that
  would run code is refused; ``config={'trust_pickle': True}`` for a file you trust, every boolean
  setting parsed strictly by :func:`khar_mmsa.config.parse_bool`) and checked before any model
  sees it.  For MMSA's own models the object is handed to ``MMSA_test`` through
  the ``pickle`` shim installed as ``MMSA.run.pickle`` (:class:`~khar_mmsa.integration.loading.PickleShim`).
* ``config`` may name a model key (``MMSA_test('khar', weights, features)``) instead of a JSON
  file.  For ``'khar'`` the prediction is :func:`khar_mmsa.integration.predict.predict_file`: the model is
  rebuilt from the checkpoint's config, not from the sample's shapes (which MMSA uses), and a
  whole MMSA feature pickle is predicted split by split.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

import numpy as np

from khar_mmsa.config import normalize_bools
from khar_mmsa.integration.cpu_fallback import cuda_available
from khar_mmsa.integration.loading import PickleShim, preloaded_objects
from khar_mmsa.integration.models import EXTRA_MODELS
from khar_mmsa.integration.registry import mmsa_module, set_attr, set_entry_point

logger = logging.getLogger("MMSA")


def patch() -> None:
    """Replace ``MMSA_test`` in ``MMSA.run`` and ``MMSA``; restricted ``pickle`` in ``MMSA.run``."""
    run = mmsa_module("MMSA.run")
    set_attr(run, "pickle", PickleShim())
    set_entry_point("MMSA_test", _wrap_mmsa_test(run.MMSA_test))


def _test_args(config: Any) -> Mapping[str, Any]:
    """MMSA_test's ``config`` as a mapping: a dict, a JSON file, or a model key such as 'khar'."""
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        if str(config).lower() in EXTRA_MODELS:
            return {"model_name": str(config).lower()}
        raise FileNotFoundError(f"MMSA_test config={str(config)!r}: neither a config file nor a "
                                f"model key of khar-mmsa ({', '.join(EXTRA_MODELS)})")
    raise ValueError(f"MMSA_test: 'config' should be a dict, a JSON file or a model key, not "
                     f"{type(config).__name__}")


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


def _wrap_mmsa_test(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_test(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        if call["gpu_id"] >= 0 and not cuda_available():
            logger.warning(f"CUDA is not available: MMSA_test runs on the CPU "
                           f"(gpu_id={call['gpu_id']}).")
            call["gpu_id"] = -1
        test_args = normalize_bools(dict(_test_args(call["config"])))
        trusted = test_args.get("trust_pickle") or False
        device = "cpu" if call["gpu_id"] < 0 else f"cuda:{call['gpu_id']}"
        if str(test_args.get("model_name", "")).lower() in EXTRA_MODELS:
            from khar_mmsa.integration.predict import predict_file
            return predict_file(call["weights_path"], call["feature_path"], test_args,
                                device=device, trusted=trusted)
        from khar_mmsa.io.safe_io import load_pickle
        sample = load_pickle(call["feature_path"], trusted=trusted)
        check_sample(sample, str(call["feature_path"]))
        with preloaded_objects({call["feature_path"]: sample}):
            return original(**call)
    return MMSA_test
