"""The files of one seed's training at ``model_save_path``, one owner of their life cycle.

The best checkpoint (``khar-<dataset>.pth``), the trainer's resume state (``.pth.resume``), the
config the checkpoint was trained with (``.pth.json``, read by ``MMSA_test``) and temporary files
a killed atomic write left (``.khar-<dataset>.pth.*.tmp``).  :meth:`SeedCheckpoint.resume` keeps
them only when the resume state was written by this very seed's run (the trainer's fingerprint:
config, seed, data) and its best checkpoint is byte for byte the one that run wrote (the resume
state records its SHA-256); otherwise it removes them with one log line saying why, so a
checkpoint left by an earlier run, another seed's swapped in, or a damaged one is never tested as
this run's model.
"""
from __future__ import annotations

import glob
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from khar_mmsa.io.files import atomic_torch_save, atomic_write_text, file_digest, safe_torch_load
from khar_mmsa.io.state_files import WRITTEN_BY, set_aside

logger = logging.getLogger(f"MMSA.{__name__}")


class SeedCheckpoint:
    """The files of one seed's training at ``model_save_path`` (see the module docstring)."""

    def __init__(self, model_save_path: Any) -> None:
        self.path = Path(model_save_path)
        self.resume_path = self.path.with_name(self.path.name + ".resume")
        self.config_path = self.path.with_name(self.path.name + ".json")
        #: SHA-256 of the best checkpoint this object wrote (or a resume state vouched for)
        self.best_digest: Optional[str] = None

    @property
    def files(self) -> tuple:
        return self.path, self.resume_path, self.config_path

    def remove_stale(self, reason: str) -> None:
        """Remove the checkpoint, resume state, config and temporary leftovers; log once."""
        removed = [p.name for p in self.files if p.exists()]
        for p in self.files:
            p.unlink(missing_ok=True)
        self.remove_temporary_files()
        if removed:
            logger.info(f"Removed {', '.join(removed)} in {self.path.parent}: {reason}.")

    def remove_temporary_files(self) -> None:
        """Temporary files of an atomic write that was killed (``.<name>.*.tmp``)."""
        for target in self.files:
            pattern = f".{glob.escape(target.name)}.*.tmp"
            for tmp in target.parent.glob(pattern):
                tmp.unlink(missing_ok=True)

    def resume(self, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The saved resume state if this seed's own run wrote it, else None (files removed).

        ``fingerprint`` is the trainer's hash of config, seed and data.  The state is kept when
        the fingerprints match and the checkpoint there (if it names a best epoch, or one is
        there at all) has the SHA-256 the state recorded when that checkpoint was written.
        """
        if not self.resume_path.is_file():
            self.remove_stale("left by an earlier run or seed, so that only this seed's "
                              "training can produce the model that is tested")
            return None
        try:
            saved = safe_torch_load(self.resume_path)
            state = saved["state"]
        except Exception as exc:  # unreadable or of another format: kept aside, start over
            set_aside(self.resume_path, f"the resume state cannot be read ({type(exc).__name__}: {exc})")
            reason = "it could not be read"
        else:
            best_digest = saved.get("best_sha256")
            if saved.get("fingerprint") != fingerprint:
                reason = "it was written by a run with another config, seed or data"
            elif state.get("best_epoch", 0) > 0 and not self.path.is_file():
                reason = f"its best checkpoint {self.path.name} is gone"
            elif (state.get("best_epoch", 0) > 0 or self.path.exists()) and \
                    (best_digest is None or not self._is_the_best_written(best_digest)):
                reason = (f"its best checkpoint {self.path.name} is not the file this seed's run wrote "
                          f"(damaged or replaced: its SHA-256 differs from the one recorded)")
            else:
                self.remove_temporary_files()
                self.best_digest = best_digest
                return saved
        self.remove_stale(f"resume state {self.resume_path.name} ignored because {reason}; this "
                          f"seed trains from the start")
        return None

    def _is_the_best_written(self, digest: str) -> bool:
        """Whether the best checkpoint is byte for byte the one this seed's run wrote (SHA-256)."""
        try:
            return self.path.is_file() and not self.path.is_symlink() and file_digest(self.path) == digest
        except OSError:
            return False

    def save_best(self, state_dict: Mapping[str, Any]) -> None:
        """Write the best checkpoint and remember its SHA-256 (saved with the resume state)."""
        self.best_digest = atomic_torch_save(dict(state_dict), self.path)

    def save_resume(self, payload: Mapping[str, Any]) -> None:
        """The resume state, marked as ours (``written_by`` first) and naming the SHA-256 of the
        best checkpoint it goes with: a resume keeps only that very file."""
        atomic_torch_save({"written_by": f"{WRITTEN_BY} resume state", **dict(payload),
                           "best_sha256": self.best_digest}, self.resume_path)

    def save_config(self, config: Mapping[str, Any]) -> None:
        """The config the checkpoint is trained with, as JSON (``MMSA_test`` rebuilds from it)."""
        atomic_write_text(self.config_path, json.dumps(dict(config), indent=1, sort_keys=True,
                                                       default=str))

    def finish_training(self) -> None:
        """Training of this seed is over: its resume state is no longer needed."""
        self.resume_path.unlink(missing_ok=True)


class MissingCheckpointError(RuntimeError):
    """Training finished without writing the checkpoint that is about to be tested."""
