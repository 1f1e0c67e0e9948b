"""Several manifest datasets interleaved by a seeded weighted draw, keeping sharding and exact resume."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..partition import epoch_rng
from .stream import ManifestIterableDataset, ResumableStream

# Keeps the mixture's draws apart from the shuffles its sources make with the same seed.
_MIXTURE_KEY = 0x4D4958


class MixtureDataset(ResumableStream):
    """Several manifest datasets interleaved by a seeded weighted draw, with exact resume.

    Each DataLoader worker reads its own share of every source (the sources' usual split over ranks
    and workers) and, sample by sample, takes the next sample of the source a seeded draw picks:
    ``P(source k) = weights[k] / sum(weights)`` over the sources that hold samples for that worker.
    A mixture epoch has as many samples as its sources hold together (on that rank and worker).
    Without weights the draw is a shuffle of exactly each source's count, so every sample comes once
    per epoch (a shuffled concatenation). With weights, a source drawn more often than it has samples
    starts its next own epoch (a new shuffle), and one drawn less often carries on where it stopped
    in the next mixture epoch.

    Everything is a function of (seed, epoch, rank, worker), so the position is the loader's sample
    count alone: `ManifestDataLoader` saves and restores it as for one manifest, and a resumed
    mixture yields exactly the samples the interrupted one had not delivered yet. Each sample gains
    ``"source"``: the index of the dataset it came from.
    """

    def __init__(
        self,
        datasets: Sequence[ManifestIterableDataset],
        weights: Sequence[float] | None = None,
        seed: int = 0,
    ):
        datasets = list(datasets)
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        places = {(d.rank, d.world_size) for d in datasets}
        if len(places) != 1:
            raise ValueError(f"the mixed datasets disagree on (rank, world_size): {sorted(places)}")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(datasets):
                raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets; give one per dataset")
            bad = [w for w in weights if not (np.isfinite(w) and w > 0)]
            if bad:
                raise ValueError(f"mixture weights must be finite and > 0, got {bad}")
        super().__init__(seed, *places.pop())
        self.datasets = datasets
        self.weights = weights
        self._choices: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def sources(self) -> list[str]:
        return [d.manifest.url for d in self.datasets]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sources": self.sources, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("sources", self.sources), ("weights", self.weights)):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"cannot resume: the position was saved for a mixture with {key}={state[key]}, "
                    f"this one has {mine}"
                )
        super().load_state_dict(state)

    def num_samples(self) -> int:
        return sum(d.num_samples() for d in self.datasets)

    # ----- planning ---------------------------------------------------------------------------
    def _source_counts(self, worker: int, num_workers: int, epoch: int) -> np.ndarray:
        return np.array([d.worker_counts(num_workers, epoch)[worker] for d in self.datasets], np.int64)

    def worker_counts(self, num_workers: int, epoch: int) -> list[int]:
        return [int(self._source_counts(w, num_workers, epoch).sum()) for w in range(max(1, num_workers))]

    def choices(self, worker: int, num_workers: int, epoch: int) -> np.ndarray:
        """The source index of every sample `worker` yields in mixture epoch `epoch`."""
        key = (worker, num_workers, epoch)
        if key not in self._choices:
            counts = self._source_counts(worker, num_workers, epoch)
            rng = epoch_rng(self.seed, epoch, _MIXTURE_KEY, self.rank, worker)
            if self.weights is None:
                # Weights by size: a shuffle of exactly each source's count, so every sample comes once.
                self._choices[key] = rng.permutation(np.repeat(np.arange(len(counts)), counts))
            else:
                p = np.where(counts > 0, np.asarray(self.weights), 0.0)
                n = int(counts.sum())
                self._choices[key] = (
                    rng.choice(len(counts), size=n, p=p / p.sum()) if n else np.zeros(0, np.int64)
                )
        return self._choices[key]

    def _locate(self, k: int, worker: int, num_workers: int, taken: int) -> tuple[int, int]:
        """Source `k`'s (own epoch, samples to skip) after `taken` of its samples went to `worker`."""
        epoch, empty = 0, 0
        while True:
            n = self.datasets[k].worker_counts(num_workers, epoch)[worker]
            if taken < n:
                return epoch, taken
            taken -= n
            epoch += 1
            empty = empty + 1 if n == 0 else 0
            if empty > 1000:
                raise ValueError(
                    f"{self.sources[k]}: no sample for DataLoader worker {worker} in 1000 epochs"
                )

    def _cycle(self, k: int, worker: int, num_workers: int, taken: int):
        """Source `k`'s samples for `worker`, epoch after epoch, from the `taken`-th on."""
        epoch, skip = self._locate(k, worker, num_workers, taken)
        while True:
            for sample in self.datasets[k].worker_stream(worker, num_workers, epoch, skip):
                yield {**sample, "source": k}
            epoch, skip = epoch + 1, 0

    def _generate(self, worker: int, num_workers: int, epoch: int, resume: dict | None):
        point = self.resume_point(worker, num_workers, epoch, resume)
        if point is None:
            return
        worker, skip = point
        K = len(self.datasets)
        taken = np.zeros(K, np.int64)  # samples of each source this worker used before this epoch
        for e in range(epoch):
            taken += np.bincount(self.choices(worker, num_workers, e), minlength=K)
        seq = self.choices(worker, num_workers, epoch)
        taken += np.bincount(seq[:skip], minlength=K)
        streams: dict[int, Iterator] = {}
        for k in seq[skip:].tolist():
            if k not in streams:
                streams[k] = self._cycle(k, worker, num_workers, int(taken[k]))
            yield next(streams[k])
