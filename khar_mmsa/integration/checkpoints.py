"""What the runner raises when training wrote no checkpoint of its own.

The files of one seed's training (best checkpoint, resume state, config) are
:class:`khar_mmsa.training.checkpoints.SeedCheckpoint`'s, re-exported here.
"""
from khar_mmsa.training.checkpoints import SeedCheckpoint  # noqa: F401  (re-exported)


class MissingCheckpointError(RuntimeError):
    """Training finished without writing the checkpoint that is about to be tested."""
