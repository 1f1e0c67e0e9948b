"""Torch datasets over a manifest, for training: hand crops (stage 1) and full bodies (stage 2).

Both are `IterableDataset`s that stream row groups with pyarrow; the whole manifest is never loaded.
The unit of work is one row group of one shard ((file, row_group), see `manifests.partition`):

- units are split over distributed ranks (``rank``/``world_size`` arguments, else
  ``torch.distributed`` when it is initialised, else a single process) and then over DataLoader
  workers, so every sample that passes the filters is yielded exactly once per epoch on exactly one
  rank and one worker;
- the unit order is shuffled with ``(seed, epoch)``, and the rows of ``shuffle_window`` consecutive
  units are shuffled together; call ``set_epoch(epoch)`` before each epoch (with
  ``persistent_workers=False``, the default, so workers pick it up);
- ranks get nearly, not exactly, equal sample counts (greedy by row count). A DDP trainer that needs
  equal step counts should stop all ranks at the shortest rank's ``num_samples()``, or use ``join``.

Exact resume (the trainer's "data position"): iterate through `ManifestDataLoader`, which counts
the samples it delivered. Save ``loader.state_dict()`` with the checkpoint; after a restart build
the same dataset and loader (same seed, world size, batch_size, num_workers, drop_last) and call
``loader.load_state_dict(state)``: the next iteration yields exactly the samples the interrupted
epoch had not delivered yet, in the same order. A plain ``DataLoader`` works too:
``dataset.load_state_dict({"epoch": e, "samples_seen": n, "batch_size": b, "num_workers": w})``
with ``n`` counted by the trainer. With accelerate, do not pass these loaders through
``accelerator.prepare`` (it would shard or dispatch the batches a second time); give the dataset
``rank=accelerator.process_index, world_size=accelerator.num_processes`` instead.

Several manifests: `MixtureDataset` interleaves their datasets by a seeded weighted draw per sample,
keeping the sharding, the determinism and the exact resume above (its position is the same sample
count).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import (
    body_keypoints,
    crop_array,
    crop_keypoints,
    hand_keypoints,
    hands_mask_array,
    heatmap_array,
    image_array,
    image_size,
    mask_array,
)
from .errors import ManifestError, RowDecodeError
from .geometry import render_heatmap, rescale_sigma
from .layout import url_for
from .partition import epoch_rng, rank_units, resume_streams, windows, worker_units
from .pose import to_openpose18
from .reader import Manifest, RowGroupUnit, build_filter, open_manifest
from .transforms import FitTransform

logger = logging.getLogger(__name__)

HANDEDNESS_CODES = {"left": 0, "right": 1}


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
    """Shared streaming, sharding, shuffling and resume logic; subclasses turn a row into a sample."""

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
    ):
        super().__init__(seed, *resolve_rank(rank, world_size))
        self.manifest = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
        self.source = self.manifest.table(self.table)
        self.filter = build_filter(
            self.table, label=label, split=split, status=status, min_hand_size=min_hand_size, filter=filter
        )
        self.shuffle = bool(shuffle)
        self.shuffle_window = max(1, int(shuffle_window))
        self.units: list[RowGroupUnit] = self.source.units()
        self.sizes = [u.num_rows for u in self.units]
        self._count_cache: dict[int, int] = {}

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
            parts = [self.source.read_unit(self.units[u], self.columns, self.filter) for u in window]
            origin = [self.units[u] for u, t in zip(window, parts) for _ in range(t.num_rows)]
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if table.num_rows == 0:
                continue
            order = (
                epoch_rng(self.seed, epoch, window[0]).permutation(table.num_rows)
                if self.shuffle
                else np.arange(table.num_rows)
            )
            order, skip = order[skip:], 0
            cols = {c: table.column(c).to_pylist() for c in self.columns}
            for i in order:
                row = {c: v[i] for c, v in cols.items()}
                try:
                    yield self.make_sample(row, origin[i])
                except RowDecodeError as exc:
                    raise RowDecodeError(
                        f"{url_for(self.source.fs, origin[i].path)} row group {origin[i].row_group}: {exc}"
                    ) from exc

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        raise NotImplementedError


class HandCropDataset(ManifestIterableDataset):
    """Hand crops for the stage-1 hand generator.

    Each sample is a dict:
    - ``pixel_values``: (3, R, R) float32 in [-1, 1], the crop at resolution R;
    - ``heatmap``: (21, h, w) float32 in [0, 1]; the stored heatmap, or re-rendered at
      ``heatmap_size`` from the crop keypoints (sigma: ``heatmap_sigma``, else the stored sigma
      scaled to the new heatmap size, so the blobs keep their size relative to the hand);
    - ``mask``: (1, R, R) float32 in {0, 1}, the hand mask;
    - ``keypoints``: (21, 3) float32, [x, y, score] in pixels of the R x R crop;
    - ``caption``, ``label``, ``handedness``, ``hand_id``: str ("" where null).

    ``resolution`` (default: the stored crop_size) resizes crop (bicubic), mask (bilinear then
    threshold) and keypoints with the same scale R / crop_size.

    ``load_pixels=False`` leaves ``pixel_values`` out and never reads the ``crop`` column (it is
    projected away in the Parquet read), for trainers that take the crop's latents from a cache:
    decoding and resizing the JPEG is then the largest per-sample cost. Every other key, the sample
    order and the resume position are the same as with ``load_pixels=True``.
    """

    table = "hands"
    columns = [
        "hand_id",
        "crop",
        "crop_size",
        "mask",
        "heatmap",
        "heatmap_shape",
        "heatmap_dtype",
        "heatmap_sigma",
        "crop_keypoints",
        "caption",
        "label",
        "handedness",
    ]

    def __init__(
        self,
        manifest: Manifest | str,
        *,
        resolution: int | None = None,
        heatmap_size: int | None = None,
        heatmap_sigma: float | None = None,
        label=None,
        split=None,
        min_hand_size=None,
        filter=None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_window: int = 4,
        load_pixels: bool = True,
    ):
        super().__init__(
            manifest,
            label=label,
            split=split,
            min_hand_size=min_hand_size,
            filter=filter,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=shuffle_window,
        )
        self.load_pixels = bool(load_pixels)
        if not self.load_pixels:
            self.columns = [c for c in type(self).columns if c != "crop"]
        self.resolution = resolution
        self.heatmap_size = heatmap_size
        self.heatmap_sigma = heatmap_sigma

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        crop = crop_array(row) if self.load_pixels else None
        mask, kps = mask_array(row), crop_keypoints(row, finite=True)
        size = int(row["crop_size"])
        res = int(self.resolution or size)
        if res != size:
            if crop is not None:
                crop = np.asarray(Image.fromarray(crop).resize((res, res), Image.BICUBIC))
            mask = (
                np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((res, res), Image.BILINEAR))
                > 127
            )
            kps[:, :2] *= res / size
        if self.heatmap_size is None:
            heatmap = heatmap_array(row)
        else:
            sigma = self.heatmap_sigma
            if sigma is None:
                sigma = rescale_sigma(row["heatmap_sigma"], row["heatmap_shape"][2], self.heatmap_size)
            heatmap = render_heatmap(kps, res, self.heatmap_size, sigma)
        sample = {} if crop is None else {"pixel_values": to_pixel_values(crop)}
        return {
            **sample,
            "heatmap": torch.from_numpy(heatmap),
            "mask": to_mask_tensor(mask),
            "keypoints": torch.from_numpy(kps),
            "caption": row["caption"] or "",
            "label": row["label"] or "",
            "handedness": row["handedness"] or "",
            "hand_id": row["hand_id"],
        }


class BodyDataset(ManifestIterableDataset):
    """Full images for the stage-2 body outpainter, at a training resolution.

    One `FitTransform` (aspect-preserving resize, then crop (``fit="cover"``) or pad
    (``fit="contain"``)) maps the original image's pixel frame to the (H, W) canvas; it is applied
    identically to the image, the hands mask and every keypoint. With ``crop="hands"`` the cover
    crop is centred on the hands instead of the image centre. Each sample is a dict:
    - ``pixel_values``: (3, H, W) float32 in [-1, 1];
    - ``hands_mask``: (1, H, W) float32 in {0, 1};
    - ``body_keypoints``: (33, 3) float32 MediaPipe Pose [x, y, visibility] in canvas pixels
      (all zero with ``has_body`` False when no body was found);
    - ``openpose``: (18, 3) float32 OpenPose [x, y, score] in canvas pixels (score 0 = not drawn);
    - ``hand_keypoints``: (max_hands, 21, 3) float32 in canvas pixels; ``hand_valid`` (max_hands,)
      bool; ``handedness`` (max_hands,) int64 (0 left, 1 right, -1 unknown or padding);
    - ``transform``: (3,) float32 [scale, tx, ty]: canvas = scale * original + t;
    - ``caption``, ``label``, ``image_id``: str.

    The rendered pose condition is left to the trainer: `transform_for` gives the transform of
    any row, and `manifests.draw.draw_openpose` draws ``openpose``. Hands come from the hands shard
    with the same name as the image's shard (the writer keeps them together); an image whose
    ``num_hands`` disagrees with the rows found there raises `ManifestError`, as does an image with
    more than ``max_hands`` hands.
    """

    table = "images"
    columns = [
        "image_id",
        "width",
        "height",
        "image",
        "image_width",
        "image_height",
        "hands_mask",
        "body_keypoints",
        "caption",
        "label",
        "num_hands",
    ]
    hand_columns = ["image_id", "hand_index", "keypoints", "handedness"]

    def __init__(
        self,
        manifest: Manifest | str,
        *,
        resolution: int | tuple[int, int] = 512,
        fit: str = "cover",
        crop: str = "center",
        max_hands: int = 4,
        label=None,
        split=None,
        status="ok",
        filter=None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_window: int = 4,
    ):
        super().__init__(
            manifest,
            label=label,
            split=split,
            status=status,
            filter=filter,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=shuffle_window,
        )
        if crop not in ("center", "hands"):
            raise ValueError(f"crop must be 'center' or 'hands', got {crop!r}")
        self.out_h, self.out_w = (
            (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        )
        self.fit = fit
        self.crop = crop
        self.max_hands = int(max_hands)
        FitTransform.fit(1, 1, self.out_w, self.out_h, fit)  # checks the mode early
        self.hands = self.manifest.table("hands")
        self._hand_shards = {s.name: i for i, s in enumerate(self.hands.shards)}
        self._hand_cache: dict[str, dict[str, list]] = {}

    def _hands_of_shard(self, name: str) -> dict[str, list]:
        """image_id -> [(hand_index, keypoints, handedness), ...] for the hands shard `name`."""
        if name not in self._hand_cache:
            by_image: dict[str, list] = {}
            if name in self._hand_shards:
                idx = self._hand_shards[name]
                for unit in [u for u in self.hands.units() if u.shard == idx]:
                    for r in self.hands.read_unit(unit, self.hand_columns).to_pylist():
                        by_image.setdefault(r["image_id"], []).append(r)
            if len(self._hand_cache) >= 4:
                self._hand_cache.pop(next(iter(self._hand_cache)))
            self._hand_cache[name] = by_image
        return self._hand_cache[name]

    def transform_for(self, row: dict, hand_points: np.ndarray | None = None) -> FitTransform:
        """The transform of an images row (original pixels -> canvas); `hand_points` (N, >=2) set the
        focus when ``crop="hands"``."""
        focus = None
        if self.crop == "hands" and hand_points is not None and len(hand_points):
            pts = np.asarray(hand_points)[:, :2]
            focus = tuple((pts.min(axis=0) + pts.max(axis=0)) / 2.0)
        return FitTransform.fit(*image_size(row), self.out_w, self.out_h, self.fit, focus)

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        where = f"{url_for(self.source.fs, unit.path)} image {row['image_id']}"
        hands = sorted(
            self._hands_of_shard(unit.name).get(row["image_id"], []), key=lambda r: r["hand_index"] or 0
        )
        expected = int(row["num_hands"] or 0)
        if len(hands) != expected:
            raise ManifestError(
                f"{where}: num_hands={expected}, but hands/{unit.name} holds {len(hands)} rows for it"
            )
        if len(hands) > self.max_hands:
            raise ManifestError(f"{where}: {len(hands)} hands, more than max_hands={self.max_hands}")
        hand_kps = [hand_keypoints(h, finite=True) for h in hands]
        t = self.transform_for(row, np.concatenate(hand_kps) if hand_kps else None)

        image = t.warp(image_array(row))
        mask = (
            t.warp_mask(hands_mask_array(row))
            if row["hands_mask"] is not None
            else np.zeros((self.out_h, self.out_w), bool)
        )
        body = body_keypoints(row, finite=True)
        has_body = body is not None
        body = t.points(body) if has_body else np.zeros((33, 3), np.float32)
        openpose = to_openpose18(body) if has_body else np.zeros((18, 3), np.float32)
        hk = np.zeros((self.max_hands, 21, 3), np.float32)
        valid = np.zeros(self.max_hands, bool)
        handed = np.full(self.max_hands, -1, np.int64)
        for i, (h, kps) in enumerate(zip(hands, hand_kps)):
            hk[i], valid[i] = t.points(kps), True
            handed[i] = HANDEDNESS_CODES.get(h["handedness"], -1)
        return {
            "pixel_values": to_pixel_values(image),
            "hands_mask": to_mask_tensor(mask),
            "body_keypoints": torch.from_numpy(body),
            "has_body": has_body,
            "openpose": torch.from_numpy(openpose),
            "hand_keypoints": torch.from_numpy(hk),
            "hand_valid": torch.from_numpy(valid),
            "handedness": torch.from_numpy(handed),
            "num_hands": len(hands),
            "transform": torch.from_numpy(t.params),
            "caption": row["caption"] or "",
            "label": row["label"] or "",
            "image_id": row["image_id"],
        }


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
