"""The one hash of settings: a short, stable digest of a JSON-able mapping."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

#: Hex digits kept of the SHA-256 (64 bits: no collision among the configs one machine holds).
FINGERPRINT_HEX_DIGITS = 16


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A short stable hash of settings, to tell whether a saved file was made with them (keys
    sorted; a value JSON cannot hold is hashed by its ``str``)."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]
