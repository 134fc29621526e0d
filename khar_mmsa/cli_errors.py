"""The command line's one-line errors: which errors a user causes, their message in command-line
spelling, and the line written to stderr and the run's log."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Dict, Optional

logger = logging.getLogger("MMSA")

#: Errors a user causes and can fix (by class name anywhere in the MRO, so nothing is imported to
#: tell them): one line instead of a traceback.
USER_ERRORS = ("TextEncoderNotFoundError", "ConfigError", "FeatureValidationError", "PickleReadError",
               "UnsafePickleError", "FeatureFileNotFoundError", "OutputFolderError", "ConfigOverlayMissingError",
               "SweepLocked", "SweepFailed", "RayUnavailable", "TuneSetupError", "SeedError", "ResultsFileError",
               "ImportOrderError", "FileNotFoundError", "ConfigFileError", "UnsafeNameError", "StateFileError",
               "UnsafePathError",
               "PermissionError", "IsADirectoryError", "NotADirectoryError")
# Python spelling of a config value in messages (pretrained='x') -> the command line's (--set pretrained=x).
_PY_SETTING = re.compile(r"\b([a-z][a-z0-9_]*)=(['\"])([^'\"]*)\2")
ERROR_LOG: Dict[str, Optional[Path]] = {"file": None}  # the run's log file, once the command knows it


def user_error(exc: BaseException) -> Optional[BaseException]:
    """The first error in ``exc``'s chain (``__cause__`` / ``__context__``) that a user causes."""
    seen = set()
    todo: Optional[BaseException] = exc
    while todo is not None and id(todo) not in seen:
        seen.add(id(todo))
        if any(cls.__name__ in USER_ERRORS for cls in type(todo).__mro__):
            return todo
        todo = todo.__cause__ or todo.__context__
    return None


def cli_message(exc: BaseException) -> str:
    """``exc``'s message on one line in command-line spelling: a setting written as Python
    (``pretrained='all-MiniLM-L6-v2'``) becomes ``--set pretrained=all-MiniLM-L6-v2``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if any(cls.__name__ in ("ConfigError", "TextEncoderNotFoundError", "FeatureValidationError")
           for cls in type(exc).__mro__):
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
        from khar_mmsa.io.files import NoFollowFileHandler
        try:
            handler = NoFollowFileHandler(path)  # a link at the log's place is not followed
        except OSError:
            handler = None
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    try:
        if files:
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
            for h in files:
                h.handle(record)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
