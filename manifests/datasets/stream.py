"""The streaming core of the manifest datasets: rank and worker sharding, epochs, exact resume.

`ManifestIterableDataset` streams the row groups of one manifest table; `ManifestDataLoader` counts
the samples it delivered so a restart resumes exactly (see the package docstring).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import RowDecodeError
from ..partition import epoch_rng, rank_units, resume_streams, windows, worker_units
from ..reader import Manifest, RowGroupUnit, build_filter, open_manifest
from ..storage import url_for

logger = logging.getLogger(__name__)


class EmptySelectionError(ValueError):
    """No row of the table passes the dataset's filters (a split the manifest does not have, say)."""


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            d_rank, d_world = dist.get_rank(), dist.get_world_size()
        else:
            d_rank, d_world = 0, 1
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
    if not 0 <= int(rank) < int(world_size):
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    return int(rank), int(world_size)


def to_pixel_values(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(127.5).sub_(1.0)


def to_mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) bool -> (1, H, W) float32 in {0, 1}."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


class ResumableStream(IterableDataset):
    """The epoch and resume position shared by the manifest datasets and `MixtureDataset`.

    A subclass yields, for (worker, num_workers, epoch), a stream whose length per worker
    (`worker_counts`) is known in advance; `ManifestDataLoader` counts what it delivered and
    `resume_point` turns that count back into (stream, samples to skip) per worker.
    """

    def __init__(self, seed: int, rank: int, world_size: int):
        super().__init__()
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._resume: dict | None = None

    # ----- epoch and resume state -------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; a pending resume for another epoch is dropped."""
        if self._resume is not None and self._resume["epoch"] != int(epoch):
            self._resume = None
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """The dataset's part of the data position (the sample count comes from the loader)."""
        state = {
            "epoch": self.epoch,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "samples_seen": 0,
        }
        if self._resume is not None:
            state.update(self._resume)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state["samples_seen"]` samples into epoch `state["epoch"]` on this rank.

        Also needs the ``batch_size``, ``num_workers`` (0 and 1 are the same) and ``drop_last`` of
        the DataLoader that delivered them; seed and world size must match the saved ones.
        """
        for key in ("seed", "world_size", "rank"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: saved {key}={state[key]}, this dataset has {getattr(self, key)}"
                )
        self.epoch = int(state["epoch"])
        seen = int(state.get("samples_seen", 0))
        self._resume = None
        if seen > 0:
            self._resume = {
                "epoch": self.epoch,
                "samples_seen": seen,
                "batch_size": int(state.get("batch_size") or 1),
                "num_workers": max(1, int(state.get("num_workers", 0))),
                "drop_last": bool(state.get("drop_last", False)),
            }

    def num_samples(self) -> int:
        """Samples this rank yields in the current epoch."""
        raise NotImplementedError

    def __len__(self) -> int:
        """`num_samples`: what this rank yields in the current epoch (a DataLoader's ``len`` uses it)."""
        return self.num_samples()

    def __bool__(self) -> bool:  # a dataset is never "false" for being empty; `len` counts rows
        return True

    def worker_counts(self, num_workers: int, epoch: int) -> list[int]:
        """Samples each DataLoader worker yields in `epoch` on this rank."""
        raise NotImplementedError

    def resume_point(
        self, worker: int, num_workers: int, epoch: int, resume: dict | None
    ) -> tuple[int, int] | None:
        """(stream to continue, samples of it to skip) for `worker`; None when it has nothing left."""
        if resume is None:
            return worker, 0
        if resume["num_workers"] != num_workers:
            raise ValueError(
                f"cannot resume: the position was saved with {resume['num_workers']} DataLoader "
                f"workers, this loader has {num_workers}"
            )
        counts = self.worker_counts(num_workers, epoch)
        return resume_streams(counts, resume["batch_size"], resume["samples_seen"], resume["drop_last"])[
            worker
        ]

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Snapshot now: with num_workers=0 the generator body runs later, after the loader cleared it.
        return self._generate(worker, num_workers, self.epoch, dict(self._resume) if self._resume else None)

    def _generate(self, worker: int, num_workers: int, epoch: int, resume: dict | None):
        raise NotImplementedError


class ManifestIterableDataset(ResumableStream):
    """Shared streaming, sharding, shuffling and resume logic; subclasses turn a row into a sample.

    ``transform`` (optional) is called on every sample dict and its result is yielded instead
    (augmentations, tokenisation); with DataLoader workers it must be picklable. ``len(dataset)`` is
    the number of samples this rank yields in the current epoch. Filters that select no row of the
    table raise `EmptySelectionError`, with the table's rows per split.
    """

    table: ClassVar[str]
    columns: ClassVar[list[str]]

    def __init__(
        self,
        manifest: Manifest | str,
        *,
        label=None,
        split=None,
        status=None,
        min_hand_size=None,
        filter=None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_window: int = 4,
        transform: Callable[[dict], object] | None = None,
    ):
        super().__init__(seed, *resolve_rank(rank, world_size))
        self.manifest = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
        self.source = self.manifest.table(self.table)
        self.filter = build_filter(
            self.table, label=label, split=split, status=status, min_hand_size=min_hand_size, filter=filter
        )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.shuffle_window = max(1, int(shuffle_window))
        self.units: list[RowGroupUnit] = self.source.units()
        self.sizes = [u.num_rows for u in self.units]
        self._count_cache: dict[int, int] = {}
        given = {"label": label, "split": split, "status": status, "min_hand_size": min_hand_size}
        self._check_selection({k: v for k, v in given.items() if v is not None}, filter)

    def _check_selection(self, given: dict, filter) -> None:
        """Raise `EmptySelectionError` when no row passes the filters (stops at the first unit with one)."""
        if not self.units:
            logger.warning("%s: the %s table has no rows", self.source.url, self.table)
            return
        if self.filter is None or any(self._count(u) for u in range(len(self.units))):
            return
        splits = Counter(self.source.read(["split"]).column("split").to_pylist())
        shown = {**given, **({"filter": str(filter)} if filter is not None else {})}
        hint = ""
        if "split" in given and set(splits) == {None}:
            hint = "; its rows carry no split, so leave split out (None) to take them all"
        raise EmptySelectionError(
            f"{self.source.url}: no {self.table} row passes {shown}; rows per split: "
            f"{ {k if k is not None else 'none': v for k, v in sorted(splits.items(), key=str)} }{hint}"
        )

    # ----- planning ---------------------------------------------------------------------------
    def _count(self, unit: int) -> int:
        if unit not in self._count_cache:
            self._count_cache[unit] = self.source.count_unit(self.units[unit], self.filter)
        return self._count_cache[unit]

    def rank_plan(self) -> list[int]:
        """Unit indices of this rank for the current epoch, in reading order."""
        return rank_units(self.sizes, self.seed, self.epoch, self.shuffle, self.rank, self.world_size)

    def worker_plan(self, num_workers: int) -> list[list[int]]:
        return worker_units(self.sizes, self.rank_plan(), max(1, num_workers))

    def num_samples(self) -> int:
        """Samples this rank yields in the current epoch (with filters this reads the cheap columns)."""
        return sum(self._count(u) for u in self.rank_plan())

    def _plan(self, num_workers: int, epoch: int) -> list[list[int]]:
        ranked = rank_units(self.sizes, self.seed, epoch, self.shuffle, self.rank, self.world_size)
        return worker_units(self.sizes, ranked, max(1, num_workers))

    def worker_counts(self, num_workers: int, epoch: int) -> list[int]:
        return [sum(self._count(u) for u in units) for units in self._plan(num_workers, epoch)]

    # ----- iteration --------------------------------------------------------------------------
    def _generate(self, worker: int, num_workers: int, epoch: int, resume: dict | None):
        point = self.resume_point(worker, num_workers, epoch, resume)
        if point is not None:
            yield from self.worker_stream(point[0], num_workers, epoch, point[1])

    def worker_stream(self, worker: int, num_workers: int, epoch: int, skip: int = 0):
        """The samples of `worker`'s share of this rank's data in `epoch`, from the `skip`-th on."""
        for window in windows(self._plan(num_workers, epoch)[worker], self.shuffle_window):
            if skip:
                n = sum(self._count(u) for u in window)
                if skip >= n:
                    skip -= n
                    continue
            key = window[0]  # the window's shuffle seed, whichever of its units are read
            window = [u for u in window if self._count_cache.get(u) != 0]  # known empty: not read again
            if not window:
                continue
            parts = [self.source.read_unit(self.units[u], self.columns, self.filter) for u in window]
            origin = [self.units[u] for u, t in zip(window, parts) for _ in range(t.num_rows)]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if table.num_rows == 0:
                continue
            order = (
                epoch_rng(self.seed, epoch, key).permutation(table.num_rows)
                if self.shuffle
                else np.arange(table.num_rows)
            )
            order, skip = order[skip:], 0
            cols = {c: table.column(c).to_pylist() for c in self.columns}
            for i in order:
                row = {c: v[i] for c, v in cols.items()}
                try:
                    sample = self.make_sample(row, origin[i])
                except RowDecodeError as exc:
                    raise RowDecodeError(
                        f"{url_for(self.source.fs, origin[i].path)} row group {origin[i].row_group}: {exc}"
                    ) from exc
                yield sample if self.transform is None else self.transform(sample)

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        raise NotImplementedError


def _batch_len(batch) -> int:
    if isinstance(batch, dict):
        for key in ("hand_id", "image_id"):
            if key in batch:
                v = batch[key]
                return 1 if isinstance(v, str) else len(v)
    return 1


class ManifestDataLoader(DataLoader):
    """A DataLoader that knows the data position: samples delivered in the current epoch.

    >>> loader = ManifestDataLoader(HandCropDataset(root, seed=0), batch_size=8, num_workers=2)
    >>> for epoch in range(start_epoch, epochs):
    ...     loader.set_epoch(epoch)
    ...     for batch in loader: ...          # checkpoint with loader.state_dict()
    >>> loader.load_state_dict(saved)         # after a restart: continues where it stopped

    `persistent_workers` is refused: persistent workers would keep the epoch they were started with.
    """

    def __init__(self, dataset: ResumableStream, batch_size: int | None = 1, **kwargs):
        if not isinstance(dataset, ResumableStream):
            raise TypeError(f"ManifestDataLoader needs a manifest dataset, got {type(dataset).__name__}")
        if kwargs.get("persistent_workers"):
            raise ValueError("persistent_workers=True would freeze the epoch and resume state in the workers")
        super().__init__(dataset, batch_size=batch_size, **kwargs)
        self.samples_seen = 0

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.samples_seen = 0

    def state_dict(self) -> dict:
        return {
            **self.dataset.state_dict(),
            "samples_seen": self.samples_seen,
            "batch_size": self.batch_size or 1,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (
            ("batch_size", self.batch_size or 1),
            ("num_workers", max(1, self.num_workers)),
            ("drop_last", self.drop_last),
        ):
            saved = state.get(key)
            if key == "num_workers" and saved is not None:
                saved = max(1, saved)
            if saved is not None and saved != mine:
                raise ValueError(
                    f"cannot resume exactly: the position was saved with {key}={state.get(key)}, "
                    f"this loader has {key}={mine}"
                )
        self.dataset.load_state_dict(state)
        self.samples_seen = int(state.get("samples_seen", 0))

    def __iter__(self):
        resumed = self.dataset._resume is not None
        self.samples_seen = self.dataset._resume["samples_seen"] if resumed else 0
        iterator = super().__iter__()  # workers get their copy of the dataset (with the resume) here
        self.dataset._resume = None
        return self._count(iterator)

    def _count(self, iterator):
        for batch in iterator:
            self.samples_seen += _batch_len(batch)
            yield batch
