"""The command line's one-line errors: which errors a user causes, their message in command-line
spelling, and the line written to stderr and the run's log."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

logger = logging.getLogger(f"MMSA.{__name__}")

#: Errors a user causes and can fix, one line instead of a traceback: {defining module: class names}.
#: Read from ``sys.modules`` only (:func:`loaded_classes`): an error whose module was never imported
#: was never raised, so telling them imports nothing (``--help`` stays light).
USER_ERRORS: Dict[str, Tuple[str, ...]] = {
    "builtins": ("FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError"),
    "khar_mmsa.config.errors": ("ConfigError",),
    "khar_mmsa.model.text_encoders": ("TextEncoderNotFoundError",),
    "khar_mmsa.data.validation": ("FeatureValidationError",),
    "khar_mmsa.io.pickle_budget": ("PickleReadError", "UnsafePickleError"),
    "khar_mmsa.io.names": ("UnsafeNameError",),
    "khar_mmsa.io.state_files": ("StateFileError",),
    "khar_mmsa.io.files": ("UnsafePathError",),
    "khar_mmsa.runs.features": ("FeatureFileNotFoundError",),
    "khar_mmsa.runs.output_folders": ("OutputFolderError",),
    "khar_mmsa.registration.configs": ("ConfigOverlayMissingError", "ConfigFileError"),
    "khar_mmsa.mmsa_conventions": ("SeedError",),
    "khar_mmsa.runs.results_files": ("ResultsFileError",),
    "khar_mmsa.experiments.sweep.driver_lock": ("SweepLocked",),
    "khar_mmsa.experiments.sweep.driver": ("SweepFailed",),
    "khar_mmsa.experiments.sweep.executors": ("RayUnavailable",),
    "khar_mmsa.tuning.ray_tune": ("TuneSetupError",),
}
#: The settings errors whose message :func:`cli_message` respells (a subset of :data:`USER_ERRORS`).
SETTINGS_ERRORS: Dict[str, Tuple[str, ...]] = {
    "khar_mmsa.config.errors": ("ConfigError",), "khar_mmsa.model.text_encoders": ("TextEncoderNotFoundError",),
    "khar_mmsa.data.validation": ("FeatureValidationError",)}


def loaded_classes(table: Dict[str, Tuple[str, ...]]) -> Tuple[type, ...]:
    """The classes of ``table`` whose modules are imported (the others cannot have been raised)."""
    return tuple(getattr(sys.modules[module], name) for module, names in table.items()
                 if module in sys.modules for name in names)
# Python spelling of a config value in messages (pretrained='x') -> the command line's (--set pretrained=x).
_PY_SETTING = re.compile(r"\b([a-z][a-z0-9_]*)=(['\"])([^'\"]*)\2")
ERROR_LOG: Dict[str, Optional[Path]] = {"file": None}  # the run's log file, once the command knows it


def user_error(exc: BaseException) -> Optional[BaseException]:
    """The first error in ``exc``'s chain (``__cause__`` / ``__context__``) that a user causes."""
    seen = set()
    todo: Optional[BaseException] = exc
    while todo is not None and id(todo) not in seen:
        seen.add(id(todo))
        if isinstance(todo, loaded_classes(USER_ERRORS)):
            return todo
        todo = todo.__cause__ or todo.__context__
    return None


def cli_message(exc: BaseException) -> str:
    """``exc``'s message on one line in command-line spelling: a setting written as Python
    (``pretrained='all-MiniLM-L6-v2'``) becomes ``--set pretrained=all-MiniLM-L6-v2``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, loaded_classes(SETTINGS_ERRORS)):
        # the setting a message is about stays a name (at the start); advice to pass one gets --set
        text = _PY_SETTING.sub(lambda m: f"{m.group(1)}={m.group(3)}" if m.start() == 0
                               else f"--set {m.group(1)}={m.group(3)}", text)
        text = text.replace("khar_mmsa.model.text_encoders.minilm_path() = ", "")
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


def report(message: str, prog: str) -> None:
    """The error line on stderr, and in the 'MMSA' log's files: the run's log file when the
    command knows it, and any file handler already on the logger (console handlers skip it)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    handler: Optional[logging.Handler] = None
    path = ERROR_LOG["file"]
    if path is not None and Path(path).parent.is_dir():
        from khar_mmsa.io.appends import NoFollowFileHandler
        try:
            handler = NoFollowFileHandler(path)  # a link at the log's place is not followed
        except OSError:
            handler = None
    mmsa_logger = logging.getLogger("MMSA")  # where the runs' handlers are (each module logs to a child)
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
        mmsa_logger.addHandler(handler)
    files = [h for h in mmsa_logger.handlers if isinstance(h, logging.FileHandler)]
    try:
        if files:
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
            for h in files:
                h.handle(record)
    finally:
        if handler is not None:
            mmsa_logger.removeHandler(handler)
            handler.close()
