"""The audio and vision frames of the planted datasets: sustained, step and burst components along
three orthonormal directions, under Gaussian frame noise, zero after each clip's length (the
*Audio and vision* section of :mod:`khar_mmsa.data.planted`'s docstring).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

# ---- signal design constants of the frames (units of R, the label half range) ------------------
COMPONENT_HALF_WIDTH = 0.1 * math.sqrt(3.0)  # uniform(-w, w) has std w/sqrt(3) = 0.1 R
STEP_LEVELS = 7                     # quantised levels -K..K of the step component (K = 3)
STEP_HALF = (STEP_LEVELS - 1) // 2  # K
STEP_UNIT = 0.05                    # level k contributes 0.05 R * k: std 0.05 R * 2 = 0.1 R
BURST_FRAMES = 3                    # frames carrying the transient burst ("a few frames")
BURST_GAIN = 4.0                    # burst amplitude in units of the frame noise std
SUSTAINED_GAIN = 1.0                # sustained / step amplitude in units of the frame noise std
FRAME_NOISE = 1.0                   # std of the Gaussian frame noise on valid frames
MIN_LENGTH_FRACTION = 0.5           # lengths uniform in [ceil(0.5 T), T] (at least 1)
# lengths='long_tailed': one clip duration per sample, shared by audio and vision, as a fraction of
# the padded length: lognormal, fitted to the word counts of the 2195 real CMU-MOSI transcripts
# (label.csv; clip duration taken proportional to words): median 10 of 114 words, sigma of log 0.62
LONG_TAIL_MEDIAN_FRACTION = 0.0877
LONG_TAIL_LOG_SIGMA = 0.624


# ---- audio / vision -----------------------------------------------------------------------------
def directions(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Three orthonormal directions (3, dim) for the sustained, step and burst components."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, 3)))
    return q.T.astype(np.float32)


def uniform_lengths(n: int, t_max: int, rng: np.random.Generator) -> np.ndarray:
    low = max(1, math.ceil(MIN_LENGTH_FRACTION * t_max))
    return rng.integers(low, t_max + 1, size=n).astype(np.int64)


def long_tailed_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) clip durations as fractions of the padded length, in (0, 1]."""
    return np.minimum(rng.lognormal(math.log(LONG_TAIL_MEDIAN_FRACTION), LONG_TAIL_LOG_SIGMA, size=n), 1.0)


def frames(n: int, t_max: int, dirs: np.ndarray, r: float, rng: np.random.Generator,
            fractions: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """Frames (n, T, d), lengths (n,), and the latent parts (sustained, step, burst) in label units.
    ``fractions``: clip durations (fractions of T) instead of uniform lengths."""
    w = COMPONENT_HALF_WIDTH * r
    sustained = rng.uniform(-w, w, size=n)
    levels = rng.integers(-STEP_HALF, STEP_HALF + 1, size=n)
    step = levels * STEP_UNIT * r
    burst = rng.uniform(-w, w, size=n)
    lengths = uniform_lengths(n, t_max, rng)  # drawn either way: the rest of the stream stays the same
    if fractions is not None:
        lengths = np.clip(np.ceil(fractions * t_max), 1, t_max).astype(np.int64)
    dim = dirs.shape[1]
    feats = rng.standard_normal((n, t_max, dim), dtype=np.float32) * np.float32(FRAME_NOISE)
    level = (SUSTAINED_GAIN * (sustained / w)[:, None] * dirs[0][None]
             + SUSTAINED_GAIN * (levels / STEP_HALF)[:, None] * dirs[1][None]).astype(np.float32)
    feats += level[:, None, :]
    # burst positions: the BURST_FRAMES smallest random keys among valid frames
    valid = np.arange(t_max)[None, :] < lengths[:, None]
    keys = np.where(valid, rng.random((n, t_max)), np.inf)
    k = min(BURST_FRAMES, t_max)
    pos = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < t_max else np.tile(np.arange(t_max), (n, 1))
    rows = np.repeat(np.arange(n), k)
    cols = pos.reshape(-1)
    ok = cols < np.repeat(lengths, k)  # samples shorter than BURST_FRAMES burst on fewer frames
    amp = (BURST_GAIN * burst / w).astype(np.float32)
    feats[rows[ok], cols[ok]] += amp[rows[ok], None] * dirs[2][None]
    feats[~valid] = 0.0
    return feats, lengths, {"sustained": sustained, "step": step, "burst": burst,
                            "step_level": levels}
