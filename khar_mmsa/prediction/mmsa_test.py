"""Predicting with a saved model: ``MMSA_test`` for 'khar', and :func:`mmsa_test` for every model.

:func:`mmsa_test` takes ``MMSA_test``'s arguments.  The feature file is read with the restricted
unpickler (``khar_mmsa.io.pickles``; a pickle that would run code is refused;
``config={'trust_pickle': True}`` for a file you trust; every boolean setting parsed strictly by
:func:`khar_mmsa.config.parse_bool`) and checked before any model sees it;
``gpu_id >= 0`` without CUDA runs on the CPU with a warning.

* For 'khar' (``MMSA_test('khar', weights, features)`` after ``import khar_mmsa``, which sends
  'khar' here) the model is rebuilt from the checkpoint's saved config and tensors
  (:func:`khar_mmsa.prediction.predict.predict_file`), not from the sample's shapes; a whole MMSA
  feature pickle is predicted split by split.
* For MMSA's own models it is MMSA's own ``MMSA_test`` body on the checked sample (pickled again,
  from the checked arrays, into a temporary file that MMSA's plain ``pickle.load`` reads).
  ``MMSA_test`` itself stays MMSA's for them.
"""
from __future__ import annotations

import json
import logging
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from khar_mmsa.config import normalize_bools
from khar_mmsa.runs.devices import cuda_available
from khar_mmsa.registration.extra_models import EXTRA_MODELS, is_extra_model
from khar_mmsa.registration.replacements import mmsa_module, require_registration
from khar_mmsa.prediction.samples import check_sample

logger = logging.getLogger(f"MMSA.{__name__}")

#: ``MMSA_test``'s ``gpu_id`` when the caller gives none.
MMSA_DEFAULT_GPU_ID = 0


def _test_args(config: Any) -> Mapping[str, Any]:
    """MMSA_test's ``config`` as a mapping: a dict, a JSON file, or a model key such as 'khar'."""
    if isinstance(config, Mapping):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_file():
            try:
                loaded = json.loads(path.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: MMSA_test's config file is not UTF-8 JSON ({exc})") from None
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: MMSA_test's config file holds a JSON {type(loaded).__name__}, not an object")
            return loaded
        if str(config).lower() in _extra_models():
            return {"model_name": str(config).lower()}
        raise FileNotFoundError(f"MMSA_test config={str(config)!r}: neither a config file nor a "
                                f"model key of khar-mmsa ({', '.join(_extra_models())})")
    raise ValueError(f"MMSA_test: 'config' should be a dict, a JSON file or a model key, not "
                     f"{type(config).__name__}")


def _extra_models() -> tuple:
    return tuple(EXTRA_MODELS)


def mmsa_test(config: Any, weights_path: Any, feature_path: Any, gpu_id: Optional[int] = None) -> Any:
    """``MMSA_test`` with the feature file read safely and checked, for every model (see above).
    ``gpu_id=None``: MMSA's default 0, on the CPU without a warning where there is no CUDA."""
    from khar_mmsa.io.pickles import load_pickle
    require_registration()
    asked, gpu_id = gpu_id is not None, MMSA_DEFAULT_GPU_ID if gpu_id is None else int(gpu_id)
    if gpu_id >= 0 and not cuda_available():
        if asked:
            logger.warning(f"CUDA is not available: MMSA_test runs on the CPU (gpu_id={gpu_id}).")
        gpu_id = -1
    test_args = normalize_bools(dict(_test_args(config)))  # 'no' is False, 'off' an error
    from khar_mmsa.io.names import check_name
    for key in ("model_name", "dataset_name"):
        if test_args.get(key) is not None:
            check_name(test_args[key], key)
    trusted = test_args.get("trust_pickle") or False
    device = "cpu" if gpu_id < 0 else f"cuda:{gpu_id}"
    if is_extra_model(test_args.get("model_name", "")):
        from khar_mmsa.prediction.predict import predict_file
        return predict_file(weights_path, feature_path, test_args, device=device, trusted=trusted)
    sample = load_pickle(feature_path, trusted=trusted)
    check_sample(sample, str(feature_path))
    with tempfile.TemporaryDirectory(prefix="khar-mmsa-test-") as folder:
        checked = Path(folder) / "sample.pkl"
        checked.write_bytes(pickle.dumps(sample, protocol=4))
        # MMSA's MMSA_test: for MMSA's own models its route runs MMSA's own body
        return mmsa_module("MMSA.run").MMSA_test(config, weights_path, str(checked), gpu_id)
