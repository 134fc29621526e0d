"""The restricted loader: feature pickles read without running code, and without allocating more
than a stated multiple of the bytes actually read.

:func:`load_pickle` / :func:`load_pickle_stream` accept one grammar, what MMSA feature pickles
(and one-sample pickles) contain: dicts, lists and tuples of str, numbers (at most 64-bit ints,
floats, complex), bool, None and numpy arrays and scalars of an accepted dtype (bool, (u)int,
float, complex, fixed-width str, object arrays of str/numbers/None); written by numpy 1
(``numpy.core``) or 2 (``numpy._core``), pickle protocols 0-5.  Anything else is refused with one
line naming the file, the opcode and its byte offset.

Design (issue 30/31).  Our own stack machine (:mod:`khar_mmsa.io.pickle_machine`) reads each
opcode and runs it; it knows only the opcodes those pickles use (no PERSID, EXT, INST/OBJ, NEWOBJ,
sets, out-of-band buffers) and never imports or calls what a file names: an allowed global is a
token, and numpy's dtypes, arrays and scalars are built by :mod:`khar_mmsa.io.pickle_globals` from
shape, dtype and the bytes present in the file (``prod(shape) x itemsize`` must equal the bytes
read).  Not a subclass of CPython's private ``pickle._Unpickler`` (round 4's design): every check
lived in an override of a private method, and each new bypass was one more override; nor the public
``pickle.Unpickler`` with ``find_class``: the C unpickler lets no opcode but globals and
persistent ids be intercepted, so ``scalar(V1.5 GiB)`` or an object state of the wrong length
would reach numpy before any check.  Speed: the time goes into reading array buffers, at about
``pickle.load``'s speed for real files (``python -m benchmarks.loading --quick``).

Budget (:mod:`khar_mmsa.io.pickle_budget`): memory built and the expansion of every container when
stacked are each held to ``MEMORY_MULTIPLE`` (32) x the bytes read so far + ``FLOOR_BYTES`` (8 MiB);
only strings, numbers, dtypes and arrays may be referenced again (each reference counts again in
the expansion); containers and MARKs nest at most ``MAX_NESTING`` deep.  ``trusted=True`` falls
back to plain :mod:`pickle` for a file the caller vouches for, through the call only.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO, Union

from khar_mmsa.io.pickle_budget import (FLOOR_BYTES, MAX_NESTING, MEMORY_MULTIPLE, PickleReadError,
                                        PickleSizeError, UnsafePickleError)
from khar_mmsa.io.pickle_globals import ALLOWED_GLOBALS
from khar_mmsa.io.pickle_machine import Machine
from khar_mmsa.io.pickle_opcodes import OPCODES

logger = logging.getLogger(f"MMSA.{__name__}")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["UnsafePickleError", "PickleReadError", "PickleSizeError", "ALLOWED_GLOBALS",
           "MAX_NESTING", "MEMORY_MULTIPLE", "FLOOR_BYTES", "load_pickle", "load_pickle_stream"]


def load_pickle_stream(fileobj: BinaryIO, trusted: bool = False, source: str = "<stream>") -> Any:
    """Unpickle one object from a binary file object (module docstring: what is accepted).

    Raises :class:`UnsafePickleError` for a global or value outside the grammar,
    :class:`PickleSizeError` for an allocation the bytes read cannot back (before it is made), and
    :class:`PickleReadError` for a truncated or corrupt stream.  ``trusted=True`` uses plain
    :func:`pickle.load` and logs a warning.  ``source`` names the data in messages.
    """
    try:
        if trusted:
            logger.warning("%s: loading with plain pickle (trust_pickle=True); this runs any code "
                           "the file contains -- use it only for files you trust.", source)
            return pickle.load(fileobj, encoding="latin1")
        return Machine(fileobj, source, OPCODES).load()
    except (UnsafePickleError, PickleSizeError, PickleReadError):
        raise
    except MemoryError:
        raise PickleSizeError(f"{source}: the machine ran out of memory while loading it (within "
                              f"{MEMORY_MULTIPLE}x the bytes read); free memory or load a smaller file.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, struct.error,
            AttributeError, KeyError, UnicodeDecodeError, io.UnsupportedOperation) as exc:
        raise PickleReadError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}). The file is truncated, "
            f"corrupt or not a feature pickle; re-download or regenerate it.") from exc


def load_pickle(path: PathLike, trusted: bool = False) -> Any:
    """Read a pickle file safely; see :func:`load_pickle_stream`.

    Raises :class:`FileNotFoundError` (with the path) when the file is missing.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: feature file not found; check featurePath / custom_feature / MMSA_DATASET_ROOT.")
    with open(p, "rb") as f:
        return load_pickle_stream(f, trusted=trusted, source=str(p))
