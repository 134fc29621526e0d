"""Boolean settings and switches: the one list of words that mean true or false.

Every boolean khar-mmsa reads -- a config key (:func:`parse_bool`, strict), an MMSA ``args`` dict
(:func:`normalize_bools`) or an environment variable (:func:`env_flag`: ``HF_HUB_OFFLINE``,
``TQDM_DISABLE``) -- is read with :data:`TRUE_WORDS` / :data:`FALSE_WORDS`, in any case, spaces
around ignored.
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Iterable, MutableMapping, Optional

from khar_mmsa.config.errors import ConfigTypeError

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def bool_word(text: str) -> Optional[bool]:
    """``True``/``False`` for a word of :data:`TRUE_WORDS`/:data:`FALSE_WORDS` (any case, spaces
    around ignored); None for any other text."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def parse_bool(key: str, value: Any) -> bool:
    """The boolean setting ``key`` from a Python, JSON or command-line value, strictly.

    Accepted: ``True``/``False`` (numpy's too), the integers 1 and 0, and the words of
    :data:`TRUE_WORDS`/:data:`FALSE_WORDS` in any case (surrounding spaces ignored).  Anything else
    -- ``'off'``, ``2``, ``None``, ``1.0``, ``''`` -- raises :class:`ConfigTypeError` naming the key,
    so that a value such as ``'False'`` can never count as true for being a non-empty string.
    """
    if isinstance(value, bool):
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)  # numpy.bool_ (from a tuning grid), without importing numpy
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(int(value))
    if isinstance(value, str) and bool_word(value) is not None:
        return bool(bool_word(value))
    raise ConfigTypeError(
        f"{key}={value!r}: expected a boolean ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, "
        f"any case), got {type(value).__name__}")


def normalize_bools(args: MutableMapping[str, Any], keys: Iterable[str]) -> MutableMapping[str, Any]:
    """Replace every key of ``keys`` present in ``args`` by its :func:`parse_bool` value, in place;
    ``None`` (MMSA's "not set") is left alone.  Returns ``args``.  Raises
    :class:`ConfigTypeError` naming the first key that is not a boolean."""
    for key in sorted(keys):
        if key in args and args[key] is not None:
            args[key] = parse_bool(key, args[key])
    return args


def env_flag(name: str, *, unknown: bool = False) -> bool:
    """The environment variable ``name`` as a switch: False when unset or empty, else its word's
    value; ``unknown`` for any other text (``TQDM_DISABLE=please`` disables, as tqdm reads it)."""
    text = os.environ.get(name, "")
    if not text.strip():
        return False
    value = bool_word(text)
    return unknown if value is None else value
