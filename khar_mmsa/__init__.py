"""khar-mmsa: KHaR (Knowledge Harvesting and Refinement) as a plug-in model for MMSA 2.2.1.

``import khar_mmsa`` registers the model key ``'khar'`` and the dataset key ``'simsv2'`` with MMSA
(:mod:`khar_mmsa.registration`: it adds, it does not alter).  MMSA itself is loaded
only when something needs it: if it is not imported yet, registration happens the moment it is
(a post-import hook), so ``import khar_mmsa.io.files`` stays light.

``khar_mmsa.run(...)`` takes ``MMSA_run``'s arguments and runs any model through our runner
(validation, safe loading, resume, tuning on validation); ``khar_mmsa.test(...)`` is
``MMSA_test`` with safe loading, for any model.
"""
from typing import Any, Optional

from khar_mmsa.config import ConfigError, KHaRConfig
from khar_mmsa.registration import (is_registered, register, register_when_mmsa_is_imported,
                                                unregister)

__version__ = "0.1.0"
__all__ = ["KHaRConfig", "ConfigError", "register", "unregister", "is_registered", "run", "test",
           "__version__"]


def run(model_name: str, dataset_name: str, **kwargs: Any) -> Any:
    """``MMSA_run``'s arguments, for any model, through khar-mmsa's runner (see the README)."""
    from khar_mmsa.runs.runner import run as _run
    register()
    return _run(model_name, dataset_name, **kwargs)


def test(config: Any, weights_path: Any, feature_path: Any, gpu_id: Optional[int] = None) -> Any:
    """``MMSA_test``'s arguments, for any model, with the feature file read safely and checked
    (``gpu_id=None``: MMSA's default 0)."""
    from khar_mmsa.prediction.mmsa_test import mmsa_test
    register()
    return mmsa_test(config, weights_path, feature_path, gpu_id)


register_when_mmsa_is_imported()
