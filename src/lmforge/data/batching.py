"""Batches: length-grouped batch order (deterministic per seed and epoch) and dynamic padding.

The batch order of an epoch is a pure function of (seed, epoch), so a resumed run can jump
straight to batch k of epoch e without replaying the data.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  group_by_length: bool = True, drop_last: bool = False, mega: int = 50) -> list[list[int]]:
    """Indices of each batch for one epoch.

    Length grouping (as in HF's LengthGroupedSampler, simplified): shuffle, cut into
    "mega-batches" of ``mega * batch_size`` examples, sort each by length, cut into batches,
    then shuffle the batch order so long and short batches are interleaved.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length and shuffle:
        lens = np.asarray(lengths)
        size = mega * batch_size
        chunks = [order[i:i + size] for i in range(0, n, size)]
        order = np.concatenate([c[np.argsort(-lens[c], kind="stable")] for c in chunks]) if chunks else order
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if group_by_length and shuffle and len(batches) > 1:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation: sorted by length (least padding), fixed order."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's part of each *global* batch: the batch cut into `world` contiguous slices, slice `rank`.

    `epoch_batches` is called with the global batch size (per-device size x processes), so the batch order
    (length grouping included) is a function of the data, the seed and the global batch size only: N
    processes together see exactly the global batches that one process sees. A last batch with fewer
    examples than processes is dropped (every process must step together)."""
    if world == 1:
        return batches
    out = []
    for batch in batches:
        if len(batch) < world:
            continue
        out.append([int(i) for i in np.array_split(np.asarray(batch), world)[rank]])
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, multiple_of: Optional[int] = None,
                  side: str = "right", dtype=torch.long) -> torch.Tensor:
    """Pad to the longest sequence in the batch (never to a global maximum)."""
    longest = max(len(s) for s in seqs)
    if multiple_of:
        longest = -(-longest // multiple_of) * multiple_of
    out = torch.full((len(seqs), longest), pad_id, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            continue
        t = torch.as_tensor(s, dtype=dtype)
        if side == "right":
            out[i, : len(s)] = t
        else:
            out[i, longest - len(s):] = t
    return out
