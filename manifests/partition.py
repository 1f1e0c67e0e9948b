"""Who reads what, in which order: row-group units split over ranks and DataLoader workers.

Pure functions of (unit sizes, seed, epoch, rank, world_size, worker, num_workers), so every process
computes the same plan without talking to the others:

1. the epoch's unit order: a permutation seeded by (seed, epoch) (identity without shuffling);
2. ranks: walking that order, each unit goes to the rank with the fewest rows so far (ties to the
   lowest rank), so ranks get nearly equal sample counts and together hold every unit exactly once;
3. workers: the same greedy split of the rank's units over its DataLoader workers.

Exact resume: a `torch.utils.data.DataLoader` over an IterableDataset with N workers yields whole
batches round-robin from worker 0, 1, ..., skipping workers that have run out (in-order mode, the
default). `worker_consumption` replays that interleaving to find how many samples each worker had
delivered when the trainer had seen `samples_seen`, which is what each worker skips on resume.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def epoch_rng(seed: int, epoch: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *(int(k) for k in keys)])


def epoch_order(num_units: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_units))
    return [int(i) for i in epoch_rng(seed, epoch).permutation(num_units)]


def balanced_split(items: Sequence[int], weights: Sequence[int], parts: int) -> list[list[int]]:
    """Split `items` (in order) into `parts` lists: each item goes to the lightest part so far.

    `weights[item]` is the item's size. Every item lands in exactly one part; each part keeps the
    order the items came in.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    heap = [(0, p) for p in range(parts)]
    out: list[list[int]] = [[] for _ in range(parts)]
    for item in items:
        load, p = heapq.heappop(heap)
        out[p].append(item)
        heapq.heappush(heap, (load + int(weights[item]), p))
    return out


def rank_units(
    sizes: Sequence[int], seed: int, epoch: int, shuffle: bool, rank: int, world_size: int
) -> list[int]:
    """Unit indices of `rank` this epoch, in reading order."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return balanced_split(epoch_order(len(sizes), seed, epoch, shuffle), sizes, world_size)[rank]


def worker_units(sizes: Sequence[int], units: Sequence[int], num_workers: int) -> list[list[int]]:
    """Split a rank's units over its DataLoader workers (list per worker, reading order kept)."""
    return balanced_split(list(units), sizes, num_workers)


def windows(units: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive groups of `size` units whose rows are shuffled together."""
    size = max(1, int(size))
    return [list(units[i : i + size]) for i in range(0, len(units), size)]


def worker_consumption(
    counts: Sequence[int], batch_size: int, samples_seen: int, drop_last: bool = False
) -> tuple[list[int], list[int]]:
    """Samples each worker had produced when an in-order DataLoader had yielded `samples_seen` samples.

    `counts[w]` is worker w's number of samples this epoch. Batches are formed inside each worker
    (`batch_size`, the last one short unless `drop_last`) and taken round-robin over the workers
    that still have one. Returns (taken, next_order): the samples taken from each worker, and the
    workers that still have batches in the order the loader would have asked them next. Raises
    ValueError when `samples_seen` does not end on a batch boundary or exceeds the epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    counts = [int(c) for c in counts]
    usable = [(c // batch_size) * batch_size if drop_last else c for c in counts]
    taken = [0] * len(counts)
    remaining = int(samples_seen)
    if remaining > sum(usable):
        raise ValueError(
            f"samples_seen={samples_seen} exceeds the {sum(usable)} samples of this epoch on this rank"
        )
    last = len(counts) - 1
    while remaining > 0:
        for w in range(len(counts)):
            if taken[w] >= usable[w]:
                continue
            size = min(batch_size, usable[w] - taken[w])
            if size > remaining:
                raise ValueError(
                    f"samples_seen={samples_seen} is not on a batch boundary (batch_size={batch_size}, "
                    f"{len(counts)} workers); was the loader's batch_size or num_workers different?"
                )
            taken[w] += size
            remaining -= size
            last = w
            if remaining == 0:
                break
    n = len(counts)
    cycle = [(last + 1 + i) % n for i in range(n)]
    return taken, [w for w in cycle if taken[w] < usable[w]]


def resume_streams(
    counts: Sequence[int], batch_size: int, samples_seen: int, drop_last: bool = False
) -> list[tuple[int, int] | None]:
    """For each worker of the resumed loader: (original worker whose stream it continues, samples to
    skip in that stream), or None for an idle worker.

    A fresh DataLoader asks worker 0 first, while the interrupted one would have asked the worker
    after the last one it used. Handing the unfinished streams to workers 0, 1, ... in the order
    the interrupted loader would have visited them makes the resumed sequence identical.
    """
    taken, order = worker_consumption(counts, batch_size, samples_seen, drop_last)
    out: list[tuple[int, int] | None] = [(w, taken[w]) for w in order]
    return out + [None] * (len(counts) - len(out))


def loader_order(worker_streams: Sequence[Sequence], batch_size: int, drop_last: bool = False) -> list:
    """The sample sequence an in-order DataLoader yields from per-worker streams (for tests and docs)."""
    batches = []
    for stream in worker_streams:
        stream = list(stream)
        end = (len(stream) // batch_size) * batch_size if drop_last else len(stream)
        batches.append([stream[i : min(i + batch_size, end)] for i in range(0, end, batch_size)])
    out, k = [], 0
    while any(k < len(b) for b in batches):
        for b in batches:
            if k < len(b):
                out.extend(b[k])
        k += 1
    return out
