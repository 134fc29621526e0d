"""khar-mmsa: KHaR (Knowledge Harvesting and Refinement) as a plug-in model for MMSA 2.2.1.

Importing the package registers the model key ``'khar'`` and the dataset key ``'simsv2'`` with MMSA
and applies the compatibility fixes in :mod:`khar_mmsa.integration`; ``unregister()`` undoes it all.
"""
from khar_mmsa.config import ConfigError, KHaRConfig
from khar_mmsa.integration import is_registered, register, unregister

__version__ = "0.1.0"
__all__ = ["KHaRConfig", "ConfigError", "register", "unregister", "is_registered", "__version__"]

register()
