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

from ..decode import CAPTION_CHOICES, choose_caption
from .body import HANDEDNESS_CODES, BodyDataset
from .hand import HandCropDataset
from .mixture import MixtureDataset
from .stream import (
    EmptySelectionError,
    ManifestDataLoader,
    ManifestIterableDataset,
    ResumableStream,
    resolve_rank,
    to_mask_tensor,
    to_pixel_values,
)

__all__ = [
    "CAPTION_CHOICES",
    "HANDEDNESS_CODES",
    "BodyDataset",
    "EmptySelectionError",
    "HandCropDataset",
    "ManifestDataLoader",
    "ManifestIterableDataset",
    "MixtureDataset",
    "ResumableStream",
    "choose_caption",
    "resolve_rank",
    "to_mask_tensor",
    "to_pixel_values",
]
