"""One seeding function and the RNG snapshot a resume state carries."""
from __future__ import annotations

import random
from typing import Mapping

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed random, numpy and torch (the CPU and every GPU) with ``transformers.set_seed`` and make
    cuDNN deterministic, as MMSA's ``setup_seed`` does for every seed of ``MMSA_run``: the one
    seeding function of every run, tuning candidate and pretraining stage.  numpy takes 32 bits, so
    the seed is taken modulo 2**32 for all three."""
    from transformers import set_seed
    set_seed(int(seed) % 2**32)
    # set_seed leaves cuDNN alone (its deterministic=True switches on torch.use_deterministic_algorithms,
    # which refuses ops without a deterministic kernel); MMSA's setup_seed sets these two, so do we.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a tensor)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
