"""Length-bucketed batches for KHaR's trainer (config ``length_bucketing``).

Each batch is cut to its longest real sequence (:func:`khar_mmsa.model.khar.trim_to_longest`), so
a batch of similar-length clips costs what its clips need, while a random batch costs what its
longest clip needs, times the batch size (attention: the square of that). Padding never changes an
output, so bucketing changes which clips share a batch, never what one clip computes.

Per epoch: a seeded random permutation, cut into pools of ``pool_batches`` batches; each pool sorted
by cost (sum over modalities of length squared); the pool cut into batches; all batches shuffled.
Every sample appears exactly once per epoch, and the order depends only on (seed, epoch).
"""
from __future__ import annotations

import logging
from typing import Iterator, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(f"MMSA.{__name__}")


def sample_lengths(dataset: Dataset) -> np.ndarray:
    """(N, 3) real lengths (text tokens, audio frames, vision frames) of every sample.

    MMSA's ``MMDataset`` keeps them as arrays (``text`` = BERT ids/mask/segments, ``audio_lengths``,
    ``vision_lengths``); any other dataset is read once, sample by sample. Aligned data (no lengths)
    counts every frame as real."""
    n = len(dataset)
    if all(hasattr(dataset, k) for k in ("text", "audio_lengths", "vision_lengths")):
        text = np.asarray(dataset.text)
        text_len = text[:, 1].sum(-1) if text.ndim == 3 else np.full(n, text.shape[1])
        return np.stack([text_len, np.asarray(dataset.audio_lengths), np.asarray(dataset.vision_lengths)], 1)
    rows = []
    for i in range(n):
        s = dataset[i]
        text = torch.as_tensor(s["text"])
        rows.append([float(text[1].sum()) if text.dim() == 2 and text.shape[0] == 3 else text.shape[0],
                     float(s.get("audio_lengths", torch.as_tensor(s["audio"]).shape[0])),
                     float(s.get("vision_lengths", torch.as_tensor(s["vision"]).shape[0]))])
    return np.asarray(rows, dtype=np.float64)


class LengthBucketSampler(Sampler[List[int]]):
    """Batches of indices with similar lengths; ``set_epoch`` picks the epoch's order."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, pool_batches: int) -> None:
        lengths = np.asarray(lengths, dtype=np.float64).reshape(len(lengths), -1)
        self.cost = (lengths ** 2).sum(1)   # attention work grows with the square of each length
        self.batch_size = batch_size
        self.seed = seed
        self.pool = max(1, pool_batches) * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.cost) // self.batch_size)

    def batches(self, epoch: int) -> List[List[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.cost))
        out: List[List[int]] = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(self.cost[pool], kind="stable")]
            out.extend(pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size))
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches(self.epoch))


def bucketed_loader(loader: DataLoader, batch_size: int, seed: int, pool_batches: int) -> DataLoader:
    """The same dataset, workers and collate function as ``loader``, with length-bucketed batches."""
    lengths = sample_lengths(loader.dataset)
    sampler = LengthBucketSampler(lengths, batch_size, seed, pool_batches)
    logger.info(f"Length bucketing: {len(sampler)} batches of up to {batch_size} per epoch, sorted within "
                f"pools of {pool_batches} batches")
    return DataLoader(loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def padding_overhead(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> float:
    """Attention work computed for a list of batches (each cut to its longest clip) over the work
    its clips need (sum of length^2 per modality): 1.0 = no padding computed."""
    lengths = np.asarray(lengths, dtype=np.float64)
    real = computed = 0.0
    for batch in batches:
        ls = lengths[list(batch)]
        real += (ls ** 2).sum()
        computed += len(batch) * (ls.max(0) ** 2).sum()
    return computed / real if real else 1.0
