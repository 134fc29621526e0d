"""The errors a KHaR configuration raises."""
from __future__ import annotations


class ConfigError(ValueError):
    """A KHaR configuration value is unknown, of the wrong type or impossible."""


class ConfigTypeError(ConfigError, TypeError):
    """A KHaR configuration value has the wrong type (``batch_size='64'``)."""
