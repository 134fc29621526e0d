"""MulT, Self-MM, MISA and TFR-Net step less than once per epoch on a small training set.

They step their optimizer every ``update_epochs`` batches and drop the remainder (breakage 3):
when ``update_epochs`` exceeds the training batches per epoch a warning says so; the value is
not changed behind the user's back.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

logger = logging.getLogger("MMSA")


def warn_update_epochs(args: Mapping[str, Any], loaders: Mapping[str, Any]) -> None:
    """MulT/Self-MM/MISA/TFR-Net step every ``update_epochs`` batches and drop the remainder."""
    every = args.get("update_epochs")
    batches = len(loaders["train"])
    if every and int(every) > batches:
        logger.warning(
            f"update_epochs={every} but the training set has only {batches} batch(es) per epoch: "
            f"{args['model_name']} steps its optimizer only after {every} batches, i.e. less than "
            f"once per epoch, so it may stop early before it ever trains. Pass "
            f"config={{'update_epochs': {max(batches, 1)}}} or a smaller batch_size.")
