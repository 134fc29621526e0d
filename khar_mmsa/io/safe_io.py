"""Safe reading and atomic writing of the files khar-mmsa touches.

* :func:`load_pickle` / :func:`load_pickle_stream` read MMSA feature pickles with a restricted
  unpickler: only the globals a dict of numpy arrays needs can be resolved, so a crafted pickle
  cannot run code (``os.system``, ``open``, ``eval`` ...), and no array (or ``bytes``) larger
  than what the rest of the file can hold is allocated, so a tiny file cannot declare terabytes;
  every array counts against that budget, again each time the pickle references it again.
  ``trusted=True`` falls back to plain :mod:`pickle` for a file the user vouches for.
* :func:`file_digest` is the content hash (SHA-256) of a file, computed once per process per
  file version; saved adapters and resume files are keyed by it instead of paths or mtimes.
* :func:`safe_torch_load` reads checkpoints with ``torch.load(weights_only=True)``.
* :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_torch_save` and the
  :func:`atomic_open` context manager write to a temporary file in the target's directory, flush
  and fsync it, then ``os.replace`` it over the target: readers see the old file or the new one,
  never a truncated one, and the temporary file is removed if anything fails.

Links and modes.  Links in the folders leading to a file are followed (the user made the
folders so); the files themselves are never opened through a link: the temporary file is created
with ``O_CREAT | O_EXCL`` (which never follows one), a target that is a symbolic link (dangling or
not) is refused with :class:`UnsafePathError` -- the link and what it points to stay untouched --
and lock files are opened with ``O_NOFOLLOW`` (:mod:`khar_mmsa.io.locks`).  An existing target keeps its
permission bits (0600 stays 0600); a new one gets ``0o666 & ~umask`` (0644 under the usual umask),
whatever wrote it (results, checkpoints, curves, logs: :func:`new_file_mode`).  An existing target
without its owner's write bit is read-only: writing it raises :class:`PermissionError`, and
:func:`check_writable_file` says so before any work is done.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import errno
import functools
import hashlib
import importlib
import logging
import math
import os
import pickle
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterator, Optional, Union

logger = logging.getLogger("MMSA")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "UnsafePickleError", "PickleReadError", "PickleSizeError", "ALLOWED_GLOBALS", "load_pickle",
    "load_pickle_stream", "file_digest",
    "safe_torch_load", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
    "UnsafePathError", "check_writable_file", "new_file_mode",
    "append_whole", "truncate_back", "open_no_follow", "repair_torn_last_line", "NoFollowFileHandler",
]

_TRUST_HINT = ("If, and only if, you trust this file, pass config={'trust_pickle': True} to MMSA_run "
               "(or trusted=True to load_pickle) to load it with plain pickle.")


class UnsafePickleError(RuntimeError):
    """A pickle asks for a global outside the allow-list (it could run code), or a checkpoint is
    not loadable with ``torch.load(weights_only=True)``."""


class PickleReadError(ValueError):
    """A pickle file is truncated, corrupt or not a pickle at all."""


class PickleSizeError(PickleReadError):
    """A pickle declares an array (or byte string) larger than the rest of the file can hold."""


# --------------------------------------------------------------------------------------------
# allow-list
# --------------------------------------------------------------------------------------------
# (module, name) pairs after Python-2 name mapping.  ``numpy.core`` (numpy 1) and ``numpy._core``
# (numpy 2) both appear in pickles in the wild; each is resolved to whichever the installed numpy
# provides, so a numpy-1 pickle loads under numpy 2 and vice versa.
_NUMPY_CORE_GLOBALS = frozenset({
    ("multiarray", "_reconstruct"),   # ndarray.__reduce__
    ("multiarray", "scalar"),         # numpy scalar (np.float32(1.0), np.str_('x'))
    ("numeric", "_frombuffer"),       # ndarray.__reduce_ex__ with pickle protocol 5
})
_BUILTIN_GLOBALS = frozenset({
    # dict, list, tuple, str, int, float, bool, None and bytes have opcodes of their own; these
    # are the containers/numbers that need a global.  bytes/bytearray appear for empty or
    # protocol <= 2 byte strings.
    "set", "frozenset", "complex", "bytes", "bytearray",
})
ALLOWED_GLOBALS: frozenset = frozenset(
    {(f"numpy.core.{m}", n) for m, n in _NUMPY_CORE_GLOBALS}
    | {(f"numpy._core.{m}", n) for m, n in _NUMPY_CORE_GLOBALS}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.dtypes", "*DType")}
    | {("builtins", n) for n in _BUILTIN_GLOBALS}
    | {("collections", "OrderedDict"),
       # protocol <= 2 pickles store bytes as _codecs.encode(latin-1 text, 'latin1'); numpy
       # arrays pickled with protocol 2 need it for their raw buffer.
       ("_codecs", "encode")}
)


def _resolve_numpy_core(submodule: str, name: str) -> Any:
    """Fetch ``name`` from ``numpy._core.<submodule>`` or ``numpy.core.<submodule>``, whichever
    the installed numpy has (importing ``numpy.core`` under numpy 2 would warn)."""
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


def _allowed_global(module: str, name: str) -> Optional[Any]:
    """Return the object for an allowed ``module.name``; None if it is not allowed."""
    for base in ("numpy.core.", "numpy._core."):
        if module.startswith(base):
            sub = module[len(base):]
            if (sub, name) in _NUMPY_CORE_GLOBALS:
                return _resolve_numpy_core(sub, name)
            return None
    if module == "numpy" and name in ("ndarray", "dtype"):
        import numpy
        return getattr(numpy, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        import numpy
        cls = getattr(importlib.import_module("numpy.dtypes"), name, None)
        if isinstance(cls, type) and issubclass(cls, numpy.dtype):
            return cls
        return None
    if module == "builtins" and name in _BUILTIN_GLOBALS:
        return getattr(__import__("builtins"), name)
    if (module, name) == ("collections", "OrderedDict"):
        import collections
        return collections.OrderedDict
    if (module, name) == ("_codecs", "encode"):
        import _codecs
        return _codecs.encode
    return None


def _human(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""  # pragma: no cover


class _SizeGuard:
    """Refuses allocations the file cannot back.

    A real array's data is in the pickle: ``count * itemsize`` bytes for numbers (raw buffer), at
    least one byte per element for object arrays (one opcode each).  ``budget`` is the number of
    bytes the stream holds from where unpickling started; None when unknown (no check).
    """

    def __init__(self, budget: Optional[int], source: str) -> None:
        self.budget, self.source = budget, source
        self.used = 0  # bytes of every array declared or referenced again so far

    def array(self, shape: Any, dtype: Any, what: str) -> None:
        if self.budget is None:
            return
        import numpy
        try:
            dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
            dt = numpy.dtype(dtype)
        except (TypeError, ValueError):
            return  # numpy itself rejects it with its own error
        count = math.prod(max(d, 0) for d in dims)
        need = count if dt.hasobject else count * dt.itemsize
        if need > self.budget:
            size = (f"{count} object elements, at least {_human(count)} of pickle"
                    if dt.hasobject else _human(count * dt.itemsize))
            raise PickleSizeError(
                f"{self.source}: {what} declares an array of shape {tuple(dims)} and dtype {dt} "
                f"({size}), but the file holds only {_human(self.budget)}; refusing to allocate it. "
                f"The file is corrupt or crafted; re-download or regenerate it.")
        self._count(need, f"{what} of shape {tuple(dims)}")

    def reference(self, arr: Any) -> None:
        """A memoised array fetched again: whoever stacks or copies the references (validation's
        ``np.asarray`` of a list of them) allocates it again, so it counts again."""
        if self.budget is None:
            return
        need = arr.size if arr.dtype.hasobject else arr.nbytes
        self._count(need, f"a shared reference to an array of shape {arr.shape}")

    def _count(self, need: int, what: str) -> None:
        self.used += need
        if self.used > self.budget:
            raise PickleSizeError(
                f"{self.source}: the arrays this pickle declares, each shared reference counted "
                f"again, add up to more than {_human(self.used)} (at {what}), but the file holds "
                f"only {_human(self.budget)}; refusing to allocate them. A feature pickle holds "
                f"each array once; this one is corrupt or crafted. " + _TRUST_HINT)

    def byte_string(self, args: tuple, name: str) -> None:
        if self.budget is not None and args and isinstance(args[0], int) \
                and not isinstance(args[0], bool) and args[0] > self.budget:
            raise PickleSizeError(
                f"{self.source}: the pickle asks for {name}({args[0]}) ({_human(args[0])}), but "
                f"the file holds only {_human(self.budget)}; refusing to allocate it. The file is "
                f"corrupt or crafted; re-download or regenerate it.")


def _guarded(obj: Any, module: str, name: str, guard: _SizeGuard) -> Any:
    """Wrap the allowed callables that allocate from declared sizes (see :class:`_SizeGuard`)."""
    if name == "_reconstruct":  # _reconstruct(subtype, shape, dtype): numpy passes shape (0,)
        @functools.wraps(obj)
        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            guard.array(shape, dtype, "numpy's _reconstruct")
            return obj(subtype, shape, dtype)
        return reconstruct
    if name == "_frombuffer":  # _frombuffer(buffer, dtype, shape, order)
        @functools.wraps(obj)
        def frombuffer(buf: Any, dtype: Any, shape: Any, *rest: Any) -> Any:
            guard.array(shape, dtype, "numpy's _frombuffer")
            return obj(buf, dtype, shape, *rest)
        return frombuffer
    if module == "builtins" and name in ("bytes", "bytearray"):  # bytes(n) allocates n bytes
        def make(*args: Any) -> Any:
            guard.byte_string(args, name)
            return obj(*args)
        return make
    return obj


_BUILD = pickle.BUILD[0]


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An unpickler whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS` and whose array
    reconstruction is checked against the file's size before numpy allocates.

    Python's pure-Python unpickler, because the C one does not let BUILD (``ndarray.__setstate__``,
    which allocates ``shape`` before it looks at the data) be intercepted.  It costs nothing here:
    the time goes into reading the array buffers (benchmarks/loading.py, 1.1 GB MMSA-style pickle:
    1.31 s against ``pickle.load``'s 1.37 s).
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: IO[bytes], source: str, budget: Optional[int] = None) -> None:
        # latin1: numpy's documented choice for Python-2 pickles; no effect on Python-3 text.
        super().__init__(file, encoding="latin1")
        self._source = source
        self._guard = _SizeGuard(budget, source)

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        import numpy
        if isinstance(inst, numpy.ndarray) and isinstance(state, tuple) and len(state) in (4, 5):
            shape, dtype = state[-4], state[-3]  # (version,) shape, dtype, is_fortran, data
            self._guard.array(shape, dtype, "an ndarray's state")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
    dispatch[_BUILD] = load_build

    def _after_get(self) -> None:
        import numpy
        top = self.stack[-1] if self.stack else None
        if isinstance(top, numpy.ndarray):
            self._guard.reference(top)

    def load_get(self) -> None:
        pickle._Unpickler.load_get(self)  # type: ignore[attr-defined]
        self._after_get()
    dispatch[pickle.GET[0]] = load_get

    def load_binget(self) -> None:
        pickle._Unpickler.load_binget(self)  # type: ignore[attr-defined]
        self._after_get()
    dispatch[pickle.BINGET[0]] = load_binget

    def load_long_binget(self) -> None:
        pickle._Unpickler.load_long_binget(self)  # type: ignore[attr-defined]
        self._after_get()
    dispatch[pickle.LONG_BINGET[0]] = load_long_binget

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        mod, nm = module, name
        # Python-2 names (__builtin__.set, ...), as pickle's fix_imports maps them.  These module
        # names do not exist in Python 3, so mapping them unconditionally is harmless.
        if (mod, nm) in _compat_pickle.NAME_MAPPING:
            mod, nm = _compat_pickle.NAME_MAPPING[(mod, nm)]
        elif mod in _compat_pickle.IMPORT_MAPPING:
            mod = _compat_pickle.IMPORT_MAPPING[mod]
        obj = _allowed_global(mod, nm)
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle global '{module}.{name}': it is not a numpy "
                f"array, dtype or builtin container, and loading it could run arbitrary code. "
                f"MMSA feature pickles contain only dicts of numpy arrays, lists and strings. "
                + _TRUST_HINT)
        return _guarded(obj, mod, nm, self._guard)


def _remaining_bytes(fileobj: BinaryIO) -> Optional[int]:
    """Bytes from the current position to the end of ``fileobj``; None when it cannot tell.
    (io.UnsupportedOperation is an OSError and a ValueError.)"""
    try:
        pos = fileobj.tell()
        try:
            size = os.fstat(fileobj.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            size = fileobj.seek(0, os.SEEK_END)
            fileobj.seek(pos)
        return max(int(size) - int(pos), 0)
    except (AttributeError, OSError, ValueError):
        return None


def load_pickle_stream(fileobj: BinaryIO, trusted: bool = False, source: str = "<stream>") -> Any:
    """Unpickle one object from a binary file object.

    With ``trusted=False`` (the default) only :data:`ALLOWED_GLOBALS` may be referenced; any other
    global raises :class:`UnsafePickleError` before it is called, and an array or byte string
    larger than the rest of the stream raises :class:`PickleSizeError` before it is allocated
    (streams whose size cannot be told are not size-checked).  ``trusted=True`` uses plain
    :func:`pickle.load` and logs a warning.  A truncated or corrupt stream raises
    :class:`PickleReadError`.  ``source`` names the data in messages.
    """
    try:
        if trusted:
            logger.warning("%s: loading with plain pickle (trust_pickle=True); this runs any code "
                           "the file contains -- use it only for files you trust.", source)
            return pickle.load(fileobj, encoding="latin1")
        return _RestrictedUnpickler(fileobj, source, _remaining_bytes(fileobj)).load()
    except (UnsafePickleError, PickleSizeError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, UnicodeDecodeError) as exc:
        raise PickleReadError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}). The file is truncated, "
            f"corrupt or not a feature pickle; re-download or regenerate it.") from exc


def load_pickle(path: PathLike, trusted: bool = False) -> Any:
    """Read a pickle file safely; see :func:`load_pickle_stream`.

    Raises :class:`FileNotFoundError` (with the path) when the file is missing,
    :class:`UnsafePickleError` for a disallowed global and :class:`PickleReadError` for a corrupt
    file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: feature file not found; check featurePath / custom_feature / MMSA_DATASET_ROOT.")
    with open(p, "rb") as f:
        return load_pickle_stream(f, trusted=trusted, source=str(p))


# --------------------------------------------------------------------------------------------
# content identity
# --------------------------------------------------------------------------------------------
_DIGESTS: dict = {}
#: A file modified this recently (ns) before its hashing is hashed again next time (see file_digest).
DIGEST_RACY_NS = 2_000_000_000
_DIGEST_LOCK = threading.Lock()


def file_digest(path: PathLike) -> str:
    """SHA-256 (hex) of the file's bytes: what identifies a feature file, wherever it lies.

    Computed once per process for each version of a file (same inode, size and mtime); a file
    rewritten with the same bytes (a new mtime) gets the same digest.  A digest is remembered only
    when the file's mtime lies :data:`DIGEST_RACY_NS` before the hashing began: a file's clock
    ticks coarsely (milliseconds), so a rewrite of the same size within the same tick would
    otherwise keep the old digest.  SHA-256 runs at ~570 MB/s on the project's shared 2-core
    machine, ~2 s per GB once per run (benchmarks/loading.py).
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    started_ns = time.time_ns()
    with open(p, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if st.st_mtime_ns < started_ns - DIGEST_RACY_NS:
        with _DIGEST_LOCK:
            _DIGESTS[key] = digest
    return digest


# --------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------
def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with clear errors.

    A checkpoint that needs arbitrary globals raises :class:`UnsafePickleError` naming the file;
    a missing file raises :class:`FileNotFoundError` with the path.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafePickleError(
            f"{p}: refused by torch.load(weights_only=True): the checkpoint references objects "
            f"other than tensors and plain containers ({first}). khar-mmsa checkpoints are "
            f"plain state_dicts; re-save this one with torch.save(model.state_dict(), path), or "
            f"load it yourself with weights_only=False only if you trust the file.") from exc


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class UnsafePathError(OSError):
    """A file we would write is a symbolic link (or not a regular file): refused, untouched."""


def _existing(path: Path) -> Optional[os.stat_result]:
    """``lstat`` of ``path`` (the link itself, not what it points to); None when absent."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_unsafe_target(path: Path, st: Optional[os.stat_result]) -> None:
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}); khar-mmsa does not write "
            f"files through links. Remove the link or point the run at the real path.")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a regular file; refusing to replace it.")
    if not st.st_mode & stat.S_IWUSR:
        raise PermissionError(
            f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); khar-mmsa does not "
            f"overwrite it. Make it writable (chmod u+w) or write elsewhere.")


def new_file_mode(path: PathLike) -> int:
    """The permission bits a file written to ``path`` gets: an existing regular file's own bits,
    else ``0o666 & ~umask`` (0644 under umask 022)."""
    st = _existing(Path(path))
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_UMASK


def check_writable_file(path: PathLike) -> None:
    """Raise now, before any work, if a file could not be written at ``path`` later.

    Refused with :class:`UnsafePathError`: ``path`` is a symbolic link (dangling or not) or not a
    regular file.  :class:`PermissionError`: an existing file without its owner's write bit
    (checked on the mode bits, so also when running as root), or a folder that is not writable.
    A missing folder is fine (it is created when the file is written)."""
    p = Path(path)
    _refuse_unsafe_target(p, _existing(p))
    folder = p.parent if str(p.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir():
        st = os.stat(folder)
        if not (st.st_mode & stat.S_IWUSR and os.access(folder, os.W_OK | os.X_OK)):
            raise PermissionError(f"{p}: its folder {folder} is not writable.")
    else:
        raise UnsafePathError(f"{p}: {folder} is not a folder.")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``'wb'`` or ``'w'`` (text, ``encoding`` defaults to UTF-8).  If the body raises,
    the temporary file is removed and an existing ``path`` is left untouched.  The new file gets
    the old file's permission bits, or the usual ``0o666 & ~umask`` for a new file
    (:func:`new_file_mode`).  A ``path`` that is a symbolic link is refused
    (:class:`UnsafePathError`), and so is a read-only existing file (:class:`PermissionError`),
    before anything is written; the target is checked again just before the rename.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    target = Path(path)
    _refuse_unsafe_target(target, _existing(target))
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    # mkstemp opens with O_CREAT | O_EXCL: it never follows a link planted at the temporary name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        perms = new_file_mode(target)
        os.fchmod(fd, perms)
        if mode == "wb":
            f: IO = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        fd = -1  # owned by f now
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _refuse_unsafe_target(target, _existing(target))  # a link planted while we wrote
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


class _HashingWriter:
    """A write-only file object that passes bytes on and hashes them (SHA-256) on the way."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, path: PathLike) -> str:
    """``torch.save(obj, path)`` atomically: a crash or a failing ``torch.save`` leaves any
    existing checkpoint intact and no partial file behind.  Returns the SHA-256 (hex) of the bytes
    written, hashed as they are written (what :func:`file_digest` of the file gives)."""
    import torch

    with atomic_open(path, "wb") as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
    return writer.sha256.hexdigest()


# --------------------------------------------------------------------------------------------
# appends: whole lines or nothing, never through a link
# --------------------------------------------------------------------------------------------
#: ``O_NOFOLLOW`` where the platform has it: a symbolic link as the file's last component is
#: refused by the kernel (``ELOOP``), never followed.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_no_follow(path: Path, flags: int, what: str) -> int:
    """``os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)``; a link there is :class:`UnsafePathError`
    (the link and its target untouched), a non-regular file too."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o666)
    except OSError as exc:
        st = _existing(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{path} is a symbolic link; khar-mmsa does not {what} a file through a "
                                  f"link. Remove the link or point the run at the real path.") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file; refusing to {what} it.")
    return fd


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short write is continued, a write of 0 bytes
    is an error (``ENOSPC``), never a silent half line."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write of {len(view)} bytes wrote none)")
        view = view[written:]


def append_whole(path: PathLike, data: bytes, own_line: bool = False) -> int:
    """Append ``data`` (whole lines, ending in a newline) to ``path``: all of it, or nothing.

    The file is opened with ``O_APPEND | O_CREAT | O_NOFOLLOW``: a symbolic link there (dangling
    or not) is refused with :class:`UnsafePathError` and left alone, a read-only existing file
    with :class:`PermissionError` (mode bits, so also as root).  The bytes go out in one
    ``os.write`` call, continued after a short write, then ``fsync``.  On any failure
    (``ENOSPC``, ``EIO``, an interrupt) the file is truncated back to its length before the
    append and the error is raised: the file holds the whole lines it held, never a half one.
    ``own_line=True``: when the file does not end with a newline (a partial line someone else
    left), a newline is written first, so that line cannot swallow ours.  Callers that share the
    file with other writers hold a lock around the call (the truncation assumes the end it saw is
    the end it appended to).  New files get :func:`new_file_mode`'s bits.  Returns the file's
    length before the append (what :func:`truncate_back` takes to undo it).
    """
    p = Path(path)
    fd = open_no_follow(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, "append to")  # read: the last byte
    try:
        st = os.fstat(fd)
        if not st.st_mode & stat.S_IWUSR:
            raise PermissionError(
                f"{p} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); khar-mmsa does not append "
                f"to it. Make it writable (chmod u+w) or write elsewhere.")
        start = st.st_size
        if own_line and start > 0 and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
    return start


def truncate_back(path: PathLike, length: int) -> None:
    """Undo an :func:`append_whole` that returned ``length`` (when a second file of the same
    record could not be written): the file is cut back to ``length`` bytes and fsynced."""
    fd = open_no_follow(Path(path), os.O_WRONLY, "truncate")
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


#: How much of a torn last line is quoted in the warning that removes it.
TORN_LINE_QUOTE_CHARS = 200


def repair_torn_last_line(path: PathLike, ours: Any, what: str) -> Optional[bytes]:
    """Cut a partial last line that khar-mmsa's own append left in ``path``; return its bytes.

    A file whose last byte is not a newline ends in a line an append did not finish (a kill or a
    power loss between the write and the disk).  When ``ours(head, tail)`` says the file and that
    line are of the kind we append (``head``: the file's first line, ``tail``: the partial line),
    the file is truncated after its last newline and a warning on the 'MMSA' logger names the
    file and quotes what was removed; otherwise nothing changes (None).  Callers hold the lock
    under which the file is appended.  A link at ``path`` is refused (:class:`UnsafePathError`).
    """
    p = Path(path)
    fd = open_no_follow(p, os.O_RDWR, "repair")
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        cut = size
        chunk = 4096  # read backwards in pages until the last newline
        while cut > 0:
            lo = max(cut - chunk, 0)
            block = os.pread(fd, cut - lo, lo)
            nl = block.rfind(b"\n")
            if nl >= 0:
                cut = lo + nl + 1
                break
            cut = lo
        tail = os.pread(fd, size - cut, cut)
        first = os.pread(fd, min(size, 65536), 0).split(b"\n", 1)[0] if cut > 0 else b""
        if not ours(first, tail):
            return None
        os.ftruncate(fd, cut)
        os.fsync(fd)
    finally:
        os.close(fd)
    quoted = tail.decode("utf-8", "replace")
    if len(quoted) > TORN_LINE_QUOTE_CHARS:
        quoted = quoted[:TORN_LINE_QUOTE_CHARS] + "..."
    logger.warning(f"{p}: its last line was cut off while it was appended (a kill or a full disk); removed "
                   f"that partial {what} ({size - cut} bytes: {quoted!r}); the lines before it are unchanged.")
    return tail


class NoFollowFileHandler(logging.FileHandler):
    """``logging.FileHandler`` in append mode whose file is opened with ``O_NOFOLLOW``: a link at
    the log's path is refused (:class:`UnsafePathError`) instead of appending to what it names."""

    def __init__(self, filename: PathLike, encoding: Optional[str] = "utf-8") -> None:
        super().__init__(filename, mode="a", encoding=encoding, delay=False)

    def _open(self) -> IO[str]:  # noqa: D401 - logging API
        fd = open_no_follow(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT, "log to")
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
